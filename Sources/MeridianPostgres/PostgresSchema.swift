import Logging
import MeridianCore
import PostgresNIO

/// The tables a region keeps in PostgreSQL, as numbered migrations. Plain SQL only (no extension), so engines that
/// speak PostgreSQL's protocol stay within reach.
///
/// Every node of a region runs ``migrate(_:logger:)`` at start. Each migration runs once: in its own transaction,
/// which first takes a transaction-level advisory lock (so nodes starting together run them one at a time) and then
/// checks the version table. A migration that fails rolls back whole, and the node does not start.
public enum PostgresSchema {
    /// A migration: its version (ascending, never reused or edited once released) and its statements.
    struct Migration: Sendable {
        let version: Int32
        let summary: String
        let statements: [String]
        /// The oldest schema version whose builds still run on a database with this migration applied (an additive
        /// change: a column with a default, a table they do not read). During a rolling upgrade older nodes keep
        /// serving; a migration they cannot run with gives its own version.
        var runsWith: Int32?

        init(version: Int32, summary: String, statements: [String], runsWith: Int32? = nil) {
            self.version = version
            self.summary = summary
            self.statements = statements
            self.runsWith = runsWith
        }
    }

    /// The advisory lock every migration transaction takes first (an arbitrary constant, "meridian" in ASCII).
    static let lockKey: Int64 = 0x6D65_7269_6469_616E

