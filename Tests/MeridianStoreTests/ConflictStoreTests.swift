// Proves the store's conflict handling: concurrent writes from two origins resolve by the keyspace's rule
// with the loser in the conflicts log (exactly once, in every arrival order); the log keeps at most
// `conflicts_log_max` records per keyspace, dropping the oldest and saying how many; anti-entropy merges
// another store's states to the same Merkle root, idempotently; a local write supersedes what it saw.
import Foundation
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

final class ConflictCounter: StoreObserver, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var recorded = 0, dropped = 0
    func commitCompleted(writes: Int, commitSeconds: Double) {}
    func conflictsRecorded(keyspace: KeyspaceName, recorded: Int, dropped: Int) {
        lock.lock()
        self.recorded += recorded
        self.dropped += dropped
        lock.unlock()
    }
}

@Suite struct ConflictStoreTests {
    let eu = RegionName(validated: "eu-west")
    let ap = RegionName(validated: "ap-southeast")

    func entry(_ origin: RegionName, _ sequence: UInt64, key: String, value: String, ms: UInt64, context: [RegionName: UInt64] = [:]) -> ReplicationEntry {
        ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: ms, logical: 0, region: origin), epoch: 0,
                         keyspace: try! KeyspaceName("ks"), key: try! Key(key), operation: .put, contentType: "text/plain",
                         value: Array(value.utf8), context: context)
    }

    func open(_ fixture: StoreFixture, rule: ConflictRule, limits: Limits = Limits(), observer: (any StoreObserver)? = nil) async throws -> any RegionStorage {
        try await fixture.open(limits: limits, observer: observer, rules: [fixture.keyspace: rule])
    }

    @Test(arguments: Backend.allCases, [ConflictRule.lww, .fww])
    func concurrentWritesResolveAndTheLoserIsLoggedOnce(_ backend: Backend, _ rule: ConflictRule) async throws {
        for euFirst in [true, false] {
            let fixture = StoreFixture(backend)
            defer { fixture.remove() }
            let counter = ConflictCounter()
            let store = try await open(fixture, rule: rule, observer: counter)
            let early = entry(eu, 1, key: "k", value: "from-eu", ms: 100), late = entry(ap, 1, key: "k", value: "from-ap", ms: 200)
            for (origin, item) in euFirst ? [(eu, early), (ap, late)] : [(ap, late), (eu, early)] {
                _ = try await store.applyReplicated([item], origin: origin)
            }
            let stored = try #require(try await store.get(keyspace: fixture.keyspace, key: Key("k")))
            let (winner, loser) = rule == .lww ? ("from-ap", "from-eu") : ("from-eu", "from-ap")
            #expect(stored.value == Array(winner.utf8) && stored.concurrent == 1)
            let log = try await store.conflicts(keyspace: fixture.keyspace, key: nil, after: 0, limit: 10)
            #expect(log.count == 1 && log[0].loser.value == Array(loser.utf8) && log[0].rule == rule.name && counter.recorded == 1)
            // A write that saw both supersedes both: one version again, the log unchanged.
            let resolved = entry(eu, 2, key: "k", value: "resolved", ms: 50, context: [eu: 1, ap: 1])
            _ = try await store.applyReplicated([resolved], origin: eu)
            let after = try #require(try await store.state(keyspace: fixture.keyspace, key: Key("k")))
            #expect(after.versions.map(\.value) == [Array("resolved".utf8)], "causally later, even with a lower timestamp")
            #expect(try await store.conflicts(keyspace: fixture.keyspace, key: nil, after: 0, limit: 10).count == 1)
            store.close()
        }
    }

    @Test(arguments: Backend.allCases)
    func theConflictsLogIsBoundedOldestFirst(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var limits = Limits()
        limits.conflictsLogMax = 3
        let counter = ConflictCounter()
        let store = try await open(fixture, rule: .lww, limits: limits, observer: counter)
        for index in 0..<5 {
            _ = try await store.applyReplicated([entry(eu, UInt64(index + 1), key: "k\(index)", value: "eu", ms: 100)], origin: eu)
            _ = try await store.applyReplicated([entry(ap, UInt64(index + 1), key: "k\(index)", value: "ap", ms: 200)], origin: ap)
        }
        let log = try await store.conflicts(keyspace: fixture.keyspace, key: nil, after: 0, limit: 10)
        #expect(log.map(\.key.rawValue) == ["k2", "k3", "k4"], "the newest three kept")
        #expect(counter.recorded == 5 && counter.dropped == 2)
        // Paging by id.
        let page = try await store.conflicts(keyspace: fixture.keyspace, key: nil, after: log[0].id, limit: 1)
        #expect(page.map(\.key.rawValue) == ["k3"])
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func antiEntropyMergesToTheSameRootIdempotently(_ backend: Backend) async throws {
        let a = StoreFixture(backend), b = StoreFixture(backend)
        defer { a.remove(); b.remove() }
        let left = try await open(a, rule: .lww), right = try await open(b, rule: .lww)
        // Each store saw a different part: eu's writes on one side, ap's on the other, one key on both.
        _ = try await left.applyReplicated([entry(eu, 1, key: "x", value: "eu-x", ms: 10), entry(eu, 2, key: "shared", value: "eu", ms: 20)], origin: eu)
        _ = try await right.applyReplicated([entry(ap, 1, key: "y", value: "ap-y", ms: 10), entry(ap, 2, key: "shared", value: "ap", ms: 30)], origin: ap)
        #expect(try await left.merkleTree(keyspace: a.keyspace).tree != right.merkleTree(keyspace: b.keyspace).tree)
        let all = MerkleTree.Builder().tree
        let buckets = Set(0..<MerkleTree.bucketCount)
        let fromRight = try await right.states(keyspace: b.keyspace, buckets: buckets, after: nil, bytesMax: 1 << 20)
        let fromLeft = try await left.states(keyspace: a.keyspace, buckets: buckets, after: nil, bytesMax: 1 << 20)
        #expect(fromRight.next == nil && fromLeft.next == nil && fromRight.states.count == 2)
        // Through the wire form, as a peer sends them.
        let decodedRight = try KeyStateCodec.decode(KeyStateCodec.encode(fromRight.states), valueBytesMax: 1 << 20)
        #expect(try await left.merge(keyspace: a.keyspace, states: decodedRight) == 2)
        #expect(try await right.merge(keyspace: b.keyspace, states: fromLeft.states) == 2)
        let (leftTree, keys) = try await left.merkleTree(keyspace: a.keyspace)
        #expect(leftTree == (try await right.merkleTree(keyspace: b.keyspace).tree) && keys == 3 && leftTree != all)
        #expect(try await left.merge(keyspace: a.keyspace, states: decodedRight) == 0, "merging again changes nothing")
        #expect(try await left.get(keyspace: a.keyspace, key: Key("shared"))?.value == Array("ap".utf8))
        // Both logged the lww loser of the shared key.
        #expect(try await left.conflicts(keyspace: a.keyspace, key: nil, after: 0, limit: 5).map(\.loser.value) == [Array("eu".utf8)])
        #expect(try await right.conflicts(keyspace: b.keyspace, key: nil, after: 0, limit: 5).map(\.loser.value) == [Array("eu".utf8)])
        // Entries the merge already brought are skipped when the log delivers them later.
        _ = try await right.applyReplicated([entry(eu, 1, key: "x", value: "eu-x", ms: 10), entry(eu, 2, key: "shared", value: "eu", ms: 20)], origin: eu)
        #expect(try await right.merkleTree(keyspace: b.keyspace).tree == leftTree)
        left.close()
        right.close()
    }

    @Test(arguments: Backend.allCases)
    func aLocalWriteIsStampedAfterEveryEntryItSupersedesHoweverCommitsAndAppliesInterleave(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await open(fixture, rule: .lww)
        // eu-west's clock runs 300 ms ahead (within the maximum offset). Its entries arrive while local writes
        // wait for their transaction; each local write supersedes what the store holds when its transaction
        // runs, so its timestamp must follow those entries, not merely what the clock knew when it queued.
        let rounds = 40
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for index in 1...rounds {
                    _ = try await store.applyReplicated([self.entry(self.eu, UInt64(index), key: "k", value: "eu-\(index)", ms: 10_000_300 + UInt64(index))],
                                                        origin: self.eu)
                }
            }
            for index in 0..<rounds {
                group.addTask { _ = try await store.write(fixture.put("k", "us-\(index)")) }
            }
            try await group.waitForAll()
        }
        let remote = try await store.logEntries(origin: eu, after: 0, limit: 1000)
        let local = try await store.logEntries(origin: fixture.region, after: 0, limit: 1000)
        #expect(remote.count == rounds && local.count == rounds)
        var misordered: [String] = []
        for write in local {
            for superseded in remote where superseded.sequence <= write.context[eu, default: 0] && superseded.hlc >= write.hlc {
                misordered.append("\(write.version) supersedes \(superseded.version)")
            }
        }
        #expect(misordered.isEmpty, "stamped before what they supersede: \(misordered.prefix(5))")
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func applyingEntriesDoesNotCarryAWrongWallClockPastARestart(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        // Started with its clock 2 s ahead (fenced, so it writes nothing), the region still applies entries.
        fixture.clock.set(10_002_000)
        let skewed = try await open(fixture, rule: .lww)
        _ = try await skewed.applyReplicated([entry(eu, 1, key: "a", value: "eu", ms: 10_000_000)], origin: eu)
        skewed.close()
        // Restarted with the clock corrected: its first write is stamped by the right clock, after the entry.
        fixture.clock.set(10_000_050)
        let corrected = try await open(fixture, rule: .lww)
        let write = try committed(try await corrected.write(fixture.put("b", "us")))
        #expect(write.hlc.physicalMs == 10_000_050, "stamped \(write.hlc), not by the wrong clock")
        let after = try committed(try await corrected.write(fixture.put("a", "us")))
        #expect(after.hlc > HLCTimestamp(physicalMs: 10_000_000, logical: 0, region: eu))
        corrected.close()
    }

    @Test(arguments: Backend.allCases)
    func aLocalWriteSupersedesWhatItsRegionHeld(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await open(fixture, rule: .fww)
        // A remote write with a timestamp far in the future, then a local write: under fww the local write has
        // the lower timestamp, but it saw the remote one, so it is no conflict and it wins.
        _ = try await store.applyReplicated([entry(eu, 1, key: "k", value: "remote", ms: 90_000_000)], origin: eu)
        let local = try committed(try await store.write(fixture.put("k", "local")))
        #expect(local.context[eu] == 1, "the entry names what it supersedes")
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("k"))?.value == Array("local".utf8))
        #expect(try await store.conflicts(keyspace: fixture.keyspace, key: nil, after: 0, limit: 5).isEmpty)
        store.close()
    }
}
