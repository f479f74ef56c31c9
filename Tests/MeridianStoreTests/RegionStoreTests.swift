// Proves the SQLite store's contract: writes are durable with version metadata and a gap-free
// per-origin log, concurrent writes share transactions (group commit), If-Match preconditions hold,
// listing pages correctly, and sequences, HLC and data survive closing and reopening the files.
import Foundation
import Logging
import MeridianCore
import MeridianHarness
import MeridianPostgres
import MeridianStorage
import MeridianStore
import PostgresNIO
import Synchronization
import Testing

final class ManualClock: @unchecked Sendable {
    // Safety: guarded by `lock`.
    private let lock = NSLock()
    private var nowMs: UInt64
    init(_ nowMs: UInt64) { self.nowMs = nowMs }
    func read() -> UInt64 { lock.lock(); defer { lock.unlock() }; return nowMs }
    func set(_ value: UInt64) { lock.lock(); nowMs = value; lock.unlock() }
}

final class BatchRecorder: StoreObserver, @unchecked Sendable {
    // Safety: guarded by `lock`.
    private let lock = NSLock()
    private var sizes: [Int] = []
    func commitCompleted(writes: Int, commitSeconds: Double) { lock.lock(); sizes.append(writes); lock.unlock() }
    var batches: [Int] { lock.lock(); defer { lock.unlock() }; return sizes }
}

/// The storage backends every contract test runs against (the conformance suite): SQLite, in memory, and PostgreSQL
/// (Debian's server, started once per test run).
enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, memory, postgres
    var testDescription: String { rawValue }
}

/// The code of the `MeridianError` `body` throws (nil: it threw none; `internal_error`: it threw something else).
func errorCode(_ body: () async throws -> Void) async -> MeridianError.Code? {
    do {
        try await body()
        return nil
    } catch let error as MeridianError {
        return error.code
    } catch {
        return .internalError
    }
}

struct StoreFixture {
    let backend: Backend
    let directory: String
    /// The in-memory backend's "disk": what survives a close and a reopen.
    let disk = MemoryDisk()
    let region = RegionName(validated: "us-east")
    let keyspace = try! KeyspaceName("ks")
    let clock = ManualClock(10_000_000)
    /// The PostgreSQL backend's database, created at the first open.
    let database = DatabaseName()

    init(_ backend: Backend = .sqlite) {
        self.backend = backend
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-store-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    var path: String { directory + "/store.sqlite" }

    /// Opens the fixture's store (again), on its one file or disk, whatever region is asked.
    func open(limits: Limits = Limits(), observer: (any StoreObserver)? = nil, region: RegionName? = nil,
              rules: [KeyspaceName: ConflictRule] = [:], sealer: ValueSealer? = nil) async throws -> any RegionStorage {
        let clock = self.clock
        let context = StoreContext(region: region ?? self.region, limits: limits, conflictRules: rules, physicalClockMs: { clock.read() }, observer: observer,
                                   sealer: sealer)
        switch backend {
        case .sqlite: return try RegionStore(path: path, region: context.region, limits: limits, conflictRules: rules, physicalClockMs: context.physicalClockMs,
                                             observer: observer, sealer: sealer)
        case .memory: return try MemoryStore(disk: disk, context: context)
        case .postgres:
            let server = try await PostgresServer.shared.value
            let name = try await database.name { try await server.newDatabase() }
            let configuration = PostgresClient.Configuration(host: "127.0.0.1", port: server.port, username: server.user, password: nil, database: name,
                                                             tls: .disable)
            // A generous bound on the database's silence: a whole test run shares two cores with CPU-bound simulation
            // sweeps, and the bound counts this process's own stalls as the database's (the product's default is 10 s).
            return try await PostgresStore.open(configuration, context: context, requestTimeout: .seconds(60), logger: Logger(label: "meridian.store.test"))
        }
    }

    /// The count a statement selects in the PostgreSQL backend's database.
    func postgresCount(_ statement: String) async throws -> Int64 {
        let server = try await PostgresServer.shared.value
        let name = try await database.name { try await server.newDatabase() }
        let client = PostgresClient(configuration: .init(host: "127.0.0.1", port: server.port, username: server.user, password: nil, database: name, tls: .disable))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await client.query(PostgresQuery(unsafeSQL: statement), logger: Logger(label: "meridian.store.test")).collect().first?.decode(Int64.self) ?? 0
        }
    }

