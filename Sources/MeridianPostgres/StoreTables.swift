import Foundation
import Logging
import MeridianCore
import MeridianStorage
import PostgresNIO

// The statements of the PostgreSQL store, one namespace per table. Unsigned numbers are kept in bigint columns by
// their bit pattern (sequences and timestamps never reach 2^63).

func sql(_ value: UInt64) -> Int64 { Int64(bitPattern: value) }
func unsigned(_ value: Int64) -> UInt64 { UInt64(bitPattern: value) }

extension PostgresFailure {
    /// Runs a decoding step, its failures typed: what the database holds is not what this code wrote.
    static func decoding<T>(_ what: String, _ body: () throws -> T) throws(MeridianError) -> T {
        do {
            return try body()
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.storageFailure, "The region's PostgreSQL database holds \(what) this build cannot read (\(error)).")
        }
    }
}

extension ByteBuffer {
    var bytes: [UInt8] { Array(readableBytesView) }
}

/// Bytes bound as `bytea` (an array of bytes would bind as PostgreSQL's `"char"[]`).
func bytea(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// The store's one row.
struct StoreRow: Sendable {
    var nextSequence: UInt64
    var logFloor: UInt64
    var hlc: HLCTimestamp
    var restorePending: UInt64?
    var auditAnchor: AuditAnchor

    /// The row, created for `region` if the database is new. - Throws: `storage_failure` when the database belongs to
    /// another region.
    static func claim(_ client: PostgresClient, region: RegionName, logger: Logger) async throws -> StoreRow {
        try await client.withConnection { connection in
            try await connection.query("""
                INSERT INTO meridian_store (region, next_sequence, log_floor, hlc_physical_ms, hlc_logical, audit_anchor_hash)
                VALUES (\(region.rawValue), 1, 0, 0, 0, \(bytea(AuditChain.genesis))) ON CONFLICT (singleton) DO NOTHING
                """, logger: logger)
            return try await read(connection, region: region, logger: logger)
        }
    }

    /// The database's identity: its cluster's system identifier and the timeline its WAL is written on. Promoting a
    /// standby (a failover) starts a new timeline, as does a point-in-time restore; a copy into another cluster has
    /// another system identifier. Restarts and crash recovery change neither.
    static func databaseIdentity(_ connection: PostgresConnection, logger: Logger) async throws -> String {
        let rows = try await connection.query("""
            SELECT (SELECT system_identifier FROM pg_control_system())::text, pg_walfile_name(pg_current_wal_lsn())
            """, logger: logger).collect()
        guard let (system, walFile) = try rows.first?.decode((String, String).self) else {
            throw MeridianError(.storageFailure, "The region's PostgreSQL did not say which cluster and timeline it runs on.")
        }
        return "\(system)/\(walFile.prefix(8))"
    }

    /// Notes the database's identity. When it changed since the store last noted it, the database may have lost
    /// commits other regions hold (an asynchronous standby promoted, a restore), and would give their log numbers
    /// to other writes: the store is then marked restored, so the region catches up from its peers and numbers its
    /// log above everything they hold before it takes a write.
    /// - Returns: The identity now, and the one before when it changed (and the store was marked restored).
    static func noteIdentity(_ client: PostgresClient, region: RegionName, logger: Logger) async throws -> (now: String, changedFrom: String?) {
        // Read first: the usual start finds it unchanged, and writes nothing (a lock would cost a WAL sync).
        let unchanged = try await client.withConnection { connection -> String? in
            let now = try await databaseIdentity(connection, logger: logger)
            let rows = try await connection.query("SELECT database_identity FROM meridian_store", logger: logger).collect()
            return try rows.first?.decode(String?.self) == now ? now : nil
        }
        if let unchanged { return (unchanged, nil) }
        return try await client.withTransaction(logger: logger) { connection -> (now: String, changedFrom: String?) in
            _ = try await lock(connection, region: region, logger: logger)
            let now = try await databaseIdentity(connection, logger: logger)
            let rows = try await connection.query("SELECT database_identity FROM meridian_store", logger: logger).collect()
            let before = try rows.first?.decode(String?.self) ?? nil
            guard before != now else { return (now, nil) }
            try await connection.query("""
                UPDATE meridian_store SET database_identity = \(now),
                    restore_pending = CASE WHEN \(before)::text IS NULL THEN restore_pending ELSE coalesce(restore_pending, next_sequence - 1) END
                """, logger: logger)
            return (now, before)
        }
    }

    /// The timeline part of an identity (the first 8 hexadecimal digits of a WAL file's name).
    static func timeline(_ identity: String) -> String {
        String(identity.split(separator: "/").last ?? "")
    }

    static func read(_ connection: PostgresConnection, region: RegionName, logger: Logger) async throws -> StoreRow {
        try await select(connection, region: region, "SELECT region, next_sequence, log_floor, hlc_physical_ms, hlc_logical, restore_pending, audit_anchor_sequence, audit_anchor_hash FROM meridian_store", logger: logger)
    }

    /// The row, locked until the transaction ends.
    static func lock(_ connection: PostgresConnection, region: RegionName, logger: Logger) async throws -> StoreRow {
        try await select(connection, region: region, "SELECT region, next_sequence, log_floor, hlc_physical_ms, hlc_logical, restore_pending, audit_anchor_sequence, audit_anchor_hash FROM meridian_store FOR UPDATE", logger: logger)
    }

    private static func select(_ connection: PostgresConnection, region: RegionName, _ statement: String, logger: Logger) async throws -> StoreRow {
        guard let row = try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger).collect().first else {
            throw MeridianError(.storageFailure, "The region's PostgreSQL database has no store row; its schema was changed by hand.")
        }
        let (owner, next, floor, physical, logical, pending, anchorSequence, anchorHash) =
            try row.decode((String, Int64, Int64, Int64, Int64, Int64?, Int64, ByteBuffer).self)
        guard owner == region.rawValue else {
            throw MeridianError(.storageFailure, "This PostgreSQL database holds region '\(owner)''s store, not '\(region)''s. Give each region a database of its own.",
                                context: ["data_region": owner, "region": region.rawValue])
        }
        return StoreRow(nextSequence: unsigned(next), logFloor: unsigned(floor),
                        hlc: HLCTimestamp(physicalMs: unsigned(physical), logical: UInt32(clamping: logical), region: region),
                        restorePending: pending.map(unsigned), auditAnchor: AuditAnchor(sequence: unsigned(anchorSequence), hash: anchorHash.bytes))
    }

    /// Records the clock's newest timestamp (never lowering it) and, for a write, the log's next number.
    static func update(_ connection: PostgresConnection, nextSequence: UInt64? = nil, hlc: HLCTimestamp, logger: Logger) async throws {
        let (physical, logical) = (sql(hlc.physicalMs), Int64(hlc.logical))
        try await connection.query("""
            UPDATE meridian_store SET next_sequence = coalesce(\(nextSequence.map(sql))::bigint, next_sequence),
                hlc_physical_ms = CASE WHEN (hlc_physical_ms, hlc_logical) < (\(physical), \(logical)) THEN \(physical) ELSE hlc_physical_ms END,
                hlc_logical = CASE WHEN (hlc_physical_ms, hlc_logical) < (\(physical), \(logical)) THEN \(logical) ELSE hlc_logical END
            """, logger: logger)
    }
}

