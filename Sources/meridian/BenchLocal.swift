import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure Meridian.", subcommands: [Local.self, WAN.self, Replication.self, Consistency.self, Convergence.self, Security.self, GatewayBench.self, Sealing.self, Apply.self, Scale.self])

    struct Local: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Throughput and latency of one region: durable PUT (plain, with an Idempotency-Key, and retried), GET at peak, GET at half of peak.",
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

            // Preload so GETs hit existing keys; each preload write carries an idempotency key, retried below.
            let run = UUID().uuidString.prefix(8)
            let preload = try await pool.run(seconds: 600, requestsMax: keys) { connection, index in
                try await connection.request("PUT", "/v1/kv/\(keyspace)/k\(index % keys)",
                                             headers: [("Content-Type", "application/octet-stream"), ("Idempotency-Key", "\(run)-pre-\(index % keys)")], body: value)
            }
            try preload.requireSuccess("preload")

            let put = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("PUT", "/v1/kv/\(keyspace)/k\(index % keys)", headers: [("Content-Type", "application/octet-stream")], body: value)
            }
            try put.requireSuccess("PUT")
            // A new key per write: the commit also looks the key up and records it.
            let idempotent = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("PUT", "/v1/kv/\(keyspace)/k\(index % keys)",
                                             headers: [("Content-Type", "application/octet-stream"), ("Idempotency-Key", "\(run)-\(index)")], body: value)
            }
            try idempotent.requireSuccess("PUT with Idempotency-Key")
            // Retries of the preload's writes: each is answered with its first outcome, nothing written.
            let retried = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("PUT", "/v1/kv/\(keyspace)/k\(index % keys)",
                                             headers: [("Content-Type", "application/octet-stream"), ("Idempotency-Key", "\(run)-pre-\(index % keys)")], body: value)
            }
            try retried.requireSuccess("PUT retried")
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
            idempotent.printRow("PUT + Idempotency-Key")
            retried.printRow("PUT retried (replayed)")
            get.printRow("GET (peak, closed loop)")
            getHalf.printRow(String(format: "GET at %.0f/s (open loop)", halfRate))
            print("\nPUT latency includes the group commit's fsync; open-loop latency is measured from each request's scheduled start.")
        }
    }
}


