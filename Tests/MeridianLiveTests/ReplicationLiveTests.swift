// Proves cross-region replication with real processes: three region nodes and the WAN emulator (latency
// scale 0.1), talking over real sockets. A write in each region is read in every other; a partitioned
// region misses writes and catches up after heal; a follower killed with SIGKILL catches up with no gap or
// duplicate; a `majority` write acknowledged just before its origin is killed is in the surviving regions;
// a follower forwards single-leader writes; `all` under a cut link answers 503 naming the region.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

/// A three-region cluster of real processes behind the WAN emulator (the shared ``LocalCluster`` launcher, on
/// the built `meridian`); every process is stopped at the end.
final class LiveCluster {
    let regions = ["us-east", "eu-west", "ap-southeast"]
    let scratch: Scratch
    let local: LocalCluster
    var config: String { local.configPath }

    /// With `secure`, the cluster runs as `meridian up --secure` would: TLS everywhere, made by `meridian certs`,
    /// and token authentication with a key from `meridian token keygen` (``signingKey``); the launcher's
    /// connections use the CA bundle, and the token tests give them.
    /// `tlsFields` adds fields to the `tls` section of a secure cluster (the default reload interval is 300 ms).
    /// With `gateway`, `meridian gateway` runs too, on a free port (`extraYAML` may add to its routing section with
    /// `routing:` lines of its own, which replace the default).
    /// `stores` gives regions a `store` field (YAML, such as ``StoreMix/stores()`` makes).
    init(keyspaces: String, extraYAML: String = "", nodeArguments: [String: [String]] = [:], secure: Bool = false, logLevel: String = "warning",
         tlsFields: String = "reload_interval_ms: 300", gateway: Bool = false, stores: [String: String] = [:]) async throws {
        scratch = try Scratch()
        var ports: [Int] = []
        for _ in 0..<(2 * regions.count) { ports.append(try LocalProcesses.freePort()) }
        var yaml = try clusterYAML(regions: regions, ports: ports, keyspaces: keyspaces, stores: stores)
        // RTTs of the demo cluster; the emulator runs them at a tenth.
        yaml = yaml.replacingOccurrences(
            of: " }\nregions:", with: ", rtt_ms: [{ between: [us-east, eu-west], ms: 81 }, { between: [us-east, ap-southeast], ms: 230 }, { between: [eu-west, ap-southeast], ms: 170 }] }\nregions:")
        yaml = yaml.replacingOccurrences(of: "\nregions:\n", with: "\n\(extraYAML)regions:\n")
        if secure { yaml += try await Self.secureSections(yaml, scratch, tlsFields: tlsFields) }
        var options = LocalCluster.Options(executable: MeridianBinary.path, directory: scratch.path, latencyScale: 0.1,
                                           logLevel: logLevel, nodeArguments: nodeArguments)
        options.gateway = gateway
        local = try LocalCluster(yaml: yaml, options: options)
    }

    var signingKey: String { scratch.file("signing.key") }
    var certificates: String { scratch.file("certs") }

    /// Creates the signing key, the CA and every region's certificate with the CLI, and returns the cluster
    /// file's `session_secret`, `auth` and `tls` sections naming them.
    static func secureSections(_ yaml: String, _ scratch: Scratch, tlsFields: String) async throws -> String {
        let base = scratch.file("base.yaml")
        try yaml.write(toFile: base, atomically: true, encoding: .utf8)
        let keygen = try await runCLI(["token", "keygen", "--out", scratch.file("signing.key"), "--id", "live-1"])
        #expect(keygen.status == 0, "\(keygen)")
        let publicKey = try #require(keygen.stdout.split(separator: "\n").first { $0.contains("public_key:") }?.split(separator: ":").last)
            .trimmingCharacters(in: .whitespaces)
        for arguments in [["certs", "init"], ["certs", "issue", "--all"]] {
            let made = try await runCLI(arguments + ["--config", base, "--dir", scratch.file("certs")])
            #expect(made.status == 0, "\(made)")
        }
        return """

            session_secret: \(LocalCluster.secret())
            auth:
              keys: [{ id: live-1, public_key: \(publicKey) }]
            tls:
              ca: \(scratch.file("certs"))/ca.pem
              cert: \(scratch.file("certs"))/{region}.pem
              key: \(scratch.file("certs"))/{region}.key
              \(tlsFields)

            """
    }

