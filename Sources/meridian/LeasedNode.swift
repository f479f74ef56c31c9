import Foundation
import Hummingbird
import Logging
import MeridianCore
import MeridianNode
import MeridianPostgres
import Synchronization
import UnixSignals

/// One of several node processes of a region on PostgreSQL. The process holding the region's lease serves the
/// region: it binds the region's client and peer addresses and carries replication, elections, anti-entropy and log
/// trimming, every store change fenced by the lease's epoch. The others wait and take over, within the lease's time
/// to live, once the holder dies or hangs; a graceful stop hands the lease on at once.
struct LeasedNode {
    let store: PostgresStoreConfig
    let table: RegionLeaseTable
    let settings: DutyLease.Settings
    let logger: Logger
    /// Where to answer `GET /health` whether this node holds the lease or waits (nil: nowhere). A waiting node binds
    /// none of the region's addresses, so a liveness probe needs an address of the node's own.
    let healthListen: Endpoint?
    /// Where this node is reached while it holds the lease, and where it relays to the holder while it stands by.
    let standby: StandbyAddresses
    /// The answer to a client connection a standby cannot relay (nil: the connection is closed; with TLS, the relay
    /// cannot speak to the client).
    let refusal: [UInt8]?
    /// Opens the node whose every store change is fenced by the given lease, and whose every message asks whether the
    /// lease still holds.
    let open: @Sendable (LeaseFence, @escaping @Sendable () -> Bool) async throws(MeridianError) -> RegionNode

    /// How long a stopping node may take to answer the requests it holds before it is cancelled.
    static let drainSeconds: Double = 10

    /// Runs until SIGTERM or SIGINT (or the node ends by itself), then lets the node drain, stops the duties and gives
    /// the lease back.
    func run() async throws {
        let (standby, refusal, logger) = (standby, refusal, logger)
        let runner = DutyRunner(open: open, standBy: { runner in
            let serving: @Sendable () -> NodeAddresses? = {
                guard let keeper = runner.keeper.withLock({ $0 }), keeper.heldEpoch == nil else { return nil }
                return keeper.servingNode
            }
            await Self.relay([
                RegionRelay(name: "client", listen: standby.relayClient,
                            target: { RegionRelay.target(serving()?.client, listen: standby.relayClient, own: standby.advertised.client) },
                            refusal: refusal, logger: logger),
                RegionRelay(name: "peer", listen: standby.relayPeer,
                            target: { RegionRelay.target(serving()?.peer, listen: standby.relayPeer, own: standby.advertised.peer) },
                            refusal: nil, logger: logger),
            ], logger: logger)
        }, table: table, ttlMs: settings.ttlMs, logger: logger)
        runner.standByNow()
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        // A running node reloads its certificates on SIGHUP (it traps it too); a waiting one ignores it, as it would
        // otherwise end the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let hangupWatch = Task { for await _ in hangups {} }
        defer { hangupWatch.cancel() }
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                try await RegionLeaseKeeper.run(store, table: table, settings: settings, logger: logger,
                                                duties: .init(start: { runner.start($0) }, stop: { epoch, _ in runner.stop(epoch) }),
                                                keeper: { keeper in runner.keeper.withLock { $0 = keeper } })
            }
            tasks.addTask {
                // The node traps these too and drains its requests: the lease goes back once it stopped.
                for await _ in signals {
                    await runner.drained(atMostSeconds: Self.drainSeconds)
                    return
                }
            }
            tasks.addTask { await runner.ended() }
            if let healthListen {
                let router = Router()
                router.get("/health") { _, _ in
                    let keeper = runner.keeper.withLock { $0 }
                    let epoch = keeper?.heldEpoch
                    var answer: [String: Any] = ["status": "ok", "region": table.region.rawValue, "node": table.holder,
                                                 "role": epoch == nil ? "standby" : "holder"]
                    if let epoch { answer["epoch"] = epoch }
                    if epoch == nil, let serving = keeper?.servingNode { answer["relaying_to"] = serving.client.description }
                    return Response(status: .ok, headers: [.contentType: "application/json"],
                                     body: .init(byteBuffer: ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: answer, options: [.sortedKeys]))))
                }
                let app = Application(router: router, configuration: .init(address: .hostname(healthListen.host, port: healthListen.port),
                                                                           serverName: "meridian-node/\(table.region)"),
                                      logger: logger)
                tasks.addTask { try await app.runService(gracefulShutdownSignals: []) }
            }
            defer { tasks.cancelAll() }
            try await tasks.next()
        }
        await runner.drained(atMostSeconds: Self.drainSeconds)
    }

    /// Runs the relays until cancelled; one whose address cannot be bound (the node that served here is still letting
    /// it go) tries again every second.
    static func relay(_ relays: [RegionRelay], logger: Logger) async {
        await withDiscardingTaskGroup { tasks in
            for relay in relays {
                tasks.addTask {
                    var lastFailure: String?
                    while !Task.isCancelled {
                        do {
                            try await relay.run()
                        } catch {
                            if "\(error)" != lastFailure {
                                logger.warning("cannot listen to relay \(relay.name) connections; trying again every second",
                                               metadata: ["listen": "\(relay.listen)", "error": "\(error)"])
                                lastFailure = "\(error)"
                            }
                            try? await Task.sleep(for: .seconds(1))
                        }
                    }
                }
            }
        }
    }
}

