import MeridianCore
import Synchronization

/// This region's side of the stream that ships its log to one peer: the core's ``LogShipper`` for the
/// current connection, what the peer has confirmed, the link's health, and writes forwarded to the peer.
///
/// The connection task reads frames and calls in; the effects (batches to send, heartbeats, forwarded
/// writes) go to the connection's outbox, which one writer task drains in order.
final class OutboundLink: Sendable {
    /// What the connection's writer task sends.
    enum Command: Sendable {
        /// Send the log entries the shipper released since the last `ship` (``takeShipment()``).
        case ship
        case heartbeat
        /// A forwarded write or read.
        case forward(PeerFrame)
        /// Tell the peer how far the log is durable now (``takeDurable()``).
        case durable
        /// A commit whose entries this stream may have carried failed: end the stream, so the peer drops them.
        case reset
    }

    /// How the link is doing, for status and admission.
    enum Health: String, Sendable {
        /// Streaming: the peer answered within the silence limit.
        case up
        /// Connected, waiting for the peer's welcome.
        case connecting
        /// No connection, or the peer went silent.
        case down
        /// The peer is behind this region's log retention; only a full resync can repair it.
        case resyncRequired = "resync_required"
    }

    struct Snapshot: Sendable {
        let health: Health
        let acknowledged: UInt64
        let logHighWater: UInt64
        let lastHeard: ContinuousClock.Instant?
        let lastError: String?
        /// The latest `echoMs` the peer acknowledged with (its own clock), returned in heartbeats.
        let echoMs: UInt64
    }

    private struct State {
        var shipper: LogShipper?
        var outbox: AsyncStream<Command>.Continuation?
        /// The log's end, entries whose commit's fsync is under way included: what may ship.
        var logHighWater: UInt64
        /// How far the log is durable: what the peer may apply, and what heartbeats name.
        var durableHighWater: UInt64
        /// A `durable` command is queued and not yet sent.
        var durableQueued = false
        /// A commit failed after this connection may have carried its entries: it ships nothing more and announces no
        /// durable point (its numbers go to other writes, which only the next connection carries), until it ends.
        var failedCommit = false
        var acknowledged: UInt64
        var connected = false
        var lastHeard: ContinuousClock.Instant?
        var lastError: String?
        var resyncRequired = false
        var echoMs: UInt64 = 0
        /// Requests sent to the peer (forwarded writes and reads, hand-overs) awaiting their answers, by id.
        var forwards: [UInt64: CheckedContinuation<Result<PeerReply, MeridianError>, Never>] = [:]
        var nextForwardID: UInt64 = 1
        /// Entries released by the shipper and not yet taken by the writer. Consecutive releases merge, so
        /// a burst of writes travels as one batch rather than a frame (and a peer fsync) per write.
        var shipment: ClosedRange<UInt64>?
        /// Welcomed while this region restores from a backup: requests (anti-entropy) go out, log entries do not.
        var restoring = false
    }

    let peer: RegionName
    /// Where to connect: the WAN emulator's proxy for this link, or the peer's address.
    let endpoint: Endpoint
    /// The peer counts as unreachable after this long without a frame from it.
    let silenceLimit: Duration
    let shipperLimits: LogShipper.Limits
    let forwardsMax: Int
    private let state: Mutex<State>

    init(peer: RegionName, endpoint: Endpoint, silenceLimit: Duration, acknowledged: UInt64, logHighWater: UInt64,
         shipperLimits: LogShipper.Limits, forwardsMax: Int) {
        self.peer = peer
        self.endpoint = endpoint
        self.silenceLimit = silenceLimit
        self.shipperLimits = shipperLimits
        self.forwardsMax = forwardsMax
        state = Mutex(State(logHighWater: logHighWater, durableHighWater: logHighWater, acknowledged: min(acknowledged, logHighWater)))
    }

    // MARK: - Connection events

    /// A connection opened; its writer drains `outbox`.
    func connected(outbox: AsyncStream<Command>.Continuation) {
        state.withLock {
            $0.connected = true
            $0.outbox = outbox
            // An echo vouches only for the stream (and the peer's run) that carried it.
            $0.echoMs = 0
            $0.lastHeard = .now
            $0.shipper = nil
            $0.shipment = nil
            $0.restoring = false
            $0.durableQueued = false
            $0.failedCommit = false
        }
    }

