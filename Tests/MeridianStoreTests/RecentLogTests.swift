import Foundation
import GRDB
import Synchronization
import MeridianCore
import MeridianStorage
@testable import MeridianStore
import Testing

/// The newest entries of a region's own log, served from memory for shipping: always what the log's rows hold.
@Suite struct RecentLogTests {
    /// Every read of the own log served from memory equals what the writes committed, and so does every read of
    /// the rows once the store is opened again (with nothing in memory), across concurrent commits, writes that
    /// take no sequence, and trimming.
    @Test func readsOfTheOwnLogAreWhatWasCommitted() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let writer = try fixture.openSQLite()
        var written: [ReplicationEntry] = []
        for round in 0..<6 {
            written += await withTaskGroup(of: ReplicationEntry?.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        // Every tenth write's precondition fails: it takes no sequence.
                        let precondition: WriteRequest.Precondition? = index % 10 == 9 ? .exists : nil
                        guard case .committed(let entry) = try? await writer.write(fixture.put("r\(round)-\(index)", "value \(index)", precondition: precondition)) else {
                            return nil
                        }
                        return entry
                    }
                }
                return await group.reduce(into: []) { if let entry = $1 { $0.append(entry) } }
            }
        }
        written.sort { $0.sequence < $1.sequence }
        #expect(written.map(\.sequence) == Array(1...270))
        let windows = [(0, 270), (0, 1), (150, 120), (269, 1), (269, 5), (270, 1), (17, 64)]
        func check(_ store: RegionStore, _ what: String) async throws {
            for (after, limit) in windows {
                let served = try await store.logEntries(origin: fixture.region, after: UInt64(after), limit: limit)
                #expect(served == Array(written.dropFirst(after).prefix(limit)), "\(what): after \(after), limit \(limit)")
            }
        }
        try await check(writer, "from memory")
        writer.close()
        let store = try fixture.openSQLite()
        try await check(store, "from the rows")
        // Trimmed entries are gone from both.
        for _ in 0..<5 { _ = try await store.write(fixture.put("after-reopen", "x")) }
        try await store.trimLog(origin: fixture.region, through: 272)
        #expect(try await store.logEntries(origin: fixture.region, after: 0, limit: 10).map(\.sequence) == Array(273...275))
        #expect(try await store.logEntries(origin: fixture.region, after: 272, limit: 3).map(\.sequence) == Array(273...275))
        store.close()
    }

    @Test func theMemoryIsBoundedAndFollowsOnlyAContiguousLog() {
        let origin = RegionName(validated: "us-east"), keyspace = try! KeyspaceName("k")
        func entry(_ sequence: UInt64, bytes: Int = 10) -> ReplicationEntry {
            ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: sequence, logical: 0, region: origin), epoch: 0,
                             keyspace: keyspace, key: try! Key("k\(sequence)"), operation: .put, contentType: "", value: Array(repeating: 1, count: bytes))
        }
        let recent = RecentLog(entriesMax: 10, bytesMax: 1 << 20)
        recent.appended((1...25).map { entry($0) })
        #expect(recent.entries(after: 14, limit: 1) == nil, "beyond the entry bound the oldest go")
        #expect(recent.entries(after: 15, limit: 10)?.map(\.sequence) == Array(16...25))
        #expect(recent.entries(after: 15, limit: 11) == nil, "past the log's end: read from the rows")
        recent.appended([entry(40)])
        #expect(recent.entries(after: 20, limit: 1) == nil && recent.entries(after: 39, limit: 1)?.first?.sequence == 40, "a jump starts over")
        recent.trimmed(through: 40)
        #expect(recent.entries(after: 39, limit: 1) == nil)
        let small = RecentLog(entriesMax: 100, bytesMax: 3 * EntryCodec.encodedBytes(entry(10, bytes: 1_000)))
        small.appended((1...10).map { entry($0, bytes: 1_000) })
        #expect(small.entries(after: 7, limit: 3)?.map(\.sequence) == [8, 9, 10] && small.entries(after: 6, limit: 4) == nil)
    }

    /// With shipping connected, a commit's entries are handed out once its statements ran and before its COMMIT (no
    /// other connection sees the row yet), and called durable after it; a COMMIT that fails takes them back from the
    /// memory and says so, and the next write takes the same number (nothing past the durable point applies anywhere).
    @Test func entriesShipBeforeTheirCommitAndAFailedCommitTakesThemBack() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        try fixture.openSQLite().close()
        // A write of the key `fail-at-commit` breaks a deferred foreign key: SQLite refuses its transaction at COMMIT.
        let setup = try DatabaseQueue(path: fixture.path)
        try await setup.write { db in
            try db.execute(sql: """
                CREATE TABLE parent (id INTEGER PRIMARY KEY);
                CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
                CREATE TRIGGER fail_at_commit AFTER INSERT ON log WHEN NEW.key = 'fail-at-commit' BEGIN INSERT INTO child VALUES (42); END;
                """)
        }
        try setup.close()
        struct Heard: Sendable {
            var written: [(sequence: UInt64, rowsCommitted: Int64, inMemory: Bool)] = []
            var durable: [UInt64] = []
            var failed: [UInt64] = []
        }
        let heard = Mutex(Heard())
        let shipping = CommitShipping()
        let clock = fixture.clock
        let store = try RegionStore(path: fixture.path, region: fixture.region, limits: Limits(), physicalClockMs: { clock.read() }, shipping: shipping)
        defer { store.close() }
        let path = fixture.path
        shipping.connect(CommitShipping.Handlers(
            written: { sequence in
                // Another connection reads the last committed state: the entry's row is not in it yet.
                let rows = (try? DatabaseQueue(path: path).read { db in try Int64.fetchOne(db, sql: "SELECT COUNT(*) FROM log") ?? -1 }) ?? -1
                let held = store.committer.recentLog.entries(after: sequence - 1, limit: 1)?.first?.sequence == sequence
                heard.withLock { $0.written.append((sequence, rows, held)) }
            },
            durable: { sequence in heard.withLock { $0.durable.append(sequence) } },
            failed: { sequence in heard.withLock { $0.failed.append(sequence) } }))
        guard case .committed(let first) = try await store.write(fixture.put("a", "1")) else { Issue.record("the first write did not commit"); return }
        #expect(first.sequence == 1)
        var now = heard.withLock { $0 }
        #expect(now.written.count == 1 && now.written[0].sequence == 1 && now.written[0].rowsCommitted == 0 && now.written[0].inMemory,
                "handed out before the COMMIT, from memory: \(now.written)")
        #expect(now.durable == [1] && now.failed.isEmpty)
        do {
            _ = try await store.write(fixture.put("fail-at-commit", "2"))
            Issue.record("the COMMIT was expected to fail")
        } catch {
            #expect(error.code == .storageFailure || error.code == .storageFull || error.code == .storageReadOnly, "\(error)")
        }
        now = heard.withLock { $0 }
        #expect(now.written.map(\.sequence) == [1, 2], "entry 2 was handed out before its COMMIT failed")
        #expect(now.failed == [1] && now.durable == [1], "the failure says the log ends at 1")
        #expect(store.committer.recentLog.entries(after: 1, limit: 1) == nil, "entry 2 is gone from the memory")
        guard case .committed(let third) = try await store.write(fixture.put("b", "3")) else { Issue.record("the write after the failure did not commit"); return }
        #expect(third.sequence == 2 && heard.withLock { $0.durable } == [1, 2], "the number goes to the next write")
        #expect(try await store.logEntries(origin: fixture.region, after: 0, limit: 2).map(\.key.rawValue) == ["a", "b"])
    }
}