    static let migrations: [Migration] = [
        Migration(version: 1, summary: "the region lease for single-instance duties", statements: [
            // Changed only by a grant; every duty's transaction locks it for share (RegionLeaseTable).
            """
            CREATE TABLE meridian_region_lease (
                region text PRIMARY KEY,
                holder text NOT NULL,
                epoch bigint NOT NULL CHECK (epoch >= 0)
            )
            """,
            // The same holder and epoch with the expiry, which renewals move.
            """
            CREATE TABLE meridian_region_lease_expiry (
                region text PRIMARY KEY REFERENCES meridian_region_lease (region),
                holder text NOT NULL,
                epoch bigint NOT NULL CHECK (epoch >= 0),
                expires_at timestamptz NOT NULL
            )
            """,
        ]),
        Migration(version: 2, summary: "the region's store: keys, logs, conflicts, failover, idempotency, audit, data keys", statements: [
            // One row: the region the database belongs to, its log's next number and floor, the newest timestamp
            // issued or seen, a restore's mark, and the audit trail's anchor. Every change to the store locks it
            // first, so changes go one at a time across the region's nodes, in the order of their numbers.
            """
            CREATE TABLE meridian_store (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                region text NOT NULL,
                next_sequence bigint NOT NULL CHECK (next_sequence >= 1),
                log_floor bigint NOT NULL,
                hlc_physical_ms bigint NOT NULL,
                hlc_logical bigint NOT NULL,
                restore_pending bigint,
                audit_anchor_sequence bigint NOT NULL DEFAULT 0,
                audit_anchor_hash bytea NOT NULL
            )
            """,
            // Keys in byte order ("C"), as the SQLite store compares them; `live`: the winner is not a tombstone.
            """
            CREATE TABLE meridian_keys (
                keyspace text COLLATE "C" NOT NULL,
                key text COLLATE "C" NOT NULL,
                slot integer NOT NULL,
                live boolean NOT NULL,
                state bytea NOT NULL,
                PRIMARY KEY (keyspace, key)
            )
            """,
            "CREATE INDEX meridian_keys_slots ON meridian_keys (keyspace, slot, key)",
            """
            CREATE TABLE meridian_log (
                origin text NOT NULL,
                sequence bigint NOT NULL,
                keyspace text NOT NULL,
                epoch bigint NOT NULL,
                entry bytea NOT NULL,
                PRIMARY KEY (origin, sequence)
            )
            """,
            "CREATE INDEX meridian_log_epochs ON meridian_log (keyspace, epoch, origin, sequence)",
            "CREATE TABLE meridian_applied (origin text PRIMARY KEY, sequence bigint NOT NULL)",
            """
            CREATE TABLE meridian_conflicts (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                keyspace text NOT NULL,
                key text NOT NULL,
                rule text NOT NULL,
                recorded_ms bigint NOT NULL,
                loser_origin text NOT NULL,
                loser_sequence bigint NOT NULL,
                loser_hlc_physical_ms bigint NOT NULL,
                loser_hlc_logical bigint NOT NULL,
                loser_tombstone boolean NOT NULL,
                loser_content_type text NOT NULL,
                loser_value bytea NOT NULL,
                winner_origin text NOT NULL,
                winner_sequence bigint NOT NULL,
                winner_hlc_physical_ms bigint NOT NULL,
                winner_hlc_logical bigint NOT NULL,
                UNIQUE (keyspace, key, loser_origin, loser_sequence)
            )
            """,
            "CREATE INDEX meridian_conflicts_keyspace ON meridian_conflicts (keyspace, id)",
            "CREATE TABLE meridian_conflict_counts (keyspace text PRIMARY KEY, records bigint NOT NULL)",
            """
            CREATE TABLE meridian_terms (
                keyspace text NOT NULL, origin text NOT NULL, epoch bigint NOT NULL, last bigint NOT NULL,
                PRIMARY KEY (keyspace, origin, epoch)
            )
            """,
            """
            CREATE TABLE meridian_elections (
                keyspace text PRIMARY KEY, epoch bigint NOT NULL, leader text, voted_epoch bigint NOT NULL, voted_for text, start text
            )
            """,
            """
            CREATE TABLE meridian_divergence (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                keyspace text NOT NULL,
                origin text NOT NULL,
                sequence bigint NOT NULL,
                successor_epoch bigint NOT NULL,
                entry bytea NOT NULL,
                recorded_ms bigint NOT NULL,
                reapplied_ms bigint,
                UNIQUE (origin, sequence)
            )
            """,
            """
            CREATE TABLE meridian_failovers (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                keyspace text NOT NULL,
                epoch bigint NOT NULL,
                leader text NOT NULL,
                previous_leader text,
                last_heard_ms bigint,
                suspected_ms bigint NOT NULL,
                elected_ms bigint NOT NULL,
                first_write_ms bigint,
                reason text NOT NULL,
                UNIQUE (keyspace, epoch)
            )
            """,
            """
            CREATE TABLE meridian_idempotency (
                keyspace text NOT NULL,
                idempotency_key text NOT NULL,
                fingerprint bytea NOT NULL,
                key text NOT NULL,
                origin text NOT NULL,
                sequence bigint NOT NULL,
                hlc_physical_ms bigint NOT NULL,
                hlc_logical bigint NOT NULL,
                operation smallint NOT NULL,
                epoch bigint NOT NULL,
                recorded_ms bigint NOT NULL,
                PRIMARY KEY (keyspace, idempotency_key)
            )
            """,
            "CREATE INDEX meridian_idempotency_age ON meridian_idempotency (recorded_ms)",
            """
            CREATE TABLE meridian_audit (
                sequence bigint PRIMARY KEY, time_ms bigint NOT NULL, kind text NOT NULL, fields text NOT NULL,
                previous bytea NOT NULL, hash bytea NOT NULL
            )
            """,
            "CREATE TABLE meridian_audit_keys (region text PRIMARY KEY, public_key bytea NOT NULL)",
            // Sealed keyspaces' data keys, wrapped under the region's root key of `epoch`; the ids of those erased;
            // each root key's check value, so a node started with another region's key is refused.
            """
            CREATE TABLE meridian_data_keys (
                keyspace text NOT NULL, id bytea NOT NULL, subject text NOT NULL, epoch bigint NOT NULL, wrapped bytea NOT NULL,
                PRIMARY KEY (keyspace, id)
            )
            """,
            "CREATE INDEX meridian_data_keys_subjects ON meridian_data_keys (keyspace, subject)",
            "CREATE INDEX meridian_data_keys_epochs ON meridian_data_keys (epoch)",
            "CREATE TABLE meridian_erased_keys (keyspace text NOT NULL, id bytea NOT NULL, erased_ms bigint NOT NULL, PRIMARY KEY (keyspace, id))",
            "CREATE TABLE meridian_root_key_checks (epoch bigint PRIMARY KEY, check_value text NOT NULL)",
            """
            CREATE TABLE meridian_witnessed (
                region text NOT NULL, sequence bigint NOT NULL, hash bytea NOT NULL, signature bytea NOT NULL,
                PRIMARY KEY (region, sequence)
            )
            """,
        ]),
        Migration(version: 3, summary: "where the lease holder is reached, so the region's other nodes relay to it", statements: [
            // Its client and peer addresses, "host:port" ('' unknown); written by a grant, cleared by a release.
            // Builds of version 2 name their columns and ignore these (they cannot read `runs_with`, though: they
            // refuse a database at version 3, so an upgrade from them replaces every node).
            "ALTER TABLE meridian_region_lease_expiry ADD COLUMN client_address text NOT NULL DEFAULT ''",
            "ALTER TABLE meridian_region_lease_expiry ADD COLUMN peer_address text NOT NULL DEFAULT ''",
        ], runsWith: 2),
        Migration(version: 4, summary: "the database's identity, so a failover to a standby that missed commits is noticed", statements: [
            // "system identifier/timeline" as the store last saw it (NULL: not yet noted).
            "ALTER TABLE meridian_store ADD COLUMN database_identity text",
        ], runsWith: 3),
    ]

    /// The newest version this build knows.
    public static var newestVersion: Int32 { migrations.last!.version }

