// Proves the batched apply path changes nothing but its cost: random logs of three origins (puts, deletes,
// CRDT deltas, concurrent writes, keys repeated inside a batch) applied in random batches, with anti-entropy
// merging states from a peer now and then, end in
// exactly the states and conflict records that applying them one entry at a time gives, and that the
// in-memory store (the simulator's) gives, under every conflict rule; and local writes committed together
// in one batch see each other.
import Foundation
import GRDB
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

@Suite struct BatchedApplyTests {
    static let origins = [RegionName(validated: "eu-west"), RegionName(validated: "ap-southeast"), RegionName(validated: "sa-east")]
    static let keys = (0..<6).map { try! Key("k\($0)") }

    /// One origin's log over a few keys: each entry has seen a random part of what the origin had seen.
    static func logs(rule: ConflictRule, keyspace: KeyspaceName, entries: Int, random: inout SeededGenerator) throws -> [RegionName: [ReplicationEntry]] {
        var logs: [RegionName: [ReplicationEntry]] = [:]
        var counters: [RegionName: [Key: CRDTValue]] = [:]
        for index in 0..<(entries * origins.count) {
            let origin = origins[index % origins.count]
            let sequence = UInt64(logs[origin, default: []].count + 1)
            let key = keys.randomElement(using: &random)!
            let hlc = HLCTimestamp(physicalMs: 1_000 + UInt64.random(in: 0...400, using: &random), logical: 0, region: origin)
            var context: [RegionName: UInt64] = [:]
            for other in origins where Bool.random(using: &random) {
                let written = logs[other, default: []].count
                if written > 0 { context[other] = UInt64.random(in: 1...UInt64(written), using: &random) }
            }
            context[origin] = nil
            let operation: MeridianCore.Operation
            var value: [UInt8]
            var contentType = "text/plain"
            if rule == .crdt {
                var counter = counters[origin, default: [:]][key] ?? .empty(.gCounter)
                value = CRDTCodec.encode(try counter.apply(.increment(UInt64.random(in: 1...5, using: &random)), at: hlc))
                counters[origin, default: [:]][key] = counter
                (operation, contentType) = (.merge, CRDTCodec.contentType)
            } else if Int.random(in: 0..<5, using: &random) == 0 {
                (operation, value) = (.delete, [])
            } else {
                (operation, value) = (.put, Array("\(origin):\(sequence)".utf8))
            }
            logs[origin, default: []].append(ReplicationEntry(origin: origin, sequence: sequence, hlc: hlc, epoch: 0, keyspace: keyspace, key: key,
                                                              operation: operation, contentType: contentType, value: value, context: context))
        }
        return logs
    }

    struct Outcome: Equatable {
        var states: [Key: KeyState] = [:]
        var conflicts: Set<String> = []
        var conflictCount = 0

        /// What differs from `other`, briefly.
        func differences(from other: Outcome) -> [String] {
            var found = keys.filter { states[$0] != other.states[$0] }.map { "\($0): \(String(describing: states[$0])) against \(String(describing: other.states[$0]))" }
            found += conflicts.symmetricDifference(other.conflicts).sorted().map { "conflict record only on one side: \($0)" }
            if conflictCount != other.conflictCount { found.append("conflict count \(conflictCount) against \(other.conflictCount)") }
            return found
        }
    }

    /// What a store keeps beside its keys equals what the keys say: the tree, every bucket's slot leaves (summing
    /// to the bucket's leaf), and the count of live keys.
    static func keptLeavesAreTheKeys(_ store: any RegionStorage, _ keyspace: KeyspaceName, rule: ConflictRule) async throws -> [String] {
        var found: [String] = []
        let every = try await store.states(keyspace: keyspace, buckets: Set(0..<MerkleTree.bucketCount), after: nil, bytesMax: 1 << 30)
        #expect(every.next == nil)
        let (tree, keys) = try await store.merkleTree(keyspace: keyspace)
        if tree != MerkleTree(states: every.states) || keys != every.states.count { found.append("the tree is not the keys' own") }
        let buckets = Array(0..<MerkleTree.bucketCount)
        let slots = try await store.merkleSlots(keyspace: keyspace, buckets: buckets)
        let differing = slots.differingSlots(MerkleSlots(buckets: buckets, states: every.states))
        if !differing.isEmpty { found.append("slot leaves differ from the keys' own in slots \(differing.prefix(5))") }
        for bucket in buckets {
            var sum = MerkleTree.Leaf.empty
            for leaf in slots.leaves[bucket * MerkleTree.slotsPerBucket..<(bucket + 1) * MerkleTree.slotsPerBucket] { sum.add(leaf) }
            if sum.bytes != tree.leaves[bucket] { found.append("bucket \(bucket)'s leaf is not the sum of its slots") }
        }
        let live = every.states.filter { !$0.state.winner(rule).tombstone }.count
        if (try await store.keyCounts()[keyspace.rawValue] ?? 0) != live { found.append("the live key count is not \(live)") }
        return found
    }

