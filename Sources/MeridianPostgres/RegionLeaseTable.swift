import Foundation
import Logging
import MeridianCore
import PostgresNIO

/// The region's lease in PostgreSQL: which node process carries the single-instance duties, under which epoch, until
/// when by the database's clock (``DutyLease`` decides when to ask; this runs the statements).
///
/// Two rows per region. `meridian_region_lease` names the holder and its epoch, and changes only when the lease is
/// granted; `meridian_region_lease_expiry` repeats them with the expiry, and takes the renewals. Fencing rests on the
/// epoch, not on time: ``fence(_:epoch:logger:)`` locks the first row for share inside a duty's transaction and checks
/// the epoch, so no grant (which updates that row) can commit while such a transaction runs, and once one has, every
/// later transaction of the former holder fails. Renewals touch only the second row, so they never wait for the
/// holder's own duties. Advisory locks alone would not do: a session that loses its connection loses its lock while
/// its node may still act.
///
/// Every statement runs with a lock and statement timeout, so a request answers (or fails) within its time.
public struct RegionLeaseTable: Sendable {
    public let region: RegionName
    /// This process: the node's name and an id drawn at start, so a restarted or duplicated process with the same
    /// name waits for the lease to expire like any other.
    public let holder: String
    /// Where the region's other nodes reach this process while it holds the lease (nil: they do not relay to it).
    public let advertised: NodeAddresses?

    public init(region: RegionName, node: String, advertised: NodeAddresses? = nil) {
        self.region = region
        holder = "\(node) \(UUID().uuidString.prefix(8).lowercased())"
        self.advertised = advertised
    }

    /// What the database answered.
    public enum Answer: Sendable, Hashable {
        /// Granted or renewed: this process holds the lease at `epoch`.
        case held(epoch: UInt64)
        /// Another process holds an unexpired lease (for a renewal: the lease moved on from this process's epoch),
        /// reached at `addresses` (nil: it gave none, or nobody holds it).
        case refused(holder: String, addresses: NodeAddresses?)

        static func refused(_ holder: String, client: String, peer: String) -> Answer {
            guard !holder.isEmpty, let client = Endpoint(parsing: client), let peer = Endpoint(parsing: peer) else {
                return .refused(holder: holder, addresses: nil)
            }
            return .refused(holder: holder, addresses: NodeAddresses(client: client, peer: peer))
        }
    }

    /// Asks for the lease: granted, with the epoch raised, when it has expired or already names this process (a
    /// grant whose answer was lost). A grant waits for the holder's fenced transactions to end.
    public func acquire(_ client: PostgresClient, ttlMs: UInt64, timeoutMs: UInt64, logger: Logger) async throws(MeridianError) -> Answer {
        let (region, holder, ttl) = (region.rawValue, holder, Int64(ttlMs))
        let (clientAddress, peerAddress) = (advertised?.client.description ?? "", advertised?.peer.description ?? "")
        do {
            return try await client.withTransaction(logger: logger) { connection -> Answer in
                try await Self.bound(connection, timeoutMs: timeoutMs, logger: logger)
                try await connection.query("""
                    INSERT INTO meridian_region_lease (region, holder, epoch) VALUES (\(region), '', 0) ON CONFLICT (region) DO NOTHING
                    """, logger: logger)
                try await connection.query("""
                    INSERT INTO meridian_region_lease_expiry (region, holder, epoch, expires_at) VALUES (\(region), '', 0, '-infinity')
                    ON CONFLICT (region) DO NOTHING
                    """, logger: logger)
                // The expiry row, locked: acquirers and renewals of this region go one at a time from here.
                let rows = try await connection.query("""
                    SELECT holder, expires_at < clock_timestamp(), client_address, peer_address FROM meridian_region_lease_expiry
                    WHERE region = \(region) FOR UPDATE
                    """, logger: logger).collect()
                guard let (current, expired, client, peer) = try rows.first?.decode((String, Bool, String, String).self) else {
                    throw MeridianError(.storageFailure, "Region \(region)'s lease row vanished while it was being granted.")
                }
                guard expired || current == holder else { return .refused(current, client: client, peer: peer) }
                let granted = try await connection.query("""
                    UPDATE meridian_region_lease SET holder = \(holder), epoch = epoch + 1 WHERE region = \(region) RETURNING epoch
                    """, logger: logger).collect()
                guard let epoch = try granted.first?.decode(Int64.self) else {
                    throw MeridianError(.storageFailure, "Region \(region)'s lease row vanished while it was being granted.")
                }
                try await connection.query("""
                    UPDATE meridian_region_lease_expiry SET holder = \(holder), epoch = \(epoch), expires_at = clock_timestamp() + \(ttl) * interval '1 millisecond',
                        client_address = \(clientAddress), peer_address = \(peerAddress)
                    WHERE region = \(region)
                    """, logger: logger)
                return .held(epoch: UInt64(epoch))
            }
        } catch {
            throw PostgresFailure.wrap(error, "Asking for region \(region)'s lease")
        }
    }

