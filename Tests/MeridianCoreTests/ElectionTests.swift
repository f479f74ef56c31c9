// Proves the election core (`ElectionMember`) the failover issue builds on: the preferred region is
// elected, a dead leader is replaced in the next epoch, a region that hears its leader votes for no one,
// a less caught-up candidate is refused, and a vote is given once per epoch. Then a seeded sweep of a small
// world (3 or 5 regions, WAN delays, clock offsets, partitions that drop messages, crashes that keep only
// the durable record) with a leader replicating writes: at most one leader per epoch, at most one region
// holding a lease at any instant, every majority-acknowledged write in the final leader's log, and a
// leader elected within a budget once the faults stop.
import MeridianCore
import Testing

@Suite struct ElectionTests {
    static let names = ["us-east", "eu-west", "ap-southeast", "sa-east", "ap-northeast"].map { RegionName(validated: $0) }

    static func settings(_ count: Int) -> ElectionMember.Settings {
        let order = Array(names.prefix(count))
        return ElectionMember.Settings(order: order, heartbeatIntervalMs: 100, missedHeartbeats: 5,
                                       rttMs: Dictionary(uniqueKeysWithValues: order.map { ($0, 150) }))
    }

    @Test func thePreferredRegionIsElectedAndADeadLeaderReplaced() {
        var world = ElectionWorld(seed: 1, regions: 3, faults: false)
        world.run(untilMs: 3_000)
        #expect(world.currentLeader == 0, "us-east, first in the failover order, leads: \(world.trace)")
        let firstEpoch = world.epoch(of: 0)
        world.crash(0, forMs: 100_000)
        world.run(untilMs: 8_000)
        #expect(world.currentLeader == 1, "eu-west takes over: \(world.trace)")
        #expect(world.epoch(of: 1) > firstEpoch)
        #expect(world.violations.isEmpty, "\(world.violations)")
    }

