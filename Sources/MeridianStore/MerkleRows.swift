import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// Each keyspace's Merkle leaves, kept up to date in the transactions that change keys, so a tree costs a read of
/// 256 rows however many keys the keyspace holds, and a bucket's slot leaves a read of 256 more (``MerkleTree``
/// explains buckets, slots and leaves).
///
/// Every `kv` row carries its slot and its item hash (the hash of the key and its whole state, `frontier`
/// versions included), and an index on `(keyspace, slot, key)` finds a slot's keys without a scan.
/// `merkle_leaves` holds per keyspace and bucket the eight lanes of the bucket's leaf, how many keys it covers and
/// how many of them are live (their winner is not a tombstone), so counting a keyspace's keys reads 256 rows too.
/// A transaction collects what its key writes changed (``Deltas``) and moves each touched bucket with one statement.
///
/// Slot leaves are kept as a log-structured pair, because a batch of writes touches a few hundred of the 65,536
/// slots at random, and updating their rows in place dirtied a page each (doubling an applied entry's time):
/// - each transaction appends one row per keyspace to `merkle_slot_deltas`, all its slots' changes packed in a
///   blob (sequential pages);
/// - every `deltasPerFold` rows, the transaction that appends the last one folds them all into `merkle_slots`
///   (per keyspace and slot: the lanes and the key count), each slot once, and deletes them;
/// - a slot's leaf is its `merkle_slots` row plus the deltas not folded yet.
enum MerkleRows {
    /// What a key contributes to its slot and bucket: its item hash, and whether it is live.
    struct Held {
        let item: MerkleTree.Leaf
        let live: Bool
    }

    /// What a transaction's key writes did to the leaves: per keyspace and slot, the lanes to add and the keys
    /// gained or lost (live or in all).
    struct Deltas {
        struct Place: Hashable {
            let keyspace: KeyspaceName
            let index: Int
        }

        struct Change {
            var sum = MerkleTree.Leaf.empty
            var keys = 0
            var live = 0

            mutating func add(_ other: Change) {
                sum.add(other.sum)
                keys += other.keys
                live += other.live
            }
        }

        private(set) var slots: [Place: Change] = [:]

        /// A key's row went from `old` (nil: no row) to `new` (nil: removed) in `slot`.
        mutating func moved(_ keyspace: KeyspaceName, slot: Int, from old: Held?, to new: Held?) {
            var change = slots[Place(keyspace: keyspace, index: slot)] ?? Change()
            if let old {
                change.sum.subtract(old.item)
                change.keys -= 1
                change.live -= old.live ? 1 : 0
            }
            if let new {
                change.sum.add(new.item)
                change.keys += 1
                change.live += new.live ? 1 : 0
            }
            slots[Place(keyspace: keyspace, index: slot)] = change
        }

        /// The same changes per bucket.
        var buckets: [Place: Change] {
            var buckets: [Place: Change] = [:]
            for (place, change) in slots {
                buckets[Place(keyspace: place.keyspace, index: MerkleTree.bucket(ofSlot: place.index)), default: Change()].add(change)
            }
            return buckets
        }
    }

    private static let lanes = (0..<8).map { "l\($0)" }

    /// Leaves moved per statement; the rest one by one.
    static let rowsPerUpsert = 16

    /// An upsert of `rows` leaves of `table` (indexed by `index`), adding to the lanes and counts already there.
    private static func upsertSQL(_ table: String, index: String, counts: [String], rows: Int) -> String {
        let row = "(?, ?, \(Array(repeating: "?", count: 8 + counts.count).joined(separator: ", ")))"
        return """
            INSERT INTO \(table) (keyspace, \(index), \(lanes.joined(separator: ", ")), \(counts.joined(separator: ", ")))
            VALUES \(Array(repeating: row, count: rows).joined(separator: ", "))
            ON CONFLICT (keyspace, \(index)) DO UPDATE SET \(lanes.map { "\($0) = (\($0) + excluded.\($0)) % 4294967296" }.joined(separator: ", ")),
                \(counts.map { "\($0) = \($0) + excluded.\($0)" }.joined(separator: ", "))
            """
    }

    private static let slotUpserts = (many: upsertSQL("merkle_slots", index: "slot", counts: ["keys"], rows: rowsPerUpsert),
                                      one: upsertSQL("merkle_slots", index: "slot", counts: ["keys"], rows: 1))
    private static let bucketUpserts = (many: upsertSQL("merkle_leaves", index: "bucket", counts: ["keys", "live"], rows: rowsPerUpsert),
                                        one: upsertSQL("merkle_leaves", index: "bucket", counts: ["keys", "live"], rows: 1))

