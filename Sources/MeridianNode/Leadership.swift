import Foundation
import Logging
import MeridianCore
import MeridianStore
import Synchronization

/// Who leads each single-leader keyspace, as this region knows it, and this region's part in electing them.
///
/// The shell around the core's ``ElectionMember`` (one per keyspace this region replicates): it ticks the
/// members, carries their messages over the replication streams, makes their records durable before
/// anything that depends on them is sent, and decides with ``Fence`` which replicated entries apply.
final class Leadership: Sendable {
    /// One keyspace's election in this region.
    struct Term: Sendable {
        var member: ElectionMember
        /// Where the followed term began (nil while an election runs or until its leader says).
        var start: EpochStart?
        /// The newest epoch among this keyspace's writes held here, and that epoch's leader.
        var newest: (epoch: UInt64, origin: RegionName)
        /// Wall-clock ms when this region last heard the leader, and when it stood for election.
        var leaderHeardWallMs: UInt64?
        var stoodWallMs: UInt64?
        /// The leader before the current election, for the failover report.
        var previousLeader: RegionName?
        /// Writes of a deposed leader held here are being kept aside and their keys brought back to the new
        /// leader's state: the keyspace's entries wait until that is done.
        var reverting = false
        /// The epoch whose start this region has checked its copy against.
        var checkedEpoch: UInt64 = 0
        /// Whether the first write of this region's own term was recorded (the end of the failover's RTO).
        var firstWriteRecorded = true
        /// A term this region just won whose start is being taken: entries wait, then the start is recorded.
        var capturing = false
        /// Leading, and handing over to another region: no new write is accepted.
        var handingOver = false
        /// This region stands because its leader handed over to it (the failover report's reason).
        var handedTo = false
        /// The term this region leads was handed to it (an operator's choice, which failback leaves alone).
        var wonByHandOver = false
    }

    struct Snapshot: Sendable {
        let epoch: UInt64
        let leader: RegionName?
        let role: ElectionMember.Role
        let holdsLease: Bool
        let start: EpochStart?
    }

    let region: RegionName
    let store: RegionStore
    let logger: Logger
    private let terms: Mutex<[KeyspaceName: Term]>
    /// Replicated batches between their fence check and their commit: a new leader takes its start only when
    /// none is in flight, so nothing it applies is missing from the start it announces.
    private let applying = Atomic<Int>(0)
    /// Held while an election state is saved (saves go one at a time, newest state each).
    private let saving = Mutex<Void>(())
    private let started = ContinuousClock.now
    private let wallClockMs: @Sendable () -> UInt64
    let tickInterval: Duration
    /// This region's clock is out of tolerance (``ClockWatch``): the members learn it on their next tick.
    private let clockFenced = Atomic<Bool>(false)