    @Test func aRegionThatHearsItsLeaderVotesForNoOneAndVotesOncePerEpoch() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        var voter = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: us), nowMs: 0)
        _ = voter.received(.heartbeat(epoch: 4, sentMs: 0), from: us, nowMs: 10, position: .zero)
        let refused = voter.received(.voteRequest(epoch: 5, position: LogPosition(epoch: 4, sequence: 9)), from: eu, nowMs: 20, position: .zero)
        #expect(refused == [.send(to: eu, .vote(epoch: 5, granted: false))], "the leader was heard 10 ms ago")
        // After the suspicion time, a vote; a second candidate in the same epoch gets none.
        let granted = voter.received(.voteRequest(epoch: 5, position: LogPosition(epoch: 4, sequence: 9)), from: eu, nowMs: 2_000, position: .zero)
        #expect(granted.contains(.send(to: eu, .vote(epoch: 5, granted: true))))
        #expect(granted.first.map { if case .persist(let record) = $0 { record.votedEpoch == 5 && record.votedFor == eu } else { false } } == true,
                "the vote is made durable before it is sent")
        let second = voter.received(.voteRequest(epoch: 5, position: LogPosition(epoch: 9, sequence: 1)), from: us, nowMs: 2_001, position: .zero)
        #expect(second == [.send(to: us, .vote(epoch: 5, granted: false))])
        // A candidate behind the voter's copy is refused.
        var ahead = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: nil), nowMs: 0)
        let behind = ahead.received(.voteRequest(epoch: 6, position: LogPosition(epoch: 4, sequence: 3)), from: eu, nowMs: 5_000,
                                    position: LogPosition(epoch: 4, sequence: 7))
        #expect(behind.contains(.send(to: eu, .vote(epoch: 6, granted: false))) && !behind.contains(where: { if case .becameLeader = $0 { true } else { false } }))
        #expect(ahead.record.epoch == 6 && ahead.record.votedEpoch == 0, "the epoch is taken, so its own next candidacy asks for a later one")
    }

    @Test func aLeaderWhoseClockIsFencedStepsDownAndNeverStandsUntilItComesBack() {
        var world = ElectionWorld(seed: 5, regions: 3, faults: false)
        world.run(untilMs: 3_000)
        #expect(world.currentLeader == 0)
        let epoch = world.epoch(of: 0)
        world.fence(0, true)
        #expect(!world.holdsLease(0), "a fenced leader gives up its lease at once")
        world.run(untilMs: 10_000)
        #expect(world.currentLeader == 1, "eu-west takes over: \(world.trace)")
        #expect(world.epoch(of: 1) > epoch)
        // Fenced, us-east stands in no election even when eu-west dies; ap-southeast is the only candidate.
        world.crash(1, forMs: 1_000_000)
        world.run(untilMs: 20_000)
        #expect(world.currentLeader == 2, "ap-southeast takes over, not the fenced us-east: \(world.trace)")
        world.fence(0, false)
        world.crash(2, forMs: 1_000_000)
        world.run(untilMs: 26_000)
        #expect(world.currentLeader == nil, "one region of three cannot elect itself")
        #expect(world.violations.isEmpty, "\(world.violations)")
        // A fenced candidate's votes do not make it leader; a fenced follower ignores a hand-over.
        let settings = Self.settings(3)
        let (us, eu) = (Self.names[0], Self.names[1])
        var follower = ElectionMember(region: eu, settings: settings, record: ElectionRecord(epoch: 3, leader: us), nowMs: 0)
        _ = follower.setFenced(true, nowMs: 0)
        #expect(follower.received(.timeoutNow(epoch: 3), from: us, nowMs: 10, position: .zero).isEmpty)
        #expect(follower.tick(nowMs: 60_000, position: .zero).isEmpty, "no pre-votes while fenced")
    }

    @Test func aRegionCutOffAndBackDoesNotDeposeAWorkingLeader() {
        var world = ElectionWorld(seed: 11, regions: 3, faults: false)
        world.run(untilMs: 3_000)
        #expect(world.currentLeader == 0)
        let epoch = world.epoch(of: 0)
        world.isolate(2)
        world.run(untilMs: 12_000)
        // Alone, ap-southeast asks for pre-votes and gets none: its epoch does not move.
        #expect(world.epoch(of: 2) == epoch, "an isolated region counted epochs up: \(world.trace)")
        world.healAll()
        world.run(untilMs: 15_000)
        #expect(world.currentLeader == 0 && world.epoch(of: 0) == epoch, "the leader kept its term after the heal: \(world.trace)")
        #expect(world.violations.isEmpty, "\(world.violations)")
    }

    @Test func aPreVoteChangesNothingAndIsGrantedOnlyWhenTheLeaderIsSilent() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        var voter = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: us), nowMs: 0)
        _ = voter.received(.heartbeat(epoch: 4, sentMs: 0), from: us, nowMs: 10, position: .zero)
        let before = voter.record
        #expect(voter.received(.preVoteRequest(epoch: 5, position: .zero), from: eu, nowMs: 20, position: .zero)
                == [.send(to: eu, .preVote(epoch: 5, granted: false))])
        #expect(voter.received(.preVoteRequest(epoch: 5, position: LogPosition(epoch: 4, sequence: 1)), from: eu, nowMs: 5_000, position: .zero)
                == [.send(to: eu, .preVote(epoch: 5, granted: true))])
        #expect(voter.record == before, "a pre-vote is not a vote: nothing durable changes")
        // An asker behind on epochs is told the current one.
        #expect(voter.received(.preVoteRequest(epoch: 3, position: .zero), from: eu, nowMs: 5_001, position: .zero)
                == [.send(to: eu, .newerEpoch(epoch: 4, leader: us))])
    }

    @Test func onlyTheFirstStartOrASoleReplicaLeadsWithoutAnElection() {
        let us = Self.names[0]
        let fresh = ElectionMember(region: us, settings: Self.settings(3), record: ElectionRecord(leader: us), nowMs: 0, firstTerm: true)
        #expect(fresh.role == .leader && !fresh.holdsLease(nowMs: 0), "leads epoch 1, but acknowledges nothing before a majority answers")
        let restarted = ElectionMember(region: us, settings: Self.settings(3), record: ElectionRecord(leader: us), nowMs: 0)
        #expect(restarted.role == .follower && restarted.leader == nil)
        let solo = ElectionMember(region: us, settings: ElectionMember.Settings(order: [us], heartbeatIntervalMs: 100, missedHeartbeats: 5, rttMs: [:]),
                                  record: ElectionRecord(epoch: 3, leader: us, votedEpoch: 3, votedFor: us), nowMs: 0)
        #expect(solo.role == .leader && solo.holdsLease(nowMs: 1))
    }

    @Test func aHandOverStopsTheLeaderAtOnceAndElectsTheTargetThoughOthersHeardTheLeader() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        var leader = ElectionMember(region: us, settings: settings, record: ElectionRecord(leader: us), nowMs: 0, firstTerm: true)
        var target = ElectionMember(region: ap, settings: settings, record: ElectionRecord(leader: us), nowMs: 0)
        var other = ElectionMember(region: eu, settings: settings, record: ElectionRecord(leader: us), nowMs: 0)
        _ = target.received(.heartbeat(epoch: 1, sentMs: 0), from: us, nowMs: 10, position: .zero)
        _ = other.received(.heartbeat(epoch: 1, sentMs: 0), from: us, nowMs: 10, position: .zero)
        _ = leader.received(.heartbeatAck(epoch: 1, sentMs: 0), from: eu, nowMs: 20, position: .zero)
        #expect(leader.holdsLease(nowMs: 30))
        let effects = leader.handOver(to: ap, nowMs: 30)
        #expect(!leader.holdsLease(nowMs: 31) && leader.leader == nil, "the old leader stops acknowledging before the target stands")
        #expect(effects.last == .send(to: ap, .timeoutNow(epoch: 1)))
        let standing = target.received(.timeoutNow(epoch: 1), from: us, nowMs: 40, position: LogPosition(epoch: 1, sequence: 5))
        let request = ElectionMessage.transferVoteRequest(epoch: 2, position: LogPosition(epoch: 1, sequence: 5))
        #expect(standing.contains(.send(to: eu, request)))
        // eu-west heard us-east 40 ms ago, yet grants the handed-over candidate; an ordinary request it refuses.
        #expect(other.received(request, from: ap, nowMs: 50, position: LogPosition(epoch: 1, sequence: 5)).contains(.send(to: ap, .vote(epoch: 2, granted: true))))
        var fresh = ElectionMember(region: eu, settings: settings, record: ElectionRecord(leader: us), nowMs: 0)
        _ = fresh.received(.heartbeat(epoch: 1, sentMs: 0), from: us, nowMs: 10, position: .zero)
        #expect(fresh.received(.voteRequest(epoch: 2, position: LogPosition(epoch: 1, sequence: 5)), from: ap, nowMs: 50, position: .zero)
                == [.send(to: ap, .vote(epoch: 2, granted: false))])
        // Still only a caught-up candidate: one behind eu-west's copy is refused even when handed over.
        var ahead = ElectionMember(region: eu, settings: settings, record: ElectionRecord(leader: us), nowMs: 0)
        #expect(ahead.received(request, from: ap, nowMs: 50, position: LogPosition(epoch: 1, sequence: 9)).contains(.send(to: ap, .vote(epoch: 2, granted: false))))
        let won = target.received(.vote(epoch: 2, granted: true), from: eu, nowMs: 60, position: .zero)
        #expect(won.contains(.becameLeader(epoch: 2)))
        // A timeoutNow from a region that is not this region's leader is ignored.
        var stranger = ElectionMember(region: eu, settings: settings, record: ElectionRecord(leader: us), nowMs: 0)
        #expect(stranger.received(.timeoutNow(epoch: 1), from: ap, nowMs: 10, position: .zero).isEmpty)
    }

    @Test func theFenceAppliesTheHistoryAndDivertsWhatADeposedLeaderNeverShipped() {
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        // eu-west took over epoch 5 holding us-east's epoch-4 writes up to 40 and ap-southeast's epoch-2 ones up to 3.
        let start = EpochStart(epoch: 5, leader: eu, applied: [us: 90, eu: 12, ap: 30],
                               terms: [TermEnd(epoch: 4, leader: us, last: 40), TermEnd(epoch: 2, leader: ap, last: 3)])
        #expect(Fence.verdict(epoch: 4, origin: us, sequence: 40, following: 5, start: start, held: Self.holding(start)) == .apply)
        #expect(Fence.verdict(epoch: 4, origin: us, sequence: 41, following: 5, start: start, held: Self.holding(start)) == .divert)
        #expect(Fence.verdict(epoch: 5, origin: eu, sequence: 13, following: 5, start: start, held: Self.holding(start)) == .apply)
        #expect(Fence.verdict(epoch: 5, origin: us, sequence: 99, following: 5, start: start, held: Self.holding(start)) == .divert, "one leader per epoch")
        #expect(Fence.verdict(epoch: 2, origin: ap, sequence: 3, following: 5, start: start, held: Self.holding(start)) == .apply)
        #expect(Fence.verdict(epoch: 2, origin: ap, sequence: 4, following: 5, start: start, held: Self.holding(start)) == .divert)
        #expect(Fence.verdict(epoch: 3, origin: ap, sequence: 1, following: 5, start: start, held: Self.holding(start)) == .divert, "a term the leader held nothing of")
        // Unknown: an epoch not heard of yet, or an election whose winner has not said where its term began.
        #expect(Fence.verdict(epoch: 6, origin: ap, sequence: 1, following: 5, start: start, held: Self.holding(start)) == .wait)
        #expect(Fence.verdict(epoch: 4, origin: us, sequence: 1, following: 6, start: start, held: Self.holding(start)) == .wait)
        #expect(Fence.verdict(epoch: 1, origin: us, sequence: 1, following: 1, start: .initial(leader: us), held: [:]) == .apply)
    }

    /// A region that holds every term a start counts.
    static func holding(_ start: EpochStart) -> [UInt64: TermEnd] {
        Dictionary(uniqueKeysWithValues: start.terms.map { ($0.epoch, $0) })
    }

    @Test func aWriteOfATermAppliesOnlyOnceEveryEarlierTermItsStartCountsIsHeld() {
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        // us-east led epoch 1 and had write 2 acknowledged by eu-west; eu-west took over epoch 2 holding it.
        // ap-southeast never heard us-east's stream: it must not apply eu-west's term (and so stand as holding it).
        let start = EpochStart(epoch: 2, leader: eu, applied: [us: 2], terms: [TermEnd(epoch: 1, leader: us, last: 2)])
        #expect(Fence.verdict(epoch: 2, origin: eu, sequence: 7, following: 2, start: start, held: [:]) == .catchUp)
        #expect(Fence.verdict(epoch: 2, origin: eu, sequence: 7, following: 2, start: start,
                              held: [1: TermEnd(epoch: 1, leader: us, last: 1)]) == .catchUp, "holding part of a term is not enough")
        #expect(Fence.verdict(epoch: 2, origin: eu, sequence: 7, following: 2, start: start,
                              held: [1: TermEnd(epoch: 1, leader: us, last: 2)]) == .apply)
        // The earlier term's own writes need nothing before them; a write to keep aside needs no catching up.
        #expect(Fence.verdict(epoch: 1, origin: us, sequence: 2, following: 2, start: start, held: [:]) == .apply)
        #expect(Fence.verdict(epoch: 1, origin: us, sequence: 3, following: 2, start: start, held: [:]) == .divert)
        // Only terms before the entry's: an epoch-3 start counting epochs 1 and 2; an epoch-1 write needs neither.
        let later = EpochStart(epoch: 3, leader: ap, applied: [:], terms: [TermEnd(epoch: 2, leader: eu, last: 9), TermEnd(epoch: 1, leader: us, last: 2)])
        #expect(Fence.verdict(epoch: 2, origin: eu, sequence: 9, following: 3, start: later, held: [:]) == .catchUp)
        #expect(Fence.verdict(epoch: 2, origin: eu, sequence: 9, following: 3, start: later, held: [1: TermEnd(epoch: 1, leader: us, last: 5)]) == .apply)
        #expect(Fence.verdict(epoch: 1, origin: us, sequence: 1, following: 3, start: later, held: [:]) == .apply)
        #expect(Fence.verdict(epoch: 3, origin: ap, sequence: 1, following: 3, start: later, held: [1: TermEnd(epoch: 1, leader: us, last: 5)]) == .catchUp)
        // The origin's own earlier term too: its log brings those writes first, but this region may have kept them aside.
        let again = EpochStart(epoch: 3, leader: us, applied: [us: 6], terms: [TermEnd(epoch: 1, leader: us, last: 6)])
        #expect(Fence.verdict(epoch: 3, origin: us, sequence: 7, following: 3, start: again, held: [1: TermEnd(epoch: 1, leader: us, last: 2)]) == .catchUp)
        #expect(Fence.verdict(epoch: 3, origin: us, sequence: 7, following: 3, start: again, held: [1: TermEnd(epoch: 1, leader: us, last: 6)]) == .apply)
        // A term the start counts nothing of (every write of it kept aside) asks for nothing.
        let none = EpochStart(epoch: 3, leader: us, applied: [:], terms: [TermEnd(epoch: 1, leader: us, last: 0)])
        #expect(Fence.verdict(epoch: 3, origin: us, sequence: 7, following: 3, start: none, held: [:]) == .apply)
    }

    @Test func aDeposedLeadersWritesStayAsideWhenItLeadsAgainLater() {
        let (us, eu) = (Self.names[0], Self.names[1])
        // us-east led epoch 1 up to 110, but eu-west took over epoch 2 holding only up to 100 (101–110 kept aside).
        // us-east leads again in epoch 3: its log now reaches 300, yet its epoch-1 writes still count only up to 100.
        let failback = EpochStart(epoch: 3, leader: us, applied: [us: 300, eu: 50],
                                  terms: [TermEnd(epoch: 1, leader: us, last: 100), TermEnd(epoch: 2, leader: eu, last: 50)])
        #expect(Fence.verdict(epoch: 1, origin: us, sequence: 105, following: 3, start: failback, held: Self.holding(failback)) == .divert,
                "a region that lagged since epoch 1 must not apply a write set aside in epoch 2")
        #expect(Fence.verdict(epoch: 1, origin: us, sequence: 100, following: 3, start: failback, held: Self.holding(failback)) == .apply)
        #expect(Fence.verdict(epoch: 3, origin: us, sequence: 250, following: 3, start: failback, held: Self.holding(failback)) == .apply)
        #expect(Fence.verdict(epoch: 2, origin: eu, sequence: 50, following: 3, start: failback, held: Self.holding(failback)) == .apply)
        // A term named twice keeps one mention; at most `termsMax` terms, the newest.
        let many = EpochStart(epoch: 200, leader: us, applied: [:],
                              terms: (1...150).map { TermEnd(epoch: UInt64($0), leader: eu, last: 1) } + [TermEnd(epoch: 150, leader: us, last: 9)])
        #expect(many.terms.count == EpochStart.termsMax && many.terms.first?.epoch == 150 && Set(many.terms.map(\.epoch)).count == many.terms.count)
    }

    @Test func aLeaderCutOffFromItsMajorityLosesItsLeaseBeforeASuccessorIsElected() {
        var world = ElectionWorld(seed: 7, regions: 3, faults: false)
        world.run(untilMs: 3_000)
        #expect(world.currentLeader == 0)
        world.isolate(0)
        world.run(untilMs: 10_000)
        #expect(world.currentLeader != nil && world.currentLeader != 0, "a majority elected another leader: \(world.trace)")
        #expect(!world.holdsLease(0), "the isolated leader stopped acknowledging writes")
        world.healAll()
        world.run(untilMs: 14_000)
        #expect(world.leaders.count == 1, "the old leader follows again: \(world.trace)")
        #expect(world.violations.isEmpty, "\(world.violations)")
    }

    @Test func thePreferredRegionLeadsAfterAPauseThoughALaterOneHeardTheLeaderLast() {
        // The demo's links: us-east–eu-west 81 ms, us-east–ap-southeast 230, eu-west–ap-southeast 170. eu-west leads
        // and is paused: us-east suspects it first, but ap-southeast heard it later and said no to us-east's first
        // pre-vote. us-east, first in the failover order, must still take over (it once waited a whole candidacy,
        // and ap-southeast, last in the order, won meanwhile, which costs a second hand-over at failback).
        for offsetMs in stride(from: UInt64(0), through: 90, by: 10) {
            var world = LinkWorld(rttMs: [[0, 81, 230], [81, 0, 170], [230, 170, 0]], leader: 1)
            world.run(untilMs: 2_000 + offsetMs)
            #expect(world.leader == 1, "eu-west leads epoch 1: \(world.trace)")
            world.pause(1)
            world.run(untilMs: 8_000)
            #expect(world.leader == 0, "us-east takes over (paused at +\(offsetMs) ms): \(world.trace)")
            #expect(!world.stood.contains(2), "ap-southeast never stood: \(world.trace)")
        }
    }

    @Test func aLowerRankedRegionGetsNoPreVoteFromACaughtUpPreferredOneUntilThatHadItsChance() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        var preferred = ElectionMember(region: us, settings: settings, record: ElectionRecord(epoch: 4, leader: eu), nowMs: 0)
        let position = LogPosition(epoch: 4, sequence: 7)
        // The leader's silence has run out at us-east (500 + 150 ms), which stands at once (rank 0, no stagger).
        #expect(preferred.received(.preVoteRequest(epoch: 5, position: position), from: ap, nowMs: 700, position: position)
                == [.send(to: ap, .preVote(epoch: 5, granted: false))], "us-east, preferred and as caught up, has its chance first")
        #expect(preferred.received(.preVoteRequest(epoch: 5, position: LogPosition(epoch: 4, sequence: 8)), from: ap, nowMs: 700, position: position)
                == [.send(to: ap, .preVote(epoch: 5, granted: true))], "a candidate further ahead gets the yes")
        // One candidacy (500 + 2 × 150 ms) after its own chance began, us-east says yes: the rule never blocks an election.
        #expect(preferred.received(.preVoteRequest(epoch: 5, position: position), from: ap, nowMs: 650 + 800, position: position)
                == [.send(to: ap, .preVote(epoch: 5, granted: true))])
        // A region ranked after the asker, and a fenced one, say yes as before.
        var later = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: us), nowMs: 0)
        #expect(later.received(.preVoteRequest(epoch: 5, position: position), from: eu, nowMs: 700, position: position)
                == [.send(to: eu, .preVote(epoch: 5, granted: true))])
        var fenced = ElectionMember(region: us, settings: settings, record: ElectionRecord(epoch: 4, leader: eu), nowMs: 0)
        _ = fenced.setFenced(true, nowMs: 0)
        #expect(fenced.received(.preVoteRequest(epoch: 5, position: position), from: ap, nowMs: 700, position: position)
                == [.send(to: ap, .preVote(epoch: 5, granted: true))])
    }

    @Test func aRestartedRegionVotesAfterASilenceButStandsOnlyAfterItsGraceOrOnceItsStreamsAreUp() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        // ap-southeast restarts while us-east leads (paused, say): it forgot when it last heard us-east.
        var restarted = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: us), nowMs: 0, graceMs: 5_000)
        let request = ElectionMessage.voteRequest(epoch: 5, position: .zero)
        #expect(restarted.received(request, from: eu, nowMs: 100, position: .zero) == [.send(to: eu, .vote(epoch: 5, granted: false))],
                "a lease counted on its acknowledgement before the restart may still run")
        // After one silence (500 + 150 ms) it votes: the grace holds back its own candidacy, not the others' election.
        #expect(restarted.received(request, from: eu, nowMs: 700, position: .zero).contains(.send(to: eu, .vote(epoch: 5, granted: true))))
        var alone = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: us), nowMs: 0, graceMs: 5_000)
        #expect(alone.tick(nowMs: 2_000, position: .zero).isEmpty, "no candidacy within the grace")
        alone.streamsConnected(nowMs: 2_000)
        #expect(alone.tick(nowMs: 2_010, position: .zero).contains(.send(to: us, .preVoteRequest(epoch: 5, position: .zero))),
                "with every stream up, a silent leader is a dead one")
    }

    @Test func aRegionThatJustVotedGivesNoPreVoteForTheNextEpochUntilASilencePassed() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        // ap-southeast votes for eu-west in epoch 5 at 1,000 ms; us-east, which refused eu-west, asks to stand in 6.
        var voter = ElectionMember(region: ap, settings: settings, record: ElectionRecord(epoch: 4, leader: nil), nowMs: 0)
        #expect(voter.received(.voteRequest(epoch: 5, position: .zero), from: eu, nowMs: 1_000, position: .zero).contains(.send(to: eu, .vote(epoch: 5, granted: true))))
        #expect(voter.received(.preVoteRequest(epoch: 6, position: .zero), from: us, nowMs: 1_100, position: .zero)
                == [.send(to: us, .preVote(epoch: 6, granted: false))], "its higher epoch would depose the winner as it is elected")
        // A silence later (500 + 150 ms) with no leader heard, the election it voted in has failed: yes.
        #expect(voter.received(.preVoteRequest(epoch: 6, position: .zero), from: us, nowMs: 1_700, position: .zero)
                == [.send(to: us, .preVote(epoch: 6, granted: true))])
        // A candidate gives no pre-vote for a later epoch while its own candidacy runs.
        var candidate = ElectionMember(region: eu, settings: settings, record: ElectionRecord(epoch: 4, leader: us), nowMs: 0)
        let stood = candidate.tick(nowMs: 10_000, position: .zero)
        _ = candidate.received(.preVote(epoch: 5, granted: true), from: ap, nowMs: 10_050, position: .zero)
        #expect(candidate.role == .candidate, "\(stood)")
        #expect(candidate.received(.preVoteRequest(epoch: 6, position: .zero), from: ap, nowMs: 10_100, position: .zero)
                == [.send(to: ap, .preVote(epoch: 6, granted: false))])
    }

    @Test func aLeaderWithoutItsLeaseHandsOverNothing() {
        let settings = Self.settings(3)
        let (us, eu, ap) = (Self.names[0], Self.names[1], Self.names[2])
        var leader = ElectionMember(region: us, settings: settings, record: ElectionRecord(leader: us), nowMs: 0, firstTerm: true)
        _ = leader.received(.heartbeatAck(epoch: 1, sentMs: 0), from: eu, nowMs: 20, position: .zero)
        // Cut off since: its lease (half of 500 + 150 ms) ran out, and it may have been deposed without hearing so.
        #expect(!leader.holdsLease(nowMs: 400))
        #expect(leader.handOver(to: ap, nowMs: 400).isEmpty, "no hand-over, no needless election")
        #expect(leader.role == .leader)
    }

    @Test func aSweepOfFaultyWorldsKeepsEverySafetyRule() {
        var failures: [String] = []
        var elections = 0, acknowledged = 0
        for seed in UInt64(1)...60 {
            var world = ElectionWorld(seed: seed, regions: seed % 2 == 0 ? 5 : 3, faults: true)
            world.run(untilMs: 30_000)
            world.stopFaults()
            let healedAt = world.nowMs
            world.run(untilMs: healedAt + 10_000)
            world.checkFinal(healedAtMs: healedAt, budgetMs: 10_000)
            elections += world.electionsWon
            acknowledged += world.acknowledged.count
            if !world.violations.isEmpty { failures.append("seed \(seed): \(world.violations.prefix(3))") }
        }
        #expect(failures.isEmpty, "\(failures.count) seeds broke a rule; first: \(failures.first ?? "")")
        #expect(elections > 120 && acknowledged > 3_000, "\(elections) elections won, \(acknowledged) writes acknowledged by a majority")
    }
}

