import Foundation
import MeridianCore

/// A cluster of real processes for benchmarks: the demo's regions and RTTs on free ports, with the benchmarks'
/// keyspaces, started by the shared ``LocalCluster`` launcher and measured through the regions' status.
public final class BenchCluster {
    public let local: LocalCluster
    let removeAfter: Bool
    public var config: ClusterConfig { local.config }
    public var directory: String { local.directory }

    /// - Parameter executable: The `meridian` binary (default: this process's own).
    /// - Parameter yaml: The cluster file (default: ``yaml()``).
    public init(directory: String?, latencyScale: Double, executable: String = LocalProcesses.currentExecutable(), yaml: String? = nil) throws {
        removeAfter = directory == nil
        let directory = directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-\(UUID().uuidString)").path
        local = try LocalCluster(yaml: try yaml ?? Self.yaml(),
                                 options: LocalCluster.Options(executable: executable, directory: directory, latencyScale: latencyScale, logLevel: "warning"))
    }

    /// The benchmarks' cluster file: the demo's regions and RTTs on free ports, with the benchmarks' keyspaces.
    public static func yaml() throws -> String {
        try LocalCluster.demoYAML(keyspaces: """
              - { name: bench, topology: multi-leader, conflict: lww, ack: async }
              - { name: ledger, topology: single-leader, leader: us-east, ack: majority }
              - { name: conflicts, topology: multi-leader, conflict: lww, ack: async }
              - { name: counters, topology: multi-leader, conflict: crdt, ack: async }

            """)
    }

    /// Starts a cluster, runs `body` against it, and stops every process it started, whatever happens.
    public static func with(directory: String?, latencyScale: Double, executable: String = LocalProcesses.currentExecutable(),
                            _ body: (BenchCluster) async throws -> Void) async throws {
        try await whileStarted(try BenchCluster(directory: directory, latencyScale: latencyScale, executable: executable),
                               start: { try await $0.start() }, stop: { await $0.stop() }, body)
    }

    public func rttMs(_ a: RegionName, _ b: RegionName) -> Double { config.wan.rttMs(a, b) ?? 0 }

    public func connect(_ region: RegionName) async throws -> HTTPConnection {
        try await local.connect(region)
    }

    /// Every region up, every stream up and every clock verified before measuring.
    public func start() async throws {
        try await local.start()
        let pending = await local.waitReady(timeoutSeconds: 30)
        guard pending.isEmpty else { throw BenchFailure("the streams or clocks of \(pending) were not ready within 30 s; see the logs in \(directory)") }
    }

    public func peers(_ region: RegionName) async throws -> [[String: Any]] {
        let connection = try await local.connect(region)
        defer { Task { await connection.close() } }
        let status = try await connection.request("GET", "/v1/status")
        return ((try? JSONSerialization.jsonObject(with: Data(status.body)) as? [String: Any])?["peers"] as? [[String: Any]]) ?? []
    }

