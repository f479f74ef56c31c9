/// How far a region's copy of a single-leader keyspace reaches: the epoch of the newest write it holds and
/// that write's place in its leader's log. Later epochs win; within an epoch, the longer log.
public struct LogPosition: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let epoch: UInt64
    public let sequence: UInt64

    public init(epoch: UInt64, sequence: UInt64) {
        self.epoch = epoch
        self.sequence = sequence
    }

    public static let zero = LogPosition(epoch: 0, sequence: 0)

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.epoch, lhs.sequence) < (rhs.epoch, rhs.sequence) }

    public var description: String { "\(epoch)/\(sequence)" }
}

/// What a region must keep on disk for elections, per keyspace, before it acts on it: the highest epoch it
/// knows with its leader, and the epoch it last voted in with its choice. A region that forgot its vote
/// could vote twice in one epoch and let two leaders be elected.
public struct ElectionRecord: Hashable, Sendable {
    public var epoch: UInt64
    public var leader: RegionName?
    public var votedEpoch: UInt64
    public var votedFor: RegionName?

    public init(epoch: UInt64 = 1, leader: RegionName?, votedEpoch: UInt64 = 0, votedFor: RegionName? = nil) {
        self.epoch = epoch
        self.leader = leader
        self.votedEpoch = votedEpoch
        self.votedFor = votedFor
    }
}

/// The messages regions exchange to keep and elect a keyspace's leader.
public enum ElectionMessage: Hashable, Sendable {
    /// The leader of `epoch` is alive; `sentMs` is its own clock when sent (echoed back to time its lease).
    case heartbeat(epoch: UInt64, sentMs: UInt64)
    /// A follower of `epoch` heard the heartbeat sent at `sentMs` and will not vote for another candidate
    /// until its election timeout has passed since it heard it.
    case heartbeatAck(epoch: UInt64, sentMs: UInt64)
    /// A candidate asks for votes in `epoch`, stating how far its copy reaches.
    case voteRequest(epoch: UInt64, position: LogPosition)
    /// A region's answer to a vote request.
    case vote(epoch: UInt64, granted: Bool)
    /// A region knows a later epoch than the sender; the sender must step down and follow.
    case newerEpoch(epoch: UInt64, leader: RegionName?)
    /// Before standing, a region asks whether it could win `epoch` (the one it would stand in). Nobody's state
    /// changes, so a region cut off from the others and back cannot depose a working leader by having
    /// counted epochs up while alone (Raft's pre-vote).
    case preVoteRequest(epoch: UInt64, position: LogPosition)
    /// The answer: granted when the region has not heard a leader within its election timeout and the asker
    /// is at least as caught up.
    case preVote(epoch: UInt64, granted: Bool)
    /// The leader of `epoch` has stepped down in favour of the receiver (manual failover or failback) after it
    /// caught up: the receiver stands at once.
    case timeoutNow(epoch: UInt64)
    /// A vote request of a region its leader handed over to: voters grant it although they heard that
    /// leader lately (it stopped acknowledging before it handed over), still only to a caught-up candidate.
    case transferVoteRequest(epoch: UInt64, position: LogPosition)
}

/// One region's part in electing a single-leader keyspace's leader: failure detection, epoch elections with
/// one durable vote per epoch, and the leader's lease. Pure and deterministic: time comes in with every call
/// and everything it wants done comes out as effects, so the node and the simulator drive the same logic.
///
/// Safety rests on three rules:
/// - a leader needs the votes of a majority of the keyspace's replicas for its epoch, and a region votes at
///   most once per epoch, durably: at most one leader per epoch;
/// - a region votes only for a candidate at least as caught up as itself: every write a majority held is
///   held by the new leader (RPO 0 for `majority` writes);
/// - a region that heard the leader within its election timeout votes for no one, and a leader acknowledges
///   writes only while a majority heard it within its lease (half of each confirming region's timeout, the
///   maximum clock-rate error): a deposed leader has stopped acknowledging before a successor can exist.
public struct ElectionMember: Sendable {
    /// Fixed settings of one keyspace's election in one region.
    public struct Settings: Sendable {
        /// The keyspace's replicas, in failover order (the first is the preferred leader).
        public var order: [RegionName]
        public var heartbeatIntervalMs: UInt64
        /// Heartbeat intervals without word from the leader before it is suspected.
        public var missedHeartbeats: UInt64
        /// The round trip to each peer, in ms: a slow link is not a dead one.
        public var rttMs: [RegionName: UInt64]
        /// How long after a candidacy without a majority a region may stand again.
        public var candidacyTimeoutMs: UInt64

