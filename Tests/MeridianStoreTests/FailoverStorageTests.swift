// Proves the failover part of the storage contract on every backend: election state round-trips a reopen with
// its start and terms; a deposed leader's held writes are kept aside once (their terms lowered, their keys
// named), listed by page, re-applied once, and counted; failovers are recorded once with their first write;
// keys can be put back to a leader's state or removed; state pages respect their byte bound.
import Foundation
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

@Suite struct FailoverStorageTests {
    let eu = RegionName(validated: "eu-west")

    func strong(_ sequence: UInt64, epoch: UInt64, key: String) -> ReplicationEntry {
        ReplicationEntry(origin: eu, sequence: sequence, hlc: HLCTimestamp(physicalMs: 1_000 + sequence, logical: 0, region: eu), epoch: epoch,
                         keyspace: try! KeyspaceName("ks"), key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(key.utf8))
    }

    @Test(arguments: Backend.allCases)
    func electionsRoundTripAReopen(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let start = EpochStart(epoch: 3, leader: eu, applied: [eu: 9, fixture.region: 4],
                               terms: [TermEnd(epoch: 2, leader: fixture.region, last: 4), TermEnd(epoch: 1, leader: eu, last: 2)])
        let election = StoredElection(record: ElectionRecord(epoch: 3, leader: eu, votedEpoch: 3, votedFor: eu), start: start)
        do {
            let store = try await fixture.open()
            #expect(try await store.elections().isEmpty)
            try await store.saveElection(fixture.keyspace, election)
            store.close()
        }
        let store = try await fixture.open()
        #expect(try await store.elections() == [fixture.keyspace: election])
        #expect(try await store.newestEpoch(keyspace: fixture.keyspace) == nil)
        _ = try await store.applyReplicated([strong(1, epoch: 1, key: "a"), strong(2, epoch: 3, key: "b")], origin: eu)
        #expect(try await store.newestEpoch(keyspace: fixture.keyspace).map { "\($0.epoch)/\($0.origin)" } == "3/eu-west")
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func aDeposedLeadersHeldWritesAreKeptAsideOnceAndReappliedOnce(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        _ = try await store.applyReplicated([strong(1, epoch: 1, key: "a"), strong(2, epoch: 1, key: "b"), strong(3, epoch: 1, key: "c")], origin: eu)
        // Epoch 2's leader held eu-west's epoch-1 writes up to 1: 2 and 3 go aside, the term now ends at 1.
        let keys = try await store.divertHeld(keyspace: fixture.keyspace, origin: eu, after: 1, epoch: 1, successorEpoch: 2, nowMs: 77)
        #expect(keys == [try Key("b"), try Key("c")])
        #expect(try await store.terms(keyspace: fixture.keyspace) == [TermEnd(epoch: 1, leader: eu, last: 1)])
        // The log still shows eu-west's epoch-1 writes up to 3 (kept aside ones included); held terms raised by a
        // merge beyond that are not in the log.
        #expect(try await store.loggedThrough(keyspace: fixture.keyspace, origin: eu, epoch: 1) == 3)
        #expect(try await store.loggedThrough(keyspace: fixture.keyspace, origin: eu, epoch: 2) == 0)
        #expect(try await store.divertHeld(keyspace: fixture.keyspace, origin: eu, after: 1, epoch: 1, successorEpoch: 2, nowMs: 78) == [try Key("b"), try Key("c")])
        let listed = try await store.divergence(keyspace: fixture.keyspace, after: 0, limit: 10)
        #expect(listed.map(\.sequence) == [2, 3], "kept aside once, though asked twice")
        #expect(listed.allSatisfy { $0.successorEpoch == 2 && $0.epoch == 1 && $0.recordedMs == 77 && $0.reappliedMs == nil })
        #expect(try await store.divergence(keyspace: fixture.keyspace, after: listed[0].id, limit: 10).map(\.sequence) == [3])
        #expect(try await store.divergence(keyspace: nil, after: 0, limit: 1).count == 1)
        #expect(try await store.divergenceCounts() == ["ks/2": 2])
        // Re-applied once: a second claim fails until the first is released.
        #expect(try await store.markReapplied(id: listed[0].id, nowMs: 90))
        #expect(!(try await store.markReapplied(id: listed[0].id, nowMs: 91)))
        #expect(try await store.divergedWrite(id: listed[0].id)?.reappliedMs == 90)
        try await store.unmarkReapplied(id: listed[0].id)
        #expect(try await store.markReapplied(id: listed[0].id, nowMs: 92))
        #expect(try await store.divergedWrite(id: 999) == nil)
        // Entries the fence keeps aside on arrival go to the same log, unapplied.
        _ = try await store.applyReplicated(origin: eu, from: 4, through: 4, entries: [strong(4, epoch: 1, key: "d")], diverted: [4: 2])
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("d")) == nil)
        #expect(try await store.divergenceCounts() == ["ks/2": 3])
        // The keys go back to the leader's state, or away when the leader has none.
        let leaderState = KeyState(context: VersionVector([eu: 1]), versions: [KeyVersion(entry: strong(1, epoch: 1, key: "b"))])
        try await store.replaceStates(keyspace: fixture.keyspace, [(try Key("b"), leaderState), (try Key("c"), nil)])
        #expect(try await store.state(keyspace: fixture.keyspace, key: Key("b")) == leaderState)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("c")) == nil)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func failoversAreRecordedOnceWithTheirFirstWrite(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        for epoch in UInt64(2)...4 {
            try await store.recordFailover(keyspace: fixture.keyspace, epoch: epoch, leader: fixture.region, previousLeader: eu, lastHeardMs: 10 * epoch,
                                           suspectedMs: 11 * epoch, electedMs: 12 * epoch, reason: "failure")
        }
        try await store.recordFailover(keyspace: fixture.keyspace, epoch: 3, leader: eu, previousLeader: nil, lastHeardMs: nil,
                                       suspectedMs: 0, electedMs: 0, reason: "transfer")
        try await store.recordFirstWrite(keyspace: fixture.keyspace, epoch: 3, atMs: 50)
        try await store.recordFirstWrite(keyspace: fixture.keyspace, epoch: 3, atMs: 60)
        let newest = try await store.failovers(limit: 2)
        #expect(newest.map(\.epoch) == [3, 4], "the newest, oldest first")
        #expect(newest[0].leader == fixture.region && newest[0].reason == "failure" && newest[0].firstWriteMs == 50 && newest[0].electedMs == 36)
        #expect(newest[1].firstWriteMs == nil)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func statePagesKeepTheirByteBoundAndCoverEveryKeyOnce(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        for index in 0..<60 { _ = try await store.write(fixture.put("k\(index)", String(repeating: "v", count: 100))) }
        let (tree, keys) = try await store.merkleTree(keyspace: fixture.keyspace)
        #expect(keys == 60)
        let buckets = Set(0..<MerkleTree.bucketCount)
        var seen: [Key] = []
        var after: Key?
        for _ in 0..<100 {
            let page = try await store.states(keyspace: fixture.keyspace, buckets: buckets, after: after, bytesMax: 1_000)
            #expect(!page.states.isEmpty && page.states.count < 10, "a page holds what fits in about 1,000 bytes")
            seen += page.states.map(\.key)
            guard let next = page.next else { break }
            after = next
        }
        #expect(seen.count == 60 && Set(seen).count == 60)
        // A store that merges every state ends with the same tree.
        let copy = StoreFixture(backend)
        defer { copy.remove() }
        let other = try await copy.open(region: eu)
        let everything = try await store.states(keyspace: fixture.keyspace, buckets: buckets, after: nil, bytesMax: 1 << 20)
        #expect(try await other.merge(keyspace: fixture.keyspace, states: everything.states) == 60)
        #expect(try await other.merge(keyspace: fixture.keyspace, states: everything.states) == 0, "merging is idempotent")
        #expect(try await other.merkleTree(keyspace: fixture.keyspace).tree == tree)
        #expect(try await other.keyCounts() == ["ks": 60])
        store.close()
        other.close()
    }
}
