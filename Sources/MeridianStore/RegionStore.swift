import Foundation
import GRDB
import Logging
import MeridianCore
import MeridianStorage
import Synchronization

/// A region's durable state in SQLite (WAL mode, fsync on every commit): values with version metadata,
/// and the per-origin replication log.
///
/// Writes go through a ``GroupCommitter``: concurrent writes share one transaction and one fsync, and a
/// write is answered only after that transaction is durable. Reads run concurrently on WAL readers.
public final class RegionStore: RegionStorage {
    /// The region this store belongs to; a data directory is bound to one region for its whole life.
    public let region: RegionName
    let pool: DatabasePool
    private let rules: [KeyspaceName: ConflictRule]
    let limits: Limits
    private let physicalClockMs: @Sendable () -> UInt64
    let committer: GroupCommitter
    /// The latest failed commit of this region's writes (a full or read-only disk), until one succeeds.
    public let writeFaults = WriteFaults()
    private let lastCommittedSequence: SequenceHighWater
    /// The applied high-water of every other origin's log, durable and visible (a step applied without an fsync is
    /// visible at once and durable after the next sync). Updated by `applyReplicated`, `syncApplied` and
    /// `raiseApplied`, which callers run one at a time per origin (one receiving stream per origin).
    private let appliedOthers: Mutex<(durable: [RegionName: UInt64], visible: [RegionName: UInt64])>
    /// This region's log is trimmed up to here.
    let trimmedThrough: SequenceHighWater
    /// Seals and opens the values of sealed keyspaces (nil: none).
    let sealer: ValueSealer?
    /// The SQLite file, for messages.
    let databasePath: String
    /// Point reads of unsealed keyspaces, on each reading thread's own connection.
    private let pointReader: PointReader

