import ArgumentParser
import Foundation
import Histogram
import MeridianCore
import MeridianHarness

extension Bench {
    struct Sealing: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "sealing",
            abstract: "Sealed against plain values side by side (PUT and GET throughput and latency), and how long an erasure takes to reach every replica region.",
            discussion: """
                1. Starts one node with two async keyspaces, `plain` and `sealed` (encryption: sealed), preloads both with the \
                same keys (--subjects subjects, several keys each), then runs --rounds rounds, each a PUT and a GET phase on \
                `plain` then on `sealed`, alternating so the machine's noise falls on both alike; prints each round and the \
                ratio of the totals.
                2. Starts the demo's three regions behind the WAN emulator with a sealed keyspace replicated in all of them, \
                writes a value for each of --erasures subjects, and times each erasure from the request to the answer \
                (which comes once every replica region destroyed the keys), then checks every region answers 410. \
                Build with -c release.
                """)

        @Option(help: "Concurrent keep-alive connections.") var connections: Int = 32
        @Option(help: "Seconds per phase.") var seconds: Double = 5
        @Option(help: "Rounds of the four phases.") var rounds: Int = 3
        @Option(help: "Distinct subjects (each has 10 keys).") var subjects: Int = 1_000
        @Option(help: "Value size in bytes.") var valueBytes: Int = 100
        @Option(help: "Erasures timed in part 2 (0: skip it).") var erasures: Int = 20
        @Option(help: "Multiply every emulated delay in part 2 (1 = real scale).") var latencyScale: Double = 1
        @Option(help: "Keep part 2's data directories and node logs here (default: a temporary directory, removed after).") var data: String?

        func validate() throws {
            guard (1...1024).contains(connections) else { throw ValidationError("--connections must be 1 to 1024.") }
            guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600].") }
            guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be 1 to 100.") }
            guard (1...1_000_000).contains(subjects) else { throw ValidationError("--subjects must be 1 to 1000000.") }
            guard (1...(1 << 20)).contains(valueBytes) else { throw ValidationError("--value-bytes must be 1 to 1048576.") }
            guard (0...1_000).contains(erasures) else { throw ValidationError("--erasures must be 0 to 1000.") }
            guard latencyScale > 0 && latencyScale <= 10 else { throw ValidationError("--latency-scale must be above 0 and at most 10.") }
        }

        func run() async throws {
            let node = try await SingleNode.start(keyspace: "plain", extraKeyspaces: [
                "{ name: sealed, topology: multi-leader, conflict: lww, ack: async, residency: { encryption: sealed } }",
            ])
            do {
                try await throughput(node.endpoint)
            } catch {
                await node.stop()
                throw error
            }
            await node.stop()
            if erasures > 0 { try await erasureTiming() }
        }

        private func throughput(_ target: Endpoint) async throws {
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueBytes)
            let keys = subjects * 10
            let pool = try await ConnectionPool.open(target, count: connections)
            defer { Task { await pool.close() } }
            say("meridian bench sealing: \(connections) connections, \(subjects) subjects x 10 keys, \(valueBytes)-byte values, \(rounds) rounds of \(seconds) s phases, target \(target)")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load generator on the same machine\n")
            // Keys `u<subject>/k<n>`: the subject is the part before the first `/`, so each subject's first write makes its data key.
            let subjects = self.subjects
            let path: @Sendable (String, Int) -> String = { keyspace, index in "/v1/kv/\(keyspace)/u\(index % subjects)/k\(index % keys)" }
            for keyspace in ["plain", "sealed"] {
                let preload = try await pool.run(seconds: 600, requestsMax: keys) { connection, index in
                    try await connection.request("PUT", path(keyspace, index), headers: [("Content-Type", "application/octet-stream")], body: value)
                }
                try preload.requireSuccess("preload of \(keyspace)")
            }
            var totals: [String: PhaseResult] = [:]
            say("PHASE                      REQUESTS   THROUGHPUT/s   p50 ms   p99 ms  p99.9 ms   max ms")
            for round in 1...rounds {
                for (operation, keyspace) in [("PUT", "plain"), ("PUT", "sealed"), ("GET", "plain"), ("GET", "sealed")] {
                    let result = try await pool.run(seconds: seconds) { connection, index in
                        operation == "PUT"
                            ? try await connection.request("PUT", path(keyspace, index &* 31), headers: [("Content-Type", "application/octet-stream")], body: value)
                            : try await connection.request("GET", path(keyspace, index &* 7919))
                    }
                    try result.requireSuccess("\(operation) \(keyspace)")
                    say(result.row("\(operation) \(keyspace) (round \(round))"))
                    totals["\(operation) \(keyspace)", default: PhaseResult()].mergeTimed(result)
                }
            }
            say("\nALL ROUNDS")
            for name in ["PUT plain", "PUT sealed", "GET plain", "GET sealed"] { say(totals[name]!.row(name)) }
            for operation in ["PUT", "GET"] {
                let plain = totals["\(operation) plain"]!, sealed = totals["\(operation) sealed"]!
                say(String(format: "%@: sealed serves %.1f%% of plain's throughput; p50 %+.3f ms", operation, 100 * sealed.throughput / plain.throughput,
                           Double(Int(sealed.histogram.valueAtPercentile(50)) - Int(plain.histogram.valueAtPercentile(50))) / 1000))
            }
        }

        private func erasureTiming() async throws {
            let yaml = try LocalCluster.demoYAML(keyspaces: """
                  - { name: vault, topology: multi-leader, conflict: lww, ack: majority, residency: { encryption: sealed } }

                """)
            try await whileStarted(try BenchCluster(directory: data, latencyScale: latencyScale, yaml: yaml),
                                   start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                let regions = cluster.config.regions.map(\.name)
                let first = regions[0]
                say("\nerasure: \(regions.count) regions behind the WAN emulator (latency scale \(latencyScale)), `vault` sealed and replicated in all, erasures asked at \(first)")
                let origin = try await cluster.connect(first)
                var readers: [HTTPConnection] = []
                for region in regions { readers.append(try await cluster.connect(region)) }
                for subject in 0..<erasures {
                    let answer = try await origin.request("PUT", "/v1/kv/vault/s\(subject)/v", headers: [("Meridian-Ack", "all")], body: Array("value-\(subject)".utf8))
                    guard answer.status == 200 else { throw BenchFailure("write of s\(subject): \(answer.status) \(answer.text)") }
                }
                var times = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                for subject in 0..<erasures {
                    let started = ContinuousClock.now
                    let answer = try await origin.request("POST", "/v1/admin/erase/vault", headers: [("Content-Type", "application/json")],
                                                          body: Array(#"{"subject":"s\#(subject)"}"#.utf8))
                    let elapsed = ContinuousClock.now - started
                    guard answer.status == 200 else { throw BenchFailure("erasure of s\(subject): \(answer.status) \(answer.text)") }
                    times.record(UInt64(elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000))
                    for (index, reader) in readers.enumerated() {
                        let read = try await reader.request("GET", "/v1/kv/vault/s\(subject)/v")
                        guard read.status == 410 else { throw BenchFailure("\(regions[index]) answered \(read.status) for erased s\(subject): \(read.text)") }
                    }
                }
                await origin.close()
                for reader in readers { await reader.close() }
                let farthest = regions.dropFirst().map { cluster.rttMs(first, $0) }.max() ?? 0
                say(String(format: "erasure confirmed by every region: p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d subjects (farthest RTT from %@: %.0f ms emulated x %.2f); every region answered 410 right after",
                           Double(times.valueAtPercentile(50)) / 1000, Double(times.valueAtPercentile(99)) / 1000, Double(times.max) / 1000, erasures,
                           first.rawValue, farthest, latencyScale))
            }
        }
    }
}

extension PhaseResult {
    /// Adds another phase's requests and time (rounds of one phase summed).
    mutating func mergeTimed(_ other: PhaseResult) {
        merge(other)
        seconds += other.seconds
    }
}