enum KeyTable {
    /// Rows read per statement when scanning.
    static let pageRows = 500

    static func state(_ connection: PostgresConnection, _ keyspace: KeyspaceName, _ key: Key, logger: Logger) async throws -> KeyState? {
        guard let row = try await connection.query("""
            SELECT key, state FROM meridian_keys WHERE keyspace = \(keyspace.rawValue) AND key = \(key.rawValue)
            """, logger: logger).collect().first else { return nil }
        return try decode(row).state
    }

    static func decode(_ row: PostgresRow) throws -> (key: Key, state: KeyState) {
        let (key, bytes) = try row.decode((String, ByteBuffer).self)
        return (try Key(key), try KeyStateCodec.decodeState(bytes.bytes, valueBytesMax: PostgresStore.stateBytesMax))
    }

    static func put(_ connection: PostgresConnection, _ keyspace: KeyspaceName, _ key: Key, _ state: KeyState, rule: ConflictRule, logger: Logger) async throws {
        let live = !state.winner(rule).tombstone
        try await connection.query("""
            INSERT INTO meridian_keys (keyspace, key, slot, live, state)
            VALUES (\(keyspace.rawValue), \(key.rawValue), \(Int32(MerkleTree.slot(of: key))), \(live), \(bytea(KeyStateCodec.encode(state))))
            ON CONFLICT (keyspace, key) DO UPDATE SET live = excluded.live, state = excluded.state
            """, logger: logger)
    }
}

