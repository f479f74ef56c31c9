import Logging
import MeridianCore
import MeridianStorage
import PostgresNIO

/// The key table rows a step of the sealer needs, read before it runs: the sealer reads its table synchronously, and
/// PostgreSQL answers asynchronously. The keys the step inserts are written after it, in the same transaction.
///
/// A step that asks for a key the store did not read first throws `storage_failure` (a bug in what was read, never a
/// value opened with the wrong key).
struct PrefetchedKeys: DataKeyTable {
    private var held: [KeyspaceName: [DataKeyID: StoredDataKey]] = [:]
    private var erased: [KeyspaceName: Set<DataKeyID>] = [:]
    /// The ids and subjects read (held, erased or neither).
    private var readIDs: [KeyspaceName: Set<DataKeyID>] = [:]
    private var readSubjects: [KeyspaceName: Set<Subject>] = [:]
    private(set) var inserted: [StoredDataKey] = []

    /// What a step will ask for: the keys of these sealed values, and every key of these subjects.
    struct Wanted {
        var ids: [KeyspaceName: Set<DataKeyID>] = [:]
        var subjects: [KeyspaceName: Set<Subject>] = [:]

        mutating func values(_ keyspace: KeyspaceName, _ values: [[UInt8]]) {
            for value in values {
                if let id = SealedValue.keyID(of: value) { ids[keyspace, default: []].insert(id) }
            }
        }

        mutating func state(_ keyspace: KeyspaceName, _ state: KeyState?) {
            values(keyspace, state?.versions.map(\.value) ?? [])
        }
    }

    /// Reads what `wanted` names.
    static func read(_ connection: PostgresConnection, _ wanted: Wanted, logger: Logger) async throws -> PrefetchedKeys {
        var table = PrefetchedKeys()
        for (keyspace, ids) in wanted.ids where !ids.isEmpty {
            let list = ids.map { bytea($0.bytes) }
            for row in try await connection.query("""
                SELECT id, subject, epoch, wrapped FROM meridian_data_keys WHERE keyspace = \(keyspace.rawValue) AND id = ANY(\(list))
                """, logger: logger).collect() {
                table.hold(try stored(row, keyspace: keyspace))
            }
            for row in try await connection.query("""
                SELECT id FROM meridian_erased_keys WHERE keyspace = \(keyspace.rawValue) AND id = ANY(\(list))
                """, logger: logger).collect() {
                table.erased[keyspace, default: []].insert(try DataKeyID(bytes: try row.decode(ByteBuffer.self).bytes))
            }
            table.readIDs[keyspace, default: []].formUnion(ids)
        }
        for (keyspace, subjects) in wanted.subjects where !subjects.isEmpty {
            for row in try await connection.query("""
                SELECT id, subject, epoch, wrapped FROM meridian_data_keys WHERE keyspace = \(keyspace.rawValue) AND subject = ANY(\(subjects.map(\.rawValue)))
                """, logger: logger).collect() {
                table.hold(try stored(row, keyspace: keyspace))
            }
            table.readSubjects[keyspace, default: []].formUnion(subjects)
        }
        return table
    }

    /// Writes the keys the step made.
    func save(_ connection: PostgresConnection, logger: Logger) async throws {
        for key in inserted {
            try await connection.query("""
                INSERT INTO meridian_data_keys (keyspace, id, subject, epoch, wrapped)
                VALUES (\(key.keyspace.rawValue), \(bytea(key.id.bytes)), \(key.subject.rawValue), \(Int64(key.wrapped.epoch)), \(bytea(key.wrapped.bytes)))
                ON CONFLICT DO NOTHING
                """, logger: logger)
        }
    }

    private mutating func hold(_ key: StoredDataKey) {
        held[key.keyspace, default: [:]][key.id] = key
        readIDs[key.keyspace, default: []].insert(key.id)
    }