        public init(order: [RegionName], heartbeatIntervalMs: UInt64, missedHeartbeats: UInt64, rttMs: [RegionName: UInt64]) {
            precondition(!order.isEmpty && heartbeatIntervalMs > 0 && missedHeartbeats > 0)
            self.order = order
            self.heartbeatIntervalMs = heartbeatIntervalMs
            self.missedHeartbeats = missedHeartbeats
            self.rttMs = rttMs
            candidacyTimeoutMs = heartbeatIntervalMs * missedHeartbeats + 2 * (rttMs.values.max() ?? 0)
        }

        /// Silence after which `region` counts as failed: missed heartbeats plus the round trip to it.
        public func suspicionMs(_ region: RegionName) -> UInt64 {
            heartbeatIntervalMs * missedHeartbeats + (rttMs[region] ?? 0)
        }

        /// How long after sending a heartbeat that `peer` acknowledged the leader may count on `peer`: half the
        /// silence after which `peer` suspects it (missed heartbeats plus their round trip), so clock rates may
        /// differ by a factor of two before it matters. `peer` votes for no one before that silence has passed
        /// since it heard the heartbeat, which was after the leader sent it.
        public func leaseMs(confirmedBy peer: RegionName) -> UInt64 {
            (heartbeatIntervalMs * missedHeartbeats + (rttMs[peer] ?? 0)) / 2
        }

        var majority: Int { order.count / 2 + 1 }
    }

    /// What the caller must do.
    public enum Effect: Hashable, Sendable {
        /// Make the record durable before sending anything that follows it.
        case persist(ElectionRecord)
        case send(to: RegionName, ElectionMessage)
        /// This region leads `epoch` from now on (it may acknowledge writes while `holdsLease`).
        case becameLeader(epoch: UInt64)
        /// This region no longer leads; `leader` leads `epoch` (nil while an election runs).
        case following(epoch: UInt64, leader: RegionName?)
    }

    public enum Role: Hashable, Sendable {
        case follower
        case candidate
        case leader
    }

    public let region: RegionName
    public let settings: Settings
    public private(set) var record: ElectionRecord
    public private(set) var role: Role
    /// When this region last heard the leader (or granted a vote), on its own clock.
    private var lastHeardMs: UInt64
    /// Before this, right after a start, the region does not stand (its streams are still coming up).
    private var standNotBeforeMs: UInt64
    /// Regions stand in failover order (false only for the simulator's planted bug: each stands once its own
    /// silence ran out, and none defers to a preferred one).
    public var ranksByOrder = true
    /// Candidate: votes received in the current candidacy.
    private var votes: Set<RegionName> = []
    private var candidacyStartedMs: UInt64 = 0
    /// Follower asking whether it could win: the epoch it asks about and the regions that said yes.
    private var preVoteEpoch: UInt64?
    private var preVotes: Set<RegionName> = []
    private var preVoteStartedMs: UInt64 = 0
    /// When the pre-vote requests last went out (they are repeated each heartbeat interval while unanswered).
    private var preVoteAskedMs: UInt64 = 0
    /// Leader: per follower, the send time of the newest heartbeat it acknowledged.
    private var confirmedSentMs: [RegionName: UInt64] = [:]
    private var lastHeartbeatMs: UInt64 = 0
    /// The region's clock is out of tolerance (``ClockFence``): it neither stands, nor wins, nor leads.
    public private(set) var fenced = false

