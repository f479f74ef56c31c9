import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// Each keyspace's Merkle leaves, kept up to date in the transactions that change keys, so a tree costs a read of
/// 256 rows however many keys the keyspace holds (``MerkleTree`` explains the leaves).
///
/// Every `kv` row carries its bucket and its item hash (the hash of the key and its whole state, `frontier`
/// versions included); `merkle_leaves` holds per keyspace and bucket the eight lanes of the leaf and how many
/// keys it covers. A transaction collects what its key writes changed (``Deltas``) and moves each touched leaf
/// with one statement.
enum MerkleRows {
    /// What a transaction's key writes did to the leaves: per keyspace and bucket, the lanes to add and the keys
    /// gained or lost.
    struct Deltas {
        struct Bucket: Hashable {
            let keyspace: KeyspaceName
            let bucket: Int
        }

        private(set) var changes: [Bucket: (sum: MerkleTree.Leaf, keys: Int)] = [:]

        /// A key's row went from `old` (nil: no row) to `new` (nil: removed) in `bucket`.
        mutating func moved(_ keyspace: KeyspaceName, bucket: Int, from old: MerkleTree.Leaf?, to new: MerkleTree.Leaf?) {
            var change = changes[Bucket(keyspace: keyspace, bucket: bucket)] ?? (.empty, 0)
            if let old { change.sum.subtract(old) } else { change.keys += 1 }
            if let new { change.sum.add(new) } else { change.keys -= 1 }
            changes[Bucket(keyspace: keyspace, bucket: bucket)] = change
        }
    }

    private static let lanes = (0..<8).map { "l\($0)" }

    /// Leaves moved per statement; the rest one by one.
    static let rowsPerUpsert = 16

    private static func upsertSQL(rows: Int) -> String {
        let row = "(?, ?, \(Array(repeating: "?", count: 8).joined(separator: ", ")), ?)"
        return """
            INSERT INTO merkle_leaves (keyspace, bucket, \(lanes.joined(separator: ", ")), keys) VALUES \(Array(repeating: row, count: rows).joined(separator: ", "))
            ON CONFLICT (keyspace, bucket) DO UPDATE SET \(lanes.map { "\($0) = (\($0) + excluded.\($0)) % 4294967296" }.joined(separator: ", ")),
                keys = keys + excluded.keys
            """
    }

    private static let upsertMany = upsertSQL(rows: rowsPerUpsert), upsertOne = upsertSQL(rows: 1)

    /// Moves the touched leaves, `rowsPerUpsert` per statement.
    static func write(_ db: Database, _ deltas: Deltas) throws {
        let changes = Array(deltas.changes)
        guard !changes.isEmpty else { return }
        func bind(_ change: (key: Deltas.Bucket, value: (sum: MerkleTree.Leaf, keys: Int)), _ row: inout DirectStatement.Binder) {
            row.bind(change.key.keyspace.rawValue)
            row.bind(change.key.bucket)
            for lane in 0..<8 { row.bind(Int64(change.value.sum.lanes[lane])) }
            row.bind(change.value.keys)
        }
        var start = 0
        if changes.count >= rowsPerUpsert {
            let many = try DirectStatement(db, sql: upsertMany)
            while changes.count - start >= rowsPerUpsert {
                try many.execute { row in for change in changes[start..<start + rowsPerUpsert] { bind(change, &row) } }
                start += rowsPerUpsert
            }
        }
        if start < changes.count {
            let one = try DirectStatement(db, sql: upsertOne)
            for change in changes[start...] { try one.execute { bind(change, &$0) } }
        }
    }

    /// The keyspace's tree and how many keys it covers, from its leaves.
    static func tree(_ db: Database, _ keyspace: KeyspaceName) throws -> (tree: MerkleTree, keys: Int) {
        var leaves: [Int: MerkleTree.Leaf] = [:]
        var keys = 0
        try DirectStatement(db, sql: "SELECT bucket, \(lanes.joined(separator: ", ")), keys FROM merkle_leaves WHERE keyspace = ?")
            .query({ $0.bind(keyspace.rawValue) }) { row in
                leaves[Int(row.int64(0))] = MerkleTree.Leaf(lanes: (1...8).map { UInt32(truncatingIfNeeded: row.int64(Int32($0))) })
                keys += Int(row.int64(9))
            }
        return (MerkleTree(leaves: leaves), keys)
    }

    /// The tree computed from every key's state, as the leaves must always equal (a check for tests and repairs).
    static func scannedTree(_ db: Database, _ keyspace: KeyspaceName) throws -> (tree: MerkleTree, keys: Int) {
        var builder = MerkleTree.Builder()
        try KeyStateRows.forEach(db, keyspace) { key, state in
            builder.add(key, state: state)
            return true
        }
        return (builder.tree, builder.keys)
    }

    static func registerMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v11-merkle-leaves") { db in
            try db.execute(sql: """
                ALTER TABLE kv ADD COLUMN bucket INTEGER NOT NULL DEFAULT -1;
                ALTER TABLE kv ADD COLUMN item BLOB;
                CREATE TABLE merkle_leaves (
                    keyspace TEXT NOT NULL, bucket INTEGER NOT NULL,
                    l0 INTEGER NOT NULL, l1 INTEGER NOT NULL, l2 INTEGER NOT NULL, l3 INTEGER NOT NULL,
                    l4 INTEGER NOT NULL, l5 INTEGER NOT NULL, l6 INTEGER NOT NULL, l7 INTEGER NOT NULL, keys INTEGER NOT NULL,
                    PRIMARY KEY (keyspace, bucket)) WITHOUT ROWID;
                """)
            // The keys held before: each one's bucket and item, and every leaf, once.
            var deltas = Deltas()
            for name in try String.fetchAll(db, sql: "SELECT DISTINCT keyspace FROM kv") {
                let keyspace = try KeyspaceName(name)
                var placed: [(key: Key, bucket: Int, item: MerkleTree.Leaf)] = []
                try KeyStateRows.forEach(db, keyspace) { key, state in
                    placed.append((key, MerkleTree.bucket(of: key), MerkleTree.item(key, state: state)))
                    return true
                }
                for row in placed {
                    try db.execute(sql: "UPDATE kv SET bucket = ?, item = ? WHERE keyspace = ? AND key = ?",
                                   arguments: [row.bucket, Data(row.item.bytes), name, row.key.rawValue])
                    deltas.moved(keyspace, bucket: row.bucket, from: nil, to: row.item)
                }
            }
            try write(db, deltas)
        }
    }
}
