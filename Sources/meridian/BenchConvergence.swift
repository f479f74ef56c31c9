import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore

extension Bench {
    struct Convergence: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "convergence",
            abstract: "Time from heal to identical state for conflicting keys written in three partitioned regions, and CRDT increments per second.",
            discussion: """
                Starts its own cluster with the demo's regions and RTTs on free ports (a WAN emulator and one node per region, \
                all stopped at the end). Cuts every link, writes the same --keys keys in every region (each key gets three \
                concurrent versions; lww keeps one, the conflicts log the other two), heals, and polls every region's Merkle \
                root of the keyspace until all are equal: the time from heal to identical state, beside the one-way delay of \
                the slowest link. Then --clients clients per region increment --counters CRDT counters for --seconds seconds \
                in all three regions at once: increments per second, their latency, and the time until every region counts \
                every increment. Build with -c release.
                """)

        @Option(help: "Multiply every emulated delay (1 = real scale).") var latencyScale: Double = 1
        @Option(help: "Keys written in every region during the partition.") var keys: Int = 10_000
        @Option(help: "Concurrent clients per region.") var clients: Int = 16
        @Option(help: "CRDT counters incremented.") var counters: Int = 100
        @Option(help: "Seconds of CRDT increments.") var seconds: Double = 10
        @Option(help: "Where the cluster's data and logs go (default: a temporary directory, removed afterwards).") var data: String?

        func validate() throws {
            guard latencyScale > 0 && latencyScale <= 10 else { throw ValidationError("--latency-scale must be above 0 and at most 10.") }
            guard (1...1_000_000).contains(keys) else { throw ValidationError("--keys must be 1 to 1000000.") }
            guard (1...256).contains(clients) else { throw ValidationError("--clients must be 1 to 256.") }
            guard (1...100_000).contains(counters) else { throw ValidationError("--counters must be 1 to 100000.") }
            guard seconds > 0 && seconds <= 3600 else { throw ValidationError("--seconds must be above 0 and at most 3600.") }
        }

        func run() async throws {
            try await BenchCluster.with(directory: data, latencyScale: latencyScale) { try await measure($0) }
        }

        private func measure(_ cluster: BenchCluster) async throws {
            let regions = cluster.config.regions.map(\.name)
            let slowestOneWay = regions.flatMap { a in regions.map { b in cluster.rttMs(a, b) } }.max()! / 2 * latencyScale
            say("meridian bench convergence: \(regions.count) regions, latency scale \(latencyScale), \(keys) conflicting keys per region, \(clients) clients per region")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")

            // 1. Every region cut off; the same keys written everywhere.
            for (index, a) in regions.enumerated() {
                for b in regions[(index + 1)...] { try await cluster.wan("POST", "/v1/wan/partition", ["a": a.rawValue, "b": b.rawValue]) }
            }
            let endpoints = Dictionary(uniqueKeysWithValues: cluster.config.regions.map { ($0.name, $0.client) })
            let (keys, clients, counters) = (self.keys, self.clients, self.counters)
            let writeStarted = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for region in regions {
                    for client in 0..<clients {
                        group.addTask {
                            let connection = try await HTTPConnection.connect(host: endpoints[region]!.host, port: endpoints[region]!.port)
                            defer { Task { await connection.close() } }
                            for key in stride(from: client, to: keys, by: clients) {
                                let response = try await connection.request("PUT", "/v1/kv/conflicts/key-\(key)", body: Array("\(region)-\(key)".utf8))
                                guard response.status == 200 else { throw CLIFailure("a write in \(region) failed: \(response.status) \(response.text)") }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let writeSeconds = (ContinuousClock.now - writeStarted).seconds
            say(String(format: "\nPARTITIONED WRITES: %d keys in each of %d regions in %.1f s (%.0f writes/s in all)", keys, regions.count, writeSeconds,
                       Double(keys * regions.count) / writeSeconds))

            // 2. Heal, and time until every region's Merkle root of the keyspace is the same.
            let healed = ContinuousClock.now
            try await cluster.wan("POST", "/v1/wan/heal", [:])
            // Polls the cheap signal (every origin's entries acknowledged by every peer, i.e. durably applied there),
            // then compares Merkle roots; computing trees in a tight loop would slow the very applies it times.
            var roots: [String] = []
            var keyCounts: [Int] = []
            var converged: Double?
            while (ContinuousClock.now - healed).seconds < 600 {
                var caughtUp = true
                for region in regions where caughtUp {
                    caughtUp = try await cluster.peers(region).allSatisfy { $0["link"] as? String == "up" && ($0["lag_entries"] as? Int ?? 1) == 0 }
                }
                if caughtUp {
                    let at = ContinuousClock.now
                    roots = []
                    keyCounts = []
                    for region in regions {
                        let (root, count) = try await cluster.merkle(region, keyspace: "conflicts")
                        roots.append(root)
                        keyCounts.append(count)
                    }
                    if Set(roots).count == 1 && keyCounts.allSatisfy({ $0 == keys }) {
                        converged = (at - healed).seconds * 1000
                        break
                    }
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            guard let converged else { throw CLIFailure("the regions did not converge within 600 s of the heal: roots \(roots), keys \(keyCounts)") }
            var logged: [String] = []
            for region in regions { logged.append("\(region) \(try await cluster.metric(region, "meridian_conflicts_total", keyspace: "conflicts"))") }
            say("\nCONVERGENCE AFTER HEAL (\(keys) keys, 3 concurrent versions each, lww)")
            say(String(format: "identical state (equal Merkle roots) %.0f ms after heal; slowest link one-way %.0f ms; ratio %.1fx", converged, slowestOneWay, converged / max(slowestOneWay, 1)))
            say("conflicts logged per region: \(logged.joined(separator: ", ")) (two losers per key: \(2 * keys))")
            say("root \(roots.first.map { String($0.prefix(16)) } ?? "-")")

            // 3. CRDT increments in all regions at once.
            let until = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            let perRegion = try await withThrowingTaskGroup(of: (RegionName, Int, Histogram<UInt64>).self) { group in
                for region in regions {
                    for client in 0..<clients {
                        group.addTask {
                            let connection = try await HTTPConnection.connect(host: endpoints[region]!.host, port: endpoints[region]!.port)
                            defer { Task { await connection.close() } }
                            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                            var done = 0
                            while ContinuousClock.now < until {
                                let counter = (client + done * clients) % counters
                                let started = ContinuousClock.now
                                let response = try await connection.request("POST", "/v1/crdt/counters/c-\(counter)", body: Array(#"{"type":"pn-counter","op":"increment"}"#.utf8))
                                guard response.status == 200 else { throw CLIFailure("an increment in \(region) failed: \(response.status) \(response.text)") }
                                histogram.record(microseconds(ContinuousClock.now - started))
                                done += 1
                            }
                            return (region, done, histogram)
                        }
                    }
                }
                var totals: [RegionName: (Int, Histogram<UInt64>)] = [:]
                for try await (region, done, histogram) in group {
                    var entry = totals[region] ?? (0, Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three))
                    entry.0 += done
                    entry.1.add(histogram)
                    totals[region] = entry
                }
                return totals
            }
            let loadEnded = ContinuousClock.now
            let total = perRegion.values.reduce(0) { $0 + $1.0 }
            say("\nCRDT INCREMENTS (pn-counter, \(counters) counters, \(clients) clients per region, \(String(format: "%.0f", seconds)) s, all regions at once)")
            say("REGION          increments/s   p50 ms   p99 ms")
            for region in regions {
                let (done, histogram) = perRegion[region]!
                say(region.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0)
                    + String(format: "%12.0f %8.2f %8.2f", Double(done) / seconds, Double(histogram.valueAtPercentile(50)) / 1000, Double(histogram.valueAtPercentile(99)) / 1000))
            }
            say(String(format: "all regions     %12.0f", Double(total) / seconds))
            // Every region counts every increment.
            var counted: [Int] = []
            var exact: Double?
            while (ContinuousClock.now - loadEnded).seconds < 120 {
                counted = []
                for region in regions { counted.append(try await cluster.counterSum(region, keyspace: "counters", counters: counters)) }
                if counted.allSatisfy({ $0 == total }) {
                    exact = (ContinuousClock.now - loadEnded).seconds * 1000
                    break
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            if let exact {
                say(String(format: "every region counts all %d increments %.0f ms after the load stopped (slowest link one-way %.0f ms)", total, exact, slowestOneWay))
            } else {
                throw CLIFailure("the counters did not reach the \(total) increments made within 120 s: regions count \(counted)")
            }
        }
    }
}

private func microseconds(_ duration: Duration) -> UInt64 {
    UInt64(duration.components.seconds) * 1_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000_000)
}

extension BenchCluster {
    /// Calls the WAN emulator's admin API.
    func wan(_ method: String, _ path: String, _ body: [String: Any]) async throws {
        let connection = try await HTTPConnection.connect(host: config.wan.admin.host, port: config.wan.admin.port, credentials: .none)
        defer { Task { await connection.close() } }
        let result = try await connection.request(method, path, headers: [("Content-Type", "application/json")], body: Array(try JSONSerialization.data(withJSONObject: body)))
        guard result.status == 200 else { throw CLIFailure("the WAN emulator refused \(path): \(result.status) \(result.text)") }
    }

    /// A region's Merkle root of a keyspace and its key count.
    func merkle(_ region: RegionName, keyspace: String) async throws -> (String, Int) {
        let connection = try await connect(region)
        defer { Task { await connection.close() } }
        let result = try await connection.request("GET", "/v1/admin/merkle/\(keyspace)")
        let object = (try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any]) ?? [:]
        return (object["root"] as? String ?? "", object["keys"] as? Int ?? -1)
    }

    /// One labelled sample of a region's Prometheus metrics (0 when absent).
    func metric(_ region: RegionName, _ name: String, keyspace: String) async throws -> Int {
        let connection = try await connect(region)
        defer { Task { await connection.close() } }
        let text = try await connection.request("GET", "/metrics").text
        let line = text.split(separator: "\n").first { $0.hasPrefix("\(name){") && $0.contains("keyspace=\"\(keyspace)\"") }
        return line.flatMap { $0.split(separator: " ").last }.flatMap { Int(Double($0) ?? -1) } ?? 0
    }

    /// The sum of a region's counters `c-0` … `c-(counters-1)`.
    func counterSum(_ region: RegionName, keyspace: String, counters: Int) async throws -> Int {
        let connection = try await connect(region)
        defer { Task { await connection.close() } }
        var sum = 0
        for counter in 0..<counters {
            let result = try await connection.request("GET", "/v1/crdt/\(keyspace)/c-\(counter)")
            guard result.status == 200 else { continue }
            sum += ((try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any])?["value"] as? Int) ?? 0
        }
        return sum
    }
}
