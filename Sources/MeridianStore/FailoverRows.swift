import Foundation
import GRDB
import MeridianCore
import MeridianStorage

extension RegionStore {
    static func registerFailoverMigration(_ migrator: inout DatabaseMigrator) {
        // Elections of single-leader keyspaces (record and the followed term's start), writes of deposed
        // leaders kept aside, and the failovers this region won.
        migrator.registerMigration("v5-failover") { db in
            try db.execute(sql: """
                CREATE TABLE elections (
                    keyspace TEXT PRIMARY KEY NOT NULL, epoch INTEGER NOT NULL, leader TEXT,
                    voted_epoch INTEGER NOT NULL, voted_for TEXT, start TEXT) WITHOUT ROWID;
                CREATE TABLE divergence (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, keyspace TEXT NOT NULL, key TEXT NOT NULL,
                    origin TEXT NOT NULL, sequence INTEGER NOT NULL, epoch INTEGER NOT NULL, successor_epoch INTEGER NOT NULL,
                    hlc_physical_ms INTEGER NOT NULL, hlc_logical INTEGER NOT NULL, operation INTEGER NOT NULL,
                    content_type TEXT NOT NULL, value BLOB NOT NULL, recorded_ms INTEGER NOT NULL, reapplied_ms INTEGER);
                CREATE UNIQUE INDEX divergence_entry ON divergence (origin, sequence);
                CREATE TABLE failovers (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, keyspace TEXT NOT NULL, epoch INTEGER NOT NULL, leader TEXT NOT NULL,
                    previous_leader TEXT, last_heard_ms INTEGER, suspected_ms INTEGER NOT NULL, elected_ms INTEGER NOT NULL,
                    first_write_ms INTEGER, reason TEXT NOT NULL);
                CREATE UNIQUE INDEX failovers_epoch ON failovers (keyspace, epoch);
                """)
        }
        // Per single-leader keyspace, the last write of each term's leader held here: a new term's start names
        // these, so an old term's entries are judged by their own term, however late they arrive.
        migrator.registerMigration("v6-keyspace-terms") { db in
            try db.execute(sql: """
                CREATE TABLE keyspace_terms (
                    keyspace TEXT NOT NULL, origin TEXT NOT NULL, epoch INTEGER NOT NULL, last INTEGER NOT NULL,
                    PRIMARY KEY (keyspace, origin, epoch)) WITHOUT ROWID;
                INSERT INTO keyspace_terms (keyspace, origin, epoch, last)
                    SELECT keyspace, origin, epoch, MAX(sequence) FROM log WHERE epoch > 0 GROUP BY keyspace, origin, epoch;
                """)
        }
        // Peers' cursors were written every second and never read: a stream resumes from the peer's welcome.
        migrator.registerMigration("v7-no-cursors") { db in
            try db.execute(sql: "DROP TABLE cursors")
        }
    }

    /// The terms of a keyspace whose writes this region holds: per term, its leader and the last of its
    /// writes held here; the newest `limit` terms.
    public func terms(keyspace: KeyspaceName, limit: Int) async throws(MeridianError) -> [TermEnd] {
        try await reading { db in
            try Row.fetchAll(db, sql: "SELECT origin, epoch, last FROM keyspace_terms WHERE keyspace = ? ORDER BY epoch DESC LIMIT ?",
                             arguments: [keyspace.rawValue, limit]).map { row in
                TermEnd(epoch: UInt64(row["epoch"] as Int64), leader: try RegionName(row["origin"] as String), last: UInt64(row["last"] as Int64))
            }
        }
    }

    /// Records that this region holds these terms' writes up to their `last` (never lowering): a catch-up
    /// merged every state the leader served after it said so.
    public func raiseTerms(keyspace: KeyspaceName, _ terms: [TermEnd]) async throws(MeridianError) {
        do {
            try await pool.write { db in
                for term in terms {
                    try db.execute(sql: """
                        INSERT INTO keyspace_terms (keyspace, origin, epoch, last) VALUES (?, ?, ?, ?)
                        ON CONFLICT (keyspace, origin, epoch) DO UPDATE SET last = MAX(last, excluded.last)
                        """, arguments: [keyspace.rawValue, term.leader.rawValue, Int64(term.epoch), Int64(term.last)])
                }
            }
        } catch {
            throw MeridianError(.storageFailure, "The terms of \(keyspace) held here could not be recorded (\(error)); the catch-up is tried again.")
        }
    }

    // MARK: - Elections

