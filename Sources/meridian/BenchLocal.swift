import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure Meridian.", subcommands: [Local.self, WAN.self, Replication.self, Consistency.self, Convergence.self, Peers.self])

    struct Local: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Throughput and latency of one region: durable PUT, GET at peak, GET at half of peak.",
            discussion: "Starts its own node (a one-region cluster in a temporary directory) unless --endpoint is given. Build with -c release.")

        @Option(help: "Concurrent keep-alive connections.") var connections: Int = 32
        @Option(help: "Seconds per phase.") var seconds: Double = 10
        @Option(help: "Distinct keys written and read.") var keys: Int = 10_000
        @Option(help: "Value size in bytes.") var valueBytes: Int = 100
        @Option(help: "An already running node as host:port, with --keyspace naming an async keyspace on it.") var endpoint: String?
        @Option(help: "The keyspace to use with --endpoint.") var keyspace: String = "bench"

        func validate() throws {
            guard (1...1024).contains(connections) else { throw ValidationError("--connections must be 1 to 1024.") }
            guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600].") }
            guard (1...10_000_000).contains(keys) else { throw ValidationError("--keys must be 1 to 10000000.") }
            guard (0...(1 << 20)).contains(valueBytes) else { throw ValidationError("--value-bytes must be 0 to 1048576.") }
        }

        func run() async throws {
            if let endpoint {
                guard let target = Endpoint(parsing: endpoint) else { throw ValidationError("--endpoint is not host:port.") }
                try await measure(target)
                return
            }
            let node = try await SingleNode.start(keyspace: keyspace)
            do {
                try await measure(node.endpoint)
            } catch {
                await node.stop()
                throw error
            }
            await node.stop()
        }

        private func measure(_ target: Endpoint) async throws {
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueBytes)
            let pool = try await ConnectionPool.open(target, count: connections)
            defer { Task { await pool.close() } }
            print("meridian bench local: \(connections) connections, \(keys) keys, \(valueBytes)-byte values, \(seconds) s per phase, target \(target)")
            print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load generator on the same machine\n")

            // Preload so GETs hit existing keys.
            let preload = try await pool.run(seconds: 600, requestsMax: keys) { connection, index in
                try await connection.request("PUT", "/v1/kv/\(keyspace)/k\(index % keys)", headers: [("Content-Type", "application/octet-stream")], body: value)
            }
            try preload.requireSuccess("preload")

            let put = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("PUT", "/v1/kv/\(keyspace)/k\(index % keys)", headers: [("Content-Type", "application/octet-stream")], body: value)
            }
            try put.requireSuccess("PUT")
            let get = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("GET", "/v1/kv/\(keyspace)/k\((index &* 7919) % keys)")
            }
            try get.requireSuccess("GET")
            let halfRate = max(1, get.throughput / 2)
            let getHalf = try await pool.run(seconds: seconds, ratePerSecond: halfRate) { connection, index in
                try await connection.request("GET", "/v1/kv/\(keyspace)/k\((index &* 7919) % keys)")
            }
            try getHalf.requireSuccess("GET at half load")

            print("PHASE                      REQUESTS   THROUGHPUT/s   p50 ms   p99 ms  p99.9 ms   max ms")
            put.printRow("PUT (durable, async ack)")
            get.printRow("GET (peak, closed loop)")
            getHalf.printRow(String(format: "GET at %.0f/s (open loop)", halfRate))
            print("\nPUT latency includes the group commit's fsync; open-loop latency is measured from each request's scheduled start.")
        }
    }
}

/// A one-region node of its own, in a temporary directory, for one-node benchmarks.
struct SingleNode {
    let process: Process
    let directory: String
    let endpoint: Endpoint

