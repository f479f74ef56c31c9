// The PostgreSQL store as several nodes of one region share it: numbers dense and in commit order whatever the
// interleaving (a reader following the log never skips one), timestamps ordered across nodes whose clocks disagree,
// and the database's faults as typed errors (a read-only standby, a server that went away).
import Foundation
import Logging
import MeridianCore
import MeridianHarness
import MeridianPostgres
import MeridianStorage
import PostgresNIO
import Synchronization
import Testing

/// The code of the `MeridianError` `body` throws (nil: none).
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

@Suite struct PostgresStoreTests {
    let region = RegionName(validated: "us-east")
    let keyspace = try! KeyspaceName("ks")

    func context(skewMs: Int64 = 0) -> StoreContext {
        StoreContext(region: region, limits: Limits(), conflictRules: [:], physicalClockMs: {
            UInt64(Int64(Date().timeIntervalSince1970 * 1_000) + skewMs)
        }, observer: nil)
    }

    /// The bound on the database's silence the stores here run with. A whole test run shares two cores with CPU-bound
    /// simulation sweeps, and the bound counts this process's own stalls as the database's, so tests that are not
    /// about the bound give it room (the product's default is 10 s; the tests of the bound set their own).
    static let requestTimeout: Duration = .seconds(60)

    static func configuration(_ server: PostgresServer, _ database: String) -> PostgresClient.Configuration {
        PostgresClient.Configuration(host: "127.0.0.1", port: server.port, username: server.user, password: nil, database: database, tls: .disable)
    }

    func put(_ key: String, _ value: String) -> WriteRequest {
        WriteRequest(keyspace: keyspace, key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(value.utf8))
    }