    /// Waits until every other region applied `origin`'s log up to at least `entries`.
    public func waitCaughtUp(origin: RegionName, entries: UInt64, timeoutSeconds: Double = 60) async throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        for region in config.regions.map(\.name) where region != origin {
            while true {
                let inbound = try await peers(region).first { $0["region"] as? String == origin.rawValue }?["inbound"] as? [String: Any]
                if UInt64(inbound?["applied"] as? Int ?? 0) >= entries { break }
                guard Date() < deadline else { throw BenchFailure("\(region) did not catch up with \(origin) within \(Int(timeoutSeconds)) s") }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// The apply lag `region` measured for `origin`'s entries.
    public func applyLag(at region: RegionName, from origin: RegionName) async throws -> (samples: Int, p50: Int, p99: Int) {
        let lag = try await applyLagSummary(at: region, from: origin)
        return (lag["samples"] as? Int ?? 0, lag["p50"] as? Int ?? 0, lag["p99"] as? Int ?? 0)
    }

    /// The `apply_lag_ms` object of `region`'s status for `origin`'s inbound stream.
    private func applyLagSummary(at region: RegionName, from origin: RegionName) async throws -> [String: Any] {
        let inbound = try await peers(region).first { $0["region"] as? String == origin.rawValue }?["inbound"] as? [String: Any]
        return inbound?["apply_lag_ms"] as? [String: Any] ?? [:]
    }

    /// The whole apply-lag distribution `region` measured for `origin`'s entries: [percentile, ms] points.
    public func applyLagDistribution(at region: RegionName, from origin: RegionName) async throws -> (samples: Int, distribution: [[Double]]) {
        let lag = try await applyLagSummary(at: region, from: origin)
        let points = (lag["distribution"] as? [[Any]] ?? []).compactMap { point -> [Double]? in
            guard point.count == 2, let p = (point[0] as? NSNumber)?.doubleValue, let ms = (point[1] as? NSNumber)?.doubleValue else { return nil }
            return [p, ms]
        }
        return (lag["samples"] as? Int ?? 0, points)
    }

    public func stop() async {
        await local.stop()
        if removeAfter { try? FileManager.default.removeItem(atPath: directory) }
    }
}

/// A one-region node of its own, in a temporary directory, for one-node benchmarks.
public struct SingleNode {
    public let process: Process
    public let directory: String
    public let endpoint: Endpoint
    /// A second node of the region (regions on PostgreSQL), standing by and relaying to the first.
    public var standby: (process: Process, relay: Endpoint)?

    /// Where clients may connect: the node, and the standby's relay when there is one.
    public var endpoints: [Endpoint] { [endpoint] + (standby.map { [$0.relay] } ?? []) }

    /// Starts the node with one async multi-leader keyspace (and `extraKeyspaces`, lines of the cluster file's
    /// keyspace list) and waits until it is healthy.
    /// `store`: the region's `store` field (YAML; nil: SQLite in the node's directory).
    /// `withStandby`: a second node shares the region's database (PostgreSQL) and relays to the first.
    public static func start(keyspace: String, extraKeyspaces: [String] = [], store: String? = nil, withStandby: Bool = false,
                             executable: String = LocalProcesses.currentExecutable()) async throws -> SingleNode {
        let port = try LocalProcesses.freePort()
        let peerPort = try LocalProcesses.freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = (directory as NSString).appendingPathComponent("cluster.yaml")
        try """
            cluster: bench
            regions:
              - { name: local, client: 127.0.0.1:\(port), peer: 127.0.0.1:\(peerPort)\(store.map { ", store: \($0)" } ?? "") }
            keyspaces:
              - { name: \(keyspace), topology: multi-leader, conflict: lww, ack: async }
            \(extraKeyspaces.map { "  - \($0)" }.joined(separator: "\n"))
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let arguments = ["node", "--config", file, "--region", "local", "--data", (directory as NSString).appendingPathComponent("data"),
                         "--exit-with-parent", "--log-level", "warning"]
        let process = try LocalProcesses.start(executable, arguments + (withStandby ? ["--node-name", "first"] : []),
                                               logPath: (directory as NSString).appendingPathComponent("node.log"))
        var node = SingleNode(process: process, directory: directory, endpoint: Endpoint(host: "127.0.0.1", port: port))
        guard await LocalProcesses.waitHealthy(host: "127.0.0.1", port: port, process: process, timeoutSeconds: 60) else {
            await LocalProcesses.stop(process)
            throw BenchFailure("the benchmark node did not start; see \(directory)/node.log")
        }
        guard withStandby else { return node }
        let relay = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
        let standby = try LocalProcesses.start(executable, arguments + ["--node-name", "second", "--relay-listen", relay.description,
                                                                        "--relay-peer-listen", "127.0.0.1:\(try LocalProcesses.freePort())"],
                                               logPath: (directory as NSString).appendingPathComponent("standby.log"))
        node.standby = (standby, relay)
        // Ready through the relay once the standby knows the holder.
        guard await LocalProcesses.waitHealthy(host: relay.host, port: relay.port, process: standby, timeoutSeconds: 60) else {
            await node.stop()
            throw BenchFailure("the benchmark's second node does not relay; see \(directory)/standby.log")
        }
        return node
    }

    /// Stops the nodes and removes the directory.
    public func stop() async {
        if let standby { await LocalProcesses.stop(standby.process) }
        await LocalProcesses.stop(process)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