    /// Loads every single-leader keyspace's durable election state (a keyspace never elected starts in epoch 1
    /// led by its configured leader).
    init(region: RegionName, cluster: ClusterConfig, store: RegionStore, wallClockMs: @escaping @Sendable () -> UInt64,
         logger: Logger) throws(MeridianError) {
        self.region = region
        self.store = store
        self.logger = logger
        self.wallClockMs = wallClockMs
        let limits = cluster.limits
        tickInterval = .milliseconds(max(5, limits.heartbeatIntervalMs / 4))
        let stored = try store.elections()
        var terms: [KeyspaceName: Term] = [:]
        let nowMs = (ContinuousClock.now - started).wholeMilliseconds
        for policy in cluster.keyspaces where policy.topology == .singleLeader && policy.isReplica(region) {
            let order = policy.failover?.order ?? policy.leader.map { [$0] + policy.replicas.filter { $0 != policy.leader } } ?? policy.replicas
            guard order.contains(region), let configured = order.first else { continue }
            var rtt: [RegionName: UInt64] = [:]
            for peer in order where peer != region {
                rtt[peer] = UInt64(((cluster.wan.rttMs(region, peer) ?? 0) * max(cluster.wan.latencyScale, 1)).rounded(.up))
            }
            let settings = ElectionMember.Settings(
                order: order, heartbeatIntervalMs: UInt64(limits.heartbeatIntervalMs),
                missedHeartbeats: UInt64(policy.failover?.missedHeartbeats ?? limits.missedHeartbeatsMax), rttMs: rtt)
            // A keyspace never elected here starts in epoch 1 led by its configured leader; the record is stored
            // at once, so only the very first start of a region leads without an election.
            let firstTerm = stored[policy.name] == nil
            let election = stored[policy.name] ?? StoredElection(record: ElectionRecord(leader: configured), start: .initial(leader: configured))
            if firstTerm { try store.saveElection(policy.name, election) }
            let newest = try store.newestEpoch(keyspace: policy.name) ?? (0, configured)
            // Right after a start, streams take a moment (and reconnect backoff) to come up: a follower waits ten
            // suspicion times before suspecting a leader it has not heard yet. A sole replica needs none.
            let grace = order.count > 1 ? 10 * settings.heartbeatIntervalMs * settings.missedHeartbeats : 0
            let member = ElectionMember(region: region, settings: settings, record: election.record, nowMs: nowMs, firstTerm: firstTerm, graceMs: grace)
            terms[policy.name] = Term(member: member, start: election.start, newest: newest, firstWriteRecorded: true)
        }
        self.terms = Mutex(terms)
    }

    /// The members' clock: ms since this node started, never jumping.
    private var nowMs: UInt64 { (ContinuousClock.now - started).wholeMilliseconds }

    var keyspaces: [KeyspaceName] { terms.withLock { Array($0.keys) } }

    func snapshot(_ keyspace: KeyspaceName) -> Snapshot? {
        let now = nowMs
        return terms.withLock { terms in
            guard let term = terms[keyspace] else { return nil }
            return Snapshot(epoch: term.member.record.epoch, leader: term.member.leader, role: term.member.role,
                            holdsLease: term.member.holdsLease(nowMs: now), start: term.start)
        }
    }

    /// How far this region's copy of the keyspace reaches, for elections.
    private func position(_ term: Term) -> LogPosition {
        LogPosition(epoch: term.newest.epoch, sequence: store.appliedHighWater()[term.newest.origin] ?? 0)
    }

    // MARK: - Driving the members

