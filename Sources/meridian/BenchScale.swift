import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness
import MeridianStore

extension Bench {
    struct Scale: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "scale",
            abstract: "Anti-entropy and restarts as a keyspace grows: per size, the Merkle root time, an anti-entropy round with 1,000 differing keys and with none, restart-to-writable and RSS.",
            discussion: """
                For each size, loads that many keys into the three regions of the demo cluster (the same writes in \
                every region: us-east's store commits them, the others apply them as its stream would; loaded in \
                this process before the nodes start, so loading takes minutes, not hours), then removes --differing \
                of them from eu-west's store (keys a region lost), starts the cluster with periodic anti-entropy off \
                and measures: the time to read us-east's Merkle root; one round of eu-west with every peer (POST \
                /v1/admin/repair) that repairs the missing keys, then one with nothing to repair, each with its wall \
                time and the CPU of all three nodes; eu-west's restart until it takes a write; each node's RSS. \
                --slot-keys-min 1000000000 runs the rounds without the second Merkle level (whole buckets). Build \
                with -c release; the cluster's files go to a temporary directory, removed afterwards.
                """)

        @Option(help: "Key counts, comma-separated.") var sizes: String = "100000,1000000,3000000"
        @Option(help: "Keys removed from eu-west before the first round.") var differing: Int = 1_000
        @Option(help: "Value size in bytes.") var valueBytes: Int = 100
        @Option(help: "anti_entropy_slot_keys_min of the cluster (default: the built-in one).") var slotKeysMin: Int?
        @Option(help: "Multiply the demo's RTTs by this (0: no emulated latency).") var latencyScale: Double = 1

        func validate() throws {
            guard !keyCounts.isEmpty, keyCounts.allSatisfy({ (1_000...10_000_000).contains($0) }) else {
                throw ValidationError("--sizes must name key counts from 1000 to 10000000, comma-separated.")
            }
            guard keyCounts.allSatisfy({ differing <= $0 / 2 }), differing >= 0 else { throw ValidationError("--differing must be 0 to half the smallest size.") }
            guard (1...(64 << 10)).contains(valueBytes) else { throw ValidationError("--value-bytes must be 1 to 65536.") }
            guard (slotKeysMin ?? 0) >= 0 else { throw ValidationError("--slot-keys-min must be 0 or more.") }
        }

        private var keyCounts: [Int] { sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

        func run() async throws {
            say("meridian bench scale: keyspace 'bench' (lww, async) in the demo's three regions, \(valueBytes)-byte values, \(differing) keys missing at eu-west, "
                + "anti_entropy_slot_keys_min \(slotKeysMin ?? MerkleSlots.keysMin), latency scale \(latencyScale)")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores; CPU is the three nodes' user + system time during the round\n")
            say("KEYS       LOAD s  ROOT ms  REPAIR ms  CPU ms  SLOTS  PULLED  CHANGED  IDLE ms  CPU ms  RESTART ms  RSS MiB (us/eu/ap)")
            for size in keyCounts { try await measure(size) }
        }

        private func measure(_ keys: Int) async throws {
            var yaml = try BenchCluster.yaml()
            var limits = "\nlimits:\n  anti_entropy_interval_ms: 0\n"
            if let slotKeysMin { limits += "  anti_entropy_slot_keys_min: \(slotKeysMin)\n" }
            yaml = yaml.replacingOccurrences(of: "\nlimits:\n", with: limits)
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-scale-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let cluster = try BenchCluster(directory: directory, latencyScale: latencyScale, yaml: yaml)
            let (us, eu, ap) = (try RegionName("us-east"), try RegionName("eu-west"), try RegionName("ap-southeast"))
            let keyspace = try KeyspaceName("bench")

            let loadStarted = ContinuousClock.now
            try await load(keys, into: cluster, keyspace: keyspace, origin: us, replicas: [eu, ap], missingAt: eu)
            let loadSeconds = (ContinuousClock.now - loadStarted).seconds

            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                let regions = [us, eu, ap]
                func cpuMs() -> Double {
                    regions.compactMap { cluster.local.pid($0) }.map { Bench.Security.cpuSeconds($0) }.reduce(0, +) * 1_000
                }
                // The root, read five times (the median).
                let reader = try await cluster.connect(us)
                var rootMs: [Double] = []
                for _ in 0..<5 {
                    let started = ContinuousClock.now
                    let answer = try await reader.request("GET", "/v1/admin/merkle/bench")
                    guard answer.status == 200 else { throw BenchFailure("the Merkle root answered \(answer.status): \(answer.text)") }
                    rootMs.append((ContinuousClock.now - started).seconds * 1_000)
                }
                await reader.close()
                // eu-west's rounds: the first repairs the keys it lost, the second finds nothing.
                // A round that pulls whole buckets of a large keyspace takes minutes.
                let euClient = cluster.local.endpoint(eu)
                let asker = try await HTTPConnection.connect(host: euClient.host, port: euClient.port, timeoutSeconds: 1_800,
                                                             credentials: cluster.local.credentials)
                func round() async throws -> (ms: Double, cpuMs: Double, reports: [[String: Any]]) {
                    let cpuBefore = cpuMs(), started = ContinuousClock.now
                    let answer = try await asker.request("POST", "/v1/admin/repair?keyspace=bench")
                    let elapsed = (ContinuousClock.now - started).seconds * 1_000
                    guard answer.status == 200, let reports = (try? JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any])?["repairs"] as? [[String: Any]],
                          reports.allSatisfy({ $0["error"] == nil }) else {
                        throw BenchFailure("the repair did not complete: \(answer.status) \(answer.text.prefix(500))")
                    }
                    return (elapsed, cpuMs() - cpuBefore, reports)
                }
                let repair = try await round()
                let idle = try await round()
                await asker.close()
                let changed = repair.reports.map { $0["keys_changed"] as? Int ?? 0 }.reduce(0, +)
                guard changed == differing, idle.reports.allSatisfy({ ($0["keys_changed"] as? Int ?? 1) == 0 && ($0["buckets_differing"] as? Int ?? 1) == 0 }) else {
                    throw BenchFailure("the first round changed \(changed) keys (\(differing) were missing) or the second found differences: \(idle.reports)")
                }
                // eu-west stopped and started again, until it takes a write.
                let rss = regions.map { Self.rssMiB(cluster.local.pid($0)) }
                guard let process = cluster.local.process(eu) else { throw BenchFailure("eu-west is not running") }
                await LocalProcesses.stop(process)
                let restartStarted = ContinuousClock.now
                try cluster.local.startNode(eu)
                var restartMs: Double?
                for _ in 0..<1_200 where restartMs == nil {
                    if let writer = try? await cluster.connect(eu) {
                        if let answer = try? await writer.request("PUT", "/v1/kv/bench/restart-probe", body: Array("x".utf8)), answer.status == 200 {
                            restartMs = (ContinuousClock.now - restartStarted).seconds * 1_000
                        }
                        await writer.close()
                    }
                    if restartMs == nil { try await Task.sleep(for: .milliseconds(100)) }
                }
                guard let restartMs else { throw BenchFailure("eu-west took no write within 120 s of its restart; see \(cluster.local.log(eu))") }
                let slots = repair.reports.map { $0["slots_differing"] as? Int ?? 0 }.reduce(0, +)
                let pulled = repair.reports.map { $0["keys_received"] as? Int ?? 0 }.reduce(0, +)
                say(String(keys).padding(toLength: 9, withPad: " ", startingAt: 0)
                    + String(format: " %7.1f %8.1f %10.0f %7.0f %6d %7d %8d %8.0f %7.0f %11.0f  ", loadSeconds, rootMs.sorted()[2], repair.ms, repair.cpuMs,
                             slots, pulled, changed, idle.ms, idle.cpuMs, restartMs)
                    + rss.map { String(format: "%.0f", $0) }.joined(separator: "/"))
            }
        }

        /// Loads `keys` keys: `origin`'s store commits them (its log then trimmed, as once every peer applied it)
        /// and every replica applies the same entries; then `missingAt` loses `differing` of them.
        private func load(_ keys: Int, into cluster: BenchCluster, keyspace: KeyspaceName, origin: RegionName, replicas: [RegionName],
                          missingAt: RegionName) async throws {
            var limits = Limits()
            limits.commitBatchMax = 4_096
            limits.commitQueueMax = 16_384
            func open(_ region: RegionName) throws -> RegionStore {
                let data = cluster.local.dataDirectory(region)
                try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
                return try RegionStore(path: (data as NSString).appendingPathComponent("\(region).sqlite"), region: region, limits: limits,
                                       physicalClockMs: { UInt64(Date().timeIntervalSince1970 * 1_000) })
            }
            let writer = try open(origin)
            let peers = try replicas.map(open)
            defer {
                writer.close()
                for store in peers { store.close() }
            }
            let value = [UInt8](repeating: UInt8(ascii: "v"), count: valueBytes)
            let chunk = 4_096
            var last: UInt64 = 0
            for start in stride(from: 0, to: keys, by: chunk) {
                let entries = try await withThrowingTaskGroup(of: ReplicationEntry.self) { group in
                    for index in start..<min(start + chunk, keys) {
                        group.addTask {
                            let request = WriteRequest(keyspace: keyspace, key: try Key("key-\(index)"), operation: .put, contentType: "application/octet-stream",
                                                       value: value, precondition: nil)
                            guard case .committed(let entry) = try await writer.write(request) else { throw BenchFailure("a load write was not committed") }
                            return entry
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }.sorted { $0.sequence < $1.sequence }
                }
                last = entries.last!.sequence
                for store in peers {
                    _ = try await store.applyReplicated(origin: origin, from: entries.first!.sequence, through: entries.last!.sequence, entries: entries,
                                                        diverted: [:], durable: true)
                }
            }
            try await writer.trimLog(origin: origin, through: last)
            for store in peers { try await store.trimLog(origin: origin, through: last) }
            guard differing > 0, let lossy = replicas.firstIndex(of: missingAt).map({ peers[$0] }) else { return }
            let step = keys / differing
            let lost = try (0..<differing).map { (key: try Key("key-\($0 * step)"), state: KeyState?.none) }
            try await lossy.replaceStates(keyspace: keyspace, lost)
        }

        /// A process's resident set in MiB, from /proc (0 when it cannot be read).
        static func rssMiB(_ pid: Int32?) -> Double {
            guard let pid, let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                  let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                  let kib = Double(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
            return kib / 1_024
        }
    }
}
