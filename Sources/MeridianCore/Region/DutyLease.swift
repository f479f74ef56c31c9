/// Which of a region's nodes carries the region's single-instance duties (numbering the region's log, shipping it
/// to peers, receiving from them, elections, anti-entropy, trimming) when several nodes share one database: the one
/// holding the region's lease row.
///
/// The database grants the lease: a row per region with the holder, an epoch raised by every grant, and an expiry
/// set by the database's own clock. Safety does not rest on clocks: every statement of a duty runs in a transaction
/// that first locks the row for share and checks the epoch it was granted (fencing), so once another node is granted
/// the lease, a former holder's statements fail, however late they run. Time decides only liveness, and what the
/// database cannot fence (shipping frames to peers): a holder counts its lease from the moment it *sent* the request
/// the database answered, by its own monotonic clock, and stops its duties a safety margin before the database can
/// let the row expire, which happened after that moment.
///
/// A pure state machine: events in with `nowMs` (a monotonic clock), effects out; the shell runs the statements and
/// the duties. One request to the database at a time; an answer to anything but the request outstanding is ignored.
public struct DutyLease: Sendable {
    public struct Settings: Sendable, Hashable {
        /// How long the database keeps a lease it granted or renewed, by its clock.
        public var ttlMs: UInt64
        /// How often a holder renews, and a node that does not hold the lease asks for it.
        public var renewEveryMs: UInt64
        /// How long before the database could let the lease expire a holder stops its duties: the clocks' rate
        /// difference over a lease, and the time the shell needs to stop.
        public var marginMs: UInt64
        /// A request unanswered for this long counts as failed (the shell's statement timeout is shorter).
        public var requestTimeoutMs: UInt64

        /// - Throws: `invalid_config` unless a holder renews at least twice before it must stop.
        public init(ttlMs: UInt64 = 5_000, renewEveryMs: UInt64 = 1_000, marginMs: UInt64 = 1_000) throws(MeridianError) {
            guard ttlMs > 0, renewEveryMs > 0, marginMs < ttlMs, renewEveryMs * 2 <= ttlMs - marginMs else {
                throw MeridianError(.invalidConfig, "The region lease's renewal interval (\(renewEveryMs) ms) must fit twice in its time to live (\(ttlMs) ms) less its safety margin (\(marginMs) ms), so a holder renews at least twice before it must stop.")
            }
            self.ttlMs = ttlMs
            self.renewEveryMs = renewEveryMs
            self.marginMs = marginMs
            requestTimeoutMs = renewEveryMs
        }
    }

    /// What the shell does.
    public enum Effect: Sendable, Hashable {
        /// Ask the database for the lease (granted when the row has expired or names this node, with a new epoch).
        case acquire(request: UInt64)
        /// Extend the lease of `epoch`; the database refuses when the row names another epoch.
        case renew(epoch: UInt64, request: UInt64)
        /// Begin the duties, fencing every statement with `epoch`.
        case startDuties(epoch: UInt64)
        /// Stop the duties of `epoch` now (another node may be granted the lease soon, or already was).
        case stopDuties(epoch: UInt64, reason: String)
        /// Give the lease back at shutdown, once the duties stopped, so another node takes over without waiting.
        case release(epoch: UInt64)
    }

    public enum Event: Sendable, Hashable {
        case ticked
        /// The database granted the lease for `request`, with a new epoch.
        case granted(request: UInt64, epoch: UInt64)
        /// The database refused `request`: another node holds an unexpired lease (or, for a renewal, the row has
        /// moved on to another epoch).
        case refused(request: UInt64, holder: String)
        /// The database extended the lease for `request`.
        case renewed(request: UInt64)
        /// `request` failed without an answer (the database unreachable, a timeout): the lease may or may not have
        /// changed.
        case failed(request: UInt64, reason: String)
        /// A fenced statement found the row at another epoch than `epoch`: another node holds the lease.
        case fenced(epoch: UInt64)
        /// The shell could not carry the duties of `epoch` (it could not start them): the node gives the lease back
        /// and asks again only after a lease's time, so a node that can carry them is granted it meanwhile.
        case resigned(epoch: UInt64, reason: String)
        case shuttingDown
    }

    public enum Role: Sendable, Hashable {
        case standby
        /// Holding `epoch`, its duties running until `validUntilMs` unless renewed.
        case holder(epoch: UInt64, validUntilMs: UInt64)
        case stopped
    }