    @Test func nodesSharingTheDatabaseNumberDenselyInCommitOrderAndAFollowerNeverSkipsANumber() async throws {
        let server = try await PostgresServer.shared.value
        let database = try await server.newDatabase()
        // Three nodes; one's clock runs 2 s behind, another's 1 s ahead (within no offset bound: each node's clock is
        // all it has).
        var nodes: [PostgresStore] = []
        for skew: Int64 in [0, -2_000, 1_000] {
            nodes.append(try await PostgresStore.open(Self.configuration(server, database), context: context(skewMs: skew), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger))
        }
        let stores = nodes
        defer { for node in stores { node.close() } }
        let (writesPerNode, keys) = (60, 4)
        let total = UInt64(writesPerNode * stores.count)
        let region = region
        // A follower reads the log after its cursor while the nodes write, as a shipper does: every page it reads must
        // continue its cursor exactly.
        let follower = Task { () throws -> [String] in
            var (cursor, problems) = (UInt64(0), [String]())
            let deadline = ContinuousClock.now + .seconds(60)
            while cursor < total && ContinuousClock.now < deadline {
                let page = try await stores[0].logEntries(origin: region, after: cursor, limit: 7)
                for entry in page {
                    if entry.sequence != cursor + 1 { problems.append("after \(cursor) the log showed \(entry.sequence)") }
                    cursor = entry.sequence
                }
                if page.isEmpty { try await Task.sleep(for: .milliseconds(2)) }
            }
            if cursor < total { problems.append("the follower reached only \(cursor) of \(total)") }
            return problems
        }
        let written = try await withThrowingTaskGroup(of: [ReplicationEntry].self) { group in
            for (index, node) in stores.enumerated() {
                group.addTask {
                    var entries: [ReplicationEntry] = []
                    for write in 0..<writesPerNode {
                        guard case .committed(let entry) = try await node.write(self.put("k\(write % keys)", "n\(index)-\(write)")) else {
                            throw MeridianError(.internalError, "a write was not committed")
                        }
                        entries.append(entry)
                    }
                    return entries
                }
            }
            return try await group.reduce(into: [ReplicationEntry]()) { $0 += $1 }
        }
        #expect(try await follower.value == [])
        // Every number once, 1 through the total; timestamps rise with the numbers, whichever node's clock issued them.
        let log = try await nodes[1].logEntries(origin: region, after: 0, limit: Int(total) + 10)
        #expect(log.map(\.sequence) == Array(1...total))
        #expect(written.map(\.sequence).sorted() == Array(1...total))
        #expect(zip(log, log.dropFirst()).allSatisfy { $0.hlc < $1.hlc }, "a later number carries an earlier timestamp")
        // So each key holds its last write, read from any node.
        for key in 0..<keys {
            let last = try #require(log.last { $0.key.rawValue == "k\(key)" })
            let stored = try #require(try await nodes[2].get(keyspace: keyspace, key: Key("k\(key)")))
            #expect(stored.version == last.version && stored.value == last.value)
        }
        // A node reopened later continues the numbering.
        let late = try await PostgresStore.open(Self.configuration(server, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        defer { late.close() }
        guard case .committed(let next) = try await late.write(put("k0", "late")) else { throw MeridianError(.internalError, "not committed") }
        #expect(next.sequence == total + 1 && next.hlc > log.last!.hlc)
    }

    /// Two nodes' stores under the region lease: the holder's store changes; once another node is granted the lease,
    /// every kind of change the former holder's store tries is refused with `lease_lost` (and changes nothing), and
    /// it learns so; the new holder's store carries on the same log.
    @Test func aStoreFencedByAnOlderLeaseEpochChangesNothing() async throws {
        let server = try await PostgresServer.shared.value
        let database = try await server.newDatabase()
        let client = PostgresClient(configuration: Self.configuration(server, database), backgroundLogger: SharedPostgres.logger)
        let running = Task { await client.run() }
        defer { running.cancel() }
        let logger = SharedPostgres.logger
        _ = try await PostgresSchema.migrate(client, logger: logger)
        let (a, b) = (RegionLeaseTable(region: region, node: "node-a"), RegionLeaseTable(region: region, node: "node-b"))
        #expect(try await a.acquire(client, ttlMs: 1_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 1))
        let lost = Mutex<[UInt64]>([])
        let holder = try await PostgresStore.open(Self.configuration(server, database), context: context(),
                                                  fence: LeaseFence(table: a, epoch: 1, ttlMs: 1_000) { epoch in lost.withLock { $0.append(epoch) } },
                                                  logger: logger)
        defer { holder.close() }
        guard case .committed(let first) = try await holder.write(put("k", "by-a")) else {
            Issue.record("the holder's write did not commit")
            return
        }
        try await Task.sleep(for: .milliseconds(1_100))
        #expect(try await b.acquire(client, ttlMs: 5_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 2))

        let peer = RegionName(validated: "eu-west")
        let entry = ReplicationEntry(origin: peer, sequence: 1, hlc: HLCTimestamp(physicalMs: 1_000, logical: 0, region: peer), epoch: 0,
                                     keyspace: keyspace, key: try Key("r"), operation: .put, contentType: "text/plain", value: Array("x".utf8))
        let attempts: [(String, () async throws -> Void)] = [
            ("write", { _ = try await holder.write(self.put("k", "stale")) }),
            ("apply", { _ = try await holder.applyReplicated(origin: peer, from: 1, through: 1, entries: [entry], diverted: [:], durable: true) }),
            ("trim", { try await holder.trimLog(origin: self.region, through: first.sequence) }),
            ("replace", { try await holder.replaceStates(keyspace: self.keyspace, [(key: try Key("k"), state: nil)]) }),
        ]
        for (what, attempt) in attempts {
            #expect(await errorCode(attempt) == .leaseLost, "\(what) by the former holder")
        }
        #expect(lost.withLock { $0 }.allSatisfy { $0 == 1 } && !lost.withLock { $0 }.isEmpty, "the store told its node the lease was lost")

        let successor = try await PostgresStore.open(Self.configuration(server, database), context: context(),
                                                     fence: LeaseFence(table: b, epoch: 2, ttlMs: 5_000) { _ in }, logger: logger)
        defer { successor.close() }
        #expect(try await successor.get(keyspace: keyspace, key: try Key("k"))?.value == Array("by-a".utf8))
        #expect(try await successor.get(keyspace: keyspace, key: try Key("r")) == nil)
        guard case .committed(let next) = try await successor.write(put("k", "by-b")) else {
            Issue.record("the new holder's write did not commit")
            return
        }
        #expect(next.sequence == first.sequence + 1, "the former holder took no number")
    }

    @Test func aReadOnlyDatabaseIsRefusedAtStartAndWhenAPrimaryTurnsReadOnlyWritesFailSayingSo() async throws {
        let server = try await PostgresServer.shared.value
        let database = try await server.newDatabase()
        let store = try await PostgresStore.open(Self.configuration(server, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        defer { store.close() }
        _ = try await store.write(put("a", "1"))
        // The primary turns read-only (a standby's sessions are): new sessions are, and the old ones end.
        try await SharedPostgres.withClient(server, database: database) { client in
            try await client.query("ALTER DATABASE \(unescaped: database) SET default_transaction_read_only = on", logger: SharedPostgres.logger)
            try await client.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = \(database) AND pid <> pg_backend_pid()",
                                   logger: SharedPostgres.logger)
        }
        var codes: [MeridianError.Code] = []
        for attempt in 0..<5 where codes.last != .storageReadOnly {
            do {
                _ = try await store.write(put("b", "\(attempt)"))
                Issue.record("a read-only database took a write")
            } catch {
                codes.append(error.code)
                if error.code == .storageReadOnly { #expect(error.message.contains("primary"), "\(error.message)") }
            }
        }
        #expect(codes.last == .storageReadOnly, "the errors were \(codes)")
        #expect(store.writeFaults.current?.code == .storageReadOnly)
        #expect(try await store.get(keyspace: keyspace, key: Key("a"))?.value == Array("1".utf8), "reads go on")
        #expect(try await store.get(keyspace: keyspace, key: Key("b")) == nil)
        // A node given a standby's address from the start is refused, saying what to do.
        do {
            let standby = try await PostgresStore.open(Self.configuration(server, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
            standby.close()
            Issue.record("a node started on a read-only database")
        } catch {
            #expect(error.code == .storageReadOnly && error.message.contains("primary"), "\(error.message)")
        }
    }

    /// An asynchronous standby promoted after its primary crashed may lack commits the primary acknowledged (and
    /// shipped to other regions); numbering on from its log would give those numbers to other writes. The store
    /// notices that its database changed (a new timeline) and marks itself restored, so the region catches up from its
    /// peers before it takes a write. A restart of the same database changes nothing.
    @Test(.timeLimit(.minutes(3)), .enabled(if: failoverTestsEnabled, "set MERIDIAN_FAILOVER_TESTS=1 (.ci/run runs it in a step of its own)"))
    func aStorePromotedFromAnAsynchronousStandbyIsMarkedRestoredAndARestartIsNot() async throws {
        let primary = try await PostgresServer(inMemory: true)
        defer { Task { await primary.stop() } }
        let database = try await primary.newDatabase()
        var store = try await PostgresStore.open(Self.configuration(primary, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        _ = try await store.write(put("a", "1"))
        store.close()
        // Opened again on the same database: nothing changed.
        store = try await PostgresStore.open(Self.configuration(primary, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        #expect(try await store.restorePending() == nil, "a restart marked the store restored")
        let standby = try await primary.startStandby()
        defer {
            Task {
                await standby.stop()
                try? FileManager.default.removeItem(atPath: standby.directory)
            }
        }
        guard case .committed(let written) = try await store.write(put("b", "2")) else { throw MeridianError(.internalError, "not committed") }
        store.close()
        // The primary crashes; the standby, whatever it received, is promoted and the region's nodes move to it.
        await primary.crash()
        try await SharedPostgres.withClient(standby, database: database) { client in
            let promoted = try await client.query("SELECT pg_promote(true, 60)", logger: SharedPostgres.logger).collect()
            #expect(try promoted.first?.decode(Bool.self) == true, "the standby was not promoted")
        }
        let promoted = try await PostgresStore.open(Self.configuration(standby, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        defer { promoted.close() }
        let mark = try await promoted.restorePending()
        #expect(mark != nil, "the store on the promoted standby was not marked restored")
        #expect(await errorCode { _ = try await promoted.write(put("c", "3")) } == .restorePending, "it took a write before catching up")
        // Catching up ends the mark and numbers the log above what the peers acknowledged (here, the lost write's).
        try await promoted.finishRestore(logEnd: written.sequence)
        #expect(try await promoted.restorePending() == nil)
        guard case .committed(let next) = try await promoted.write(put("c", "3")) else { throw MeridianError(.internalError, "not committed") }
        #expect(next.sequence > written.sequence, "a number peers hold was given again: \(next.sequence)")
        // And the next start on it is an ordinary one.
        let again = try await PostgresStore.open(Self.configuration(standby, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        #expect(try await again.restorePending() == nil)
        again.close()
    }

    /// A database that keeps its WAL position from the store's role (as some managed services do) cannot be checked
    /// for a failover: the store opens without the check, saying so, rather than not at all.
    @Test func aRoleThatMayNotReadTheWALPositionOpensTheStoreWithoutTheFailoverCheck() async throws {
        let server = try await PostgresServer.shared.value
        let database = try await server.newDatabase()
        let role = "r_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(12)
        try await SharedPostgres.withClient(server, database: database) { client in
            try await client.query("CREATE ROLE \(unescaped: role) LOGIN", logger: SharedPostgres.logger)
            try await client.query("ALTER DATABASE \(unescaped: database) OWNER TO \(unescaped: role)", logger: SharedPostgres.logger)
            try await client.query("ALTER SCHEMA public OWNER TO \(unescaped: role)", logger: SharedPostgres.logger)
            try await client.query("REVOKE EXECUTE ON FUNCTION pg_current_wal_lsn() FROM PUBLIC", logger: SharedPostgres.logger)
        }
        let configuration = PostgresClient.Configuration(host: "127.0.0.1", port: server.port, username: role, password: nil, database: database, tls: .disable)
        let store = try await PostgresStore.open(configuration, context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
        defer { store.close() }
        #expect(try await store.restorePending() == nil)
        guard case .committed = try await store.write(put("a", "1")) else { throw MeridianError(.internalError, "not committed") }
    }

    /// A server that would lose commits in a crash (fsync off) is refused: a commit it answered may vanish after
    /// other regions applied it.
    @Test func aServerRunningWithoutFsyncIsRefused() async throws {
        let server = try await PostgresServer()
        defer { Task { await server.stop() } }
        let database = try await server.newDatabase()
        try await SharedPostgres.withClient(server, database: database) { client in
            try await client.query("ALTER SYSTEM SET fsync = off", logger: SharedPostgres.logger)
            try await client.query("SELECT pg_reload_conf()", logger: SharedPostgres.logger)
        }
        var code: MeridianError.Code?
        for _ in 0..<50 {
            code = await errorCode { _ = try await PostgresStore.open(Self.configuration(server, database), context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger) }
            if code != nil { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(code == .invalidConfig)
        await server.stop()
    }

    @Test func aDatabaseThatWentAwayFailsWritesWithinBoundedTimeAndTheStoreSaysWhy() async throws {
        let server = try await PostgresServer()
        let database = try await server.newDatabase()
        var configuration = Self.configuration(server, database)
        configuration.options.connectTimeout = .seconds(2)
        // The schema made and the first write committed by a patient store: what is bounded here is a store's answer
        // once its database is gone, and a full test run on two cores can stall this process for seconds (RELIABILITY.md).
        var opened: PostgresStore?
        var failure: (any Error)?
        do {
            let patient = try await PostgresStore.open(configuration, context: context(), requestTimeout: Self.requestTimeout, logger: SharedPostgres.logger)
            defer { patient.close() }
            _ = try await patient.write(put("a", "1"))
            for _ in 0..<5 where opened == nil {
                do { opened = try await PostgresStore.open(configuration, context: context(), requestTimeout: .seconds(3), logger: SharedPostgres.logger) }
                catch { failure = error }
            }
        } catch {
            failure = error
        }
        guard let store = opened else {
            await server.stop()
            Issue.record("a store with a 3 s bound did not open with the database up: \(failure.map { "\($0)" } ?? "no error")")
            return
        }
        defer { store.close() }
        await server.stop()
        let started = ContinuousClock.now
        do {
            _ = try await store.write(put("b", "2"))
            Issue.record("a write went through with the database stopped")
        } catch {
            #expect(error.code == .storageFailure, "\(error.message)")
        }
        #expect(ContinuousClock.now - started < .seconds(10), "the write hung for \(ContinuousClock.now - started)")
        #expect(store.writeFaults.current?.code == .storageFailure)
        // Reads fail as plainly, and so does a node started against it.
        #expect(await errorCode { _ = try await store.get(keyspace: keyspace, key: Key("a")) } == .storageFailure)
        #expect(await errorCode { _ = try await PostgresStore.open(configuration, context: context(), requestTimeout: .seconds(2), logger: SharedPostgres.logger) }
                == .storageFailure)
    }
}
