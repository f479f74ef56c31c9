import Logging
import MeridianCore
import MeridianStorage
import PostgresNIO
import Synchronization

/// A region's store in PostgreSQL: every storage protocol, with the rules of the SQLite and in-memory backends (the
/// conformance suite checks all three), on the tables of ``PostgresSchema``.
///
/// Every change runs in one transaction that first locks the `meridian_store` row, so changes go one at a time across
/// every node sharing the database, each seeing the last one's commit: log numbers are dense and follow commit order,
/// and timestamps too (a writer moves its clock past the newest timestamp the row holds before it issues one, so
/// writes from several nodes to one key stay ordered). A commit is durable when it returns (PostgreSQL's
/// `synchronous_commit`), so "visible, durable later" steps are durable at once. Reads take no lock.
///
/// Sealed keyspaces' values stay sealed in every table; the sealer's steps read the key-table rows they need first
/// (``PrefetchedKeys``).
public final class PostgresStore: RegionStorage {
    public let region: RegionName
    public let writeFaults = WriteFaults()
    let client: PostgresClient
    let logger: Logger
    let limits: Limits
    private let rules: [KeyspaceName: ConflictRule]
    private let physicalClockMs: @Sendable () -> UInt64
    let observer: (any StoreObserver)?
    let sealer: ValueSealer?
    private let shipping: CommitShipping?
    private let running: Task<Void, Never>
    /// How long a statement or transaction may take before the caller is answered with `storage_failure`.
    let requestTimeout: Duration
    /// The clock of this node's writes; each change moves it past the row's newest timestamp first.
    private let clock: Mutex<HybridLogicalClock>
    /// What this node last read or wrote of the row and the applied points (the protocols read them without waiting).
    private let known: Mutex<Known>
    /// Idempotency records written since the table was last pruned.
    private let remembered = Mutex(0)
    /// Writes waiting for the next batch's transaction.
    private let committer: PostgresCommitter
    /// When the database last answered this store.
    private let progress = Progress()
    let codec: EntryCodec
    /// The largest stored state this store decodes (CRDT states may outgrow one value).
    static let stateBytesMax = Int(Int32.max)

    /// The region lease this store's changes run under (nil: a node alone on its database, unfenced).
    let fence: LeaseFence?

    struct Known: Sendable {
        var logEnd: UInt64
        var logFloor: UInt64
        var applied: [RegionName: UInt64]
    }

    /// Connects to the region's database, migrates its schema, and opens the store.
    /// - Throws: `storage_failure` when the database is unreachable or belongs to another region, or when the
    ///   cluster has sealed keyspaces (not kept in PostgreSQL yet).
    public static func open(_ configuration: PostgresClient.Configuration, context: StoreContext, requestTimeout: Duration = .seconds(10),
                            fence: LeaseFence? = nil, logger: Logger) async throws(MeridianError) -> PostgresStore {
        var configuration = configuration
        let timeoutMs = max(Int64(requestTimeout.components.seconds) * 1_000 + requestTimeout.components.attoseconds / 1_000_000_000_000_000, 200)
        // Every session: read committed (the store row's lock then sees the last change), commits durable before
        // they return, and no statement, lock wait or abandoned transaction outliving the longest a request may take
        // (six bounds). A node that dies inside a transaction gives the row back after two bounds of idleness.
        configuration.options.additionalStartupParameters += [
            ("default_transaction_isolation", "read committed"), ("synchronous_commit", "on"),
            ("statement_timeout", "\(timeoutMs * 6)ms"), ("lock_timeout", "\(timeoutMs * 6)ms"),
            ("idle_in_transaction_session_timeout", "\(fence.map { min(timeoutMs * 2, Int64($0.ttlMs)) } ?? timeoutMs * 2)ms"),
        ]
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let running = Task { await client.run() }
        let region = context.region
        do {
            let (row, known, timeline) = try await bounded("Opening region \(region)'s store", timeout: requestTimeout * 3, progress: Progress()) { () async throws -> (StoreRow, Known, String?) in
                try await Self.checkServer(client, logger: logger)
                try await PostgresSchema.migrate(client, logger: logger)
                var row = try await StoreRow.claim(client, region: region, logger: logger)
                var timeline: String?
                do {
                    let identity = try await StoreRow.noteIdentity(client, region: region, logger: logger)
                    timeline = StoreRow.timeline(identity.now)
                    if let before = identity.changedFrom {
                        logger.critical("region \(region)'s PostgreSQL is another database than the one its store last ran on (a standby promoted, or a restore): it may lack commits other regions hold, so the region catches up from its peers before it takes a write",
                                        metadata: ["before": "\(before)", "now": "\(identity.now)"])
                        row = try await StoreRow.claim(client, region: region, logger: logger)
                    }
                } catch {
                    // Not allowed or not offered here (some managed services keep the WAL position and control data to
                    // themselves): the store runs without noticing a failover of its database.
                    let cause = ((error as? PostgresTransactionError)?.closureError ?? error) as? PSQLError
                    guard let cause, ["42501", "0A000", "55000"].contains(cause.serverInfo?[.sqlState] ?? "") else { throw error }
                    logger.warning("cannot read which cluster and timeline the region's PostgreSQL runs on, so a failover to a standby that missed commits goes unnoticed; run its high availability in synchronous mode",
                                   metadata: ["error": "\(cause.serverInfo?[.message] ?? "\(cause.code)")"])
                }
                if let sealer = context.sealer {
                    try await client.withTransaction(logger: logger) { connection in
                        try await DataKeyStatements.checkRootKeys(connection, sealer: sealer, logger: logger)
                    }
                }
                var known = Known(logEnd: row.nextSequence - 1, logFloor: row.logFloor, applied: [:])
                for entry in try await client.query("SELECT origin, sequence FROM meridian_applied", logger: logger).collect() {
                    let (origin, sequence) = try entry.decode((String, Int64).self)
                    known.applied[try RegionName(origin)] = UInt64(sequence)
                }
                return (row, known, timeline)
            }
            // Every fenced change also checks the timeline: a standby promoted under a running holder (its pool
            // reconnected to it) changes nothing before the node stops and the next open catches up.
            var fenced = fence
            fenced?.timeline = timeline
            return PostgresStore(client: client, running: running, context: context, requestTimeout: requestTimeout, logger: logger, floor: row.hlc,
                                 known: known, fence: fenced)
        } catch {
            running.cancel()
            throw error
        }
    }

