import Logging
import MeridianCore
import PostgresNIO
import Synchronization

/// Carries out a ``DutyLease``'s effects against the region's lease rows: the shell around the core's machine.
///
/// The machine runs inside the actor without suspending, so events never interleave: a statement runs in a task of
/// its own and feeds its answer back as an event when it comes (the machine ignores one that comes after the request
/// timed out), and the duties start and stop through synchronous calls. So ``step()`` always returns at once, and a
/// holder whose database stopped answering still stops its duties when its lease runs out.
public actor RegionLeaseKeeper {
    /// Starts and stops the single-instance duties (the node's, or a test's record of them). Called on the actor:
    /// they must not block.
    public struct Duties: Sendable {
        public let start: @Sendable (UInt64) -> Void
        public let stop: @Sendable (UInt64, String) -> Void

        public init(start: @escaping @Sendable (UInt64) -> Void, stop: @escaping @Sendable (UInt64, String) -> Void) {
            self.start = start
            self.stop = stop
        }
    }

    /// Statements under way at most (one per request timeout while the database hangs); past it, a request fails at
    /// once.
    static let statementsMax = 4

    public nonisolated let table: RegionLeaseTable
    private let client: PostgresClient
    private let duties: Duties
    private let logger: Logger
    private let clock = ContinuousClock()
    private let origin: ContinuousClock.Instant
    private var machine: DutyLease
    private var statements = 0
    /// The other node last seen holding the lease (logged once per holder).
    private var otherHolder: String?
    private var releases: [Task<Void, Never>] = []
    /// Whether the last event left this process holding the lease.
    private var wasHolding = false

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

    /// The epoch held and until when on this process's clock, readable without waiting for the actor.
    private nonisolated let holding = Mutex<(epoch: UInt64, until: ContinuousClock.Instant)?>(nil)

    /// The epoch this process holds right now (nil: none, or its lease could have run out).
    public nonisolated var heldEpoch: UInt64? {
        guard let held = holding.withLock({ $0 }), ContinuousClock.now < held.until else { return nil }
        return held.epoch
    }

    /// Where the node holding the lease is reached, as last answered (this process's own addresses while it holds it;
    /// nil: nobody holds it, or the holder gave none).
    private nonisolated let serving = Mutex<NodeAddresses?>(nil)

    /// Where the region's other nodes relay to: the lease holder's addresses, as the database last answered.
    public nonisolated var servingNode: NodeAddresses? { serving.withLock { $0 } }

    /// Notes the holder a refusal named.
    private nonisolated func noteServing(_ answer: RegionLeaseTable.Answer) {
        guard case .refused(_, let addresses) = answer else { return }
        serving.withLock { $0 = addresses }
    }

    /// Whether this process holds the lease at `epoch` right now: false from the moment its lease could have run out,
    /// even before the keeper's next tick stops the duties (a process paused past its lease answers false on waking).
    public nonisolated func holds(_ epoch: UInt64) -> Bool {
        heldEpoch == epoch
    }

    private var nowMs: UInt64 {
        let elapsed = clock.now - origin
        return UInt64(elapsed.components.seconds) * 1_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000_000_000)
    }

    /// A tick: call it often (every 100 ms, say); a holder notices a lease that ran out at its next tick.
    public func step() {
        handle(.ticked)
    }

    /// A duty's statement found the lease at another epoch (`lease_lost`).
    public func fenced(epoch: UInt64) {
        handle(.fenced(epoch: epoch))
    }

    /// The duties of `epoch` could not start here: gives the lease back, and asks again only after a lease's time.
    public func resign(epoch: UInt64, reason: String) {
        handle(.resigned(epoch: epoch, reason: reason))
    }

    /// Stops the duties and gives the lease back (waiting, bounded by the request timeout, for the database).
    public func shutDown() async {
        handle(.shuttingDown)
        // A grant answered while these run is given back too (its release joins the list).
        while !releases.isEmpty {
            await releases.removeFirst().value
        }
    }

    private func handle(_ event: DutyLease.Event) {
        let effects = machine.handle(event, nowMs: nowMs)
        let held: (epoch: UInt64, until: ContinuousClock.Instant)? = if case .holder(let epoch, let validUntilMs) = machine.role {
            (epoch, origin + .milliseconds(Int64(validUntilMs)))
        } else {
            nil
        }
        holding.withLock { $0 = held }
        if held != nil {
            serving.withLock { $0 = table.advertised }
        } else if wasHolding {
            // No longer the holder: nobody known until the next answer names one.
            serving.withLock { $0 = nil }
        }
        wasHolding = held != nil
        for effect in effects { carry(effect) }
    }

    private func carry(_ effect: DutyLease.Effect) {
        let settings = machine.settings
        let (table, client, logger) = (table, client, logger)
        switch effect {
        case .acquire(let request):
            ask(request) { () throws(MeridianError) -> DutyLease.Event in
                let answer = try await table.acquire(client, ttlMs: settings.ttlMs, timeoutMs: settings.requestTimeoutMs, logger: logger)
                self.noteServing(answer)
                return switch answer {
                case .held(let epoch): .granted(request: request, epoch: epoch)
                case .refused(let holder, _): .refused(request: request, holder: holder)
                }
            }
        case .renew(let epoch, let request):
            ask(request) { () throws(MeridianError) -> DutyLease.Event in
                let answer = try await table.renew(client, epoch: epoch, ttlMs: settings.ttlMs, timeoutMs: settings.requestTimeoutMs, logger: logger)
                self.noteServing(answer)
                return switch answer {
                case .held: .renewed(request: request)
                case .refused(let holder, _): .refused(request: request, holder: holder)
                }
            }
        case .startDuties(let epoch):
            logger.notice("holding the region's lease: starting its single-instance duties", metadata: ["epoch": "\(epoch)", "holder": "\(table.holder)"])
            duties.start(epoch)
        case .stopDuties(let epoch, let reason):
            logger.warning("stopping the region's single-instance duties", metadata: ["epoch": "\(epoch)", "holder": "\(table.holder)", "reason": "\(reason)"])
            duties.stop(epoch, reason)
        case .release(let epoch):
            releases.append(Task {
                do throws(MeridianError) {
                    try await table.release(client, epoch: epoch, timeoutMs: settings.requestTimeoutMs, logger: logger)
                } catch {
                    logger.warning("could not give the region's lease back; it expires by itself", metadata: ["epoch": "\(epoch)", "reason": "\(error.message)"])
                }
            })
        }
    }

    /// Runs a lease statement in a task of its own; its answer comes back as an event.
    private func ask(_ request: UInt64, _ statement: @escaping @Sendable () async throws(MeridianError) -> DutyLease.Event) {
        guard statements < Self.statementsMax else {
            return handle(.failed(request: request, reason: "\(statements) statements to the database are still under way"))
        }
        statements += 1
        // The task runs on this actor; the statement, a nonisolated closure, does not.
        Task {
            let event: DutyLease.Event
            do throws(MeridianError) { event = try await statement() } catch { event = .failed(request: request, reason: error.message) }
            answered(event)
        }
    }

    private func answered(_ event: DutyLease.Event) {
        statements -= 1
        if case .refused(_, let holder) = event, machine.epoch == nil, holder != otherHolder, !holder.isEmpty {
            otherHolder = holder
            logger.notice("another node holds the region's lease: this one stands by to take over", metadata: ["holder": "\(holder)", "self": "\(table.holder)"])
        }
        handle(event)
    }
}
