import Logging
import MeridianCore
import PostgresNIO

/// Carries out a ``DutyLease``'s effects against the region's lease row: the shell around the core's machine. Each
/// ``step()`` feeds the machine a tick, runs the statement it asks for (bounded by the machine's request timeout) and
/// feeds back the answer; the duties start and stop through `duties`.
public actor RegionLeaseKeeper {
    /// Starts and stops the single-instance duties (the node's, or a test's record of them).
    public struct Duties: Sendable {
        public let start: @Sendable (UInt64) async -> Void
        public let stop: @Sendable (UInt64, String) async -> Void

        public init(start: @escaping @Sendable (UInt64) async -> Void, stop: @escaping @Sendable (UInt64, String) async -> Void) {
            self.start = start
            self.stop = stop
        }
    }

    public nonisolated let table: RegionLeaseTable
    private let client: PostgresClient
    private let duties: Duties
    private let logger: Logger
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant
    private var machine: DutyLease

    public init(table: RegionLeaseTable, client: PostgresClient, settings: DutyLease.Settings, duties: Duties, logger: Logger) {
        self.table = table
        self.client = client
        self.duties = duties
        self.logger = logger
        origin = clock.now
        machine = DutyLease(settings: settings, nowMs: 0)
    }

    /// The epoch whose duties run here now (nil: none).
    public var epoch: UInt64? { machine.epoch }

    private var nowMs: UInt64 {
        let elapsed = clock.now - origin
        return UInt64(elapsed.components.seconds) * 1_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000_000_000)
    }

    /// One round: a tick, and whatever the machine asks for in it. Call it at least every renewal interval.
    public func step() async {
        await handle(.ticked)
    }

    /// A duty's statement found the lease at another epoch (`lease_lost`).
    public func fenced(epoch: UInt64) async {
        await handle(.fenced(epoch: epoch))
    }

    /// Stops the duties and gives the lease back.
    public func shutDown() async {
        await handle(.shuttingDown)
    }

    private func handle(_ event: DutyLease.Event) async {
        var pending = machine.handle(event, nowMs: nowMs)
        while !pending.isEmpty {
            let effect = pending.removeFirst()
            if let answer = await carry(effect) { pending += machine.handle(answer, nowMs: nowMs) }
        }
    }

    /// Runs one effect; the machine's event for its answer, if it has one.
    private func carry(_ effect: DutyLease.Effect) async -> DutyLease.Event? {
        let settings = machine.settings
        switch effect {
        case .acquire(let request):
            return await ask(request) { [table, client, logger] () throws(MeridianError) -> RegionLeaseTable.Answer in try await table.acquire(client, ttlMs: settings.ttlMs, logger: logger) }
        case .renew(let epoch, let request):
            return await ask(request, renewal: true) { [table, client, logger] () throws(MeridianError) -> RegionLeaseTable.Answer in try await table.renew(client, epoch: epoch, ttlMs: settings.ttlMs, logger: logger) }
        case .startDuties(let epoch):
            logger.notice("holding the region's lease: starting its single-instance duties", metadata: ["epoch": "\(epoch)", "node": "\(table.node)"])
            await duties.start(epoch)
        case .stopDuties(let epoch, let reason):
            logger.warning("stopping the region's single-instance duties", metadata: ["epoch": "\(epoch)", "node": "\(table.node)", "reason": "\(reason)"])
            await duties.stop(epoch, reason)
        case .release(let epoch):
            do {
                try await table.release(client, epoch: epoch, logger: logger)
            } catch {
                logger.warning("could not give the region's lease back; it expires by itself", metadata: ["epoch": "\(epoch)", "reason": "\(error.message)"])
            }
        }
        return nil
    }

    /// Runs a lease statement bounded by the machine's request timeout.
    private func ask(_ request: UInt64, renewal: Bool = false, _ statement: @escaping @Sendable () async throws(MeridianError) -> RegionLeaseTable.Answer) async -> DutyLease.Event {
        let timeout = Duration.milliseconds(Int64(machine.settings.requestTimeoutMs))
        let answer = await withTaskGroup(of: Result<RegionLeaseTable.Answer, MeridianError>?.self) { group in
            group.addTask {
                do throws(MeridianError) { return .success(try await statement()) } catch { return .failure(error) }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        switch answer {
        case .success(.held(let epoch))?: return renewal ? .renewed(request: request) : .granted(request: request, epoch: epoch)
        case .success(.refused(let holder))?: return .refused(request: request, holder: holder)
        case .failure(let error)?: return .failed(request: request, reason: error.message)
        case nil: return .failed(request: request, reason: "no answer within \(machine.settings.requestTimeoutMs) ms")
        }
    }
}