/// A small deterministic world of regions running `ElectionMember`, with a leader that replicates writes
/// (each region's log a chain of entry epochs, replaced by the leader's on every replicate it accepts, as a
/// follower truncates a diverged suffix) and acknowledges a write once a majority holds it.
struct ElectionWorld {
    enum Message {
        case election(ElectionMessage)
        case replicate(epoch: UInt64, chain: [UInt64])
        case ack(epoch: UInt64, length: Int)
    }

    var nowMs: UInt64 = 0
    private var generator: SplitMix
    let count: Int
    let settings: ElectionMember.Settings
    private var members: [ElectionMember?]
    private var records: [ElectionRecord]
    private var offsets: [UInt64]
    private var chains: [[UInt64]]
    private var restartAt: [UInt64?]
    private var cut: Set<[Int]> = []
    private var queue: [(atMs: UInt64, order: Int, from: Int, to: Int, message: Message)] = []
    private var order = 0
    private var faults: Bool
    /// Per leader: how far each follower acknowledged its chain in its epoch.
    private var ackedLength: [Int: [Int: Int]] = [:]
    private var leaderOfEpoch: [UInt64: Int] = [:]
    private(set) var acknowledged: Set<[UInt64]> = []    // [index, epoch]
    private(set) var violations: [String] = []
    private(set) var electionsWon = 0
    private(set) var trace: [String] = []

