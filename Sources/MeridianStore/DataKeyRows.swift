import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// The key table of sealed keyspaces: `data_keys` holds each subject's data keys wrapped under this region's
/// key-encryption key; `erased_keys` remembers the ids of keys destroyed by an erasure (random ids, no personal
/// data), so a value sealed with one answers `erased`, never `data_key_unavailable`. With `secure_delete` on, a
/// destroyed wrap's bytes are zeroed in the file.
struct DataKeyRows: DataKeyTable {
    let db: Database

    static func registerMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v9-data-keys") { db in
            try db.execute(sql: """
                CREATE TABLE data_keys (
                    keyspace TEXT NOT NULL, id BLOB NOT NULL, subject TEXT NOT NULL, epoch INTEGER NOT NULL, wrapped BLOB NOT NULL,
                    PRIMARY KEY (keyspace, id)) WITHOUT ROWID;
                CREATE INDEX data_keys_subject ON data_keys (keyspace, subject);
                CREATE TABLE erased_keys (
                    keyspace TEXT NOT NULL, id BLOB NOT NULL, erased_ms INTEGER NOT NULL,
                    PRIMARY KEY (keyspace, id)) WITHOUT ROWID;
                """)
        }
    }

    func dataKey(keyspace: KeyspaceName, id: DataKeyID) throws -> StoredDataKey? {
        try Row.fetchOne(db.cachedStatement(sql: "SELECT subject, epoch, wrapped FROM data_keys WHERE keyspace = ? AND id = ?"),
                         arguments: [keyspace.rawValue, Data(id.bytes)])
            .map { try Self.stored($0, keyspace: keyspace, id: id) }
    }

    func dataKeys(keyspace: KeyspaceName, subject: Subject) throws -> [StoredDataKey] {
        try Row.fetchAll(db.cachedStatement(sql: "SELECT id, subject, epoch, wrapped FROM data_keys WHERE keyspace = ? AND subject = ? ORDER BY id"),
                         arguments: [keyspace.rawValue, subject.rawValue])
            .map { try Self.stored($0, keyspace: keyspace, id: try DataKeyID(bytes: Array($0["id"] as Data))) }
    }

    func isErased(keyspace: KeyspaceName, id: DataKeyID) throws -> Bool {
        try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM erased_keys WHERE keyspace = ? AND id = ?"),
                          arguments: [keyspace.rawValue, Data(id.bytes)]) ?? false
    }

    mutating func insert(_ key: StoredDataKey) throws {
        try db.cachedStatement(sql: "INSERT OR IGNORE INTO data_keys (keyspace, id, subject, epoch, wrapped) VALUES (?, ?, ?, ?, ?)")
            .execute(arguments: [key.keyspace.rawValue, Data(key.id.bytes), key.subject.rawValue, Int64(key.wrapped.epoch), Data(key.wrapped.bytes)])
    }

    /// Records keys as erased here (a peer's erasure this region learns of, or its own).
    func markErased(keyspace: KeyspaceName, ids: [DataKeyID], nowMs: UInt64) throws {
        for id in ids {
            try db.cachedStatement(sql: "DELETE FROM data_keys WHERE keyspace = ? AND id = ?").execute(arguments: [keyspace.rawValue, Data(id.bytes)])
            try db.cachedStatement(sql: "INSERT OR IGNORE INTO erased_keys (keyspace, id, erased_ms) VALUES (?, ?, ?)")
                .execute(arguments: [keyspace.rawValue, Data(id.bytes), Int64(nowMs)])
        }
    }

    private static func stored(_ row: Row, keyspace: KeyspaceName, id: DataKeyID) throws -> StoredDataKey {
        StoredDataKey(keyspace: keyspace, id: id, subject: try Subject(row["subject"] as String),
                      wrapped: WrappedDataKey(epoch: UInt32(row["epoch"] as Int64), bytes: Array(row["wrapped"] as Data)))
    }
}

extension RegionStore {
    public func missingDataKeys(_ values: [(keyspace: KeyspaceName, value: [UInt8])]) async throws(MeridianError) -> [KeyspaceName: Set<DataKeyID>] {
        guard let sealer, values.contains(where: { sealer.isSealed($0.keyspace) }) else { return [:] }
        return try await reading { db in try sealer.missing(values, in: DataKeyRows(db: db)) }
    }

