import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Measure Meridian.", subcommands: [Local.self, WAN.self, Replication.self, Consistency.self, Convergence.self, Security.self, GatewayBench.self, Sealing.self, Apply.self, Scale.self, Takeover.self])

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
        @Option(help: ArgumentHelp("The node's stores, measured one after the other in this run and printed side by side: sqlite, postgres (a local PostgreSQL server, fsync on), postgres-2 (two nodes on it, the connections split between the lease holder and the other node, which relays to it), comma-separated.",
                                   valueName: "kinds"))
        var stores: String = "sqlite"

        var storeKinds: [String] { stores.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

        func validate() throws {
            guard (1...1024).contains(connections) else { throw ValidationError("--connections must be 1 to 1024.") }
            guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600].") }
            guard (1...10_000_000).contains(keys) else { throw ValidationError("--keys must be 1 to 10000000.") }
            guard (0...(1 << 20)).contains(valueBytes) else { throw ValidationError("--value-bytes must be 0 to 1048576.") }
            guard !storeKinds.isEmpty, storeKinds.allSatisfy(["sqlite", "postgres", "postgres-2"].contains), Set(storeKinds).count == storeKinds.count else {
                throw ValidationError("--stores takes sqlite, postgres and postgres-2, comma-separated, each at most once.")
            }
            if endpoint != nil && stores != "sqlite" { throw ValidationError("--stores starts its own nodes; leave it out with --endpoint.") }
        }

        func run() async throws {
            print("meridian bench local: \(connections) connections, \(keys) keys, \(valueBytes)-byte values, \(seconds) s per phase")
            print("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load generator on the same machine\n")
            if let endpoint {
                guard let target = Endpoint(parsing: endpoint) else { throw ValidationError("--endpoint is not host:port.") }
                print(Self.table([(endpoint, try await measure([target]))]))
                return
            }
            var measured: [(String, [(String, PhaseResult)])] = []
            for kind in storeKinds {
                let database = kind.hasPrefix("postgres") ? try await PostgresServer() : nil
                let store = try database.map { server in
                    try server.ensureDatabase("meridian")
                    return "{ kind: postgres, url: \"postgres://\(server.user)@127.0.0.1:\(server.port)/meridian?sslmode=disable\" }"
                }
                let node = try await SingleNode.start(keyspace: keyspace, store: store, withStandby: kind == "postgres-2")
                do {
                    print("measuring \(node.endpoints.count == 1 ? "the node" : "\(node.endpoints.count) nodes") on \(kind)…")
                    measured.append((kind, try await measure(node.endpoints)))
                } catch {
                    await node.stop()
                    await database?.stop()
                    throw error
                }
                await node.stop()
                await database?.stop()
            }
            print(Self.table(measured))
            print("\nPUT latency includes the commit's fsync (SQLite's group commit; PostgreSQL's commit, synchronous_commit on);")
            print("open-loop latency is measured from each request's scheduled start.")
        }

        static func table(_ measured: [(String, [(String, PhaseResult)])]) -> String {
            var lines = ["STORE       PHASE                      REQUESTS   THROUGHPUT/s   p50 ms   p99 ms  p99.9 ms   max ms"]
            for (store, phases) in measured {
                for (name, result) in phases { lines.append(store.padding(toLength: 12, withPad: " ", startingAt: 0) + result.row(name)) }
            }
            return lines.joined(separator: "\n")
        }

        private func measure(_ targets: [Endpoint]) async throws -> [(String, PhaseResult)] {
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueBytes)
            let pool = try await ConnectionPool.open(targets, count: connections)
            defer { Task { await pool.close() } }

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

            return [("PUT (durable, async ack)", put), ("PUT + Idempotency-Key", idempotent), ("PUT retried (replayed)", retried),
                    ("GET (peak, closed loop)", get), (String(format: "GET at %.0f/s (open loop)", halfRate), getHalf)]
        }
    }
}