    public let settings: Settings
    public private(set) var role: Role = .standby
    private var outstanding: (id: UInt64, sentMs: UInt64)?
    private var nextRequest: UInt64 = 0
    /// When the next request may go out.
    private var nextAttemptMs: UInt64

    public init(settings: Settings, nowMs: UInt64) {
        self.settings = settings
        nextAttemptMs = nowMs
    }

    /// The epoch whose duties run now (nil: none here).
    public var epoch: UInt64? {
        if case .holder(let epoch, _) = role { epoch } else { nil }
    }

    public mutating func handle(_ event: Event, nowMs: UInt64) -> [Effect] {
        var effects: [Effect] = []
        switch event {
        case .ticked:
            if let outstanding, nowMs - outstanding.sentMs >= settings.requestTimeoutMs {
                self.outstanding = nil
            }
        case .granted(let request, let epoch):
            guard let sent = answered(request) else { break }
            if case .holder(let held, _) = role, held != epoch {
                // Granted anew (the row expired, or a renewal's answer was lost): the old epoch's statements are fenced.
                effects.append(.stopDuties(epoch: held, reason: "the lease was granted again with epoch \(epoch)"))
            }
            let wasHolding = self.epoch == epoch
            guard role != .stopped else {
                effects.append(.release(epoch: epoch))
                break
            }
            role = .holder(epoch: epoch, validUntilMs: sent + settings.ttlMs - settings.marginMs)
            if !wasHolding { effects.append(.startDuties(epoch: epoch)) }
            nextAttemptMs = sent + settings.renewEveryMs
        case .renewed(let request):
            guard let sent = answered(request), case .holder(let epoch, let validUntil) = role else { break }
            role = .holder(epoch: epoch, validUntilMs: max(validUntil, sent + settings.ttlMs - settings.marginMs))
            nextAttemptMs = sent + settings.renewEveryMs
        case .refused(let request, let holder):
            guard answered(request) != nil else { break }
            if case .holder(let epoch, _) = role {
                effects.append(.stopDuties(epoch: epoch, reason: "the lease moved to \(holder)"))
                role = .standby
            }
            nextAttemptMs = nowMs + settings.renewEveryMs
        case .failed(let request, _):
            // A holder keeps its duties until its lease runs out (checked below) and tries again at the next interval.
            guard answered(request) != nil else { break }
            nextAttemptMs = nowMs + settings.renewEveryMs
        case .fenced(let fenced):
            guard case .holder(let epoch, _) = role, epoch == fenced else { break }
            effects.append(.stopDuties(epoch: epoch, reason: "a statement found the lease at another epoch"))
            role = .standby
            nextAttemptMs = nowMs + settings.renewEveryMs
        case .resigned(let resigned, let reason):
            guard case .holder(let epoch, _) = role, epoch == resigned else { break }
            effects.append(.stopDuties(epoch: epoch, reason: reason))
            effects.append(.release(epoch: epoch))
            role = .standby
            // A renewal still under way answers to nobody: it must not bring the next request forward.
            outstanding = nil
            nextAttemptMs = nowMs + settings.ttlMs
        case .shuttingDown:
            if case .holder(let epoch, _) = role {
                effects.append(.stopDuties(epoch: epoch, reason: "the node is shutting down"))
                effects.append(.release(epoch: epoch))
            }
            role = .stopped
        }
        if case .holder(let epoch, let validUntil) = role, nowMs >= validUntil {
            effects.append(.stopDuties(epoch: epoch, reason: "the lease was not renewed in time"))
            role = .standby
        }
        if outstanding == nil, nowMs >= nextAttemptMs {
            switch role {
            case .standby:
                effects.append(.acquire(request: send(nowMs)))
            case .holder(let epoch, _):
                effects.append(.renew(epoch: epoch, request: send(nowMs)))
            case .stopped:
                break
            }
        }
        return effects
    }

    private mutating func send(_ nowMs: UInt64) -> UInt64 {
        nextRequest += 1
        outstanding = (nextRequest, nowMs)
        return nextRequest
    }

    /// When the answered request was sent; nil for an answer to anything but the request outstanding.
    private mutating func answered(_ request: UInt64) -> UInt64? {
        guard let outstanding, outstanding.id == request else { return nil }
        self.outstanding = nil
        return outstanding.sentMs
    }
}