    init(seed: UInt64, regions: Int, faults: Bool) {
        var generator = SplitMix(seed: seed)
        let settings = ElectionTests.settings(regions)
        let records = settings.order.map { _ in ElectionRecord(epoch: 1, leader: settings.order[0]) }
        let offsets = (0..<regions).map { _ in UInt64.random(in: 0...400, using: &generator) }
        self.generator = generator
        self.settings = settings
        self.records = records
        self.offsets = offsets
        count = regions
        self.faults = faults
        members = (0..<regions).map { ElectionMember(region: settings.order[$0], settings: settings, record: records[$0], nowMs: offsets[$0]) }
        chains = Array(repeating: [], count: regions)
        restartAt = Array(repeating: nil, count: regions)
    }

    var leaders: [Int] { (0..<count).filter { members[$0]?.role == .leader } }
    var currentLeader: Int? { leaders.first { holdsLease($0) } }
    func epoch(of index: Int) -> UInt64 { records[index].epoch }
    func holdsLease(_ index: Int) -> Bool { members[index]?.holdsLease(nowMs: nowMs + offsets[index]) ?? false }

    mutating func crash(_ index: Int, forMs: UInt64) {
        members[index] = nil
        restartAt[index] = nowMs + forMs
    }

    mutating func isolate(_ index: Int) {
        for other in 0..<count where other != index { cut.insert([min(index, other), max(index, other)]) }
    }