    /// Starts a member from its durable record (a restart forgets everything else). A restarted region
    /// never resumes leading by itself: it follows, and stands again only through an election.
    /// - Parameters:
    ///   - firstTerm: The keyspace has never held an election anywhere (its first start): the region the record
    ///     names leads epoch 1 without one, once a majority acknowledges its heartbeats (its lease).
    ///   - graceMs: How long after starting the region gives its streams to connect before it stands against a leader
    ///     it has not heard yet (regions of a cluster starting together must not elect before they can hear).
    public init(region: RegionName, settings: Settings, record: ElectionRecord, nowMs: UInt64, firstTerm: Bool = false, graceMs: UInt64 = 0) {
        precondition(settings.order.contains(region), "only a replica takes part in its keyspace's elections")
        self.region = region
        self.settings = settings
        self.record = record
        role = .follower
        // A restart forgets when the leader was last heard: treat it as heard now, so no vote goes to a candidate
        // before a whole silence has passed (a lease counted on this region's earlier acknowledgement may still
        // run). Standing waits longer, for the streams to come up; voting does not, or a region restarted while
        // the leader was down would hold up the others' election for the whole grace.
        lastHeardMs = nowMs
        standNotBeforeMs = nowMs + graceMs
        if record.leader == region {
            if (firstTerm && record.epoch == 1 && record.votedEpoch == 0) || settings.order.count == 1 {
                // The first term, or the keyspace's only replica: nobody else can have led meanwhile.
                role = .leader
                lastHeartbeatMs = 0
            } else {
                // Led before the restart: step down in a fresh epoch's election rather than trust an old lease.
                self.record.leader = nil
            }
        }
    }

    /// The leader this region knows, if any.
    public var leader: RegionName? { role == .leader ? region : record.leader }

    /// Whether this region may acknowledge a write now: it leads, and a majority confirmed it within the lease.
    public func holdsLease(nowMs: UInt64) -> Bool {
        guard role == .leader, !fenced else { return false }
        let fresh = settings.order.filter { peer in
            peer == region || (confirmedSentMs[peer].map { nowMs < $0 + settings.leaseMs(confirmedBy: peer) } ?? false)
        }
        return fresh.count >= settings.majority
    }

    /// Time passes: heartbeats go out, silence becomes suspicion, suspicion becomes a candidacy.
    /// - Parameter position: How far this region's copy of the keyspace reaches now.
    public mutating func tick(nowMs: UInt64, position: LogPosition) -> [Effect] {
        switch role {
        case .leader:
            guard nowMs >= lastHeartbeatMs + settings.heartbeatIntervalMs else { return [] }
            lastHeartbeatMs = nowMs
            return peers.map { .send(to: $0, .heartbeat(epoch: record.epoch, sentMs: nowMs)) }
        case .candidate:
            guard nowMs >= candidacyStartedMs + settings.candidacyTimeoutMs + stagger else { return [] }
            // The candidacy failed: ask again before standing, so a region cut off meanwhile stops counting up.
            role = .follower
            votes = []
            return askPreVotes(nowMs: nowMs, position: position)
        case .follower:
            if fenced { return [] }
            if settings.order.count == 1 { return stand(nowMs: nowMs, position: position) }
            let silence = record.leader.map { settings.suspicionMs($0) } ?? settings.suspicionMs(region)
            // Regions stand in failover order: each waits its rank in heartbeat intervals more, so the preferred
            // region usually asks first, and one candidacy usually settles it.
            guard nowMs >= lastHeardMs + silence + stagger, nowMs >= standNotBeforeMs else { return [] }
            if let asked = preVoteEpoch, asked == nextEpoch, nowMs < preVoteStartedMs + settings.candidacyTimeoutMs {
                // Still asking. A peer that said no may only have heard the leader a little later than this region
                // (a longer link to it): ask again each heartbeat interval, so this region, preferred over the
                // peers that stand later, is not overtaken by one of them while it waits a whole candidacy.
                guard nowMs >= preVoteAskedMs + settings.heartbeatIntervalMs else { return [] }
                preVoteAskedMs = nowMs
                return peers.filter { !preVotes.contains($0) }.map { .send(to: $0, .preVoteRequest(epoch: asked, position: position)) }
            }
            return askPreVotes(nowMs: nowMs, position: position)
        }
    }