    /// Extends the lease of `epoch`; refused once the lease names another epoch. (When it expired in between and no
    /// other process took it, the renewal goes through: nobody else held it meanwhile.)
    public func renew(_ client: PostgresClient, epoch: UInt64, ttlMs: UInt64, timeoutMs: UInt64, logger: Logger) async throws(MeridianError) -> Answer {
        let (region, holder, epochValue, ttl) = (region.rawValue, holder, Int64(epoch), Int64(ttlMs))
        do {
            return try await client.withTransaction(logger: logger) { connection -> Answer in
                try await Self.bound(connection, timeoutMs: timeoutMs, logger: logger)
                let renewed = try await connection.query("""
                    UPDATE meridian_region_lease_expiry SET expires_at = clock_timestamp() + \(ttl) * interval '1 millisecond'
                    WHERE region = \(region) AND holder = \(holder) AND epoch = \(epochValue)
                    RETURNING epoch
                    """, logger: logger).collect()
                if !renewed.isEmpty { return .held(epoch: epoch) }
                let rows = try await connection.query("""
                    SELECT holder, expires_at < clock_timestamp(), client_address, peer_address FROM meridian_region_lease_expiry WHERE region = \(region)
                    """, logger: logger).collect()
                guard let (current, expired, client, peer) = try rows.first?.decode((String, Bool, String, String).self), !expired else {
                    return .refused(holder: "", addresses: nil)
                }
                return .refused(current, client: client, peer: peer)
            }
        } catch {
            throw PostgresFailure.wrap(error, "Renewing region \(region)'s lease")
        }
    }

    /// Gives the lease of `epoch` back (at shutdown, its duties stopped), so another process is granted it at once. The
    /// row then names nobody, so a renewal of this process still on its way finds nothing to extend.
    public func release(_ client: PostgresClient, epoch: UInt64, timeoutMs: UInt64, logger: Logger) async throws(MeridianError) {
        let (region, holder, epochValue) = (region.rawValue, holder, Int64(epoch))
        do {
            try await client.withTransaction(logger: logger) { connection in
                try await Self.bound(connection, timeoutMs: timeoutMs, logger: logger)
                try await connection.query("""
                    UPDATE meridian_region_lease_expiry SET expires_at = '-infinity', holder = '', client_address = '', peer_address = ''
                    WHERE region = \(region) AND holder = \(holder) AND epoch = \(epochValue)
                    """, logger: logger)
            }
        } catch {
            throw PostgresFailure.wrap(error, "Releasing region \(region)'s lease")
        }
    }