    /// Moves the touched slots and buckets, `rowsPerUpsert` per statement.
    static func write(_ db: Database, _ deltas: Deltas) throws {
        guard !deltas.slots.isEmpty else { return }
        try write(db, Array(deltas.buckets), upserts: bucketUpserts, live: true)
        var byKeyspace: [KeyspaceName: [(slot: Int, change: Deltas.Change)]] = [:]
        for (place, change) in deltas.slots { byKeyspace[place.keyspace, default: []].append((place.index, change)) }
        let append = try DirectStatement(db, sql: "INSERT INTO merkle_slot_deltas (keyspace, deltas) VALUES (?, ?)")
        for (keyspace, changes) in byKeyspace {
            try append.execute { row in
                row.bind(keyspace.rawValue)
                row.bind(packed(changes))
            }
        }
        if try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM merkle_slot_deltas")) ?? 0 >= deltasPerFold { try fold(db) }
    }

    /// Delta rows appended before they are folded into `merkle_slots`.
    static let deltasPerFold = 512
    /// A packed slot change: u16 slot, eight u32 lanes, i32 keys gained or lost.
    private static let packedBytes = 2 + 32 + 4

    private static func packed(_ changes: [(slot: Int, change: Deltas.Change)]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(changes.count * packedBytes)
        for (slot, change) in changes {
            withUnsafeBytes(of: UInt16(slot).bigEndian) { bytes += $0 }
            for lane in 0..<8 { withUnsafeBytes(of: change.sum.lanes[lane].bigEndian) { bytes += $0 } }
            withUnsafeBytes(of: Int32(truncatingIfNeeded: change.keys).bigEndian) { bytes += $0 }
        }
        return bytes
    }

