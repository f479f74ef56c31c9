import Foundation
import Logging
import MeridianCore
import MeridianStorage
import Synchronization

/// The shell around the core's ``RegionMachine``: it feeds the machine events with the time they happened and
/// carries out its effects. It decides nothing: which entries apply, when a term starts, when a leader may
/// write and when to hand over are the machine's.
///
/// Events queue in arrival order and one task (``run()``) handles them one at a time: the machine's answer to an
/// event is carried out to its last effect, awaiting the store where an effect needs it (a persist is durable
/// before any later effect), before the next event reaches the machine. The machine itself is held only for the
/// moment it takes to handle an event or answer a query, never across a store call. A keyspace whose election
/// state is not yet durable admits no write (``writableEpoch(_:)`` is nil) until it is.
///
/// The queue needs no bound of its own: each producer has at most a few events outstanding (a stream's batch
/// waits for its admission, a write reports once, a hand-over waits for its answer), ticks come every
/// `tickInterval`, and election frames at the rate the peers' heartbeat interval sets.
final class Leadership: Sendable {
    /// What the node gives the shell to carry effects out with, once its streams exist.
    struct Carriers: Sendable {
        /// Sends a frame to a peer over its stream.
        let send: @Sendable (RegionName, PeerFrame) -> Void
        /// Keeps aside a deposed leader's writes and brings their keys to the new leader's state.
        let revert: @Sendable (KeyspaceName, EpochStart, _ keys: Set<Key>) async -> Void
        /// The replication streams' view of each peer.
        let peers: @Sendable () -> [RegionName: RegionMachine.PeerLink]
        /// Pulls a keyspace's states from its leader: hands over the terms the leader holds as soon as it said
        /// them (read before its states), then returns once every state that differs here is merged.
        let catchUp: @Sendable (KeyspaceName, RegionName, _ epoch: UInt64, _ termsRead: @escaping @Sendable ([TermEnd]) -> Void) async throws(MeridianError) -> Void
    }

    /// The outcome of waiting for a replicated batch to be admitted.
    typealias Admission = Result<[UInt64: UInt64], CancellationError>

    private struct State: Sendable {
        var machine: RegionMachine
        var carriers: Carriers?
        /// Keyspaces whose election state the machine changed and the store has not yet made durable.
        var unsaved: Set<KeyspaceName> = []
        var nextID: UInt64 = 0
        /// Batches waiting to be admitted, and hand-overs waiting for their answer.
        var batches: [RegionMachine.BatchID: CheckedContinuation<Admission, Never>] = [:]
        var handOvers: [RegionMachine.RequestID: CheckedContinuation<Result<RegionName, MeridianError>, Never>] = [:]
        /// Waiting for a ``RegionMachine/Event/restoreEnded`` to be handled: whether its records became durable.
        var restoreEnded: [CheckedContinuation<Bool, Never>] = []
    }

    /// A batch the machine admitted: what to keep aside, and the id its commit is reported under.
    struct AdmittedBatch: Sendable {
        let id: RegionMachine.BatchID
        let diverted: [UInt64: UInt64]
    }

    let region: RegionName
    let store: any RegionStorage
    let logger: Logger
    let tickInterval: Duration
    private let state: Mutex<State>
    private let started = ContinuousClock.now
    private let wallClockMs: @Sendable () -> UInt64
    /// Woken after every event: the routes wait on it for leadership to settle.
    private let changed = ProgressSignal()
    /// Events in arrival order, handled one at a time by ``run()``.
    private let events: AsyncStream<RegionMachine.Event>
    private let queue: AsyncStream<RegionMachine.Event>.Continuation

