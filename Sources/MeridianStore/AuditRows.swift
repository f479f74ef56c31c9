import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// The audit trail in SQLite: `audit` holds the region's records in order (fields as canonical JSON),
/// `audit_witness` the checkpoints of other regions' trails this region keeps, `audit_keys` their pinned public
/// keys; `meta` holds the anchor (the last record retention dropped).
enum AuditRows {
    static func registerMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v10-audit") { db in
            try db.execute(sql: """
                CREATE TABLE audit (
                    sequence INTEGER PRIMARY KEY NOT NULL, time_ms INTEGER NOT NULL, kind TEXT NOT NULL, fields TEXT NOT NULL,
                    previous BLOB NOT NULL, hash BLOB NOT NULL);
                CREATE TABLE audit_witness (
                    region TEXT NOT NULL, sequence INTEGER NOT NULL, hash BLOB NOT NULL, signature BLOB NOT NULL,
                    PRIMARY KEY (region, sequence)) WITHOUT ROWID;
                CREATE TABLE audit_keys (region TEXT PRIMARY KEY NOT NULL, public_key BLOB NOT NULL) WITHOUT ROWID;
                """)
        }
    }

    static func anchor(_ db: Database) throws -> AuditAnchor {
        guard let sequence = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'audit_anchor_sequence'").flatMap(UInt64.init),
              let hex = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'audit_anchor_hash'"), let hash = Hex.decode(hex) else {
            return AuditAnchor()
        }
        return AuditAnchor(sequence: sequence, hash: hash)
    }

    static func head(_ db: Database, region: RegionName) throws -> AuditChain {
        if let row = try Row.fetchOne(db, sql: "SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1") {
            return AuditChain(region: region, sequence: UInt64(row["sequence"] as Int64), hash: Array(row["hash"] as Data))
        }
        let anchor = try anchor(db)
        return AuditChain(region: region, sequence: anchor.sequence, hash: anchor.hash)
    }

    static func record(_ row: Row, region: RegionName) throws -> AuditRecord {
        guard let kind = AuditRecord.Kind(rawValue: row["kind"]),
              let fields = try JSONSerialization.jsonObject(with: Data((row["fields"] as String).utf8)) as? [String: String] else {
            throw MeridianError(.storageFailure, "Audit record \(row["sequence"] as Int64) cannot be read: its kind or fields are not what this build writes. The trail was changed by hand; `meridian audit verify` says where.")
        }
        return AuditRecord(sequence: UInt64(row["sequence"] as Int64), timeMs: UInt64(row["time_ms"] as Int64), region: region, kind: kind,
                           fields: fields, previous: Array(row["previous"] as Data), hash: Array(row["hash"] as Data))
    }

    /// The canonical JSON of a record's fields (sorted keys).
    static func json(_ fields: [String: String]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

}

extension RegionStore {
    public func appendAudit(_ drafts: [AuditDraft]) async throws(MeridianError) -> [AuditRecord] {
        guard !drafts.isEmpty else { return [] }
        let region = self.region, recordsMax = limits.auditRecordsMax
        do {
            return try await pool.write { db -> [AuditRecord] in
                var chain = try AuditRows.head(db, region: region)
                let records = chain.append(drafts)
                for record in records {
                    try db.cachedStatement(sql: "INSERT INTO audit (sequence, time_ms, kind, fields, previous, hash) VALUES (?, ?, ?, ?, ?, ?)")
                        .execute(arguments: [Int64(record.sequence), Int64(record.timeMs), record.kind.rawValue, AuditRows.json(record.fields),
                                             Data(record.previous), Data(record.hash)])
                }
                // Retention: the oldest records go; the last one dropped becomes the anchor the rest chain from.
                let floor = Int64(chain.sequence) - Int64(recordsMax)
                if floor > 0, let last = try Row.fetchOne(db, sql: "SELECT sequence, hash FROM audit WHERE sequence <= ? ORDER BY sequence DESC LIMIT 1", arguments: [floor]) {
                    try db.execute(sql: "DELETE FROM audit WHERE sequence <= ?", arguments: [floor])
                    try db.execute(sql: "INSERT INTO meta (name, value) VALUES ('audit_anchor_sequence', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                                   arguments: [String(last["sequence"] as Int64)])
                    try db.execute(sql: "INSERT INTO meta (name, value) VALUES ('audit_anchor_hash', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                                   arguments: [Hex.encode(last["hash"] as Data)])
                }
                return records
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "Audit records could not be written (\(error)).")
        }
    }

    public func auditRecords(after: UInt64, limit: Int) async throws(MeridianError) -> (records: [AuditRecord], anchor: AuditAnchor) {
        let region = self.region
        return try await reading { db in
            let rows = try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM audit WHERE sequence > ? ORDER BY sequence LIMIT ?"),
                                        arguments: [Int64(min(after, UInt64(Int64.max))), limit])
            return (try rows.map { try AuditRows.record($0, region: region) }, try AuditRows.anchor(db))
        }
    }

    public func lastAuditRecord(_ kind: AuditRecord.Kind) async throws(MeridianError) -> AuditRecord? {
        let region = self.region
        return try await reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM audit WHERE kind = ? ORDER BY sequence DESC LIMIT 1", arguments: [kind.rawValue])
                .map { try AuditRows.record($0, region: region) }
        }
    }

    public func auditHead() async throws(MeridianError) -> AuditChain {
        let region = self.region
        return try await reading { db in try AuditRows.head(db, region: region) }
    }

    public func witness(_ checkpoint: AuditCheckpoint, publicKey: [UInt8]) async throws(MeridianError) {
        do {
            try await pool.write { db in
                let pinned = try Data.fetchOne(db, sql: "SELECT public_key FROM audit_keys WHERE region = ?", arguments: [checkpoint.region.rawValue]).map { Array($0) }
                try checkpoint.admit(publicKey: publicKey, pinned: pinned)
                if pinned == nil {
                    try db.execute(sql: "INSERT INTO audit_keys (region, public_key) VALUES (?, ?)", arguments: [checkpoint.region.rawValue, Data(publicKey)])
                }
                try db.execute(sql: "INSERT OR IGNORE INTO audit_witness (region, sequence, hash, signature) VALUES (?, ?, ?, ?)",
                               arguments: [checkpoint.region.rawValue, Int64(checkpoint.sequence), Data(checkpoint.hash), Data(checkpoint.signature)])
                try db.execute(sql: """
                    DELETE FROM audit_witness WHERE region = ? AND sequence < (
                        SELECT sequence FROM audit_witness WHERE region = ? ORDER BY sequence DESC LIMIT 1 OFFSET ?)
                    """, arguments: [checkpoint.region.rawValue, checkpoint.region.rawValue, AuditBounds.witnessedPerRegionMax - 1])
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "A checkpoint of \(checkpoint.region)'s audit trail could not be kept (\(error)).")
        }
    }

    public func witnessed(region: RegionName, limit: Int) async throws(MeridianError) -> (publicKey: [UInt8]?, checkpoints: [AuditCheckpoint]) {
        try await reading { db in
            let key = try Data.fetchOne(db, sql: "SELECT public_key FROM audit_keys WHERE region = ?", arguments: [region.rawValue]).map { Array($0) }
            let rows = try Row.fetchAll(db, sql: "SELECT * FROM audit_witness WHERE region = ? ORDER BY sequence DESC LIMIT ?", arguments: [region.rawValue, limit])
            return (key, rows.reversed().map {
                AuditCheckpoint(region: region, sequence: UInt64($0["sequence"] as Int64), hash: Array($0["hash"] as Data), signature: Array($0["signature"] as Data))
            })
        }
    }
}
