import Foundation
import Logging
import MeridianCore
import MeridianStorage
import PostgresNIO

// The PostgreSQL store's logs beside the keys: conflicts, elections and terms, divergence, failovers, the audit trail,
// and the key table of sealed keyspaces.

extension PostgresStore {
    // MARK: - Conflicts log

    public func conflicts(keyspace: KeyspaceName, key: Key?, after: Int64, limit: Int) async throws(MeridianError) -> [ConflictRecord] {
        precondition(limit > 0)
        let logger = logger
        let sealer = self.sealer?.isSealed(keyspace) == true ? self.sealer : nil
        return try await reading("Reading \(keyspace)'s conflicts") { connection in
            let records = try await connection.query(PostgresQuery(unsafeSQL: """
                SELECT \(ConflictTable.columns) FROM meridian_conflicts WHERE keyspace = $1 AND id > $2 AND ($3::text IS NULL OR key = $3) ORDER BY id LIMIT $4
                """, binds: try Self.binds(keyspace.rawValue, after, key?.rawValue, Int64(limit))), logger: logger).collect()
                .map { try ConflictTable.decode($0, keyspace: keyspace) }
            guard let sealer else { return records }
            var wanted = PrefetchedKeys.Wanted()
            wanted.values(keyspace, records.map(\.loser.value))
            let keys = try await PrefetchedKeys.read(connection, wanted, logger: logger)
            // A record whose value was erased is left out, as the other backends do.
            return try sealerStep("Opening a conflict record") {
                try records.compactMap { record in
                    try ValueSealer.unlessErased {
                        ConflictRecord(id: record.id, keyspace: keyspace, key: record.key, rule: record.rule, recordedMs: record.recordedMs,
                                       loser: try sealer.opened(record.loser, keyspace: keyspace, key: record.key, in: keys), winner: record.winner)
                    }
                }
            }
        }
    }

    public func conflictCounts() async throws(MeridianError) -> [String: Int] {
        try await counts("Counting conflicts", "SELECT keyspace, records FROM meridian_conflict_counts WHERE records > 0")
    }

