import Foundation
import Logging
import MeridianCore
import MeridianHarness
import MeridianPostgres
import PostgresNIO
import Synchronization
import Testing

/// The test process's PostgreSQL server (Debian's package, ``PostgresServer/shared``); every test takes a database of its
/// own.
enum SharedPostgres {
    /// Runs `body` with a client of a new database, the client's connection pool running meanwhile.
    static func withDatabase<T: Sendable>(_ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let server = try await PostgresServer.shared.value
        return try await withClient(server, database: try await server.newDatabase(), body)
    }

    /// The same, with the schema migrated.
    static func withMigratedDatabase<T: Sendable>(_ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        try await withDatabase { client in
            try await PostgresSchema.migrate(client, logger: logger)
            return try await body(client)
        }
    }

    static func withClient<T: Sendable>(_ server: PostgresServer, database: String, _ body: @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let client = PostgresClient(configuration: .init(host: "127.0.0.1", port: server.port, username: server.user, password: nil, database: database, tls: .disable))
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }

    static let logger = Logger(label: "meridian.postgres.test")
}

@Suite(.serialized) struct RegionLeaseTests {
    let region = RegionName(validated: "us-east")

    @Test func migrationsRunOnceWhenSeveralNodesStartTogether() async throws {
        try await SharedPostgres.withDatabase { client in
            let applied = try await withThrowingTaskGroup(of: [Int32].self) { group in
                for _ in 0..<4 { group.addTask { try await PostgresSchema.migrate(client, logger: SharedPostgres.logger) } }
                return try await group.reduce(into: [Int32]()) { $0 += $1 }
            }
            #expect(applied.sorted() == Array(1...PostgresSchema.newestVersion), "each migration applied by exactly one node")
            let rows = try await client.query("SELECT count(*) FROM meridian_migrations").collect()
            #expect(try rows.first?.decode(Int64.self) == Int64(PostgresSchema.newestVersion))
            #expect(try await PostgresSchema.migrate(client, logger: SharedPostgres.logger).isEmpty, "a restart applies nothing")
        }
    }

    @Test func aBuildRunsOnADatabaseANewerBuildMigratedOnlyIfEveryNewerMigrationSaysItMay() async throws {
        try await SharedPostgres.withMigratedDatabase { client in
            let logger = SharedPostgres.logger
            let newest = PostgresSchema.newestVersion
            // A newer build added a column this one does not read: this one keeps running (a rolling upgrade).
            try await client.query("INSERT INTO meridian_migrations (version, summary, runs_with) VALUES (\(newest + 1), 'additive', \(newest))", logger: logger)
            #expect(try await PostgresSchema.migrate(client, logger: logger).isEmpty)
            // One it cannot run with: it refuses, and says what to do.
            try await client.query("INSERT INTO meridian_migrations (version, summary, runs_with) VALUES (\(newest + 2), 'breaking', \(newest + 2))", logger: logger)
            do throws(MeridianError) {
                try await PostgresSchema.migrate(client, logger: logger)
                Issue.record("a build ran on a database it cannot run on")
            } catch {
                #expect(error.code == .storageFailure && error.message.contains("builds older than version \(newest + 2) cannot run on it"), "\(error.message)")
            }
        }
    }