    /// Refuses a server that would lose commits in a crash, or order keys otherwise than by their UTF-8 bytes.
    static func checkServer(_ client: PostgresClient, logger: Logger) async throws {
        let fsync = try await client.query("SHOW fsync", logger: logger).collect().first?.decode(String.self)
        guard fsync == "on" else {
            throw MeridianError(.invalidConfig, "The region's PostgreSQL runs with fsync=off: a crash of its machine would lose commits that other regions already hold. Turn fsync on.")
        }
        let encoding = try await client.query("SHOW server_encoding", logger: logger).collect().first?.decode(String.self)
        guard encoding == "UTF8" else {
            throw MeridianError(.invalidConfig, "The region's PostgreSQL database is encoded as \(encoding ?? "unknown"), not UTF8: create the region's database with ENCODING 'UTF8'.")
        }
    }

    private init(client: PostgresClient, running: Task<Void, Never>, context: StoreContext, requestTimeout: Duration, logger: Logger, floor: HLCTimestamp,
                 known: Known, fence: LeaseFence?) {
        self.client = client
        self.fence = fence
        self.requestTimeout = requestTimeout
        committer = PostgresCommitter(limits: context.limits)
        self.running = running
        self.logger = logger
        region = context.region
        limits = context.limits
        rules = context.conflictRules
        physicalClockMs = context.physicalClockMs
        observer = context.observer
        shipping = context.shipping
        sealer = context.sealer
        codec = EntryCodec(valueBytesMax: Self.stateBytesMax)
        clock = Mutex(HybridLogicalClock(region: context.region, maxOffsetMs: context.limits.clockOffsetMsMax, floor: floor))
        self.known = Mutex(known)
    }

    public func close() {
        running.cancel()
    }

    func rule(_ keyspace: KeyspaceName) -> ConflictRule { rules[keyspace] ?? .lww }

    // MARK: - Running statements

    /// Runs `body` in a transaction holding the store row (every change does): changes go one at a time. What
    /// follows a commit (`afterCommit`) or a rollback (`afterRollback`) runs when the transaction really ended,
    /// even after the caller was answered that it timed out.
    func changing<T: Sendable>(_ doing: String, _ body: @escaping @Sendable (PostgresConnection, StoreRow) async throws -> T,
                               afterCommit: (@Sendable (T) -> Void)? = nil, afterRollback: (@Sendable () -> Void)? = nil) async throws(MeridianError) -> T {
        let (region, logger, client, fence) = (region, logger, client, fence)
        return try await bounded(doing) {
            do {
                let (result, row) = try await client.withTransaction(logger: logger) { connection in
                    try await fence?.check(connection, logger: logger)
                    let row = try await StoreRow.lock(connection, region: region, logger: logger)
                    return (try await body(connection, row), row)
                }
                // What other nodes committed before this change.
                self.known.withLock {
                    $0.logEnd = max($0.logEnd, row.nextSequence - 1)
                    $0.logFloor = max($0.logFloor, row.logFloor)
                }
                afterCommit?(result)
                return result
            } catch {
                afterRollback?()
                throw error
            }
        }
    }