/// Where a node of a region on PostgreSQL is reached while it holds the lease, and where it relays while it stands by.
struct StandbyAddresses: Sendable {
    /// Written into the lease row while this node holds it: the region's other nodes relay there.
    let advertised: NodeAddresses
    let relayClient: Endpoint
    let relayPeer: Endpoint

    /// - Parameters:
    ///   - advertise: The host other nodes reach this one at (default: the client address's host, or the host name
    ///     when that is a wildcard).
    ///   - relayListen, relayPeerListen: host:port to relay on (default: the addresses the node serves on).
    init(_ configuration: NodeConfiguration, advertise: String?, relayListen: String?, relayPeerListen: String?,
         hostName: String = ProcessInfo.processInfo.hostName) throws(MeridianError) {
        let client = configuration.clientAddress ?? configuration.own.client
        let peer = configuration.own.peer
        func parsed(_ text: String?, _ flag: String, default fallback: Endpoint) throws(MeridianError) -> Endpoint {
            guard let text else { return fallback }
            guard let endpoint = Endpoint(parsing: text) else { throw MeridianError(.invalidConfig, "\(flag) '\(text)' is not host:port.") }
            return endpoint
        }
        relayClient = try parsed(relayListen, "--relay-listen", default: client)
        relayPeer = try parsed(relayPeerListen, "--relay-peer-listen", default: peer)
        let wildcards: Set<String> = ["0.0.0.0", "::", "[::]", ""]
        let host = advertise ?? (wildcards.contains(client.host) ? hostName : client.host)
        guard !host.isEmpty, !wildcards.contains(host), !host.contains(where: { $0 == " " || $0 == "/" }) else {
            throw MeridianError(.invalidConfig, "--advertise '\(host)' is not a host the region's other nodes can reach this one at; give its IP address or DNS name.")
        }
        advertised = NodeAddresses(client: Endpoint(host: host, port: client.port), peer: Endpoint(host: host, port: peer.port))
    }
}

/// Starts the node when the lease is granted and stops it when it goes, one epoch's node at a time (a new one starts
/// once the last has stopped and freed its ports); in between, and before the first, the node stands by (relays).
final class DutyRunner: Sendable {
    private struct Running {
        var epoch: UInt64?
        var task: Task<Void, Never>?
        /// Shutting down: no standing by any more.
        var closing = false
    }

    /// Starts that may fail in a row, a second apart, before the node gives the lease up for a lease's time: a holder
    /// that cannot serve (a certificate missing, its address taken) must not keep the region from a node that can.
    static let startAttemptsMax = 5

    private let open: @Sendable (LeaseFence, @escaping @Sendable () -> Bool) async throws(MeridianError) -> RegionNode
    /// What the node does while it does not hold the lease, until cancelled.
    private let standBy: @Sendable (DutyRunner) async -> Void
    private let table: RegionLeaseTable
    private let ttlMs: UInt64
    private let logger: Logger
    private let running = Mutex(Running())
    private let endings: AsyncStream<Void>
    private let ending: AsyncStream<Void>.Continuation
    /// The keeper, once it exists: a change that finds the lease gone tells it.
    let keeper = Mutex<RegionLeaseKeeper?>(nil)