    /// The first statement of every duty's transaction (call it inside one): locks the lease row for share and checks
    /// that it still names this process at `epoch`. A grant to another process waits for the transaction to end.
    /// - Throws: `lease_lost` when the row names another process or epoch (the transaction must roll back).
    /// - Parameter timeline: The database's timeline when the store opened (nil: not checked): on another one, a
    ///   standby was promoted under this node, which must stop (the next open catches up from the peers first).
    public func fence(_ connection: PostgresConnection, epoch: UInt64, timeline: String? = nil, logger: Logger) async throws(MeridianError) {
        let (region, holder, epochValue) = (region.rawValue, holder, Int64(epoch))
        let rows: [PostgresRow]
        do {
            // The WAL position only where the store could read it at open (some services keep it to themselves).
            rows = try await timeline == nil
                ? connection.query("SELECT holder, epoch, '' FROM meridian_region_lease WHERE region = \(region) FOR SHARE", logger: logger).collect()
                : connection.query("""
                    SELECT holder, epoch, pg_walfile_name(pg_current_wal_lsn()) FROM meridian_region_lease WHERE region = \(region) FOR SHARE
                    """, logger: logger).collect()
        } catch {
            throw PostgresFailure.wrap(error, "Checking region \(region)'s lease")
        }
        let current = rows.first.flatMap { try? $0.decode((String, Int64, String).self) }
        guard let current, current.0 == holder, current.1 == epochValue else {
            let now = current.map { $0.1 == 0 ? "nobody" : "\($0.0) at epoch \($0.1)" } ?? "nobody"
            throw MeridianError(.leaseLost, "This node (\(holder)) no longer holds region \(region)'s lease of epoch \(epoch); it is held by \(now). Its duty stopped; the node that holds the lease carries it.",
                                context: ["region": region, "holder": holder, "epoch": String(epoch)])
        }
        if let timeline, current.2.prefix(8) != timeline {
            throw MeridianError(.leaseLost, "Region \(region)'s PostgreSQL is on timeline \(current.2.prefix(8)), not \(timeline) as when this node opened its store: a standby was promoted, which may lack commits other regions hold. This node stops; the next to open the store catches up from the peers first.",
                                context: ["region": region, "holder": holder, "epoch": String(epoch)])
        }
    }

    /// Bounds the transaction's lock waits and statements.
    private static func bound(_ connection: PostgresConnection, timeoutMs: UInt64, logger: Logger) async throws {
        let timeout = "\(max(1, timeoutMs))ms"
        try await connection.query("SELECT set_config('lock_timeout', \(timeout), true), set_config('statement_timeout', \(timeout), true)", logger: logger)
    }
}

/// Where a node of the region is reached: its client API and its peer port.
public struct NodeAddresses: Sendable, Hashable {
    public let client: Endpoint
    public let peer: Endpoint

    public init(client: Endpoint, peer: Endpoint) {
        self.client = client
        self.peer = peer
    }
}

/// The lease a store's changes run under: each change's transaction first checks (``RegionLeaseTable/fence(_:epoch:logger:)``)
/// that this process still holds the region's lease at `epoch`, so a holder that lost it changes nothing more.
public struct LeaseFence: Sendable {
    public let table: RegionLeaseTable
    public let epoch: UInt64
    /// The lease's time to live: a transaction of the holder left idle this long is ended by the database (its
    /// holder, silent that long, has lost the lease anyway), so a frozen holder does not keep its successor waiting.
    public let ttlMs: UInt64
    /// The database's timeline when the store opened (set by the store; nil: not checked).
    var timeline: String?
    /// Told when a change found the lease gone (the holder then stops its duties at once, not at its next renewal).
    let lost: @Sendable (UInt64) -> Void

    public init(table: RegionLeaseTable, epoch: UInt64, ttlMs: UInt64, lost: @escaping @Sendable (UInt64) -> Void) {
        self.table = table
        self.epoch = epoch
        self.ttlMs = ttlMs
        self.lost = lost
    }

    func check(_ connection: PostgresConnection, logger: Logger) async throws(MeridianError) {
        do {
            try await table.fence(connection, epoch: epoch, timeline: timeline, logger: logger)
        } catch where error.code == .leaseLost {
            lost(epoch)
            throw error
        }
    }
}