    /// Runs `body` on a connection of the pool, outside any transaction.
    func reading<T: Sendable>(_ doing: String, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws(MeridianError) -> T {
        let client = client
        return try await bounded(doing) { try await client.withConnection { connection in try await body(connection) } }
    }

    /// Runs `work`, failing with `storage_failure` once it has taken longer than ``requestTimeout`` (the pool waits
    /// for a connection to an unreachable server without end). Work that times out goes on in the background until
    /// the database or the connection ends it: a change that timed out may still commit, as after any lost answer.
    private func bounded<T: Sendable>(_ doing: String, _ work: @escaping @Sendable () async throws -> T) async throws(MeridianError) -> T {
        try await Self.bounded(doing, timeout: requestTimeout, progress: progress, work)
    }

    /// `progress` is the store's: the bound is on the database's silence towards this store, not on one request's
    /// length, so a write waiting for the store row behind a long batch the database keeps answering waits on. A
    /// request still fails after six bounds, however the others fare.
    static func bounded<T: Sendable>(_ doing: String, timeout: Duration, progress: Progress,
                                     _ work: @escaping @Sendable () async throws -> T) async throws(MeridianError) -> T {
        let race = Race<T>()
        let started = ContinuousClock.now
        let running = Task {
            await Progress.$current.withValue(progress) {
                do {
                    let result = try await work()
                    progress.heard()
                    race.finish(.success(result))
                } catch {
                    race.finish(.failure(PostgresFailure.wrap(error, doing)))
                }
            }
        }
        let timer = Task {
            var deadline = min(progress.last + timeout, started + timeout * 6)
            while !Task.isCancelled {
                try? await Task.sleep(until: deadline, clock: .continuous)
                guard !Task.isCancelled else { return }
                let renewed = min(progress.last + timeout, started + timeout * 6)
                if renewed > ContinuousClock.now {
                    deadline = renewed
                    continue
                }
                race.finish(.failure(MeridianError(.storageFailure, "\(doing) got no answer from the region's PostgreSQL within \(timeout). Check that the database is up and reachable from this node; a change that timed out may still have committed, so retry a write with its idempotency key.")))
                running.cancel()
                return
            }
        }
        defer { timer.cancel() }
        return try await race.outcome().get()
    }

    /// Moves the clock past the row's newest timestamp, then runs `body` with it; the row learns where it ended.
    func withClock<T>(past floor: HLCTimestamp, _ body: (inout HybridLogicalClock) throws(MeridianError) -> T) throws(MeridianError) -> (T, HLCTimestamp) {
        try clock.withLock { clock throws(MeridianError) in
            clock.advance(past: floor)
            let result = try body(&clock)
            return (result, clock.last)
        }
    }

    // MARK: - Commits

    public func write(_ request: WriteRequest) async throws(MeridianError) -> WriteOutcome {
        let outcome: (WriteOutcome, Recorded)
        do {
            outcome = try await committer.submit(request, bytes: request.value.count + request.key.rawValue.utf8.count) { batch throws(MeridianError) in
                try await self.commit(batch)
            }.get()
        } catch {
            writeFaults.record(error)
            throw error
        }
        writeFaults.clear()
        await settle(request.keyspace, outcome.1, nowMs: physicalClockMs())
        return outcome.0
    }

    /// Where the log stands inside a batch's transaction: the next number, and the newest timestamp.
    struct LogPosition {
        var next: UInt64
        var hlc: HLCTimestamp
    }

    /// Commits a batch of writes in one transaction holding the store row, each planned against the state the ones
    /// before it left (the transaction reads its own writes), so one fsync answers them all.
    /// - Returns: Each write's outcome, in order. - Throws: when the transaction failed: no write of the batch is in.
    func commit(_ batch: [WriteRequest]) async throws(MeridianError) -> [(WriteOutcome, Recorded)] {
        let (logger, sealer) = (logger, sealer)
        let what = batch.count == 1 ? "Committing a write to \(batch[0].keyspace)/\(batch[0].key)" : "Committing \(batch.count) writes"
        return try await changing(what, { connection, row in
            guard row.restorePending == nil else {
                throw MeridianError(.restorePending, "This region's store was restored and takes no write until the region has caught up from its peers.")
            }
            // The wall clock once the row is held: a wait for it must not age the writes' timestamps.
            let physicalMs = self.physicalClockMs()
            var position = LogPosition(next: row.nextSequence, hlc: row.hlc)
            var outcomes: [(WriteOutcome, Recorded)] = []
            for request in batch {
                outcomes.append(try await self.commitOne(request, connection, position: &position, physicalMs: physicalMs))
                Progress.heard()
            }
            if position.next != row.nextSequence || position.hlc != row.hlc {
                try await StoreRow.update(connection, nextSequence: position.next, hlc: position.hlc, logger: logger)
            }
            return outcomes
        }, afterCommit: { outcomes in
            let entries = outcomes.compactMap { outcome -> ReplicationEntry? in
                if case .committed(let entry) = outcome.0 { return entry }
                return nil
            }
            self.observer?.commitCompleted(writes: batch.count, commitSeconds: 0)
            guard let last = entries.last?.sequence else { return }
            self.known.withLock { $0.logEnd = max($0.logEnd, last) }
            if self.shipping?.isConnected == true {
                self.shipping?.written(through: last)
                self.shipping?.durable(through: last)
            }
        }, afterRollback: {
            // A data key a rolled-back write made is gone with it.
            sealer?.forgetCurrentKeys()
        })
    }

    /// One write of a batch: planned, logged and applied in the batch's transaction.
    private func commitOne(_ request: WriteRequest, _ connection: PostgresConnection, position: inout LogPosition,
                           physicalMs: UInt64) async throws -> (WriteOutcome, Recorded) {
        let rule = rule(request.keyspace)
        let (region, limits, logger) = (region, limits, logger)
        if let mark = request.idempotency {
            let live = try await IdempotencyTable.live(connection, request.keyspace, mark.key, nowMs: physicalMs, limits: limits, logger: logger)
            switch IdempotencyCheck.check(mark, against: live) {
            case .apply: break
            case .replay(let record): return (.replayed(record), Recorded())
            case .reused(let error): return (.refused(error), Recorded())
            }
        }
        let current = try await KeyTable.state(connection, request.keyspace, request.key, logger: logger)
        // A sealed keyspace's write: the subject's keys and those of the values held are read first; a CRDT
        // operation plans on the opened value, and the entry is sealed before it is logged or applied.
        let sealed = self.sealer?.isSealed(request.keyspace) == true ? self.sealer : nil
        var keys = PrefetchedKeys()
        var planned = current
        var subject: Result<Subject, MeridianError>?
        if let sealed {
            subject = Result { () throws(MeridianError) in try sealed.subject(of: request.key, in: request.keyspace, given: request.subject) }
            var wanted = PrefetchedKeys.Wanted()
            wanted.state(request.keyspace, current)
            if case .success(let subject) = subject { wanted.subjects[request.keyspace] = [subject] }
            keys = try await PrefetchedKeys.read(connection, wanted, logger: logger)
            if rule == .crdt, let current {
                let table = keys
                do throws(MeridianError) {
                    planned = try sealerStep("Opening a value") { try sealed.opened(current, keyspace: request.keyspace, key: request.key, in: table) }
                } catch {
                    return (.refused(error), Recorded())
                }
            }
        }
        let state = planned
        var (plan, last) = try self.withClock(past: position.hlc) { clock in
            WritePlanner.plan(request, state: state, rule: rule, origin: region, sequence: position.next, clock: &clock,
                              physicalMs: physicalMs, limits: limits)
        }
        if let sealed, let subject, case .append(let entry) = plan {
            do throws(MeridianError) {
                let subject = try subject.get()
                plan = .append(try sealerStep("Sealing a value") { try sealed.sealing(entry, subject: subject, in: &keys) })
            } catch {
                return (.refused(error), Recorded())
            }
        }
        switch plan {
        case .refused(let error): return (.refused(error), Recorded())
        case .preconditionFailed(let version): return (.preconditionFailed(current: version), Recorded())
        case .append(let entry):
            try await LogTable.append(connection, entry, codec: self.codec, logger: logger)
            try await keys.save(connection, logger: logger)
            var recorded = try await self.apply(entry, rule: rule, old: current, connection, nowMs: physicalMs, keys: sealed == nil ? nil : keys)
            recorded.remembered = try await IdempotencyTable.remember(connection, entry, nowMs: physicalMs, limits: limits, logger: logger)
            position = LogPosition(next: entry.sequence + 1, hlc: last)
            return (.committed(entry), recorded)
        }
    }

    public func idempotencyRecord(keyspace: KeyspaceName, key: IdempotencyKey) async throws(MeridianError) -> IdempotencyRecord? {
        let (limits, logger, nowMs) = (limits, logger, physicalClockMs())
        return try await reading("Reading an idempotency record") { connection in
            try await IdempotencyTable.live(connection, keyspace, key, nowMs: nowMs, limits: limits, logger: logger)
        }
    }

    /// Conflict records added and dropped, idempotency records written.
    struct Recorded: Sendable {
        var added = 0, dropped = 0, remembered = 0
        mutating func add(_ other: Recorded) {
            added += other.added
            dropped += other.dropped
            remembered += other.remembered
        }
    }

    /// Applies one entry to its key (whose state is `old`), records the losers, and notes the term it belongs to.
    /// A sealed keyspace's entry is applied by the sealer, with `keys` (read here when not given).
    func apply(_ entry: ReplicationEntry, rule: ConflictRule, old: KeyState?, _ connection: PostgresConnection, nowMs: UInt64,
               keys: PrefetchedKeys? = nil) async throws -> Recorded {
        if entry.epoch > 0 {
            try await TermTable.raise(connection, entry.keyspace, [TermEnd(epoch: entry.epoch, leader: entry.origin, last: entry.sequence)], logger: logger)
        }
        let change: KeyChange?
        if let sealer, sealer.isSealed(entry.keyspace) {
            var table = keys
            if table == nil {
                var wanted = PrefetchedKeys.Wanted()
                wanted.state(entry.keyspace, old)
                wanted.values(entry.keyspace, [entry.value])
                table = try await PrefetchedKeys.read(connection, wanted, logger: logger)
            }
            let read = table!
            change = try sealerStep("Applying a sealed entry") { try sealer.change(applying: entry, rule: rule, to: old, in: read) }
        } else {
            change = try KeyChange.applying(entry, rule: rule, to: old)
        }
        guard let change else { return Recorded() }
        try await KeyTable.put(connection, entry.keyspace, entry.key, change.state, rule: rule, logger: logger)
        return try await ConflictTable.record(change, keyspace: entry.keyspace, key: entry.key, connection, nowMs: nowMs, limits: limits, logger: logger)
    }

    /// Reports what a step recorded, and prunes the idempotency table once enough records were written.
    func settle(_ keyspace: KeyspaceName, _ recorded: Recorded, nowMs: UInt64) async {
        if recorded.added > 0 || recorded.dropped > 0 {
            observer?.conflictsRecorded(keyspace: keyspace, recorded: recorded.added, dropped: recorded.dropped)
        }
        let (limits, logger) = (limits, logger)
        let due = remembered.withLock { count in
            count += recorded.remembered
            guard count >= IdempotencyTable.pruneEvery(limits) else { return false }
            count = 0
            return true
        }
        guard due else { return }
        do {
            // Outside the store row: a prune takes no number, and writes need not wait for it.
            let (client, fence) = (client, fence)
            let evicted = try await bounded("Pruning idempotency records") {
                try await client.withTransaction(logger: logger) { connection in
                    try await fence?.check(connection, logger: logger)
                    return try await IdempotencyTable.prune(connection, nowMs: nowMs, limits: limits, logger: logger)
                }
            }
            if evicted > 0 { observer?.idempotencyKeysEvicted(evicted) }
        } catch {
            logger.warning("could not prune idempotency records; the next write tries again", metadata: ["reason": "\(error.message)"])
            remembered.withLock { $0 = IdempotencyTable.pruneEvery(limits) }
        }
    }

    // MARK: - Keys

    public func get(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> StoredValue? {
        let (rule, logger) = (rule(keyspace), logger)
        let sealer = self.sealer?.isSealed(keyspace) == true ? self.sealer : nil
        let read = try await reading("Reading \(keyspace)/\(key)") { connection -> StoredValue? in
            guard let state = try await KeyTable.state(connection, keyspace, key, logger: logger) else { return nil }
            var winner = state.winner(rule)
            if let sealer {
                var wanted = PrefetchedKeys.Wanted()
                wanted.values(keyspace, [winner.value])
                let keys = try await PrefetchedKeys.read(connection, wanted, logger: logger)
                let sealed = winner
                winner = try sealerStep("Opening a value") { try sealer.opened(sealed, keyspace: keyspace, key: key, in: keys) }
            }
            var value = StoredValue(keyspace: keyspace, key: key, winner: winner)
            value.concurrent = state.versions.count - 1
            return value
        }
        return read
    }

    public func state(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> KeyState? {
        let logger = logger
        let sealer = self.sealer?.isSealed(keyspace) == true ? self.sealer : nil
        return try await reading("Reading \(keyspace)/\(key)") { connection in
            guard let state = try await KeyTable.state(connection, keyspace, key, logger: logger) else { return nil }
            guard let sealer else { return state }
            var wanted = PrefetchedKeys.Wanted()
            wanted.state(keyspace, state)
            let keys = try await PrefetchedKeys.read(connection, wanted, logger: logger)
            return try sealerStep("Opening a value") { try sealer.opened(state, keyspace: keyspace, key: key, in: keys) }
        }
    }

    public func list(keyspace: KeyspaceName, prefix: String, after: String?, limit: Int) async throws(MeridianError) -> [ListedKey] {
        precondition(limit > 0)
        let (rule, logger) = (rule(keyspace), logger)
        let upper = Self.pastPrefix(prefix)
        return try await reading("Listing \(keyspace)") { connection in
            var listed: [ListedKey] = []
            var cursor = after
            // `live` was set under the rule of the time; the winner under today's decides.
            while listed.count < limit {
                let asked = limit - listed.count
                // The prefix as a key range, so the index bounds the scan: from the prefix to just past every key
                // starting with it (its last character plus one, in the byte order of "C").
                let rows = try await connection.query("""
                    SELECT key, state FROM meridian_keys WHERE keyspace = \(keyspace.rawValue) AND live AND key >= \(prefix)
                    AND (\(upper)::text IS NULL OR key < \(upper)) AND starts_with(key, \(prefix))
                    AND (\(cursor)::text IS NULL OR key > \(cursor)) ORDER BY key LIMIT \(Int64(asked))
                    """, logger: logger).collect()
                for row in rows {
                    let (key, state) = try KeyTable.decode(row)
                    cursor = key.rawValue
                    let winner = state.winner(rule)
                    guard !winner.tombstone else { continue }
                    listed.append(ListedKey(key: key, version: winner.version, valueBytes: winner.value.count, contentType: winner.contentType,
                                            dependencies: winner.dependencies))
                }
                if rows.count < asked { break }
            }
            return listed
        }
    }

    /// The least string above every string starting with `prefix` (nil: no bound, for "" or a last character
    /// that cannot grow).
    static func pastPrefix(_ prefix: String) -> String? {
        var scalars = Array(prefix.unicodeScalars)
        while let last = scalars.popLast() {
            var next = last.value + 1
            if (0xD800...0xDFFF).contains(next) { next = 0xE000 }
            if let scalar = Unicode.Scalar(next) {
                scalars.append(scalar)
                return String(String.UnicodeScalarView(scalars))
            }
        }
        return nil
    }

    public func keyCounts() async throws(MeridianError) -> [String: Int] {
        let logger = logger
        return try await reading("Counting keys") { connection in
            var counts: [String: Int] = [:]
            for row in try await connection.query("SELECT keyspace, count(*) FROM meridian_keys WHERE live GROUP BY keyspace", logger: logger).collect() {
                let (keyspace, count) = try row.decode((String, Int64).self)
                counts[keyspace] = Int(count)
            }
            return counts
        }
    }

    // MARK: - Replication logs

    public func appliedHighWater() -> [RegionName: UInt64] {
        let region = region
        return known.withLock { known in
            var applied = known.applied
            if known.logEnd > 0 { applied[region] = known.logEnd }
            return applied
        }
    }

    /// Every commit is durable: what is visible is durable.
    public func visibleHighWater() -> [RegionName: UInt64] { appliedHighWater() }

    public func syncApplied() async throws(MeridianError) -> [RegionName: UInt64] { appliedHighWater() }

    public func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                                diverted: [UInt64: UInt64], durable: Bool) async throws(MeridianError) -> UInt64 {
        try ReplicatedRange.check(origin: origin, from: from, through: through, entries: entries, region: region)
        let logger = logger
        let (after, recorded) = try await changing("Applying \(origin)'s log \(from)...\(through)") { connection, row -> (UInt64, [KeyspaceName: Recorded]) in
            let physicalMs = self.physicalClockMs()
            let applied = try await AppliedTable.sequence(connection, origin, logger: logger)
            guard from <= applied + 1 else {
                throw MeridianError(.replicationProtocol, "\(origin)'s log skipped from \(applied) to \(from); the stream must resume from \(applied).",
                                    context: ["origin": origin.rawValue, "expected": String(applied + 1), "received": String(from)])
            }
            guard through > applied else { return (applied, [:]) }
            var recorded: [KeyspaceName: Recorded] = [:]
            var newest = row.hlc
            for entry in entries where entry.sequence > applied {
                if let successor = diverted[entry.sequence] {
                    try await DivergenceTable.insert(entry, successorEpoch: successor, connection, codec: self.codec, nowMs: physicalMs, logger: logger)
                    continue
                }
                try await LogTable.append(connection, entry, codec: self.codec, logger: logger)
                let old = try await KeyTable.state(connection, entry.keyspace, entry.key, logger: logger)
                var step = try await self.apply(entry, rule: self.rule(entry.keyspace), old: old, connection, nowMs: physicalMs)
                step.remembered = try await IdempotencyTable.remember(connection, entry, nowMs: physicalMs, limits: self.limits, logger: logger)
                recorded[entry.keyspace, default: Recorded()].add(step)
                newest = self.received(entry.hlc, floor: newest, physicalMs: physicalMs)
                Progress.heard()
            }
            try await AppliedTable.set(connection, origin, through, logger: logger)
            try await StoreRow.update(connection, hlc: newest, logger: logger)
            return (through, recorded)
        }
        known.withLock { $0.applied[origin] = max($0.applied[origin] ?? 0, after) }
        for (keyspace, counts) in recorded { await settle(keyspace, counts, nowMs: physicalClockMs()) }
        return after
    }

    /// The clock past another region's timestamp, unless it leads this region's wall clock by more than the maximum
    /// offset (as the other backends). - Returns: the clock's newest timestamp.
    func received(_ remote: HLCTimestamp, floor: HLCTimestamp, physicalMs: UInt64) -> HLCTimestamp {
        clock.withLock { clock in
            clock.advance(past: floor)
            if remote.physicalMs <= physicalMs || remote.physicalMs - physicalMs <= clock.maxOffsetMs { clock.advance(past: remote) }
            return clock.last
        }
    }

    public func raiseApplied(origin: RegionName, to sequence: UInt64) async throws(MeridianError) -> UInt64 {
        guard origin != region else { return appliedHighWater()[region] ?? 0 }
        let logger = logger
        let after = try await changing("Raising \(origin)'s applied point") { connection, _ in
            let raised = max(try await AppliedTable.sequence(connection, origin, logger: logger), sequence)
            try await AppliedTable.set(connection, origin, raised, logger: logger)
            return raised
        }
        known.withLock { $0.applied[origin] = max($0.applied[origin] ?? 0, after) }
        return after
    }

    public func logEntries(origin: RegionName, after sequence: UInt64, limit: Int) async throws(MeridianError) -> [ReplicationEntry] {
        let (logger, codec) = (logger, codec)
        return try await reading("Reading \(origin)'s log") { connection in
            try await connection.query("""
                SELECT entry FROM meridian_log WHERE origin = \(origin.rawValue) AND sequence > \(Int64(sequence)) ORDER BY sequence LIMIT \(Int64(limit))
                """, logger: logger).collect().map { row in try codec.decode(try row.decode(ByteBuffer.self).readableBytesView) }
        }
    }

    public func logFloor() -> UInt64 { known.withLock { $0.logFloor } }

    public func trimLog(origin: RegionName, through sequence: UInt64) async throws(MeridianError) {
        let (own, logger) = (origin == region, logger)
        let floor = try await changing("Trimming \(origin)'s log") { connection, row -> UInt64 in
            guard !own || sequence > row.logFloor else { return row.logFloor }
            try await connection.query("DELETE FROM meridian_log WHERE origin = \(origin.rawValue) AND sequence <= \(Int64(sequence))", logger: logger)
            guard own else { return row.logFloor }
            try await connection.query("UPDATE meridian_store SET log_floor = \(Int64(sequence))", logger: logger)
            return sequence
        }
        known.withLock { $0.logFloor = max($0.logFloor, floor) }
    }

    // MARK: - Repair

    public func merkleTree(keyspace: KeyspaceName) async throws(MeridianError) -> (tree: MerkleTree, keys: Int) {
        let logger = logger
        return try await reading("Building \(keyspace)'s Merkle tree") { connection in
            var builder = MerkleTree.Builder()
            var after: String?
            while true {
                let rows = try await connection.query("""
                    SELECT key, state FROM meridian_keys WHERE keyspace = \(keyspace.rawValue) AND (\(after)::text IS NULL OR key > \(after))
                    ORDER BY key LIMIT \(Int64(KeyTable.pageRows))
                    """, logger: logger).collect()
                for row in rows {
                    let (key, state) = try KeyTable.decode(row)
                    builder.add(key, state: state)
                    after = key.rawValue
                }
                if rows.count < KeyTable.pageRows { return (builder.tree, builder.keys) }
            }
        }
    }

    public func merkleSlots(keyspace: KeyspaceName, buckets: [Int]) async throws(MeridianError) -> MerkleSlots {
        var held: [(key: Key, state: KeyState)] = []
        for bucket in Set(buckets).sorted() {
            var after: Key?
            repeat {
                let page = try await states(keyspace: keyspace, slots: [MerkleTree.slots(ofBucket: bucket)], after: after, bytesMax: 1 << 22)
                held += page.states
                after = page.next
            } while after != nil
        }
        return MerkleSlots(buckets: buckets, states: held)
    }

    public func states(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (states: [(key: Key, state: KeyState)], next: Key?) {
        var page = KeyStatePage(bytesMax: bytesMax)
        try await scan(keyspace: keyspace, slots: slots, after: after) { key, state in page.add(key, state) }
        return (page.states, page.next)
    }

    public func items(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (items: [(key: Key, item: MerkleTree.Leaf)], next: Key?) {
        var items: [(key: Key, item: MerkleTree.Leaf)] = []
        var bytes = 4
        var next: Key?
        try await scan(keyspace: keyspace, slots: slots, after: after) { key, state in
            let size = KeyItemCodec.bytes(key)
            if !items.isEmpty && bytes + size > bytesMax {
                next = items.last?.key
                return false
            }
            bytes += size
            items.append((key, MerkleTree.item(key, state: state)))
            return true
        }
        return (items, next)
    }

    /// Hands the keys of some Merkle slots to `take`, in slot and key order after `after`, until it returns false.
    private func scan(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, _ take: (Key, KeyState) -> Bool) async throws(MeridianError) {
        let logger = logger
        for seek in MerkleTree.seeks(slots, after: after) {
            var cursor: (slot: Int32, key: String)?
            while true {
                let (slot, key) = (cursor?.slot ?? Int32(seek.slots.lowerBound) - 1, cursor?.key ?? "")
                let (low, high, floor) = (Int32(seek.slots.lowerBound), Int32(seek.slots.upperBound), seek.after?.rawValue)
                let rows = try await reading("Reading \(keyspace)'s keys by slot") { connection in
                    try await connection.query("""
                        SELECT key, state, slot FROM meridian_keys WHERE keyspace = \(keyspace.rawValue) AND slot BETWEEN \(low) AND \(high)
                        AND (\(floor)::text IS NULL OR key > \(floor)) AND (slot, key) > (\(slot), \(key)::text COLLATE "C")
                        ORDER BY slot, key LIMIT \(Int64(KeyTable.pageRows))
                        """, logger: logger).collect()
                }
                for row in rows {
                    let (key, state) = try PostgresFailure.decoding("a key's state") { try KeyTable.decode(row) }
                    guard take(key, state) else { return }
                    cursor = (try PostgresFailure.decoding("a key's slot") { try row.decode((String, ByteBuffer, Int32).self).2 }, key.rawValue)
                }
                if rows.count < KeyTable.pageRows { break }
            }
        }
    }

    public func states(keyspace: KeyspaceName, keys: [Key]) async throws(MeridianError) -> [(key: Key, state: KeyState)] {
        let logger = logger
        guard !keys.isEmpty else { return [] }
        let held = try await reading("Reading \(keyspace)'s keys") { connection in
            var held: [Key: KeyState] = [:]
            for row in try await connection.query("""
                SELECT key, state FROM meridian_keys WHERE keyspace = \(keyspace.rawValue) AND key = ANY(\(keys.map(\.rawValue)))
                """, logger: logger).collect() {
                let (key, state) = try KeyTable.decode(row)
                held[key] = state
            }
            return held
        }
        return keys.compactMap { key in held[key].map { (key, $0) } }
    }

    public func merge(keyspace: KeyspaceName, states: [(key: Key, state: KeyState)]) async throws(MeridianError) -> Int {
        guard !states.isEmpty else { return 0 }
        let (rule, limits, logger) = (rule(keyspace), limits, logger)
        let items = states.map { MergeItem(key: $0.key, state: $0.state) }
        let (changed, recorded) = try await changing("Merging states into \(keyspace)") { connection, row -> (Int, Recorded) in
            let physicalMs = self.physicalClockMs()
            var changed = 0, recorded = Recorded()
            var newest = row.hlc
            for item in items {
                let local = try await KeyTable.state(connection, keyspace, item.key, logger: logger)
                var merged = item.state
                if let local, let sealer = self.sealer, sealer.isSealed(keyspace) {
                    var wanted = PrefetchedKeys.Wanted()
                    wanted.state(keyspace, local)
                    wanted.state(keyspace, item.state)
                    let keys = try await PrefetchedKeys.read(connection, wanted, logger: logger)
                    merged = try sealerStep("Merging a sealed state") { try sealer.merged(local, with: item.state, rule: rule, keyspace: keyspace, key: item.key, in: keys) }
                } else if let local {
                    merged = local.merged(with: item.state, rule: rule)
                }
                guard merged != local else { continue }
                for version in item.state.versions { newest = self.received(version.version.hlc, floor: newest, physicalMs: physicalMs) }
                try await KeyTable.put(connection, keyspace, item.key, merged, rule: rule, logger: logger)
                recorded.add(try await ConflictTable.record(KeyChange.changes(old: local, new: merged, rule: rule), keyspace: keyspace, key: item.key,
                                                            connection, nowMs: physicalMs, limits: limits, logger: logger))
                changed += 1
                Progress.heard()
            }
            try await StoreRow.update(connection, hlc: newest, logger: logger)
            return (changed, recorded)
        }
        await settle(keyspace, recorded, nowMs: physicalClockMs())
        return changed
    }

    public func replaceStates(keyspace: KeyspaceName, _ states: [(key: Key, state: KeyState?)]) async throws(MeridianError) {
        let (rule, logger) = (rule(keyspace), logger)
        let items = states.map { ReplaceItem(key: $0.key, state: $0.state) }
        try await changing("Replacing states in \(keyspace)") { connection, _ in
            for item in items {
                if let state = item.state {
                    try await KeyTable.put(connection, keyspace, item.key, state, rule: rule, logger: logger)
                } else {
                    try await connection.query("DELETE FROM meridian_keys WHERE keyspace = \(keyspace.rawValue) AND key = \(item.key.rawValue)", logger: logger)
                }
            }
        }
    }

    struct MergeItem: Sendable {
        let key: Key
        let state: KeyState
    }

    struct ReplaceItem: Sendable {
        let key: Key
        let state: KeyState?
    }

    // MARK: - Backups

    public func backup(to path: String) async throws(MeridianError) -> BackupSummary {
        throw MeridianError(.invalidRequest, "Region \(region) keeps its data in PostgreSQL: back it up with PostgreSQL's own tools (pg_basebackup and WAL archiving, or your provider's snapshots); Meridian's backup command copies SQLite stores only.")
    }

    public func restorePending() async throws(MeridianError) -> UInt64? {
        let (region, logger) = (region, logger)
        return try await reading("Reading the restore mark") { connection in try await StoreRow.read(connection, region: region, logger: logger).restorePending }
    }

    public func finishRestore(logEnd: UInt64) async throws(MeridianError) {
        let logger = logger
        let row = try await changing("Ending a restore") { connection, row -> StoreRow in
            var row = row
            if logEnd >= row.nextSequence {
                row.nextSequence = logEnd + 1
                row.logFloor = max(row.logFloor, logEnd)
            }
            try await connection.query("""
                UPDATE meridian_store SET next_sequence = \(Int64(row.nextSequence)), log_floor = \(Int64(row.logFloor)), restore_pending = NULL
                """, logger: logger)
            return row
        }
        known.withLock {
            $0.logEnd = max($0.logEnd, row.nextSequence - 1)
            $0.logFloor = max($0.logFloor, row.logFloor)
        }
    }

    /// Marks the store as a restored copy (a restore's catch-up, in tests: a PostgreSQL store is restored by
    /// PostgreSQL's tools, which then leave this mark).
    public func markRestored() async throws(MeridianError) {
        try await changing("Marking a restore") { connection, row in
            try await connection.query("UPDATE meridian_store SET restore_pending = \(Int64(row.nextSequence - 1))", logger: self.logger)
        }
    }
}

/// The first of several outcomes, handed to one waiter.
final class Race<T: Sendable>: Sendable {
    private let state = Mutex<(outcome: Result<T, MeridianError>?, waiter: CheckedContinuation<Result<T, MeridianError>, Never>?)>((nil, nil))

    /// Keeps the first outcome (later ones are dropped) and wakes the waiter.
    func finish(_ outcome: Result<T, MeridianError>) {
        let waiter = state.withLock { state -> CheckedContinuation<Result<T, MeridianError>, Never>? in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: outcome)
    }

    /// Waits for the first outcome (one waiter).
    func outcome() async -> Result<T, MeridianError> {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Result<T, MeridianError>? in
                if let outcome = state.outcome { return outcome }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}

/// When a store last heard from its database: every request that completes marks it, and long steps (a batch of
/// writes, a batch of entries) mark each answer, so the bound measures silence rather than length.
final class Progress: Sendable {
    @TaskLocal static var current: Progress?
    private static let origin = ContinuousClock.now
    private let nanoseconds = Atomic<Int64>(0)

    init() { heard() }

    /// The request of the current task heard from the database now.
    static func heard() { current?.heard() }

    func heard() {
        let elapsed = ContinuousClock.now - Self.origin
        nanoseconds.store(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000, ordering: .relaxed)
    }

    var last: ContinuousClock.Instant { Self.origin + .nanoseconds(nanoseconds.load(ordering: .relaxed)) }
}