    private static func unpacked(_ bytes: [UInt8]) throws -> [(slot: Int, sum: MerkleTree.Leaf, keys: Int)] {
        guard bytes.count % packedBytes == 0 else { throw MeridianError(.storageFailure, "A stored Merkle slot delta is \(bytes.count) bytes, not a multiple of \(packedBytes).") }
        return bytes.withUnsafeBytes { raw in
            stride(from: 0, to: raw.count, by: packedBytes).map { offset in
                var lanes = SIMD8<UInt32>()
                for lane in 0..<8 { lanes[lane] = UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: offset + 2 + lane * 4, as: UInt32.self)) }
                return (Int(UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self))), MerkleTree.Leaf(lanes: lanes),
                        Int(Int32(bigEndian: raw.loadUnaligned(fromByteOffset: offset + 34, as: Int32.self))))
            }
        }
    }

    /// The deltas not folded yet, summed per keyspace and slot (only `keyspace`'s when given).
    private static func pendingDeltas(_ db: Database, keyspace: KeyspaceName? = nil) throws -> [Deltas.Place: Deltas.Change] {
        var pending: [Deltas.Place: Deltas.Change] = [:]
        try DirectStatement(db, sql: "SELECT keyspace, deltas FROM merkle_slot_deltas WHERE ? IS NULL OR keyspace = ?").query({ row in
            row.bind(keyspace?.rawValue)
            row.bind(keyspace?.rawValue)
        }) { row in
            let name = try KeyspaceName(row.text(0))
            for change in try unpacked(row.bytes(1)) {
                pending[Deltas.Place(keyspace: name, index: change.slot), default: Deltas.Change()].add(Deltas.Change(sum: change.sum, keys: change.keys))
            }
        }
        return pending
    }

    /// Folds every delta row into `merkle_slots`, each slot once, and deletes them.
    static func fold(_ db: Database) throws {
        // In slot order, so the fold walks the table's pages once, front to back.
        let pending = try pendingDeltas(db).sorted { ($0.key.keyspace.rawValue, $0.key.index) < ($1.key.keyspace.rawValue, $1.key.index) }
        try write(db, pending, upserts: slotUpserts, live: false)
        try db.execute(sql: "DELETE FROM merkle_slot_deltas")
    }

    private static func write(_ db: Database, _ changes: [(key: Deltas.Place, value: Deltas.Change)], upserts: (many: String, one: String), live: Bool) throws {
        func bind(_ change: (key: Deltas.Place, value: Deltas.Change), _ row: inout DirectStatement.Binder) {
            row.bind(change.key.keyspace.rawValue)
            row.bind(change.key.index)
            for lane in 0..<8 { row.bind(Int64(change.value.sum.lanes[lane])) }
            row.bind(change.value.keys)
            if live { row.bind(change.value.live) }
        }
        var start = 0
        if changes.count >= rowsPerUpsert {
            let many = try DirectStatement(db, sql: upserts.many)
            while changes.count - start >= rowsPerUpsert {
                try many.execute { row in for change in changes[start..<start + rowsPerUpsert] { bind(change, &row) } }
                start += rowsPerUpsert
            }
        }
        if start < changes.count {
            let one = try DirectStatement(db, sql: upserts.one)
            for change in changes[start...] { try one.execute { bind(change, &$0) } }
        }
    }

    /// The slot leaves of some buckets of the keyspace's tree.
    static func slots(_ db: Database, _ keyspace: KeyspaceName, buckets: [Int]) throws -> MerkleSlots {
        var slots: [Int: MerkleTree.Leaf] = [:]
        let statement = try DirectStatement(db, sql: "SELECT slot, \(lanes.joined(separator: ", ")) FROM merkle_slots WHERE keyspace = ? AND slot BETWEEN ? AND ?")
        for bucket in Set(buckets) where (0..<MerkleTree.bucketCount).contains(bucket) {
            let range = MerkleTree.slots(ofBucket: bucket)
            try statement.query({ row in
                row.bind(keyspace.rawValue)
                row.bind(range.lowerBound)
                row.bind(range.upperBound)
            }) { row in
                slots[Int(row.int64(0))] = MerkleTree.Leaf(lanes: (1...8).map { UInt32(truncatingIfNeeded: row.int64(Int32($0))) })
            }
        }
        let wanted = Set(buckets)
        for (place, change) in try pendingDeltas(db, keyspace: keyspace) where wanted.contains(MerkleTree.bucket(ofSlot: place.index)) {
            slots[place.index, default: .empty].add(change.sum)
        }
        return MerkleSlots(buckets: buckets.filter { (0..<MerkleTree.bucketCount).contains($0) }, slots: slots)
    }

    /// Live keys per keyspace, from the buckets' counts.
    static func liveCounts(_ db: Database) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT keyspace, SUM(live) AS live FROM merkle_leaves GROUP BY keyspace") where (row["live"] as Int) > 0 {
            counts[row["keyspace"]] = row["live"]
        }
        return counts
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
            // The leaves are filled by the next migration, with the second level.
        }
        migrator.registerMigration("v12-merkle-slots") { db in
            // A key's slot, computed in SQL from the key, replaces its bucket (the slot's first byte).
            let slotOfKey = DatabaseFunction("meridian_merkle_slot", argumentCount: 1, pure: true) { values in
                guard let text = String.fromDatabaseValue(values[0]), let key = try? Key(text) else {
                    throw MeridianError(.storageFailure, "The store holds a key that is not a valid key; it cannot be given a Merkle slot.")
                }
                return MerkleTree.slot(of: key)
            }
            db.add(function: slotOfKey)
            defer { db.remove(function: slotOfKey) }
            try db.execute(sql: """
                ALTER TABLE kv RENAME COLUMN bucket TO slot;
                UPDATE kv SET slot = meridian_merkle_slot(key);
                CREATE INDEX kv_slot ON kv (keyspace, slot, key);
                ALTER TABLE merkle_leaves ADD COLUMN live INTEGER NOT NULL DEFAULT 0;
                DELETE FROM merkle_leaves;
                CREATE TABLE merkle_slots (
                    keyspace TEXT NOT NULL, slot INTEGER NOT NULL,
                    l0 INTEGER NOT NULL, l1 INTEGER NOT NULL, l2 INTEGER NOT NULL, l3 INTEGER NOT NULL,
                    l4 INTEGER NOT NULL, l5 INTEGER NOT NULL, l6 INTEGER NOT NULL, l7 INTEGER NOT NULL, keys INTEGER NOT NULL,
                    PRIMARY KEY (keyspace, slot)) WITHOUT ROWID;
                CREATE TABLE merkle_slot_deltas (id INTEGER PRIMARY KEY, keyspace TEXT NOT NULL, deltas BLOB NOT NULL);
                """)
            // Every key held, once: its item hash (computed for a row that has none) into its slot and bucket.
            var deltas = Deltas()
            for name in try String.fetchAll(db, sql: "SELECT DISTINCT keyspace FROM kv") {
                let keyspace = try KeyspaceName(name)
                var missing: [(key: Key, slot: Int, live: Bool)] = []
                let rows = try Row.fetchCursor(db, sql: "SELECT key, slot, item, tombstone FROM kv WHERE keyspace = ?", arguments: [name])
                while let row = try rows.next() {
                    let live = !(row["tombstone"] as Bool)
                    if let item = row["item"] as Data?, item.count == 32 {
                        deltas.moved(keyspace, slot: row["slot"], from: nil, to: Held(item: MerkleTree.Leaf(bytes: Array(item)), live: live))
                    } else {
                        missing.append((try Key(row["key"] as String), row["slot"], live))
                    }
                }
                for row in missing {
                    guard let state = try KeyStateRows.load(db, keyspace, row.key) else { continue }
                    let item = MerkleTree.item(row.key, state: state)
                    try db.execute(sql: "UPDATE kv SET item = ? WHERE keyspace = ? AND key = ?", arguments: [Data(item.bytes), name, row.key.rawValue])
                    deltas.moved(keyspace, slot: row.slot, from: nil, to: Held(item: item, live: row.live))
                }
            }
            try write(db, deltas)
            try fold(db)
        }
    }
}