    /// A holder whose connections moved to a promoted standby (a new timeline) while it ran changes nothing more.
    @Test func aChangeOnAnotherTimelineThanTheStoreOpenedOnIsFenced() async throws {
        let region = self.region
        try await SharedPostgres.withMigratedDatabase { client in
            let holder = RegionLeaseTable(region: region, node: "node-a")
            #expect(try await holder.acquire(client, ttlMs: 5_000, timeoutMs: 1_000, logger: SharedPostgres.logger) == .held(epoch: 1))
            let rows = try await client.query("SELECT pg_walfile_name(pg_current_wal_lsn())", logger: SharedPostgres.logger).collect()
            let timeline = String(try #require(try rows.first?.decode(String.self)).prefix(8))
            #expect(await Self.fenceCode(holder, client, epoch: 1, timeline: timeline) == nil)
            #expect(await Self.fenceCode(holder, client, epoch: 1, timeline: "00000009") == .leaseLost)
            #expect(await Self.fenceCode(holder, client, epoch: 1) == nil, "unchecked where the store could not read its timeline")
        }
    }

    @Test func theLeaseGoesToOneNodeAtATimeAndAFormerHoldersStatementsAreFenced() async throws {
        let region = self.region
        try await SharedPostgres.withMigratedDatabase { client in
            let (a, b) = (RegionLeaseTable(region: region, node: "node-a"), RegionLeaseTable(region: region, node: "node-b"))
            let logger = SharedPostgres.logger
            #expect(try await a.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 1))
            #expect(try await b.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: a.holder, addresses: nil))
            #expect(try await b.renew(client, epoch: 1, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: a.holder, addresses: nil))
            // A grant whose answer was lost: asked again, it comes with a new epoch, and the old one is fenced.
            #expect(try await a.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 2))
            #expect(await Self.fenceCode(a, client, epoch: 1) == .leaseLost)
            #expect(await Self.fenceCode(a, client, epoch: 2) == nil)
            // Once it expires by the database's clock, another node is granted it, and the former holder is fenced.
            try await Task.sleep(for: .milliseconds(2_100))
            #expect(try await b.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 3))
            #expect(try await a.renew(client, epoch: 2, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: b.holder, addresses: nil))
            #expect(await Self.fenceCode(a, client, epoch: 2) == .leaseLost)
            // Given back at shutdown, it goes to the next node at once.
            try await b.release(client, epoch: 3, timeoutMs: 1_000, logger: logger)
            // A renewal of b's still on its way after the release finds nothing to extend.
            #expect(try await b.renew(client, epoch: 3, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: "", addresses: nil))
            #expect(try await a.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 4))
        }
    }

    @Test func theHoldersAddressesReachTheOtherNodesUntilItGivesTheLeaseBack() async throws {
        let region = self.region
        try await SharedPostgres.withMigratedDatabase { client in
            let addresses = NodeAddresses(client: Endpoint(host: "10.0.0.7", port: 7300), peer: Endpoint(host: "10.0.0.7", port: 7400))
            let (a, b) = (RegionLeaseTable(region: region, node: "node-a", advertised: addresses), RegionLeaseTable(region: region, node: "node-b"))
            let logger = SharedPostgres.logger
            #expect(try await a.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 1))
            #expect(try await b.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: a.holder, addresses: addresses))
            #expect(try await b.renew(client, epoch: 7, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: a.holder, addresses: addresses))
            try await a.release(client, epoch: 1, timeoutMs: 1_000, logger: logger)
            #expect(try await b.renew(client, epoch: 7, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: "", addresses: nil))
            // A holder that advertises nothing leaves no address behind from the one before it.
            #expect(try await b.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .held(epoch: 2))
            #expect(try await a.acquire(client, ttlMs: 2_000, timeoutMs: 1_000, logger: logger) == .refused(holder: b.holder, addresses: nil))
        }
    }

    @Test func aGrantWaitsForTheHoldersFencedTransactionToEnd() async throws {
        let region = self.region
        try await SharedPostgres.withMigratedDatabase { client in
            let (a, b) = (RegionLeaseTable(region: region, node: "node-a"), RegionLeaseTable(region: region, node: "node-b"))
            let logger = SharedPostgres.logger
            #expect(try await a.acquire(client, ttlMs: 200, timeoutMs: 1_000, logger: logger) == .held(epoch: 1))
            let answered = AnswerBox()
            let asker = try await client.withTransaction(logger: logger) { connection in
                try await a.fence(connection, epoch: 1, logger: logger)
                // The lease expires by the database's clock while the holder's duty runs; the other node asks, and
                // waits: the holder's transaction commits first, under its epoch.
                try await Task.sleep(for: .milliseconds(300))
                let asker = Task { () throws(MeridianError) -> RegionLeaseTable.Answer in
                    let answer = try await b.acquire(client, ttlMs: 5_000, timeoutMs: 5_000, logger: logger)
                    await answered.set(answer)
                    return answer
                }
                try await Task.sleep(for: .milliseconds(600))
                #expect(await answered.answer == nil, "the lease was granted while the holder's fenced transaction ran")
                try await a.fence(connection, epoch: 1, logger: logger)
                return asker
            }
            #expect(try await asker.value == .held(epoch: 2))
            #expect(await Self.fenceCode(a, client, epoch: 1) == .leaseLost)
        }
    }

    @Test func whenTheHolderDiesAnotherNodeTakesTheDutiesOverWithinTheLease() async throws {
        let region = self.region
        try await SharedPostgres.withMigratedDatabase { client in
            // Generous against a loaded machine's stalls: a holder that misses renewals for 2.2 s hands over, which
            // is allowed, so the test asserts what holds regardless (one holder at a time, epochs only rising).
            let settings = try DutyLease.Settings(ttlMs: 3_000, renewEveryMs: 500, marginMs: 800)
            let record = DutyRecord()
            var keepers: [String: RegionLeaseKeeper] = [:]
            for node in ["node-a", "node-b", "node-c"] {
                keepers[node] = RegionLeaseKeeper(table: RegionLeaseTable(region: region, node: node), client: client, settings: settings,
                                                  duties: .init(start: { record.started(node, $0) }, stop: { record.stopped(node, $0, $1) }),
                                                  logger: SharedPostgres.logger)
            }
            // Three nodes run for 2 s: one holds the lease throughout.
            var alive = keepers
            for _ in 0..<20 {
                for keeper in alive.values { await keeper.step() }
                let running = record.running
                #expect(running.count <= 1, "two nodes ran the duties at once: \(running)")
                try await Task.sleep(for: .milliseconds(100))
            }
            let first = try #require(record.running.first, "no node holds the lease after 2 s")
            #expect(record.epochs == record.epochs.sorted() && Set(record.epochs).count == record.epochs.count,
                    "a lease was started twice under one epoch, or under a lower one: \(record.epochs)")
            // The holder dies (no release, no more renewals): another node carries the duties within the lease's time
            // to live plus a renewal interval.
            alive[first.key] = nil
            let died = ContinuousClock.now
            var takenOver: Duration?
            for _ in 0..<90 where takenOver == nil {
                for keeper in alive.values { await keeper.step() }
                if let next = record.running.first(where: { $0.key != first.key }) {
                    takenOver = ContinuousClock.now - died
                    #expect(next.value > first.value, "the new holder's epoch is above the dead one's")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            let elapsed = try #require(takenOver, "no node took the duties over within 9 s")
            // The lease (3 s) from the dead holder's last renewal, then the next standby's request (every 500 ms).
            #expect(elapsed < .milliseconds(5_000), "taken over after \(elapsed)")
            // The dead holder's statements, had it come back without hearing, are fenced.
            #expect(await Self.fenceCode(keepers[first.key]!.table, client, epoch: first.value) == .leaseLost)
            for keeper in alive.values { await keeper.shutDown() }
            #expect(record.running.keys.sorted() == [first.key], "a shutdown stops the duties (the dead node never heard)")
        }
    }

    @Test func aHolderWhoseRenewalsHangStopsItsDutiesWhenItsLeaseRunsOut() async throws {
        let region = self.region
        try await SharedPostgres.withMigratedDatabase { client in
            let settings = try DutyLease.Settings(ttlMs: 1_500, renewEveryMs: 300, marginMs: 300)
            let record = DutyRecord()
            let keeper = RegionLeaseKeeper(table: RegionLeaseTable(region: region, node: "node-a"), client: client, settings: settings,
                                           duties: .init(start: { record.started("node-a", $0) }, stop: { record.stopped("node-a", $0, $1) }),
                                           logger: SharedPostgres.logger)
            for _ in 0..<5 {
                await keeper.step()
                try await Task.sleep(for: .milliseconds(100))
            }
            let epoch = try #require(record.running["node-a"])
            // Another session holds the lease's expiry row: every renewal waits on it until its lock timeout.
            let stopped = try await client.withTransaction(logger: SharedPostgres.logger) { connection -> Duration? in
                let locked = try await connection.query("SELECT 1 FROM meridian_region_lease_expiry WHERE region = \(region.rawValue) FOR UPDATE",
                                                        logger: SharedPostgres.logger).collect()
                #expect(locked.count == 1)
                let blocked = ContinuousClock.now
                for _ in 0..<40 {
                    await keeper.step()
                    if record.running["node-a"] == nil { return ContinuousClock.now - blocked }
                    try await Task.sleep(for: .milliseconds(100))
                }
                return nil
            }
            // The ticks kept returning while the statements hung, and the duties stopped within the lease.
            let after = try #require(stopped, "the duties ran on for 4 s without a renewal")
            #expect(after < .milliseconds(1_500), "stopped after \(after)")
            // Once the database answers again, the lease comes back under a new epoch.
            for _ in 0..<30 where record.running["node-a"] == nil {
                await keeper.step()
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect((record.running["node-a"] ?? 0) > epoch)
            await keeper.shutDown()
        }
    }

    /// The code a fenced transaction of `table` at `epoch` fails with (nil: it went through).
    static func fenceCode(_ table: RegionLeaseTable, _ client: PostgresClient, epoch: UInt64, timeline: String? = nil) async -> MeridianError.Code? {
        do {
            try await client.withTransaction(logger: SharedPostgres.logger) { connection in
                try await table.fence(connection, epoch: epoch, timeline: timeline, logger: SharedPostgres.logger)
            }
            return nil
        } catch {
            return PostgresFailure.wrap(error, "A fenced transaction").code
        }
    }
}

actor AnswerBox {
    var answer: RegionLeaseTable.Answer?
    func set(_ answer: RegionLeaseTable.Answer) { self.answer = answer }
}

/// Which nodes run the duties, and under which epoch.
final class DutyRecord: Sendable {
    private let state = Mutex<(running: [String: UInt64], epochs: [UInt64])>(([:], []))

    var running: [String: UInt64] { state.withLock { $0.running } }
    /// The epochs started, in order.
    var epochs: [UInt64] { state.withLock { $0.epochs } }

    func started(_ node: String, _ epoch: UInt64) {
        state.withLock {
            $0.running[node] = epoch
            $0.epochs.append(epoch)
        }
    }

    func stopped(_ node: String, _ epoch: UInt64, _ reason: String) {
        state.withLock { if $0.running[node] == epoch { $0.running[node] = nil } }
    }
}