    /// Issues a token with the CLI (`meridian token issue`), as its JSON: token, id, expires_at_ms.
    func issueToken(principal: String = "live", keyspaces: String = "*", ops: String = "read,write,admin", ttl: String = "1h",
                    prefix: String? = nil, regions: String? = nil) async throws -> (token: String, id: String) {
        var arguments = ["token", "issue", "--config", config, "--signing-key", signingKey, "--principal", principal,
                         "--keyspace", keyspaces, "--ops", ops, "--ttl", ttl, "--json"]
        if let regions { arguments += ["--regions", regions] }
        if let prefix { arguments += ["--prefix", prefix] }
        let issued = try await runCLI(arguments)
        #expect(issued.status == 0, "\(issued)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(issued.stdout.utf8)) as? [String: Any])
        return (try #require(object["token"] as? String), try #require(object["id"] as? String))
    }

    func start() async throws {
        try await local.start()
        try await waitUntilLinksUp()
    }

    func startNode(_ region: String) throws {
        try local.startNode(RegionName(validated: region))
    }

    func restartNode(_ region: String) async throws {
        try startNode(region)
        try await local.waitHealthy(RegionName(validated: region))
    }

    func restartAfterKill(_ region: String) async throws {
        await kill9(region)
        try await restartNode(region)
    }

    func kill9(_ region: String) async {
        #expect(await local.kill9(RegionName(validated: region)), "\(region) survived SIGKILL")
    }

    func chaos(_ arguments: String...) async throws {
        let result = try await runCLI(["chaos"] + arguments + ["--config", config])
        #expect(result.status == 0, "\(result)")
    }

    func connect(_ region: String) async throws -> HTTPConnection {
        try await local.connect(RegionName(validated: region))
    }

    /// Waits (bounded) until every region's outbound stream to every peer is up, and its peers have compared
    /// clocks with it (a region takes writes only then; a skewed one is fenced instead).
    func waitUntilLinksUp(timeoutSeconds: Double = 30) async throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        for region in regions {
            let connection = try await connect(region)
            defer { Task { await connection.close() } }
            while true {
                let status = try await connection.request("GET", "/v1/status")
                let answer = (try? JSONSerialization.jsonObject(with: Data(status.body))) as? [String: Any] ?? [:]
                let peers = answer["peers"] as? [[String: Any]] ?? []
                let clock = (answer["clock"] as? [String: Any])?["state"] as? String
                if peers.count == regions.count - 1 && peers.allSatisfy({ $0["link"] as? String == "up" }) && clock != "unverified" { break }
                guard Date() < deadline else {
                    // Each region's last log lines: a region that died says why there.
                    let tails = regions.map { name in
                        let log = (try? String(contentsOfFile: local.log(RegionName(validated: name)), encoding: .utf8)) ?? ""
                        return "\(name) (running: \(local.process(RegionName(validated: name))?.isRunning ?? false)):\n"
                            + log.split(separator: "\n").suffix(15).joined(separator: "\n")
                    }
                    Issue.record("\(region)'s links did not come up: \(String(peers.description.prefix(2000)))\n\(tails.joined(separator: "\n"))")
                    return
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// Polls a key in a region until it has `value` (nil: absent), bounded in time.
    func waitForValue(_ region: String, _ path: String, _ value: String?, timeoutSeconds: Double = 20) async throws -> Bool {
        let connection = try await connect(region)
        defer { Task { await connection.close() } }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            let response = try await connection.request("GET", path)
            if value == nil ? response.status == 404 : (response.status == 200 && response.text == value) { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    func status(_ region: String) async throws -> [String: Any] {
        let connection = try await connect(region)
        defer { Task { await connection.close() } }
        let response = try await connection.request("GET", "/v1/status")
        return (try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]) ?? [:]
    }

    func stop() async {
        await local.stop()
        scratch.remove()
    }
}

/// Runs `body` against a started cluster and stops every process of it afterwards, whatever happens.
func withLiveCluster(keyspaces: String, extraYAML: String = "", nodeArguments: [String: [String]] = [:], gateway: Bool = false,
                     stores: StoreMix = .sqlite, _ body: (LiveCluster) async throws -> Void) async throws {
    let stores = try await stores.stores()
    try await whileStarted(try await LiveCluster(keyspaces: keyspaces, extraYAML: extraYAML, nodeArguments: nodeArguments, gateway: gateway, stores: stores),
                           start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
        try await body(cluster)
        // The regions given a PostgreSQL store kept no SQLite file.
        for region in stores.keys {
            let file = (cluster.local.dataDirectory(try RegionName(region)) as NSString).appendingPathComponent("\(region).sqlite")
            #expect(!FileManager.default.fileExists(atPath: file), "\(region) ran on SQLite, not on its PostgreSQL store")
        }
    }
}

extension LiveTests {
    @Suite(.serialized) struct ReplicationLiveTests {
        static let keyspaces = """
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority }
              - { name: eu_only, topology: geo-partitioned, home: eu-west, residency: { regions: [eu-west], access: proxy } }
              - { name: eu_likes, topology: multi-leader, conflict: crdt, replicas: [eu-west], residency: { regions: [eu-west], access: proxy } }

            """

        /// Reads, writes and refusals forwarded to the region that serves them come back as that region would
        /// answer its own client: status, error code and applied, ETag, session, epoch, CRDT values.
        static func forwardedAnswersRenderAsIfServedHere(_ follower: HTTPConnection, etag: String?) async throws {
            let stale = try await follower.request("PUT", "/v1/kv/accounts/alice", headers: [("If-Match", "\"1.0.us-east.999\"")], body: Array("lost".utf8))
            #expect(stale.status == 412 && stale.header("Meridian-Forwarded-To") == "us-east", "\(stale.status) \(stale.text)")
            #expect(stale.text.contains("\"code\":\"precondition_failed\"") && stale.text.contains("\"applied\":\"no\""), "\(stale.text)")
            let strong = try await follower.request("GET", "/v1/kv/accounts/alice", headers: [("Meridian-Consistency", "strong")])
            #expect(strong.status == 200 && strong.text == "100" && strong.header("Meridian-Forwarded-To") == "us-east", "\(strong.status) \(strong.text)")
            #expect(strong.header("ETag") == etag && strong.header("Meridian-Epoch") != nil && strong.header("Meridian-Session") != nil)
            #expect(strong.header("Cache-Control") == "no-store")
            let guarded = try await follower.request("PUT", "/v1/kv/accounts/alice", headers: [("If-Match", etag ?? "*"), ("Meridian-Session", strong.header("Meridian-Session") ?? "")],
                                                     body: Array("100".utf8))
            #expect(guarded.status == 200 && guarded.header("Meridian-Forwarded-To") == "us-east", "\(guarded.status) \(guarded.text)")
            let missing = try await follower.request("GET", "/v1/kv/accounts/nobody", headers: [("Meridian-Consistency", "strong")])
            #expect(missing.status == 404 && missing.header("Meridian-Forwarded-To") == "us-east" && missing.header("Meridian-Session") != nil, "\(missing.text)")
            #expect(missing.text.contains("\"code\":\"key_not_found\""), "\(missing.text)")
            let proxiedRead = try await follower.request("GET", "/v1/kv/eu_only/gdpr")
            #expect(proxiedRead.status == 200 && proxiedRead.text == "secret" && proxiedRead.header("Meridian-Forwarded-To") == "eu-west", "\(proxiedRead.text)")
            let merged = try await follower.request("POST", "/v1/crdt/eu_likes/post-1", body: Array(#"{"type":"pn-counter","op":"increment","by":3}"#.utf8))
            #expect(merged.status == 200 && merged.header("Meridian-Forwarded-To") == "eu-west", "\(merged.status) \(merged.text)")
            #expect(merged.text.contains("\"value\":3") && merged.text.contains("\"region\":\"eu-west\"") && merged.text.contains("\"operation\":\"increment\""), "\(merged.text)")
            let counter = try await follower.request("GET", "/v1/crdt/eu_likes/post-1")
            #expect(counter.status == 200 && counter.text.contains("\"value\":3") && counter.header("Meridian-Forwarded-To") == "eu-west", "\(counter.text)")
            let mismatch = try await follower.request("GET", "/v1/kv/eu_likes/post-1")
            #expect(mismatch.status == 409 || mismatch.status == 400, "\(mismatch.status) \(mismatch.text)")
        }

        @Test(.timeLimit(.minutes(3)), arguments: StoreMix.allCases)
        func writesInEachRegionAreReadEverywhereAndResidencyHolds(_ stores: StoreMix) async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, stores: stores) { cluster in
                for origin in cluster.regions {
                    let connection = try await cluster.connect(origin)
                    let response = try await connection.request("PUT", "/v1/kv/profiles/from-\(origin)", body: Array("hello from \(origin)".utf8))
                    #expect(response.status == 200, "\(response.text)")
                    await connection.close()
                }
                for origin in cluster.regions {
                    for reader in cluster.regions {
                        #expect(try await cluster.waitForValue(reader, "/v1/kv/profiles/from-\(origin)", "hello from \(origin)"), "\(reader) never saw \(origin)'s write")
                    }
                }
                // A follower forwards a single-leader write to the leader; `majority` is confirmed by two regions.
                let follower = try await cluster.connect("ap-southeast")
                let forwarded = try await follower.request("PUT", "/v1/kv/accounts/alice", body: Array("100".utf8))
                #expect(forwarded.status == 200, "\(forwarded.text)")
                #expect(forwarded.header("Meridian-Forwarded-To") == "us-east")
                #expect(forwarded.text.contains("\"region\":\"us-east\"") && forwarded.text.contains("\"ack\":\"majority\""), "\(forwarded.text)")
                // Residency: a write from outside eu-west is proxied there and its data never leaves eu-west.
                let proxied = try await follower.request("PUT", "/v1/kv/eu_only/gdpr", body: Array("secret".utf8))
                #expect(proxied.status == 200 && proxied.header("Meridian-Forwarded-To") == "eu-west", "\(proxied.text)")
                try await Self.forwardedAnswersRenderAsIfServedHere(follower, etag: forwarded.header("ETag"))
                await follower.close()
                for reader in cluster.regions {
                    #expect(try await cluster.waitForValue(reader, "/v1/kv/accounts/alice?consistency=eventual", "100"))
                }
                #expect(try await cluster.waitForValue("eu-west", "/v1/kv/eu_only/gdpr", "secret"))
                // A later write from eu-west travels after the residency-held one; once it arrived, the held one did not.
                let eu = try await cluster.connect("eu-west")
                #expect(try await eu.request("PUT", "/v1/kv/profiles/after-gdpr", body: Array("x".utf8)).status == 200)
                await eu.close()
                for reader in ["us-east", "ap-southeast"] {
                    #expect(try await cluster.waitForValue(reader, "/v1/kv/profiles/after-gdpr", "x"))
                    let status = try await cluster.status(reader)
                    for restricted in ["eu_only", "eu_likes"] {
                        let stored = (status["keyspaces"] as? [[String: Any]])?.first { $0["name"] as? String == restricted }?["keys"] as? Int
                        #expect(stored == 0, "restricted data of \(restricted) reached \(reader)")
                    }
                    // eu-west's own write, the proxied one, the forwarded CRDT operation and the later one.
                    let applied = (status["peers"] as? [[String: Any]])?.first { $0["region"] as? String == "eu-west" }?["inbound"] as? [String: Any]
                    #expect(applied?["applied"] as? Int == 4, "\(reader) should have covered eu-west's 4 entries: \(String(describing: applied))")
                }
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func partitionedRegionCatchesUpAfterHeal() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                try await cluster.chaos("isolate", "ap-southeast")
                let us = try await cluster.connect("us-east")
                for index in 0..<50 {
                    #expect(try await us.request("PUT", "/v1/kv/profiles/p\(index)", body: Array("v\(index)".utf8)).status == 200)
                }
                // `all` cannot be met while a replica region is cut off: refused up front, nothing written.
                let refused = try await us.request("PUT", "/v1/kv/profiles/needs-all", headers: [("Meridian-Ack", "all")], body: Array("x".utf8))
                if refused.status == 200 { Issue.record("an `all` write succeeded across a partition") }
                #expect([503, 504].contains(refused.status) && refused.text.contains("ap-southeast"), "\(refused.text)")
                await us.close()
                #expect(try await cluster.waitForValue("eu-west", "/v1/kv/profiles/p49", "v49"))
                try await Task.sleep(for: .milliseconds(500))
                let during = try await cluster.connect("ap-southeast")
                #expect(try await during.request("GET", "/v1/kv/profiles/p0").status == 404, "an isolated region received a write")
                await during.close()
                try await cluster.chaos("heal")
                for index in [0, 25, 49] {
                    #expect(try await cluster.waitForValue("ap-southeast", "/v1/kv/profiles/p\(index)", "v\(index)"))
                }
                let status = try await cluster.status("ap-southeast")
                let fromUS = (status["peers"] as? [[String: Any]])?.first { $0["region"] as? String == "us-east" }?["inbound"] as? [String: Any]
                #expect(fromUS?["applied"] as? Int == 50 || fromUS?["applied"] as? Int == 51, "\(String(describing: fromUS))")
            }
        }

        @Test(.timeLimit(.minutes(3)), arguments: StoreMix.allCases)
        func followerKilledWithSIGKILLCatchesUpWithoutGapOrDuplicate(_ stores: StoreMix) async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, stores: stores) { cluster in
                let us = try await cluster.connect("us-east")
                // Writes keep flowing while eu-west dies and comes back.
                var written = 0
                for index in 0..<300 {
                    if index == 100 { await cluster.kill9("eu-west") }
                    if index == 200 { try await cluster.restartNode("eu-west") }
                    let response = try await us.request("PUT", "/v1/kv/profiles/k\(index)", headers: [("Meridian-Ack", "async")], body: Array("v\(index)".utf8))
                    #expect(response.status == 200, "\(response.text)")
                    if response.status == 200 { written += 1 }
                }
                await us.close()
                #expect(try await cluster.waitForValue("eu-west", "/v1/kv/profiles/k299", "v299"))
                let eu = try await cluster.connect("eu-west")
                var missing: [Int] = []
                for index in 0..<300 where try await eu.request("GET", "/v1/kv/profiles/k\(index)").text != "v\(index)" { missing.append(index) }
                #expect(missing.isEmpty, "eu-west is missing \(missing.count) writes after restart: \(missing.prefix(10))")
                let list = try await eu.request("GET", "/v1/kv/profiles?limit=1000")
                await eu.close()
                let keys = ((try JSONSerialization.jsonObject(with: Data(list.body)) as? [String: Any])?["keys"] as? [[String: Any]]) ?? []
                #expect(keys.count == 300, "each key exactly once")
                // Exactly the origin's 300 entries applied: no gap, and no entry applied twice (the applied point equals the log).
                let fromUS = (try await cluster.status("eu-west")["peers"] as? [[String: Any]])?.first { $0["region"] as? String == "us-east" }?["inbound"] as? [String: Any]
                #expect(fromUS?["applied"] as? Int == written)
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func majorityWriteSurvivesTheLossOfItsOrigin() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                let us = try await cluster.connect("us-east")
                var acknowledged: [(key: String, value: String, confirmedBy: [String])] = []
                for index in 0..<20 {
                    let value = "balance-\(index)-\(UUID().uuidString.prefix(8))"
                    let response = try await us.request("PUT", "/v1/kv/accounts/acct\(index)", body: Array(value.utf8))
                    #expect(response.status == 200 && response.text.contains("\"ack\":\"majority\""), "\(response.text)")
                    let answer = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]
                    let peers = (answer?["acked_by"] as? [String] ?? []).filter { $0 != "us-east" }
                    #expect(!peers.isEmpty, "a majority write was acknowledged without another region: \(response.text)")
                    if response.status == 200 { acknowledged.append(("acct\(index)", value, peers)) }
                }
                // Killed the instant the last write is acknowledged: no time to ship anything more.
                await cluster.kill9("us-east")
                await us.close()
                // Each region named in a write's acked_by applied it before the write was acknowledged.
                var lost: [String] = []
                for (key, value, peers) in acknowledged {
                    for peer in peers {
                        let reader = try await cluster.connect(peer)
                        if try await reader.request("GET", "/v1/kv/accounts/\(key)?consistency=eventual").text != value { lost.append("\(key)@\(peer)") }
                        await reader.close()
                    }
                }
                #expect(lost.isEmpty, "majority-acknowledged writes missing from the regions that confirmed them: \(lost)")
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aPeerBeyondLogRetentionIsMarkedForResyncAndRepairHealsIt() async throws {
            // Periodic anti-entropy off, so the gap stays until `meridian repair` is asked to close it; the second
            // level of the Merkle tree from the first key, so the repair compares slots as a large keyspace's does.
            try await withLiveCluster(keyspaces: Self.keyspaces,
                                      extraYAML: "limits: { log_retention_entries: 10, anti_entropy_interval_ms: 0, anti_entropy_slot_keys_min: 0 }\n") { cluster in
                try await cluster.chaos("isolate", "ap-southeast")
                // Write only once us-east has given up on its stream: batches sent into the cut are held by the
                // emulator and delivered after the heal, which would (rightly) leave nothing to resync.
                let down = Date().addingTimeInterval(20)
                while Date() < down {
                    let link = (try await cluster.status("us-east")["peers"] as? [[String: Any]])?.first { $0["region"] as? String == "ap-southeast" }?["link"] as? String
                    if link != "up" { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                let us = try await cluster.connect("us-east")
                for index in 0..<40 { #expect(try await us.request("PUT", "/v1/kv/profiles/r\(index)", body: Array("v".utf8)).status == 200) }
                await us.close()
                // The log keeps only the last 10 entries once eu-west has them; ap-southeast needs the first 40.
                try await Task.sleep(for: .seconds(2))
                try await cluster.chaos("heal")
                var link: String?
                let deadline = Date().addingTimeInterval(20)
                while link != "resync_required" && Date() < deadline {
                    link = (try await cluster.status("us-east")["peers"] as? [[String: Any]])?.first { $0["region"] as? String == "ap-southeast" }?["link"] as? String
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(link == "resync_required", "us-east should report ap-southeast as needing a resync")
                // Nothing was shipped with a gap: ap-southeast applied none of the trimmed range.
                let ap = try await cluster.connect("ap-southeast")
                let missing = try await ap.request("GET", "/v1/kv/profiles/r39")
                #expect(missing.status == 404, "\(missing.status) \(missing.text)")
                await ap.close()
                // eu-west, which kept up, has everything.
                #expect(try await cluster.waitForValue("eu-west", "/v1/kv/profiles/r39", "v"))

                // Anti-entropy heals it: ap-southeast's round compares the slot leaves of the differing Merkle
                // buckets with us-east's and pulls only the keys of the differing slots, then moves its applied
                // point of us-east's log to where us-east's state was read, so the stream resumes.
                let asker = try await cluster.connect("ap-southeast")
                let answer = try await asker.request("POST", "/v1/admin/repair?keyspace=profiles")
                await asker.close()
                let reports = ((try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any])?["repairs"] as? [[String: Any]] ?? []
                let fromUS = reports.first { $0["peer"] as? String == "us-east" }
                #expect(answer.status == 200 && fromUS?["error"] == nil, "\(answer.status) \(answer.text)")
                // ap-southeast may hold a few keys from before the cut; it pulls the others, and only those of their slots.
                let slots = fromUS?["slots_differing"] as? Int ?? 0, received = fromUS?["keys_received"] as? Int ?? 0
                let held = fromUS?["keys"] as? Int ?? 0, changed = fromUS?["keys_changed"] as? Int ?? 0
                #expect((1...40).contains(slots) && (1...40).contains(received) && held + changed == 40, "\(answer.text)")
                let repair = try await runCLI(["repair", "--config", cluster.config], timeoutSeconds: 120)
                #expect(repair.status == 0, "\(repair)")
                #expect(repair.stdout.contains("ap-southeast    profiles            us-east"), "\(repair.stdout)")
                #expect(try await cluster.waitForValue("ap-southeast", "/v1/kv/profiles/r39", "v", timeoutSeconds: 5))
                var resumed: String?
                let upBy = Date().addingTimeInterval(30)
                while resumed != "up" && Date() < upBy {
                    resumed = (try await cluster.status("us-east")["peers"] as? [[String: Any]])?.first { $0["region"] as? String == "ap-southeast" }?["link"] as? String
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(resumed == "up", "the stream to ap-southeast resumes after the repair: \(resumed ?? "-")")
                let again = try await cluster.connect("us-east")
                #expect(try await again.request("PUT", "/v1/kv/profiles/after-repair", body: Array("w".utf8)).status == 200)
                await again.close()
                #expect(try await cluster.waitForValue("ap-southeast", "/v1/kv/profiles/after-repair", "w"), "streaming carries new writes again")
                // Every region holds the same keyspace: equal Merkle roots.
                var roots: [String] = []
                for region in cluster.regions {
                    let connection = try await cluster.connect(region)
                    let answer = try await connection.request("GET", "/v1/admin/merkle/profiles")
                    await connection.close()
                    roots.append(((try? JSONSerialization.jsonObject(with: Data(answer.body))) as? [String: Any])?["root"] as? String ?? "")
                }
                #expect(Set(roots).count == 1 && !roots[0].isEmpty, "\(roots)")
            }
        }
    }
}