    mutating func healAll() { cut = [] }

    /// The region's clock goes out of tolerance (or comes back), as its node's clock fence decides.
    mutating func fence(_ index: Int, _ fenced: Bool) {
        guard var member = members[index] else { return }
        let effects = member.setFenced(fenced, nowMs: nowMs + offsets[index])
        members[index] = member
        carry(index, effects)
    }

    mutating func stopFaults() {
        faults = false
        cut = []
        for index in 0..<count where members[index] == nil { restartAt[index] = nowMs }
    }

    private func position(_ index: Int) -> LogPosition {
        LogPosition(epoch: chains[index].last ?? 0, sequence: UInt64(chains[index].count))
    }

    mutating func run(untilMs: UInt64) {
        while nowMs < untilMs {
            nowMs += 10
            deliverDue()
            for index in 0..<count {
                if members[index] == nil, let at = restartAt[index], at <= nowMs {
                    members[index] = ElectionMember(region: settings.order[index], settings: settings, record: records[index], nowMs: nowMs + offsets[index])
                    restartAt[index] = nil
                }
                guard var member = members[index] else { continue }
                let effects = member.tick(nowMs: nowMs + offsets[index], position: position(index))
                members[index] = member
                carry(index, effects)
                // The leader writes now and then, and resends its log with every heartbeat.
                if member.role == .leader {
                    if member.holdsLease(nowMs: nowMs + offsets[index]) && Int.random(in: 0..<10, using: &generator) == 0 {
                        chains[index].append(records[index].epoch)
                    }
                    if effects.contains(where: { if case .send(_, .heartbeat) = $0 { true } else { false } }) { broadcastChain(index) }
                }
            }
            checkLeases()
            if faults { injectFault() }
        }
    }

