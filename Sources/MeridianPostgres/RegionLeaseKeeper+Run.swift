import Foundation
import Logging
import MeridianCore
import PostgresNIO

extension RegionLeaseKeeper {
    /// How often the keeper looks at its lease (a holder notices a lapse within this).
    static let tickMs: UInt64 = 100

    /// Takes part in region `table.region`'s lease on the database `config` names, until the calling task is
    /// cancelled: asks for the lease, renews it while held, starts and stops `duties` as it comes and goes, and at
    /// the end stops them and gives the lease back. The statements use a client of their own, so renewals never queue
    /// behind the store's requests.
    /// - Parameter keeper: Handed the keeper once it exists (its ``fenced(epoch:)`` stops the duties early).
    /// - Throws: `storage_failure` or `invalid_config` when the database cannot be reached or migrated at start.
    public static func run(_ config: PostgresStoreConfig, table: RegionLeaseTable, settings: DutyLease.Settings,
                           environment: [String: String] = ProcessInfo.processInfo.environment, logger: Logger, duties: Duties,
                           keeper: @Sendable (RegionLeaseKeeper) -> Void = { _ in }) async throws(MeridianError) {
        let client = PostgresClient(configuration: try PostgresConnectionSettings.client(config, environment: environment), backgroundLogger: logger)
        let running = Task { await client.run() }
        defer { running.cancel() }
        // The lease's tables come with the schema's first migration.
        _ = try await PostgresStore.bounded("Migrating region \(table.region)'s schema", timeout: .seconds(30), progress: Progress()) {
            try await PostgresSchema.migrate(client, logger: logger)
        }
        let made = RegionLeaseKeeper(table: table, client: client, settings: settings, duties: duties, logger: logger)
        keeper(made)
        while !Task.isCancelled {
            await made.step()
            try? await Task.sleep(for: .milliseconds(tickMs))
        }
        await made.shutDown()
    }
}