    /// A message from a peer arrived.
    /// - Parameter position: How far this region's copy of the keyspace reaches now.
    public mutating func received(_ message: ElectionMessage, from peer: RegionName, nowMs: UInt64, position: LogPosition) -> [Effect] {
        guard settings.order.contains(peer), peer != region else { return [] }
        switch message {
        case .heartbeat(let epoch, let sentMs):
            if epoch < record.epoch { return [.send(to: peer, .newerEpoch(epoch: record.epoch, leader: leader))] }
            var effects = follow(epoch: epoch, leader: peer)
            lastHeardMs = nowMs
            preVoteEpoch = nil
            effects.append(.send(to: peer, .heartbeatAck(epoch: epoch, sentMs: sentMs)))
            return effects
        case .heartbeatAck(let epoch, let sentMs):
            guard role == .leader, epoch == record.epoch else { return [] }
            confirmedSentMs[peer] = max(confirmedSentMs[peer] ?? 0, sentMs)
            return []
        case .voteRequest(let epoch, let candidatePosition), .transferVoteRequest(let epoch, let candidatePosition):
            if epoch < record.epoch {
                // The candidate is behind: tell it the epoch to beat, so its next candidacy can win.
                return [.send(to: peer, .newerEpoch(epoch: record.epoch, leader: leader))]
            }
            if epoch <= record.votedEpoch {
                return [.send(to: peer, .vote(epoch: epoch, granted: false))]
            }
            // Heard a live leader within the election timeout: that leader may still hold its lease. Its epoch
            // stands, so a region cut off and back cannot depose a working leader by asking.
            let leaderAlive = (role == .leader) || (record.leader != nil && nowMs < lastHeardMs + settings.suspicionMs(record.leader!))
            var handedOver = false
            if case .transferVoteRequest = message { handedOver = role != .leader }
            if leaderAlive && !handedOver { return [.send(to: peer, .vote(epoch: epoch, granted: false))] }
            guard candidatePosition >= position else {
                // Less caught up than this region: no vote. The epoch is taken, though, so this region's own
                // next candidacy asks for a later one, which every region can still grant.
                var effects: [Effect] = [.send(to: peer, .vote(epoch: epoch, granted: false))]
                if epoch > record.epoch {
                    role = .follower
                    votes = []
                    record.epoch = epoch
                    record.leader = nil
                    effects.insert(contentsOf: [.persist(record), .following(epoch: epoch, leader: nil)], at: 0)
                }
                return effects
            }
            var effects: [Effect] = []
            if role != .follower {
                role = .follower
            }
            record.votedEpoch = epoch
            record.votedFor = peer
            if epoch > record.epoch {
                record.epoch = epoch
                record.leader = nil
                effects.append(.following(epoch: epoch, leader: nil))
            }
            // Granting a vote restarts this region's own timeout: the candidate gets its chance first.
            lastHeardMs = nowMs
            effects.insert(.persist(record), at: 0)
            effects.append(.send(to: peer, .vote(epoch: epoch, granted: true)))
            return effects
        case .vote(let epoch, let granted):
            guard role == .candidate, !fenced, epoch == record.epoch, granted else { return [] }
            votes.insert(peer)
            guard votes.count >= settings.majority else { return [] }
            role = .leader
            record.leader = region
            confirmedSentMs = [:]
            lastHeartbeatMs = nowMs
            return [.persist(record), .becameLeader(epoch: epoch)] + peers.map { .send(to: $0, .heartbeat(epoch: epoch, sentMs: nowMs)) }
        case .newerEpoch(let epoch, let leader):
            guard epoch > record.epoch else { return [] }
            lastHeardMs = nowMs
            return follow(epoch: epoch, leader: leader)
        case .preVoteRequest(let epoch, let candidatePosition):
            if epoch <= record.epoch {
                // The asker is behind on epochs: tell it the current one (and its leader), so it follows.
                return [.send(to: peer, .newerEpoch(epoch: record.epoch, leader: leader))]
            }
            // No while this region leads, runs its own candidacy, or heard a leader or gave a vote within a
            // silence: a region that just voted in an election still running must not let another candidacy
            // start, whose higher epoch would depose the winner the moment it is elected (a livelock the
            // simulator found when the most caught-up region could not win).
            let busy = role == .leader
                || (role == .candidate && nowMs < candidacyStartedMs + settings.candidacyTimeoutMs)
                || nowMs < lastHeardMs + (record.leader.map { settings.suspicionMs($0) } ?? settings.suspicionMs(peer))
            let granted = !busy && candidatePosition >= position && !prefersItself(over: peer, candidatePosition: candidatePosition, position: position, nowMs: nowMs)
            return [.send(to: peer, .preVote(epoch: epoch, granted: granted))]
        case .preVote(let epoch, let granted):
            guard role == .follower, !fenced, preVoteEpoch == epoch, granted else { return [] }
            preVotes.insert(peer)
            guard preVotes.count >= settings.majority else { return [] }
            return stand(nowMs: nowMs, position: position)
        case .timeoutNow(let epoch):
            // Only from the leader this region follows, in its epoch.
            guard role == .follower, !fenced, epoch == record.epoch, record.leader == peer else { return [] }
            return stand(nowMs: nowMs, position: position, handedOver: true)
        }
    }

