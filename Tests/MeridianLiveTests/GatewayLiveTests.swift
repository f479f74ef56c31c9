// The gateway with real processes behind the WAN emulator: a client tagged as being in Germany is served by
// eu-west, in Japan by ap-southeast, in the US by us-east; a single-leader write goes straight to the leader; a
// restricted keyspace's read from the US is routed into its residency; a killed region is routed around at once
// (reads keep succeeding, writes after the failover) and routed to again once it returns and is re-admitted.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct GatewayLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }
              - { name: eu_health, topology: geo-partitioned, home: eu-west, replicas: [eu-west], residency: { regions: [eu-west], access: proxy, classification: restricted } }

            """

        static func routing() throws -> String {
            """
            routing:
              gateway: 127.0.0.1:\(try LocalProcesses.freePort())
              country_regions: { DE: [eu-west, us-east, ap-southeast], JP: [ap-southeast, eu-west, us-east], US: [us-east, eu-west, ap-southeast], "*": [us-east] }

            """
        }

        static func gateway(_ cluster: LiveCluster) async throws -> HTTPConnection {
            let endpoint = cluster.local.gatewayEndpoint
            return try await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, credentials: .none)
        }

        /// Waits until the gateway routes to every region (the regions' verdicts settle in the first second).
        static func waitAllRoutable(_ cluster: LiveCluster, timeoutSeconds: Double = 20) async throws {
            let gateway = try await gateway(cluster)
            defer { Task { await gateway.close() } }
            let status = try await eventually(timeoutSeconds: timeoutSeconds, {
                let response = try await gateway.request("GET", "/gateway/status")
                return (try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]) ?? [:]
            }, until: { status in
                let regions = status["regions"] as? [[String: Any]] ?? []
                return regions.count == 3 && regions.allSatisfy { $0["routable"] as? Bool == true && $0["stream"] as? String == "live" }
            })
            #expect((status["regions"] as? [[String: Any]])?.allSatisfy { $0["routable"] as? Bool == true } == true, "\(status)")
        }

        static func routedTo(_ gateway: HTTPConnection, _ method: String, _ path: String, country: String, body: String? = nil) async throws -> HTTPResult {
            try await gateway.request(method, path, headers: [("CF-IPCountry", country)], body: body.map { Array($0.utf8) })
        }

        @Test(.timeLimit(.minutes(3)))
        func clientsAreServedByTheirRegionLeadersTakeWritesAndResidencyHolds() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, extraYAML: try Self.routing(), gateway: true) { cluster in
                try await Self.waitAllRoutable(cluster)
                let gateway = try await Self.gateway(cluster)
                defer { Task { await gateway.close() } }
                // A multi-leader write from Japan lands in ap-southeast.
                let write = try await Self.routedTo(gateway, "PUT", "/v1/kv/profiles/ada", country: "JP", body: "lovelace")
                #expect(write.status == 200 && write.header("Meridian-Routed-To") == "ap-southeast" && write.header("Meridian-Route-Reason") == "location:JP",
                        "\(write.status) \(write.text)")
                #expect(write.header("Meridian-Region") == "ap-southeast" && write.header("Meridian-Session") != nil, "the region's own headers pass through")
                _ = try await cluster.waitForValue("eu-west", "/v1/kv/profiles/ada", "lovelace")
                _ = try await cluster.waitForValue("us-east", "/v1/kv/profiles/ada", "lovelace")
                for (country, region) in [("DE", "eu-west"), ("JP", "ap-southeast"), ("US", "us-east")] {
                    let read = try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/ada?consistency=eventual", country: country)
                    #expect(read.status == 200 && read.text == "lovelace", "\(country): \(read.status) \(read.text)")
                    #expect(read.header("Meridian-Routed-To") == region && read.header("Meridian-Region") == region, "\(country) → \(String(describing: read.header("Meridian-Routed-To")))")
                }
                // The location header's case does not matter; a country from Japan given as `jp` is Japan.
                #expect(try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/ada?consistency=eventual", country: "jp").header("Meridian-Routed-To") == "ap-southeast")
                // A single-leader write from Germany goes straight to the leader: no forwarding hop behind it.
                let leaderWrite = try await Self.routedTo(gateway, "PUT", "/v1/kv/accounts/alice", country: "DE", body: "100")
                #expect(leaderWrite.status == 200 && leaderWrite.header("Meridian-Routed-To") == "us-east", "\(leaderWrite.status) \(leaderWrite.text)")
                #expect(leaderWrite.header("Meridian-Route-Reason") == "leader" && leaderWrite.header("Meridian-Forwarded-To") == nil)
                // So does a strong read (the keyspace's default).
                let strong = try await Self.routedTo(gateway, "GET", "/v1/kv/accounts/alice", country: "JP")
                #expect(strong.status == 200 && strong.text == "100" && strong.header("Meridian-Routed-To") == "us-east" && strong.header("Meridian-Forwarded-To") == nil)
                // A restricted keyspace: a client in the US is routed into the residency (eu-west), never to us-east.
                let health = try await Self.routedTo(gateway, "PUT", "/v1/kv/eu_health/patient-1", country: "US", body: "record")
                #expect(health.status == 200 && health.header("Meridian-Routed-To") == "eu-west", "\(health.status) \(health.text)")
                let healthRead = try await Self.routedTo(gateway, "GET", "/v1/kv/eu_health/patient-1", country: "US")
                #expect(healthRead.status == 200 && healthRead.text == "record" && healthRead.header("Meridian-Routed-To") == "eu-west")
                #expect(healthRead.header("Meridian-Forwarded-To") == nil, "served in its residency, not proxied")
                // Routes that name no keyspace reach the nearest region; the gateway's own status is its own.
                #expect(try await Self.routedTo(gateway, "GET", "/v1/status", country: "JP").header("Meridian-Routed-To") == "ap-southeast")
                // A body larger than any region takes is refused at the gateway, with the contract's error.
                let large = try await Self.routedTo(gateway, "PUT", "/v1/kv/profiles/big", country: "DE", body: String(repeating: "x", count: 2 << 20))
                #expect(large.status == 413 && large.text.contains("value_too_large") && large.text.contains("\"applied\":\"no\""), "\(large.status) \(large.text.prefix(300))")
            }
        }

        @Test(.timeLimit(.minutes(4)))
        func aKilledRegionIsRoutedAroundAtOnceAndReadmittedWhenItReturns() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, extraYAML: try Self.routing(), gateway: true) { cluster in
                try await Self.waitAllRoutable(cluster)
                let gateway = try await Self.gateway(cluster)
                defer { Task { await gateway.close() } }
                #expect(try await Self.routedTo(gateway, "PUT", "/v1/kv/profiles/k", country: "DE", body: "v").status == 200)
                _ = try await cluster.waitForValue("us-east", "/v1/kv/profiles/k", "v")
                _ = try await cluster.waitForValue("ap-southeast", "/v1/kv/profiles/k", "v")
                await cluster.kill9("eu-west")
                let killed = ContinuousClock.now
                // Every read from Germany still succeeds, from the first one after the kill: the refused connection
                // sends it on to the next region of DE's list.
                var failures: [String] = []
                var firstElsewhere: Duration?
                for _ in 0..<60 {
                    let read = try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/k?consistency=eventual", country: "DE")
                    if read.status != 200 { failures.append("\(read.status) \(read.text.prefix(200))") }
                    if firstElsewhere == nil, read.header("Meridian-Routed-To") == "us-east" { firstElsewhere = ContinuousClock.now - killed }
                    #expect(read.header("Meridian-Routed-To") != "eu-west")
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(failures.isEmpty, "reads failed after eu-west was killed: \(failures)")
                #expect(firstElsewhere.map { $0 < .seconds(1) } == true, "stopped routing to eu-west after \(String(describing: firstElsewhere))")
                // The reason says where it would have gone.
                let reason = try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/k?consistency=eventual", country: "DE").header("Meridian-Route-Reason") ?? ""
                #expect(reason.contains("location:DE") && reason.contains("eu-west"), "\(reason)")

                // Back: re-admitted once its good probes are counted, then DE is served by eu-west again.
                try await cluster.restartNode("eu-west")
                let back = try await eventually(timeoutSeconds: 20, every: .milliseconds(100), {
                    try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/k?consistency=eventual", country: "DE")
                }, until: { $0.header("Meridian-Routed-To") == "eu-west" })
                #expect(back.status == 200 && back.header("Meridian-Routed-To") == "eu-west", "\(back.status) \(String(describing: back.header("Meridian-Route-Reason")))")

                // The leader dies: writes are refused (never sent elsewhere) until a new leader is elected, then go there.
                await cluster.kill9("us-east")
                var statuses: [Int] = []
                var elected: HTTPResult?
                let leaderKilled = ContinuousClock.now
                while ContinuousClock.now - leaderKilled < .seconds(20) {
                    let write = try await Self.routedTo(gateway, "PUT", "/v1/kv/accounts/bob", country: "JP", body: "7")
                    statuses.append(write.status)
                    if write.status == 200 { elected = write; break }
                    #expect([503, 504].contains(write.status), "\(write.status) \(write.text.prefix(300))")
                    try await Task.sleep(for: .milliseconds(50))
                }
                let leader = elected?.header("Meridian-Routed-To")
                #expect(leader == "eu-west" || leader == "ap-southeast", "no write succeeded after the failover: \(statuses.suffix(10))")
                #expect(elected?.header("Meridian-Route-Reason") == "leader")
            }
        }
    }
}

extension LiveTests.GatewayLiveTests {
    /// A region that stops answering (paused, so its connections stay open and nothing is refused) is covered by
    /// a hedged read to the next region after the first one's p95, within the hedging budget; and reads carrying a
    /// session token go to the region the session last wrote at.
    @Test(.timeLimit(.minutes(3)))
    func aPausedRegionIsHedgedAroundAndSessionsStickToTheirRegion() async throws {
        try await withLiveCluster(keyspaces: Self.keyspaces, extraYAML: try Self.routing(), gateway: true) { cluster in
            try await Self.waitAllRoutable(cluster)
            let gateway = try await Self.gateway(cluster)
            defer { Task { await gateway.close() } }
            let write = try await Self.routedTo(gateway, "PUT", "/v1/kv/profiles/h", country: "JP", body: "v")
            #expect(write.status == 200 && write.header("Meridian-Routed-To") == "ap-southeast")
            // The session's own region first: its write is there, so a session read need not wait anywhere.
            let session = try #require(write.header("Meridian-Session"))
            let sticky = try await gateway.request("GET", "/v1/kv/profiles/h", headers: [("CF-IPCountry", "DE"), ("Meridian-Session", session)])
            #expect(sticky.status == 200 && sticky.text == "v" && sticky.header("Meridian-Routed-To") == "ap-southeast", "\(sticky.status) \(sticky.text)")
            #expect(sticky.header("Meridian-Route-Reason") == "session")
            _ = try await cluster.waitForValue("eu-west", "/v1/kv/profiles/h", "v")
            _ = try await cluster.waitForValue("us-east", "/v1/kv/profiles/h", "v")
            // Reads from Germany teach the gateway eu-west's latency and earn hedging budget (5% of reads).
            for _ in 0..<120 {
                // A read slower than eu-west's p95 may be hedged meanwhile, and the hedge may win: that is the point.
                let read = try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/h?consistency=eventual", country: "DE")
                #expect(read.header("Meridian-Routed-To") == "eu-west" || read.header("Meridian-Route-Reason")?.contains("hedged") == true,
                        "\(String(describing: read.header("Meridian-Route-Reason")))")
            }
            cluster.local.signal(RegionName(validated: "eu-west"), SIGSTOP)
            defer { cluster.local.signal(RegionName(validated: "eu-west"), SIGCONT) }
            let started = ContinuousClock.now
            let hedged = try await Self.routedTo(gateway, "GET", "/v1/kv/profiles/h?consistency=eventual", country: "DE")
            let took = ContinuousClock.now - started
            #expect(hedged.status == 200 && hedged.text == "v" && hedged.header("Meridian-Routed-To") == "us-east", "\(hedged.status) \(hedged.text)")
            #expect(hedged.header("Meridian-Route-Reason")?.contains("hedged: eu-west") == true, "\(String(describing: hedged.header("Meridian-Route-Reason")))")
            // Answered after the hedge delay, long before the cluster marks eu-west down (a silence, ~0.5 s+).
            #expect(took < .seconds(1), "the hedged read took \(took)")
        }
    }
}

extension LiveTests.GatewayLiveTests {
    /// The gateway's data path speaks HTTP/1.1 as clients do, checked with curl: a chunked body larger than what
    /// it queues while connecting, `Expect: 100-continue`, HTTP/1.0, keep-alive across answers, a server-sent event
    /// stream, and a chunked body over the limit refused with the error a client can act on.
    @Test(.timeLimit(.minutes(3)))
    func theDataPathSpeaksHTTPAsCurlDoes() async throws {
        try await withLiveCluster(keyspaces: Self.keyspaces, extraYAML: try Self.routing(), gateway: true) { cluster in
            try await Self.waitAllRoutable(cluster)
            let base = "http://\(cluster.local.gatewayEndpoint)"
            let curl = "/usr/bin/curl"
            let value = String(repeating: "0123456789abcdef", count: 24_000)  // 384 KB, over the 256 KB queued while connecting
            let file = cluster.scratch.file("value.txt")
            try value.write(toFile: file, atomically: true, encoding: .utf8)

            let chunked = try await runProgram(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Transfer-Encoding: chunked",
                                                "-H", "CF-IPCountry: DE", "--data-binary", "@\(file)", "\(base)/v1/kv/profiles/big"])
            #expect(chunked.stdout == "200", "chunked PUT: \(chunked.stdout) \(chunked.stderr)")
            let continued = try await runProgram(curl, ["-sv", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Expect: 100-continue",
                                                  "-H", "CF-IPCountry: JP", "--data-binary", "@\(file)", "\(base)/v1/kv/profiles/big2"])
            #expect(continued.stdout == "200" && continued.stderr.contains("100 Continue"), "Expect: 100-continue: \(continued.stdout) \(continued.stderr.suffix(600))")

            // Two requests on one connection, the first a 404: both answered, one connection made.
            let kept = try await runProgram(curl, ["-s", "-H", "CF-IPCountry: DE", "-w", "%{http_code} %{num_connects}\n", "-o", "/dev/null", "-o", "/dev/null",
                                             "\(base)/v1/kv/profiles/missing?consistency=eventual", "\(base)/v1/kv/profiles/big?consistency=eventual"])
            #expect(kept.stdout == "404 1\n200 0\n", "keep-alive: \(kept.stdout)")
            let old = try await runProgram(curl, ["-s", "--http1.0", "-H", "CF-IPCountry: DE", "\(base)/v1/kv/profiles/big?consistency=eventual"])
            #expect(old.stdout == value, "HTTP/1.0: \(old.stdout.count) bytes of \(value.count)")

            // A server-sent event stream passes through as it is written (the topology's first event).
            let events = try await runProgram(curl, ["-s", "-N", "-m", "3", "-H", "Accept: text/event-stream", "\(base)/v1/topology"])
            #expect(events.stdout.contains("event: topology"), "SSE through the gateway: \(events.stdout.prefix(300)) (curl \(events.status))")

            // A chunked body over the limit (no length to refuse up front): 413, nothing applied.
            let tooLarge = String(repeating: "x", count: (1 << 20) + 100_000)
            let largeFile = cluster.scratch.file("large.txt")
            try tooLarge.write(toFile: largeFile, atomically: true, encoding: .utf8)
            let refused = try await runProgram(curl, ["-s", "-w", " %{http_code}", "-X", "PUT", "-H", "Transfer-Encoding: chunked", "-H", "CF-IPCountry: DE",
                                                "--data-binary", "@\(largeFile)", "\(base)/v1/kv/profiles/huge"])
            #expect(refused.stdout.hasSuffix(" 413") && refused.stdout.contains("value_too_large") && refused.stdout.contains(#""applied":"no""#),
                    "over the limit: \(refused.stdout.prefix(300))")
            let absent = try await runProgram(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "CF-IPCountry: DE", "\(base)/v1/kv/profiles/huge?consistency=eventual"])
            #expect(absent.stdout == "404")
        }
    }
}
