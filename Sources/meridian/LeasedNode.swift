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
    /// Opens the node whose every store change is fenced by the given lease, and whose every message asks whether the
    /// lease still holds.
    let open: @Sendable (LeaseFence, @escaping @Sendable () -> Bool) async throws(MeridianError) -> RegionNode

    /// How long a stopping node may take to answer the requests it holds before it is cancelled.
    static let drainSeconds: Double = 10

    /// Runs until SIGTERM or SIGINT (or the node ends by itself), then lets the node drain, stops the duties and gives
    /// the lease back.
    func run() async throws {
        let runner = DutyRunner(open: open, table: table, ttlMs: settings.ttlMs, logger: logger)
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
                    let epoch = runner.keeper.withLock { $0 }?.heldEpoch
                    var answer: [String: Any] = ["status": "ok", "region": table.region.rawValue, "node": table.holder,
                                                 "role": epoch == nil ? "standby" : "holder"]
                    if let epoch { answer["epoch"] = epoch }
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
}

/// Starts the node when the lease is granted and stops it when it goes, one epoch's node at a time (a new one starts
/// once the last has stopped and freed its ports).
final class DutyRunner: Sendable {
    private struct Running {
        var epoch: UInt64?
        var task: Task<Void, Never>?
    }

    /// Starts that may fail in a row, a second apart, before the node gives the lease up for a lease's time: a holder
    /// that cannot serve (a certificate missing, its address taken) must not keep the region from a node that can.
    static let startAttemptsMax = 5

    private let open: @Sendable (LeaseFence, @escaping @Sendable () -> Bool) async throws(MeridianError) -> RegionNode
    private let table: RegionLeaseTable
    private let ttlMs: UInt64
    private let logger: Logger
    private let running = Mutex(Running())
    private let endings: AsyncStream<Void>
    private let ending: AsyncStream<Void>.Continuation
    /// The keeper, once it exists: a change that finds the lease gone tells it.
    let keeper = Mutex<RegionLeaseKeeper?>(nil)

    init(open: @escaping @Sendable (LeaseFence, @escaping @Sendable () -> Bool) async throws(MeridianError) -> RegionNode, table: RegionLeaseTable, ttlMs: UInt64, logger: Logger) {
        self.open = open
        self.table = table
        self.ttlMs = ttlMs
        self.logger = logger
        (endings, ending) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func start(_ epoch: UInt64) {
        let fence = LeaseFence(table: table, epoch: epoch, ttlMs: ttlMs) { [weak self] lost in
            guard let holder = self?.keeper.withLock({ $0 }) else { return }
            Task { await holder.fenced(epoch: lost) }
        }
        let holds: @Sendable () -> Bool = { [weak self] in self?.keeper.withLock({ $0 })?.holds(epoch) ?? false }
        let (open, logger, ending) = (open, logger, ending)
        running.withLock { running in
            let previous = running.task
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
        }
    }

    /// Returns once a node ended by itself.
    func ended() async {
        for await _ in endings { return }
    }

    /// Waits for the last node to stop, cancelling it after `seconds`.
    func drained(atMostSeconds seconds: Double) async {
        guard let task = running.withLock({ $0.task }) else { return }
        let deadline = Task {
            try? await Task.sleep(for: .seconds(seconds))
            if !Task.isCancelled { task.cancel() }
        }
        await task.value
        deadline.cancel()
    }
}