    /// Loads every single-leader keyspace's durable election state.
    /// - Parameter restoring: The store was restored from a backup and the region has not caught up yet
    ///   (``RegionMachine/restoring``).
    init(region: RegionName, cluster: ClusterConfig, store: any RegionStorage, wallClockMs: @escaping @Sendable () -> UInt64,
         logger: Logger, restoring: Bool = false) async throws(MeridianError) {
        self.region = region
        self.store = store
        self.logger = logger
        self.wallClockMs = wallClockMs
        tickInterval = .milliseconds(max(5, cluster.limits.heartbeatIntervalMs / 4))
        let stored = try await store.elections()
        var newest: [KeyspaceName: (epoch: UInt64, origin: RegionName)] = [:]
        var held: [KeyspaceName: [TermEnd]] = [:]
        for policy in cluster.keyspaces where policy.topology == .singleLeader && policy.isReplica(region) {
            newest[policy.name] = try await store.newestEpoch(keyspace: policy.name)
            held[policy.name] = try await store.terms(keyspace: policy.name)
        }
        let machine = RegionMachine(region: region, cluster: cluster, stored: stored, newest: newest, held: held, nowMs: 0, wallMs: wallClockMs(),
                                    restoring: restoring)
        state = Mutex(State(machine: machine))
        (events, queue) = AsyncStream.makeStream(of: RegionMachine.Event.self)
    }

    /// The machine's clock: ms since this node started, never jumping.
    private var nowMs: UInt64 { (ContinuousClock.now - started).wholeMilliseconds }

    // MARK: - Queries

    var keyspaces: [KeyspaceName] { state.withLock { $0.machine.keyspaces } }

    func snapshot(_ keyspace: KeyspaceName) -> RegionMachine.Snapshot? {
        let now = nowMs
        return state.withLock { $0.machine.snapshot(keyspace, nowMs: now) }
    }

    /// The term a write accepted here now would belong to, if this region may write the keyspace (never while
    /// its election state is not yet durable).
    func writableEpoch(_ keyspace: KeyspaceName) -> UInt64? {
        let now = nowMs
        return state.withLock { $0.unsaved.contains(keyspace) ? nil : $0.machine.writableEpoch(keyspace, nowMs: now) }
    }

    /// Whether the log may be trimmed up to what the peers acknowledged (``RegionMachine/mayTrimAcknowledged(nowMs:)``).
    func mayTrimAcknowledged() -> Bool {
        let now = nowMs
        return state.withLock { $0.machine.mayTrimAcknowledged(nowMs: now) }
    }

    /// For anti-entropy: single-leader keyspaces repair only from their leader, whose copy is the truth.
    func leader(_ keyspace: KeyspaceName) -> RegionName? {
        state.withLock { $0.machine.leader(keyspace) }
    }

    /// Whether `epoch` is still the term this region follows.
    func follows(_ keyspace: KeyspaceName, epoch: UInt64) -> Bool {
        state.withLock { $0.machine.follows(keyspace, epoch: epoch) }
    }

    /// Returns after the next event, or after `timeout`.
    func waitForChange(atMost timeout: Duration) async {
        await changed.wait(atMost: timeout)
    }

    // MARK: - Driving the machine

    /// Gives the shell what it carries effects out with: call once, before any other event reaches the machine
    /// (the node does, before its streams and ticks start).
    func start(_ carriers: Carriers) {
        state.withLock { state in
            precondition(state.carriers == nil, "the leadership shell starts once")
            state.carriers = carriers
        }
        handle(.started)
    }

