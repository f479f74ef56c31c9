import Foundation
import GRDB
import GRDBSQLite

/// Runs one of the write path's hottest statements (a log row, a key's row) through SQLite's C API: the values
/// are bound straight from Swift's, without the per-argument boxing of `StatementArguments`, which costs more
/// than SQLite's own work for these rows. The statement is GRDB's cached one, prepared once per connection, and
/// it runs inside the caller's GRDB transaction; errors come back as GRDB's `DatabaseError`, like any other.
struct DirectStatement {
    private let statement: Statement
    private let database: Database

    init(_ db: Database, sql: String) throws {
        statement = try db.cachedStatement(sql: sql)
        database = db
    }

    /// Binds the values `bind` gives, in parameter order, and runs the statement to completion.
    func execute(_ bind: (inout Binder) -> Void) throws {
        let handle = statement.sqliteStatement
        try prepare(bind)
        var code = sqlite3_step(handle)
        while code == SQLITE_ROW { code = sqlite3_step(handle) }
        let failure = code == SQLITE_DONE ? nil : DatabaseError(resultCode: ResultCode(rawValue: code), message: database.lastErrorMessage, sql: statement.sql)
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
        if let failure { throw failure }
    }

    /// Binds the values `bind` gives and hands each result row to `row`, in order.
    func query(_ bind: (inout Binder) -> Void, row: (Columns) throws -> Void) throws {
        let handle = statement.sqliteStatement
        try prepare(bind)
        defer {
            sqlite3_reset(handle)
            sqlite3_clear_bindings(handle)
        }
        while true {
            switch sqlite3_step(handle) {
            case SQLITE_ROW: try row(Columns(handle: handle))
            case SQLITE_DONE: return
            case let code: throw DatabaseError(resultCode: ResultCode(rawValue: code), message: database.lastErrorMessage, sql: statement.sql)
            }
        }
    }

    /// Resets and binds, inside the caller's transaction only: GRDB refuses statements once SQLite rolled a
    /// transaction back on its own (a full disk, an I/O error), and so does this, rather than run in autocommit.
    private func prepare(_ bind: (inout Binder) -> Void) throws {
        let handle = statement.sqliteStatement
        guard sqlite3_get_autocommit(database.sqliteConnection) == 0 else {
            throw DatabaseError(resultCode: .SQLITE_MISUSE, message: "no transaction is open (it was rolled back); nothing was written", sql: statement.sql)
        }
        sqlite3_reset(handle)
        var binder = Binder(handle: handle)
        bind(&binder)
        precondition(binder.next - 1 == sqlite3_bind_parameter_count(handle), "every parameter of \(statement.sql) is bound")
        if let code = binder.failure {
            sqlite3_clear_bindings(handle)
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: database.lastErrorMessage, sql: statement.sql)
        }
    }

    /// The current result row's columns, by index; valid only inside the `row` closure.
    struct Columns {
        fileprivate let handle: SQLiteStatement

        func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }
        func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }
        func uint64(_ column: Int32) -> UInt64 { UInt64(bitPattern: sqlite3_column_int64(handle, column)) }
        func bool(_ column: Int32) -> Bool { sqlite3_column_int64(handle, column) != 0 }

        func text(_ column: Int32) -> String {
            guard let bytes = sqlite3_column_text(handle, column) else { return "" }
            return String(decoding: UnsafeBufferPointer(start: bytes, count: Int(sqlite3_column_bytes(handle, column))), as: UTF8.self)
        }

        /// A BLOB's bytes (empty for NULL or an empty BLOB).
        func bytes(_ column: Int32) -> [UInt8] {
            guard let base = sqlite3_column_blob(handle, column) else { return [] }
            return Array(UnsafeRawBufferPointer(start: base, count: Int(sqlite3_column_bytes(handle, column))))
        }
    }

    /// Binds values to the next parameter, one after another.
    struct Binder {
        fileprivate let handle: SQLiteStatement
        fileprivate var next: Int32 = 1
        /// The first bind SQLite refused (a value too big, memory), reported before the statement runs.
        fileprivate var failure: Int32?

        private mutating func check(_ code: Int32) {
            if code != SQLITE_OK && failure == nil { failure = code }
        }
        /// SQLite copies what it is given before the bind call returns.
        private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

        mutating func bind(_ text: String) {
            var text = text
            text.withUTF8 { bytes in
                if let base = bytes.baseAddress, bytes.count > 0 {
                    check(base.withMemoryRebound(to: CChar.self, capacity: bytes.count) { sqlite3_bind_text(handle, next, $0, Int32(bytes.count), Self.transient) })
                } else {
                    // An empty text, not NULL.
                    check(sqlite3_bind_text(handle, next, "", 0, Self.transient))
                }
            }
            next += 1
        }

        mutating func bind(_ value: Int64) {
            check(sqlite3_bind_int64(handle, next, value))
            next += 1
        }

        mutating func bind(_ value: UInt64) { bind(Int64(bitPattern: value)) }
        mutating func bind(_ value: Int) { bind(Int64(value)) }
        mutating func bind(_ value: Bool) { bind(Int64(value ? 1 : 0)) }

        /// Bytes as a BLOB (an empty one too, never NULL).
        mutating func bind(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { buffer in
                if let base = buffer.baseAddress, buffer.count > 0 {
                    check(sqlite3_bind_blob(handle, next, base, Int32(buffer.count), Self.transient))
                } else {
                    check(sqlite3_bind_zeroblob(handle, next, 0))
                }
            }
            next += 1
        }

        /// Bytes as a BLOB, or NULL.
        mutating func bind(_ data: Data?) {
            if let data { bind(Array(data)) } else { bindNull() }
        }

        mutating func bind(_ text: String?) {
            if let text { bind(text) } else { bindNull() }
        }

        mutating func bindNull() {
            check(sqlite3_bind_null(handle, next))
            next += 1
        }
    }
}
