import Foundation
import GRDB
import MeridianCore
import MeridianStorage
import Synchronization

/// Names why the data directory refused a write, so a full disk and a read-only one each get an error a user
/// can act on rather than a bare SQLite code.
///
/// SQLite reports a full disk as `SQLITE_FULL`, but a read-only file system under an open database shows up
/// as an I/O error on the write-ahead log; so after any failed write the directory itself is examined
/// (`statvfs`: mounted read-only, or out of space; `access`: not writable; creating a file: turned read-only
/// by the kernel).
enum StorageFault {
    enum Kind: Equatable {
        case full
        case readOnly
        case other
    }

    /// Space below which a failed write is blamed on a full disk.
    static let nearlyFullBytes: UInt64 = 256 * 1024

    static func kind(of error: any Error, directory: String) -> Kind {
        if let databaseError = error as? DatabaseError {
            switch databaseError.resultCode {
            case .SQLITE_FULL: return .full
            case .SQLITE_READONLY: return .readOnly
            default: break
            }
        }
        var stats = statvfs()
        if statvfs(directory, &stats) == 0 {
            if stats.f_flag & UInt(ST_RDONLY) != 0 { return .readOnly }
            if UInt64(stats.f_bavail) * UInt64(stats.f_frsize) < nearlyFullBytes { return .full }
        }
        if access(directory, W_OK) != 0 { return .readOnly }
        // A file system the kernel turned read-only after an error (ext4's errors=remount-ro) shows in neither:
        // only trying to create a file tells.
        let probe = (directory as NSString).appendingPathComponent(".meridian-write-probe")
        let descriptor = open(probe, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        guard descriptor >= 0 else {
            switch errno {
            case EROFS, EACCES, EPERM: return .readOnly
            case ENOSPC, EDQUOT: return .full
            default: return .other
            }
        }
        close(descriptor)
        unlink(probe)
        return .other
    }

    /// The error a failed write answers: what failed (`what`, a sentence saying nothing was written), why, and
    /// what to do. Reads go on either way.
    static func error(_ error: any Error, directory: String, what: String) -> MeridianError {
        let detail = describe(error)
        switch kind(of: error, directory: directory) {
        case .full:
            return MeridianError(
                .storageFull,
                "\(what): the disk of the data directory \(directory) is full (\(detail)). Free space there; reads are still served, and writes resume by themselves.",
                context: ["path": directory])
        case .readOnly:
            return MeridianError(
                .storageReadOnly,
                "\(what): the data directory \(directory) cannot be written (read-only file system or permissions; \(detail)). Make it writable; reads are still served, and writes resume by themselves.",
                context: ["path": directory])
        case .other:
            return MeridianError(.storageFailure, "\(what) (\(detail)). Check the data directory \(directory) and the node's log.", context: ["path": directory])
        }
    }

    static func describe(_ error: any Error) -> String {
        if let databaseError = error as? DatabaseError {
            return "SQLite \(databaseError.resultCode): \(databaseError.message ?? "no message")"
        }
        return "\(error)"
    }
}
