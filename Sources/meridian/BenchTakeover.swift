import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness

extension Bench {
    /// How long a region on PostgreSQL takes no writes when the node holding its lease dies, and how long until
    /// replication with another region flows again both ways: each measured from the SIGKILL, for each lease time to
    /// live given.
    struct Takeover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write unavailability of a PostgreSQL region with two nodes when the one holding its lease is killed, and the time until replication with a peer region resumes.",
            discussion: "Starts a local PostgreSQL server, one region with two nodes on it and a peer region on SQLite; kills the serving node --kills times per lease time to live, restarting it as the standby after each.")

        @Option(help: "Kills per lease time to live.") var kills: Int = 5
        @Option(help: ArgumentHelp("Lease times to live to measure, one after the other, printed side by side (the store's lease_ttl_ms).",
                                   valueName: "ms,ms")) var leaseTtlMs: String = "2000,5000"

        /// The round trip between the region and its peer on the emulated WAN (us-east to eu-west's, from the demo).
        static let rttMs = 81

        var ttls: [Int] { leaseTtlMs.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

        func validate() throws {
            guard (1...50).contains(kills) else { throw ValidationError("--kills is 1 to 50.") }
            guard !ttls.isEmpty, ttls.count == leaseTtlMs.split(separator: ",").count,
                  ttls.allSatisfy(PostgresStoreConfig.leaseTTLMsRange.contains) else {
                throw ValidationError("--lease-ttl-ms takes comma-separated times from \(PostgresStoreConfig.leaseTTLMsRange.lowerBound) to \(PostgresStoreConfig.leaseTTLMsRange.upperBound) ms.")
            }
        }

        func run() async throws {
            print("meridian bench takeover: \(kills) kills of the lease holder per lease time to live; load generator, nodes and database on one \(ProcessInfo.processInfo.activeProcessorCount)-core machine\n")
            var rows: [String] = ["LEASE TTL ms   KILLS   UNAVAILABLE p50 ms   min ms   max ms   TO PEER p50 ms   max ms   FROM PEER p50 ms   max ms"]
            for ttl in ttls {
                let gaps = try await measure(ttlMs: ttl)
                let (writes, out, back) = (gaps.map(\.writes).sorted(), gaps.map(\.toPeer).sorted(), gaps.map(\.fromPeer).sorted())
                rows.append(String(format: "%12d   %5d   %18.0f   %6.0f   %6.0f   %14.0f   %6.0f   %16.0f   %6.0f", ttl, writes.count,
                                   writes[writes.count / 2], writes.first ?? 0, writes.last ?? 0, out[out.count / 2], out.last ?? 0,
                                   back[back.count / 2], back.last ?? 0))
            }
            print(rows.joined(separator: "\n"))
            print("""

                Each from the holder's SIGKILL. Unavailable: until the region acknowledges a write again (one attempted every 20 ms).
                To peer: until that write is read at the peer region. From peer: until a write the peer took at the kill is read in
                the region (the peer's link to the region's peer address reconnects to the new holder). The regions are \(Self.rttMs) ms
                apart on the WAN emulator, so each way includes a one-way delay of \(Self.rttMs / 2) ms.
                """)
        }

        /// One kill's times, in ms from the SIGKILL.
        struct Gap {
            var writes: Double
            var toPeer: Double
            var fromPeer: Double
        }

        /// The gaps of `kills` kills with a lease of `ttlMs`.
        private func measure(ttlMs: Int) async throws -> [Gap] {
            let database = try await PostgresServer()
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-takeover-\(UUID().uuidString)").path
            var nodes: [String: Process] = [:]
            // The directory (logs included) stays when the run fails, for the error names it.
            var succeeded = false
            defer {
                for process in nodes.values where process.isRunning { kill(process.processIdentifier, SIGKILL) }
                if succeeded { try? FileManager.default.removeItem(atPath: directory) }
            }
            let client: Endpoint, peerClient: Endpoint, file: String
            do {
                try database.ensureDatabase("meridian")
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                client = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
                peerClient = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
                file = (directory as NSString).appendingPathComponent("cluster.yaml")
                try """
                    cluster: bench
                    wan: { admin: 127.0.0.1:\(try LocalProcesses.freePort()), base_port: \(try LocalProcesses.freePortRange(count: 2)), rtt_ms: [{ between: [solo, peer], ms: \(Self.rttMs) }] }
                    regions:
                      - { name: solo, client: \(client), peer: 127.0.0.1:\(try LocalProcesses.freePort()), store: { kind: postgres, url: "postgres://\(database.user)@127.0.0.1:\(database.port)/meridian?sslmode=disable", lease_ttl_ms: \(ttlMs) } }
                      - { name: peer, client: \(peerClient), peer: 127.0.0.1:\(try LocalProcesses.freePort()) }
                    keyspaces:
                      - { name: kv, topology: multi-leader, conflict: lww, ack: async }
                    """.write(toFile: file, atomically: true, encoding: .utf8)
            } catch {
                await database.stop()
                throw error
            }
            var health: [String: Endpoint] = [:]
            var started = 0
            func start() throws -> String {
                started += 1
                let name = "node-\(started)"
                health[name] = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
                nodes[name] = try LocalProcesses.start(LocalProcesses.currentExecutable(), [
                    "node", "--config", file, "--region", "solo", "--data", (directory as NSString).appendingPathComponent("data"),
                    "--root-key-file", (directory as NSString).appendingPathComponent("solo.root-key"), "--node-name", name,
                    "--health-listen", health[name]!.description, "--exit-with-parent", "--log-level", "warning",
                ], logPath: (directory as NSString).appendingPathComponent("\(name).log"))
                return name
            }
            func role(_ name: String) async -> String? { await RegionProbe.json(health[name]!, "/health")?["role"] as? String }
            func waitFor(_ name: String, _ wanted: String) async throws {
                for _ in 0..<600 where await role(name) != wanted { try await Task.sleep(for: .milliseconds(100)) }
                guard await role(name) == wanted else { throw BenchFailure("\(name) did not become \(wanted) within 60 s; see \(directory)") }
            }
            let region = Caller(client), peer = Caller(peerClient)
            do {
                nodes["wan"] = try LocalProcesses.start(LocalProcesses.currentExecutable(), ["wan", "--config", file, "--exit-with-parent"],
                                                        logPath: (directory as NSString).appendingPathComponent("wan.log"))
                nodes["peer"] = try LocalProcesses.start(LocalProcesses.currentExecutable(), [
                    "node", "--config", file, "--region", "peer", "--data", (directory as NSString).appendingPathComponent("peer-data"),
                    "--exit-with-parent", "--log-level", "warning",
                ], logPath: (directory as NSString).appendingPathComponent("peer.log"))
                let first = try start()
                try await waitFor(first, "holder")
                try await waitFor(try start(), "standby")
                // Replication flows both ways before the first kill (a region writes only once its peer compared clocks).
                let ready = ContinuousClock.now
                var flowing = false
                while !flowing && ContinuousClock.now - ready < .seconds(60) {
                    _ = await region.put("probe", "ready")
                    _ = await peer.put("back", "ready")
                    let (there, back) = (await peer.get("probe"), await region.get("back"))
                    flowing = there == "ready" && back == "ready"
                    if !flowing { try await Task.sleep(for: .milliseconds(100)) }
                }
                guard flowing else { throw BenchFailure("replication between the regions did not flow within 60 s; see \(directory)") }
                var gaps: [Gap] = []
                for round in 1...kills {
                    var holder: String?
                    for (name, process) in nodes where name.hasPrefix("node-") && process.isRunning && holder == nil {
                        if await role(name) == "holder" { holder = name }
                    }
                    guard let holder, let process = nodes[holder] else { throw BenchFailure("no node holds the lease; see \(directory)") }
                    let value = "kill-\(round)"
                    kill(process.processIdentifier, SIGKILL)
                    let killed = ContinuousClock.now
                    func since() -> Double {
                        let elapsed = ContinuousClock.now - killed
                        return Double(elapsed.components.seconds) * 1_000 + Double(elapsed.components.attoseconds) / 1e15
                    }
                    _ = await LocalProcesses.waitExited(process)
                    // The peer takes a write at once; the region's is tried every 20 ms until acknowledged.
                    var taken = false
                    for _ in 0..<50 where !taken {
                        taken = await peer.put("back", value)
                        if !taken { try await Task.sleep(for: .milliseconds(100)) }
                    }
                    guard taken else { throw BenchFailure("the peer region took no write within 5 s; see \(directory)") }
                    var gap = Gap(writes: .nan, toPeer: .nan, fromPeer: .nan)
                    while (gap.writes.isNaN || gap.toPeer.isNaN || gap.fromPeer.isNaN) && ContinuousClock.now - killed < .seconds(120) {
                        if gap.writes.isNaN, await region.put("probe", value) { gap.writes = since() }
                        if !gap.writes.isNaN, gap.toPeer.isNaN, await peer.get("probe") == value { gap.toPeer = since() }
                        if gap.fromPeer.isNaN, await region.get("back") == value { gap.fromPeer = since() }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    guard !gap.writes.isNaN, !gap.toPeer.isNaN, !gap.fromPeer.isNaN else {
                        throw BenchFailure("within 120 s of the kill: writes \(gap.writes) ms, to the peer \(gap.toPeer) ms, from the peer \(gap.fromPeer) ms (nan: never); see \(directory)")
                    }
                    gaps.append(gap)
                    nodes[holder] = nil
                    try await waitFor(try start(), "standby")
                }
                await region.close()
                await peer.close()
                for process in nodes.values { await LocalProcesses.stop(process) }
                await database.stop()
                succeeded = true
                return gaps
            } catch {
                await region.close()
                await peer.close()
                await database.stop()
                throw error
            }
        }

        /// Requests to one region over one connection, made again after a failure; every answer bounded to a second.
        actor Caller {
            let endpoint: Endpoint
            private var connection: HTTPConnection?

            init(_ endpoint: Endpoint) { self.endpoint = endpoint }

            /// Whether the region acknowledged the write.
            func put(_ key: String, _ value: String) async -> Bool {
                await request("PUT", "/v1/kv/kv/\(key)", body: Array(value.utf8))?.status == 200
            }

            /// The key's value as the region holds it (nil: absent, refused or unreachable).
            func get(_ key: String) async -> String? {
                guard let answer = await request("GET", "/v1/kv/kv/\(key)?consistency=eventual", body: nil), answer.status == 200 else { return nil }
                return answer.text
            }

            func close() async {
                await connection?.close()
                connection = nil
            }

            private func request(_ method: String, _ path: String, body: [UInt8]?) async -> HTTPResult? {
                do {
                    if connection == nil { connection = try await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: 1) }
                    return try await connection!.request(method, path, body: body)
                } catch {
                    await close()
                    return nil
                }
            }
        }
    }
}
