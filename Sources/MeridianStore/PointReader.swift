import Foundation
import GRDBSQLite
import MeridianCore
import MeridianStorage
import Synchronization

/// Reads one key's current row on a read-only SQLite connection of the calling thread's own, with its statement
/// prepared once: no reader pool and no dispatch queue. The threads that read are few and live as long as the
/// process (in the node, Swift concurrency runs on NIO's event loops), so each ends up with one connection; at most
/// `connectionsMax` threads get one, and the others (and a thread whose connection could not be opened) read
/// through the pool. The map of connections is looked up under a lock held for a dictionary lookup only.
///
/// Each read is one SELECT outside any transaction, so SQLite runs it against the newest committed WAL snapshot:
/// a read that starts after a commit returned sees it, as a read through the pool does.
final class PointReader: Sendable {
    private let path: String
    private let connectionsMax: Int
    /// Each thread's connection (nil: it could not be opened, so that thread reads through the pool).
    private let connections = Mutex<(byThread: [UInt: Connection?], closed: Bool)>(([:], false))

    static let sql = """
        SELECT value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies, concurrent
        FROM kv WHERE keyspace = ? AND key = ?
        """

    init(path: String, connectionsMax: Int = 16) {
        self.path = path
        self.connectionsMax = connectionsMax
    }

    /// The key's row as `get` returns it (a sealed value still sealed), or `.unavailable` when this thread has no
    /// connection (too many threads read, or the store closed).
    func get(keyspace: KeyspaceName, key: Key) throws(MeridianError) -> Read {
        guard let connection = connection() else { return .unavailable }
        return try connection.get(keyspace: keyspace, key: key)
    }

    enum Read {
        case found(StoredValue)
        case absent
        case unavailable
    }

    /// Closes every connection; reads after this get `.unavailable`.
    func close() {
        let all = connections.withLock { state in
            state.closed = true
            defer { state.byThread = [:] }
            return state.byThread.values.compactMap { $0 }
        }
        for connection in all { connection.close() }
    }

    private func connection() -> Connection? {
        let thread = UInt(pthread_self())
        let known = connections.withLock { state -> (connection: Connection?, open: Bool) in
            guard !state.closed else { return (nil, false) }
            if let connection = state.byThread[thread] { return (connection, false) }
            return (nil, state.byThread.count < connectionsMax)
        }
        guard known.open else { return known.connection }
        // Opened outside the lock (it reads the schema); only this thread adds its own entry.
        let opened = Connection(path: path)
        let kept = connections.withLock { state -> Bool in
            guard !state.closed, state.byThread.count < connectionsMax else { return false }
            state.byThread[thread] = .some(opened)
            return true
        }
        guard kept else {
            opened?.close()
            return nil
        }
        return opened
    }

    /// One read-only connection and its prepared statement, used by one thread; the lock only keeps `close`
    /// from finalizing it in the middle of a read.
    final class Connection: Sendable {
        private struct Handles: @unchecked Sendable {
            let database: OpaquePointer
            let statement: OpaquePointer
        }
        private let handles: Mutex<Handles?>

        init?(path: String) {
            var database: OpaquePointer?
            guard sqlite3_open_v2(path, &database, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK, let database else {
                sqlite3_close_v2(database)
                return nil
            }
            sqlite3_busy_timeout(database, 5_000)
            var statement: OpaquePointer?
            guard sqlite3_prepare_v3(database, PointReader.sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK,
                  let statement else {
                sqlite3_close_v2(database)
                return nil
            }
            handles = Mutex(Handles(database: database, statement: statement))
        }

        func close() {
            handles.withLock { handles in
                guard let open = handles else { return }
                sqlite3_finalize(open.statement)
                sqlite3_close_v2(open.database)
                handles = nil
            }
        }

        func get(keyspace: KeyspaceName, key: Key) throws(MeridianError) -> Read {
            let outcome: Result<Read, MeridianError> = handles.withLock { handles in
                guard let open = handles else { return .success(.unavailable) }
                let statement = open.statement
                defer {
                    sqlite3_reset(statement)
                    sqlite3_clear_bindings(statement)
                }
                Self.bind(keyspace.rawValue, 1, statement)
                Self.bind(key.rawValue, 2, statement)
                switch sqlite3_step(statement) {
                case SQLITE_DONE:
                    return .success(.absent)
                case SQLITE_ROW:
                    do throws(MeridianError) {
                        return .success(.found(try Self.row(statement, keyspace: keyspace, key: key)))
                    } catch {
                        return .failure(error)
                    }
                case SQLITE_BUSY, SQLITE_LOCKED:
                    // The file is busy beyond the timeout (a checkpoint, a recovery): the pool reads it instead.
                    return .success(.unavailable)
                case let code:
                    let message = String(cString: sqlite3_errmsg(open.database))
                    return .failure(MeridianError(.storageFailure, "The store could not be read: SQLite error \(code): \(message)"))
                }
            }
            return try outcome.get()
        }

        private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

        private static func bind(_ text: String, _ index: Int32, _ statement: OpaquePointer) {
            var text = text
            text.withUTF8 { bytes in
                if let base = bytes.baseAddress, bytes.count > 0 {
                    _ = base.withMemoryRebound(to: CChar.self, capacity: bytes.count) { sqlite3_bind_text(statement, index, $0, Int32(bytes.count), transient) }
                } else {
                    // An empty text, never NULL.
                    _ = sqlite3_bind_text(statement, index, "", 0, transient)
                }
            }
        }

        private static func row(_ statement: OpaquePointer, keyspace: KeyspaceName, key: Key) throws(MeridianError) -> StoredValue {
            func bytes(_ column: Int32) -> [UInt8] {
                guard let base = sqlite3_column_blob(statement, column) else { return [] }
                return Array(UnsafeRawBufferPointer(start: base, count: Int(sqlite3_column_bytes(statement, column))))
            }
            func text(_ column: Int32) -> String {
                guard let base = sqlite3_column_text(statement, column) else { return "" }
                return String(decoding: UnsafeBufferPointer(start: base, count: Int(sqlite3_column_bytes(statement, column))), as: UTF8.self)
            }
            let origin = try RegionName(text(4))
            let version = Version(
                hlc: HLCTimestamp(physicalMs: UInt64(sqlite3_column_int64(statement, 2)), logical: UInt32(truncatingIfNeeded: sqlite3_column_int64(statement, 3)),
                                  region: origin),
                sequence: UInt64(sqlite3_column_int64(statement, 5)))
            var dependencies: [RegionName: UInt64] = [:]
            if sqlite3_column_type(statement, 7) != SQLITE_NULL {
                do { dependencies = try DependencyCodec.decode(bytes(7)) } catch {
                    throw MeridianError(.storageFailure, "A stored write's dependencies are corrupt: \(error.message)")
                }
            }
            return StoredValue(keyspace: keyspace, key: key, value: bytes(0), contentType: text(1), version: version,
                               tombstone: sqlite3_column_int64(statement, 6) != 0, dependencies: dependencies,
                               concurrent: Int(sqlite3_column_int64(statement, 8)))
        }
    }
}