    static func outcome(_ store: any RegionStorage, _ keyspace: KeyspaceName) async throws -> Outcome {
        var outcome = Outcome()
        for key in keys { outcome.states[key] = try await store.state(keyspace: keyspace, key: key) }
        for record in try await store.conflicts(keyspace: keyspace, key: nil, after: 0, limit: 100_000) {
            outcome.conflicts.insert("\(record.key) lost \(record.loser.version.origin):\(record.loser.version.sequence) to \(record.winner.origin):\(record.winner.sequence) by \(record.rule)")
        }
        outcome.conflictCount = try await store.conflictCounts()[keyspace.rawValue] ?? 0
        return outcome
    }

    @Test(arguments: [ConflictRule.lww, .fww, .siblings, .regionPriority([RegionName(validated: "sa-east"), RegionName(validated: "eu-west")]), .crdt])
    func batchesEndWhereOneEntryAtATimeEnds(_ rule: ConflictRule) async throws {
        for seed in UInt64(1)...12 {
            var random = SeededGenerator(seed: seed)
            let batched = StoreFixture(.sqlite), single = StoreFixture(.sqlite), memory = StoreFixture(.memory)
            defer { batched.remove(); single.remove(); memory.remove() }
            let keyspace = batched.keyspace
            let rules = [keyspace: rule]
            let stores = try await [batched.open(rules: rules), single.open(rules: rules), memory.open(rules: rules)]
            defer { for store in stores { store.close() } }
            let logs = try Self.logs(rule: rule, keyspace: keyspace, entries: 40, random: &random)
            // A peer that applied every log already: anti-entropy merges some of its key states now and then.
            let peer = StoreFixture(.memory)
            defer { peer.remove() }
            let peerStore = try await peer.open(rules: rules)
            defer { peerStore.close() }
            for origin in Self.origins { _ = try await peerStore.applyReplicated(logs[origin]!, origin: origin) }
            var applied: [RegionName: Int] = [:]
            // Batches of random lengths from random origins, until every log is applied; some batches resend a
            // part already applied, as a reconnecting stream does.
            for _ in 0..<1_000 {
                let waiting = Self.origins.filter { applied[$0, default: 0] < logs[$0]!.count }
                guard let origin = waiting.randomElement(using: &random) else { break }
                let log = logs[origin]!
                let start = max(0, applied[origin, default: 0] - Int.random(in: 0...2, using: &random))
                let end = min(log.count, applied[origin, default: 0] + Int.random(in: 1...12, using: &random))
                let batch = Array(log[start..<end])
                let expected = UInt64(end)
                #expect(try await stores[0].applyReplicated(batch, origin: origin) == expected)
                for entry in batch { #expect(try await stores[1].applyReplicated([entry], origin: origin) >= entry.sequence) }
                #expect(try await stores[2].applyReplicated(batch, origin: origin) == expected)
                applied[origin] = end
                if Int.random(in: 0..<6, using: &random) == 0 {
                    var states: [(key: Key, state: KeyState)] = []
                    for key in Self.keys.shuffled(using: &random).prefix(3) {
                        if let state = try await peerStore.state(keyspace: keyspace, key: key) { states.append((key, state)) }
                    }
                    _ = try await stores[0].merge(keyspace: keyspace, states: states)
                    for item in states { _ = try await stores[1].merge(keyspace: keyspace, states: [item]) }
                    _ = try await stores[2].merge(keyspace: keyspace, states: states)
                }
            }
            #expect(Self.origins.allSatisfy { applied[$0] == logs[$0]!.count })
            let outcomes = try await stores.asyncMap { try await Self.outcome($0, keyspace) }
            let oneAtATime = outcomes[0].differences(from: outcomes[1]), inMemory = outcomes[0].differences(from: outcomes[2])
            #expect(oneAtATime.isEmpty, "seed \(seed): batched and one-at-a-time SQLite differ (\(oneAtATime.count)): \(oneAtATime.prefix(2))")
            #expect(inMemory.isEmpty, "seed \(seed): SQLite and the in-memory store differ (\(inMemory.count)): \(inMemory.prefix(2))")
            #expect(rule.discardsLosers == (outcomes[0].conflictCount > 0) || seed > 1, "seed \(seed): the run made no conflict to compare")
            let roots = try await stores.asyncMap { try await $0.merkleTree(keyspace: keyspace).tree.root }
            #expect(Set(roots).count == 1, "seed \(seed): Merkle roots differ")
            for store in stores.prefix(2) {
                let sqlite = try #require(store as? RegionStore)
                let (kept, scanned) = (try await sqlite.merkleTree(keyspace: keyspace), try await sqlite.scannedMerkleTree(keyspace: keyspace))
                #expect(kept.tree == scanned.tree && kept.keys == scanned.keys, "seed \(seed): the kept Merkle leaves are not the keys' own")
            }
            for store in stores {
                let problems = try await Self.keptLeavesAreTheKeys(store, keyspace, rule: rule)
                #expect(problems.isEmpty, "seed \(seed): \(problems)")
            }
        }
    }

    /// Under a small conflicts log, a batch drops the oldest records as one entry at a time does.
    @Test func theConflictsLogStaysBoundedAcrossBatches() async throws {
        var random = SeededGenerator(seed: 7)
        let limits = { var limits = Limits(); limits.conflictsLogMax = 5; return limits }()
        let batched = StoreFixture(.sqlite), single = StoreFixture(.sqlite)
        defer { batched.remove(); single.remove() }
        let counter = ConflictCounter()
        let stores = try await [batched.open(limits: limits, observer: counter, rules: [batched.keyspace: .lww]),
                          single.open(limits: limits, rules: [single.keyspace: .lww])]
        defer { for store in stores { store.close() } }
        let logs = try Self.logs(rule: .lww, keyspace: batched.keyspace, entries: 30, random: &random)
        for origin in Self.origins {
            _ = try await stores[0].applyReplicated(logs[origin]!, origin: origin)
            for entry in logs[origin]! { _ = try await stores[1].applyReplicated([entry], origin: origin) }
        }
        let outcomes = try await stores.asyncMap { try await Self.outcome($0, batched.keyspace) }
        #expect(outcomes[0].conflictCount == 5 && outcomes[0].conflicts.count == 5)
        #expect(outcomes[0].states == outcomes[1].states && outcomes[0].conflictCount == outcomes[1].conflictCount)
        #expect(counter.recorded - counter.dropped >= 5 && counter.dropped > 0, "the observer hears what was recorded and dropped: \(counter.recorded), \(counter.dropped)")
    }

    /// The Merkle leaves kept in the write transactions equal, after every kind of change (local writes, applies,
    /// merges, keys replaced or removed by a revert), the tree computed from every key.
    @Test func theKeptMerkleLeavesFollowEveryChange() async throws {
        var random = SeededGenerator(seed: 3)
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let store = try #require(try await fixture.open(rules: [fixture.keyspace: .lww]) as? RegionStore)
        defer { store.close() }
        let logs = try Self.logs(rule: .lww, keyspace: fixture.keyspace, entries: 30, random: &random)
        var applied: [RegionName: Int] = [:]
        for step in 0..<60 {
            switch step % 4 {
            case 0:
                _ = try await store.write(fixture.put(Self.keys.randomElement(using: &random)!.rawValue, "local \(step)"))
            case 1, 2:
                let origin = Self.origins.randomElement(using: &random)!
                let start = applied[origin, default: 0], end = min(logs[origin]!.count, start + Int.random(in: 1...6, using: &random))
                if end > start { _ = try await store.applyReplicated(Array(logs[origin]![start..<end]), origin: origin) }
                applied[origin] = end
            default:
                // A revert: one key takes another's state, one is removed.
                let (from, to, gone) = (Self.keys.randomElement(using: &random)!, Self.keys.randomElement(using: &random)!, Self.keys.randomElement(using: &random)!)
                let state = try await store.state(keyspace: fixture.keyspace, key: from)
                try await store.replaceStates(keyspace: fixture.keyspace, [(key: to, state: state), (key: gone, state: nil)])
            }
            let (kept, scanned) = (try await store.merkleTree(keyspace: fixture.keyspace), try await store.scannedMerkleTree(keyspace: fixture.keyspace))
            #expect(kept.tree == scanned.tree && kept.keys == scanned.keys, "step \(step): the kept leaves are not the keys' own")
            let problems = try await Self.keptLeavesAreTheKeys(store, fixture.keyspace, rule: .lww)
            #expect(problems.isEmpty, "step \(step): \(problems)")
        }
    }

    /// Slot leaves live as appended delta rows until enough gather to be folded into the slot table in one go; across
    /// folds (and the rows appended after the last one) the kept slots stay the keys' own, with writes and deletes.
    @Test func slotLeavesStayTheKeysOwnAcrossFolds() async throws {
        var random = SeededGenerator(seed: 5)
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let store = try await fixture.open(rules: [fixture.keyspace: .lww])
        defer { store.close() }
        let keys = (0..<300).map { "fold-\($0)" }
        var deltaRows: [Int] = []
        // More than two folds' worth of commits (512 rows each), one write per commit.
        for step in 0..<1_100 {
            let key = keys.randomElement(using: &random)!
            if step % 7 == 6 {
                _ = try await store.write(WriteRequest(keyspace: fixture.keyspace, key: try Key(key), operation: .delete, contentType: "", value: []))
            } else {
                _ = try await store.write(fixture.put(key, "v\(step)"))
            }
            if step % 100 == 99 {
                let problems = try await Self.keptLeavesAreTheKeys(store, fixture.keyspace, rule: .lww)
                #expect(problems.isEmpty, "step \(step): \(problems)")
                let rows = try await DatabaseQueue(path: fixture.path).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM merkle_slot_deltas") ?? -1 }
                deltaRows.append(rows)
            }
        }
        // The rows grew, were folded away (their count fell), and never reached a fold's worth.
        #expect(zip(deltaRows, deltaRows.dropFirst()).contains { $0 > $1 })
        #expect(deltaRows.allSatisfy { (0..<512).contains($0) })
    }

    /// A store made before the leaves were kept gets them, once, when it opens: its keys' slots and item hashes,
    /// every slot's and bucket's leaf, the same tree as computed from the keys. So does a store that kept only the
    /// buckets' leaves (from its stored item hashes).
    @Test(arguments: ["no leaves", "bucket leaves"])
    func aStoreFromBeforeTheKeptLeavesGetsThemWhenItOpens(_ schema: String) async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        var store = try await fixture.open()
        for index in 0..<40 { _ = try await store.write(fixture.put("k\(index)", "v\(index)")) }
        _ = try await store.write(fixture.delete("k3"))
        let before = try await store.merkleTree(keyspace: fixture.keyspace)
        store.close()
        // Back to the schema before the slots were kept (with buckets in `kv` and no live counts), or before any leaf was.
        let queue = try DatabaseQueue(path: fixture.path)
        try await queue.write { db in
            try db.execute(sql: """
                DROP TABLE merkle_slots;
                DROP TABLE merkle_slot_deltas;
                DROP INDEX kv_slot;
                ALTER TABLE kv RENAME COLUMN slot TO bucket;
                UPDATE kv SET bucket = bucket / 256;
                ALTER TABLE merkle_leaves DROP COLUMN live;
                DELETE FROM grdb_migrations WHERE identifier = 'v12-merkle-slots';
                """)
            if schema == "no leaves" {
                try db.execute(sql: """
                    DROP TABLE merkle_leaves;
                    ALTER TABLE kv DROP COLUMN bucket;
                    ALTER TABLE kv DROP COLUMN item;
                    DELETE FROM grdb_migrations WHERE identifier = 'v11-merkle-leaves';
                    """)
            }
        }
        try queue.close()
        store = try await fixture.open()
        defer { store.close() }
        let sqlite = try #require(store as? RegionStore)
        let (after, scanned) = (try await sqlite.merkleTree(keyspace: fixture.keyspace), try await sqlite.scannedMerkleTree(keyspace: fixture.keyspace))
        #expect(after.tree == before.tree && after.keys == 40 && scanned.tree == after.tree)
        let problems = try await Self.keptLeavesAreTheKeys(store, fixture.keyspace, rule: .lww)
        #expect(problems.isEmpty, "\(problems)")
        #expect(try await store.keyCounts()[fixture.keyspace.rawValue] == 39)
        // Writes after the migration keep every level up to date.
        _ = try await store.write(fixture.put("k3", "back"))
        _ = try await store.write(fixture.put("k40", "new"))
        #expect(try await Self.keptLeavesAreTheKeys(store, fixture.keyspace, rule: .lww).isEmpty)
        #expect(try await store.keyCounts()[fixture.keyspace.rawValue] == 41)
    }

