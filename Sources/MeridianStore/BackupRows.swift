import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// Online backups with SQLite's backup API (a consistent copy of one read snapshot, taken while the node writes),
/// and restoring one into a fresh data directory of the same region.
enum BackupRows {
    static func summary(_ db: Database, bytes: Int) throws -> BackupSummary {
        guard let region = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'region'") else {
            throw MeridianError(.invalidRequest, "The file is not a Meridian store: it names no region.")
        }
        let logEnd = try Int64.fetchOne(db, sql: "SELECT MAX(sequence) FROM log WHERE origin = ?", arguments: [region]) ?? 0
        let floor = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'log_floor'").flatMap { Int64($0) } ?? 0
        let audit = try AuditRows.head(db, region: try RegionName(region))
        return BackupSummary(region: region, logEnd: UInt64(max(logEnd, floor)), auditHead: audit.sequence,
                             keys: try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM kv") ?? 0,
                             dataKeys: try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM data_keys") ?? 0, bytes: bytes)
    }

    /// Not async, so the calls resolve to GRDB's blocking backup and read (the copy runs on the calling thread).
    static func copy(_ pool: DatabasePool, to path: String) throws -> BackupSummary {
        let target = try DatabaseQueue(path: path)
        try pool.backup(to: target)
        let copied: BackupSummary = try target.read { db in try BackupRows.summary(db, bytes: BackupRows.fileBytes(path)) }
        try target.close()
        return copied
    }

    static func fileBytes(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    }
}

extension RegionStore {
    /// Copies the store to a new file at `path` while the node keeps serving: one consistent snapshot, values and
    /// data keys as they rest (sealed, wrapped).
    /// - Throws: `invalid_request` when `path` exists or its directory does not; `storage_failure` when the copy fails
    ///   (the partial file is removed).
    public func backup(to path: String) async throws(MeridianError) -> BackupSummary {
        guard path.hasPrefix("/") else {
            throw MeridianError(.invalidRequest, "The backup path must be absolute (it is a path on the node's machine): \(path).")
        }
        guard !FileManager.default.fileExists(atPath: path) else {
            throw MeridianError(.invalidRequest, "\(path) already exists; a backup never overwrites a file. Choose a new name.")
        }
        var isDirectory: ObjCBool = false
        let directory = (path as NSString).deletingLastPathComponent
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw MeridianError(.invalidRequest, "The directory of \(path) does not exist on the node's machine.")
        }
        // Made here, readable by its owner only and never over an existing file; SQLite takes an empty file as new.
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw MeridianError(.invalidRequest, "\(path) cannot be created (\(String(cString: strerror(errno)))); a backup never overwrites a file.")
        }
        Glibc.close(descriptor)
        do {
            return try BackupRows.copy(pool, to: path)
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            if let error = error as? MeridianError { throw error }
            throw MeridianError(.storageFailure, "The backup to \(path) failed (\(error)); nothing was kept.")
        }
    }

    /// Restores `backup` as the store of `region` at `path` (a data directory's database that does not exist yet).
    /// The restored store starts with `restore_pending`: its node catches up from its peers before it serves.
    /// - Throws: `invalid_request` when the backup is another region's, not a Meridian store, or `path` exists.
    public static func restore(backup: String, to path: String, region: RegionName) throws(MeridianError) -> BackupSummary {
        guard FileManager.default.fileExists(atPath: backup) else {
            throw MeridianError(.invalidRequest, "The backup \(backup) does not exist.")
        }
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
            throw MeridianError(.invalidRequest, "\(path + suffix) exists: a backup is restored only into a fresh data directory. Move the old one aside first.")
        }
        do {
            var configuration = Configuration()
            configuration.readonly = true
            let source = try DatabaseQueue(path: backup, configuration: configuration)
            let summary = try source.read { db in try BackupRows.summary(db, bytes: BackupRows.fileBytes(backup)) }
            guard summary.region == region.rawValue else {
                throw MeridianError(.invalidRequest, "\(backup) is a backup of region \(summary.region), not \(region): a region's data is restored only into that region (its keys and residency are its own).",
                                    context: ["backup_region": summary.region, "region": region.rawValue])
            }
            let target = try DatabaseQueue(path: path)
            try source.backup(to: target)
            try target.write { db in
                try db.execute(sql: "INSERT INTO meta (name, value) VALUES ('restore_pending', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                               arguments: [String(summary.logEnd)])
            }
            try target.close()
            try source.close()
            return summary
        } catch let error as MeridianError {
            try? FileManager.default.removeItem(atPath: path)
            throw error
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw MeridianError(.invalidRequest, "\(backup) could not be restored (\(error)); is it a Meridian backup? Nothing was written.")
        }
    }

    /// The log end the backup this store was restored from held, while the node has not caught up yet (nil: not
    /// a restored store, or caught up).
    public func restorePending() async throws(MeridianError) -> UInt64? {
        try await reading { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE name = 'restore_pending'").flatMap { UInt64($0) } }
    }

    /// Ends a restore: the region's log continues after `logEnd` (the highest sequence any peer holds; entries up to
    /// it this store lacks count as trimmed, so a peer behind them resyncs), and the pending mark goes.
    public func finishRestore(logEnd: UInt64) async throws(MeridianError) {
        try await committer.continueLog(after: logEnd)
        trimmedThrough.raise(to: logEnd)
    }
}