    /// This region's clock went out of tolerance, or came back. Fenced, a leader steps down at once, a
    /// candidate gives up, and the region stands in no election (it still votes: a vote carries no timestamp).
    public mutating func setFenced(_ fenced: Bool, nowMs: UInt64) -> [Effect] {
        guard fenced != self.fenced else { return [] }
        self.fenced = fenced
        guard fenced else { lastHeardMs = nowMs; return [] }
        switch role {
        case .leader:
            return stepDown(nowMs: nowMs)
        case .candidate:
            role = .follower
            votes = []
            lastHeardMs = nowMs
            return []
        case .follower:
            preVoteEpoch = nil
            return []
        }
    }

    /// Every peer's stream is up: the start-up grace has served its purpose (a silent leader now is a dead one),
    /// so this region may stand after an ordinary silence.
    public mutating func streamsConnected(nowMs: UInt64) {
        standNotBeforeMs = min(standNotBeforeMs, nowMs)
    }

    /// Leader: stops leading at once (its disk failed, say) without handing over: the others elect a successor
    /// once its heartbeats stop.
    public mutating func stepDown(nowMs: UInt64) -> [Effect] {
        guard role == .leader else { return [] }
        role = .follower
        confirmedSentMs = [:]
        record.leader = nil
        lastHeardMs = nowMs
        return [.following(epoch: record.epoch, leader: nil)]
    }

    /// Leader: hands leadership to `target`, which the caller has seen catch up with every write acknowledged
    /// here. This region stops acknowledging at once (no lease), then tells `target` to stand; voters grant
    /// `target` although they heard this region lately. If `target` fails to win, an ordinary election follows.
    /// A leader that no longer holds its lease does nothing: a successor may exist already (it was deposed while
    /// cut off and has not heard yet), and telling a region to stand would start a needless election.
    public mutating func handOver(to target: RegionName, nowMs: UInt64) -> [Effect] {
        guard holdsLease(nowMs: nowMs), target != region, settings.order.contains(target) else { return [] }
        role = .follower
        confirmedSentMs = [:]
        record.leader = nil
        // Give the successor its chance before standing again itself.
        lastHeardMs = nowMs
        return [.persist(record), .following(epoch: record.epoch, leader: nil), .send(to: target, .timeoutNow(epoch: record.epoch))]
    }

    private var peers: [RegionName] { settings.order.filter { $0 != region } }