    /// Starts the node with one async multi-leader keyspace and waits until it is healthy.
    static func start(keyspace: String) async throws -> SingleNode {
        let port = try LocalProcesses.freePort()
        let peerPort = try LocalProcesses.freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let file = (directory as NSString).appendingPathComponent("cluster.yaml")
        try """
            cluster: bench
            regions:
              - { name: local, client: 127.0.0.1:\(port), peer: 127.0.0.1:\(peerPort) }
            keyspaces:
              - { name: \(keyspace), topology: multi-leader, conflict: lww, ack: async }
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let process = try LocalProcesses.start(
            LocalProcesses.currentExecutable(),
            ["node", "--config", file, "--region", "local", "--data", (directory as NSString).appendingPathComponent("data"),
             "--exit-with-parent", "--log-level", "warning"],
            logPath: (directory as NSString).appendingPathComponent("node.log"))
        let node = SingleNode(process: process, directory: directory, endpoint: Endpoint(host: "127.0.0.1", port: port))
        guard await LocalProcesses.waitHealthy(host: "127.0.0.1", port: port, process: process, timeoutSeconds: 60) else {
            await LocalProcesses.stop(process)
            throw CLIFailure("the benchmark node did not start; see \(directory)/node.log")
        }
        return node
    }

    /// Stops the node and removes its directory.
    func stop() async {
        await LocalProcesses.stop(process)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// The outcome of one benchmark phase.
struct PhaseResult {
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    var requests = 0
    var failures = 0
    var firstFailure: String?
    var seconds: Double = 0

    var throughput: Double { seconds > 0 ? Double(requests) / seconds : 0 }

    mutating func merge(_ other: PhaseResult) {
        histogram.add(other.histogram)
        requests += other.requests
        failures += other.failures
        firstFailure = firstFailure ?? other.firstFailure
    }

    func requireSuccess(_ phase: String) throws {
        if failures > 0 { throw CLIFailure("\(phase): \(failures) of \(requests + failures) requests failed; first: \(firstFailure ?? "?")") }
    }

    func printRow(_ name: String) {
        func ms(_ percentile: Double) -> String { String(format: "%8.3f", Double(histogram.valueAtPercentile(percentile)) / 1000) }
        print(name.padding(toLength: 25, withPad: " ", startingAt: 0)
            + String(format: "%10d %14.0f", requests, throughput)
            + " \(ms(50)) \(ms(99)) \(ms(99.9))  " + String(format: "%8.3f", Double(histogram.max) / 1000))
    }
}

/// Keep-alive connections driven by one task each.
struct ConnectionPool {
    let connections: [HTTPConnection]

    static func open(_ target: Endpoint, count: Int) async throws -> ConnectionPool {
        var connections: [HTTPConnection] = []
        for _ in 0..<count { connections.append(try await HTTPConnection.connect(host: target.host, port: target.port)) }
        return ConnectionPool(connections: connections)
    }

    func close() async {
        for connection in connections { await connection.close() }
    }

    /// Runs requests on every connection until `seconds` pass or `requestsMax` were sent.
    /// - Parameter ratePerSecond: When set, requests start on a fixed schedule (open loop) and latency counts from
    ///   the scheduled start, so a stall is charged to every request it delayed (no coordinated omission).
    func run(seconds: Double, requestsMax: Int = .max, ratePerSecond: Double? = nil,
             _ body: @escaping @Sendable (HTTPConnection, Int) async throws -> HTTPResult) async throws -> PhaseResult {
        let counter = RequestCounter(limit: requestsMax)
        let started = ContinuousClock.now
        let deadline = started + .milliseconds(Int64(seconds * 1000))
        let intervalNs = ratePerSecond.map { Double(connections.count) / $0 * 1e9 }
        var total = PhaseResult()
        try await withThrowingTaskGroup(of: PhaseResult.self) { group in
            for (slot, connection) in connections.enumerated() {
                group.addTask {
                    var result = PhaseResult()
                    var scheduled = started + .nanoseconds(Int64((intervalNs ?? 0) * Double(slot) / Double(connections.count)))
                    while ContinuousClock.now < deadline, let index = counter.next() {
                        if let intervalNs {
                            if scheduled > ContinuousClock.now { try await Task.sleep(until: scheduled, clock: .continuous) }
                        } else {
                            scheduled = ContinuousClock.now
                        }
                        do {
                            let response = try await body(connection, index)
                            if (200..<300).contains(response.status) {
                                let elapsed = ContinuousClock.now - scheduled
                                _ = result.histogram.record(UInt64(max(1, elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000)))
                                result.requests += 1
                            } else {
                                result.failures += 1
                                if result.firstFailure == nil { result.firstFailure = "HTTP \(response.status): \(response.text.prefix(200))" }
                            }
                        } catch {
                            result.failures += 1
                            if result.firstFailure == nil { result.firstFailure = "\(error)" }
                            if result.failures > 100 { break }
                        }
                        if let intervalNs { scheduled = scheduled + .nanoseconds(Int64(intervalNs)) }
                    }
                    return result
                }
            }
            for try await result in group { total.merge(result) }
        }
        let elapsed = ContinuousClock.now - started
        total.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return total
    }
}

/// Hands out request numbers up to a limit, shared by the pool's tasks.
final class RequestCounter: @unchecked Sendable {
    // Safety: `value` is guarded by `lock`.
    private let lock = NSLock()
    private var value = 0
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    func next() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard value < limit else { return nil }
        value += 1
        return value - 1
    }
}
