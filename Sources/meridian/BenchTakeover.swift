import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness

extension Bench {
    /// How long a region on PostgreSQL takes no writes when the node holding its lease dies: the time from SIGKILL to
    /// the first write acknowledged again (by the standby that took over), for each lease time to live given.
    struct Takeover: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write unavailability of a PostgreSQL region with two nodes when the one holding its lease is killed.",
            discussion: "Starts a local PostgreSQL server and one region with two nodes on it; kills the serving node --kills times per lease time to live, restarting it as the standby after each.")

        @Option(help: "Kills per lease time to live.") var kills: Int = 5
        @Option(help: ArgumentHelp("Lease times to live to measure, one after the other, printed side by side (the store's lease_ttl_ms).",
                                   valueName: "ms,ms")) var leaseTtlMs: String = "2000,5000"

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
            var rows: [String] = ["LEASE TTL ms   KILLS   UNAVAILABLE p50 ms   min ms   max ms"]
            for ttl in ttls {
                let gaps = try await measure(ttlMs: ttl)
                let sorted = gaps.sorted()
                rows.append(String(format: "%12d   %5d   %18.0f   %6.0f   %6.0f", ttl, sorted.count, sorted[sorted.count / 2], sorted.first ?? 0, sorted.last ?? 0))
            }
            print(rows.joined(separator: "\n"))
            print("\nUnavailable: from the holder's SIGKILL to the first write the region acknowledges again (a write attempted every 20 ms).")
        }

        /// The write gaps, in ms, of `kills` kills with a lease of `ttlMs`.
        private func measure(ttlMs: Int) async throws -> [Double] {
            let database = try await PostgresServer()
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-takeover-\(UUID().uuidString)").path
            var nodes: [String: Process] = [:]
            defer {
                for process in nodes.values where process.isRunning { kill(process.processIdentifier, SIGKILL) }
                try? FileManager.default.removeItem(atPath: directory)
            }
            try database.ensureDatabase("meridian")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let client = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
            let file = (directory as NSString).appendingPathComponent("cluster.yaml")
            try """
                cluster: bench
                regions:
                  - { name: solo, client: \(client), peer: 127.0.0.1:\(try LocalProcesses.freePort()), store: { kind: postgres, url: "postgres://\(database.user)@127.0.0.1:\(database.port)/meridian?sslmode=disable", lease_ttl_ms: \(ttlMs) } }
                keyspaces:
                  - { name: kv, topology: multi-leader, conflict: lww, ack: async }
                """.write(toFile: file, atomically: true, encoding: .utf8)
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
            do {
                let first = try start()
                try await waitFor(first, "holder")
                try await waitFor(try start(), "standby")
                var gaps: [Double] = []
                for _ in 0..<kills {
                    var holder: String?
                    for (name, process) in nodes where process.isRunning && holder == nil {
                        if await role(name) == "holder" { holder = name }
                    }
                    guard let holder, let process = nodes[holder] else { throw BenchFailure("no node holds the lease; see \(directory)") }
                    kill(process.processIdentifier, SIGKILL)
                    let killed = ContinuousClock.now
                    _ = await LocalProcesses.waitExited(process)
                    var connection: HTTPConnection?
                    var acknowledged = false
                    while !acknowledged && ContinuousClock.now - killed < .seconds(120) {
                        do {
                            if connection == nil { connection = try await HTTPConnection.connect(host: client.host, port: client.port, timeoutSeconds: 1) }
                            acknowledged = try await connection!.request("PUT", "/v1/kv/kv/probe", body: Array("x".utf8)).status == 200
                        } catch {
                            await connection?.close()
                            connection = nil
                        }
                        if !acknowledged { try await Task.sleep(for: .milliseconds(20)) }
                    }
                    await connection?.close()
                    guard acknowledged else { throw BenchFailure("the region took no write within 120 s of the kill; see \(directory)") }
                    gaps.append(Double((ContinuousClock.now - killed).components.attoseconds) / 1e15 + Double((ContinuousClock.now - killed).components.seconds) * 1_000)
                    nodes[holder] = nil
                    try await waitFor(try start(), "standby")
                }
                for process in nodes.values { await LocalProcesses.stop(process) }
                await database.stop()
                return gaps
            } catch {
                await database.stop()
                throw error
            }
        }
    }
}
