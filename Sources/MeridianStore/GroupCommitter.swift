import DequeModule
import Foundation
import GRDB
import GRDBSQLite
import Logging
import MeridianCore
import MeridianStorage
import Synchronization

/// Batches concurrent writes into shared transactions: one commit, one fsync, many writes.
///
/// Writes queue in arrival order (bounded by `commitQueueMax`). While one transaction commits, later
/// writes gather; the next transaction takes up to `commitBatchMax` of them. Sequences and HLC timestamps
/// are assigned inside the transaction, in commit order, so the log never has a gap: a batch that fails
/// rolls back and leaves the counters where they were.
actor GroupCommitter {
    private struct Pending {
        let request: WriteRequest
        let continuation: CheckedContinuation<Result<WriteOutcome, MeridianError>, Never>
    }

    private let pool: DatabasePool
    private let region: RegionName
    private let limits: Limits
    private let physicalClockMs: @Sendable () -> UInt64
    private let observer: (any StoreObserver)?
    private let logger: Logger
    private var queue: Deque<Pending> = []
    private var queuedBytes = 0
    private var committing = false
    private let lastCommittedSequence: SequenceHighWater
    private var nextSequence: UInt64
    private let clock: TransactionClock
    private let rules: [KeyspaceName: ConflictRule]
    private let sealer: ValueSealer?
    /// The data directory, examined when a write fails.
    private let directory: String
    /// The latest failed commit, until one succeeds.
    let faults: WriteFaults
    /// Idempotency records written since the table was last pruned (``IdempotencyRows/pruneEvery(_:)``).
    private var idempotencyRecordsSincePrune = 0
    /// A store restored from a backup numbers no write of its own until its log's end is known
    /// (``continueLog(after:)``): every sequence after the backup's may already name another write at a peer.
    private var restoring: Bool
    /// This region's newest log entries, for shipping.
    nonisolated let recentLog: RecentLog
    /// Where entries go before their COMMIT's fsync, and where their durability is announced (``CommitShipping``).
    private let shipping: CommitShipping?

    init(pool: DatabasePool, region: RegionName, limits: Limits, rules: [KeyspaceName: ConflictRule], nextSequence: UInt64, clock: HybridLogicalClock,
         physicalClockMs: @escaping @Sendable () -> UInt64, observer: (any StoreObserver)?, sealer: ValueSealer?, logger: Logger,
         lastCommittedSequence: SequenceHighWater, directory: String, faults: WriteFaults, restoring: Bool = false, shipping: CommitShipping? = nil) {
        self.restoring = restoring
        self.shipping = shipping
        recentLog = RecentLog(entriesMax: max(8_192, 2 * limits.replicationInflightEntriesMax), bytesMax: 32 << 20)
        self.sealer = sealer
        self.directory = directory
        self.faults = faults
        self.lastCommittedSequence = lastCommittedSequence
        self.rules = rules
        self.pool = pool
        self.region = region
        self.limits = limits
        self.nextSequence = nextSequence
        self.clock = TransactionClock(clock, physicalClockMs: physicalClockMs)
        self.physicalClockMs = physicalClockMs
        self.observer = observer
        self.logger = logger
    }

    func submit(_ request: WriteRequest) async throws(MeridianError) -> WriteOutcome {
        guard !restoring else {
            throw MeridianError(.restorePending, "This region's store was restored from a backup and takes no write until the region has caught up from its peers; write through another region meanwhile.")
        }
        guard queue.count < limits.commitQueueMax else {
            throw MeridianError(.overloaded, "The region has \(limits.commitQueueMax) writes waiting to commit; retry shortly.",
                                context: ["commit_queue_max": String(limits.commitQueueMax)])
        }
        guard queuedBytes + request.value.count <= limits.commitQueueBytesMax else {
            throw MeridianError(.overloaded, "The region has \(queuedBytes) bytes of writes waiting to commit (limit \(limits.commitQueueBytesMax)); retry shortly.",
                                context: ["commit_queue_bytes_max": String(limits.commitQueueBytesMax)])
        }
        let result = await withCheckedContinuation { continuation in
            queuedBytes += request.value.count
            queue.append(Pending(request: request, continuation: continuation))
            if !committing {
                committing = true
                Task { await self.drain() }
            }
        }
        return try result.get()
    }

    private func drain() async {
        while !queue.isEmpty {
            if limits.commitWaitUs > 0 && queue.count < limits.commitBatchMax {
                try? await Task.sleep(for: .microseconds(limits.commitWaitUs))
            }
            let batch = Array(queue.prefix(limits.commitBatchMax))
            queue.removeFirst(batch.count)
            // The batch's bytes stay counted until it is answered, so the bound covers the batch in flight.
            await commit(batch)
            queuedBytes -= batch.reduce(0) { $0 + $1.request.value.count }
        }
        committing = false
    }

    private func commit(_ batch: [Pending]) async {
        let requests = batch.map(\.request)
        let region = self.region
        let firstSequence = nextSequence
        let clock = self.clock
        let physicalMs = physicalClockMs()
        let started = ContinuousClock.now
        let rules = self.rules
        let limits = self.limits
        let pruneDue = idempotencyRecordsSincePrune >= IdempotencyRows.pruneEvery(limits)
        let sealer = self.sealer
        let recentLog = self.recentLog
        let shipping = self.shipping?.isConnected == true ? self.shipping : nil
        do {
            let (outcomes, sequence, recorded, remembered) = try await pool.write { db in
                var sequence = firstSequence
                var outcomes: [WriteOutcome] = []
                var remembered = 0
                outcomes.reserveCapacity(requests.count)
                let log = try LogAppender(db)
                var states = KeyStateBatch()
                try states.read(db, requests.map { KeyStateBatch.StateKey(keyspace: $0.keyspace, key: $0.key) })
                for request in requests {
                    if let mark = request.idempotency {
                        switch IdempotencyCheck.check(mark, against: try IdempotencyRows.live(db, request.keyspace, mark.key, nowMs: physicalMs, limits: limits)) {
                        case .apply: break
                        case .replay(let record):
                            outcomes.append(.replayed(record))
                            continue
                        case .reused(let error):
                            outcomes.append(.refused(error))
                            continue
                        }
                    }
                    let state = try states.state(db, request.keyspace, request.key)
                    let rule = rules[request.keyspace] ?? .lww
                    let sealed = sealer?.isSealed(request.keyspace) == true ? sealer : nil
                    // Planned inside the transaction, so its timestamp is past every entry applied before it (and
                    // so past everything it supersedes), and past what the session saw. A CRDT operation plans on
                    // the opened value; the entry is sealed before it is logged or applied.
                    let plan: WritePlan
                    do {
                        let planned = try sealed.flatMap { sealer in
                            try rule == .crdt ? state.map { try sealer.opened($0, keyspace: request.keyspace, key: request.key, in: DataKeyRows(db: db)) } : nil
                        } ?? state
                        plan = try Self.sealing(clock.plan { hlc, physicalMs in
                            WritePlanner.plan(request, state: planned, rule: rule, origin: region, sequence: sequence, clock: &hlc,
                                              physicalMs: physicalMs, limits: limits)
                        }, request: request, sealer: sealed, db: db)
                    } catch let error as MeridianError {
                        plan = .refused(error)
                    }
                    switch plan {
                    case .refused(let error):
                        outcomes.append(.refused(error))
                    case .preconditionFailed(let current):
                        outcomes.append(.preconditionFailed(current: current))
                    case .append(let entry):
                        try log.append(entry)
                        try states.apply(db, entry, rule: rule, sealer: sealed)
                        if try IdempotencyRows.remember(db, entry, nowMs: physicalMs, limits: limits) { remembered += 1 }
                        sequence += 1
                        outcomes.append(.committed(entry))
                    }
                }
                let recorded = try states.write(db, nowMs: physicalMs, limits: limits)
                if sequence != firstSequence { try Self.raiseHighWater(db, clock.last, region: region) }
                let evicted = try pruneDue ? IdempotencyRows.prune(db, nowMs: physicalMs, limits: limits) : 0
                // Every statement ran: the entries leave for the peers now, while the COMMIT's fsync runs (as a Raft
                // leader sends while it writes its log). The peers apply them only once `durable` says so below.
                if let shipping, sequence != firstSequence {
                    recentLog.appended(Self.entries(outcomes))
                    shipping.written(through: sequence - 1)
                }
                return (outcomes, sequence, recorded, (remembered, evicted))
            }
            noteIdempotencyRecords(remembered, pruned: pruneDue)
            nextSequence = sequence
            // Published before any write of the batch is answered, so a read that follows an acknowledged
            // write always sees it applied (read-your-writes in this region).
            lastCommittedSequence.value.store(sequence - 1, ordering: .releasing)
            if sequence != firstSequence {
                if shipping == nil { recentLog.appended(Self.entries(outcomes)) }
                self.shipping?.durable(through: sequence - 1)
            }
            faults.clear()
            let elapsed = ContinuousClock.now - started
            observer?.commitCompleted(writes: batch.count, commitSeconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
            report(recorded)
            for (pending, outcome) in zip(batch, outcomes) {
                pending.continuation.resume(returning: .success(outcome))
            }
        } catch {
            let failure = StorageFault.error(error, directory: directory, what: "The commit of this write failed")
            // Entries handed to the shippers before the COMMIT that failed: dropped here, and wherever they went (their
            // numbers go to the next writes).
            if recentLog.discard(after: firstSequence - 1) { self.shipping?.failed(committedThrough: firstSequence - 1) }
            // A data key made in the transaction was rolled back with it: no later write may seal with it.
            sealer?.forgetCurrentKeys()
            logger.error("group commit of \(batch.count) writes failed", metadata: ["code": "\(failure.code)", "error": "\(Self.describe(error))"])
            faults.record(failure)
            for pending in batch {
                pending.continuation.resume(returning: .failure(failure))
            }
        }
    }

    private static func describe(_ error: any Error) -> String { StorageFault.describe(error) }

    /// Thrown inside an apply's transaction to roll it back: its origin did not say the entries are durable in time.
    private struct HeldBack: Error {}

    private static func entries(_ outcomes: [WriteOutcome]) -> [ReplicationEntry] {
        outcomes.compactMap { outcome in
            guard case .committed(let entry) = outcome else { return nil }
            return entry
        }
    }

    /// A plan whose entry is sealed when its keyspace is (a subject's first write makes its data key).
    private static func sealing(_ plan: WritePlan, request: WriteRequest, sealer: ValueSealer?, db: Database) throws -> WritePlan {
        guard let sealer, case .append(let entry) = plan else { return plan }
        var table = DataKeyRows(db: db)
        let subject = try sealer.subject(of: request.key, in: request.keyspace, given: request.subject)
        return .append(try sealer.sealing(entry, subject: subject, in: &table))
    }

    /// Counts records written since the last prune, and reports live ones a prune forgot early.
    private func noteIdempotencyRecords(_ counts: (remembered: Int, evicted: Int), pruned: Bool) {
        idempotencyRecordsSincePrune = pruned ? counts.remembered : idempotencyRecordsSincePrune + counts.remembered
        if counts.evicted > 0 { observer?.idempotencyKeysEvicted(counts.evicted) }
    }

    private func report(_ recorded: [KeyspaceName: KeyStateRows.Applied]) {
        for (keyspace, applied) in recorded where applied.conflictsRecorded > 0 || applied.conflictsDropped > 0 {
            observer?.conflictsRecorded(keyspace: keyspace, recorded: applied.conflictsRecorded, dropped: applied.conflictsDropped)
        }
    }

    /// Applies a batch of another origin's log covering sequences `from...through`, in one transaction.
    ///
    /// `entries` are the batch's entries this region replicates, in order; the range may cover more (entries
    /// of keyspaces kept elsewhere). The origin's applied point is read and moved inside the transaction, so
    /// batches are applied exactly once and without a gap however callers interleave: entries at or below
    /// the applied point are skipped, and a range starting beyond it is refused with nothing applied.
    /// The local HLC moves past every applied entry, so writes made here afterwards order after them.
    /// - Returns: The origin's applied sequence afterwards.
    /// - Parameter durable: false commits without an fsync (`synchronous=NORMAL` for this transaction): visible at
    ///   once, durable with the next commit that syncs (``sync()``, or any other), lost whole if the machine crashes first.
    /// - Parameter originDurable: Called after the statements, before the COMMIT (it may block the writer, bounded):
    ///   false rolls the transaction back, and the result is nil.
    func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                         diverted: [UInt64: UInt64] = [:], durable: Bool = true, originDurable: (@Sendable () -> Bool)? = nil) async throws(MeridianError) -> UInt64? {
        precondition(origin != region, "a region never receives its own log")
        precondition(from >= 1 && from <= through && entries.allSatisfy { $0.origin == origin && (from...through).contains($0.sequence) })
        let clock = self.clock
        let physicalMs = physicalClockMs()
        let region = self.region
        let rules = self.rules
        let limits = self.limits
        let pruneDue = idempotencyRecordsSincePrune >= IdempotencyRows.pruneEvery(limits)
        let sealer = self.sealer
        var remembered = (0, 0)
        let outcome: Result<(UInt64, [KeyspaceName: KeyStateRows.Applied]), MeridianError>
        do {
            (outcome, remembered) = try await writing(durable: durable) { db -> (Result<(UInt64, [KeyspaceName: KeyStateRows.Applied]), MeridianError>, (Int, Int)) in
                // Cached statements: one prepared per batch costs more than the batch's own reads (GRDB's authorizer
                // runs on every prepare).
                let applied = UInt64(try Int64.fetchOne(db.cachedStatement(sql: "SELECT sequence FROM applied WHERE origin = ?"), arguments: [origin.rawValue]) ?? 0)
                guard from <= applied + 1 else {
                    return (.failure(MeridianError(
                        .replicationProtocol, "\(origin)'s log skipped from \(applied) to \(from); the stream must resume from \(applied).",
                        context: ["origin": origin.rawValue, "expected": String(applied + 1), "received": String(from)])), (0, 0))
                }
                guard through > applied else {
                    // Held entries another stream already applied under the same numbers: they may be writes their
                    // origin lost and numbered again, so the caller hears of them only once they are durable.
                    if let originDurable, !originDurable() { throw HeldBack() }
                    // Nothing new: a durable apply still writes, so its commit syncs, for the point it returns may be
                    // another stream's visible apply not synced yet (SQLite commits a transaction that wrote nothing
                    // without an fsync).
                    if durable { try Self.markSynced(db) }
                    return (.success((applied, [:])), (0, 0))
                }
                var recordedKeys = 0
                var appliedAny = false
                let fresh = entries.filter { $0.sequence > applied && diverted[$0.sequence] == nil }
                let log = try LogAppender(db)
                var states = KeyStateBatch()
                try states.read(db, fresh.map { KeyStateBatch.StateKey(keyspace: $0.keyspace, key: $0.key) })
                for entry in entries where entry.sequence > applied {
                    if let successor = diverted[entry.sequence] {
                        try RegionStore.insertDiverted(db, entry, successorEpoch: successor, nowMs: physicalMs)
                        continue
                    }
                    try log.append(entry)
                    try states.apply(db, entry, rule: rules[entry.keyspace] ?? .lww, sealer: sealer)
                    if try IdempotencyRows.remember(db, entry, nowMs: physicalMs, limits: limits) { recordedKeys += 1 }
                    // A remote clock beyond the maximum offset does not drag ours along (the clock fence stops
                    // such a region writing); the entry still applies, by its own timestamp, so regions converge.
                    clock.receive(entry.hlc)
                    appliedAny = true
                }
                let recorded = try states.write(db, nowMs: physicalMs, limits: limits)
                try db.cachedStatement(sql: """
                    INSERT INTO applied (origin, sequence) VALUES (?, ?)
                    ON CONFLICT (origin) DO UPDATE SET sequence = excluded.sequence
                    """).execute(arguments: [origin.rawValue, Int64(through)])
                if appliedAny { try Self.raiseHighWater(db, clock.last, region: region) }
                let evicted = try pruneDue ? IdempotencyRows.prune(db, nowMs: physicalMs, limits: limits) : 0
                if let originDurable, !originDurable() { throw HeldBack() }
                return (.success((through, recorded)), (recordedKeys, evicted))
            }
        } catch let error as MeridianError {
            throw error
        } catch is HeldBack {
            return nil
        } catch {
            throw StorageFault.error(error, directory: directory, what: "Entries of \(origin)'s log could not be applied; nothing of the batch was applied")
        }
        noteIdempotencyRecords(remembered, pruned: pruneDue && (try? outcome.get()) != nil)
        let (applied, recorded) = try outcome.get()
        report(recorded)
        return applied
    }

    /// Runs `body` in a write transaction; unless `durable`, committed without an fsync. The connection is put back
    /// to `synchronous=FULL` afterwards, whatever happened, so every other commit stays durable: through SQLite's C
    /// API, which a cancelled task cannot stop (GRDB refuses statements once the caller is cancelled). A connection
    /// that cannot be put back stops the process rather than acknowledge a commit that is not durable.
    private func writing<T: Sendable>(durable: Bool, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        guard !durable else { return try await pool.write(body) }
        return try await pool.writeWithoutTransaction { db in
            // Back to FULL however the body ends, even when a cancellation interrupts this very statement
            // after it took effect (GRDB then throws from it).
            defer { Self.synchronousFull(db) }
            let set = sqlite3_exec(db.sqliteConnection, "PRAGMA synchronous = NORMAL", nil, nil, nil)
            guard set == SQLITE_OK else { throw DatabaseError(resultCode: ResultCode(rawValue: set), message: db.lastErrorMessage) }
            var result: T?
            try db.inTransaction(.immediate) {
                result = try body(db)
                return .commit
            }
            return result!
        }
    }

    /// Puts the connection back to `synchronous=FULL` and checks it took.
    private static func synchronousFull(_ db: Database) {
        var level: Int32 = -1
        let set = sqlite3_exec(db.sqliteConnection, "PRAGMA synchronous = FULL", nil, nil, nil)
        var statement: OpaquePointer?
        if sqlite3_prepare_v2(db.sqliteConnection, "PRAGMA synchronous", -1, &statement, nil) == SQLITE_OK, sqlite3_step(statement) == SQLITE_ROW {
            level = sqlite3_column_int(statement, 0)
        }
        sqlite3_finalize(statement)
        guard set == SQLITE_OK, level == 2 else {
            fatalError("The store's writer connection could not be put back to synchronous=FULL (\(set), level \(level)); stopping rather than acknowledge commits that are not durable.")
        }
    }

    /// Commits a small write with an fsync, which makes every commit before it durable (the write-ahead log is
    /// synced whole). - Returns: the other origins' applied points as of that commit.
    func sync() async throws(MeridianError) -> [RegionName: UInt64] {
        let region = self.region
        do {
            return try await pool.write { db -> [RegionName: UInt64] in
                try Self.markSynced(db)
                var applied: [RegionName: UInt64] = [:]
                for row in try Row.fetchAll(db.cachedStatement(sql: "SELECT origin, sequence FROM applied WHERE origin != ?"), arguments: [region.rawValue]) {
                    applied[try RegionName(row[0] as String)] = UInt64(row[1] as Int64)
                }
                return applied
            }
        } catch {
            throw StorageFault.error(error, directory: directory, what: "Applied entries could not be made durable")
        }
    }

    /// A small write in the caller's transaction, so its commit appends to the write-ahead log and syncs it, which
    /// makes every commit before it durable.
    private static func markSynced(_ db: Database) throws {
        try db.cachedStatement(sql: """
            INSERT INTO meta (name, value) VALUES ('applies_synced', '1')
            ON CONFLICT (name) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)
            """).execute()
    }

    /// Merges key states another region sent (anti-entropy) into this region's, in one transaction: each key
    /// ends with what both regions have seen. Values that lose under the keyspace's rule are logged as for
    /// replicated writes. Nothing enters the replication log: every version came from some origin's log.
    /// - Returns: How many keys changed here.
    func merge(keyspace: KeyspaceName, states: [(key: Key, state: KeyState)]) async throws(MeridianError) -> Int {
        let rule = rules[keyspace] ?? .lww
        let limits = self.limits
        let physicalMs = physicalClockMs()
        let clock = self.clock
        let region = self.region
        let sealer = self.sealer
        let outcome: (Int, KeyStateRows.Applied)
        do {
            outcome = try await pool.write { db -> (Int, KeyStateRows.Applied) in
                var changed = 0
                var batch = KeyStateBatch()
                try batch.read(db, states.map { KeyStateBatch.StateKey(keyspace: keyspace, key: $0.key) })
                for item in states {
                    let local = try batch.state(db, keyspace, item.key)
                    let merged = try local.map { local in
                        try sealer.map { try $0.merged(local, with: item.state, rule: rule, keyspace: keyspace, key: item.key, in: DataKeyRows(db: db)) }
                            ?? local.merged(with: item.state, rule: rule)
                    } ?? item.state
                    guard merged != local else { continue }
                    for version in item.state.versions { clock.receive(version.version.hlc) }
                    batch.set(keyspace, item.key, merged, rule: rule, change: KeyChange.changes(old: local, new: merged, rule: rule))
                    changed += 1
                }
                let recorded = try batch.write(db, nowMs: physicalMs, limits: limits)[keyspace] ?? .init()
                if changed > 0 { try Self.raiseHighWater(db, clock.last, region: region) }
                return (changed, recorded)
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw StorageFault.error(error, directory: directory, what: "Repaired keys of \(keyspace) could not be stored; nothing was changed")
        }
        report([keyspace: outcome.1])
        return outcome.0
    }

    /// Moves another origin's applied point forward (never back) after anti-entropy brought in every write of
    /// its log up to `sequence`.
    func raiseApplied(origin: RegionName, to sequence: UInt64) async throws(MeridianError) -> UInt64 {
        precondition(origin != region)
        do {
            return try await pool.write { db -> UInt64 in
                try db.execute(sql: """
                    INSERT INTO applied (origin, sequence) VALUES (?, ?)
                    ON CONFLICT (origin) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)
                    """, arguments: [origin.rawValue, Int64(sequence)])
                return UInt64(try Int64.fetchOne(db, sql: "SELECT sequence FROM applied WHERE origin = ?", arguments: [origin.rawValue]) ?? 0)
            }
        } catch {
            throw MeridianError(.storageFailure, "The applied point of \(origin) could not be raised (\(Self.describe(error))).")
        }
    }

    /// Records the clock's reading as the floor for restarts, never lowering it (commits and applies interleave).
    private static func raiseHighWater(_ db: Database, _ reading: HLCTimestamp, region: RegionName) throws {
        let current = try String.fetchOne(db.cachedStatement(sql: "SELECT value FROM meta WHERE name = 'hlc_high_water'"))
            .flatMap { parseHighWater($0, region: region) }
        if let current, current >= reading { return }
        try db.cachedStatement(sql: "INSERT INTO meta (name, value) VALUES ('hlc_high_water', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .execute(arguments: ["\(reading.physicalMs).\(reading.logical)"])
    }

    static func parseHighWater(_ text: String, region: RegionName) -> HLCTimestamp? {
        let parts = text.split(separator: ".")
        guard parts.count == 2, let physicalMs = UInt64(parts[0]), let logical = UInt32(parts[1]) else { return nil }
        return HLCTimestamp(physicalMs: physicalMs, logical: logical, region: region)
    }
}

/// The region's hybrid logical clock, moved only inside write transactions. SQLite runs one write transaction
/// at a time, so the clock moves in commit order: a timestamp a local write is issued is past every entry
/// applied before it, which are all it can supersede, however long the write waited for its turn. Each
/// reading takes the wall clock afresh, so a wait never makes a remote timestamp look further ahead than it
/// is. A rolled-back transaction leaves the clock advanced, which costs nothing (timestamps only need to grow).
final class TransactionClock: Sendable {
    private let state: Mutex<HybridLogicalClock>
    private let physicalClockMs: @Sendable () -> UInt64

    init(_ clock: HybridLogicalClock, physicalClockMs: @escaping @Sendable () -> UInt64) {
        state = Mutex(clock)
        self.physicalClockMs = physicalClockMs
    }

    /// Runs `body` with the clock and a fresh wall-clock reading, for planning one write.
    func plan<Planned>(_ body: (inout HybridLogicalClock, UInt64) -> Planned) -> Planned {
        let physicalMs = physicalClockMs()
        return state.withLock { clock in body(&clock, physicalMs) }
    }

    /// Moves the clock past a timestamp another region issued, unless it leads this region's wall clock by
    /// more than the maximum offset. This region's own wall clock is not folded in: only a write does that.
    /// A region that may not write (its clock fenced or not yet verified) applies entries all the same, and
    /// its clock, persisted as the floor for restarts, must not carry its wrong wall clock past a restart
    /// that corrects it.
    func receive(_ remote: HLCTimestamp) {
        let physicalMs = physicalClockMs()
        state.withLock { clock in
            guard remote.physicalMs <= physicalMs || remote.physicalMs - physicalMs <= clock.maxOffsetMs else { return }
            clock.advance(past: remote)
        }
    }

    /// The latest timestamp issued or received.
    var last: HLCTimestamp { state.withLock { $0.last } }
}

/// The highest committed sequence of this region's log, shared between the committer and readers.
final class SequenceHighWater: Sendable {
    let value: Atomic<UInt64>
    init(_ initial: UInt64) { value = Atomic(initial) }

    /// Moves the value up to `sequence`, never down (concurrent raises keep the highest).
    func raise(to sequence: UInt64) {
        _ = value.max(sequence, ordering: .acquiringAndReleasing)
    }
}

extension GroupCommitter {
    /// Raises the next sequence past `logEnd` and records it as the log's floor, with the restore mark removed, in
    /// one transaction. Only between commits (a restored region takes no writes until this returns).
    func continueLog(after logEnd: UInt64) async throws(MeridianError) {
        // Submits are refused while restoring, so nothing commits while the log's end moves.
        guard queue.isEmpty, !committing else {
            throw MeridianError(.overloaded, "Writes are committing; the restore ends once they are done. Retry.")
        }
        let region = self.region
        do {
            try await pool.write { db in
                let last = try Int64.fetchOne(db, sql: "SELECT MAX(sequence) FROM log WHERE origin = ?", arguments: [region.rawValue]) ?? 0
                if logEnd > UInt64(last) {
                    try db.execute(sql: "INSERT INTO meta (name, value) VALUES ('log_floor', ?) ON CONFLICT (name) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                                   arguments: [String(logEnd)])
                }
                try db.execute(sql: "DELETE FROM meta WHERE name = 'restore_pending'")
            }
        } catch {
            throw MeridianError(.storageFailure, "The restore could not be ended (\(error)); the node tries again.")
        }
        if logEnd >= nextSequence {
            nextSequence = logEnd + 1
            lastCommittedSequence.value.store(logEnd, ordering: .releasing)
        }
        restoring = false
    }
}

/// Appends entries to the replication log within one transaction, its statement prepared once for all of them.
struct LogAppender {
    private let db: Database
    private let insert: DirectStatement

    init(_ db: Database) throws {
        self.db = db
        insert = try DirectStatement(db, sql: """
            INSERT INTO log (origin, sequence, hlc_physical_ms, hlc_logical, epoch, keyspace, key, operation, content_type, value, dependencies, context,
                             idempotency_key, idempotency_fingerprint)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
    }

    func append(_ entry: ReplicationEntry) throws {
        try insert.execute { row in
            row.bind(entry.origin.rawValue)
            row.bind(entry.sequence)
            row.bind(entry.hlc.physicalMs)
            row.bind(Int64(entry.hlc.logical))
            row.bind(entry.epoch)
            row.bind(entry.keyspace.rawValue)
            row.bind(entry.key.rawValue)
            row.bind(Int64(entry.operation.rawValue))
            row.bind(entry.contentType)
            row.bind(entry.value)
            row.bind(RegionStore.dependenciesColumn(entry.dependencies))
            row.bind(RegionStore.dependenciesColumn(entry.context))
            let idempotency = IdempotencyRows.columns(entry.idempotency)
            row.bind(idempotency.key)
            row.bind(idempotency.fingerprint)
        }
        // Single-leader writes (epoch above 0): how far each term's leader's writes of the keyspace are held here.
        if entry.epoch > 0 {
            try db.cachedStatement(sql: """
                INSERT INTO keyspace_terms (keyspace, origin, epoch, last) VALUES (?, ?, ?, ?)
                ON CONFLICT (keyspace, origin, epoch) DO UPDATE SET last = MAX(last, excluded.last)
                """).execute(arguments: [entry.keyspace.rawValue, entry.origin.rawValue, Int64(entry.epoch), Int64(entry.sequence)])
        }
    }
}
