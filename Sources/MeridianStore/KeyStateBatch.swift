import Foundation
import GRDB
import MeridianCore
import MeridianStorage

/// The key states one write transaction works on: read in bulk, changed in memory as the transaction's writes
/// apply one after another, and written once per key at the end (``write(_:nowMs:limits:)``).
///
/// A batch of n entries to k keys costs about k/32 reads, k row writes and a few statements for its losers,
/// instead of n reads, n writes and four statements per loser. Nothing else in the transaction may read or
/// write `kv`, `frontier` or `conflicts` between the first read and ``write(_:nowMs:limits:)``.
struct KeyStateBatch {
    struct StateKey: Hashable {
        let keyspace: KeyspaceName
        let key: Key
    }

    private struct Held {
        /// The state as stored, which of its versions `kv` holds (the others are `frontier` rows), and what it
        /// contributes to its Merkle slot.
        let stored: KeyState?
        let storedWinner: Dot?
        var storedLeaf: MerkleRows.Held?
        var storedSlot: Int?
        var current: KeyState?
        var rule: ConflictRule?
    }

    private var held: [StateKey: Held] = [:]
    /// Keys changed, in the order of their first change.
    private var changed: [StateKey] = []
    private var ledger = ConflictLedger()

    /// Reads the states of these keys not read yet, in a few statements.
    mutating func read(_ db: Database, _ keys: some Sequence<StateKey>) throws {
        var wanted: [KeyspaceName: [Key]] = [:]
        var seen = Set<StateKey>()
        for key in keys where held[key] == nil && seen.insert(key).inserted { wanted[key.keyspace, default: []].append(key.key) }
        for (keyspace, keys) in wanted {
            for start in stride(from: 0, to: keys.count, by: KeyStateRows.readChunk) {
                let chunk = keys[start..<min(start + KeyStateRows.readChunk, keys.count)]
                for (key, row) in try KeyStateRows.loadStored(db, keyspace, Array(chunk)) {
                    held[StateKey(keyspace: keyspace, key: key)] = Held(stored: row.state, storedWinner: row.winner, storedLeaf: row.held, storedSlot: row.slot,
                                                                        current: row.state)
                }
                for key in chunk where held[StateKey(keyspace: keyspace, key: key)] == nil {
                    held[StateKey(keyspace: keyspace, key: key)] = Held(stored: nil, storedWinner: nil, storedLeaf: nil, storedSlot: nil, current: nil)
                }
            }
        }
    }

    /// The key's state as the transaction's writes so far left it.
    mutating func state(_ db: Database, _ keyspace: KeyspaceName, _ key: Key) throws -> KeyState? {
        let stateKey = StateKey(keyspace: keyspace, key: key)
        if held[stateKey] == nil { try read(db, CollectionOfOne(stateKey)) }
        return held[stateKey]?.current
    }

    /// Applies one entry of any origin to its key under `rule`; its losers are recorded at the end.
    /// - Parameter sealer: Given, a sealed keyspace's entry and state are sealed, and so is the change.
    mutating func apply(_ db: Database, _ entry: ReplicationEntry, rule: ConflictRule, sealer: ValueSealer?) throws {
        let state = try state(db, entry.keyspace, entry.key)
        let change = try sealer.map { try $0.change(applying: entry, rule: rule, to: state, in: DataKeyRows(db: db)) }
            ?? KeyChange.applying(entry, rule: rule, to: state)
        guard let change else { return }
        set(entry.keyspace, entry.key, change.state, rule: rule)
        ledger.note(entry.keyspace, entry.key, change)
    }

    /// Sets a key's state (read before with ``state(_:_:_:)``) and records what `change` discards or restores.
    mutating func set(_ keyspace: KeyspaceName, _ key: Key, _ state: KeyState, rule: ConflictRule, change: KeyChange? = nil) {
        let stateKey = StateKey(keyspace: keyspace, key: key)
        guard var row = held[stateKey] else { preconditionFailure("a key's state is set only after it was read") }
        if row.rule == nil { changed.append(stateKey) }
        row.current = state
        row.rule = rule
        held[stateKey] = row
        if let change { ledger.note(keyspace, key, change) }
    }

