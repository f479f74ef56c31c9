import Foundation
import GRDB
import MeridianCore

/// The `idempotency` table: per keyspace and idempotency key, the first outcome of the write that carried it,
/// recorded in the transaction that applied the write (taken here, or replicated from its origin).
enum IdempotencyRows {
    static func registerMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v8-idempotency") { db in
            try db.execute(sql: """
                ALTER TABLE log ADD COLUMN idempotency_key TEXT;
                ALTER TABLE log ADD COLUMN idempotency_fingerprint BLOB;
                CREATE TABLE idempotency (
                    keyspace TEXT NOT NULL, idempotency_key TEXT NOT NULL, fingerprint BLOB NOT NULL, key TEXT NOT NULL,
                    origin TEXT NOT NULL, sequence INTEGER NOT NULL, hlc_physical_ms INTEGER NOT NULL, hlc_logical INTEGER NOT NULL,
                    operation INTEGER NOT NULL, epoch INTEGER NOT NULL, recorded_ms INTEGER NOT NULL,
                    PRIMARY KEY (keyspace, idempotency_key)) WITHOUT ROWID;
                CREATE INDEX idempotency_age ON idempotency (recorded_ms);
                CREATE INDEX idempotency_version ON idempotency (origin, sequence);
                """)
        }
    }

    /// The log columns of an entry's mark.
    static func columns(_ mark: IdempotencyMark?) -> (key: String?, fingerprint: Data?) {
        (mark?.key.rawValue, mark.map { Data($0.fingerprint) })
    }

    /// The mark of a log row, if it has one.
    static func mark(_ row: Row) throws -> IdempotencyMark? {
        guard let key = row["idempotency_key"] as String?, let fingerprint = row["idempotency_fingerprint"] as Data? else { return nil }
        guard fingerprint.count == IdempotencyMark.fingerprintBytes else {
            throw MeridianError(.storageFailure, "The replication log holds an idempotency fingerprint of \(fingerprint.count) bytes.")
        }
        return IdempotencyMark(key: try IdempotencyKey(key), fingerprint: Array(fingerprint))
    }

    /// The record of `key` in `keyspace` if it is still within `idempotency_ttl_ms` at `nowMs`.
    static func live(_ db: Database, _ keyspace: KeyspaceName, _ key: IdempotencyKey, nowMs: UInt64, limits: Limits) throws -> IdempotencyRecord? {
        let statement = try db.cachedStatement(sql: "SELECT * FROM idempotency WHERE keyspace = ? AND idempotency_key = ?")
        guard let row = try Row.fetchOne(statement, arguments: [keyspace.rawValue, key.rawValue]) else { return nil }
        let fingerprint = row["fingerprint"] as Data
        guard let operation = MeridianCore.Operation(rawValue: UInt8(row["operation"] as Int)),
              fingerprint.count == IdempotencyMark.fingerprintBytes else {
            throw MeridianError(.storageFailure, "The idempotency table holds a malformed record for key '\(key)'.")
        }
        let record = IdempotencyRecord(
            keyspace: keyspace, mark: IdempotencyMark(key: key, fingerprint: Array(fingerprint)), key: try Key(row["key"] as String),
            version: try RegionStore.version(row), operation: operation, epoch: UInt64(row["epoch"] as Int64),
            recordedMs: UInt64(row["recorded_ms"] as Int64))
        return record.isLive(nowMs: nowMs, ttlMs: UInt64(limits.idempotencyTtlMs)) ? record : nil
    }

    /// Records an applied entry's mark, unless its key has a live record (the first outcome answers retries).
    /// - Returns: whether a record was written.
    static func remember(_ db: Database, _ entry: ReplicationEntry, nowMs: UInt64, limits: Limits) throws -> Bool {
        guard let mark = entry.idempotency else { return false }
        let expiredBefore = Int64(nowMs) - Int64(limits.idempotencyTtlMs)
        try db.cachedStatement(sql: """
            INSERT INTO idempotency (keyspace, idempotency_key, fingerprint, key, origin, sequence, hlc_physical_ms, hlc_logical, operation, epoch, recorded_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (keyspace, idempotency_key) DO UPDATE SET
                fingerprint = excluded.fingerprint, key = excluded.key, origin = excluded.origin, sequence = excluded.sequence,
                hlc_physical_ms = excluded.hlc_physical_ms, hlc_logical = excluded.hlc_logical, operation = excluded.operation,
                epoch = excluded.epoch, recorded_ms = excluded.recorded_ms
            WHERE idempotency.recorded_ms <= ?
            """).execute(arguments: [
                entry.keyspace.rawValue, mark.key.rawValue, Data(mark.fingerprint), entry.key.rawValue, entry.origin.rawValue, Int64(entry.sequence),
                Int64(entry.hlc.physicalMs), Int64(entry.hlc.logical), Int(entry.operation.rawValue), Int64(entry.epoch), Int64(nowMs), expiredBefore,
            ])
        return db.changesCount > 0
    }

    /// Forgets expired records, then the oldest past `idempotency_keys_max`. - Returns: live records forgotten early.
    static func prune(_ db: Database, nowMs: UInt64, limits: Limits) throws -> Int {
        try db.execute(sql: "DELETE FROM idempotency WHERE recorded_ms <= ?", arguments: [Int64(nowMs) - Int64(limits.idempotencyTtlMs)])
        let held = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM idempotency") ?? 0
        guard held > limits.idempotencyKeysMax else { return 0 }
        try db.execute(sql: """
            DELETE FROM idempotency WHERE (keyspace, idempotency_key) IN
                (SELECT keyspace, idempotency_key FROM idempotency ORDER BY recorded_ms LIMIT ?)
            """, arguments: [held - limits.idempotencyKeysMax])
        return held - limits.idempotencyKeysMax
    }

    /// How many records may be written between two prunes: the table holds at most a sixteenth more than its bound.
    static func pruneEvery(_ limits: Limits) -> Int { max(1, min(256, limits.idempotencyKeysMax / 16)) }

    /// Forgets the records of writes kept aside (a deposed leader's): a retry of them must apply again.
    static func forgetDiverted(_ db: Database, keyspace: KeyspaceName, origin: RegionName, after: UInt64, epoch: UInt64?, successorEpoch: UInt64) throws {
        try db.execute(sql: """
            DELETE FROM idempotency WHERE keyspace = ? AND origin = ? AND sequence > ? AND epoch < ? AND (? IS NULL OR epoch = ?)
            """, arguments: [keyspace.rawValue, origin.rawValue, Int64(after), Int64(successorEpoch), epoch.map(Int64.init), epoch.map(Int64.init)])
    }
}
