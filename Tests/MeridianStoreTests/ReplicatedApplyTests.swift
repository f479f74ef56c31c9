// Proves the store's apply path for other origins' log entries: exactly once and in order (duplicates
// skipped, gaps refused with nothing applied), last-writer-wins by HLC whatever the arrival order, the
// local clock moving past applied entries, and the applied high-water surviving a restart.
import Foundation
import GRDB
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

@Suite struct ReplicatedApplyTests {
    let eu = RegionName(validated: "eu-west")

    func remote(_ sequence: UInt64, key: String, value: String, physicalMs: UInt64, origin: RegionName? = nil, delete: Bool = false) -> ReplicationEntry {
        let origin = origin ?? eu
        return ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: physicalMs, logical: 0, region: origin), epoch: 0,
                                keyspace: try! KeyspaceName("ks"), key: try! Key(key), operation: delete ? .delete : .put,
                                contentType: "text/plain", value: delete ? [] : Array(value.utf8))
    }

    @Test(arguments: Backend.allCases)
    func appliesOnceInOrderAndRefusesGaps(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        #expect(try await store.applyReplicated([remote(1, key: "a", value: "1", physicalMs: 5), remote(2, key: "b", value: "2", physicalMs: 6)], origin: eu) == 2)
        // A resent batch overlapping what was applied: only the new entry applies.
        #expect(try await store.applyReplicated([remote(2, key: "b", value: "2", physicalMs: 6), remote(3, key: "c", value: "3", physicalMs: 7)], origin: eu) == 3)
        do {
            _ = try await store.applyReplicated([remote(5, key: "e", value: "5", physicalMs: 9)], origin: eu)
            Issue.record("a gap was applied")
        } catch {
            #expect(error.code == .replicationProtocol)
        }
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("e")) == nil)
        #expect(store.appliedHighWater()[eu] == 3)
        let log = try await store.logEntries(origin: eu, after: 0, limit: 10)
        #expect(log.map(\.sequence) == [1, 2, 3])
        do {
            _ = try await store.applyReplicated([remote(4, key: "x", value: "x", physicalMs: 9, origin: fixture.region)], origin: fixture.region)
            Issue.record("applied its own log")
        } catch {
            #expect(error.code == .replicationProtocol)
        }
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func lastWriterWinsByHLCInAnyArrivalOrder(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        // The local write is at 10_000_000 ms (the fixture's clock); a remote write of the same key at an earlier
        // HLC arrives later and must not win; a remote write at a later HLC must.
        let local = try committed(try await store.write(fixture.put("k", "local")))
        _ = try await store.applyReplicated([remote(1, key: "k", value: "older", physicalMs: 9_999_000)], origin: eu)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("k"))?.version == local.version)
        _ = try await store.applyReplicated([remote(2, key: "k", value: "newer", physicalMs: 10_000_050)], origin: eu)
        let stored = try #require(try await store.get(keyspace: fixture.keyspace, key: Key("k")))
        #expect(stored.value == Array("newer".utf8) && stored.version.origin == eu)
        // A tombstone wins the same way.
        _ = try await store.applyReplicated([remote(3, key: "k", value: "", physicalMs: 10_000_060, delete: true)], origin: eu)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("k"))?.tombstone == true)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func localWritesOrderAfterAppliedEntries(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        // eu-west's clock is 300 ms ahead (within the maximum offset): our next write must still be later.
        _ = try await store.applyReplicated([remote(1, key: "k", value: "remote", physicalMs: 10_000_300)], origin: eu)
        let mine = try committed(try await store.write(fixture.put("k", "mine")))
        #expect(mine.hlc.physicalMs >= 10_000_300)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("k"))?.value == Array("mine".utf8), "a write that follows what it saw wins")
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func appliedHighWaterSurvivesRestart(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var store = try await fixture.open()
        _ = try await store.applyReplicated((1...4).map { remote(UInt64($0), key: "k\($0)", value: "v", physicalMs: UInt64($0)) }, origin: eu)
        _ = try await store.write(fixture.put("own", "1"))
        store.close()
        store = try await fixture.open()
        #expect(store.appliedHighWater() == [eu: 4, fixture.region: 1])
        #expect(try await store.applyReplicated([remote(4, key: "k4", value: "v", physicalMs: 4)], origin: eu) == 4, "duplicates after restart are skipped")
        store.close()
    }

    /// An apply made without an fsync is readable at once and counted visible, not durable, until a sync (unless the
    /// backend made it durable anyway); the sync moves the durable point to it. The connection goes back to syncing every other commit.
    @Test(arguments: Backend.allCases)
    func aVisibleApplyIsReadAtOnceAndDurableAfterASync(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        defer { store.close() }
        _ = try await store.applyReplicated(origin: eu, from: 1, through: 1, entries: [remote(1, key: "a", value: "1", physicalMs: 5)], diverted: [:], durable: true)
        let visible = try await store.applyReplicated(origin: eu, from: 2, through: 3, entries: [remote(2, key: "b", value: "2", physicalMs: 6),
                                                                                             remote(3, key: "a", value: "3", physicalMs: 7)],
                                                      diverted: [:], durable: false)
        #expect(visible == 3)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("a"))?.value == Array("3".utf8))
        // The PostgreSQL store commits every step durably (synchronous_commit): visible is durable there.
        let durableAfterVisibleApply: UInt64 = backend == .postgres ? 3 : 1
        #expect(store.visibleHighWater()[eu] == 3 && store.appliedHighWater()[eu] == durableAfterVisibleApply, "visible at 3, durable at \(durableAfterVisibleApply)")
        #expect(try await store.syncApplied()[eu] == 3)
        #expect(store.appliedHighWater()[eu] == 3 && store.visibleHighWater()[eu] == 3)
        if backend == .sqlite {
            store.close()
            #expect(try await fixture.openSQLite().synchronousLevel() == 2, "commits after a visible apply are synced again")
        }
    }

    /// A durable apply of a range already applied (another stream applied it visibly first) returns that stream's
    /// point as durable, so its transaction must still write: SQLite commits a transaction that wrote nothing without
    /// an fsync, and the point acknowledged would not be durable. Without the write in that case this fails.
    /// An apply held for its origin's durable point runs its statements, waits before its commit (no other
    /// connection sees the entries meanwhile), commits once told, and rolls back, applying nothing, when not.
    @Test(arguments: [true, false])
    func aHeldApplyCommitsOnlyOnceItsOriginIsDurable(durable: Bool) async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let store = try fixture.openSQLite()
        defer { store.close() }
        let entries = [remote(1, key: "a", value: "1", physicalMs: 5), remote(2, key: "b", value: "2", physicalMs: 6)]
        let path = fixture.path
        let seenWhileHeld = try await store.applyReplicatedOnceDurable(origin: eu, from: 1, through: 2, entries: entries, diverted: [:], durable: durable,
                                                                       originDurable: {
            // Another connection, while the transaction waits: nothing of it yet.
            let rows = (try? DatabaseQueue(path: path).read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM log") ?? -1 }) ?? -1
            return rows == 0
        })
        #expect(seenWhileHeld == 2 && store.visibleHighWater()[eu] == 2 && (store.appliedHighWater()[eu] ?? 0) == (durable ? 2 : 0))
        let refused = try await store.applyReplicatedOnceDurable(origin: eu, from: 3, through: 3, entries: [remote(3, key: "c", value: "3", physicalMs: 7)],
                                                                 diverted: [:], durable: durable, originDurable: { false })
        #expect(refused == nil && store.visibleHighWater()[eu] == 2, "rolled back: nothing applied")
        // A held range another stream already applied (under numbers its origin may have given other writes) is not
        // reported applied before its own origin says it is durable.
        let again = try await store.applyReplicatedOnceDurable(origin: eu, from: 1, through: 2, entries: entries, diverted: [:], durable: durable,
                                                               originDurable: { false })
        #expect(again == nil)
        #expect(try await store.get(keyspace: KeyspaceName("ks"), key: Key("c")) == nil)
        let retried = try await store.applyReplicated(origin: eu, from: 3, through: 3, entries: [remote(3, key: "c", value: "3", physicalMs: 7)], diverted: [:], durable: true)
        #expect(retried == 3)
        #expect(try await store.synchronousLevel() == 2, "the connection syncs every commit again")
    }

    @Test func aDurableApplyOfNothingNewStillSyncs() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let store = try fixture.openSQLite()
        defer { store.close() }
        let entries = [remote(1, key: "a", value: "1", physicalMs: 5), remote(2, key: "b", value: "2", physicalMs: 6), remote(3, key: "c", value: "3", physicalMs: 7)]
        _ = try await store.applyReplicated(origin: eu, from: 1, through: 3, entries: entries, diverted: [:], durable: false)
        let reader = try DatabaseQueue(path: fixture.path)
        let synced = { try reader.read { db in try Int.fetchOne(db, sql: "SELECT CAST(value AS INTEGER) FROM meta WHERE name = 'applies_synced'") ?? 0 } }
        let before = try synced()
        let applied = try await store.applyReplicated(origin: eu, from: 1, through: 2, entries: Array(entries.prefix(2)), diverted: [:], durable: true)
        #expect(applied == 3 && store.appliedHighWater()[eu] == 3)
        #expect(try synced() == before + 1, "the durable apply committed a write, so its commit synced the visible apply before it")
    }

    /// Visible applies whose tasks are cancelled while they run still leave the connection syncing every commit
    /// (without the reset to `synchronous=FULL` this fails).
    @Test func aCancelledVisibleApplyLeavesCommitsSynced() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let store = try fixture.openSQLite()
        var next: UInt64 = 1
        var cancelledWhileApplying = 0
        for round in 0..<20 {
            let entries = (0..<1_000).map { index in remote(next + UInt64(index), key: "k\(index)", value: "\(round)", physicalMs: next + UInt64(index)) }
            let first = next
            let task = Task { try await store.applyReplicated(origin: eu, from: first, through: first + 999, entries: entries, diverted: [:], durable: false) }
            // Cancelled a few milliseconds in, while the transaction runs (bounded wait, no sleep).
            let until = ContinuousClock.now + .milliseconds(1 + round % 6)
            while ContinuousClock.now < until { await Task.yield() }
            task.cancel()
            if (try? await task.value) != nil { next += 1_000 } else { next = (store.visibleHighWater()[eu] ?? 0) + 1 }
            if next == first { cancelledWhileApplying += 1 }
        }
        #expect(cancelledWhileApplying > 0, "some applies were cancelled while they ran")
        #expect(try await store.synchronousLevel() == 2)
        store.close()
    }

    /// The in-memory disk loses a visible apply whole, with its applied point, when the store closes before a sync
    /// (the simulator's crash of the machine); a durable step after it, such as a local write, makes it durable too.
    @Test func aCrashBeforeTheSyncLosesTheVisibleApplyWholeAndADurableStepKeepsIt() async throws {
        for durableStepAfter in [false, true] {
            let fixture = StoreFixture(.memory)
            defer { fixture.remove() }
            var store = try await fixture.open()
            _ = try await store.applyReplicated(origin: eu, from: 1, through: 2, entries: [remote(1, key: "a", value: "1", physicalMs: 5),
                                                                                          remote(2, key: "b", value: "2", physicalMs: 6)],
                                                diverted: [:], durable: false)
            if durableStepAfter { _ = try await store.write(fixture.put("own", "1")) }
            store.close()
            store = try await fixture.open()
            #expect(store.appliedHighWater()[eu] == (durableStepAfter ? 2 : nil))
            #expect(try await store.get(keyspace: fixture.keyspace, key: Key("b")) == nil ? !durableStepAfter : durableStepAfter)
            store.close()
        }
    }
}