    /// A page of a few slots' states holds only their keys, each once, in slot then key order, in both stores; so
    /// does a run of pages of several slot ranges with a small byte bound.
    @Test(arguments: Backend.allCases)
    func statesOfSlotsArePagedInSlotOrder(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        defer { store.close() }
        // ASCII keys, and keys whose UTF-8 order differs from Swift's string order: "é" as one scalar and as "e"
        // with a combining accent (two keys, though Swift's strings call them equal), and a character past U+FFFF.
        let keys = (0..<600).map { "key-\($0)" } + (0..<40).flatMap { ["clé-\($0)", "cle\u{301}-\($0)", "🗝-\($0)", "z\u{10FFFD}\($0)"] }
        for key in keys { _ = try await store.write(fixture.put(key, "value of \(key)")) }
        #expect(try await store.keyCounts()[fixture.keyspace.rawValue] == keys.count, "canonically equivalent spellings are two keys")
        let placed = try keys.map { key in (slot: MerkleTree.slot(of: try Key(key)), key: key) }
            .sorted { $0.slot != $1.slot ? $0.slot < $1.slot : Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }
        let someSlots = Array(Set(placed.map(\.slot))).sorted().enumerated().filter { $0.offset % 3 == 0 }.map(\.element)
        let ranges = someSlots.map { $0...$0 } + [MerkleTree.slots(ofBucket: 200)]
        let expected = placed.filter { item in ranges.contains { $0.contains(item.slot) } }.map(\.key)
        var read: [String] = []
        var after: Key?
        for _ in 0..<1_000 {
            let page = try await store.states(keyspace: fixture.keyspace, slots: ranges, after: after, bytesMax: 300)
            #expect(!page.states.isEmpty)
            read += page.states.map(\.key.rawValue)
            guard let next = page.next else { break }
            after = next
        }
        #expect(read.map { Array($0.utf8) } == expected.map { Array($0.utf8) }, "\(read.count) keys read, \(expected.count) expected")
        // The same keys' items, paged, are the items of their states; their states are read back by key.
        var items: [(key: Key, item: MerkleTree.Leaf)] = []
        after = nil
        for _ in 0..<1_000 {
            let page = try await store.items(keyspace: fixture.keyspace, slots: ranges, after: after, bytesMax: 300)
            #expect(KeyItemCodec.encode(page.items).count <= 300)
            items += page.items
            guard let next = page.next else { break }
            after = next
        }
        #expect(items.map { Array($0.key.rawValue.utf8) } == expected.map { Array($0.utf8) })
        let states = try await store.states(keyspace: fixture.keyspace, keys: items.map(\.key) + [try Key("never-written")])
        #expect(states.map(\.key) == items.map(\.key))
        #expect(zip(states, items).allSatisfy { MerkleTree.item($0.key, state: $0.state) == $1.item })
    }