    private mutating func broadcastChain(_ index: Int) {
        for peer in 0..<count where peer != index {
            send(from: index, to: peer, .replicate(epoch: records[index].epoch, chain: chains[index]))
        }
        settleAcks(index)
    }

    private mutating func injectFault() {
        switch Int.random(in: 0..<1_000, using: &generator) {
        case 0..<4:
            let a = Int.random(in: 0..<count, using: &generator), b = Int.random(in: 0..<count, using: &generator)
            if a != b { cut.insert([min(a, b), max(a, b)]) }
        case 4..<8:
            cut = []
        case 8..<10:
            let index = Int.random(in: 0..<count, using: &generator)
            if members[index] != nil { crash(index, forMs: UInt64.random(in: 50...3_000, using: &generator)) }
        default:
            break
        }
    }

    private mutating func send(from: Int, to: Int, _ message: Message) {
        guard !cut.contains([min(from, to), max(from, to)]) else { return }
        order += 1
        let delay = settings.rttMs[settings.order[to]]! / 2 + UInt64.random(in: 0...20, using: &generator)
        queue.append((nowMs + delay, order, from, to, message))
    }

    private mutating func deliverDue() {
        let due = queue.filter { $0.atMs <= nowMs }.sorted { ($0.atMs, $0.order) < ($1.atMs, $1.order) }
        queue.removeAll { $0.atMs <= nowMs }
        for item in due {
            // A cut drops what is in flight too; a down region receives nothing.
            guard !cut.contains([min(item.from, item.to), max(item.from, item.to)]), var member = members[item.to] else { continue }
            let local = nowMs + offsets[item.to]
            switch item.message {
            case .election(let message):
                let effects = member.received(message, from: settings.order[item.from], nowMs: local, position: position(item.to))
                members[item.to] = member
                carry(item.to, effects)
            case .replicate(let epoch, let chain):
                // Fencing: entries of an older epoch than this region knows are refused.
                guard epoch >= records[item.to].epoch else { continue }
                chains[item.to] = chain
                send(from: item.to, to: item.from, .ack(epoch: epoch, length: chain.count))
            case .ack(let epoch, let length):
                guard member.role == .leader, epoch == records[item.to].epoch else { continue }
                ackedLength[item.to, default: [:]][item.from] = max(ackedLength[item.to]?[item.from] ?? 0, length)
                settleAcks(item.to)
            }
        }
    }

