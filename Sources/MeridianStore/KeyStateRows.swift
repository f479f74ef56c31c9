import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// How a key's state is kept in SQLite. Writes, local or replicated, reach it through ``KeyStateBatch``, which
/// reads and writes these rows once per key and transaction.
///
/// `kv` holds the version reads show (the rule's winner) with the key's causal context; when concurrent
/// writes are unresolved the other versions sit in `frontier` and `kv.concurrent` counts them. A key with
/// no concurrency costs one row read and one row write, as before conflict handling existed.
enum KeyStateRows {
    /// The media type of a `crdt` keyspace's values (the CRDT codec's bytes).
    static let crdtContentType = CRDTCodec.contentType

    /// What a transaction recorded in the conflicts log, for metrics.
    struct Applied {
        var conflictsRecorded = 0
        var conflictsDropped = 0

        mutating func add(_ other: Applied) {
            conflictsRecorded += other.conflictsRecorded
            conflictsDropped += other.conflictsDropped
        }
    }

    /// The columns of a stored version, in the order ``version(_:from:)`` reads them.
    private static let versionColumns = "value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies"
    /// A `kv` row as every reader selects it: the key, the version `kv` holds, the causal context, the count of others.
    private static let keyColumns = "key, \(versionColumns), context, concurrent, item, slot"

    static func load(_ db: Database, _ keyspace: KeyspaceName, _ key: Key) throws -> KeyState? {
        let statement = try db.cachedStatement(sql: "SELECT \(keyColumns) FROM kv WHERE keyspace = ? AND key = ?")
        guard let row = try Row.fetchOne(statement, arguments: [keyspace.rawValue, key.rawValue]) else { return nil }
        return try state(db, keyspace, key, row)
    }

    /// Keys per read statement of ``loadStored(_:_:_:)``.
    static let readChunk = 32
    private static let readMarks = Array(repeating: "?", count: readChunk).joined(separator: ", ")
    private static let loadKeysSQL = "SELECT \(keyColumns) FROM kv WHERE keyspace = ? AND key IN (\(readMarks))"
    private static let loadOthersSQL = "SELECT key, \(versionColumns) FROM frontier WHERE keyspace = ? AND key IN (\(readMarks))"

    /// The stored states of `keys` (at most `readChunk`, a shorter list padded with its last key so one statement
    /// serves every call), each with the version `kv` holds. Keys not stored are left out.
    static func loadStored(_ db: Database, _ keyspace: KeyspaceName, _ keys: [Key]) throws -> [Key: (state: KeyState, winner: Dot, held: MerkleRows.Held?, slot: Int?)] {
        let chunk = readChunk
        precondition(!keys.isEmpty && keys.count <= chunk)
        func bind(_ keys: [Key]) -> (inout DirectStatement.Binder) -> Void {
            { row in
                row.bind(keyspace.rawValue)
                for index in 0..<chunk { row.bind(keys[min(index, keys.count - 1)].rawValue) }
            }
        }
        var stored: [(key: Key, version: KeyVersion, context: [UInt8]?, concurrent: Bool, held: MerkleRows.Held?, slot: Int?)] = []
        try DirectStatement(db, sql: loadKeysSQL).query(bind(keys)) { row in
            let slot = Int(row.int64(12))
            let version = try version(row, from: 1)
            stored.append((try Key(row.text(0)), version, row.isNull(9) ? nil : row.bytes(9), row.int64(10) > 0,
                           try item(row.bytes(11)).map { MerkleRows.Held(item: $0, live: !version.tombstone) },
                           (0..<MerkleTree.slotCount).contains(slot) ? slot : nil))
        }
        // The other versions of keys with concurrent writes, in one more statement.
        var others: [Key: [KeyVersion]] = [:]
        let concurrent = stored.filter(\.concurrent).map(\.key)
        if !concurrent.isEmpty {
            try DirectStatement(db, sql: loadOthersSQL).query(bind(concurrent)) { row in
                others[try Key(row.text(0)), default: []].append(try version(row, from: 1))
            }
        }
        var found: [Key: (state: KeyState, winner: Dot, held: MerkleRows.Held?, slot: Int?)] = [:]
        for row in stored {
            // Rows written before conflict handling carry no context: their write saw only itself.
            let context = try row.context.map { VersionVector(try decodeVector($0)) } ?? VersionVector()
            found[row.key] = (KeyState(context: context, versions: [row.version] + (others[row.key] ?? [])), row.version.dot, row.held, row.slot)
        }
        return found
    }

