// Proves the idempotency part of the storage contract on every backend: a retried write (same key, same request)
// is answered with the first outcome and adds nothing to the log, even in one batch with the first; a key reused
// for another request is refused; a replicated entry's key answers retries where it was applied; a kept-aside
// write's key is forgotten; keys expire after idempotency_ttl_ms and are bounded by idempotency_keys_max.
import Foundation
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

final class EvictionRecorder: StoreObserver, @unchecked Sendable {
    // Safety: guarded by `lock`.
    private let lock = NSLock()
    private var count = 0
    func commitCompleted(writes: Int, commitSeconds: Double) {}
    func idempotencyKeysEvicted(_ count: Int) { lock.lock(); self.count += count; lock.unlock() }
    var evicted: Int { lock.lock(); defer { lock.unlock() }; return count }
}

@Suite struct IdempotencyStoreTests {
    let eu = RegionName(validated: "eu-west")

    func idempotent(_ fixture: StoreFixture, _ key: String, _ value: String, idempotencyKey: String, epoch: UInt64 = 0) -> WriteRequest {
        let mark = IdempotencyMark(key: try! IdempotencyKey(idempotencyKey), keyspace: fixture.keyspace, dataKey: try! Key(key), operation: .put,
                                   contentType: "text/plain", value: Array(value.utf8), precondition: nil)
        return WriteRequest(keyspace: fixture.keyspace, key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(value.utf8),
                            epoch: epoch, idempotency: mark)
    }

    func logCount(_ store: any RegionStorage, _ origin: RegionName) async throws -> Int {
        try await store.logEntries(origin: origin, after: 0, limit: 1000).count
    }

    @Test(arguments: Backend.allCases)
    func aRetryIsAnsweredWithTheFirstOutcomeAndLogsNothing(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        let first = try committed(try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "k-1")))
        #expect(first.idempotency?.key.rawValue == "k-1")
        guard case .replayed(let record) = try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "k-1")) else {
            Issue.record("a retry was not replayed"); return
        }
        #expect(record.version == first.version && record.key == first.key && record.operation == .put)
        #expect(try await logCount(store, fixture.region) == 1)
        // The same key for another request: refused, nothing written.
        guard case .refused(let error) = try await store.write(idempotent(fixture, "a", "two", idempotencyKey: "k-1")) else {
            Issue.record("a reused key was not refused"); return
        }
        #expect(error.code == .idempotencyKeyReused && error.message.contains("different request"))
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("a"))?.value == Array("one".utf8))
        // Another key: applied; the log carries the mark, so peers learn it.
        _ = try committed(try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "k-2")))
        let log = try await store.logEntries(origin: fixture.region, after: 0, limit: 10)
        #expect(log.map { $0.idempotency?.key.rawValue } == ["k-1", "k-2"])
        #expect(try await store.idempotencyRecord(keyspace: fixture.keyspace, key: IdempotencyKey("k-1"))?.version == first.version)
        store.close()
        // Kept across a reopen.
        let reopened = try await fixture.open()
        guard case .replayed = try await reopened.write(idempotent(fixture, "a", "one", idempotencyKey: "k-1")) else {
            Issue.record("a retry after a reopen was not replayed"); return
        }
        reopened.close()
    }

    @Test func concurrentRetriesInOneBatchApplyOnce() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        var limits = Limits()
        limits.commitWaitUs = 20_000
        let store = try await fixture.open(limits: limits)
        let outcomes = await withTaskGroup(of: WriteOutcome?.self) { group in
            for _ in 0..<8 { group.addTask { try? await store.write(self.idempotent(fixture, "a", "one", idempotencyKey: "same")) } }
            return await group.reduce(into: [WriteOutcome?]()) { $0.append($1) }
        }
        let commits = outcomes.compactMap { outcome -> ReplicationEntry? in if case .committed(let entry) = outcome { entry } else { nil } }
        let replays = outcomes.compactMap { outcome -> IdempotencyRecord? in if case .replayed(let record) = outcome { record } else { nil } }
        #expect(commits.count == 1 && replays.count == 7)
        #expect(replays.allSatisfy { $0.version == commits.first?.version })
        #expect(try await logCount(store, fixture.region) == 1)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func aReplicatedKeyAnswersRetriesAndAKeptAsideOneIsForgotten(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        let mark = idempotent(fixture, "a", "one", idempotencyKey: "from-eu").idempotency!
        let entry = ReplicationEntry(origin: eu, sequence: 1, hlc: HLCTimestamp(physicalMs: 5_000, logical: 0, region: eu), epoch: 1,
                                     keyspace: fixture.keyspace, key: try Key("a"), operation: .put, contentType: "text/plain", value: Array("one".utf8),
                                     idempotency: mark)
        _ = try await store.applyReplicated([entry], origin: eu)
        guard case .replayed(let record) = try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "from-eu", epoch: 2)) else {
            Issue.record("a retry of a replicated write was not replayed"); return
        }
        #expect(record.version == entry.version && record.epoch == 1)
        // The entry's term is deposed without it: kept aside, its key forgotten, so the retry applies here.
        _ = try await store.divertHeld(keyspace: fixture.keyspace, origin: eu, after: 0, epoch: 1, successorEpoch: 2, nowMs: 6_000)
        #expect(try await store.idempotencyRecord(keyspace: fixture.keyspace, key: IdempotencyKey("from-eu")) == nil)
        let retried = try committed(try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "from-eu", epoch: 2)))
        #expect(retried.origin == fixture.region)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func keysExpireAndAreBounded(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var limits = Limits()
        limits.idempotencyTtlMs = 60_000
        limits.idempotencyKeysMax = 16
        let evictions = EvictionRecorder()
        let store = try await fixture.open(limits: limits, observer: evictions)
        _ = try committed(try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "old")))
        fixture.clock.set(fixture.clock.read() + 59_000)
        guard case .replayed = try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "old")) else {
            Issue.record("a retry within the TTL was not replayed"); return
        }
        fixture.clock.set(fixture.clock.read() + 2_000)
        #expect(try await store.idempotencyRecord(keyspace: fixture.keyspace, key: IdempotencyKey("old")) == nil)
        _ = try committed(try await store.write(idempotent(fixture, "a", "one", idempotencyKey: "old")))
        // Past the bound the oldest live keys go first, counted; the table never holds more than a sixteenth above it.
        for index in 0..<40 {
            fixture.clock.set(fixture.clock.read() + 1)
            _ = try committed(try await store.write(idempotent(fixture, "k\(index)", "v", idempotencyKey: "bounded-\(index)")))
        }
        var held = 0
        for index in 0..<40 where try await store.idempotencyRecord(keyspace: fixture.keyspace, key: IdempotencyKey("bounded-\(index)")) != nil { held += 1 }
        #expect(held >= 16 && held <= 17, "held \(held)")
        #expect(try await store.idempotencyRecord(keyspace: fixture.keyspace, key: IdempotencyKey("bounded-39")) != nil)
        #expect(try await store.idempotencyRecord(keyspace: fixture.keyspace, key: IdempotencyKey("bounded-0")) == nil)
        #expect(evictions.evicted >= 40 + 1 - 17)
        store.close()
    }
}