    /// Entries of the leader's chain a majority holds (in its epoch) are acknowledged.
    private mutating func settleAcks(_ leader: Int) {
        guard members[leader]?.role == .leader else { return }
        let lengths = [chains[leader].count] + (ackedLength[leader] ?? [:]).values
        let majority = count / 2 + 1
        guard lengths.count >= majority else { return }
        // An ack longer than this chain can only come from another leader's chain (a safety bug the checks report).
        let held = min(lengths.sorted(by: >)[majority - 1], chains[leader].count)
        for index in 0..<held { acknowledged.insert([UInt64(index), chains[leader][index]]) }
    }

    private mutating func carry(_ index: Int, _ effects: [ElectionMember.Effect]) {
        for effect in effects {
            switch effect {
            case .persist(let record):
                records[index] = record
            case .send(let to, let message):
                send(from: index, to: settings.order.firstIndex(of: to)!, .election(message))
            case .becameLeader(let epoch):
                electionsWon += 1
                trace.append("\(nowMs): \(settings.order[index]) leads \(epoch)")
                if let other = leaderOfEpoch[epoch], other != index {
                    violations.append("two leaders in epoch \(epoch): \(settings.order[other]) and \(settings.order[index])")
                }
                leaderOfEpoch[epoch] = index
                ackedLength[index] = [:]
            case .following:
                break
            }
        }
    }