enum LogTable {
    static func append(_ connection: PostgresConnection, _ entry: ReplicationEntry, codec: EntryCodec, logger: Logger) async throws {
        try await connection.query("""
            INSERT INTO meridian_log (origin, sequence, keyspace, epoch, entry)
            VALUES (\(entry.origin.rawValue), \(sql(entry.sequence)), \(entry.keyspace.rawValue), \(sql(entry.epoch)), \(bytea(codec.encode(entry))))
            """, logger: logger)
    }
}

enum AppliedTable {
    static func sequence(_ connection: PostgresConnection, _ origin: RegionName, logger: Logger) async throws -> UInt64 {
        try await connection.query("SELECT sequence FROM meridian_applied WHERE origin = \(origin.rawValue)", logger: logger)
            .collect().first.map { unsigned(try $0.decode(Int64.self)) } ?? 0
    }

    static func set(_ connection: PostgresConnection, _ origin: RegionName, _ sequence: UInt64, logger: Logger) async throws {
        try await connection.query("""
            INSERT INTO meridian_applied (origin, sequence) VALUES (\(origin.rawValue), \(sql(sequence)))
            ON CONFLICT (origin) DO UPDATE SET sequence = excluded.sequence
            """, logger: logger)
    }
}

enum TermTable {
    /// Records these terms' writes as held up to their `last`, never lowering.
    static func raise(_ connection: PostgresConnection, _ keyspace: KeyspaceName, _ terms: [TermEnd], logger: Logger) async throws {
        for term in terms {
            try await connection.query("""
                INSERT INTO meridian_terms (keyspace, origin, epoch, last) VALUES (\(keyspace.rawValue), \(term.leader.rawValue), \(sql(term.epoch)), \(sql(term.last)))
                ON CONFLICT (keyspace, origin, epoch) DO UPDATE SET last = greatest(meridian_terms.last, excluded.last)
                """, logger: logger)
        }
    }
}

enum ConflictTable {
    /// Brings the conflicts log in line with a key's change, as the other backends do: each loser recorded once
    /// (naming its latest winner), a restored version's record removed, the oldest dropped past the bound.
    static func record(_ change: KeyChange, keyspace: KeyspaceName, key: Key, _ connection: PostgresConnection, nowMs: UInt64, limits: Limits,
                       logger: Logger) async throws -> PostgresStore.Recorded {
        if let restored = change.restored {
            let removed = try await connection.query("""
                DELETE FROM meridian_conflicts WHERE keyspace = \(keyspace.rawValue) AND key = \(key.rawValue)
                AND loser_origin = \(restored.region.rawValue) AND loser_sequence = \(sql(restored.counter)) RETURNING id
                """, logger: logger).collect().count
            if removed > 0 { try await count(connection, keyspace, by: -Int64(removed), logger: logger) }
        }
        var recorded = PostgresStore.Recorded()
        for loss in change.losses {
            let (loser, winner) = (loss.loser.version, loss.winner.version)
            let updated = try await connection.query("""
                UPDATE meridian_conflicts SET winner_origin = \(winner.origin.rawValue), winner_sequence = \(sql(winner.sequence)),
                    winner_hlc_physical_ms = \(sql(winner.hlc.physicalMs)), winner_hlc_logical = \(Int64(winner.hlc.logical))
                WHERE keyspace = \(keyspace.rawValue) AND key = \(key.rawValue) AND loser_origin = \(loser.origin.rawValue) AND loser_sequence = \(sql(loser.sequence))
                RETURNING id
                """, logger: logger).collect()
            guard updated.isEmpty else { continue }
            try await connection.query("""
                INSERT INTO meridian_conflicts (keyspace, key, rule, recorded_ms, loser_origin, loser_sequence, loser_hlc_physical_ms, loser_hlc_logical,
                    loser_tombstone, loser_content_type, loser_value, winner_origin, winner_sequence, winner_hlc_physical_ms, winner_hlc_logical)
                VALUES (\(keyspace.rawValue), \(key.rawValue), \(loss.rule), \(sql(nowMs)),
                    \(loser.origin.rawValue), \(sql(loser.sequence)), \(sql(loser.hlc.physicalMs)), \(Int64(loser.hlc.logical)), \(loss.loser.tombstone),
                    \(loss.loser.contentType), \(bytea(loss.loser.value)), \(winner.origin.rawValue), \(sql(winner.sequence)), \(sql(winner.hlc.physicalMs)),
                    \(Int64(winner.hlc.logical)))
                """, logger: logger)
            recorded.added += 1
            let held = try await count(connection, keyspace, by: 1, logger: logger)
            if held > limits.conflictsLogMax {
                let excess = held - Int64(limits.conflictsLogMax)
                let dropped = try await connection.query("""
                    DELETE FROM meridian_conflicts WHERE id IN
                        (SELECT id FROM meridian_conflicts WHERE keyspace = \(keyspace.rawValue) ORDER BY id LIMIT \(excess)) RETURNING id
                    """, logger: logger).collect().count
                try await count(connection, keyspace, by: -Int64(dropped), logger: logger)
                recorded.dropped += dropped
            }
        }
        return recorded
    }