    /// Ticks every member until cancelled.
    func run(send: @escaping @Sendable (RegionName, PeerFrame) -> Void, repair: @escaping @Sendable (KeyspaceName, EpochStart) async -> Void) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: tickInterval)
            let fenced = clockFenced.load(ordering: .relaxed)
            for keyspace in keyspaces {
                let now = nowMs
                let effects = terms.withLock { terms -> [ElectionMember.Effect] in
                    guard var term = terms[keyspace] else { return [] }
                    let effects = term.member.setFenced(fenced, nowMs: now) + term.member.tick(nowMs: now, position: position(term))
                    if term.member.role == .candidate && term.stoodWallMs == nil { term.stoodWallMs = wallClockMs() }
                    terms[keyspace] = term
                    return effects
                }
                await carry(effects, keyspace, send: send, repair: repair)
            }
        }
    }

    /// A peer's election message arrived on its stream.
    func received(_ message: ElectionMessage, start: EpochStart?, keyspace: KeyspaceName, from peer: RegionName,
                  send: @escaping @Sendable (RegionName, PeerFrame) -> Void, repair: @escaping @Sendable (KeyspaceName, EpochStart) async -> Void) async {
        let now = nowMs
        let wall = wallClockMs()
        let effects = terms.withLock { terms -> [ElectionMember.Effect] in
            guard var term = terms[keyspace] else { return [] }
            if case .timeoutNow = message {
                // Stand only holding everything the handing-over leader's term began with (its own log it checked
                // itself): otherwise a majority write of an earlier term, held by the leader but not here, could be
                // left behind. Not caught up: decline, and an ordinary election follows.
                let applied = store.appliedHighWater()
                guard let start, start.leader == peer,
                      start.applied.allSatisfy({ origin, sequence in origin == peer || applied[origin, default: 0] >= sequence }) else {
                    logger.warning("declined a hand-over: not caught up with the leader's term", metadata: ["keyspace": "\(keyspace)", "from": "\(peer)"])
                    return []
                }
            }
            var effects = term.member.received(message, from: peer, nowMs: now, position: position(term))
            if case .timeoutNow = message, term.member.role == .candidate { term.handedTo = true }
            if case .heartbeat(let epoch, _) = message, term.member.record.epoch == epoch, term.member.leader == peer {
                term.leaderHeardWallMs = wall
                // The leader says where its term began: learn it once, durably (with the record).
                if let start, start.epoch == epoch, start.leader == peer, term.start != start {
                    term.start = start
                    if !effects.contains(where: { if case .persist = $0 { true } else { false } }) {
                        effects.insert(.persist(term.member.record), at: 0)
                    }
                }
            }
            terms[keyspace] = term
            return effects
        }
        await carry(effects, keyspace, send: send, repair: repair)
    }

    /// Carries out a member's effects in order: nothing after a `persist` goes out unless the record is durable.
    private func carry(_ effects: [ElectionMember.Effect], _ keyspace: KeyspaceName,
                       send: @escaping @Sendable (RegionName, PeerFrame) -> Void, repair: @escaping @Sendable (KeyspaceName, EpochStart) async -> Void) async {
        for effect in effects {
            switch effect {
            case .persist:
                // The member's current record (never an older copy), with the start if it belongs to its epoch.
                do {
                    try persist(keyspace)
                } catch {
                    logger.error("election state not stored; not acting on it", metadata: ["keyspace": "\(keyspace)", "reason": "\(error.message)"])
                    stepDown(keyspace)
                    return
                }
            case .send(let peer, let message):
                var start: EpochStart?
                switch message {
                case .heartbeat, .timeoutNow: start = terms.withLock { $0[keyspace]?.start }
                default: break
                }
                send(peer, .election(keyspace: keyspace, message: message, start: start))
            case .becameLeader(let epoch):
                // Off the stream's and the ticker's loops: it waits for batches in flight.
                terms.withLock { $0[keyspace]?.capturing = true }
                Task { await self.takeOffice(keyspace, epoch: epoch) }
            case .following(let epoch, let leader):
                terms.withLock { terms in
                    guard var term = terms[keyspace] else { return }
                    if let leader, leader != region {
                        term.leaderHeardWallMs = wallClockMs()
                        term.previousLeader = nil
                        term.stoodWallMs = nil
                    } else if term.previousLeader == nil {
                        // An election began: remember who led before, for the failover report.
                        term.previousLeader = term.start?.leader
                    }
                    if term.start?.epoch != epoch { term.start = nil }
                    terms[keyspace] = term
                }
                logger.info("following", metadata: ["keyspace": "\(keyspace)", "epoch": "\(epoch)", "leader": "\(leader.map(\.rawValue) ?? "none yet")"])
            }
        }
        // A known start this region has not checked its copy against: keep aside what a deposed leader wrote.
        // The keyspace's entries wait meanwhile, and batches admitted under the previous term commit first, so
        // the check sees everything applied before the start was known.
        let pending: EpochStart? = terms.withLock { terms in
            guard var term = terms[keyspace], let start = term.start, start.epoch == term.member.record.epoch,
                  term.checkedEpoch < start.epoch, !term.capturing else { return nil }
            term.checkedEpoch = start.epoch
            term.reverting = true
            terms[keyspace] = term
            return start
        }
        if let pending {
            Task {
                await self.drainApplying(keyspace, "checking for a deposed leader's writes")
                await repair(keyspace, pending)
                self.terms.withLock { terms in
                    // A newer term's check owns the flag now.
                    if terms[keyspace]?.checkedEpoch == pending.epoch { terms[keyspace]?.reverting = false }
                }
            }
        }
    }

    /// This region won `epoch`: once no replicated batch is between its fence check and its commit, the term's
    /// start is what this region holds, recorded durably before any heartbeat announces it or any write is taken.
    private func takeOffice(_ keyspace: KeyspaceName, epoch: UInt64) async {
        terms.withLock { $0[keyspace]?.capturing = true }
        await drainApplying(keyspace, "taking office")
        let applied = store.appliedHighWater()
        let history: [TermEnd]
        do {
            history = try store.terms(keyspace: keyspace)
        } catch {
            logger.error("the keyspace's terms could not be read; not leading it", metadata: ["keyspace": "\(keyspace)", "reason": "\(error.message)"])
            stepDown(keyspace)
            return
        }
        let wall = wallClockMs()
        let taken = terms.withLock { terms -> (record: ElectionRecord, start: EpochStart, previous: RegionName?, heard: UInt64?, stood: UInt64?, handedTo: Bool)? in
            guard var term = terms[keyspace] else { return nil }
            guard term.member.record.epoch == epoch, term.member.role == .leader else {
                // A newer epoch arrived meanwhile: this term is over before it began.
                term.capturing = false
                terms[keyspace] = term
                return nil
            }
            let start = EpochStart(epoch: epoch, leader: region, applied: applied, terms: history.filter { $0.epoch < epoch })
            term.start = start
            term.checkedEpoch = epoch
            term.firstWriteRecorded = false
            let taken = (term.member.record, start, term.previousLeader, term.leaderHeardWallMs, term.stoodWallMs, term.handedTo)
            term.previousLeader = nil
            term.stoodWallMs = nil
            term.handedTo = false
            term.wonByHandOver = taken.5
            terms[keyspace] = term
            return taken
        }
        guard let taken else { return }
        do {
            try persist(keyspace)
        } catch {
            // Without a durable start the term cannot be announced: step down so the others elect a successor.
            logger.error("the new term could not be stored; not leading it", metadata: ["keyspace": "\(keyspace)", "reason": "\(error.message)"])
            stepDown(keyspace)
            return
        }
        terms.withLock { $0[keyspace]?.capturing = false }
        if epoch > 1 {
            do {
                try await store.recordFailover(keyspace: keyspace, epoch: epoch, leader: region, previousLeader: taken.previous, lastHeardMs: taken.heard,
                                               suspectedMs: taken.stood ?? wall, electedMs: wall, reason: taken.handedTo ? "transfer" : "failure")
            } catch {
                logger.warning("the failover could not be recorded in the report", metadata: ["keyspace": "\(keyspace)", "reason": "\(error.message)"])
            }
        }
        logger.notice("leading", metadata: ["keyspace": "\(keyspace)", "epoch": "\(epoch)", "previous": "\(taken.previous.map(\.rawValue) ?? "none")"])
    }

    /// Stops leading a keyspace whose election state cannot be stored: its heartbeats stop, so the others elect.
    private func stepDown(_ keyspace: KeyspaceName) {
        let now = nowMs
        terms.withLock { terms in
            guard var term = terms[keyspace] else { return }
            _ = term.member.stepDown(nowMs: now)
            term.capturing = false
            terms[keyspace] = term
        }
    }

    /// Waits until no replicated batch is between its fence check and its commit (bounded: 2 s, then says so).
    private func drainApplying(_ keyspace: KeyspaceName, _ purpose: String) async {
        let deadline = ContinuousClock.now + .seconds(2)
        while applying.load(ordering: .acquiring) > 0 {
            guard ContinuousClock.now < deadline else {
                logger.warning("replicated batches still committing after 2 s; going on", metadata: ["keyspace": "\(keyspace)", "step": "\(purpose)"])
                return
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// Stores the keyspace's current election record and start, one save at a time, so a save computed
    /// earlier can never overwrite a later one (a forgotten vote could let this region vote twice).
    private func persist(_ keyspace: KeyspaceName) throws(MeridianError) {
        try saving.withLock { _ throws(MeridianError) in
            guard let (record, start) = terms.withLock({ terms in terms[keyspace].map { ($0.member.record, $0.start) } }) else { return }
            try store.saveElection(keyspace, StoredElection(record: record, start: start.flatMap { $0.epoch == record.epoch ? $0 : nil }))
        }
    }

    // MARK: - The write path

    /// The clock went out of tolerance, or came back: leaders step down and nobody here stands, or may again.
    func clockFenced(_ fenced: Bool) {
        clockFenced.store(fenced, ordering: .relaxed)
    }

    /// The term a write accepted here now belongs to, if this region leads the keyspace and holds its lease.
    func writableEpoch(_ keyspace: KeyspaceName) -> UInt64? {
        let now = nowMs
        return terms.withLock { terms in
            guard let term = terms[keyspace], term.member.holdsLease(nowMs: now), term.start?.epoch == term.member.record.epoch,
                  !term.capturing, !term.handingOver else { return nil }
            return term.member.record.epoch
        }
    }

    /// A write of `epoch` committed here: the keyspace's copy reaches that epoch, and the first write of a term
    /// this region won ends that failover's RTO.
    func committed(_ keyspace: KeyspaceName, epoch: UInt64) async {
        let first = terms.withLock { terms -> Bool in
            guard var term = terms[keyspace] else { return false }
            if epoch > term.newest.epoch || (epoch == term.newest.epoch && term.newest.origin != region) { term.newest = (epoch, region) }
            let first = !term.firstWriteRecorded && term.member.record.epoch == epoch
            term.firstWriteRecorded = true
            terms[keyspace] = term
            return first
        }
        if first, epoch > 1 { try? await store.recordFirstWrite(keyspace: keyspace, epoch: epoch, atMs: wallClockMs()) }
    }

    // MARK: - The apply path

    /// Waits until every entry of a replicated batch can be judged, then returns the entries to keep aside
    /// (sequence → the epoch that fenced them). The caller must call ``applied(_:)`` after committing.
    /// - Throws: `CancellationError` when the node stops while entries wait (nothing may apply unjudged).
    func admit(_ entries: [ReplicationEntry]) async throws -> [UInt64: UInt64] {
        var waited = 0
        while true {
            let verdict = terms.withLock { terms -> [UInt64: UInt64]? in
                var diverted: [UInt64: UInt64] = [:]
                for entry in entries {
                    guard let term = terms[entry.keyspace] else { continue }
                    if term.capturing || term.reverting { return nil }
                    switch Fence.verdict(epoch: entry.epoch, origin: entry.origin, sequence: entry.sequence,
                                         following: term.member.record.epoch, start: term.start) {
                    case .apply: break
                    case .divert: diverted[entry.sequence] = term.member.record.epoch
                    case .wait: return nil
                    }
                }
                applying.add(1, ordering: .acquiringAndReleasing)
                return diverted
            }
            if let verdict { return verdict }
            try Task.checkCancellation()
            waited += 1
            if waited % 500 == 0 {
                logger.info("replicated entries wait for an election to settle", metadata: ["waited_ms": "\(waited * 10)"])
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// A batch admitted by ``admit(_:)`` was committed (or failed): the copy's newest epoch moves on.
    func applied(_ entries: [ReplicationEntry], diverted: [UInt64: UInt64]) {
        terms.withLock { terms in
            for entry in entries where diverted[entry.sequence] == nil {
                guard var term = terms[entry.keyspace] else { continue }
                if entry.epoch > term.newest.epoch { term.newest = (entry.epoch, entry.origin) }
                terms[entry.keyspace] = term
            }
        }
        applying.subtract(1, ordering: .acquiringAndReleasing)
    }

    // MARK: - Handing over

    /// Hands leadership of a keyspace this region leads to `target`: stops accepting writes, waits (bounded)
    /// until `target` has applied this region's whole log, then steps down and tells `target` to stand.
    /// - Parameter acknowledged: How far `target` has applied this region's log (nil: its stream is down).
    /// - Throws: `leader_unavailable` when this region does not lead; `region_unavailable` when `target` does
    ///   not catch up within `timeout` (leadership stays here and writes resume).
    func handOver(_ keyspace: KeyspaceName, to target: RegionName, timeout: Duration, acknowledged: @Sendable () -> UInt64?,
                  send: @escaping @Sendable (RegionName, PeerFrame) -> Void, repair: @escaping @Sendable (KeyspaceName, EpochStart) async -> Void) async throws(MeridianError) {
        let startedMs = nowMs
        let started = terms.withLock { terms -> Bool in
            // Leading is not enough: a leader deposed while cut off still believes it leads until it hears so.
            guard var term = terms[keyspace], term.member.holdsLease(nowMs: startedMs), !term.handingOver else { return false }
            term.handingOver = true
            terms[keyspace] = term
            return true
        }
        guard started else {
            throw MeridianError(.leaderUnavailable, "\(region) does not lead keyspace '\(keyspace)' now (or has not heard a majority within its lease), so it cannot hand it over.",
                                context: ["keyspace": keyspace.rawValue])
        }
        let deadline = ContinuousClock.now + timeout
        var caughtUp = false
        // Writes admitted before the hand-over began commit within moments; the target must hold them all.
        try? await Task.sleep(for: .milliseconds(20))
        while ContinuousClock.now < deadline {
            let own = store.appliedHighWater()[region] ?? 0
            if let applied = acknowledged(), applied >= own {
                caughtUp = true
                break
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        guard caughtUp else {
            terms.withLock { $0[keyspace]?.handingOver = false }
            throw MeridianError(.regionUnavailable, "\(target) did not catch up with \(region)'s log within \(timeout); \(region) keeps leading keyspace '\(keyspace)'.",
                                context: ["keyspace": keyspace.rawValue, "region": target.rawValue])
        }
        let now = nowMs
        let effects = terms.withLock { terms -> [ElectionMember.Effect] in
            guard var term = terms[keyspace] else { return [] }
            let effects = term.member.handOver(to: target, nowMs: now)
            term.handingOver = false
            terms[keyspace] = term
            return effects
        }
        guard !effects.isEmpty else {
            throw MeridianError(.leaderUnavailable, "\(region) lost its lease on keyspace '\(keyspace)' while \(target) caught up, so it handed nothing over; an election follows if it was deposed.",
                                context: ["keyspace": keyspace.rawValue, "region": target.rawValue])
        }
        await carry(effects, keyspace, send: send, repair: repair)
        logger.notice("handed over", metadata: ["keyspace": "\(keyspace)", "to": "\(target)"])
    }

    /// Single-leader keyspaces whose leader here should hand back to the first region of their failover order:
    /// those this region won by an election after a failure (a manual failover stays where it was sent).
    func failbackCandidates(_ cluster: ClusterConfig) -> [(KeyspaceName, RegionName)] {
        let now = nowMs
        return terms.withLock { terms in
            terms.compactMap { name, term in
                guard term.member.holdsLease(nowMs: now), !term.handingOver, !term.wonByHandOver, let policy = cluster.keyspace(name), policy.failover?.failback == true,
                      let preferred = term.member.settings.order.first, preferred != region else { return nil }
                return (name, preferred)
            }
        }
    }

    /// For anti-entropy: single-leader keyspaces repair only from their leader, whose copy is the truth.
    func leader(_ keyspace: KeyspaceName) -> RegionName? {
        terms.withLock { $0[keyspace]?.member.leader }
    }
}

extension Duration {
    /// The duration in whole milliseconds (never negative: the node's clocks only run forward).
    var wholeMilliseconds: UInt64 {
        UInt64(max(0, components.seconds)) * 1000 + UInt64(max(0, components.attoseconds) / 1_000_000_000_000_000)
    }
}