    /// Every keyspace's stored election state.
    public func elections() async throws(MeridianError) -> [KeyspaceName: StoredElection] {
        try await reading { db in
            var result: [KeyspaceName: StoredElection] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM elections") {
                let record = ElectionRecord(
                    epoch: UInt64(row["epoch"] as Int64), leader: try (row["leader"] as String?).map { try RegionName($0) },
                    votedEpoch: UInt64(row["voted_epoch"] as Int64), votedFor: try (row["voted_for"] as String?).map { try RegionName($0) })
                let start = try (row["start"] as String?).map(EpochStart.init(storedText:))
                result[try KeyspaceName(row["keyspace"] as String)] = StoredElection(record: record, start: start)
            }
            return result
        }
    }

    /// Makes a keyspace's election state durable (before anything that depends on it is sent).
    public func saveElection(_ keyspace: KeyspaceName, _ election: StoredElection) async throws(MeridianError) {
        do {
            try await pool.write { db in
                try db.execute(sql: """
                    INSERT INTO elections (keyspace, epoch, leader, voted_epoch, voted_for, start) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (keyspace) DO UPDATE SET epoch = excluded.epoch, leader = excluded.leader,
                        voted_epoch = excluded.voted_epoch, voted_for = excluded.voted_for, start = excluded.start
                    """, arguments: [keyspace.rawValue, Int64(election.record.epoch), election.record.leader?.rawValue,
                                     Int64(election.record.votedEpoch), election.record.votedFor?.rawValue,
                                     election.start?.storedText])
            }
        } catch {
            throw MeridianError(.storageFailure, "The election state of \(keyspace) could not be stored (\(error)); the region does not vote or lead until it can.")
        }
    }

    /// Where this region's copy of a single-leader keyspace reaches: the newest epoch among the keyspace's
    /// entries it holds, and that epoch's leader (whose applied point gives the position's sequence).
    public func newestEpoch(keyspace: KeyspaceName) async throws(MeridianError) -> (epoch: UInt64, origin: RegionName)? {
        try await reading { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT epoch, origin FROM log WHERE keyspace = ? ORDER BY epoch DESC LIMIT 1",
                                             arguments: [keyspace.rawValue]) else { return nil }
            return (UInt64(row["epoch"] as Int64), try RegionName(row["origin"] as String))
        }
    }

    // MARK: - Divergence

    /// Keeps aside the writes of `keyspace` this region holds from `origin`'s log beyond `after` in epochs
    /// before `successorEpoch` (a deposed leader's writes its successor never held), and returns their keys:
    /// the caller brings those keys back to the current leader's state.
    /// - Parameter epoch: Only writes of this term (nil: of every term before `successorEpoch`).
    public func divertHeld(keyspace: KeyspaceName, origin: RegionName, after: UInt64, epoch: UInt64?, successorEpoch: UInt64,
                           nowMs: UInt64) async throws(MeridianError) -> Set<Key> {
        do {
            return try await pool.write { db in
                let rows = try Row.fetchAll(db, sql: """
                    SELECT * FROM log WHERE origin = ? AND sequence > ? AND keyspace = ? AND epoch < ? AND (? IS NULL OR epoch = ?) ORDER BY sequence
                    """, arguments: [origin.rawValue, Int64(after), keyspace.rawValue, Int64(successorEpoch), epoch.map(Int64.init), epoch.map(Int64.init)])
                // The term's writes held here now end before the first one kept aside.
                try db.execute(sql: """
                    UPDATE keyspace_terms SET last = MIN(last, ?) WHERE keyspace = ? AND origin = ? AND epoch < ? AND (? IS NULL OR epoch = ?) AND last > ?
                    """, arguments: [Int64(after), keyspace.rawValue, origin.rawValue, Int64(successorEpoch), epoch.map(Int64.init), epoch.map(Int64.init), Int64(after)])
                try IdempotencyRows.forgetDiverted(db, keyspace: keyspace, origin: origin, after: after, epoch: epoch, successorEpoch: successorEpoch)
                var keys: Set<Key> = []
                for row in rows {
                    try Self.insertDiverted(db, keyspace: keyspace, key: row["key"], origin: origin, sequence: row["sequence"], epoch: row["epoch"],
                                            successorEpoch: successorEpoch, physicalMs: row["hlc_physical_ms"], logical: row["hlc_logical"],
                                            operation: row["operation"], contentType: row["content_type"], value: row["value"] as Data? ?? Data(), nowMs: nowMs)
                    keys.insert(try Key(row["key"] as String))
                }
                return keys
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "Writes of a deposed leader could not be kept aside (\(error)).")
        }
    }

    static func insertDiverted(_ db: Database, _ entry: ReplicationEntry, successorEpoch: UInt64, nowMs: UInt64) throws {
        try insertDiverted(db, keyspace: entry.keyspace, key: entry.key.rawValue, origin: entry.origin, sequence: Int64(entry.sequence),
                           epoch: Int64(entry.epoch), successorEpoch: successorEpoch, physicalMs: Int64(entry.hlc.physicalMs),
                           logical: Int64(entry.hlc.logical), operation: Int(entry.operation.rawValue), contentType: entry.contentType,
                           value: Data(entry.value), nowMs: nowMs)
    }

    private static func insertDiverted(_ db: Database, keyspace: KeyspaceName, key: String, origin: RegionName, sequence: Int64, epoch: Int64,
                                       successorEpoch: UInt64, physicalMs: Int64, logical: Int64, operation: Int, contentType: String,
                                       value: Data, nowMs: UInt64) throws {
        try db.cachedStatement(sql: """
            INSERT INTO divergence (keyspace, key, origin, sequence, epoch, successor_epoch, hlc_physical_ms, hlc_logical, operation,
                                    content_type, value, recorded_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (origin, sequence) DO NOTHING
            """).execute(arguments: [keyspace.rawValue, key, origin.rawValue, sequence, epoch, Int64(successorEpoch), physicalMs, logical,
                                     operation, contentType, value, Int64(nowMs)])
    }

    /// Puts keys back to the current leader's state (nil: the leader has no such key), replacing what this
    /// region held: used only for keys whose local state includes a diverted write.
    public func loggedThrough(keyspace: KeyspaceName, origin: RegionName, epoch: UInt64) async throws(MeridianError) -> UInt64 {
        try await reading { db in
            UInt64(try Int64.fetchOne(db, sql: "SELECT MAX(sequence) FROM log WHERE keyspace = ? AND origin = ? AND epoch = ?",
                                      arguments: [keyspace.rawValue, origin.rawValue, Int64(epoch)]) ?? 0)
        }
    }

    public func replaceStates(keyspace: KeyspaceName, _ states: [(key: Key, state: KeyState?)]) async throws(MeridianError) {
        let rule = conflictRule(keyspace)
        do {
            try await pool.write { db in
                var leaves = MerkleRows.Deltas()
                for item in states {
                    let old = try KeyStateRows.load(db, keyspace, item.key)
                    let stored = try KeyStateRows.loadItem(db, keyspace, item.key)
                    if let new = item.state {
                        let placed = try KeyStateRows.store(db, keyspace, item.key, old: old, new: new, rule: rule)
                        leaves.moved(keyspace, slot: placed.slot, from: stored?.held, to: placed.held)
                    } else if let stored {
                        try db.execute(sql: "DELETE FROM kv WHERE keyspace = ? AND key = ?", arguments: [keyspace.rawValue, item.key.rawValue])
                        try db.execute(sql: "DELETE FROM frontier WHERE keyspace = ? AND key = ?", arguments: [keyspace.rawValue, item.key.rawValue])
                        leaves.moved(keyspace, slot: stored.slot, from: stored.held, to: nil)
                    }
                }
                try MerkleRows.write(db, leaves)
            }
        } catch {
            throw MeridianError(.storageFailure, "Keys of \(keyspace) could not be brought back to the leader's state (\(error)).")
        }
    }

    /// The writes kept aside, oldest first, after `after` (an id), at most `limit`.
    public func divergence(keyspace: KeyspaceName?, after: Int64, limit: Int) async throws(MeridianError) -> [DivergedWrite] {
        let sealer = self.sealer
        return try await reading { db in
            let rows = try Row.fetchAll(db, sql: """
                SELECT * FROM divergence WHERE (? IS NULL OR keyspace = ?) AND id > ? ORDER BY id LIMIT ?
                """, arguments: [keyspace?.rawValue, keyspace?.rawValue, after, limit])
            // A write whose value was erased is left out: what it held no longer exists anywhere.
            return try rows.compactMap { row in try ValueSealer.unlessErased { try Self.divergedWrite(row, db: db, sealer: sealer) } }
        }
    }

    /// One write kept aside, by id.
    public func divergedWrite(id: Int64) async throws(MeridianError) -> DivergedWrite? {
        let sealer = self.sealer
        return try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM divergence WHERE id = ?", arguments: [id]).map { try Self.divergedWrite($0, db: db, sealer: sealer) }
        }
    }

    /// Marks a write kept aside as re-applied (once).
    /// - Returns: false when it was already re-applied.
    public func markReapplied(id: Int64, nowMs: UInt64) async throws(MeridianError) -> Bool {
        do {
            return try await pool.write { db in
                try db.execute(sql: "UPDATE divergence SET reapplied_ms = ? WHERE id = ? AND reapplied_ms IS NULL", arguments: [Int64(nowMs), id])
                return db.changesCount == 1
            }
        } catch {
            throw MeridianError(.storageFailure, "The divergence log could not be updated (\(error)).")
        }
    }

    /// Releases a claim of `markReapplied` whose write was refused.
    public func unmarkReapplied(id: Int64) async throws(MeridianError) {
        do {
            try await pool.write { db in try db.execute(sql: "UPDATE divergence SET reapplied_ms = NULL WHERE id = ?", arguments: [id]) }
        } catch {
            throw MeridianError(.storageFailure, "The divergence log could not be updated (\(error)).")
        }
    }

    /// A kept-aside write, its value opened (a sealed keyspace's).
    private static func divergedWrite(_ row: Row, db: Database, sealer: ValueSealer?) throws -> DivergedWrite {
        let origin = try RegionName(row["origin"] as String)
        guard let operation = MeridianCore.Operation(rawValue: UInt8(row["operation"] as Int)) else {
            throw MeridianError(.storageFailure, "The divergence log holds an unknown operation.")
        }
        let keyspace = try KeyspaceName(row["keyspace"] as String), key = try Key(row["key"] as String)
        let hlc = HLCTimestamp(physicalMs: UInt64(row["hlc_physical_ms"] as Int64), logical: UInt32(row["hlc_logical"] as Int64), region: origin)
        let sequence = UInt64(row["sequence"] as Int64)
        var value = Array(row["value"] as Data? ?? Data())
        if let sealer { value = try sealer.open(value, keyspace: keyspace, key: key, version: Version(hlc: hlc, sequence: sequence), in: DataKeyRows(db: db)) }
        return DivergedWrite(
            id: row["id"], keyspace: keyspace, key: key, origin: origin,
            sequence: sequence, epoch: UInt64(row["epoch"] as Int64), successorEpoch: UInt64(row["successor_epoch"] as Int64),
            hlc: hlc,
            operation: operation, contentType: row["content_type"], value: value,
            recordedMs: UInt64(row["recorded_ms"] as Int64), reappliedMs: (row["reapplied_ms"] as Int64?).map(UInt64.init))
    }

    // MARK: - Failovers

    /// Records a failover this region won (once per keyspace and epoch).
    public func recordFailover(keyspace: KeyspaceName, epoch: UInt64, leader: RegionName, previousLeader: RegionName?,
                               lastHeardMs: UInt64?, suspectedMs: UInt64, electedMs: UInt64, reason: String) async throws(MeridianError) {
        do {
            try await pool.write { db in
                try db.execute(sql: """
                    INSERT INTO failovers (keyspace, epoch, leader, previous_leader, last_heard_ms, suspected_ms, elected_ms, reason)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (keyspace, epoch) DO NOTHING
                    """, arguments: [keyspace.rawValue, Int64(epoch), leader.rawValue, previousLeader?.rawValue,
                                     lastHeardMs.map(Int64.init), Int64(suspectedMs), Int64(electedMs), reason])
            }
        } catch {
            throw MeridianError(.storageFailure, "The failover could not be recorded (\(error)).")
        }
    }

    /// Notes the first write committed in a failover's epoch (the end of its RTO).
    public func recordFirstWrite(keyspace: KeyspaceName, epoch: UInt64, atMs: UInt64) async throws(MeridianError) {
        do {
            try await pool.write { db in
                try db.execute(sql: "UPDATE failovers SET first_write_ms = ? WHERE keyspace = ? AND epoch = ? AND first_write_ms IS NULL",
                               arguments: [Int64(atMs), keyspace.rawValue, Int64(epoch)])
            }
        } catch {
            throw MeridianError(.storageFailure, "The failover could not be updated (\(error)).")
        }
    }

    /// The failovers this region won, oldest first.
    public func failovers(limit: Int) async throws(MeridianError) -> [FailoverEvent] {
        try await reading { db in
            try Row.fetchAll(db, sql: "SELECT * FROM failovers ORDER BY id DESC LIMIT ?", arguments: [limit]).reversed().map { row in
                FailoverEvent(
                    id: row["id"], keyspace: try KeyspaceName(row["keyspace"] as String), epoch: UInt64(row["epoch"] as Int64),
                    leader: try RegionName(row["leader"] as String), previousLeader: try (row["previous_leader"] as String?).map { try RegionName($0) },
                    lastHeardMs: (row["last_heard_ms"] as Int64?).map(UInt64.init), suspectedMs: UInt64(row["suspected_ms"] as Int64),
                    electedMs: UInt64(row["elected_ms"] as Int64), firstWriteMs: (row["first_write_ms"] as Int64?).map(UInt64.init),
                    reason: row["reason"])
            }
        }
    }

    /// How many writes were kept aside per keyspace and fencing epoch.
    public func divergenceCounts() async throws(MeridianError) -> [String: Int] {
        try await reading { db in
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT keyspace, successor_epoch, COUNT(*) AS n FROM divergence GROUP BY keyspace, successor_epoch") {
                counts["\(row["keyspace"] as String)/\(row["successor_epoch"] as Int64)"] = row["n"]
            }
            return counts
        }
    }
}