    /// Runs the migrations the database lacks, in order.
    /// - Returns: The versions this call applied (empty when another node had applied them all).
    /// - Throws: `storage_failure` naming the migration that failed, or a database newer than this build.
    @discardableResult
    public static func migrate(_ client: PostgresClient, logger: Logger) async throws(MeridianError) -> [Int32] {
        var applied: [Int32] = []
        for migration in migrations {
            do {
                let ran = try await client.withTransaction(logger: logger) { connection -> Bool in
                    // Read committed whatever the database's default: the checks below must see what the node that
                    // held the lock before committed.
                    try await connection.query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", logger: logger)
                    try await connection.query("SELECT pg_advisory_xact_lock(\(lockKey))", logger: logger)
                    // A migration's lock waits are bounded: it waits behind the region's short lease transactions
                    // only, and a node that gives up starts again.
                    try await connection.query("SELECT set_config('lock_timeout', '10s', true)", logger: logger)
                    try await connection.query(
                        "CREATE TABLE IF NOT EXISTS meridian_migrations (version integer PRIMARY KEY, summary text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                        logger: logger)
                    // The oldest schema version whose builds run on it (NULL, from before the column: its own). Added
                    // only where missing: an ALTER, even one with nothing to do, locks the table exclusively and so
                    // writes to the WAL, and every start would then wait for a sync.
                    let column = try await connection.query("""
                        SELECT 1 FROM pg_attribute WHERE attrelid = 'meridian_migrations'::regclass AND attname = 'runs_with' AND NOT attisdropped
                        """, logger: logger).collect()
                    if column.isEmpty {
                        try await connection.query("ALTER TABLE meridian_migrations ADD COLUMN runs_with integer", logger: logger)
                    }
                    let rows = try await connection.query("""
                        SELECT coalesce(max(version), 0), coalesce(max(coalesce(runs_with, version)) FILTER (WHERE version > \(newestVersion)), 0)
                        FROM meridian_migrations
                        """, logger: logger).collect()
                    var (newest, needs): (Int32, Int32) = (0, 0)
                    if let row = rows.first { (newest, needs) = try row.decode((Int32, Int32).self) }
                    if newest > newestVersion && needs > newestVersion {
                        throw MeridianError(.storageFailure, "The region's PostgreSQL database is at schema version \(newest), and builds older than version \(needs) cannot run on it; this one is at \(newestVersion): run a Meridian release that knows it.")
                    }
                    let done = try await connection.query("SELECT 1 FROM meridian_migrations WHERE version = \(migration.version)", logger: logger).collect()
                    guard done.isEmpty else { return false }
                    for statement in migration.statements {
                        try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                        Progress.heard()
                    }
                    try await connection.query("""
                        INSERT INTO meridian_migrations (version, summary, runs_with) VALUES (\(migration.version), \(migration.summary), \(migration.runsWith ?? migration.version))
                        """, logger: logger)
                    return true
                }
                if ran {
                    applied.append(migration.version)
                    logger.notice("schema migrated", metadata: ["version": "\(migration.version)", "summary": "\(migration.summary)"])
                }
            } catch {
                throw PostgresFailure.wrap(error, "Schema migration \(migration.version) (\(migration.summary))")
            }
        }
        return applied
    }
}

/// PostgreSQL's failures as Meridian's errors.
public enum PostgresFailure {
    /// `error` as a `storage_failure` saying what was being done, unless it is already a Meridian error.
    public static func wrap(_ error: any Error, _ doing: String) -> MeridianError {
        if let error = error as? MeridianError { return error }
        if let error = error as? PostgresTransactionError {
            // The transaction rolled back; what ended it is the first of its failures.
            let cause = error.closureError ?? error.beginError ?? error.commitError ?? error.rollbackError
            return cause.map { wrap($0, doing) } ?? MeridianError(.storageFailure, "\(doing) failed in the region's PostgreSQL.")
        }
        if let error = error as? PSQLError {
            let server = error.serverInfo?[.message].map { ": \($0)" } ?? ""
            switch error.serverInfo?[.sqlState] {
            case "53100":
                return MeridianError(.storageFull, "\(doing) failed: the region's PostgreSQL is out of disk space\(server). Free or add space on the database server; nothing was written.")
            case "25006":
                return MeridianError(.storageReadOnly, "\(doing) failed: the region's PostgreSQL takes no writes\(server). The store's URL names a read-only standby or a read-only database: point it at the primary.")
            default: break
            }
            if [.connectionError, .serverClosedConnection, .clientClosedConnection, .poolClosed, .uncleanShutdown].contains(error.code) {
                return MeridianError(.storageFailure, "\(doing) failed: the region's PostgreSQL could not be reached or dropped the connection (\(error.code.description)). Check that the database is up and reachable from this node; a write that failed here may or may not have committed, so retry it with its idempotency key.")
            }
            return MeridianError(.storageFailure, "\(doing) failed in the region's PostgreSQL (\(error.code.description)\(server)).")
        }
        return MeridianError(.storageFailure, "\(doing) failed in the region's PostgreSQL: \(error).")
    }
}
