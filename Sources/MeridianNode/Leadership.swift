import Foundation
import Logging
import MeridianCore
import MeridianStorage
import Synchronization

/// The shell around the core's ``RegionMachine``: it feeds the machine events with the time they happened and
/// carries out its effects, in order, while holding the machine (so no request ever sees a state whose durable
/// copy is not written yet). It decides nothing: which entries apply, when a term starts, when a leader may
/// write and when to hand over are the machine's.
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
        var nextID: UInt64 = 0
        /// Batches waiting to be admitted, and hand-overs waiting for their answer.
        var batches: [RegionMachine.BatchID: CheckedContinuation<Admission, Never>] = [:]
        var handOvers: [RegionMachine.RequestID: CheckedContinuation<Result<RegionName, MeridianError>, Never>] = [:]
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

    /// Loads every single-leader keyspace's durable election state.
    init(region: RegionName, cluster: ClusterConfig, store: any RegionStorage, wallClockMs: @escaping @Sendable () -> UInt64,
         logger: Logger) throws(MeridianError) {
        self.region = region
        self.store = store
        self.logger = logger
        self.wallClockMs = wallClockMs
        tickInterval = .milliseconds(max(5, cluster.limits.heartbeatIntervalMs / 4))
        let stored = try store.elections()
        var newest: [KeyspaceName: (epoch: UInt64, origin: RegionName)] = [:]
        var held: [KeyspaceName: [TermEnd]] = [:]
        for policy in cluster.keyspaces where policy.topology == .singleLeader && policy.isReplica(region) {
            newest[policy.name] = try store.newestEpoch(keyspace: policy.name)
            held[policy.name] = try store.terms(keyspace: policy.name)
        }
        let machine = RegionMachine(region: region, cluster: cluster, stored: stored, newest: newest, held: held, nowMs: 0, wallMs: wallClockMs())
        state = Mutex(State(machine: machine))
    }

    /// The machine's clock: ms since this node started, never jumping.
    private var nowMs: UInt64 { (ContinuousClock.now - started).wholeMilliseconds }

    // MARK: - Queries

    var keyspaces: [KeyspaceName] { state.withLock { $0.machine.keyspaces } }

    func snapshot(_ keyspace: KeyspaceName) -> RegionMachine.Snapshot? {
        let now = nowMs
        return state.withLock { $0.machine.snapshot(keyspace, nowMs: now) }
    }

    /// The term a write accepted here now would belong to, if this region may write the keyspace.
    func writableEpoch(_ keyspace: KeyspaceName) -> UInt64? {
        let now = nowMs
        return state.withLock { $0.machine.writableEpoch(keyspace, nowMs: now) }
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

    /// Gives the shell what it carries effects out with, and stores first terms: call once, before any other
    /// event reaches the machine (the node does, before its streams and ticks start).
    func start(_ carriers: Carriers) {
        state.withLock { state in
            precondition(state.carriers == nil, "the leadership shell starts once")
            state.carriers = carriers
        }
        handle(.started)
    }

    /// Ticks the machine until cancelled: the sleep is the timer, the machine decides what the time means.
    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: tickInterval)
            let peers = state.withLock { $0.carriers }?.peers() ?? [:]
            handle(.ticked(applied: store.appliedHighWater(), peers: peers))
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
    func admitMerge(_ keyspace: KeyspaceName, token: UInt64) -> Bool {
        state.withLock { $0.machine.admitMerge(keyspace, token: token) }
    }

    /// Keys a revert could not bring back because its term is over: the next revert does.
    func reconcileLater(_ keyspace: KeyspaceName, keys: Set<Key>) {
        handle(.reconcileLater(keyspace: keyspace, keys: keys))
    }

    /// An admitted merge committed (or failed: empty keys); `terms` on a complete round's last one.
    func mergeCommitted(_ keyspace: KeyspaceName, token: UInt64, keys: Set<Key>, terms: [TermEnd]?) {
        handle(.mergeCommitted(keyspace: keyspace, token: token, keys: keys, terms: terms))
    }

    /// The clock went out of tolerance, or came back: leaders step down and nobody here stands, or may again.
    func clockFenced(_ fenced: Bool) {
        handle(.clockFenceChanged(fenced: fenced))
    }

    private func handle(_ event: RegionMachine.Event) {
        let (now, wall) = (nowMs, wallClockMs())
        state.withLock { state in carry(state.machine.handle(event, nowMs: now, wallMs: wall), &state) }
        changed.signal()
    }

    /// Carries out effects in order, holding the machine. A failed persist drops the later effects of its
    /// keyspace and is reported to the machine, whose answer is carried in turn.
    private func carry(_ effects: [RegionMachine.Effect], _ state: inout State) {
        var queue = effects[...]
        while let effect = queue.popFirst() {
            switch effect {
            case .persist(let keyspace, let election):
                do {
                    try store.saveElection(keyspace, election)
                } catch {
                    queue = queue.filter { RegionMachine.keyspace(of: $0) != keyspace }
                    queue += state.machine.handle(.persistFailed(keyspace: keyspace, reason: error.message), nowMs: nowMs, wallMs: wallClockMs())
                }
            case .send(let peer, let frame):
                state.carriers?.send(peer, frame)
            case .applyBatch(let id, let diverted):
                state.batches.removeValue(forKey: id)?.resume(returning: .success(diverted))
            case .captureStart(let keyspace, let epoch):
                let event: RegionMachine.Event
                do {
                    // Read in place: the machine admits no batch until the start is captured.
                    event = .startCaptured(keyspace: keyspace, epoch: epoch, applied: store.appliedHighWater(), history: try store.terms(keyspace: keyspace))
                } catch {
                    event = .startCaptureFailed(keyspace: keyspace, epoch: epoch, reason: error.message)
                }
                queue += state.machine.handle(event, nowMs: nowMs, wallMs: wallClockMs())
            case .revert(let keyspace, let start, let keys):
                guard let revert = state.carriers?.revert else { preconditionFailure("a revert before the leadership shell started") }
                Task {
                    await revert(keyspace, start, keys)
                    self.handle(.revertFinished(keyspace: keyspace, epoch: start.epoch))
                }
            case .catchUp(let keyspace, let leader, let epoch):
                guard let catchUp = state.carriers?.catchUp else { preconditionFailure("a catch-up before the leadership shell started") }
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
                    try store.raiseTerms(keyspace: keyspace, terms)
                    event = .heldRaised(keyspace: keyspace, terms: terms)
                } catch {
                    event = .catchUpFailed(keyspace: keyspace, epoch: 0, reason: error.message)
                }
                queue += state.machine.handle(event, nowMs: nowMs, wallMs: wallClockMs())
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
                state.handOvers.removeValue(forKey: id)?.resume(returning: result)
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
        return state.withLock { $0.machine.admitWrite(keyspace, nowMs: now) }
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
        let (now, wall) = (nowMs, wallClockMs())
        let admission = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Admission, Never>) in
                state.withLock { state in
                    guard !Task.isCancelled else {
                        continuation.resume(returning: .failure(CancellationError()))
                        return
                    }
                    state.batches[id] = continuation
                    carry(state.machine.handle(.batchArrived(id, entries: entries), nowMs: now, wallMs: wall), &state)
                }
            }
        } onCancel: {
            state.withLock { state in
                guard let continuation = state.batches.removeValue(forKey: id) else { return }
                carry(state.machine.handle(.batchAbandoned(id), nowMs: nowMs, wallMs: wallClockMs()), &state)
                continuation.resume(returning: .failure(CancellationError()))
            }
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
        let (now, wall) = (nowMs, wallClockMs())
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
                state.withLock { state in
                    guard !Task.isCancelled else {
                        continuation.resume(returning: .failure(stopping))
                        return
                    }
                    state.handOvers[id] = continuation
                    carry(state.machine.handle(.handOverRequested(id, keyspace: keyspace, target: target, timeoutMs: timeoutMs), nowMs: now, wallMs: wall), &state)
                }
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