    /// Asks every peer whether it would vote for this region in the next epoch; only a majority's yes makes it
    /// stand (and move the epoch).
    private mutating func askPreVotes(nowMs: UInt64, position: LogPosition) -> [Effect] {
        let epoch = nextEpoch
        preVoteEpoch = epoch
        preVotes = [region]
        preVoteStartedMs = nowMs
        preVoteAskedMs = nowMs
        return peers.map { .send(to: $0, .preVoteRequest(epoch: epoch, position: position)) }
    }

    /// The epoch this region would stand in next.
    private var nextEpoch: UInt64 { max(record.epoch, record.votedEpoch) + 1 }

    /// Whether this region, preferred over `peer` in the failover order and at least as caught up, should have
    /// its own chance first: it says no to `peer`'s pre-vote from the moment its own silence ran out until one
    /// candidacy later. The preferred region reachable from a majority so leads, rather than one that happened
    /// to hear the old leader later (a longer link) and then got this region's yes; a region that cannot win in
    /// that time says yes again, so the rule delays an election by at most one candidacy and never blocks one.
    private func prefersItself(over peer: RegionName, candidatePosition: LogPosition, position: LogPosition, nowMs: UInt64) -> Bool {
        guard ranksByOrder, !fenced, role != .leader, position >= candidatePosition,
              let own = settings.order.firstIndex(of: region), let theirs = settings.order.firstIndex(of: peer), own < theirs else { return false }
        // Only once its own silence ran out (it stands within its stagger): a region still in its start-up grace,
        // or that heard the leader later, would hold the others back without standing itself.
        let silence = record.leader.map { settings.suspicionMs($0) } ?? settings.suspicionMs(region)
        return nowMs >= lastHeardMs + silence && nowMs >= standNotBeforeMs && nowMs < lastHeardMs + silence + stagger + settings.candidacyTimeoutMs
    }

    private var stagger: UInt64 {
        guard ranksByOrder else { return 0 }
        return UInt64(settings.order.firstIndex(of: region) ?? settings.order.count) * settings.heartbeatIntervalMs * 2
    }

    /// Follows `leader` in `epoch`: a later epoch, or the elected leader of the current one (a candidate
    /// that lost steps down). Two leaders in one epoch cannot happen (one vote per epoch), so a leader ignores
    /// a claim to its own epoch.
    private mutating func follow(epoch: UInt64, leader: RegionName?) -> [Effect] {
        if epoch < record.epoch { return [] }
        if epoch == record.epoch {
            if role == .leader { return [] }
            if role == .follower && (record.leader == leader || leader == nil) { return [] }
        }
        role = .follower
        votes = []
        preVoteEpoch = nil
        confirmedSentMs = [:]
        record.epoch = epoch
        record.leader = leader
        return [.persist(record), .following(epoch: epoch, leader: leader)]
    }

    /// A region restored from a backup may have voted, before its copy was lost, in any epoch up to `epoch`: it votes
    /// in none of them again (a second vote in one epoch could elect two leaders), and stands only above them.
    public mutating func forgoVotes(through epoch: UInt64) -> [Effect] {
        guard epoch > record.votedEpoch else { return [] }
        record.votedEpoch = epoch
        record.votedFor = nil
        return [.persist(record)]
    }

    /// Stands for the next epoch: votes for itself (durably) and asks every peer.
    private mutating func stand(nowMs: UInt64, position: LogPosition, handedOver: Bool = false) -> [Effect] {
        preVoteEpoch = nil
        let epoch = max(record.epoch, record.votedEpoch) + 1
        role = .candidate
        record.epoch = epoch
        record.leader = nil
        record.votedEpoch = epoch
        record.votedFor = region
        votes = [region]
        candidacyStartedMs = nowMs
        var effects: [Effect] = [.persist(record), .following(epoch: epoch, leader: nil)]
        if votes.count >= settings.majority {
            // A keyspace with one replica elects itself.
            role = .leader
            record.leader = region
            lastHeartbeatMs = nowMs
            return effects + [.persist(record), .becameLeader(epoch: epoch)]
        }
        effects += peers.map { .send(to: $0, handedOver ? .transferVoteRequest(epoch: epoch, position: position) : .voteRequest(epoch: epoch, position: position)) }
        return effects
    }
}