@Suite struct ReplicatedRangeApplyTests {
    let eu = RegionName(validated: "eu-west")

    func remote(_ sequence: UInt64, key: String) -> ReplicationEntry {
        ReplicationEntry(origin: eu, sequence: sequence, hlc: HLCTimestamp(physicalMs: 1_000 + sequence, logical: 0, region: eu), epoch: 0,
                         keyspace: try! KeyspaceName("ks"), key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(key.utf8))
    }

    @Test(arguments: Backend.allCases)
    func rangesWithLeftOutEntriesMoveTheAppliedPointDurably(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var store = try await fixture.open()
        // Sequences 1 and 3 are of a keyspace this region does not replicate: only 2 and 4 arrive.
        #expect(try await store.applyReplicated(origin: eu, from: 1, through: 4, entries: [remote(2, key: "b"), remote(4, key: "d")]) == 4)
        #expect(try await store.applyReplicated(origin: eu, from: 5, through: 7, entries: []) == 7)
        // A resend of what is applied changes nothing; a range past the applied point is refused, nothing applied.
        #expect(try await store.applyReplicated(origin: eu, from: 3, through: 7, entries: [remote(4, key: "d-again")]) == 7)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("d"))?.value == Array("d".utf8))
        do {
            _ = try await store.applyReplicated(origin: eu, from: 9, through: 9, entries: [remote(9, key: "i")])
            Issue.record("a gap was applied")
        } catch {
            #expect(error.code == .replicationProtocol)
        }
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("i")) == nil)
        // Malformed input from a peer is refused, not trapped on.
        await #expect(throws: MeridianError.self) { try await store.applyReplicated(origin: eu, from: 8, through: 9, entries: [remote(10, key: "j")]) }
        await #expect(throws: MeridianError.self) { try await store.applyReplicated(origin: eu, from: 9, through: 8, entries: []) }
        // Concurrent batches (an old stream racing a new one) never double-apply or skip.
        let shared = store, batch = [remote(8, key: "h")], origin = eu
        try await withThrowingTaskGroup(of: UInt64.self) { group in
            for _ in 0..<2 { group.addTask { try await shared.applyReplicated(origin: origin, from: 8, through: 10, entries: batch) } }
            for try await applied in group { #expect(applied == 10) }
        }
        #expect(store.appliedHighWater()[eu] == 10)
        store.close()
        // The applied point survives a restart even though the log's highest entry of eu-west is 8.
        store = try await fixture.open()
        #expect(store.appliedHighWater()[eu] == 10)
        #expect(try await store.logEntries(origin: eu, after: 0, limit: 10).map(\.sequence) == [2, 4, 8])
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func trimmingKeepsTheLogContinuous(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var store = try await fixture.open()
        for index in 0..<5 { _ = try await store.write(fixture.put("k\(index)", "v")) }
        try await store.trimLog(origin: fixture.region, through: 5)
        #expect(store.logFloor() == 5)
        #expect(try await store.logEntries(origin: fixture.region, after: 0, limit: 10).isEmpty)
        store.close()
        // Restarted with an empty log, the next write continues after the floor: no sequence is reused.
        store = try await fixture.open()
        #expect(store.logFloor() == 5)
        guard case .committed(let entry) = try await store.write(fixture.put("next", "v")) else {
            Issue.record("write failed")
            return
        }
        #expect(entry.sequence == 6)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func termsHeldRiseWithAppliedWritesAndCaughtUpTermsNeverLowerAndSurviveAReopen(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let keyspace = try KeyspaceName("ks")
        let us = RegionName(validated: "us-east")
        do {
            let store = try await fixture.open()
            func strong(_ sequence: UInt64, epoch: UInt64) -> ReplicationEntry {
                ReplicationEntry(origin: eu, sequence: sequence, hlc: HLCTimestamp(physicalMs: sequence, logical: 0, region: eu), epoch: epoch,
                                 keyspace: keyspace, key: try! Key("k\(sequence)"), operation: .put, contentType: "text/plain", value: [1])
            }
            _ = try await store.applyReplicated([strong(1, epoch: 2), strong(2, epoch: 2)], origin: eu)
            #expect(try await store.terms(keyspace: keyspace) == [TermEnd(epoch: 2, leader: eu, last: 2)])
            // A catch-up raises what it pulled, and never lowers what the log brought.
            try await store.raiseTerms(keyspace: keyspace, [TermEnd(epoch: 2, leader: eu, last: 1), TermEnd(epoch: 1, leader: us, last: 7)])
            #expect(try await store.terms(keyspace: keyspace) == [TermEnd(epoch: 2, leader: eu, last: 2), TermEnd(epoch: 1, leader: us, last: 7)])
        }
        let reopened = try await fixture.open()
        #expect(try await reopened.terms(keyspace: keyspace) == [TermEnd(epoch: 2, leader: eu, last: 2), TermEnd(epoch: 1, leader: us, last: 7)])
        // As a leader's answer carries them.
        #expect(try TermEnd.decode(Substring(TermEnd.encode(try await reopened.terms(keyspace: keyspace)))) == (try await reopened.terms(keyspace: keyspace)))
        #expect(throws: MeridianError.self) { try TermEnd.decode("2:eu-west") }
    }
}