    init(open: @escaping @Sendable (LeaseFence, @escaping @Sendable () -> Bool) async throws(MeridianError) -> RegionNode,
         standBy: @escaping @Sendable (DutyRunner) async -> Void = { _ in }, table: RegionLeaseTable, ttlMs: UInt64, logger: Logger) {
        self.open = open
        self.standBy = standBy
        self.table = table
        self.ttlMs = ttlMs
        self.logger = logger
        (endings, ending) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func start(_ epoch: UInt64) {
        // Granted while shutting down: the keeper's shutdown stops and gives it back at once.
        guard !running.withLock({ $0.closing }) else { return }
        let fence = LeaseFence(table: table, epoch: epoch, ttlMs: ttlMs) { [weak self] lost in
            guard let holder = self?.keeper.withLock({ $0 }) else { return }
            Task { await holder.fenced(epoch: lost) }
        }
        let holds: @Sendable () -> Bool = { [weak self] in self?.keeper.withLock({ $0 })?.holds(epoch) ?? false }
        let (open, logger, ending) = (open, logger, ending)
        running.withLock { running in
            // Standing by, or a node stopping already: either way it ends before this one binds the addresses.
            let previous = running.task
            previous?.cancel()
            running.epoch = epoch
            running.task = Task { [weak self] in
                await previous?.value
                // Ends when the duties stop (the task is cancelled), or after `startAttemptsMax` failed starts.
                for attempt in 1...Self.startAttemptsMax {
                    guard !Task.isCancelled else { return }
                    do {
                        let node = try await open(fence, holds)
                        // Stopped while it opened: it must not bind the region's addresses now.
                        guard !Task.isCancelled else {
                            node.store.close()
                            return
                        }
                        try await node.run()
                        if !Task.isCancelled { ending.yield() }
                        return
                    } catch {
                        guard !Task.isCancelled else { return }
                        let reason = (error as? MeridianError)?.message ?? "\(error)"
                        guard attempt < Self.startAttemptsMax else {
                            logger.critical("holding region \(fence.table.region)'s lease but cannot serve it; giving the lease up for a lease's time",
                                            metadata: ["epoch": "\(epoch)", "reason": "\(reason)"])
                            let keeper = self?.keeper.withLock { $0 }
                            await keeper?.resign(epoch: epoch, reason: "the node could not start \(Self.startAttemptsMax) times in a row: \(reason)")
                            return
                        }
                        logger.error("holding region \(fence.table.region)'s lease but cannot serve it; retrying in a second",
                                     metadata: ["epoch": "\(epoch)", "reason": "\(reason)", "attempt": "\(attempt)"])
                        try? await Task.sleep(for: .seconds(1))
                    }
                }
            }
        }
    }


    func stop(_ epoch: UInt64) {
        running.withLock { running in
            guard running.epoch == epoch else { return }
            running.task?.cancel()
            running.epoch = nil
            standBy(after: &running)
        }
    }

    /// Stands by now (at start, before the lease is first granted).
    func standByNow() {
        running.withLock { standBy(after: &$0) }
    }

    /// Stands by once the running node stopped, unless shutting down.
    private func standBy(after running: inout Running) {
        guard !running.closing else { return }
        let (previous, standBy) = (running.task, standBy)
        running.task = Task { [weak self] in
            await previous?.value
            guard !Task.isCancelled, let self else { return }
            await standBy(self)
        }
    }

    /// Returns once a node ended by itself.
    func ended() async {
        for await _ in endings { return }
    }

    /// Stops standing by, and waits for the last node to stop, cancelling it after `seconds`.
    func drained(atMostSeconds seconds: Double) async {
        let task = running.withLock { running -> Task<Void, Never>? in
            running.closing = true
            if running.epoch == nil { running.task?.cancel() }
            return running.task
        }
        guard let task else { return }
        let deadline = Task {
            try? await Task.sleep(for: .seconds(seconds))
            if !Task.isCancelled { task.cancel() }
        }
        await task.value
        deadline.cancel()
    }
}