    /// A stored item hash (nil: none stored).
    private static func item(_ bytes: [UInt8]) throws -> MerkleTree.Leaf? {
        guard !bytes.isEmpty else { return nil }
        guard bytes.count == 32 else { throw MeridianError(.storageFailure, "A key's stored Merkle item is \(bytes.count) bytes, not 32.") }
        return MerkleTree.Leaf(bytes: bytes)
    }

    /// A key's slot and what it holds there, if the key has a row.
    static func loadItem(_ db: Database, _ keyspace: KeyspaceName, _ key: Key) throws -> (slot: Int, held: MerkleRows.Held?)? {
        var found: (slot: Int, held: MerkleRows.Held?)?
        try DirectStatement(db, sql: "SELECT slot, item, tombstone FROM kv WHERE keyspace = ? AND key = ?").query({ row in
            row.bind(keyspace.rawValue)
            row.bind(key.rawValue)
        }) { row in found = (Int(row.int64(0)), try item(row.bytes(1)).map { MerkleRows.Held(item: $0, live: !row.bool(2)) }) }
        return found
    }

    /// The keys of some Merkle slots with their stored item hashes, in slot and key order after `after`, within
    /// `bytesMax` as ``KeyItemCodec`` encodes them (at least one); the key to continue after when more remain.
    static func items(_ db: Database, _ keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) throws -> (items: [(key: Key, item: MerkleTree.Leaf)], next: Key?) {
        var items: [(key: Key, item: MerkleTree.Leaf)] = []
        var bytes = 4
        var full = false
        let statement = try DirectStatement(db, sql: "SELECT key, item FROM kv WHERE keyspace = ? AND slot BETWEEN ? AND ? AND key > ? ORDER BY slot, key")
        for seek in MerkleTree.seeks(slots, after: after) where !full {
            try statement.query({ row in
                row.bind(keyspace.rawValue)
                row.bind(seek.slots.lowerBound)
                row.bind(seek.slots.upperBound)
                row.bind(seek.after?.rawValue ?? "")
            }) { row in
                guard !full else { return }
                let key = try Key(row.text(0))
                let size = KeyItemCodec.bytes(key)
                guard items.isEmpty || bytes + size <= bytesMax else {
                    full = true
                    return
                }
                guard let item = try item(row.bytes(1)) else { throw MeridianError(.storageFailure, "A key's Merkle item is missing.") }
                bytes += size
                items.append((key, item))
            }
        }
        return (items, full ? items.last?.key : nil)
    }

    /// A version from `versionColumns` starting at `column`, read straight from SQLite.
    private static func version(_ row: DirectStatement.Columns, from column: Int32) throws -> KeyVersion {
        let origin = try RegionName(row.text(column + 4))
        let hlc = HLCTimestamp(physicalMs: row.uint64(column + 2), logical: UInt32(truncatingIfNeeded: row.int64(column + 3)), region: origin)
        var dependencies: [RegionName: UInt64] = [:]
        if !row.isNull(column + 7) {
            do { dependencies = try DependencyCodec.decode(row.bytes(column + 7)) } catch {
                throw MeridianError(.storageFailure, "A stored write's dependencies are corrupt: \(error.message)")
            }
        }
        return KeyVersion(version: Version(hlc: hlc, sequence: row.uint64(column + 5)), tombstone: row.bool(column + 6),
                          contentType: row.text(column + 1), value: row.bytes(column), dependencies: dependencies)
    }

