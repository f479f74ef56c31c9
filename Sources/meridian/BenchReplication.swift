import ArgumentParser
import Foundation
import MeridianHarness
import MeridianCore

extension Bench {
    struct Replication: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "replication",
            abstract: "Cross-region write latency per ack mode and async replication lag per link, on a cluster of real processes behind the WAN emulator.",
            discussion: """
                Starts its own cluster with the demo's regions and RTTs on free ports (a WAN emulator and one node per region, \
                all stopped at the end), then:
                  1. for each origin region, writes at --rate writes/s for --seconds (async ack) and reads every replica's \
                apply lag for that origin (apply time minus the write's HLC time at its origin, so it includes the origin's \
                fsync: an upper bound of the time from the origin's ack to the apply);
                  2. for each origin region and ack mode, --writes sequential writes from --clients clients, timing each.
                Each figure is printed beside the emulated RTT (or one-way delay) and the fiber floor, as a ratio. Build with -c release.
                """)

        @Option(help: "Multiply every emulated delay (1 = real scale).") var latencyScale: Double = 1
        @Option(help: "Async writes per second per origin in the lag phase.") var rate: Double = 2000
        @Option(help: "Seconds of writing per origin in the lag phase.") var seconds: Double = 5
        @Option(help: "Writes per origin and ack mode in the latency phase.") var writes: Int = 200
        @Option(help: "Concurrent clients in the latency phase.") var clients: Int = 4
        @Option(help: "Where the cluster's data and logs go (default: a temporary directory, removed afterwards).") var data: String?
        @Option(help: ArgumentHelp("The regions' stores, measured one after the other in this run: sqlite, postgres (a database per region on a local PostgreSQL server, fsync on), or sqlite,postgres.",
                                   valueName: "kinds"))
        var stores: String = "sqlite"

        var storeKinds: [String] { stores.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

        func validate() throws {
            guard latencyScale > 0 && latencyScale <= 10 else { throw ValidationError("--latency-scale must be above 0 and at most 10.") }
            guard rate > 0 && rate <= 100_000 else { throw ValidationError("--rate must be above 0 and at most 100000.") }
            guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds must be above 0 and at most 600.") }
            guard (1...100_000).contains(writes) else { throw ValidationError("--writes must be 1 to 100000.") }
            guard (1...256).contains(clients) else { throw ValidationError("--clients must be 1 to 256.") }
            guard !storeKinds.isEmpty, storeKinds.allSatisfy(["sqlite", "postgres"].contains), Set(storeKinds).count == storeKinds.count else {
                throw ValidationError("--stores takes sqlite, postgres or sqlite,postgres.")
            }
            if data != nil && storeKinds.count > 1 { throw ValidationError("--data keeps one cluster's files: measure one store with it.") }
        }

        func run() async throws {
            for kind in storeKinds {
                say("\n=== regions on \(kind) ===")
                var yaml = try BenchCluster.yaml()
                var database: PostgresServer?
                if kind == "postgres" { (database, yaml) = try await PostgresServer.withRegionDatabases(yaml) }
                do {
                    try await whileStarted(try BenchCluster(directory: data, latencyScale: latencyScale, yaml: yaml),
                                           start: { try await $0.start() }, stop: { await $0.stop() }) { try await measure($0, store: kind) }
                } catch {
                    await database?.stop()
                    throw error
                }
                await database?.stop()
            }
        }

        private func measure(_ cluster: BenchCluster, store: String) async throws {
            let regions = cluster.config.regions.map(\.name)
            let scale = latencyScale
            say("meridian bench replication (\(store)): \(regions.count) regions, latency scale \(scale), \(String(format: "%.0f", rate)) async writes/s per origin for \(String(format: "%.0f", seconds)) s, then \(writes) writes per origin and ack mode from \(clients) clients")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")

            // 1. Async replication lag per link.
            var lagRows: [String] = []
            var lagMisses = 0
            for origin in regions {
                let client = cluster.config.region(origin)!.client
                let pool = try await ConnectionPool.open(client, count: 16)
                let count = Int(rate * seconds)
                let result = try await pool.run(seconds: seconds * 3, requestsMax: count, ratePerSecond: rate) { connection, index in
                    try await connection.request("PUT", "/v1/kv/bench/\(origin)-lag-\(index)", headers: [("Meridian-Ack", "async")], body: Array(repeating: 0x61, count: 100))
                }
                await pool.close()
                try result.requireSuccess("async writes in \(origin)")
                try await cluster.waitCaughtUp(origin: origin, entries: UInt64(count))
                for replica in regions where replica != origin {
                    let lag = try await cluster.applyLag(at: replica, from: origin)
                    let oneWay = cluster.rttMs(origin, replica) / 2 * scale
                    let floor = (Bench.WAN.floorMs(DirectedLink(from: origin, to: replica)) ?? 0) / 2 * scale
                    let p50Target = oneWay + 2, p99Target = oneWay + 10
                    let met = Double(lag.p50) <= p50Target && Double(lag.p99) <= p99Target
                    if !met { lagMisses += 1 }
                    lagRows.append("\(origin)->\(replica)".padding(toLength: 28, withPad: " ", startingAt: 0)
                        + String(format: "%7.1f %8.1f %8d %7d %7d  %6.2fx  %6.2fx   %@", oneWay, floor, lag.samples, lag.p50, lag.p99,
                                 Double(lag.p50) / max(oneWay, 0.001), Double(lag.p50) / max(floor, 0.001), met ? "yes" : "NO"))
                }
                say(String(format: "  %@: %d writes at %.0f/s, p50 %.2f ms, p99 %.2f ms", origin.rawValue, result.requests, result.throughput,
                           Double(result.histogram.valueAtPercentile(50)) / 1000, Double(result.histogram.valueAtPercentile(99)) / 1000))
            }
            say("\nASYNC REPLICATION LAG (ms; apply at the replica minus HLC time at the origin, 1 ms resolution)")
            say("LINK                        ONE-WAY    FLOOR  SAMPLES     p50     p99  p50/1way p50/floor  target (1way+2 p50, 1way+10 p99)")
            for row in lagRows { say(row) }

            // 2. Write latency per origin and ack mode.
            say("\nWRITE LATENCY BY ACK MODE (ms, \(writes) writes per row, \(clients) clients)")
            say("ORIGIN          ACK       BOUND ms  FLOOR ms   p50 ms   p99 ms  p50/bound  p50/floor  target")
            var latencyMisses = 0
            for origin in regions {
                let client = cluster.config.region(origin)!.client
                for ack in [AckMode.async, .majority, .all] {
                    let pool = try await ConnectionPool.open(client, count: clients)
                    let result = try await pool.run(seconds: 600, requestsMax: writes) { connection, index in
                        try await connection.request("PUT", "/v1/kv/bench/\(origin)-\(ack.rawValue)-\(index)", headers: [("Meridian-Ack", ack.rawValue)],
                                                     body: Array(repeating: 0x62, count: 100))
                    }
                    await pool.close()
                    try result.requireSuccess("\(ack.rawValue) writes in \(origin)")
                    let peers = regions.filter { $0 != origin }
                    let rtts = peers.map { cluster.rttMs(origin, $0) * scale }.sorted()
                    let floors = peers.map { (Bench.WAN.floorMs(DirectedLink(from: origin, to: $0)) ?? 0) * scale }.sorted()
                    // majority of 3 needs the nearest peer; all needs the farthest.
                    let (bound, floor): (Double, Double) = switch ack {
                    case .async: (0, 0)
                    case .majority: (rtts[0], floors[0])
                    case .all: (rtts[rtts.count - 1], floors[floors.count - 1])
                    }
                    let p50 = Double(result.histogram.valueAtPercentile(50)) / 1000, p99 = Double(result.histogram.valueAtPercentile(99)) / 1000
                    let target: String
                    switch ack {
                    case .async: target = "-"
                    case .majority:
                        let met = p50 <= bound + 3
                        if !met { latencyMisses += 1 }
                        target = (met ? "yes" : "NO") + " (p50 <= RTT+3)"
                    case .all:
                        let met = p99 <= bound + 10
                        if !met { latencyMisses += 1 }
                        target = (met ? "yes" : "NO") + " (p99 <= RTT+10)"
                    }
                    say(origin.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0) + ack.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0)
                        + String(format: "%9.1f %9.1f %8.2f %8.2f  %8@  %8@  %@", bound, floor, p50, p99,
                                 bound > 0 ? String(format: "%.2fx", p50 / bound) : "-", floor > 0 ? String(format: "%.2fx", p50 / floor) : "-", target))
                }
            }
            say("\nBOUND: the emulated RTT to the nearest peer (majority of 3) or the farthest (all); FLOOR: the fiber floor RTT from rtt-ms.csv.")
            if lagMisses + latencyMisses > 0 { say("\(lagMisses + latencyMisses) rows missed their target.") }
        }
    }
}
