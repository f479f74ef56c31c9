import Foundation
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
    /// Opens the node whose every store change is fenced by the given lease.
    let open: @Sendable (LeaseFence) async throws(MeridianError) -> RegionNode

    /// Runs until SIGTERM or SIGINT (or the node ends by itself), then stops the duties and gives the lease back.
    func run() async throws {
        let runner = DutyRunner(open: open, table: table, logger: logger)
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                try await RegionLeaseKeeper.run(store, table: table, settings: settings, logger: logger,
                                                duties: .init(start: { runner.start($0) }, stop: { epoch, _ in runner.stop(epoch) }),
                                                keeper: { keeper in runner.keeper.withLock { $0 = keeper } })
            }
            tasks.addTask {
                for await _ in signals { return }
            }
            tasks.addTask { await runner.ended() }
            logger.notice("waiting for region \(table.region)'s lease", metadata: ["holder": "\(table.holder)"])
            defer { tasks.cancelAll() }
            try await tasks.next()
        }
        await runner.drained()
    }
}

/// Starts the node when the lease is granted and stops it when it goes, one epoch's node at a time (a new one starts
/// once the last has stopped and freed its ports).
final class DutyRunner: Sendable {
    private struct Running {
        var epoch: UInt64?
        var task: Task<Void, Never>?
        /// The node ended by itself (a signal reached it): the process is stopping.
        var ended = false
    }

    private let open: @Sendable (LeaseFence) async throws(MeridianError) -> RegionNode
    private let table: RegionLeaseTable
    private let logger: Logger
    private let running = Mutex(Running())
    private let endings: AsyncStream<Void>
    private let ending: AsyncStream<Void>.Continuation
    /// The keeper, once it exists: a change that finds the lease gone tells it.
    let keeper = Mutex<RegionLeaseKeeper?>(nil)

    init(open: @escaping @Sendable (LeaseFence) async throws(MeridianError) -> RegionNode, table: RegionLeaseTable, logger: Logger) {
        self.open = open
        self.table = table
        self.logger = logger
        (endings, ending) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func start(_ epoch: UInt64) {
        let fence = LeaseFence(table: table, epoch: epoch) { [weak self] lost in
            guard let holder = self?.keeper.withLock({ $0 }) else { return }
            Task { await holder.fenced(epoch: lost) }
        }
        let (open, logger, ending) = (open, logger, ending)
        running.withLock { running in
            let previous = running.task
            running.epoch = epoch
            running.task = Task {
                await previous?.value
                // Bounded by the lease: the loop ends when the duties stop (the task is cancelled).
                while !Task.isCancelled {
                    do {
                        let node = try await open(fence)
                        try await node.run()
                        if !Task.isCancelled {
                            ending.yield()
                            return
                        }
                    } catch {
                        guard !Task.isCancelled else { return }
                        logger.error("holding region \(fence.table.region)'s lease but cannot serve it; retrying in a second",
                                     metadata: ["epoch": "\(epoch)", "reason": "\(error)"])
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

    /// Waits for the last node to stop.
    func drained() async {
        let task = running.withLock { $0.task }
        await task?.value
    }
}