    static func stored(_ row: PostgresRow, keyspace: KeyspaceName) throws -> StoredDataKey {
        let (id, subject, epoch, wrapped) = try row.decode((ByteBuffer, String, Int64, ByteBuffer).self)
        return StoredDataKey(keyspace: keyspace, id: try DataKeyID(bytes: id.bytes), subject: try Subject(subject),
                             wrapped: WrappedDataKey(epoch: UInt32(clamping: epoch), bytes: wrapped.bytes))
    }

    private static func unread(_ what: String) -> MeridianError {
        MeridianError(.storageFailure, "The PostgreSQL store's sealer asked for \(what), which the step had not read: a bug in the store; nothing was written.")
    }

    func dataKey(keyspace: KeyspaceName, id: DataKeyID) throws -> StoredDataKey? {
        if let key = held[keyspace]?[id] { return key }
        guard readIDs[keyspace]?.contains(id) == true else { throw Self.unread("data key \(id) of \(keyspace)") }
        return nil
    }

    func dataKeys(keyspace: KeyspaceName, subject: Subject) throws -> [StoredDataKey] {
        guard readSubjects[keyspace]?.contains(subject) == true else { throw Self.unread("the data keys of a subject of \(keyspace)") }
        return (held[keyspace] ?? [:]).values.filter { $0.subject == subject }.sorted { $0.id < $1.id }
    }

    func isErased(keyspace: KeyspaceName, id: DataKeyID) throws -> Bool {
        guard readIDs[keyspace]?.contains(id) == true else { throw Self.unread("whether data key \(id) of \(keyspace) was erased") }
        return erased[keyspace]?.contains(id) == true
    }

    mutating func insert(_ key: StoredDataKey) throws {
        guard held[key.keyspace]?[key.id] == nil else { return }
        hold(key)
        inserted.append(key)
    }
}

enum DataKeyStatements {
    /// Records keys as erased here (a peer's erasure this region learns of, or its own): their wraps deleted.
    static func markErased(_ connection: PostgresConnection, keyspace: KeyspaceName, ids: [DataKeyID], nowMs: UInt64, logger: Logger) async throws {
        for id in ids {
            // The wrap's bytes zeroed first, so the deleted row version holds none of them (WAL archives still do
            // until the root key is rotated: docs/scaling-a-region.md).
            try await connection.query("""
                UPDATE meridian_data_keys SET wrapped = decode(repeat('00', length(wrapped)), 'hex') WHERE keyspace = \(keyspace.rawValue) AND id = \(bytea(id.bytes))
                """, logger: logger)
            try await connection.query("DELETE FROM meridian_data_keys WHERE keyspace = \(keyspace.rawValue) AND id = \(bytea(id.bytes))", logger: logger)
            try await connection.query("""
                INSERT INTO meridian_erased_keys (keyspace, id, erased_ms) VALUES (\(keyspace.rawValue), \(bytea(id.bytes)), \(sql(nowMs))) ON CONFLICT DO NOTHING
                """, logger: logger)
        }
    }

    /// Refuses a sealer whose root keys are not those the data keys here were wrapped with; records them when new.
    static func checkRootKeys(_ connection: PostgresConnection, sealer: ValueSealer, logger: Logger) async throws {
        for (epoch, check) in sealer.rootChecks.sorted(by: { $0.key < $1.key }) {
            try await connection.query("INSERT INTO meridian_root_key_checks (epoch, check_value) VALUES (\(Int64(epoch)), \(check)) ON CONFLICT DO NOTHING",
                                       logger: logger)
            let held = try await connection.query("SELECT check_value FROM meridian_root_key_checks WHERE epoch = \(Int64(epoch))", logger: logger)
                .collect().first.map { try $0.decode(String.self) }
            guard held == check else {
                throw MeridianError(.invalidConfig, "\(sealer.rootSource): the root key of epoch \(epoch) is not the one the data keys in this region's PostgreSQL database were wrapped with; start the node with that region's own root key.",
                                    context: ["file": sealer.rootSource])
            }
        }
    }
}