    /// Counts per name, from a statement selecting a name and a count.
    func counts(_ doing: String, _ statement: String) async throws(MeridianError) -> [String: Int] {
        let logger = logger
        return try await reading(doing) { connection in
            var counts: [String: Int] = [:]
            for row in try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger).collect() {
                let (name, count) = try row.decode((String, Int64).self)
                counts[name] = Int(count)
            }
            return counts
        }
    }

    static func binds(_ values: (any PostgresThrowingDynamicTypeEncodable)?...) throws -> PostgresBindings {
        var bindings = PostgresBindings()
        for value in values {
            if let value { try bindings.append(value) } else { bindings.appendNull() }
        }
        return bindings
    }

    // MARK: - Elections, terms, divergence, failovers

    public func terms(keyspace: KeyspaceName, limit: Int) async throws(MeridianError) -> [TermEnd] {
        let logger = logger
        return try await reading("Reading \(keyspace)'s terms") { connection in
            try await connection.query("""
                SELECT origin, epoch, last FROM meridian_terms WHERE keyspace = \(keyspace.rawValue) ORDER BY epoch DESC, origin DESC LIMIT \(Int64(limit))
                """, logger: logger).collect().map { row in
                let (origin, epoch, last) = try row.decode((String, Int64, Int64).self)
                return TermEnd(epoch: unsigned(epoch), leader: try RegionName(origin), last: unsigned(last))
            }
        }
    }

    public func raiseTerms(keyspace: KeyspaceName, _ terms: [TermEnd]) async throws(MeridianError) {
        let logger = logger
        try await changing("Raising \(keyspace)'s terms") { connection, _ in try await TermTable.raise(connection, keyspace, terms, logger: logger) }
    }

    public func elections() async throws(MeridianError) -> [KeyspaceName: StoredElection] {
        let logger = logger
        return try await reading("Reading the election state") { connection in
            var result: [KeyspaceName: StoredElection] = [:]
            for row in try await connection.query("SELECT keyspace, epoch, leader, voted_epoch, voted_for, start FROM meridian_elections", logger: logger).collect() {
                let (keyspace, epoch, leader, votedEpoch, votedFor, start) = try row.decode((String, Int64, String?, Int64, String?, String?).self)
                let record = ElectionRecord(epoch: unsigned(epoch), leader: try leader.map { try RegionName($0) }, votedEpoch: unsigned(votedEpoch),
                                            votedFor: try votedFor.map { try RegionName($0) })
                result[try KeyspaceName(keyspace)] = StoredElection(record: record, start: try start.map { try EpochStart(storedText: $0) })
            }
            return result
        }
    }

    public func saveElection(_ keyspace: KeyspaceName, _ election: StoredElection) async throws(MeridianError) {
        let logger = logger
        let record = election.record
        try await changing("Storing \(keyspace)'s election state") { connection, _ in
            try await connection.query("""
                INSERT INTO meridian_elections (keyspace, epoch, leader, voted_epoch, voted_for, start)
                VALUES (\(keyspace.rawValue), \(sql(record.epoch)), \(record.leader?.rawValue), \(sql(record.votedEpoch)), \(record.votedFor?.rawValue),
                    \(election.start?.storedText))
                ON CONFLICT (keyspace) DO UPDATE SET epoch = excluded.epoch, leader = excluded.leader, voted_epoch = excluded.voted_epoch,
                    voted_for = excluded.voted_for, start = excluded.start
                """, logger: logger)
        }
    }

    public func newestEpoch(keyspace: KeyspaceName) async throws(MeridianError) -> (epoch: UInt64, origin: RegionName)? {
        let logger = logger
        let newest = try await reading("Reading \(keyspace)'s newest epoch") { connection -> NewestEpoch? in
            guard let row = try await connection.query("""
                SELECT epoch, origin FROM meridian_log WHERE keyspace = \(keyspace.rawValue) ORDER BY epoch DESC LIMIT 1
                """, logger: logger).collect().first else { return nil }
            let (epoch, origin) = try row.decode((Int64, String).self)
            return NewestEpoch(epoch: unsigned(epoch), origin: try RegionName(origin))
        }
        return newest.map { ($0.epoch, $0.origin) }
    }

    struct NewestEpoch: Sendable {
        let epoch: UInt64
        let origin: RegionName
    }

    public func divertHeld(keyspace: KeyspaceName, origin: RegionName, after: UInt64, epoch: UInt64?, successorEpoch: UInt64,
                           nowMs: UInt64) async throws(MeridianError) -> Set<Key> {
        let (logger, codec) = (logger, codec)
        let epochFilter = epoch.map(sql)
        return try await changing("Keeping \(origin)'s writes to \(keyspace) aside") { connection, _ in
            var keys: Set<Key> = []
            let rows = try await connection.query("""
                SELECT entry FROM meridian_log WHERE origin = \(origin.rawValue) AND sequence > \(sql(after)) AND keyspace = \(keyspace.rawValue)
                AND epoch < \(sql(successorEpoch)) AND (\(epochFilter)::bigint IS NULL OR epoch = \(epochFilter)) ORDER BY sequence
                """, logger: logger).collect()
            for row in rows {
                let entry = try codec.decode(try row.decode(ByteBuffer.self).readableBytesView)
                try await DivergenceTable.insert(entry, successorEpoch: successorEpoch, connection, codec: codec, nowMs: nowMs, logger: logger)
                keys.insert(entry.key)
                Progress.heard()
                // A write kept aside is no longer applied here: a retry of it must apply again.
                if let mark = entry.idempotency {
                    try await connection.query("""
                        DELETE FROM meridian_idempotency WHERE keyspace = \(keyspace.rawValue) AND idempotency_key = \(mark.key.rawValue)
                        AND origin = \(entry.origin.rawValue) AND sequence = \(sql(entry.sequence))
                        """, logger: logger)
                }
            }
            try await connection.query("""
                UPDATE meridian_terms SET last = \(sql(after)) WHERE keyspace = \(keyspace.rawValue) AND origin = \(origin.rawValue)
                AND epoch < \(sql(successorEpoch)) AND (\(epochFilter)::bigint IS NULL OR epoch = \(epochFilter)) AND last > \(sql(after))
                """, logger: logger)
            return keys
        }
    }

    public func loggedThrough(keyspace: KeyspaceName, origin: RegionName, epoch: UInt64) async throws(MeridianError) -> UInt64 {
        let logger = logger
        return try await reading("Reading \(origin)'s log of \(keyspace)") { connection in
            try await connection.query("""
                SELECT coalesce(max(sequence), 0) FROM meridian_log WHERE keyspace = \(keyspace.rawValue) AND origin = \(origin.rawValue) AND epoch = \(sql(epoch))
                """, logger: logger).collect().first.map { unsigned(try $0.decode(Int64.self)) } ?? 0
        }
    }

    public func divergence(keyspace: KeyspaceName?, after: Int64, limit: Int) async throws(MeridianError) -> [DivergedWrite] {
        let (logger, codec, sealer) = (logger, codec, sealer)
        return try await reading("Reading the writes kept aside") { connection in
            let writes = try await connection.query(PostgresQuery(unsafeSQL: """
                SELECT \(DivergenceTable.columns) FROM meridian_divergence WHERE ($1::text IS NULL OR keyspace = $1) AND id > $2 ORDER BY id LIMIT $3
                """, binds: try Self.binds(keyspace?.rawValue, after, Int64(limit))), logger: logger).collect()
                .map { try DivergenceTable.decode($0, codec: codec) }
            let keys = try await Self.keys(opening: writes, sealer: sealer, connection, logger: logger)
            // A write whose value was erased is left out, as the other backends do.
            return try sealerStep("Opening a kept-aside write") {
                try writes.compactMap { write in try ValueSealer.unlessErased { try Self.opened(write, sealer: sealer, keys: keys) } }
            }
        }
    }

    public func divergedWrite(id: Int64) async throws(MeridianError) -> DivergedWrite? {
        let (logger, codec, sealer) = (logger, codec, sealer)
        return try await reading("Reading a write kept aside") { connection in
            guard let write = try await connection.query(PostgresQuery(unsafeSQL: "SELECT \(DivergenceTable.columns) FROM meridian_divergence WHERE id = $1",
                                                                       binds: try Self.binds(id)), logger: logger).collect()
                .first.map({ try DivergenceTable.decode($0, codec: codec) }) else { return nil }
            let keys = try await Self.keys(opening: [write], sealer: sealer, connection, logger: logger)
            return try sealerStep("Opening a kept-aside write") { try Self.opened(write, sealer: sealer, keys: keys) }
        }
    }

    /// The key-table rows that open these writes' values (none when nothing is sealed).
    static func keys(opening writes: [DivergedWrite], sealer: ValueSealer?, _ connection: PostgresConnection, logger: Logger) async throws -> PrefetchedKeys {
        var wanted = PrefetchedKeys.Wanted()
        for write in writes where sealer?.isSealed(write.keyspace) == true { wanted.values(write.keyspace, [write.value]) }
        return try await PrefetchedKeys.read(connection, wanted, logger: logger)
    }

    /// A kept-aside write with its value opened (a sealed keyspace's).
    static func opened(_ write: DivergedWrite, sealer: ValueSealer?, keys: PrefetchedKeys) throws -> DivergedWrite {
        guard let sealer, sealer.isSealed(write.keyspace) else { return write }
        let value = try sealer.open(write.value, keyspace: write.keyspace, key: write.key, version: Version(hlc: write.hlc, sequence: write.sequence), in: keys)
        return DivergedWrite(id: write.id, keyspace: write.keyspace, key: write.key, origin: write.origin, sequence: write.sequence, epoch: write.epoch,
                             successorEpoch: write.successorEpoch, hlc: write.hlc, operation: write.operation, contentType: write.contentType,
                             value: value, recordedMs: write.recordedMs, reappliedMs: write.reappliedMs)
    }

    public func markReapplied(id: Int64, nowMs: UInt64) async throws(MeridianError) -> Bool {
        let logger = logger
        return try await changing("Marking a kept-aside write re-applied") { connection, _ in
            try await !connection.query("""
                UPDATE meridian_divergence SET reapplied_ms = \(sql(nowMs)) WHERE id = \(id) AND reapplied_ms IS NULL RETURNING id
                """, logger: logger).collect().isEmpty
        }
    }

    public func unmarkReapplied(id: Int64) async throws(MeridianError) {
        let logger = logger
        try await changing("Unmarking a kept-aside write") { connection, _ in
            try await connection.query("UPDATE meridian_divergence SET reapplied_ms = NULL WHERE id = \(id)", logger: logger)
        }
    }

    public func divergenceCounts() async throws(MeridianError) -> [String: Int] {
        try await counts("Counting the writes kept aside",
                         "SELECT keyspace || '/' || successor_epoch, count(*) FROM meridian_divergence GROUP BY keyspace, successor_epoch")
    }

    public func recordFailover(keyspace: KeyspaceName, epoch: UInt64, leader: RegionName, previousLeader: RegionName?,
                               lastHeardMs: UInt64?, suspectedMs: UInt64, electedMs: UInt64, reason: String) async throws(MeridianError) {
        let logger = logger
        try await changing("Recording a failover") { connection, _ in
            try await connection.query("""
                INSERT INTO meridian_failovers (keyspace, epoch, leader, previous_leader, last_heard_ms, suspected_ms, elected_ms, reason)
                VALUES (\(keyspace.rawValue), \(sql(epoch)), \(leader.rawValue),
                    \(previousLeader?.rawValue), \(lastHeardMs.map(sql)), \(sql(suspectedMs)), \(sql(electedMs)), \(reason))
                ON CONFLICT (keyspace, epoch) DO NOTHING
                """, logger: logger)
        }
    }

    public func recordFirstWrite(keyspace: KeyspaceName, epoch: UInt64, atMs: UInt64) async throws(MeridianError) {
        let logger = logger
        try await changing("Recording a failover's first write") { connection, _ in
            try await connection.query("""
                UPDATE meridian_failovers SET first_write_ms = \(sql(atMs)) WHERE keyspace = \(keyspace.rawValue) AND epoch = \(sql(epoch))
                AND first_write_ms IS NULL
                """, logger: logger)
        }
    }

    public func failovers(limit: Int) async throws(MeridianError) -> [FailoverEvent] {
        let logger = logger
        return try await reading("Reading the failovers") { connection in
            try await connection.query("""
                SELECT * FROM (SELECT id, keyspace, epoch, leader, previous_leader, last_heard_ms, suspected_ms, elected_ms, first_write_ms, reason
                FROM meridian_failovers ORDER BY id DESC LIMIT \(Int64(limit))) AS newest ORDER BY id
                """, logger: logger).collect().map { row in
                let (id, keyspace, epoch, leader, previous, lastHeard, suspected, elected, firstWrite, reason) =
                    try row.decode((Int64, String, Int64, String, String?, Int64?, Int64, Int64, Int64?, String).self)
                return FailoverEvent(id: id, keyspace: try KeyspaceName(keyspace), epoch: unsigned(epoch), leader: try RegionName(leader),
                                     previousLeader: try previous.map { try RegionName($0) }, lastHeardMs: lastHeard.map(unsigned),
                                     suspectedMs: unsigned(suspected), electedMs: unsigned(elected), firstWriteMs: firstWrite.map(unsigned), reason: reason)
            }
        }
    }

    // MARK: - Audit trail

    public func appendAudit(_ drafts: [AuditDraft]) async throws(MeridianError) -> [AuditRecord] {
        let (region, recordsMax, logger) = (region, limits.auditRecordsMax, logger)
        return try await changing("Appending to the audit trail") { connection, row in
            var chain = try await Self.auditHead(connection, region: region, anchor: row.auditAnchor, logger: logger)
            let records = chain.append(drafts)
            // One statement for the batch.
            let (sequences, times, kinds) = (records.map { sql($0.sequence) }, records.map { sql($0.timeMs) }, records.map(\.kind.rawValue))
            let (fields, previous, hashes) = (try records.map { try Self.fieldsText($0.fields) }, records.map { bytea($0.previous) }, records.map { bytea($0.hash) })
            try await connection.query("""
                INSERT INTO meridian_audit (sequence, time_ms, kind, fields, previous, hash)
                SELECT * FROM unnest(\(sequences)::bigint[], \(times)::bigint[], \(kinds)::text[], \(fields)::text[], \(previous)::bytea[], \(hashes)::bytea[])
                """, logger: logger)
            // Retention: the oldest records go; the last one dropped becomes the anchor the rest chain from.
            let floor = Int64(chain.sequence) - Int64(recordsMax)
            if floor > 0, let last = try await connection.query("""
                SELECT sequence, hash FROM meridian_audit WHERE sequence <= \(floor) ORDER BY sequence DESC LIMIT 1
                """, logger: logger).collect().first.map({ try $0.decode((Int64, ByteBuffer).self) }) {
                try await connection.query("DELETE FROM meridian_audit WHERE sequence <= \(floor)", logger: logger)
                try await connection.query("UPDATE meridian_store SET audit_anchor_sequence = \(last.0), audit_anchor_hash = \(last.1)", logger: logger)
            }
            return records
        }
    }

    public func auditRecords(after: UInt64, limit: Int) async throws(MeridianError) -> (records: [AuditRecord], anchor: AuditAnchor) {
        let (region, logger) = (region, logger)
        let page = try await reading("Reading the audit trail") { connection -> AuditPage in
            // One snapshot: a trim between the two reads would otherwise pair records with a later anchor.
            try await connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
            do {
                let anchor = try await StoreRow.read(connection, region: region, logger: logger).auditAnchor
                let records = try await connection.query("""
                    SELECT sequence, time_ms, kind, fields, previous, hash FROM meridian_audit WHERE sequence > \(Int64(clamping: after)) ORDER BY sequence LIMIT \(Int64(limit))
                    """, logger: logger).collect().map { try Self.auditRecord($0, region: region) }
                try await connection.query("COMMIT", logger: logger)
                return AuditPage(records: records, anchor: anchor)
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger)
                throw error
            }
        }
        return (page.records, page.anchor)
    }

    struct AuditPage: Sendable {
        let records: [AuditRecord]
        let anchor: AuditAnchor
    }

    public func auditHead() async throws(MeridianError) -> AuditChain {
        let (region, logger) = (region, logger)
        return try await reading("Reading the audit trail's head") { connection in
            let anchor = try await StoreRow.read(connection, region: region, logger: logger).auditAnchor
            return try await Self.auditHead(connection, region: region, anchor: anchor, logger: logger)
        }
    }

    public func lastAuditRecord(_ kind: AuditRecord.Kind) async throws(MeridianError) -> AuditRecord? {
        let (region, logger) = (region, logger)
        return try await reading("Reading the audit trail") { connection in
            try await connection.query("""
                SELECT sequence, time_ms, kind, fields, previous, hash FROM meridian_audit WHERE kind = \(kind.rawValue) ORDER BY sequence DESC LIMIT 1
                """, logger: logger).collect().first.map { try Self.auditRecord($0, region: region) }
        }
    }

    public func witness(_ checkpoint: AuditCheckpoint, publicKey: [UInt8]) async throws(MeridianError) {
        let logger = logger
        let region = checkpoint.region.rawValue
        try await changing("Keeping a checkpoint of \(checkpoint.region)'s trail") { connection, _ in
            let pinned = try await connection.query("SELECT public_key FROM meridian_audit_keys WHERE region = \(region)", logger: logger)
                .collect().first.map { try $0.decode(ByteBuffer.self).bytes }
            try checkpoint.admit(publicKey: publicKey, pinned: pinned)
            if pinned == nil {
                try await connection.query("INSERT INTO meridian_audit_keys (region, public_key) VALUES (\(region), \(bytea(publicKey)))", logger: logger)
            }
            try await connection.query("""
                INSERT INTO meridian_witnessed (region, sequence, hash, signature)
                VALUES (\(region), \(sql(checkpoint.sequence)), \(bytea(checkpoint.hash)), \(bytea(checkpoint.signature))) ON CONFLICT DO NOTHING
                """, logger: logger)
            try await connection.query("""
                DELETE FROM meridian_witnessed WHERE region = \(region) AND sequence NOT IN
                    (SELECT sequence FROM meridian_witnessed WHERE region = \(region) ORDER BY sequence DESC LIMIT \(Int64(AuditBounds.witnessedPerRegionMax)))
                """, logger: logger)
        }
    }

    public func witnessed(region: RegionName, limit: Int) async throws(MeridianError) -> (publicKey: [UInt8]?, checkpoints: [AuditCheckpoint]) {
        let logger = logger
        let page = try await reading("Reading \(region)'s witnessed checkpoints") { connection -> WitnessedPage in
            let key = try await connection.query("SELECT public_key FROM meridian_audit_keys WHERE region = \(region.rawValue)", logger: logger)
                .collect().first.map { try $0.decode(ByteBuffer.self).bytes }
            let checkpoints = try await connection.query("""
                SELECT * FROM (SELECT sequence, hash, signature FROM meridian_witnessed WHERE region = \(region.rawValue) ORDER BY sequence DESC
                LIMIT \(Int64(limit))) AS newest ORDER BY sequence
                """, logger: logger).collect().map { row in
                let (sequence, hash, signature) = try row.decode((Int64, ByteBuffer, ByteBuffer).self)
                return AuditCheckpoint(region: region, sequence: unsigned(sequence), hash: hash.bytes, signature: signature.bytes)
            }
            return WitnessedPage(publicKey: key, checkpoints: checkpoints)
        }
        return (page.publicKey, page.checkpoints)
    }

    struct WitnessedPage: Sendable {
        let publicKey: [UInt8]?
        let checkpoints: [AuditCheckpoint]
    }

    static func auditHead(_ connection: PostgresConnection, region: RegionName, anchor: AuditAnchor, logger: Logger) async throws -> AuditChain {
        guard let row = try await connection.query("SELECT sequence, hash FROM meridian_audit ORDER BY sequence DESC LIMIT 1", logger: logger).collect().first else {
            return AuditChain(region: region, sequence: anchor.sequence, hash: anchor.hash)
        }
        let (sequence, hash) = try row.decode((Int64, ByteBuffer).self)
        return AuditChain(region: region, sequence: unsigned(sequence), hash: hash.bytes)
    }

    static func fieldsText(_ fields: [String: String]) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: try encoder.encode(fields), as: UTF8.self)
    }

    static func auditRecord(_ row: PostgresRow, region: RegionName) throws -> AuditRecord {
        let (sequence, timeMs, kind, fields, previous, hash) = try row.decode((Int64, Int64, String, String, ByteBuffer, ByteBuffer).self)
        guard let kind = AuditRecord.Kind(rawValue: kind) else {
            throw MeridianError(.storageFailure, "The audit trail holds record \(sequence) of an unknown kind '\(kind)'.")
        }
        return AuditRecord(sequence: unsigned(sequence), timeMs: unsigned(timeMs), region: region, kind: kind,
                           fields: try JSONDecoder().decode([String: String].self, from: Data(fields.utf8)), previous: previous.bytes, hash: hash.bytes)
    }

    // MARK: - Data keys

    public func missingDataKeys(_ values: [(keyspace: KeyspaceName, value: [UInt8])]) async throws(MeridianError) -> [KeyspaceName: Set<DataKeyID>] {
        guard let sealer, values.contains(where: { sealer.isSealed($0.keyspace) }) else { return [:] }
        let logger = logger
        let asked = values.map { SealedItem(keyspace: $0.keyspace, value: $0.value) }
        return try await reading("Looking up data keys") { connection in
            var wanted = PrefetchedKeys.Wanted()
            for item in asked where sealer.isSealed(item.keyspace) { wanted.values(item.keyspace, [item.value]) }
            let keys = try await PrefetchedKeys.read(connection, wanted, logger: logger)
            return try sealerStep("Looking up data keys") { try sealer.missing(asked.map { ($0.keyspace, $0.value) }, in: keys) }
        }
    }

    struct SealedItem: Sendable {
        let keyspace: KeyspaceName
        let value: [UInt8]
    }

    public func grantDataKeys(keyspace: KeyspaceName, ids: [DataKeyID]) async throws(MeridianError) -> (granted: [DataKeyGrant], erased: [DataKeyID]) {
        guard let sealer else { return ([], []) }
        let logger = logger
        let answer = try await reading("Granting data keys") { connection -> GrantAnswer in
            let keys = try await PrefetchedKeys.read(connection, PrefetchedKeys.Wanted(ids: [keyspace: Set(ids)]), logger: logger)
            let (granted, erased) = try sealerStep("Granting data keys") { try sealer.grants(keyspace: keyspace, ids: ids, in: keys) }
            return GrantAnswer(granted: granted, erased: erased)
        }
        return (answer.granted, answer.erased)
    }

    struct GrantAnswer: Sendable {
        let granted: [DataKeyGrant]
        let erased: [DataKeyID]
    }

    public func installDataKeys(keyspace: KeyspaceName, _ grants: [DataKeyGrant], erased: [DataKeyID], nowMs: UInt64) async throws(MeridianError) {
        guard let sealer else { return }
        let logger = logger
        try await changing("Storing data keys granted for \(keyspace)") { connection, _ in
            try await DataKeyStatements.markErased(connection, keyspace: keyspace, ids: erased, nowMs: nowMs, logger: logger)
            sealer.forget(keyspace: keyspace, ids: erased)
            var keys = try await PrefetchedKeys.read(connection, PrefetchedKeys.Wanted(ids: [keyspace: Set(grants.map(\.id))]), logger: logger)
            try sealerStep("Storing granted data keys") { try sealer.install(grants, keyspace: keyspace, in: &keys) }
            try await keys.save(connection, logger: logger)
        }
    }

    public func erasedDataKeys(keyspace: KeyspaceName, after: DataKeyID?, limit: Int) async throws(MeridianError) -> [DataKeyID] {
        let logger = logger
        let floor = bytea(after?.bytes ?? [])
        return try await reading("Reading erased data keys") { connection in
            try await connection.query("""
                SELECT id FROM meridian_erased_keys WHERE keyspace = \(keyspace.rawValue) AND id > \(floor) ORDER BY id LIMIT \(Int64(limit))
                """, logger: logger).collect().map { try DataKeyID(bytes: try $0.decode(ByteBuffer.self).bytes) }
        }
    }

    public func rewrapDataKeys(limit: Int) async throws(MeridianError) -> Int {
        guard let sealer else { return 0 }
        let logger = logger
        return try await changing("Wrapping data keys again") { connection, _ in
            try await DataKeyStatements.checkRootKeys(connection, sealer: sealer, logger: logger)
            let stale = try await connection.query("""
                SELECT keyspace, id, subject, epoch, wrapped FROM meridian_data_keys WHERE epoch < \(Int64(sealer.epoch)) LIMIT \(Int64(limit))
                """, logger: logger).collect()
            for row in stale {
                let (keyspace, id, subject, epoch, wrapped) = try row.decode((String, ByteBuffer, String, Int64, ByteBuffer).self)
                let stored = StoredDataKey(keyspace: try KeyspaceName(keyspace), id: try DataKeyID(bytes: id.bytes), subject: try Subject(subject),
                                           wrapped: WrappedDataKey(epoch: UInt32(clamping: epoch), bytes: wrapped.bytes))
                let again = try sealerStep("Wrapping a data key again") { try sealer.rewrapped(stored) }
                try await connection.query("""
                    UPDATE meridian_data_keys SET epoch = \(Int64(again.wrapped.epoch)), wrapped = \(bytea(again.wrapped.bytes))
                    WHERE keyspace = \(keyspace) AND id = \(id)
                    """, logger: logger)
            }
            return stale.count
        }
    }

    public func dataKeyEpochs() async throws(MeridianError) -> [UInt32: Int] {
        let counts = try await counts("Counting data keys", "SELECT epoch::text, count(*) FROM meridian_data_keys GROUP BY epoch")
        var epochs: [UInt32: Int] = [:]
        for (epoch, count) in counts { if let epoch = UInt32(epoch) { epochs[epoch] = count } }
        return epochs
    }

    public func erase(keyspace: KeyspaceName, subject: Subject, nowMs: UInt64) async throws(MeridianError) -> [DataKeyID] {
        guard let sealer else { return [] }
        let logger = logger
        return try await changing("Destroying the data keys of a subject of \(keyspace)") { connection, _ in
            let ids = try await connection.query("""
                SELECT id FROM meridian_data_keys WHERE keyspace = \(keyspace.rawValue) AND subject = \(subject.rawValue) ORDER BY id
                """, logger: logger).collect().map { try DataKeyID(bytes: try $0.decode(ByteBuffer.self).bytes) }
            try await DataKeyStatements.markErased(connection, keyspace: keyspace, ids: ids, nowMs: nowMs, logger: logger)
            // Before the commit, so no later write seals with them.
            sealer.forget(keyspace: keyspace, ids: ids)
            return ids
        }
    }
}