    /// Streams every key state of a keyspace in key order (a row at a time; concurrent versions are read per key).
    static func forEach(_ db: Database, _ keyspace: KeyspaceName, after: Key? = nil, _ body: (Key, KeyState) throws -> Bool) throws {
        let rows = try Row.fetchCursor(db, sql: "SELECT \(keyColumns) FROM kv WHERE keyspace = ? AND key > ? ORDER BY key",
                                       arguments: [keyspace.rawValue, after?.rawValue ?? ""])
        while let row = try rows.next() {
            let key = try Key(row[0] as String)
            guard try body(key, try state(db, keyspace, key, row)) else { return }
        }
    }

    /// Streams the key states of some Merkle slots in slot and key order after `after` (``MerkleTree/seeks(_:after:)``),
    /// each range of slots read through the `(keyspace, slot, key)` index: the keys of other slots are not read.
    static func forEach(_ db: Database, _ keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, _ body: (Key, KeyState) throws -> Bool) throws {
        for seek in MerkleTree.seeks(slots, after: after) {
            let rows = try Row.fetchCursor(db.cachedStatement(sql: """
                SELECT \(keyColumns) FROM kv WHERE keyspace = ? AND slot BETWEEN ? AND ? AND key > ? ORDER BY slot, key
                """), arguments: [keyspace.rawValue, seek.slots.lowerBound, seek.slots.upperBound, seek.after?.rawValue ?? ""])
            while let row = try rows.next() {
                let key = try Key(row[0] as String)
                guard try body(key, try state(db, keyspace, key, row)) else { return }
            }
        }
    }

    /// A key's state from its `kv` row (selected as `keyColumns`), reading its other versions when it has some.
    private static func state(_ db: Database, _ keyspace: KeyspaceName, _ key: Key, _ row: Row) throws -> KeyState {
        var others: [KeyVersion] = []
        if (row[10] as Int) > 0 {
            let rows = try Row.fetchCursor(db.cachedStatement(sql: "SELECT \(versionColumns) FROM frontier WHERE keyspace = ? AND key = ?"),
                                           arguments: [keyspace.rawValue, key.rawValue])
            while let row = try rows.next() { others.append(try version(row, from: 0)) }
        }
        return try state(row, stored: try version(row, from: 1), others: others)
    }

    private static func state(_ row: Row, stored: KeyVersion, others: [KeyVersion]) throws -> KeyState {
        // Rows written before conflict handling carry no context: their write saw only itself.
        let context = try (row[9] as Data?).map { VersionVector(try decodeVector($0)) } ?? VersionVector()
        return KeyState(context: context, versions: [stored] + others)
    }

    /// A version from `versionColumns` starting at `column`.
    static func version(_ row: Row, from column: Int) throws -> KeyVersion {
        let origin = try RegionName(row[column + 4] as String)
        let hlc = HLCTimestamp(physicalMs: UInt64(row[column + 2] as Int64), logical: UInt32(row[column + 3] as Int64), region: origin)
        let dependencies: [RegionName: UInt64]
        if let data = row[column + 7] as Data? {
            do { dependencies = try DependencyCodec.decode(Array(data)) } catch {
                throw MeridianError(.storageFailure, "A stored write's dependencies are corrupt: \(error.message)")
            }
        } else {
            dependencies = [:]
        }
        return KeyVersion(version: Version(hlc: hlc, sequence: UInt64(row[column + 5] as Int64)), tombstone: row[column + 6],
                          contentType: row[column + 1], value: Array(row[column] as Data? ?? Data()), dependencies: dependencies)
    }

    /// Writes a key's row in `kv`.
    static let upsertSQL = """
        INSERT INTO kv (keyspace, key, value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies, context, concurrent,
                        slot, item)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (keyspace, key) DO UPDATE SET
            value = excluded.value, content_type = excluded.content_type, hlc_physical_ms = excluded.hlc_physical_ms,
            hlc_logical = excluded.hlc_logical, origin = excluded.origin, sequence = excluded.sequence, tombstone = excluded.tombstone,
            dependencies = excluded.dependencies, context = excluded.context, concurrent = excluded.concurrent,
            item = excluded.item
        """