    /// The SQLite store itself, for what only it has (group commit, sync level).
    func openSQLite(limits: Limits = Limits(), observer: (any StoreObserver)? = nil) throws -> RegionStore {
        precondition(backend == .sqlite)
        let clock = self.clock
        return try RegionStore(path: path, region: region, limits: limits, physicalClockMs: { clock.read() }, observer: observer)
    }

    func put(_ key: String, _ value: String, precondition: WriteRequest.Precondition? = nil) -> WriteRequest {
        WriteRequest(keyspace: keyspace, key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(value.utf8), precondition: precondition)
    }

    func delete(_ key: String) -> WriteRequest {
        WriteRequest(keyspace: keyspace, key: try! Key(key), operation: .delete, contentType: "", value: [])
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// The name of a fixture's PostgreSQL database, made once.
actor DatabaseName {
    private var made: String?

    func name(_ make: () async throws -> String) async throws -> String {
        if let made { return made }
        let new = try await make()
        made = made ?? new
        return made!
    }
}

func committed(_ outcome: WriteOutcome) throws -> ReplicationEntry {
    guard case .committed(let entry) = outcome else { throw MeridianError(.internalError, "expected a commit, got \(outcome)") }
    return entry
}

/// Starts `count` writes at once; each result is nil (committed) or the error code it failed with.
func concurrentWrites(_ store: any RegionStorage, _ fixture: StoreFixture, count: Int, value: String) async -> [MeridianError.Code?] {
    await withTaskGroup(of: MeridianError.Code?.self) { group in
        for index in 0..<count {
            group.addTask {
                do {
                    _ = try await store.write(fixture.put("k\(index)", value))
                    return nil
                } catch let error as MeridianError {
                    return error.code
                } catch {
                    return .internalError
                }
            }
        }
        return await group.reduce(into: [MeridianError.Code?]()) { $0.append($1) }
    }
}

@Suite struct RegionStoreTests {
    @Test(arguments: Backend.allCases)
    func writesAreReadBackWithTheirVersion(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        let entry = try committed(try await store.write(fixture.put("a", "1")))
        #expect(entry.sequence == 1 && entry.origin == fixture.region)
        #expect(entry.hlc.physicalMs == 10_000_000)
        let stored = try #require(try await store.get(keyspace: fixture.keyspace, key: Key("a")))
        #expect(stored.value == Array("1".utf8) && stored.contentType == "text/plain")
        #expect(stored.version == entry.version && !stored.tombstone)

        let deleted = try committed(try await store.write(WriteRequest(keyspace: fixture.keyspace, key: Key("a"), operation: .delete, contentType: "", value: [])))
        #expect(deleted.sequence == 2 && deleted.hlc > entry.hlc)
        let tombstone = try #require(try await store.get(keyspace: fixture.keyspace, key: Key("a")))
        #expect(tombstone.tombstone && tombstone.version == deleted.version)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("never")) == nil)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func sessionWritesKeepTheirDependenciesAndOrderAfterWhatTheSessionSaw(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        let euWest = RegionName(validated: "eu-west")
        // The session saw eu-west's 7th write, stamped 400 ms ahead of this region's clock.
        let seen = HLCTimestamp(physicalMs: 10_000_400, logical: 3, region: euWest)
        let request = WriteRequest(keyspace: fixture.keyspace, key: try Key("b"), operation: .put, contentType: "text/plain", value: Array("2".utf8),
                                   after: seen, dependencies: [euWest: 7, fixture.region: 99])
        let entry = try committed(try await store.write(request))
        #expect(entry.hlc > seen, "the write orders after what its session saw")
        #expect(entry.dependencies == [euWest: 7], "a write never depends on its own origin's log")
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("b"))?.dependencies == [euWest: 7])
        #expect(try await store.logEntries(origin: fixture.region, after: 0, limit: 10).first?.dependencies == [euWest: 7])
        // A replicated entry keeps its dependencies too.
        let remote = ReplicationEntry(origin: euWest, sequence: 1, hlc: HLCTimestamp(physicalMs: 9_000_000, logical: 0, region: euWest), epoch: 0,
                                      keyspace: fixture.keyspace, key: try Key("c"), operation: .put, contentType: "", value: [1],
                                      dependencies: [fixture.region: 1])
        _ = try await store.applyReplicated(origin: euWest, from: 1, through: 1, entries: [remote])
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("c"))?.dependencies == [fixture.region: 1])
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("a")) == nil)
        store.close()
    }

    @Test func commitsSyncTheWriteAheadLog() async throws {
        let fixture = StoreFixture()
        defer { fixture.remove() }
        let store = try fixture.openSQLite()
        _ = try await store.write(fixture.put("a", "1"))
        // 2 = FULL: in WAL mode only FULL syncs on every commit; NORMAL (GRDB's default) would acknowledge
        // writes that a power loss can take back.
        #expect(try await store.synchronousLevel() == 2)
        store.close()
    }

    @Test func deletedBytesAreZeroedAndTemporaryDataStaysInMemory() async throws {
        let fixture = StoreFixture()
        defer { fixture.remove() }
        let store = try fixture.openSQLite()
        _ = try await store.write(fixture.put("a", "1"))
        let settings = try await store.eraseSettings()
        #expect(settings.writer == [1, 2] && settings.reader == [1, 2], "secure_delete and temp_store: \(settings)")
        store.close()
    }

    /// The group-committing backends: concurrent writes share transactions, and the log stays dense and ordered,
    /// writes to one key inside a batch included (each planned on the one before).
    @Test(arguments: [Backend.sqlite, .postgres])
    func concurrentWritesShareTransactionsAndKeepAGapFreeLog(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let recorder = BatchRecorder()
        var limits = Limits()
        limits.commitBatchMax = 64
        let store = try await fixture.open(limits: limits, observer: recorder)
        let writes = 400
        let sequences = try await withThrowingTaskGroup(of: UInt64.self) { group in
            for index in 0..<writes {
                // Every tenth write goes to one shared key.
                let key = index % 10 == 0 ? "shared" : "k\(index)"
                group.addTask { try committed(try await store.write(fixture.put(key, "v\(index)"))).sequence }
            }
            return try await group.reduce(into: [UInt64]()) { $0.append($1) }
        }
        #expect(sequences.sorted() == Array(1...UInt64(writes)), "every write got its own consecutive sequence")
        let batches = recorder.batches
        #expect(batches.reduce(0, +) == writes)
        #expect(batches.allSatisfy { $0 <= 64 }, "batches respect commit_batch_max")
        #expect(batches.count < writes, "some writes shared a commit: \(batches)")
        let log = try await store.logEntries(origin: fixture.region, after: 0, limit: 1000)
        #expect(log.map(\.sequence) == Array(1...UInt64(writes)))
        // The log's HLC order matches its sequence order.
        #expect(zip(log, log.dropFirst()).allSatisfy { $0.hlc < $1.hlc })
        // The shared key holds its last write, which saw every earlier one.
        let last = try #require(log.last { $0.key.rawValue == "shared" })
        let stored = try #require(try await store.state(keyspace: fixture.keyspace, key: Key("shared")))
        #expect(stored.versions.map(\.version) == [last.version], "one version: each write to the key superseded the one before")
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func preconditionsCompareTheCurrentVersion(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        #expect(try await store.write(fixture.put("a", "x", precondition: .exists)) == .preconditionFailed(current: nil))
        let first = try committed(try await store.write(fixture.put("a", "1")))
        let second = try committed(try await store.write(fixture.put("a", "2", precondition: .versionIsOneOf([first.version]))))
        #expect(try await store.write(fixture.put("a", "3", precondition: .versionIsOneOf([first.version]))) == .preconditionFailed(current: second.version))
        _ = try committed(try await store.write(fixture.put("a", "4", precondition: .exists)))
        // A refused write consumes no sequence.
        let next = try committed(try await store.write(fixture.put("b", "1")))
        #expect(next.sequence == 4)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func listsByPrefixWithPaging(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        for key in ["user/1", "user/2", "user/3", "users", "user0", "admin", "user/é"] {
            _ = try await store.write(fixture.put(key, key))
        }
        _ = try await store.write(WriteRequest(keyspace: fixture.keyspace, key: Key("user/2"), operation: .delete, contentType: "", value: []))
        let page1 = try await store.list(keyspace: fixture.keyspace, prefix: "user/", after: nil, limit: 2)
        #expect(page1.map(\.key.rawValue) == ["user/1", "user/3"])
        let page2 = try await store.list(keyspace: fixture.keyspace, prefix: "user/", after: "user/3", limit: 2)
        #expect(page2.map(\.key.rawValue) == ["user/é"])
        let all = try await store.list(keyspace: fixture.keyspace, prefix: "", after: nil, limit: 100)
        #expect(all.map(\.key.rawValue) == ["admin", "user/1", "user/3", "user/é", "user0", "users"])
        // `after` is compared by bytes, as SQLite does: "e\u{301}z" sorts before "é" in bytes though Swift calls them close.
        _ = try await store.write(fixture.put("é1", "x"))
        _ = try await store.write(fixture.put("f", "x"))
        let accented = try await store.list(keyspace: fixture.keyspace, prefix: "é", after: "e\u{301}z", limit: 100)
        #expect(accented.map(\.key.rawValue) == ["é1"])
        let afterOnly = try await store.list(keyspace: fixture.keyspace, prefix: "u", after: "user0", limit: 100)
        #expect(afterOnly.map(\.key.rawValue) == ["users"])
        #expect(all.first?.valueBytes == 5)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func reopeningKeepsDataSequencesAndClockOrder(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var store = try await fixture.open()
        var last: ReplicationEntry?
        for index in 0..<10 { last = try committed(try await store.write(fixture.put("k\(index)", "v"))) }
        store.close()
        // The wall clock stepped back an hour across the restart; versions must still increase.
        fixture.clock.set(10_000_000 - 3_600_000)
        store = try await fixture.open()
        let next = try committed(try await store.write(fixture.put("after", "restart")))
        #expect(next.sequence == 11)
        #expect(next.hlc > last!.hlc)
        #expect(try await store.get(keyspace: fixture.keyspace, key: Key("k9"))?.version == last!.version)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func aDataDirectoryBelongsToOneRegion(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        try await fixture.open().close()
        do {
            _ = try await fixture.open(region: RegionName(validated: "eu-west"))
            Issue.record("opened another region's data")
        } catch let error as MeridianError {
            #expect(error.code == .storageFailure)
            #expect(error.message.contains("us-east"))
        }
    }

    @Test func queuedBytesAreBounded() async throws {
        let fixture = StoreFixture()
        defer { fixture.remove() }
        var limits = Limits()
        limits.commitQueueBytesMax = 3000
        limits.commitBatchMax = 1
        let store = try await fixture.open(limits: limits)
        let results = await concurrentWrites(store, fixture, count: 50, value: String(repeating: "x", count: 1000))
        #expect(results.contains(.overloaded), "50 concurrent 1000-byte writes exceed a 3000-byte queue")
        #expect(results.compactMap { $0 }.allSatisfy { $0 == .overloaded })
        store.close()
    }

    @Test func aFullQueueRefusesWithOverloaded() async throws {
        let fixture = StoreFixture()
        defer { fixture.remove() }
        var limits = Limits()
        limits.commitQueueMax = 4
        limits.commitBatchMax = 1
        let store = try await fixture.open(limits: limits)
        let results = await concurrentWrites(store, fixture, count: 200, value: "v")
        let refused = results.compactMap { $0 }
        #expect(!refused.isEmpty && refused.allSatisfy { $0 == .overloaded })
        let written = try await store.logEntries(origin: fixture.region, after: 0, limit: 1000)
        #expect(written.count == results.count - refused.count, "every accepted write is in the log, no refused one is")
        store.close()
    }
}