    /// The peer welcomed the stream while this region restores: it carries anti-entropy requests only.
    func heldForRestore() {
        state.withLock { $0.restoring = true }
    }

    /// The peer said how much of this region's log it holds: shipping starts after it.
    /// - Throws: `replication_protocol` when the peer claims entries the log never had, or is behind retention.
    func welcomed(applied: UInt64, logFloor: UInt64) throws(MeridianError) {
        try state.withLock { (state: inout State) throws(MeridianError) in
            guard state.shipper == nil else {
                throw MeridianError(.replicationProtocol, "\(peer) sent a second welcome on one stream.")
            }
            guard applied <= state.logHighWater else {
                throw MeridianError(.replicationProtocol,
                                    "\(peer) holds this region's log up to \(applied), but the log ends at \(state.logHighWater): this region lost committed writes (restored from an old copy?). Replication to \(peer) is stopped; repair this region before it writes again.",
                                    context: ["peer": peer.rawValue, "applied": String(applied), "log": String(state.logHighWater)])
            }
            guard applied >= logFloor else {
                state.resyncRequired = true
                throw MeridianError(.replicationProtocol,
                                    "\(peer) has applied this region's log up to \(applied), but entries up to \(logFloor) were trimmed (log_retention_entries); \(peer) needs a full resync.",
                                    context: ["peer": peer.rawValue, "applied": String(applied), "log_floor": String(logFloor)])
            }
            state.resyncRequired = false
            state.acknowledged = applied
            var shipper = LogShipper(peer: peer, acknowledged: applied, logHighWater: state.logHighWater, limits: shipperLimits)
            let effects = shipper.streamOpened()
            state.shipper = shipper
            // The durable point first: the peer applies what the stream brings up to it, and waits for the next.
            Self.queueDurable(&state)
            Self.carry(effects, &state)
        }
    }

    /// The peer durably applied this region's log up to `applied`; it sent the ack at its own time `echoMs`.
    /// - Throws: `replication_protocol` when it acknowledges entries never sent.
    func acked(_ applied: UInt64, echoMs: UInt64) throws(MeridianError) {
        try state.withLock { (state: inout State) throws(MeridianError) in
            state.echoMs = max(state.echoMs, echoMs)
            // The connection is ending (a failed commit); its acks still name only durable points, and count below.
            if state.failedCommit {
                state.acknowledged = max(state.acknowledged, min(applied, state.durableHighWater))
                return
            }
            guard var shipper = state.shipper else {
                throw MeridianError(.replicationProtocol, "\(peer) acknowledged before the stream was set up.")
            }
            let effects = try shipper.ackReceived(upTo: applied)
            state.shipper = shipper
            state.acknowledged = max(state.acknowledged, applied)
            Self.carry(effects, &state)
        }
    }

    /// Any frame arrived from the peer.
    func heard() {
        state.withLock { $0.lastHeard = .now }
    }

    /// The connection ended: unconfirmed entries are resent on the next one; forwarded writes waiting for an
    /// answer fail, since whether the peer applied them is unknown.
    func disconnected(reason: String?) {
        let waiting = state.withLock { state in
            state.connected = false
            state.shipper = nil
            state.outbox?.finish()
            state.outbox = nil
            state.shipment = nil
            if let reason { state.lastError = reason }
            let waiting = state.forwards
            state.forwards = [:]
            return waiting
        }
        for (_, continuation) in waiting {
            continuation.resume(returning: .failure(MeridianError(
                .regionUnavailable,
                "The stream to \(peer) closed before it answered the forwarded request. A read can be retried; a write may or may not have been applied, so read the key to check before retrying it.",
                context: ["region": peer.rawValue])))
        }
    }

    /// This region's log grew to `sequence`, durable or with its commit's fsync under way: it may ship.
    func logGrew(to sequence: UInt64) {
        state.withLock { state in
            guard sequence > state.logHighWater else { return }
            state.logHighWater = sequence
            guard var shipper = state.shipper else { return }
            let effects = shipper.entriesAppended(upTo: sequence)
            state.shipper = shipper
            Self.carry(effects, &state)
        }
    }