    /// Opens (creating if needed) the store at `path`.
    /// - Parameters:
    ///   - path: The SQLite database file.
    ///   - region: The region this node serves; must match the region the file was created for.
    ///   - limits: Batch and queue limits for group commit.
    ///   - physicalClockMs: The wall clock in ms, read once per commit batch to issue HLC timestamps.
    ///   - observer: Receives commit metrics.
    /// - Throws: `MeridianError` with code `storage_failure` when the file cannot be opened or belongs to another region.
    ///   - conflictRules: How each keyspace resolves concurrent writes (keyspaces not named: `lww`).
    public init(path: String, region: RegionName, limits: Limits, conflictRules: [KeyspaceName: ConflictRule] = [:],
                physicalClockMs: @escaping @Sendable () -> UInt64,
                observer: (any StoreObserver)? = nil, sealer: ValueSealer? = nil, logger: Logger = Logger(label: "meridian.store"),
                shipping: CommitShipping? = nil) throws(MeridianError) {
        self.sealer = sealer
        self.databasePath = path
        pointReader = PointReader(path: path)
        var configuration = Configuration()
        configuration.maximumReaderCount = 8
        configuration.label = "meridian.\(region)"
        // On every connection: a deleted or overwritten row's bytes are zeroed in the file, not left in free pages
        // (a restricted keyspace's key names and values do not linger after they go), and temporary tables and
        // sorts stay in memory, never in a temp file beside the database.
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA secure_delete = ON")
            try db.execute(sql: "PRAGMA temp_store = MEMORY")
        }
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            // WAL with synchronous=FULL fsyncs the log on every commit, so a commit that returned is durable.
            // It must be set after the pool opens: GRDB's WAL set-up lowers the writer to NORMAL, which in WAL
            // mode does not sync on commit. Checked, because acknowledging an unsynced write breaks the contract.
            let synchronous = try pool.writeWithoutTransaction { db -> Int in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                return try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1
            }
            guard synchronous == 2 else {
                throw MeridianError(.storageFailure, "SQLite refused synchronous=FULL (it reports \(synchronous)); writes could not be made durable.")
            }
            try Self.migrator.migrate(pool)
            // Applies committed without an fsync before a crash of this process may still sit in the page cache:
            // synced now, before the applied points read below are reported durable.
            try Self.syncWriteAheadLog(path)
            let state = try pool.write { db -> (UInt64, HLCTimestamp?, [RegionName: UInt64], UInt64, Bool) in
                if let owner = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'region'") {
                    guard owner == region.rawValue else {
                        throw MeridianError(.storageFailure, "The data directory belongs to region '\(owner)', not '\(region)'. Use that region's directory or an empty one.",
                                            context: ["data_region": owner, "region": region.rawValue])
                    }
                } else {
                    try db.execute(sql: "INSERT INTO meta (name, value) VALUES ('region', ?)", arguments: [region.rawValue])
                }
                if let sealer { try Self.checkRootKeys(db, sealer: sealer, path: path) }
                let lastSequence = try Int64.fetchOne(db, sql: "SELECT MAX(sequence) FROM log WHERE origin = ?", arguments: [region.rawValue]) ?? 0
                var floor: HLCTimestamp?
                if let text = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'hlc_high_water'") {
                    floor = GroupCommitter.parseHighWater(text, region: region)
                }
                var others: [RegionName: UInt64] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT origin, sequence FROM applied WHERE origin != ?", arguments: [region.rawValue]) {
                    others[try RegionName(row["origin"] as String)] = UInt64(row["sequence"] as Int64)
                }
                let trimmed = UInt64(try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'log_floor'").flatMap { UInt64($0) } ?? 0)
                // The log may have been trimmed empty: the next sequence continues after the floor.
                let restoring = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'restore_pending'") != nil
                return (max(UInt64(lastSequence), trimmed) + 1, floor, others, trimmed, restoring)
            }
            appliedOthers = Mutex((state.2, state.2))
            trimmedThrough = SequenceHighWater(state.3)
            let clock = HybridLogicalClock(region: region, maxOffsetMs: limits.clockOffsetMsMax, floor: state.1)
            let committed = SequenceHighWater(state.0 - 1)
            lastCommittedSequence = committed
            committer = GroupCommitter(
                pool: pool, region: region, limits: limits, rules: conflictRules, nextSequence: state.0, clock: clock,
                physicalClockMs: physicalClockMs, observer: observer, sealer: sealer, logger: logger, lastCommittedSequence: committed,
                directory: Self.directory(of: path), faults: writeFaults, restoring: state.4, shipping: shipping)
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "Cannot open the store at \(path): \(error)", context: ["path": path])
        }
        self.region = region
        self.rules = conflictRules
        self.limits = limits
        self.physicalClockMs = physicalClockMs
    }

    private static func directory(of path: String) -> String {
        let directory = (path as NSString).deletingLastPathComponent
        return directory.isEmpty ? "." : directory
    }

    /// The data keys here are wrapped under the region's root keys, one per epoch: another key for an epoch would
    /// open none of them. Each epoch's check value is kept on first sight and compared on every open.
    static func checkRootKeys(_ db: Database, sealer: ValueSealer, path: String) throws {
        for (epoch, check) in sealer.rootChecks.sorted(by: { $0.key < $1.key }) {
            let name = epoch == 1 ? "root_key_check" : "root_key_check_\(epoch)"
            if let held = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = ?", arguments: [name]) {
                guard held == check else {
                    throw MeridianError(.invalidConfig, "\(sealer.rootSource): the root key of epoch \(epoch) is not the one the data keys in \(path) were wrapped with; start the node with that region's own root key file.",
                                        context: ["file": sealer.rootSource, "path": path])
                }
            } else {
                try db.execute(sql: "INSERT INTO meta (name, value) VALUES (?, ?)", arguments: [name, check])
            }
        }
    }

    /// How a keyspace resolves concurrent writes.
    func conflictRule(_ keyspace: KeyspaceName) -> ConflictRule { rules[keyspace] ?? .lww }

    /// Applies a write as its origin, durably, sharing a transaction with concurrent writes.
    /// - Returns: The committed entry, or why the precondition failed.
    /// - Throws: `MeridianError` `overloaded` when the commit queue is full, `storage_failure` when the disk refuses.
    public func write(_ request: WriteRequest) async throws(MeridianError) -> WriteOutcome {
        try await committer.submit(request)
    }

    public func idempotencyRecord(keyspace: KeyspaceName, key: IdempotencyKey) async throws(MeridianError) -> IdempotencyRecord? {
        let (limits, nowMs) = (self.limits, physicalClockMs())
        return try await reading { db in try IdempotencyRows.live(db, keyspace, key, nowMs: nowMs, limits: limits) }
    }

    /// How far this region has applied each origin's log: the highest committed sequence per origin.
    /// Only this region's own log exists until cross-region replication applies other origins' entries.
    public func appliedHighWater() -> [RegionName: UInt64] {
        highWater(appliedOthers.withLock { $0.durable })
    }

    public func visibleHighWater() -> [RegionName: UInt64] {
        highWater(appliedOthers.withLock { $0.visible })
    }

    private func highWater(_ others: [RegionName: UInt64]) -> [RegionName: UInt64] {
        let own = lastCommittedSequence.value.load(ordering: .acquiring)
        var result = others
        if own > 0 { result[region] = own }
        return result
    }

    /// Makes every apply so far durable: a small write committed with an fsync of the write-ahead log, which holds
    /// every commit before it. The applied points read inside its transaction are durable once it returns.
    public func syncApplied() async throws(MeridianError) -> [RegionName: UInt64] {
        let synced = try await committer.sync()
        appliedOthers.withLock { applied in
            for (origin, sequence) in synced { applied.durable[origin] = max(applied.durable[origin, default: 0], sequence) }
        }
        return appliedHighWater()
    }

    /// Applies a batch of another origin's log covering sequences `from...through` (replication), exactly
    /// once and in order. `entries` are those of the range this region replicates; the rest of the range
    /// holds keyspaces kept elsewhere and only moves the applied point.
    ///
    /// The applied point is read and moved inside the batch's transaction, so concurrent or repeated batches
    /// (a resumed stream racing an old one) can neither skip nor repeat an entry.
    /// - Returns: How far the origin's log is applied afterwards: durable when `durable` (the transaction writes and
    ///   syncs even when nothing in the range is new), visible only otherwise, until a ``syncApplied()``.
    /// - Throws: `replication_protocol` on a gap, a foreign or out-of-range entry, or this region's own log
    ///   (nothing applied); `storage_failure` when the disk refuses.
    /// - Parameter diverted: Sequences of entries a fence refused (a deposed leader's writes its successor never
    ///   held), kept in the divergence log under the given successor epoch instead of applied.
    public func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                                diverted: [UInt64: UInt64], durable: Bool) async throws(MeridianError) -> UInt64 {
        // Only a hold refuses an apply without an error, and this one holds for nothing.
        guard let after = try await applyReplicatedOnceDurable(origin: origin, from: from, through: through, entries: entries, diverted: diverted,
                                                               durable: durable, originDurable: nil) else {
            throw MeridianError(.storageFailure, "The apply of \(origin)'s \(from)...\(through) was rolled back without a hold; nothing of it was applied.")
        }
        return after
    }

    /// The transaction runs its statements at once and waits, holding the writer, for `originDurable` before its
    /// COMMIT: the origin's fsync and this region's statements overlap, and the entries become visible (and, for a
    /// durable step, durable) only after the origin's. A false answer rolls it back.
    public func applyReplicatedOnceDurable(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry], diverted: [UInt64: UInt64],
                                           durable: Bool, originDurable: @escaping @Sendable () -> Bool) async throws(MeridianError) -> UInt64? {
        try await applyReplicatedOnceDurable(origin: origin, from: from, through: through, entries: entries, diverted: diverted, durable: durable,
                                             originDurable: Optional(originDurable))
    }

    private func applyReplicatedOnceDurable(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry], diverted: [UInt64: UInt64],
                                            durable: Bool, originDurable: (@Sendable () -> Bool)?) async throws(MeridianError) -> UInt64? {
        try ReplicatedRange.check(origin: origin, from: from, through: through, entries: entries, region: region)
        guard let after = try await committer.applyReplicated(origin: origin, from: from, through: through, entries: entries, diverted: diverted,
                                                              durable: durable, originDurable: originDurable) else { return nil }
        appliedOthers.withLock { applied in
            applied.visible[origin] = max(applied.visible[origin, default: 0], after)
            if durable { applied.durable[origin] = max(applied.durable[origin, default: 0], after) }
        }
        return after
    }

    /// The highest sequence of this region's log that has been trimmed away (0: nothing trimmed).
    public func logFloor() -> UInt64 { trimmedThrough.value.load(ordering: .acquiring) }

    /// Deletes entries of `origin`'s log up to `sequence` from the local log (retention). For this region's
    /// own log the floor is recorded: a peer that has not applied past it can only be repaired by a resync.
    public func trimLog(origin: RegionName, through sequence: UInt64) async throws(MeridianError) {
        let own = origin == region
        guard !own || sequence > logFloor() else { return }
        do {
            try await pool.write { db in
                try db.execute(sql: "DELETE FROM log WHERE origin = ? AND sequence <= ?", arguments: [origin.rawValue, Int64(sequence)])
                if own {
                    try db.execute(sql: "INSERT INTO meta (name, value) VALUES ('log_floor', ?) ON CONFLICT (name) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                                   arguments: [String(sequence)])
                }
            }
        } catch {
            throw MeridianError(.storageFailure, "Cannot trim the replication log: \(error)")
        }
        if own {
            trimmedThrough.raise(to: sequence)
            committer.recentLog.trimmed(through: sequence)
        }
    }

    /// Reads a key's current state, tombstones included.
    public func get(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> StoredValue? {
        let sealer = self.sealer
        if sealer?.isSealed(keyspace) != true {
            switch try pointReader.get(keyspace: keyspace, key: key) {
            case .found(let value): return value
            case .absent: return nil
            case .unavailable: break
            }
        }
        return try await reading { db in
            let statement = try db.cachedStatement(sql: """
                SELECT value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies, concurrent
                FROM kv WHERE keyspace = ? AND key = ?
                """)
            guard let row = try Row.fetchOne(statement, arguments: [keyspace.rawValue, key.rawValue]) else { return nil }
            let version = try Self.version(row)
            var value = Array(row["value"] as Data? ?? Data())
            if let sealer { value = try sealer.open(value, keyspace: keyspace, key: key, version: version, in: DataKeyRows(db: db)) }
            return StoredValue(
                keyspace: keyspace, key: key, value: value,
                contentType: row["content_type"], version: version, tombstone: row["tombstone"],
                dependencies: try Self.dependencies(row), concurrent: row["concurrent"])
        }
    }

    /// A key's full state: every version not superseded (concurrent writes) and its causal context.
    public func state(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> KeyState? {
        let sealer = self.sealer
        return try await reading { db in
            guard let state = try KeyStateRows.load(db, keyspace, key) else { return nil }
            return try sealer.map { try $0.opened(state, keyspace: keyspace, key: key, in: DataKeyRows(db: db)) } ?? state
        }
    }

    /// The keyspace's Merkle tree in this region, and how many keys it covers.
    public func merkleTree(keyspace: KeyspaceName) async throws(MeridianError) -> (tree: MerkleTree, keys: Int) {
        do {
            return try await pool.read { db in try MerkleRows.tree(db, keyspace) }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The store could not be read: \(error)")
        }
    }

    /// Syncs the database's write-ahead log, its main file and their directory to disk.
    static func syncWriteAheadLog(_ path: String) throws(MeridianError) {
        let directory = (path as NSString).deletingLastPathComponent
        for file in [path + "-wal", path, directory.isEmpty ? "." : directory] {
            guard let handle = FileHandle(forReadingAtPath: file) else { continue }
            defer { try? handle.close() }
            do { try handle.synchronize() } catch {
                throw MeridianError(.storageFailure, "\(file) could not be synced to disk (\(error)); the store cannot tell what it holds durably.")
            }
        }
    }

    /// The keyspace's Merkle tree computed from every key's state, which the kept leaves must always equal: a check
    /// that reads the whole keyspace.
    public func scannedMerkleTree(keyspace: KeyspaceName) async throws(MeridianError) -> (tree: MerkleTree, keys: Int) {
        do {
            return try await pool.read { db in try MerkleRows.scannedTree(db, keyspace) }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The store could not be read: \(error)")
        }
    }

    /// The slot leaves of some buckets of the keyspace's tree (read from the rows kept per slot).
    public func merkleSlots(keyspace: KeyspaceName, buckets: [Int]) async throws(MeridianError) -> MerkleSlots {
        do {
            return try await pool.read { db in try MerkleRows.slots(db, keyspace, buckets: buckets) }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The store could not be read: \(error)")
        }
    }

    /// The keys of some ranges of Merkle slots with their stored item hashes, in slot and key order after `after`,
    /// within `bytesMax` encoded (read from the slot index and the rows, without decoding a state).
    public func items(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (items: [(key: Key, item: MerkleTree.Leaf)], next: Key?) {
        do {
            return try await pool.read { db in try KeyStateRows.items(db, keyspace, slots: slots, after: after, bytesMax: bytesMax) }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The store could not be read: \(error)")
        }
    }

    /// The stored states of those of `keys` this region holds (sealed values stay sealed).
    public func states(keyspace: KeyspaceName, keys: [Key]) async throws(MeridianError) -> [(key: Key, state: KeyState)] {
        try await reading { db in try keys.compactMap { key in try KeyStateRows.load(db, keyspace, key).map { (key, $0) } } }
    }

    /// Key states of some ranges of Merkle slots, in slot and key order after `after`, up to about `bytesMax`
    /// encoded bytes (at least one key).
    /// - Returns: The states, and the key to continue after when more remain.
    public func states(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (states: [(key: Key, state: KeyState)], next: Key?) {
        do {
            return try await pool.read { db in
                var page = KeyStatePage(bytesMax: bytesMax)
                try KeyStateRows.forEach(db, keyspace, slots: slots, after: after) { key, state in page.add(key, state) }
                return (page.states, page.next)
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The store could not be read: \(error)")
        }
    }

    /// Merges another region's key states into this region's (anti-entropy repair).
    /// - Returns: How many keys changed here.
    public func merge(keyspace: KeyspaceName, states: [(key: Key, state: KeyState)]) async throws(MeridianError) -> Int {
        guard !states.isEmpty else { return 0 }
        return try await committer.merge(keyspace: keyspace, states: states)
    }

    /// Records that this region holds every write of `origin`'s log up to `sequence` because anti-entropy
    /// merged the origin's whole state as of then (a replica behind the origin's log retention resumes
    /// streaming from there). Never moves back.
    /// - Returns: The applied point afterwards.
    @discardableResult
    public func raiseApplied(origin: RegionName, to sequence: UInt64) async throws(MeridianError) -> UInt64 {
        guard origin != region else { return appliedHighWater()[region] ?? 0 }
        let after = try await committer.raiseApplied(origin: origin, to: sequence)
        appliedOthers.withLock { applied in
            applied.visible[origin] = max(applied.visible[origin, default: 0], after)
            applied.durable[origin] = max(applied.durable[origin, default: 0], after)
        }
        return after
    }

    /// A page of a keyspace's conflicts log, oldest first.
    /// - Parameters:
    ///   - after: Only records after this id (paging).
    ///   - key: Only records of this key.
    ///   - limit: The most records returned.
    public func conflicts(keyspace: KeyspaceName, key: Key?, after: Int64, limit: Int) async throws(MeridianError) -> [ConflictRecord] {
        precondition(limit > 0)
        let sealer = self.sealer
        return try await reading { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT * FROM conflicts WHERE keyspace = ? AND id > ? \(key == nil ? "" : "AND key = ?") ORDER BY id LIMIT ?
                """, arguments: StatementArguments([keyspace.rawValue, after] + (key.map { [$0.rawValue] } ?? []) + [limit]))
            // A record whose value was erased is left out: what it held no longer exists anywhere.
            return try rows.compactMap { row in
                let loserOrigin = try RegionName(row["loser_origin"] as String)
                let winnerOrigin = try RegionName(row["winner_origin"] as String)
                let key = try Key(row["key"] as String)
                let record = ConflictRecord(
                    id: row["id"], keyspace: keyspace, key: key, rule: row["rule"],
                    recordedMs: UInt64(row["recorded_ms"] as Int64),
                    loser: KeyVersion(
                        version: Version(hlc: HLCTimestamp(physicalMs: UInt64(row["loser_hlc_physical_ms"] as Int64), logical: UInt32(row["loser_hlc_logical"] as Int64),
                                                           region: loserOrigin), sequence: UInt64(row["loser_sequence"] as Int64)),
                        tombstone: row["loser_tombstone"], contentType: row["loser_content_type"], value: Array(row["loser_value"] as Data? ?? Data())),
                    winner: Version(hlc: HLCTimestamp(physicalMs: UInt64(row["winner_hlc_physical_ms"] as Int64), logical: UInt32(row["winner_hlc_logical"] as Int64),
                                                      region: winnerOrigin), sequence: UInt64(row["winner_sequence"] as Int64)))
                guard let sealer else { return record }
                guard let loser = try ValueSealer.unlessErased({ try sealer.opened(record.loser, keyspace: keyspace, key: key, in: DataKeyRows(db: db)) }) else { return nil }
                return ConflictRecord(id: record.id, keyspace: keyspace, key: key, rule: record.rule, recordedMs: record.recordedMs, loser: loser, winner: record.winner)
            }
        }
    }

    /// How many records each keyspace's conflicts log holds.
    public func conflictCounts() async throws(MeridianError) -> [String: Int] {
        try await reading { db in
            var result: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT keyspace, COUNT(*) AS n FROM conflicts GROUP BY keyspace") {
                result[row["keyspace"]] = row["n"]
            }
            return result
        }
    }

    /// Lists live keys in byte order.
    /// - Parameters:
    ///   - prefix: Only keys starting with these bytes.
    ///   - after: Only keys sorting after this one (for paging).
    ///   - limit: The most keys returned.
    public func list(keyspace: KeyspaceName, prefix: String, after: String?, limit: Int) async throws(MeridianError) -> [ListedKey] {
        precondition(limit > 0)
        // Keys are valid UTF-8, which never holds the byte 0xFF, so prefix + 0xFF bounds every key with the prefix.
        let upper = Data(prefix.utf8) + Data([0xFF])
        // Compare as SQLite does, by bytes (Swift's String order treats canonically equivalent text as equal).
        let startsAfter = after.map { !Array($0.utf8).lexicographicallyPrecedes(Array(prefix.utf8)) } ?? false
        let lower = startsAfter ? after! : prefix
        let strictlyAfter = startsAfter
        return try await reading { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT key, length(value) AS value_bytes, content_type, hlc_physical_ms, hlc_logical, origin, sequence, dependencies
                FROM kv WHERE keyspace = ? AND key \(strictlyAfter ? ">" : ">=") ? AND key < CAST(? AS TEXT) AND tombstone = 0
                ORDER BY key LIMIT ?
                """, arguments: [keyspace.rawValue, lower, upper, limit])
            return try rows.map { row in
                ListedKey(key: try Key(row["key"] as String), version: try Self.version(row),
                          valueBytes: row["value_bytes"], contentType: row["content_type"], dependencies: try Self.dependencies(row))
            }
        }
    }

    /// Reads entries of one origin's replication log after a sequence, in order.
    public func logEntries(origin: RegionName, after sequence: UInt64, limit: Int) async throws(MeridianError) -> [ReplicationEntry] {
        if origin == region, let recent = committer.recentLog.entries(after: sequence, limit: limit) { return recent }
        return try await reading { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT * FROM log WHERE origin = ? AND sequence > ? ORDER BY sequence LIMIT ?
                """, arguments: [origin.rawValue, Int64(sequence), limit])
            return try rows.map { row in
                let origin = try RegionName(row["origin"] as String)
                guard let operation = MeridianCore.Operation(rawValue: UInt8(row["operation"] as Int)) else {
                    throw MeridianError(.storageFailure, "The replication log holds an unknown operation.")
                }
                return ReplicationEntry(
                    origin: origin, sequence: UInt64(row["sequence"] as Int64),
                    hlc: HLCTimestamp(physicalMs: UInt64(row["hlc_physical_ms"] as Int64), logical: UInt32(row["hlc_logical"] as Int64), region: origin),
                    epoch: UInt64(row["epoch"] as Int64), keyspace: try KeyspaceName(row["keyspace"] as String), key: try Key(row["key"] as String),
                    operation: operation, contentType: row["content_type"], value: Array(row["value"] as Data? ?? Data()),
                    dependencies: try Self.dependencies(row),
                    context: try (row["context"] as Data?).map { try KeyStateRows.decodeVector($0) } ?? [:],
                    idempotency: try IdempotencyRows.mark(row))
            }
        }
    }

    /// Counts live keys per keyspace (from the counts kept with the Merkle leaves: 256 rows a keyspace).
    public func keyCounts() async throws(MeridianError) -> [String: Int] {
        try await reading { db in try MerkleRows.liveCounts(db) }
    }

    /// `PRAGMA secure_delete` and `temp_store` of the writer and of a reader connection (1 and 2: deleted bytes are
    /// zeroed, temporary storage is in memory).
    public func eraseSettings() async throws(MeridianError) -> (writer: [Int], reader: [Int]) {
        do {
            let read: @Sendable (Database) throws -> [Int] = { db in
                [try Int.fetchOne(db, sql: "PRAGMA secure_delete") ?? -1, try Int.fetchOne(db, sql: "PRAGMA temp_store") ?? -1]
            }
            return (try await pool.write(read), try await pool.read(read))
        } catch {
            throw MeridianError(.storageFailure, "Cannot read the store's settings: \(error)")
        }
    }

    /// The writer connection's `PRAGMA synchronous` (2 is FULL: the WAL is synced on every commit).
    public func synchronousLevel() async throws(MeridianError) -> Int {
        do {
            return try await pool.write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
        } catch {
            throw MeridianError(.storageFailure, "Cannot read the store's sync level: \(error)")
        }
    }

    /// Closes the database; later calls fail.
    public func close() {
        pointReader.close()
        try? pool.close()
    }

    // Reads run synchronously on the calling thread: a point read from SQLite's page cache takes microseconds,
    // far less than the two thread hops of GRDB's async read, which measured at 3x the cost of the read itself.
    // The pool has more reader connections than the cooperative pool has threads, so this never waits long.
    func reading<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws(MeridianError) -> T {
        do {
            return try readOnCallingThread(body)
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The store could not be read: \(error)")
        }
    }

    /// Not async, so the call resolves to GRDB's blocking read. Every read here is one SELECT, which SQLite
    /// runs against one consistent WAL snapshot, so the BEGIN/COMMIT that `read` adds buys no isolation.
    private func readOnCallingThread<T>(_ body: (Database) throws -> T) throws -> T {
        try pool.unsafeRead(body)
    }

    static func version(_ row: Row) throws -> Version {
        let origin = try RegionName(row["origin"] as String)
        return Version(
            hlc: HLCTimestamp(physicalMs: UInt64(row["hlc_physical_ms"] as Int64), logical: UInt32(row["hlc_logical"] as Int64), region: origin),
            sequence: UInt64(row["sequence"] as Int64))
    }

    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
                CREATE TABLE kv (
                    keyspace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, content_type TEXT NOT NULL,
                    hlc_physical_ms INTEGER NOT NULL, hlc_logical INTEGER NOT NULL, origin TEXT NOT NULL,
                    sequence INTEGER NOT NULL, tombstone INTEGER NOT NULL,
                    PRIMARY KEY (keyspace, key)) WITHOUT ROWID;
                CREATE TABLE log (
                    origin TEXT NOT NULL, sequence INTEGER NOT NULL, hlc_physical_ms INTEGER NOT NULL,
                    hlc_logical INTEGER NOT NULL, epoch INTEGER NOT NULL, keyspace TEXT NOT NULL, key TEXT NOT NULL,
                    operation INTEGER NOT NULL, content_type TEXT NOT NULL, value BLOB NOT NULL,
                    PRIMARY KEY (origin, sequence)) WITHOUT ROWID;
                CREATE TABLE cursors (
                    peer TEXT NOT NULL, origin TEXT NOT NULL, sequence INTEGER NOT NULL,
                    PRIMARY KEY (peer, origin)) WITHOUT ROWID;
                """)
        }
        // How far each other origin's log is applied. Batches may cover entries of keyspaces kept elsewhere,
        // which never reach this region's log, so the log's highest entry no longer tells.
        migrator.registerMigration("v2-applied") { db in
            try db.execute(sql: """
                CREATE TABLE applied (origin TEXT PRIMARY KEY NOT NULL, sequence INTEGER NOT NULL) WITHOUT ROWID;
                INSERT INTO applied (origin, sequence)
                    SELECT origin, MAX(sequence) FROM log
                    WHERE origin != (SELECT value FROM meta WHERE name = 'region') GROUP BY origin;
                """)
        }
        // Session dependencies of each write, in the log (shipped again on catch-up) and on the key's current
        // value (a reader's session token takes them in). NULL: none.
        migrator.registerMigration("v3-dependencies") { db in
            try db.execute(sql: """
                ALTER TABLE log ADD COLUMN dependencies BLOB;
                ALTER TABLE kv ADD COLUMN dependencies BLOB;
                """)
        }
        // Conflict handling: each write's causal context (in the log, shipped again on catch-up; on the key, every
        // write to it seen here), the versions kept beside the winner while concurrent writes are unresolved,
        // and the conflicts log of values discarded by a keyspace's rule.
        migrator.registerMigration("v4-conflicts") { db in
            try db.execute(sql: """
                ALTER TABLE log ADD COLUMN context BLOB;
                ALTER TABLE kv ADD COLUMN context BLOB;
                ALTER TABLE kv ADD COLUMN concurrent INTEGER NOT NULL DEFAULT 0;
                CREATE TABLE frontier (
                    keyspace TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, content_type TEXT NOT NULL,
                    hlc_physical_ms INTEGER NOT NULL, hlc_logical INTEGER NOT NULL, origin TEXT NOT NULL,
                    sequence INTEGER NOT NULL, tombstone INTEGER NOT NULL, dependencies BLOB,
                    PRIMARY KEY (keyspace, key, origin, sequence)) WITHOUT ROWID;
                CREATE TABLE conflicts (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, keyspace TEXT NOT NULL, key TEXT NOT NULL, rule TEXT NOT NULL,
                    recorded_ms INTEGER NOT NULL, loser_origin TEXT NOT NULL, loser_sequence INTEGER NOT NULL,
                    loser_hlc_physical_ms INTEGER NOT NULL, loser_hlc_logical INTEGER NOT NULL, loser_tombstone INTEGER NOT NULL,
                    loser_content_type TEXT NOT NULL, loser_value BLOB NOT NULL, winner_origin TEXT NOT NULL,
                    winner_sequence INTEGER NOT NULL, winner_hlc_physical_ms INTEGER NOT NULL, winner_hlc_logical INTEGER NOT NULL);
                CREATE UNIQUE INDEX conflicts_loser ON conflicts (keyspace, key, loser_origin, loser_sequence);
                CREATE INDEX conflicts_keyspace ON conflicts (keyspace, id);
                CREATE TABLE conflict_counts (keyspace TEXT PRIMARY KEY NOT NULL, records INTEGER NOT NULL) WITHOUT ROWID;
                """)
        }
        registerFailoverMigration(&migrator)
        IdempotencyRows.registerMigration(&migrator)
        DataKeyRows.registerMigration(&migrator)
        AuditRows.registerMigration(&migrator)
        MerkleRows.registerMigration(&migrator)
        return migrator
    }()

    /// The store's form of dependencies: NULL for none.
    static func dependenciesColumn(_ dependencies: [RegionName: UInt64]) -> Data? {
        guard !dependencies.isEmpty else { return nil }
        var bytes: [UInt8] = []
        DependencyCodec.append(dependencies, to: &bytes)
        return Data(bytes)
    }

    static func dependencies(_ row: Row) throws -> [RegionName: UInt64] {
        guard let data = row["dependencies"] as Data? else { return [:] }
        do { return try DependencyCodec.decode(Array(data)) } catch {
            throw MeridianError(.storageFailure, "A stored write's dependencies are corrupt: \(error.message)")
        }
    }
}

extension RegionStore {
    /// The SQLite backend as a node opens it: each region's store is `<directory>/<region>.sqlite`, the directory
    /// created if needed.
    public static func factory(directory: String, logger: Logger = Logger(label: "meridian.store")) -> StoreFactory {
        { context throws(MeridianError) in
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw MeridianError(.storageFailure, "Cannot create the data directory \(directory): \(error.localizedDescription)",
                                    context: ["path": directory])
            }
            return try RegionStore(path: (directory as NSString).appendingPathComponent("\(context.region).sqlite"), region: context.region,
                                   limits: context.limits, conflictRules: context.conflictRules, physicalClockMs: context.physicalClockMs,
                                   observer: context.observer, sealer: context.sealer, logger: logger, shipping: context.shipping)
        }
    }
}