    public func grantDataKeys(keyspace: KeyspaceName, ids: [DataKeyID]) async throws(MeridianError) -> (granted: [DataKeyGrant], erased: [DataKeyID]) {
        guard let sealer else { return ([], []) }
        return try await reading { db in try sealer.grants(keyspace: keyspace, ids: ids, in: DataKeyRows(db: db)) }
    }

    public func installDataKeys(keyspace: KeyspaceName, _ grants: [DataKeyGrant], erased: [DataKeyID], nowMs: UInt64) async throws(MeridianError) {
        guard let sealer else { return }
        do {
            try await pool.write { db in
                var table = DataKeyRows(db: db)
                try table.markErased(keyspace: keyspace, ids: erased, nowMs: nowMs)
                sealer.forget(keyspace: keyspace, ids: erased)
                try sealer.install(grants, keyspace: keyspace, in: &table)
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "Data keys granted for \(keyspace) could not be stored (\(error)).")
        }
    }

    public func erasedDataKeys(keyspace: KeyspaceName, after: DataKeyID?, limit: Int) async throws(MeridianError) -> [DataKeyID] {
        try await reading { db in
            try Data.fetchAll(db, sql: "SELECT id FROM erased_keys WHERE keyspace = ? AND id > ? ORDER BY id LIMIT ?",
                              arguments: [keyspace.rawValue, Data(after?.bytes ?? []), limit])
                .map { try DataKeyID(bytes: Array($0)) }
        }
    }

    public func rewrapDataKeys(limit: Int) async throws(MeridianError) -> Int {
        guard let sealer else { return 0 }
        let path = databasePath
        do {
            return try await pool.write { db in
                try Self.checkRootKeys(db, sealer: sealer, path: path)
                let rows = try Row.fetchAll(db, sql: "SELECT keyspace, id, subject, epoch, wrapped FROM data_keys WHERE epoch < ? LIMIT ?",
                                            arguments: [Int64(sealer.epoch), limit])
                for row in rows {
                    let stored = StoredDataKey(keyspace: try KeyspaceName(row["keyspace"] as String), id: try DataKeyID(bytes: Array(row["id"] as Data)),
                                               subject: try Subject(row["subject"] as String),
                                               wrapped: WrappedDataKey(epoch: UInt32(row["epoch"] as Int64), bytes: Array(row["wrapped"] as Data)))
                    let again = try sealer.rewrapped(stored)
                    try db.execute(sql: "UPDATE data_keys SET epoch = ?, wrapped = ? WHERE keyspace = ? AND id = ?",
                                   arguments: [Int64(again.wrapped.epoch), Data(again.wrapped.bytes), stored.keyspace.rawValue, Data(stored.id.bytes)])
                }
                return rows.count
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "Data keys could not be wrapped again (\(error)); the rotation stopped, and running it again goes on.")
        }
    }

    public func dataKeyEpochs() async throws(MeridianError) -> [UInt32: Int] {
        try await reading { db in
            var counts: [UInt32: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT epoch, COUNT(*) AS n FROM data_keys GROUP BY epoch") {
                counts[UInt32(row["epoch"] as Int64)] = row["n"]
            }
            return counts
        }
    }

    public func erase(keyspace: KeyspaceName, subject: Subject, nowMs: UInt64) async throws(MeridianError) -> [DataKeyID] {
        guard let sealer else { return [] }
        let ids: [DataKeyID]
        do {
            ids = try await pool.write { db in
                let table = DataKeyRows(db: db)
                let ids = try table.dataKeys(keyspace: keyspace, subject: subject).map(\.id)
                try table.markErased(keyspace: keyspace, ids: ids, nowMs: nowMs)
                // Before the commit, so no later write seals with them.
                sealer.forget(keyspace: keyspace, ids: ids)
                return ids
            }
        } catch {
            throw MeridianError(.storageFailure, "The data keys of a subject of \(keyspace) could not be destroyed (\(error)); nothing was erased. Retry.")
        }
        return ids
    }
}