    /// This region's log is durable through `sequence`: the peer hears so (after what the stream already carries).
    func durable(through sequence: UInt64) {
        state.withLock { state in
            guard sequence > state.durableHighWater else { return }
            state.durableHighWater = sequence
            if state.logHighWater < sequence {
                state.logHighWater = sequence
                if var shipper = state.shipper {
                    let effects = shipper.entriesAppended(upTo: sequence)
                    state.shipper = shipper
                    Self.carry(effects, &state)
                }
            }
            if state.shipper != nil { Self.queueDurable(&state) }
        }
    }

    /// A commit whose entries may have shipped failed: the log ends at `sequence` again, and the stream ends so that
    /// the peer drops what it carried beyond (it never applied it: nothing past the durable point applies). From now
    /// on the connection ships nothing and announces no durable point, not even one already queued: the next commits
    /// reuse those numbers, and a durable point sent here would make the peer apply the lost entries under them.
    func commitFailed(logEndsAt sequence: UInt64) {
        state.withLock { state in
            guard state.logHighWater > sequence else { return }
            state.logHighWater = sequence
            state.shipper = nil
            state.shipment = nil
            if state.outbox != nil {
                state.failedCommit = true
                state.outbox?.yield(.reset)
            }
        }
    }

    /// The durable point to send now, for a `durable` command (nil: none, the connection carried a failed commit).
    func takeDurable() -> UInt64? {
        state.withLock { state in
            state.durableQueued = false
            return state.failedCommit ? nil : state.durableHighWater
        }
    }

    private static func queueDurable(_ state: inout State) {
        guard !state.durableQueued, !state.failedCommit, let outbox = state.outbox else { return }
        state.durableQueued = true
        outbox.yield(.durable)
    }

    /// Called on every heartbeat interval: a heartbeat goes out even when batches are flowing, since it
    /// carries the echo that bounds the peer's staleness.
    /// - Returns: Whether the peer went silent (the connection should close).
    func tick() -> Bool {
        state.withLock { state in
            // A stream held for a restore carries requests only, each with its own timeout: the peer has nothing to
            // say on it between them, so its silence ends nothing.
            if let heard = state.lastHeard, ContinuousClock.now - heard > silenceLimit, !state.restoring { return true }
            if state.shipper != nil { state.outbox?.yield(.heartbeat) }
            return false
        }
    }

    /// Queues a frame on the stream if it is set up; dropped otherwise.
    func send(_ frame: PeerFrame) {
        state.withLock { state in
            guard state.shipper != nil || state.restoring else { return }
            state.outbox?.yield(.forward(frame))
        }
    }

    // MARK: - Forwarding

    /// Sends a write or read to the peer and waits for its answer.
    /// - Parameter make: Builds the frame (`forward` or `forwardRead`) from the id its reply will carry.
    /// - Throws: `region_unavailable` when the stream is down or closes first; `overloaded` beyond `forwardsMax`.
    func forward(_ make: (UInt64) -> PeerFrame, timeout: Duration) async throws(MeridianError) -> ForwardedReply {
        switch try await request(make, timeout: timeout) {
        case .forwarded(let reply): return reply
        case .handOver, .repair: throw MeridianError(.replicationProtocol, "\(peer) answered a forwarded request with another kind of reply.")
        }
    }

    /// Asks the peer for one step of an anti-entropy round, and waits (bounded) for its answer.
    func requestRepair(keyspace: KeyspaceName, _ request: RepairRequest, timeout: Duration) async throws(MeridianError) -> RepairReply {
        switch try await self.request({ .repairRequest(id: $0, keyspace: keyspace, request) }, timeout: timeout) {
        case .repair(let reply): return reply
        case .forwarded, .handOver: throw MeridianError(.replicationProtocol, "\(peer) answered a repair request with another kind of reply.")
        }
    }

    /// Asks the peer to hand a keyspace it leads over to `target`, and waits (bounded) for its answer.
    func requestHandOver(keyspace: KeyspaceName, to target: RegionName, timeout: Duration) async throws(MeridianError) -> HandOverOutcome {
        switch try await request({ .handOverRequest(id: $0, keyspace: keyspace, target: target) }, timeout: timeout) {
        case .handOver(let outcome): return outcome
        case .forwarded, .repair: throw MeridianError(.replicationProtocol, "\(peer) answered a hand-over request with another kind of reply.")
        }
    }

