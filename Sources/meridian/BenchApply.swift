import ArgumentParser
import Foundation
import MeridianCore
import MeridianStore

extension Bench {
    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "apply",
            abstract: "The apply path of replicated batches in one process: entries per second and microseconds per entry.",
            discussion: """
                Opens a temporary SQLite store of eu-west and applies logs to it in batches, as a replica's stream \
                does, in four phases: us-east's entries to keys the store does not hold yet; us-east's entries \
                overwriting them (each having seen the one before); ap-southeast's entries to the same keys, concurrent \
                with us-east's (each leaves an LWW loser in the conflicts log); us-east's entries concurrent with \
                those (each leaves another). No network and no HTTP: only the store's apply. Build with -c release. \
                Instructions per entry, per phase: scripts/instructions.sh apply (callgrind; --through stops after a \
                phase, so the script counts each phase as a difference of two runs).
                """)

        @Option(help: "Entries per batch (a replication batch holds at most 256).") var batchEntries: Int = 256
        @Option(help: "Batches per phase.") var batches: Int = 100
        @Option(help: "Value size in bytes.") var valueBytes: Int = 100
        @Option(help: "Stop after this phase (1 to 4).") var through: Int = 4
        @Flag(help: "Apply as a replica does for async entries: visible at once, without an fsync per batch (one sync at the end).")
        var visible = false

        func validate() throws {
            guard (1...4_096).contains(batchEntries) else { throw ValidationError("--batch-entries must be 1 to 4096.") }
            guard (1...100_000).contains(batches) else { throw ValidationError("--batches must be 1 to 100000.") }
            guard (0...(1 << 20)).contains(valueBytes) else { throw ValidationError("--value-bytes must be 0 to 1048576.") }
            guard (1...4).contains(through) else { throw ValidationError("--through must be 1 to 4.") }
        }

        func run() async throws {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-apply-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let keyspace = try KeyspaceName("bench")
            let (us, eu, ap) = (RegionName(validated: "us-east"), RegionName(validated: "eu-west"), RegionName(validated: "ap-southeast"))
            let store = try RegionStore(path: directory + "/eu-west.sqlite", region: eu, limits: Limits(), conflictRules: [keyspace: .lww],
                                        physicalClockMs: { UInt64(Date().timeIntervalSince1970 * 1000) })
            defer { store.close() }
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: valueBytes)
            let keys = batches * batchEntries
            var next: [RegionName: UInt64] = [:]
            // Per key, the last sequence each origin wrote to it: what a writer that saw those writes names in its context.
            var written: [[RegionName: UInt64]] = Array(repeating: [:], count: batches * batchEntries)
            func batch(_ origin: RegionName, keys range: Range<Int>, ms: UInt64, sees: Set<RegionName>) -> [ReplicationEntry] {
                range.map { index in
                    let sequence = next[origin, default: 0] + 1
                    next[origin] = sequence
                    let context = written[index].filter { sees.contains($0.key) }
                    written[index][origin] = sequence
                    return ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: ms + UInt64(index), logical: 0, region: origin),
                                            epoch: 0, keyspace: keyspace, key: try! Key("k\(index)"), operation: .put, contentType: "application/octet-stream",
                                            value: value, context: context)
                }
            }
            func apply(_ origin: RegionName, _ entries: [ReplicationEntry]) async throws {
                _ = try await store.applyReplicated(origin: origin, from: entries.first!.sequence, through: entries.last!.sequence, entries: entries,
                                                    diverted: [:], durable: !visible)
            }
            say("meridian bench apply: \(batches) batches of \(batchEntries) entries per phase, \(valueBytes)-byte values, one SQLite store, one process, "
                + (visible ? "visible applies (no fsync per batch)" : "durable applies (an fsync per batch)"))
            say("PHASE                        ENTRIES   ENTRIES/s   µs/entry")
            func phase(_ name: String, _ body: () async throws -> Void) async throws {
                let started = ContinuousClock.now
                try await body()
                let elapsed = ContinuousClock.now - started
                let seconds = elapsed.seconds
                say(name.padding(toLength: 26, withPad: " ", startingAt: 0) + String(format: " %9d %11.0f %10.2f", keys, Double(keys) / seconds, seconds * 1e6 / Double(keys)))
            }
            let base: UInt64 = 1_800_000_000_000
            // Each phase writes every key once more: (phase name, origin, HLC base, whose earlier writes the writer saw).
            let phases: [(String, RegionName, UInt64, Set<RegionName>)] = [
                ("new keys", us, base, []), ("overwrites", us, base + 10_000_000, [us]),
                // ap-southeast writes every key without having seen us-east's writes; then us-east writes them again
                // having seen only its own: each entry meets a concurrent version and leaves a loser.
                ("concurrent (new losers)", ap, base + 20_000_000, []), ("concurrent (losers again)", us, base + 30_000_000, [us]),
            ]
            for (name, origin, ms, sees) in phases.prefix(through) {
                try await phase(name) {
                    for start in stride(from: 0, to: keys, by: batchEntries) {
                        try await apply(origin, batch(origin, keys: start..<min(start + batchEntries, keys), ms: ms, sees: sees))
                    }
                }
            }
            if visible { _ = try await store.syncApplied() }
            // The Merkle tree anti-entropy compares: kept up to date in the applies, against computed from every key.
            for (name, tree) in [("kept leaves", { () async throws -> Int in try await store.merkleTree(keyspace: keyspace).keys }),
                                 ("computed from every key", { () async throws -> Int in try await store.scannedMerkleTree(keyspace: keyspace).keys })] {
                let started = ContinuousClock.now
                let keys = try await tree()
                let elapsed = ContinuousClock.now - started
                say(String(format: "Merkle tree, %@: %d keys in %.2f ms", name, keys,
                           Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15))
            }
            let conflicts = try await store.conflicts(keyspace: keyspace, key: nil, after: 0, limit: 1)
            say("conflicts log: \(conflicts.isEmpty ? "empty" : "holds the losers") (bounded by limits.conflicts_log_max)")
        }
    }
}
