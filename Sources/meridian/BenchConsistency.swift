import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore

extension Bench {
    struct Consistency: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "consistency",
            abstract: "Read latency per consistency level from each region, beside the RTT to the leader, on a cluster of real processes behind the WAN emulator.",
            discussion: """
                Starts its own cluster with the demo's regions and RTTs on free ports (a WAN emulator and one node per region, \
                all stopped at the end), writes --keys keys to a single-leader keyspace led by us-east with majority acks, waits \
                until every region has them, then from a client in each region reads them sequentially at each level: eventual, \
                prefix, session (with the token the client got reading them), bounded (--max-staleness-ms) and strong. Prints \
                p50/p99 per region and level, how many reads were forwarded, and the RTT to the leader. Build with -c release.
                """)

        @Option(help: "Multiply every emulated delay (1 = real scale).") var latencyScale: Double = 1
        @Option(help: "Keys written, then read at every level.") var keys: Int = 100
        @Option(help: "Reads per region and level.") var reads: Int = 200
        @Option(help: "The bound of bounded reads, in ms.") var maxStalenessMs: Int = 1_000
        @Option(help: "Where the cluster's data and logs go (default: a temporary directory, removed afterwards).") var data: String?

        func validate() throws {
            guard latencyScale > 0 && latencyScale <= 10 else { throw ValidationError("--latency-scale must be above 0 and at most 10.") }
            guard (1...100_000).contains(keys) else { throw ValidationError("--keys must be 1 to 100000.") }
            guard (1...1_000_000).contains(reads) else { throw ValidationError("--reads must be 1 to 1000000.") }
            guard (0...86_400_000).contains(maxStalenessMs) else { throw ValidationError("--max-staleness-ms must be 0 to 86400000.") }
        }

        func run() async throws {
            try await BenchCluster.with(directory: data, latencyScale: latencyScale) { try await measure($0) }
        }

        private func measure(_ cluster: BenchCluster) async throws {
            let leader = RegionName(validated: "us-east")
            let regions = cluster.config.regions.map(\.name)
            say("meridian bench consistency: \(regions.count) regions, latency scale \(latencyScale), \(keys) keys in single-leader keyspace 'ledger' (leader \(leader), majority acks), \(reads) sequential reads per region and level, bounded at \(maxStalenessMs) ms")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")
            let writer = try await cluster.connect(leader)
            for index in 0..<keys {
                let response = try await writer.request("PUT", "/v1/kv/ledger/key-\(index)", body: Array(repeating: 0x63, count: 100))
                guard response.status == 200 else { throw CLIFailure("preloading ledger/key-\(index) failed: \(response.status) \(response.text)") }
            }
            await writer.close()
            try await cluster.waitCaughtUp(origin: leader, entries: UInt64(keys))
            // Let a few heartbeats echo, so each follower knows how fresh it is.
            try await Task.sleep(for: .milliseconds(Int(500 + 300 * latencyScale)))

            say("\nREAD LATENCY BY LEVEL (ms; \(reads) sequential reads each; FWD: reads another region answered)")
            say("REGION          LEVEL      p50 ms   p99 ms   FWD  RTT TO LEADER  target")
            var misses = 0
            for region in regions {
                let connection = try await cluster.connect(region)
                // The session token a client in this region holds after reading the keys once.
                var token = ""
                for index in 0..<keys {
                    let response = try await connection.request("GET", "/v1/kv/ledger/key-\(index)", headers: [("Meridian-Consistency", "eventual")] + (token.isEmpty ? [] : [("Meridian-Session", token)]))
                    token = response.header("Meridian-Session") ?? token
                }
                let rtt = cluster.rttMs(region, leader) * latencyScale
                for level in ["eventual", "prefix", "session", "bounded", "strong"] {
                    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                    var forwarded = 0
                    for index in 0..<reads {
                        var headers = [("Meridian-Consistency", level)]
                        if level == "session" { headers.append(("Meridian-Session", token)) }
                        if level == "bounded" { headers.append(("Meridian-Max-Staleness-Ms", String(maxStalenessMs))) }
                        let started = ContinuousClock.now
                        let response = try await connection.request("GET", "/v1/kv/ledger/key-\(index % keys)", headers: headers)
                        let elapsed = ContinuousClock.now - started
                        guard response.status == 200 else { throw CLIFailure("a \(level) read in \(region) failed: \(response.status) \(response.text)") }
                        if response.header("Meridian-Forwarded-To") != nil { forwarded += 1 }
                        histogram.record(UInt64(elapsed.components.seconds) * 1_000_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000_000))
                    }
                    let p50 = Double(histogram.valueAtPercentile(50)) / 1000, p99 = Double(histogram.valueAtPercentile(99)) / 1000
                    let target: String
                    switch level {
                    case "session", "bounded":
                        let met = p50 < 2
                        if !met { misses += 1 }
                        target = (met ? "yes" : "NO") + " (p50 < 2, local)"
                    case "strong" where region != leader:
                        let met = p50 <= rtt + 3
                        if !met { misses += 1 }
                        target = (met ? "yes" : "NO") + String(format: " (p50 <= RTT+3 = %.1f)", rtt + 3)
                    default:
                        target = "-"
                    }
                    say(region.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0) + level.padding(toLength: 9, withPad: " ", startingAt: 0)
                        + String(format: "%8.2f %8.2f %5d %10.1f     %@", p50, p99, forwarded, rtt, target))
                }
                await connection.close()
            }
            if misses > 0 { say("\(misses) rows missed their target.") }
        }
    }
}