    /// Sends a request frame built from the id its answer will carry, and waits (bounded) for the answer.
    private func request(_ make: (UInt64) -> PeerFrame, timeout: Duration) async throws(MeridianError) -> PeerReply {
        let id: UInt64? = try state.withLock { (state: inout State) throws(MeridianError) -> UInt64? in
            guard state.shipper != nil || state.restoring, state.outbox != nil else { return nil }
            guard state.forwards.count < forwardsMax else {
                throw MeridianError(.overloaded, "\(forwardsMax) writes are already forwarded to \(peer) and waiting; retry shortly.",
                                    context: ["forwards_inflight_max": String(forwardsMax)])
            }
            let id = state.nextForwardID
            state.nextForwardID += 1
            return id
        }
        guard let id else {
            throw MeridianError(.regionUnavailable, "This request is served by \(peer), which this region cannot reach now; nothing was sent. Retry shortly, or send it to \(peer) directly.",
                                context: ["region": peer.rawValue], applied: .no)
        }
        let frame = make(id)
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.resolveForward(id: id, .failure(MeridianError(
                .ackTimeout, "\(peer) did not answer the forwarded request within \(timeout); a forwarded write may or may not have been applied. Read the key to check before retrying.",
                context: ["region": peer.rawValue])))
        }
        defer { timer.cancel() }
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<PeerReply, MeridianError>, Never>) in
            let sent = state.withLock { state -> Bool in
                guard let outbox = state.outbox else { return false }
                state.forwards[id] = continuation
                outbox.yield(.forward(frame))
                return true
            }
            if !sent {
                continuation.resume(returning: .failure(MeridianError(
                    .regionUnavailable, "The stream to \(peer) closed before the request could be forwarded; nothing was sent. Retry shortly.",
                    context: ["region": peer.rawValue], applied: .no)))
            }
        }
        return try result.get()
    }

    /// The entries to send now (nil: none), taken from the shipment.
    func takeShipment() -> ClosedRange<UInt64>? {
        state.withLock { state in
            defer { state.shipment = nil }
            return state.shipment
        }
    }

    /// The peer answered a forwarded write or read.
    func forwardAnswered(_ reply: ForwardedReply) {
        resolveForward(id: reply.id, .success(.forwarded(reply)))
    }

    /// The peer answered a hand-over request.
    func handOverAnswered(id: UInt64, _ outcome: HandOverOutcome) {
        resolveForward(id: id, .success(.handOver(outcome)))
    }

    /// The peer answered a repair request.
    func repairAnswered(id: UInt64, _ reply: RepairReply) {
        resolveForward(id: id, .success(.repair(reply)))
    }

    private func resolveForward(id: UInt64, _ result: Result<PeerReply, MeridianError>) {
        state.withLock { $0.forwards.removeValue(forKey: id) }?.resume(returning: result)
    }

    // MARK: - Reading state

    var snapshot: Snapshot {
        state.withLock { state in
            let health: Health
            if state.resyncRequired {
                health = .resyncRequired
            } else if state.shipper != nil, let heard = state.lastHeard, ContinuousClock.now - heard <= silenceLimit {
                health = .up
            } else if state.connected {
                health = .connecting
            } else {
                health = .down
            }
            return Snapshot(health: health, acknowledged: state.acknowledged, logHighWater: state.durableHighWater,
                            lastHeard: state.lastHeard, lastError: state.lastError, echoMs: state.echoMs)
        }
    }

    private static func carry(_ effects: [LogShipper.Effect], _ state: inout State) {
        for effect in effects {
            switch effect {
            case .send(let from, let count):
                let through = from + UInt64(count) - 1
                if let pending = state.shipment {
                    precondition(pending.upperBound + 1 == from, "the shipper releases the log in order")
                    state.shipment = pending.lowerBound...through
                } else {
                    state.shipment = from...through
                    state.outbox?.yield(.ship)
                }
            }
        }
    }
}

/// An answer to a request this region sent on its stream.
enum PeerReply: Sendable {
    case forwarded(ForwardedReply)
    case handOver(HandOverOutcome)
    case repair(RepairReply)
}