    /// Writes every changed key once, the Merkle leaves they moved, and the conflicts log's records.
    func write(_ db: Database, nowMs: UInt64, limits: Limits) throws -> [KeyspaceName: KeyStateRows.Applied] {
        let upsert = try DirectStatement(db, sql: KeyStateRows.upsertSQL)
        var leaves = MerkleRows.Deltas()
        for stateKey in changed {
            let row = held[stateKey]!
            guard let current = row.current, let rule = row.rule else { continue }
            let placed = try KeyStateRows.store(db, stateKey.keyspace, stateKey.key, old: row.stored, storedWinner: row.storedWinner, new: current,
                                                rule: rule, upsert: upsert, slot: row.storedSlot)
            leaves.moved(stateKey.keyspace, slot: placed.slot, from: row.storedLeaf, to: placed.held)
        }
        try MerkleRows.write(db, leaves)
        return try ledger.write(db, nowMs: nowMs, limits: limits)
    }
}

/// The conflicts log's changes of one transaction, kept per losing write and written together: each loser's
/// last fate counts (recorded with its latest winner, or removed because it won again).
struct ConflictLedger {
    struct Loser: Hashable {
        let keyspace: KeyspaceName
        let key: Key
        let origin: RegionName
        let sequence: UInt64
    }

    enum Fate {
        case lost(loser: KeyVersion, winner: KeyVersion, rule: String)
        case restored
    }

    private var fates: [Loser: Fate] = [:]
    private var order: [Loser] = []

    /// Rows per multi-row insert, and losers per lookup of held records.
    static let insertChunk = 16
    static let lookupChunk = 32

    mutating func note(_ keyspace: KeyspaceName, _ key: Key, _ change: KeyChange) {
        if let restored = change.restored {
            set(Loser(keyspace: keyspace, key: key, origin: restored.region, sequence: restored.counter), .restored)
        }
        for loss in change.losses {
            set(Loser(keyspace: keyspace, key: key, origin: loss.loser.version.origin, sequence: loss.loser.version.sequence),
                .lost(loser: loss.loser, winner: loss.winner, rule: loss.rule))
        }
    }

    private mutating func set(_ loser: Loser, _ fate: Fate) {
        if fates.updateValue(fate, forKey: loser) == nil { order.append(loser) }
    }

    /// Brings the conflicts log in line: new losers inserted (in the order they first lost), held ones pointed at
    /// their latest winner, restored ones removed; then each keyspace's count moves once and, beyond the limit,
    /// its oldest records go.
    func write(_ db: Database, nowMs: UInt64, limits: Limits) throws -> [KeyspaceName: KeyStateRows.Applied] {
        guard !order.isEmpty else { return [:] }
        let held = try heldRecords(db)
        var applied: [KeyspaceName: KeyStateRows.Applied] = [:]
        var deltas: [KeyspaceName: Int] = [:]
        var inserts: [(loser: Loser, version: KeyVersion, winner: KeyVersion, rule: String)] = []
        for loser in order {
            var base: StatementArguments { [loser.keyspace.rawValue, loser.key.rawValue, loser.origin.rawValue, Int64(loser.sequence)] }
            switch fates[loser]! {
            case .restored:
                guard held.contains(loser) else { continue }
                try db.cachedStatement(sql: "DELETE FROM conflicts WHERE keyspace = ? AND key = ? AND loser_origin = ? AND loser_sequence = ?")
                    .execute(arguments: base)
                deltas[loser.keyspace, default: 0] -= 1
            case .lost(let version, let winner, let rule):
                if held.contains(loser) {
                    let winnerArguments: StatementArguments = [
                        winner.version.origin.rawValue, Int64(winner.version.sequence), Int64(winner.version.hlc.physicalMs), Int64(winner.version.hlc.logical),
                    ]
                    // Lost again, perhaps to another winner: the record names the latest.
                    try db.cachedStatement(sql: """
                        UPDATE conflicts SET winner_origin = ?, winner_sequence = ?, winner_hlc_physical_ms = ?, winner_hlc_logical = ?
                        WHERE keyspace = ? AND key = ? AND loser_origin = ? AND loser_sequence = ?
                        """).execute(arguments: winnerArguments + base)
                    continue
                }
                inserts.append((loser, version, winner, rule))
                deltas[loser.keyspace, default: 0] += 1
                applied[loser.keyspace, default: .init()].conflictsRecorded += 1
            }
        }
        try insert(db, inserts, nowMs: nowMs)
        for (keyspace, delta) in deltas.sorted(by: { $0.key.rawValue < $1.key.rawValue }) where delta != 0 {
            let records = try KeyStateRows.count(db, keyspace, by: delta)
            guard records > limits.conflictsLogMax else { continue }
            // Bounded retention: beyond the limit the oldest records of the keyspace go.
            try db.cachedStatement(sql: """
                DELETE FROM conflicts WHERE id IN (SELECT id FROM conflicts WHERE keyspace = ? ORDER BY id LIMIT ?)
                """).execute(arguments: [keyspace.rawValue, records - limits.conflictsLogMax])
            let dropped = db.changesCount
            try KeyStateRows.count(db, keyspace, by: -dropped)
            applied[keyspace, default: .init()].conflictsDropped += dropped
        }
        return applied
    }

