import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// How a key's state is kept in SQLite, and the one apply step every write goes through, local or
/// replicated, inside the caller's transaction.
///
/// `kv` holds the version reads show (the rule's winner) with the key's causal context; when concurrent
/// writes are unresolved the other versions sit in `frontier` and `kv.concurrent` counts them. A key with
/// no concurrency costs one row read and one row write, as before conflict handling existed.
enum KeyStateRows {
    /// The media type of a `crdt` keyspace's values (the CRDT codec's bytes).
    static let crdtContentType = CRDTCodec.contentType

    /// What one apply recorded, for metrics.
    struct Applied {
        var conflictsRecorded = 0
        var conflictsDropped = 0

        mutating func add(_ other: Applied) {
            conflictsRecorded += other.conflictsRecorded
            conflictsDropped += other.conflictsDropped
        }
    }

    static func load(_ db: Database, _ keyspace: KeyspaceName, _ key: Key) throws -> KeyState? {
        let statement = try db.cachedStatement(sql: """
            SELECT value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies, context, concurrent
            FROM kv WHERE keyspace = ? AND key = ?
            """)
        guard let row = try Row.fetchOne(statement, arguments: [keyspace.rawValue, key.rawValue]) else { return nil }
        // Rows written before conflict handling carry no context: their write saw only itself.
        return try state(db, keyspace, key, row)
    }

    /// Streams every key state of a keyspace in key order (a row at a time; concurrent versions are read per key).
    static func forEach(_ db: Database, _ keyspace: KeyspaceName, after: Key? = nil, including: (Key) -> Bool = { _ in true },
                        _ body: (Key, KeyState) throws -> Bool) throws {
        let rows = try Row.fetchCursor(db, sql: """
            SELECT key, value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies, context, concurrent
            FROM kv WHERE keyspace = ? AND key > ? ORDER BY key
            """, arguments: [keyspace.rawValue, after?.rawValue ?? ""])
        while let row = try rows.next() {
            let key = try Key(row["key"] as String)
            guard including(key) else { continue }
            guard try body(key, try state(db, keyspace, key, row)) else { return }
        }
    }

    private static func state(_ db: Database, _ keyspace: KeyspaceName, _ key: Key, _ row: Row) throws -> KeyState {
        var versions = [try version(row)]
        if (row["concurrent"] as Int) > 0 {
            let others = try Row.fetchAll(db.cachedStatement(sql: """
                SELECT value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies
                FROM frontier WHERE keyspace = ? AND key = ?
                """), arguments: [keyspace.rawValue, key.rawValue])
            versions += try others.map(version)
        }
        let context = try (row["context"] as Data?).map { VersionVector(try decodeVector($0)) } ?? VersionVector()
        return KeyState(context: context, versions: versions)
    }

    static func version(_ row: Row) throws -> KeyVersion {
        KeyVersion(version: try RegionStore.version(row), tombstone: row["tombstone"], contentType: row["content_type"],
                   value: Array(row["value"] as Data? ?? Data()), dependencies: try RegionStore.dependencies(row))
    }

    /// Applies one entry of any origin to its key under `rule`, recording losers in the conflicts log.
    /// - Parameter state: The key's state before (the caller has read it with `load`).
    /// - Parameter sealer: Given, a sealed keyspace's entry and state are sealed, and so is the change.
    static func apply(_ db: Database, _ entry: ReplicationEntry, rule: ConflictRule, state: KeyState?,
                      nowMs: UInt64, limits: Limits, sealer: ValueSealer?) throws -> Applied {
        let change = try sealer.map { try $0.change(applying: entry, rule: rule, to: state, in: DataKeyRows(db: db)) } ?? KeyChange.applying(entry, rule: rule, to: state)
        guard let change else { return Applied() }
        try store(db, entry.keyspace, entry.key, old: state, new: change.state, rule: rule)
        return try record(db, entry.keyspace, entry.key, change, nowMs: nowMs, limits: limits)
    }

    /// Writes a key's new state: the winner in `kv`, the rest in `frontier`.
    static func store(_ db: Database, _ keyspace: KeyspaceName, _ key: Key, old: KeyState?, new: KeyState, rule: ConflictRule) throws {
        let winner = new.winner(rule)
        try db.cachedStatement(sql: """
            INSERT INTO kv (keyspace, key, value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies, context, concurrent)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (keyspace, key) DO UPDATE SET
                value = excluded.value, content_type = excluded.content_type, hlc_physical_ms = excluded.hlc_physical_ms,
                hlc_logical = excluded.hlc_logical, origin = excluded.origin, sequence = excluded.sequence, tombstone = excluded.tombstone,
                dependencies = excluded.dependencies, context = excluded.context, concurrent = excluded.concurrent
            """).execute(arguments: [
                keyspace.rawValue, key.rawValue, Data(winner.value), winner.contentType,
                Int64(winner.version.hlc.physicalMs), Int64(winner.version.hlc.logical), winner.version.origin.rawValue,
                Int64(winner.version.sequence), winner.tombstone, RegionStore.dependenciesColumn(winner.dependencies),
                encodeVector(new.context), new.versions.count - 1,
            ])
        guard (old?.versions.count ?? 1) > 1 || new.versions.count > 1 else { return }
        try db.cachedStatement(sql: "DELETE FROM frontier WHERE keyspace = ? AND key = ?").execute(arguments: [keyspace.rawValue, key.rawValue])
        for version in new.versions where version.dot != winner.dot {
            try db.cachedStatement(sql: """
                INSERT INTO frontier (keyspace, key, value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """).execute(arguments: [
                    keyspace.rawValue, key.rawValue, Data(version.value), version.contentType,
                    Int64(version.version.hlc.physicalMs), Int64(version.version.hlc.logical), version.version.origin.rawValue,
                    Int64(version.version.sequence), version.tombstone, RegionStore.dependenciesColumn(version.dependencies),
                ])
        }
    }