    /// Writes committed in one transaction to the same keys each see the one before: every key ends with the
    /// last committed write, having seen every earlier one, and the log holds them all in order.
    @Test func localWritesInOneCommitSeeEachOther() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        var limits = Limits()
        limits.commitWaitUs = 2_000
        let store = try await fixture.open(limits: limits)
        defer { store.close() }
        let outcomes = try await withThrowingTaskGroup(of: WriteOutcome.self) { group in
            for index in 0..<60 {
                group.addTask { try await store.write(fixture.put("k\(index % 3)", "v\(index)")) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let entries = try outcomes.map { outcome -> ReplicationEntry in
            guard case .committed(let entry) = outcome else { throw MeridianError(.internalError, "not committed: \(outcome)") }
            return entry
        }
        #expect(Set(entries.map(\.sequence)) == Set(1...60))
        for key in ["k0", "k1", "k2"] {
            let writes = entries.filter { $0.key.rawValue == key }.sorted { $0.sequence < $1.sequence }
            let state = try #require(try await store.state(keyspace: fixture.keyspace, key: Key(key)))
            #expect(state.versions.count == 1 && state.versions[0].version == writes.last!.version, "\(key) holds its last write only")
            #expect(writes.allSatisfy { state.context.contains(Dot(region: $0.origin, counter: $0.sequence)) })
            #expect(zip(writes, writes.dropFirst()).allSatisfy { $0.hlc < $1.hlc }, "\(key)'s writes are stamped in commit order")
        }
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