    private static let columns = """
        keyspace, key, loser_origin, loser_sequence, winner_origin, winner_sequence, winner_hlc_physical_ms, winner_hlc_logical,
        rule, recorded_ms, loser_hlc_physical_ms, loser_hlc_logical, loser_tombstone, loser_content_type, loser_value
        """
    private static let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    private static let lookup = """
        WITH wanted (key, origin, sequence) AS (VALUES \(Array(repeating: "(?, ?, ?)", count: lookupChunk).joined(separator: ", ")))
        SELECT c.key, c.loser_origin, c.loser_sequence FROM wanted CROSS JOIN conflicts c
        ON c.keyspace = ? AND c.key = wanted.key AND c.loser_origin = wanted.origin AND c.loser_sequence = wanted.sequence
        """
    private static let insertRows = "INSERT INTO conflicts (\(columns)) VALUES " + Array(repeating: row, count: insertChunk).joined(separator: ", ")

    /// New records, `insertChunk` rows per statement and the rest one by one, in order (ids grow in loss order).
    private func insert(_ db: Database, _ rows: [(loser: Loser, version: KeyVersion, winner: KeyVersion, rule: String)], nowMs: UInt64) throws {
        func bind(_ item: (loser: Loser, version: KeyVersion, winner: KeyVersion, rule: String), _ row: inout DirectStatement.Binder) {
            row.bind(item.loser.keyspace.rawValue)
            row.bind(item.loser.key.rawValue)
            row.bind(item.loser.origin.rawValue)
            row.bind(item.loser.sequence)
            row.bind(item.winner.version.origin.rawValue)
            row.bind(item.winner.version.sequence)
            row.bind(item.winner.version.hlc.physicalMs)
            row.bind(Int64(item.winner.version.hlc.logical))
            row.bind(item.rule)
            row.bind(nowMs)
            row.bind(item.version.version.hlc.physicalMs)
            row.bind(Int64(item.version.version.hlc.logical))
            row.bind(item.version.tombstone)
            row.bind(item.version.contentType)
            row.bind(item.version.value)
        }
        var start = 0
        if rows.count >= Self.insertChunk {
            let statement = try DirectStatement(db, sql: Self.insertRows)
            while rows.count - start >= Self.insertChunk {
                try statement.execute { row in
                    for item in rows[start..<start + Self.insertChunk] { bind(item, &row) }
                }
                start += Self.insertChunk
            }
        }
        if start < rows.count {
            let statement = try DirectStatement(db, sql: "INSERT INTO conflicts (\(Self.columns)) VALUES \(Self.row)")
            for item in rows[start...] { try statement.execute { bind(item, &$0) } }
        }
    }

    /// Which of the noted losers the log holds already, `lookupChunk` per statement (a short list padded).
    private func heldRecords(_ db: Database) throws -> Set<Loser> {
        var held = Set<Loser>()
        let byKeyspace = Dictionary(grouping: order, by: \.keyspace)
        let statement = try DirectStatement(db, sql: Self.lookup)
        for (keyspace, losers) in byKeyspace {
            for start in stride(from: 0, to: losers.count, by: Self.lookupChunk) {
                let chunk = losers[start..<min(start + Self.lookupChunk, losers.count)]
                try statement.query({ row in
                    for index in 0..<Self.lookupChunk {
                        let loser = chunk[chunk.startIndex + min(index, chunk.count - 1)]
                        row.bind(loser.key.rawValue)
                        row.bind(loser.origin.rawValue)
                        row.bind(loser.sequence)
                    }
                    row.bind(keyspace.rawValue)
                }, row: { row in
                    held.insert(Loser(keyspace: keyspace, key: try Key(row.text(0)), origin: try RegionName(row.text(1)), sequence: row.uint64(2)))
                })
            }
        }
        return held
    }
}