    /// Brings the conflicts log in line with a key's change: every version that loses is recorded (once);
    /// a version that wins again after losing here has its record removed, so the log names exactly the
    /// writes this region discards.
    static func record(_ db: Database, _ keyspace: KeyspaceName, _ key: Key, _ change: KeyChange, nowMs: UInt64, limits: Limits) throws -> Applied {
        var applied = Applied()
        if let restored = change.restored {
            try db.cachedStatement(sql: "DELETE FROM conflicts WHERE keyspace = ? AND key = ? AND loser_origin = ? AND loser_sequence = ?")
                .execute(arguments: [keyspace.rawValue, key.rawValue, restored.region.rawValue, Int64(restored.counter)])
            if db.changesCount > 0 { try count(db, keyspace, by: -db.changesCount) }
        }
        for loss in change.losses {
            applied.add(try record(db, keyspace, key, loser: loss.loser, winner: loss.winner, rule: loss.rule, nowMs: nowMs, limits: limits))
        }
        return applied
    }

    private static func record(_ db: Database, _ keyspace: KeyspaceName, _ key: Key, loser: KeyVersion, winner: KeyVersion,
                               rule: String, nowMs: UInt64, limits: Limits) throws -> Applied {
        let loserArguments: StatementArguments = [keyspace.rawValue, key.rawValue, loser.version.origin.rawValue, Int64(loser.version.sequence)]
        let winnerArguments: StatementArguments = [
            winner.version.origin.rawValue, Int64(winner.version.sequence), Int64(winner.version.hlc.physicalMs), Int64(winner.version.hlc.logical),
        ]
        let held = try Bool.fetchOne(db.cachedStatement(sql: """
            SELECT 1 FROM conflicts WHERE keyspace = ? AND key = ? AND loser_origin = ? AND loser_sequence = ?
            """), arguments: loserArguments) ?? false
        if held {
            // Lost again, perhaps to another winner: the record names the latest.
            try db.cachedStatement(sql: """
                UPDATE conflicts SET winner_origin = ?, winner_sequence = ?, winner_hlc_physical_ms = ?, winner_hlc_logical = ?
                WHERE keyspace = ? AND key = ? AND loser_origin = ? AND loser_sequence = ?
                """).execute(arguments: winnerArguments + loserArguments)
            return Applied()
        }
        try db.cachedStatement(sql: """
            INSERT INTO conflicts (keyspace, key, loser_origin, loser_sequence, winner_origin, winner_sequence, winner_hlc_physical_ms,
                                   winner_hlc_logical, rule, recorded_ms, loser_hlc_physical_ms, loser_hlc_logical, loser_tombstone,
                                   loser_content_type, loser_value)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """).execute(arguments: loserArguments + winnerArguments + [
                rule, Int64(nowMs), Int64(loser.version.hlc.physicalMs), Int64(loser.version.hlc.logical),
                loser.tombstone, loser.contentType, Data(loser.value),
            ])
        // Bounded retention: beyond the limit the oldest records of the keyspace go. The count is kept beside the
        // log, so a record costs a few index steps, not a scan of the keyspace's records.
        let records = try count(db, keyspace, by: 1)
        var dropped = 0
        if records > limits.conflictsLogMax {
            try db.cachedStatement(sql: """
                DELETE FROM conflicts WHERE id IN (SELECT id FROM conflicts WHERE keyspace = ? ORDER BY id LIMIT ?)
                """).execute(arguments: [keyspace.rawValue, records - limits.conflictsLogMax])
            dropped = db.changesCount
            try count(db, keyspace, by: -dropped)
        }
        return Applied(conflictsRecorded: 1, conflictsDropped: dropped)
    }

    /// Moves a keyspace's record count and returns it.
    @discardableResult
    private static func count(_ db: Database, _ keyspace: KeyspaceName, by delta: Int) throws -> Int {
        try db.cachedStatement(sql: """
            INSERT INTO conflict_counts (keyspace, records) VALUES (?, ?)
            ON CONFLICT (keyspace) DO UPDATE SET records = MAX(records + ?, 0)
            """).execute(arguments: [keyspace.rawValue, max(delta, 0), delta])
        return try Int.fetchOne(db.cachedStatement(sql: "SELECT records FROM conflict_counts WHERE keyspace = ?"), arguments: [keyspace.rawValue]) ?? 0
    }

    static func encodeVector(_ vector: VersionVector) -> Data? {
        RegionStore.dependenciesColumn(vector.byRegion)
    }

    static func decodeVector(_ data: Data) throws -> [RegionName: UInt64] {
        do { return try DependencyCodec.decode(Array(data)) } catch {
            throw MeridianError(.storageFailure, "A stored causal context is corrupt: \(error.message)")
        }
    }
}
