import Logging
import MeridianCore
import PostgresNIO

/// The region's lease row in PostgreSQL: which node carries the single-instance duties, under which epoch, until
/// when by the database's clock (``DutyLease`` decides when to ask; this runs the statements).
///
/// Fencing rests on the epoch, not on time: ``fence(_:epoch:logger:)`` locks the row for share inside a duty's
/// transaction and checks the epoch, so no grant to another node can commit while that transaction runs, and once
/// one has, every later transaction of the former holder fails. Advisory locks alone would not do: a session that
/// loses its connection loses its lock while its node may still act.
public struct RegionLeaseTable: Sendable {
    public let region: RegionName
    /// This node's name, unique within the region.
    public let node: String

    public init(region: RegionName, node: String) {
        self.region = region
        self.node = node
    }

    /// What the database answered.
    public enum Answer: Sendable, Hashable {
        /// Granted or renewed: this node holds the lease at `epoch`.
        case held(epoch: UInt64)
        /// Another node holds an unexpired lease (for a renewal: the row moved on from this node's epoch).
        case refused(holder: String)
    }

    /// Asks for the lease: granted, with the epoch raised, when the row has expired or already names this node (a
    /// grant whose answer was lost).
    public func acquire(_ client: PostgresClient, ttlMs: UInt64, logger: Logger) async throws(MeridianError) -> Answer {
        let (region, node, ttl) = (region.rawValue, node, Int64(ttlMs))
        do {
            let granted = try await client.query("""
                INSERT INTO meridian_region_lease AS lease (region, holder, epoch, expires_at)
                VALUES (\(region), \(node), 1, clock_timestamp() + \(ttl) * interval '1 millisecond')
                ON CONFLICT (region) DO UPDATE SET holder = excluded.holder, epoch = lease.epoch + 1, expires_at = excluded.expires_at
                WHERE lease.expires_at < clock_timestamp() OR lease.holder = excluded.holder
                RETURNING lease.epoch
                """, logger: logger).collect()
            if let row = granted.first { return .held(epoch: UInt64(try row.decode(Int64.self))) }
            return .refused(holder: try await holder(client, logger: logger))
        } catch {
            throw PostgresFailure.wrap(error, "Asking for region \(region)'s lease")
        }
    }

    /// Extends the lease of `epoch`; refused once the row names another epoch (even when it expired in between and
    /// no other node took it, the renewal goes through: nobody else held it meanwhile).
    public func renew(_ client: PostgresClient, epoch: UInt64, ttlMs: UInt64, logger: Logger) async throws(MeridianError) -> Answer {
        let (region, node, epochValue, ttl) = (region.rawValue, node, Int64(epoch), Int64(ttlMs))
        do {
            let renewed = try await client.query("""
                UPDATE meridian_region_lease SET expires_at = clock_timestamp() + \(ttl) * interval '1 millisecond'
                WHERE region = \(region) AND holder = \(node) AND epoch = \(epochValue)
                RETURNING epoch
                """, logger: logger).collect()
            if !renewed.isEmpty { return .held(epoch: epoch) }
            return .refused(holder: try await holder(client, logger: logger))
        } catch {
            throw PostgresFailure.wrap(error, "Renewing region \(region)'s lease")
        }
    }

    /// Gives the lease of `epoch` back (at shutdown, its duties stopped), so another node is granted it at once.
    public func release(_ client: PostgresClient, epoch: UInt64, logger: Logger) async throws(MeridianError) {
        let (region, node, epochValue) = (region.rawValue, node, Int64(epoch))
        do {
            try await client.query("""
                UPDATE meridian_region_lease SET expires_at = '-infinity'
                WHERE region = \(region) AND holder = \(node) AND epoch = \(epochValue)
                """, logger: logger)
        } catch {
            throw PostgresFailure.wrap(error, "Releasing region \(region)'s lease")
        }
    }

    /// The first statement of every duty's transaction: locks the lease row for share and checks that it still names
    /// this node at `epoch`. A grant to another node waits for the transaction to end.
    /// - Throws: `lease_lost` when the row names another node or epoch (the transaction must roll back).
    public func fence(_ connection: PostgresConnection, epoch: UInt64, logger: Logger) async throws(MeridianError) {
        let (region, node, epochValue) = (region.rawValue, node, Int64(epoch))
        let rows: [PostgresRow]
        do {
            rows = try await connection.query("""
                SELECT holder, epoch FROM meridian_region_lease WHERE region = \(region) FOR SHARE
                """, logger: logger).collect()
        } catch {
            throw PostgresFailure.wrap(error, "Checking region \(region)'s lease")
        }
        let current = rows.first.flatMap { try? $0.decode((String, Int64).self) }
        guard let current, current.0 == node, current.1 == epochValue else {
            let now = current.map { "\($0.0) at epoch \($0.1)" } ?? "nobody"
            throw MeridianError(.leaseLost, "This node (\(node)) no longer holds region \(region)'s lease of epoch \(epoch); it is held by \(now). Its duty stopped; the node that holds the lease carries it.",
                                context: ["region": region, "node": node, "epoch": String(epoch)])
        }
    }

    /// Who the row names now (empty: no row yet).
    private func holder(_ client: PostgresClient, logger: Logger) async throws -> String {
        let rows = try await client.query("SELECT holder FROM meridian_region_lease WHERE region = \(region.rawValue)", logger: logger).collect()
        return try rows.first?.decode(String.self) ?? ""
    }
}
