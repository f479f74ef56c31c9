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
                    try await connection.query(
                        "CREATE TABLE IF NOT EXISTS meridian_migrations (version integer PRIMARY KEY, summary text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                        logger: logger)
                    let newest = try await connection.query("SELECT coalesce(max(version), 0) FROM meridian_migrations", logger: logger)
                        .collect().first?.decode(Int32.self) ?? 0
                    if newest > newestVersion {
                        throw MeridianError(.storageFailure, "The region's PostgreSQL database is at schema version \(newest), newer than this build's \(newestVersion): run a Meridian release that knows it.")
                    }
                    let done = try await connection.query("SELECT 1 FROM meridian_migrations WHERE version = \(migration.version)", logger: logger).collect()
                    guard done.isEmpty else { return false }
                    for statement in migration.statements {
                        try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                    }
                    try await connection.query("INSERT INTO meridian_migrations (version, summary) VALUES (\(migration.version), \(migration.summary))", logger: logger)
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
            return MeridianError(.storageFailure, "\(doing) failed in the region's PostgreSQL (\(error.code.description)\(server)).")
        }
        return MeridianError(.storageFailure, "\(doing) failed in the region's PostgreSQL: \(error).")
    }
}