    /// Writes a key's new state: the winner in `kv`, the rest in `frontier`, and the key's Merkle slot (a key's
    /// slot never changes, so an update leaves it and its index entry alone) and item hash (the caller moves the
    /// leaves: ``MerkleRows/Deltas``).
    /// - Returns: The key's slot and what it now holds there.
    /// - Parameter storedWinner: Which version of `old` `kv` holds; given, only the `frontier` rows that changed
    ///   are written, otherwise every one of the key's rows is replaced.
    /// - Parameter upsert: The `kv` upsert (``upsertSQL``), prepared once for a transaction's keys.
    @discardableResult
    static func store(_ db: Database, _ keyspace: KeyspaceName, _ key: Key, old: KeyState?, storedWinner: Dot? = nil, new: KeyState,
                      rule: ConflictRule, upsert: DirectStatement? = nil, slot known: Int? = nil) throws -> (slot: Int, held: MerkleRows.Held) {
        let winner = new.winner(rule)
        let slot = known ?? MerkleTree.slot(of: key), item = MerkleTree.item(key, state: new)
        let held = MerkleRows.Held(item: item, live: !winner.tombstone)
        try (upsert ?? DirectStatement(db, sql: upsertSQL)).execute { row in
            row.bind(keyspace.rawValue)
            row.bind(key.rawValue)
            row.bind(winner)
            row.bind(encodeVector(new.context))
            row.bind(new.versions.count - 1)
            row.bind(slot)
            row.bind(item.bytes)
        }
        let others = new.versions.filter { $0.dot != winner.dot }
        let stored: [KeyVersion]
        if let old, let storedWinner {
            stored = old.versions.filter { $0.dot != storedWinner }
        } else {
            guard (old?.versions.count ?? 1) > 1 || new.versions.count > 1 else { return (slot, held) }
            try db.cachedStatement(sql: "DELETE FROM frontier WHERE keyspace = ? AND key = ?").execute(arguments: [keyspace.rawValue, key.rawValue])
            stored = []
        }
        guard others != stored else { return (slot, held) }
        let kept = Dictionary(others.map { ($0.dot, $0) }) { first, _ in first }
        for version in stored where kept[version.dot] != version {
            try db.cachedStatement(sql: "DELETE FROM frontier WHERE keyspace = ? AND key = ? AND origin = ? AND sequence = ?")
                .execute(arguments: [keyspace.rawValue, key.rawValue, version.version.origin.rawValue, Int64(version.version.sequence)])
        }
        let storedByDot = Dictionary(stored.map { ($0.dot, $0) }) { first, _ in first }
        for version in others where storedByDot[version.dot] != version {
            try DirectStatement(db, sql: """
                INSERT OR REPLACE INTO frontier (keyspace, key, value, content_type, hlc_physical_ms, hlc_logical, origin, sequence, tombstone, dependencies)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """).execute { row in
                row.bind(keyspace.rawValue)
                row.bind(key.rawValue)
                row.bind(version)
            }
        }
        return (slot, held)
    }

    /// Moves a keyspace's record count and returns it.
    @discardableResult
    static func count(_ db: Database, _ keyspace: KeyspaceName, by delta: Int) throws -> Int {
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
        try decodeVector(Array(data))
    }

    static func decodeVector(_ bytes: [UInt8]) throws -> [RegionName: UInt64] {
        do { return try DependencyCodec.decode(bytes) } catch {
            throw MeridianError(.storageFailure, "A stored causal context is corrupt: \(error.message)")
        }
    }
}

extension DirectStatement.Binder {
    /// A stored version's columns, in `versionColumns` order: value, content type, HLC, origin, sequence, tombstone,
    /// dependencies.
    mutating func bind(_ version: KeyVersion) {
        bind(version.value)
        bind(version.contentType)
        bind(version.version.hlc.physicalMs)
        bind(Int64(version.version.hlc.logical))
        bind(version.version.origin.rawValue)
        bind(version.version.sequence)
        bind(version.tombstone)
        bind(RegionStore.dependenciesColumn(version.dependencies))
    }
}