    /// Moves a keyspace's record count (kept beside the records, so the bound is checked without counting them).
    /// - Returns: The count afterwards.
    @discardableResult
    static func count(_ connection: PostgresConnection, _ keyspace: KeyspaceName, by delta: Int64, logger: Logger) async throws -> Int64 {
        try await connection.query("""
            INSERT INTO meridian_conflict_counts (keyspace, records) VALUES (\(keyspace.rawValue), \(max(delta, 0)))
            ON CONFLICT (keyspace) DO UPDATE SET records = greatest(meridian_conflict_counts.records + \(delta), 0) RETURNING records
            """, logger: logger).collect().first?.decode(Int64.self) ?? 0
    }

    static func decode(_ row: PostgresRow, keyspace: KeyspaceName) throws -> ConflictRecord {
        let (id, key, rule, recordedMs, loserOrigin, loserSequence, loserPhysical, loserLogical, tombstone, contentType, value,
             winnerOrigin, winnerSequence, winnerPhysical, winnerLogical) =
            try row.decode((Int64, String, String, Int64, String, Int64, Int64, Int64, Bool, String, ByteBuffer, String, Int64, Int64, Int64).self)
        let loser = Version(hlc: HLCTimestamp(physicalMs: unsigned(loserPhysical), logical: UInt32(clamping: loserLogical), region: try RegionName(loserOrigin)),
                            sequence: unsigned(loserSequence))
        let winner = Version(hlc: HLCTimestamp(physicalMs: unsigned(winnerPhysical), logical: UInt32(clamping: winnerLogical), region: try RegionName(winnerOrigin)),
                             sequence: unsigned(winnerSequence))
        return ConflictRecord(id: id, keyspace: keyspace, key: try Key(key), rule: rule, recordedMs: unsigned(recordedMs),
                              loser: KeyVersion(version: loser, tombstone: tombstone, contentType: contentType, value: value.bytes), winner: winner)
    }

    static let columns = """
        id, key, rule, recorded_ms, loser_origin, loser_sequence, loser_hlc_physical_ms, loser_hlc_logical, loser_tombstone, loser_content_type,
        loser_value, winner_origin, winner_sequence, winner_hlc_physical_ms, winner_hlc_logical
        """
}

enum IdempotencyTable {
    /// The record of `key` in `keyspace` if it is still within `idempotency_ttl_ms` at `nowMs`.
    static func live(_ connection: PostgresConnection, _ keyspace: KeyspaceName, _ key: IdempotencyKey, nowMs: UInt64, limits: Limits,
                     logger: Logger) async throws -> IdempotencyRecord? {
        guard let row = try await connection.query("""
            SELECT fingerprint, key, origin, sequence, hlc_physical_ms, hlc_logical, operation, epoch, recorded_ms FROM meridian_idempotency
            WHERE keyspace = \(keyspace.rawValue) AND idempotency_key = \(key.rawValue)
            """, logger: logger).collect().first else { return nil }
        let (fingerprint, target, origin, sequence, physical, logical, operation, epoch, recordedMs) =
            try row.decode((ByteBuffer, String, String, Int64, Int64, Int64, Int16, Int64, Int64).self)
        guard let operation = MeridianCore.Operation(rawValue: UInt8(clamping: operation)), fingerprint.readableBytes == IdempotencyMark.fingerprintBytes else {
            throw MeridianError(.storageFailure, "The idempotency table holds a malformed record for key '\(key)'.")
        }
        let version = Version(hlc: HLCTimestamp(physicalMs: unsigned(physical), logical: UInt32(clamping: logical), region: try RegionName(origin)),
                              sequence: unsigned(sequence))
        let record = IdempotencyRecord(keyspace: keyspace, mark: IdempotencyMark(key: key, fingerprint: fingerprint.bytes), key: try Key(target),
                                       version: version, operation: operation, epoch: unsigned(epoch), recordedMs: unsigned(recordedMs))
        return record.isLive(nowMs: nowMs, ttlMs: UInt64(limits.idempotencyTtlMs)) ? record : nil
    }