    /// Handles the queued events one at a time, and ticks the machine, until cancelled: the sleep is the timer,
    /// the machine decides what the time means.
    func run() async {
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                for await event in self.events {
                    await self.process(event)
                    self.changed.signal()
                }
            }
            tasks.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.tickInterval)
                    let peers = self.state.withLock { $0.carriers }?.peers() ?? [:]
                    self.handle(.ticked(applied: self.store.appliedHighWater(), peers: peers))
                }
                self.queue.finish()
            }
        }
    }

    /// A peer's election message arrived on its stream.
    func received(_ message: ElectionMessage, start: EpochStart?, keyspace: KeyspaceName, from peer: RegionName) {
        handle(.electionReceived(keyspace: keyspace, message: message, start: start, from: peer, applied: store.appliedHighWater()))
    }

    /// The term a merge of a peer's states of a single-leader keyspace would be admitted under (nil: none now,
    /// or not a single-leader keyspace of this region).
    func mergeToken(_ keyspace: KeyspaceName) -> UInt64? {
        state.withLock { $0.machine.keyspaces.contains(keyspace) ? $0.machine.mergeToken(keyspace) : nil }
    }

    /// Admits one merge under `token`; every admitted merge is reported once with ``mergeCommitted(_:token:keys:terms:)``.
    func admitMerge(_ keyspace: KeyspaceName, token: UInt64, from peer: RegionName) -> Bool {
        state.withLock { $0.machine.admitMerge(keyspace, token: token, from: peer) }
    }

    /// Keys a revert could not bring back because its term is over: the next revert does.
    func reconcileLater(_ keyspace: KeyspaceName, keys: Set<Key>) {
        handle(.reconcileLater(keyspace: keyspace, keys: keys))
    }

    /// An admitted merge committed (or failed: empty keys); `terms` on a complete round's last one.
    func mergeCommitted(_ keyspace: KeyspaceName, token: UInt64, keys: Set<Key>, terms: [TermEnd]?) {
        handle(.mergeCommitted(keyspace: keyspace, token: token, keys: keys, terms: terms))
    }

    /// The region, restored from a backup, caught up: it votes and stands again. Returns once the machine's
    /// election records (with the votes it forgoes) are durable: true, or false when one could not be stored.
    func restoreEnded() async -> Bool {
        await withCheckedContinuation { continuation in
            state.withLock { $0.restoreEnded.append(continuation) }
            handle(.restoreEnded)
        }
    }

    /// The clock went out of tolerance, or came back: leaders step down and nobody here stands, or may again.
    func clockFenced(_ fenced: Bool) {
        handle(.clockFenceChanged(fenced: fenced))
    }

    /// Queues an event for the machine; ``run()`` handles it after every event queued before it.
    private func handle(_ event: RegionMachine.Event) {
        queue.yield(event)
    }

    /// The machine's answer to one event, noting which keyspaces' election state it made unsaved.
    private func machine(_ event: RegionMachine.Event) -> [RegionMachine.Effect] {
        let (now, wall) = (nowMs, wallClockMs())
        return state.withLock { state in
            let effects = state.machine.handle(event, nowMs: now, wallMs: wall)
            for case .persist(let keyspace, _) in effects { state.unsaved.insert(keyspace) }
            return effects
        }
    }

    /// Handles one event and carries out the machine's effects in order, awaiting the store where one needs it.
    /// A failed persist drops the later effects of its keyspace and is reported to the machine, whose answer is
    /// carried in turn.
    private func process(_ event: RegionMachine.Event) async {
        var queue = machine(event)[...]
        let carriers = state.withLock { $0.carriers }
        var persisted = true
        defer {
            if case .restoreEnded = event {
                for waiting in state.withLock({ state in defer { state.restoreEnded = [] }; return state.restoreEnded }) { waiting.resume(returning: persisted) }
            }
        }
        while let effect = queue.popFirst() {
            switch effect {
            case .persist(let keyspace, let election):
                do {
                    try await store.saveElection(keyspace, election)
                    if !queue.contains(where: { if case .persist(keyspace, _) = $0 { true } else { false } }) {
                        state.withLock { _ = $0.unsaved.remove(keyspace) }
                    }
                } catch {
                    persisted = false
                    queue = queue.filter { RegionMachine.keyspace(of: $0) != keyspace }
                    queue += machine(.persistFailed(keyspace: keyspace, reason: error.message))
                    state.withLock { _ = $0.unsaved.remove(keyspace) }
                }
            case .send(let peer, let frame):
                carriers?.send(peer, frame)
            case .applyBatch(let id, let diverted):
                // A batch whose stream stopped waiting is reported as not applied, so the machine stops counting it.
                if let waiting = state.withLock({ $0.batches.removeValue(forKey: id) }) {
                    waiting.resume(returning: .success(diverted))
                } else {
                    queue += machine(.batchCommitted(id, committed: false))
                }
            case .captureStart(let keyspace, let epoch):
                let event: RegionMachine.Event
                do {
                    // Read while no event is handled: the machine admits no batch until the start is captured.
                    let history = try await store.terms(keyspace: keyspace)
                    // What this region holds and its readers see: the election saved next is a durable commit, which
                    // makes every apply before it durable too (a batch's sync may still be on its way).
                    event = .startCaptured(keyspace: keyspace, epoch: epoch, applied: store.visibleHighWater(), history: history)
                } catch {
                    event = .startCaptureFailed(keyspace: keyspace, epoch: epoch, reason: error.message)
                }
                queue += machine(event)
            case .revert(let keyspace, let start, let keys):
                guard let revert = carriers?.revert else { preconditionFailure("a revert before the leadership shell started") }
                Task {
                    await revert(keyspace, start, keys)
                    self.handle(.revertFinished(keyspace: keyspace, epoch: start.epoch))
                }
            case .catchUp(let keyspace, let leader, let epoch):
                guard let catchUp = carriers?.catchUp else { preconditionFailure("a catch-up before the leadership shell started") }
                Task {
                    do throws(MeridianError) {
                        try await catchUp(keyspace, leader, epoch) { terms in self.handle(.catchUpTermsRead(keyspace: keyspace, epoch: epoch, terms: terms)) }
                        self.handle(.catchUpPulled(keyspace: keyspace, epoch: epoch))
                    } catch {
                        self.handle(.catchUpFailed(keyspace: keyspace, epoch: epoch, reason: error.message))
                    }
                }
            case .raiseHeld(let keyspace, let terms):
                let event: RegionMachine.Event
                do {
                    try await store.raiseTerms(keyspace: keyspace, terms)
                    event = .heldRaised(keyspace: keyspace, terms: terms)
                } catch {
                    event = .catchUpFailed(keyspace: keyspace, epoch: 0, reason: error.message)
                }
                queue += machine(event)
            case .recordFailover(let record):
                Task {
                    do throws(MeridianError) {
                        try await store.recordFailover(keyspace: record.keyspace, epoch: record.epoch, leader: record.leader, previousLeader: record.previousLeader,
                                                       lastHeardMs: record.lastHeardWallMs, suspectedMs: record.suspectedWallMs,
                                                       electedMs: record.electedWallMs, reason: record.reason)
                    } catch {
                        logger.warning("the failover could not be recorded in the report", metadata: ["keyspace": "\(record.keyspace)", "reason": "\(error.message)"])
                    }
                }
            case .recordFirstWrite(let keyspace, let epoch, let atWallMs):
                Task {
                    do throws(MeridianError) {
                        try await store.recordFirstWrite(keyspace: keyspace, epoch: epoch, atMs: atWallMs)
                    } catch {
                        logger.warning("the failover's first write could not be recorded in the report", metadata: ["keyspace": "\(keyspace)", "reason": "\(error.message)"])
                    }
                }
            case .handOverFinished(let id, let result):
                state.withLock { $0.handOvers.removeValue(forKey: id) }?.resume(returning: result)
            case .log(let line):
                var metadata = Logger.Metadata()
                for (key, value) in line.metadata { metadata[key] = "\(value)" }
                switch line.level {
                case .info: logger.info("\(line.message)", metadata: metadata)
                case .notice: logger.notice("\(line.message)", metadata: metadata)
                case .warning: logger.warning("\(line.message)", metadata: metadata)
                case .error: logger.error("\(line.message)", metadata: metadata)
                }
            }
        }
    }

    // MARK: - The write path

    /// Admits a local write of a single-leader keyspace: its term, or nil when this region may not write it
    /// now. Every admitted write must be reported once, by ``writeCommitted(_:epoch:sequence:)`` or ``writeAbandoned(_:)``.
    func admitWrite(_ keyspace: KeyspaceName) -> UInt64? {
        let now = nowMs
        return state.withLock { $0.unsaved.contains(keyspace) ? nil : $0.machine.admitWrite(keyspace, nowMs: now) }
    }

    /// An admitted write committed in `epoch` at `sequence` of this region's log.
    func writeCommitted(_ keyspace: KeyspaceName, epoch: UInt64, sequence: UInt64) {
        handle(.writeCommitted(keyspace: keyspace, epoch: epoch, sequence: sequence))
    }

    /// An admitted write was refused or failed before it committed.
    func writeAbandoned(_ keyspace: KeyspaceName) {
        handle(.writeAbandoned(keyspace: keyspace))
    }

    // MARK: - The apply path

    /// Waits until the machine admits a replicated batch, then returns what to keep aside. The caller must
    /// report its commit (or failure) with ``committed(_:_:)``.
    /// - Throws: `CancellationError` when the node stops while the batch waits (nothing may apply unjudged).
    func admit(_ entries: [ReplicationEntry]) async throws -> AdmittedBatch {
        let id = state.withLock { state -> RegionMachine.BatchID in
            state.nextID += 1
            return state.nextID
        }
        let admission = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Admission, Never>) in
                let waiting = state.withLock { state in
                    guard !Task.isCancelled else { return false }
                    state.batches[id] = continuation
                    return true
                }
                guard waiting else { return continuation.resume(returning: .failure(CancellationError())) }
                handle(.batchArrived(id, entries: entries))
            }
        } onCancel: {
            guard let continuation = state.withLock({ $0.batches.removeValue(forKey: id) }) else { return }
            // Still waiting, or admitted a moment ago: the machine drops it either way (``process(_:)`` reports an
            // admitted batch nobody waits for as not applied).
            handle(.batchAbandoned(id))
            continuation.resume(returning: .failure(CancellationError()))
        }
        return AdmittedBatch(id: id, diverted: try admission.get())
    }

    /// A batch admitted by ``admit(_:)`` was committed (or failed to be).
    func committed(_ batch: AdmittedBatch, _ committed: Bool) {
        handle(.batchCommitted(batch.id, committed: committed))
    }

    // MARK: - Handing over

    /// Hands leadership of a keyspace this region leads to `target`, once every write admitted before has
    /// committed and `target` has applied this region's whole log (within `timeoutMs`).
    /// - Throws: `leader_unavailable` when this region does not lead with its lease; `region_unavailable` when
    ///   `target` does not catch up in time (leadership stays here and writes resume).
    func handOver(_ keyspace: KeyspaceName, to target: RegionName, timeoutMs: UInt64) async throws(MeridianError) {
        let id = state.withLock { state -> RegionMachine.RequestID in
            state.nextID += 1
            return state.nextID
        }
        // The machine answers at the latest at the hand-over's deadline, on a tick; a node that stops meanwhile
        // answers for it, so no request outlives the node.
        let stopping = MeridianError(.regionUnavailable, "\(region) is stopping; keyspace '\(keyspace)' was not handed over.",
                                     context: ["keyspace": keyspace.rawValue], applied: .no)
        let stoppingMidway = MeridianError(.regionUnavailable, "\(region) is stopping while it hands keyspace '\(keyspace)' over to \(target); the hand-over may still complete. Check GET /v1/status.",
                                           context: ["keyspace": keyspace.rawValue, "region": target.rawValue], applied: .maybe)
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<RegionName, MeridianError>, Never>) in
                let waiting = state.withLock { state in
                    guard !Task.isCancelled else { return false }
                    state.handOvers[id] = continuation
                    return true
                }
                guard waiting else { return continuation.resume(returning: .failure(stopping)) }
                handle(.handOverRequested(id, keyspace: keyspace, target: target, timeoutMs: timeoutMs))
            }
        } onCancel: {
            state.withLock { $0.handOvers.removeValue(forKey: id) }?.resume(returning: .failure(stoppingMidway))
        }
        changed.signal()
        _ = try result.get()
    }
}

extension Duration {
    /// The duration in whole milliseconds (never negative: the node's clocks only run forward).
    var wholeMilliseconds: UInt64 {
        UInt64(max(0, components.seconds)) * 1000 + UInt64(max(0, components.attoseconds) / 1_000_000_000_000_000)
    }
}