    private mutating func checkLeases() {
        let holders = (0..<count).filter(holdsLease)
        if holders.count > 1 {
            violations.append("at \(nowMs) ms \(holders.map { settings.order[$0].rawValue }) all hold a lease")
        }
    }

    /// After the faults stopped: one leader, with a lease, that every region follows, within the budget; and
    /// every majority-acknowledged write in its log.
    mutating func checkFinal(healedAtMs: UInt64, budgetMs: UInt64) {
        guard let leader = currentLeader else {
            violations.append("no leader holds a lease \(budgetMs) ms after the faults stopped: \(trace.suffix(5))")
            return
        }
        for index in 0..<count where members[index]?.leader != settings.order[leader] {
            violations.append("\(settings.order[index]) does not follow \(settings.order[leader])")
        }
        for entry in acknowledged {
            let index = Int(entry[0])
            if index >= chains[leader].count || chains[leader][index] != entry[1] {
                violations.append("the write at \(index) of epoch \(entry[1]), acknowledged by a majority, is not in \(settings.order[leader])'s log")
            }
        }
    }
}

/// Three (or more) election members joined by links of fixed one-way delays (half each pair's round trip), each
/// member timing its peers by its own links, as the node does; a paused region neither hears nor speaks.
struct LinkWorld {
    var nowMs: UInt64 = 0
    private let order: [RegionName]
    private let rttMs: [[UInt64]]
    private var members: [ElectionMember]
    private var paused: Set<Int> = []
    private var queue: [(atMs: UInt64, order: Int, from: Int, to: Int, message: ElectionMessage)] = []
    private var sent = 0
    private(set) var stood: Set<Int> = []
    private(set) var trace: [String] = []

    init(rttMs: [[UInt64]], leader: Int) {
        order = Array(ElectionTests.names.prefix(rttMs.count))
        self.rttMs = rttMs
        let order = self.order
        members = order.indices.map { index in
            var peers: [RegionName: UInt64] = [:]
            for peer in order.indices where peer != index { peers[order[peer]] = rttMs[index][peer] }
            let settings = ElectionMember.Settings(order: order, heartbeatIntervalMs: 100, missedHeartbeats: 5, rttMs: peers)
            return ElectionMember(region: order[index], settings: settings, record: ElectionRecord(leader: order[leader]), nowMs: 0, firstTerm: index == leader)
        }
    }

    /// The region that leads and holds its lease, if one does.
    var leader: Int? { members.indices.first { !paused.contains($0) && members[$0].holdsLease(nowMs: nowMs) } }

    mutating func pause(_ index: Int) { paused.insert(index) }

    mutating func run(untilMs: UInt64) {
        while nowMs < untilMs {
            nowMs += 1
            let due = queue.filter { $0.atMs <= nowMs }.sorted { ($0.atMs, $0.order) < ($1.atMs, $1.order) }
            queue.removeAll { $0.atMs <= nowMs }
            for item in due where !paused.contains(item.to) {
                carry(item.to, members[item.to].received(item.message, from: order[item.from], nowMs: nowMs, position: .zero))
            }
            for index in members.indices where !paused.contains(index) {
                carry(index, members[index].tick(nowMs: nowMs, position: .zero))
            }
        }
    }

    private mutating func carry(_ index: Int, _ effects: [ElectionMember.Effect]) {
        for effect in effects {
            switch effect {
            case .persist, .following:
                break
            case .send(let to, let message):
                let peer = order.firstIndex(of: to)!
                if case .voteRequest = message { stood.insert(index) }
                sent += 1
                queue.append((nowMs + rttMs[index][peer] / 2, sent, index, peer, message))
            case .becameLeader(let epoch):
                trace.append("\(nowMs): \(order[index]) leads \(epoch)")
            }
        }
    }
}