    /// Records an applied entry's mark, unless its key has a live record (the first outcome answers retries).
    /// - Returns: how many records were written (0 or 1).
    static func remember(_ connection: PostgresConnection, _ entry: ReplicationEntry, nowMs: UInt64, limits: Limits, logger: Logger) async throws -> Int {
        guard let mark = entry.idempotency else { return 0 }
        let expiredBefore = Int64(nowMs) - Int64(limits.idempotencyTtlMs)
        let written = try await connection.query("""
            INSERT INTO meridian_idempotency (keyspace, idempotency_key, fingerprint, key, origin, sequence, hlc_physical_ms, hlc_logical, operation, epoch, recorded_ms)
            VALUES (\(entry.keyspace.rawValue), \(mark.key.rawValue), \(bytea(mark.fingerprint)), \(entry.key.rawValue), \(entry.origin.rawValue), \(sql(entry.sequence)),
                \(sql(entry.hlc.physicalMs)), \(Int64(entry.hlc.logical)), \(Int16(entry.operation.rawValue)), \(sql(entry.epoch)), \(sql(nowMs)))
            ON CONFLICT (keyspace, idempotency_key) DO UPDATE SET
                fingerprint = excluded.fingerprint, key = excluded.key, origin = excluded.origin, sequence = excluded.sequence,
                hlc_physical_ms = excluded.hlc_physical_ms, hlc_logical = excluded.hlc_logical, operation = excluded.operation,
                epoch = excluded.epoch, recorded_ms = excluded.recorded_ms
            WHERE meridian_idempotency.recorded_ms <= \(expiredBefore)
            RETURNING 1
            """, logger: logger).collect()
        return written.count
    }

    /// How many records may be written between two prunes: the table holds at most a sixteenth more than its bound
    /// (per node writing).
    static func pruneEvery(_ limits: Limits) -> Int { max(1, min(256, limits.idempotencyKeysMax / 16)) }

    /// Forgets expired records, then the oldest past `idempotency_keys_max`. - Returns: live records forgotten early.
    static func prune(_ connection: PostgresConnection, nowMs: UInt64, limits: Limits, logger: Logger) async throws -> Int {
        try await connection.query("DELETE FROM meridian_idempotency WHERE recorded_ms <= \(Int64(nowMs) - Int64(limits.idempotencyTtlMs))", logger: logger)
        let held = try await connection.query("SELECT count(*) FROM meridian_idempotency", logger: logger).collect().first?.decode(Int64.self) ?? 0
        guard held > limits.idempotencyKeysMax else { return 0 }
        let excess = held - Int64(limits.idempotencyKeysMax)
        try await connection.query("""
            DELETE FROM meridian_idempotency WHERE (keyspace, idempotency_key) IN
                (SELECT keyspace, idempotency_key FROM meridian_idempotency ORDER BY recorded_ms LIMIT \(excess))
            """, logger: logger)
        return Int(excess)
    }
}

enum DivergenceTable {
    /// Keeps an entry aside (once: a second time changes nothing).
    static func insert(_ entry: ReplicationEntry, successorEpoch: UInt64, _ connection: PostgresConnection, codec: EntryCodec, nowMs: UInt64,
                       logger: Logger) async throws {
        try await connection.query("""
            INSERT INTO meridian_divergence (keyspace, origin, sequence, successor_epoch, entry, recorded_ms)
            VALUES (\(entry.keyspace.rawValue), \(entry.origin.rawValue), \(sql(entry.sequence)),
                \(sql(successorEpoch)), \(bytea(codec.encode(entry))), \(sql(nowMs)))
            ON CONFLICT (origin, sequence) DO NOTHING
            """, logger: logger)
    }

    static let columns = "id, successor_epoch, entry, recorded_ms, reapplied_ms"

    static func decode(_ row: PostgresRow, codec: EntryCodec) throws -> DivergedWrite {
        let (id, successor, bytes, recordedMs, reappliedMs) = try row.decode((Int64, Int64, ByteBuffer, Int64, Int64?).self)
        let entry = try codec.decode(bytes.readableBytesView)
        return DivergedWrite(id: id, keyspace: entry.keyspace, key: entry.key, origin: entry.origin, sequence: entry.sequence, epoch: entry.epoch,
                             successorEpoch: unsigned(successor), hlc: entry.hlc, operation: entry.operation, contentType: entry.contentType,
                             value: entry.value, recordedMs: unsigned(recordedMs), reappliedMs: reappliedMs.map(unsigned))
    }
}
