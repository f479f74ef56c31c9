// Proves the region machine's leadership joints with explicit time, asserting on its effects: a won term's
// start is captured only once no admitted batch is uncommitted (and before any later batch is released); a
// leader admits writes only within its lease and never while its term starts or it hands over; a deposed
// leader's unshipped entries are diverted and entries of an unknown term wait until it is known and checked; a
// hand-over goes out only once admitted writes committed and the target acknowledged the whole log, and fails
// at its deadline; failback hands back only after the preferred region has been steady; a term's writes wait
// for the earlier terms its start counts, which are pulled from the leader after a silence; merges of a peer's
// states pass a gate a term's start and revert wait on. Each rule is also a
// planted bug the simulator's sweep must catch (SimulationSweepTests).
import MeridianCore
import Testing

@Suite struct RegionMachineTests {
    static let cluster = try! ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
    static let (us, eu, ap) = (RegionName(validated: "us-east"), RegionName(validated: "eu-west"), RegionName(validated: "ap-southeast"))
    static let accounts = try! KeyspaceName("accounts")
    static let profiles = try! KeyspaceName("profiles")

    /// A machine and its clock; `handle` advances nothing by itself.
    struct Driver {
        var machine: RegionMachine
        var nowMs: UInt64 = 0
        var effects: [RegionMachine.Effect] = []

        init(_ region: RegionName, stored: [KeyspaceName: StoredElection] = [:], restoring: Bool = false) {
            machine = RegionMachine(region: region, cluster: RegionMachineTests.cluster, stored: stored, newest: [:], nowMs: 0, wallMs: 1_000_000,
                                    restoring: restoring)
            handle(.started)
        }

        @discardableResult
        mutating func handle(_ event: RegionMachine.Event) -> [RegionMachine.Effect] {
            let out = machine.handle(event, nowMs: nowMs, wallMs: 1_000_000 + nowMs)
            effects += out
            return out
        }

        mutating func tick(at ms: UInt64, applied: [RegionName: UInt64] = [:], peers: [RegionName: RegionMachine.PeerLink] = [:]) -> [RegionMachine.Effect] {
            nowMs = ms
            return handle(.ticked(applied: applied, peers: peers))
        }

        /// A peer acknowledges the heartbeat sent at `sentMs` (the leader's lease).
        mutating func ack(_ keyspace: KeyspaceName, epoch: UInt64, sentMs: UInt64, from peer: RegionName) {
            handle(.electionReceived(keyspace: keyspace, message: .heartbeatAck(epoch: epoch, sentMs: sentMs), start: nil, from: peer, applied: [:]))
        }

        /// Stands for and wins the next epoch with `voter`'s votes, and captures its start from `applied`.
        mutating func win(_ keyspace: KeyspaceName, at ms: UInt64, voter: RegionName, applied: [RegionName: UInt64] = [:]) -> UInt64 {
            let asks = tick(at: ms)
            guard let epoch = asks.compactMap({ effect -> UInt64? in
                if case .send(_, .election(_, .preVoteRequest(let epoch, _), _)) = effect { epoch } else { nil }
            }).first else { preconditionFailure("no pre-vote asked at \(ms): \(asks)") }
            handle(.electionReceived(keyspace: keyspace, message: .preVote(epoch: epoch, granted: true), start: nil, from: voter, applied: [:]))
            let won = handle(.electionReceived(keyspace: keyspace, message: .vote(epoch: epoch, granted: true), start: nil, from: voter, applied: [:]))
            if won.contains(.captureStart(keyspace, epoch: epoch)) {
                handle(.startCaptured(keyspace: keyspace, epoch: epoch, applied: applied, history: []))
            }
            return epoch
        }
    }

    static func entry(_ keyspace: KeyspaceName, origin: RegionName, sequence: UInt64, epoch: UInt64) -> ReplicationEntry {
        ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: sequence, logical: 0, region: origin), epoch: epoch,
                         keyspace: keyspace, key: try! Key("k\(sequence)"), operation: .put, contentType: "text/plain", value: [1])
    }

    static func applied(_ effects: [RegionMachine.Effect]) -> [RegionMachine.BatchID: [UInt64: UInt64]] {
        var result: [RegionMachine.BatchID: [UInt64: UInt64]] = [:]
        for case .applyBatch(let id, let diverted) in effects { result[id] = diverted }
        return result
    }

    @Test func aFirstTermIsStoredAtStartAndItsLeaderWritesOnlyWithinItsLease() {
        var leader = Driver(Self.us)
        #expect(leader.effects.contains { if case .persist(Self.accounts, let stored) = $0 { stored.record.epoch == 1 } else { false } },
                "the first term's record is durable before anything else")
        #expect(leader.machine.writableEpoch(Self.accounts, nowMs: 0) == nil, "no write before a majority heard the leader")
        _ = leader.tick(at: 100)
        leader.ack(Self.accounts, epoch: 1, sentMs: 100, from: Self.eu)
        #expect(leader.machine.admitWrite(Self.accounts, nowMs: 150) == 1)
        // eu-west's lease for us-east is half its silence limit: (5 × 100 + 81) / 2 = 290 ms after the heartbeat.
        #expect(leader.machine.writableEpoch(Self.accounts, nowMs: 389) == 1)
        #expect(leader.machine.writableEpoch(Self.accounts, nowMs: 390) == nil, "a leader acknowledging after its lease ran out")
        #expect(leader.machine.admitWrite(Self.accounts, nowMs: 390) == nil)
        leader.handle(.writeCommitted(keyspace: Self.accounts, epoch: 1, sequence: 1))
    }

    /// A region restored from a backup may have voted, before its copy was lost, in epochs its stored record does not
    /// show: until it caught up it neither votes nor stands, and afterwards it votes in no epoch it heard of meanwhile.
    @Test func aRestoredRegionVotesInNoEpochItMayHaveVotedInBefore() {
        var restored = Driver(Self.eu, restoring: true)
        let asked = restored.handle(.electionReceived(keyspace: Self.accounts, message: .voteRequest(epoch: 7, position: LogPosition(epoch: 6, sequence: 99)),
                                                      start: nil, from: Self.ap, applied: [:]))
        #expect(!asked.contains { if case .send(_, .election(_, .vote, _)) = $0 { true } else { false } }, "voted while restoring: \(asked)")
        let silent = restored.tick(at: 600_000)
        #expect(!silent.contains { if case .send(_, .election(_, .preVoteRequest, _)) = $0 { true } else { false } }, "stood while restoring: \(silent)")
        let ended = restored.handle(.restoreEnded)
        #expect(ended.contains { if case .persist(Self.accounts, let stored) = $0 { stored.record.votedEpoch == 7 } else { false } }, "\(ended)")
        // Asked again in epoch 7, it refuses; in a later epoch it may grant.
        let again = restored.handle(.electionReceived(keyspace: Self.accounts, message: .voteRequest(epoch: 7, position: LogPosition(epoch: 6, sequence: 99)),
                                                      start: nil, from: Self.us, applied: [:]))
        #expect(!again.contains { if case .send(_, .election(_, .vote(7, true), _)) = $0 { true } else { false } }, "voted twice in epoch 7: \(again)")
    }

    /// A region trims its log up to its peers' acknowledgements only while its leadership is settled: a leader
    /// within its lease, a follower whose copy was checked against its term's start. An isolated leader whose lease
    /// ran out keeps its log, where its revert will look for the writes to keep aside.
    @Test func theLogIsTrimmedPastAcknowledgementsOnlyWhileLeadershipIsSettled() {
        var follower = Driver(Self.eu)
        follower.tick(at: 10)
        #expect(!follower.machine.mayTrimAcknowledged(nowMs: 10), "a follower whose revert is still running")
        follower.handle(.revertFinished(keyspace: Self.accounts, epoch: 1))
        #expect(follower.machine.mayTrimAcknowledged(nowMs: 10), "a settled follower of the first term")
        var leader = Driver(Self.us)
        _ = leader.tick(at: 100)
        leader.handle(.revertFinished(keyspace: Self.accounts, epoch: 1))
        leader.ack(Self.accounts, epoch: 1, sentMs: 100, from: Self.eu)
        #expect(leader.machine.mayTrimAcknowledged(nowMs: 150), "a leader within its lease")
        #expect(!leader.machine.mayTrimAcknowledged(nowMs: 390), "a leader whose lease ran out")
        // us-east restarts after leading epoch 2: it follows its own term, whose successor may exist unheard of (its
        // peers acknowledge the entries they keep aside for that successor). Found by the simulator, seed 345.
        let led = StoredElection(record: ElectionRecord(epoch: 2, leader: Self.us, votedEpoch: 2, votedFor: Self.us),
                                 start: EpochStart(epoch: 2, leader: Self.us, applied: [:]))
        var restarted = Driver(Self.us, stored: [Self.accounts: led])
        _ = restarted.tick(at: 10)
        restarted.handle(.revertFinished(keyspace: Self.accounts, epoch: 2))
        #expect(restarted.machine.snapshot(Self.accounts, nowMs: 10)?.role == .follower)
        #expect(!restarted.machine.mayTrimAcknowledged(nowMs: 10), "a restarted leader following its own term")
    }

    @Test func aTermStartsOnlyOnceNoAdmittedBatchIsUncommitted() {
        var follower = Driver(Self.eu)
        // A batch of ap-southeast's log (a multi-leader keyspace) is admitted and not yet committed.
        let first = follower.handle(.batchArrived(1, entries: [Self.entry(Self.profiles, origin: Self.ap, sequence: 1, epoch: 0)]))
        #expect(Self.applied(first) == [1: [:]])
        // us-east went silent; eu-west wins epoch 2 with ap-southeast's vote while that batch is in flight.
        var drive = follower
        let asks = drive.tick(at: 6_000)
        #expect(asks.contains(.send(Self.ap, .election(keyspace: Self.accounts, message: .preVoteRequest(epoch: 2, position: .zero), start: nil))))
        drive.handle(.electionReceived(keyspace: Self.accounts, message: .preVote(epoch: 2, granted: true), start: nil, from: Self.ap, applied: [:]))
        let won = drive.handle(.electionReceived(keyspace: Self.accounts, message: .vote(epoch: 2, granted: true), start: nil, from: Self.ap, applied: [:]))
        #expect(!won.contains(.captureStart(Self.accounts, epoch: 2)), "a term started while entries of the previous term are still being applied")
        // A later batch, even of another keyspace, waits: the drain cannot be starved.
        let second = drive.handle(.batchArrived(2, entries: [Self.entry(Self.profiles, origin: Self.ap, sequence: 2, epoch: 0)]))
        #expect(Self.applied(second).isEmpty)
        #expect(drive.machine.writableEpoch(Self.accounts, nowMs: 6_000) == nil)
        // The first batch commits: the start is captured first, then the waiting batch is released.
        let drained = drive.handle(.batchCommitted(1, committed: true))
        let capture = drained.firstIndex(of: .captureStart(Self.accounts, epoch: 2))
        let release = drained.firstIndex(of: .applyBatch(2, diverted: [:]))
        #expect(capture != nil && release != nil && capture! < release!, "\(drained)")
        let taken = drive.handle(.startCaptured(keyspace: Self.accounts, epoch: 2, applied: [Self.ap: 1], history: [TermEnd(epoch: 1, leader: Self.us, last: 40)]))
        guard case .persist(Self.accounts, let stored)? = taken.first else {
            Issue.record("the start is not made durable first: \(taken)")
            return
        }
        #expect(stored.start == EpochStart(epoch: 2, leader: Self.eu, applied: [Self.ap: 1], terms: [TermEnd(epoch: 1, leader: Self.us, last: 40)]))
        #expect(taken.contains { if case .recordFailover(let record) = $0 { record.reason == "failure" && record.previousLeader == Self.us } else { false } })
        #expect(drive.machine.writableEpoch(Self.accounts, nowMs: 6_000) == nil, "no lease yet")
        drive.ack(Self.accounts, epoch: 2, sentMs: 6_000, from: Self.ap)
        #expect(drive.machine.writableEpoch(Self.accounts, nowMs: 6_010) == 2)
    }

    @Test func aDeposedLeadersUnshippedEntriesAreDivertedAndEntriesOfAnUnknownTermWait() {
        // ap-southeast follows eu-west's epoch 2, which began holding us-east's epoch-1 writes up to 10.
        let start = EpochStart(epoch: 2, leader: Self.eu, applied: [Self.us: 10], terms: [TermEnd(epoch: 1, leader: Self.us, last: 10)])
        var follower = Driver(Self.ap, stored: [Self.accounts: StoredElection(record: ElectionRecord(epoch: 2, leader: Self.eu, votedEpoch: 2, votedFor: Self.eu), start: start)])
        // The start is checked against this region's copy first (a revert), with the keyspace's entries waiting.
        let checked = follower.handle(.electionReceived(keyspace: Self.accounts, message: .heartbeat(epoch: 2, sentMs: 0), start: start, from: Self.eu, applied: [:]))
        #expect(checked.contains(.revert(Self.accounts, start, keys: [])))
        let held = follower.handle(.batchArrived(1, entries: [Self.entry(Self.accounts, origin: Self.us, sequence: 10, epoch: 1),
                                                              Self.entry(Self.accounts, origin: Self.us, sequence: 11, epoch: 1)]))
        #expect(Self.applied(held).isEmpty, "entries wait while a deposed leader's writes are being kept aside")
        let released = follower.handle(.revertFinished(keyspace: Self.accounts, epoch: 2))
        #expect(Self.applied(released) == [1: [11: 2]], "a deposed leader's unshipped entry applied at a replica")
        follower.handle(.batchCommitted(1, committed: true))
        // An entry of epoch 3, which this region has not heard of, waits until epoch 3's leader says where it began.
        let early = follower.handle(.batchArrived(2, entries: [Self.entry(Self.accounts, origin: Self.us, sequence: 12, epoch: 3)]))
        #expect(Self.applied(early).isEmpty)
        let third = EpochStart(epoch: 3, leader: Self.us, applied: [Self.us: 11], terms: [TermEnd(epoch: 1, leader: Self.us, last: 10)])
        let heard = follower.handle(.electionReceived(keyspace: Self.accounts, message: .heartbeat(epoch: 3, sentMs: 0), start: third, from: Self.us, applied: [:]))
        #expect(Self.applied(heard).isEmpty && heard.contains(.revert(Self.accounts, third, keys: [])))
        #expect(Self.applied(follower.handle(.revertFinished(keyspace: Self.accounts, epoch: 3))) == [2: [:]])
    }

    /// Found by the simulator (`meridian sim --seed 521 --steps 600 --regions 3`, once): eu-west kept aside us-east's
    /// epoch-1 writes past its own start; us-east never heard of that term, led again with a start counting them,
    /// and served them; eu-west applied us-east's new term as if it held its earlier one (its own log precedes it),
    /// so when eu-west led next its start left them out, and a value strong reads had returned vanished.
    @Test func aRegionThatKeptALeadersWritesAsideCatchesUpBeforeApplyingATermWhoseStartCountsThem() {
        var follower = Self.followerOfEuWestsTerm()
        // ap-southeast holds us-east's epoch-1 writes up to 10 and keeps 11 and 12 aside (epoch 2 counts up to 10).
        #expect(Self.applied(follower.handle(.batchArrived(1, entries: (9...12).map { Self.entry(Self.accounts, origin: Self.us, sequence: $0, epoch: 1) })))
                == [1: [11: 2, 12: 2]])
        follower.handle(.batchCommitted(1, committed: true))
        // us-east leads epoch 3 from a start that counts its epoch-1 writes up to 12.
        let third = EpochStart(epoch: 3, leader: Self.us, applied: [Self.us: 12], terms: [TermEnd(epoch: 1, leader: Self.us, last: 12)])
        follower.handle(.electionReceived(keyspace: Self.accounts, message: .heartbeat(epoch: 3, sentMs: 0), start: third, from: Self.us, applied: [:]))
        follower.handle(.revertFinished(keyspace: Self.accounts, epoch: 3))
        // Its stream goes on past 12, which this region applied (aside): the new term's write waits, and a silence
        // later the leader is asked for what its start counts.
        #expect(Self.applied(follower.handle(.batchArrived(2, entries: [Self.entry(Self.accounts, origin: Self.us, sequence: 13, epoch: 3)]))).isEmpty,
                "a term's write applied where the writes its start counts were kept aside")
        let usUp: [RegionName: RegionMachine.PeerLink] = [Self.us: .init(up: true, acknowledged: 0), Self.eu: .init(up: true, acknowledged: 0)]
        _ = follower.tick(at: 100, peers: usUp)
        #expect(follower.tick(at: 600, peers: usUp).contains(.catchUp(Self.accounts, from: Self.us, epoch: 3)))
        // A second stream from us-east (a reconnect) brings 11 and 12 again before 13: the store skips them as
        // applied, so they count as nothing held, and 13 still waits.
        let again = [Self.entry(Self.accounts, origin: Self.us, sequence: 11, epoch: 1), Self.entry(Self.accounts, origin: Self.us, sequence: 12, epoch: 1),
                     Self.entry(Self.accounts, origin: Self.us, sequence: 13, epoch: 3)]
        #expect(Self.applied(follower.handle(.batchArrived(3, entries: again))).isEmpty, "entries kept aside counted as held when they came again")

        // A region that kept nothing aside applies the same stretch of us-east's log in one batch: the earlier
        // term's entries before the new term's count as held.
        var other = Self.followerOfEuWestsTerm()
        #expect(Self.applied(other.handle(.batchArrived(1, entries: (9...10).map { Self.entry(Self.accounts, origin: Self.us, sequence: $0, epoch: 1) }))) == [1: [:]])
        other.handle(.batchCommitted(1, committed: true))
        other.handle(.electionReceived(keyspace: Self.accounts, message: .heartbeat(epoch: 3, sentMs: 0), start: third, from: Self.us, applied: [:]))
        other.handle(.revertFinished(keyspace: Self.accounts, epoch: 3))
        let stretch = [Self.entry(Self.accounts, origin: Self.us, sequence: 11, epoch: 1), Self.entry(Self.accounts, origin: Self.us, sequence: 12, epoch: 1),
                       Self.entry(Self.accounts, origin: Self.us, sequence: 13, epoch: 3)]
        #expect(Self.applied(other.handle(.batchArrived(2, entries: stretch))) == [2: [:]])
    }

    /// ap-southeast following eu-west's epoch 2, which began holding us-east's epoch-1 writes up to 10, none of
    /// which ap-southeast holds; its copy is checked against the start.
    static func followerOfEuWestsTerm() -> Driver {
        let start = EpochStart(epoch: 2, leader: eu, applied: [us: 10], terms: [TermEnd(epoch: 1, leader: us, last: 10)])
        var follower = Driver(ap, stored: [accounts: StoredElection(record: ElectionRecord(epoch: 2, leader: eu, votedEpoch: 2, votedFor: eu), start: start)])
        follower.handle(.electionReceived(keyspace: accounts, message: .heartbeat(epoch: 2, sentMs: 0), start: start, from: eu, applied: [:]))
        follower.handle(.revertFinished(keyspace: accounts, epoch: 2))
        return follower
    }

    @Test func aTermsWritesWaitForEarlierTermsItsStartCountsAndAreCaughtUpFromTheLeaderAfterASilence() {
        // ap-southeast follows eu-west's epoch 2, which began holding us-east's epoch-1 writes up to 10; us-east's
        // stream never reached ap-southeast, which holds none of them.
        var follower = Self.followerOfEuWestsTerm()
        // eu-west's epoch-2 write waits, and so does its multi-leader write in the same batch.
        let waiting = follower.handle(.batchArrived(1, entries: [Self.entry(Self.accounts, origin: Self.eu, sequence: 3, epoch: 2),
                                                                 Self.entry(Self.profiles, origin: Self.eu, sequence: 4, epoch: 0)]))
        #expect(Self.applied(waiting).isEmpty, "a region lacking an earlier term's writes applied a later term's")
        // us-east is reachable, so for one silence its stream may still bring them: its batch comes, but only up to 9.
        let usUp: [RegionName: RegionMachine.PeerLink] = [Self.us: .init(up: true, acknowledged: 0), Self.eu: .init(up: true, acknowledged: 0)]
        #expect(!follower.tick(at: 100, peers: usUp).contains { if case .catchUp = $0 { true } else { false } })
        #expect(Self.applied(follower.handle(.batchArrived(2, entries: [Self.entry(Self.accounts, origin: Self.us, sequence: 9, epoch: 1)]))) == [2: [:]])
        #expect(Self.applied(follower.handle(.batchCommitted(2, committed: true))).isEmpty, "holding part of a term is not enough")
        // A silence (5 × 100 ms) later, the leader is asked.
        let asked = follower.tick(at: 600, peers: usUp)
        #expect(asked.contains(.catchUp(Self.accounts, from: Self.eu, epoch: 2)))
        #expect(!follower.tick(at: 700, peers: usUp).contains { if case .catchUp = $0 { true } else { false } }, "one pull at a time")
        // The leader's terms come first: nothing counts as held until every state it serves is merged.
        let leaderTerms = [TermEnd(epoch: 2, leader: Self.eu, last: 2), TermEnd(epoch: 1, leader: Self.us, last: 10)]
        let read = follower.handle(.catchUpTermsRead(keyspace: Self.accounts, epoch: 2, terms: leaderTerms))
        #expect(Self.applied(read).isEmpty && !read.contains { if case .raiseHeld = $0 { true } else { false } },
                "an anti-entropy round raised the applied point past what it pulled")
        // The states pass the merge gate; the round's last merge reports the terms, which count as held only
        // once the store records them.
        let admitted2 = follower.machine.admitMerge(Self.accounts, token: 2, from: Self.eu)
        #expect(admitted2)
        let merged = follower.handle(.mergeCommitted(keyspace: Self.accounts, token: 2, keys: [try! Key("k1")], terms: leaderTerms))
        #expect(merged == [.raiseHeld(Self.accounts, leaderTerms)])
        #expect(Self.applied(follower.handle(.heldRaised(keyspace: Self.accounts, terms: leaderTerms))) == [1: [:]])
        #expect(follower.handle(.catchUpPulled(keyspace: Self.accounts, epoch: 2)).isEmpty)
        follower.handle(.batchCommitted(1, committed: true))
        // What was caught up stays held.
        let again = follower.handle(.batchArrived(3, entries: [Self.entry(Self.accounts, origin: Self.eu, sequence: 5, epoch: 2)]))
        #expect(Self.applied(again) == [3: [:]])
    }

    @Test func mergesPassAGateAndThoseOfATermThatEndedAreBroughtToTheNewLeadersState() {
        let start = EpochStart(epoch: 2, leader: Self.eu, applied: [Self.us: 10], terms: [TermEnd(epoch: 1, leader: Self.us, last: 10)])
        var follower = Driver(Self.ap, stored: [Self.accounts: StoredElection(record: ElectionRecord(epoch: 2, leader: Self.eu, votedEpoch: 2, votedFor: Self.eu), start: start)])
        #expect(follower.machine.mergeToken(Self.accounts) == 0, "no merge before this region's copy is checked against the term's start")
        follower.handle(.electionReceived(keyspace: Self.accounts, message: .heartbeat(epoch: 2, sentMs: 0), start: start, from: Self.eu, applied: [:]))
        follower.handle(.revertFinished(keyspace: Self.accounts, epoch: 2))
        #expect(follower.machine.mergeToken(Self.accounts) == 2)
        // Only the term's leader's states: an anti-entropy round that chose us-east while it led, and takes its token
        // once eu-west's term began, would bring in the writes us-east acknowledged after its term ended.
        let fromDeposed = follower.machine.admitMerge(Self.accounts, token: 2, from: Self.us)
        #expect(!fromDeposed, "a merge of the deposed leader's states admitted under the new term")
        // A complete repair round from the leader records the terms it merged as held (the log may never bring them).
        let admitted2 = follower.machine.admitMerge(Self.accounts, token: 2, from: Self.eu)
        #expect(admitted2)
        let complete = follower.handle(.mergeCommitted(keyspace: Self.accounts, token: 2, keys: [], terms: [TermEnd(epoch: 2, leader: Self.eu, last: 30)]))
        #expect(complete == [.raiseHeld(Self.accounts, [TermEnd(epoch: 2, leader: Self.eu, last: 30)])])
        follower.handle(.heldRaised(keyspace: Self.accounts, terms: [TermEnd(epoch: 2, leader: Self.eu, last: 30)]))
        // A merge in flight when a new term begins: the new term's revert waits for it, and brings its keys back.
        let admittedAgain = follower.machine.admitMerge(Self.accounts, token: 2, from: Self.eu)
        #expect(admittedAgain)
        let third = EpochStart(epoch: 3, leader: Self.us, applied: [:], terms: [TermEnd(epoch: 2, leader: Self.eu, last: 25), TermEnd(epoch: 1, leader: Self.us, last: 10)])
        let heard = follower.handle(.electionReceived(keyspace: Self.accounts, message: .heartbeat(epoch: 3, sentMs: 0), start: third, from: Self.us, applied: [:]))
        #expect(!heard.contains { if case .revert = $0 { true } else { false } }, "a revert ran while a merge of the ended term was uncommitted")
        let refused = !follower.machine.admitMerge(Self.accounts, token: 2, from: Self.eu)
        #expect(refused, "a merge admitted under a term that is over")
        let late = follower.handle(.mergeCommitted(keyspace: Self.accounts, token: 2, keys: [try! Key("k7")], terms: nil))
        #expect(late.contains(.revert(Self.accounts, third, keys: [try! Key("k7")])), "the keys of a merge that landed after its term ended take the new leader's state")
    }

    @Test func aFailedCatchUpIsTriedAgainASilenceLater() {
        var follower = Self.followerOfEuWestsTerm()
        follower.handle(.batchArrived(1, entries: [Self.entry(Self.accounts, origin: Self.eu, sequence: 3, epoch: 2)]))
        let usUp: [RegionName: RegionMachine.PeerLink] = [Self.us: .init(up: true, acknowledged: 0)]
        _ = follower.tick(at: 10, peers: usUp)
        #expect(follower.tick(at: 600, peers: usUp).contains(.catchUp(Self.accounts, from: Self.eu, epoch: 2)))
        follower.handle(.catchUpFailed(keyspace: Self.accounts, epoch: 2, reason: "eu-west unreachable"))
        #expect(!follower.tick(at: 1_000, peers: usUp).contains { if case .catchUp = $0 { true } else { false } })
        #expect(follower.tick(at: 1_100, peers: usUp).contains(.catchUp(Self.accounts, from: Self.eu, epoch: 2)))
    }

    /// The first failover's clients waited a silence more than they had to (game day): the writes a region lacks
    /// came from the old leader, which is down, so no stream can bring them and the pull goes out at once.
    @Test func writesNoStreamCanBringArePulledAtOnce() {
        var follower = Self.followerOfEuWestsTerm()
        follower.handle(.batchArrived(1, entries: [Self.entry(Self.accounts, origin: Self.eu, sequence: 3, epoch: 2)]))
        let usDown: [RegionName: RegionMachine.PeerLink] = [Self.us: .init(up: false, acknowledged: 0), Self.eu: .init(up: true, acknowledged: 0)]
        #expect(follower.tick(at: 10, peers: usDown).contains(.catchUp(Self.accounts, from: Self.eu, epoch: 2)))
    }

    @Test func aHandOverGoesOutOnlyOnceAdmittedWritesCommittedAndTheTargetHoldsTheWholeLog() {
        var leader = Driver(Self.us)
        _ = leader.tick(at: 100)
        leader.ack(Self.accounts, epoch: 1, sentMs: 100, from: Self.ap)
        #expect(leader.machine.admitWrite(Self.accounts, nowMs: 110) == 1)
        leader.nowMs = 120
        #expect(leader.handle(.handOverRequested(7, keyspace: Self.accounts, target: Self.eu, timeoutMs: 5_000)).isEmpty)
        #expect(leader.machine.writableEpoch(Self.accounts, nowMs: 120) == nil, "no new write once a hand-over began")
        // eu-west holds the whole log as it stood, but the admitted write has not committed: no hand-over.
        var sentMs: UInt64 = 200
        var out = leader.tick(at: sentMs, applied: [Self.us: 5], peers: [Self.eu: .init(up: true, acknowledged: 5)])
        #expect(!out.contains { if case .send(_, .election(_, .timeoutNow, _)) = $0 { true } else { false } },
                "a hand-over before the target holds the leader's log")
        leader.ack(Self.accounts, epoch: 1, sentMs: sentMs, from: Self.ap)
        leader.handle(.writeCommitted(keyspace: Self.accounts, epoch: 1, sequence: 1))
        sentMs = 300
        out = leader.tick(at: sentMs, applied: [Self.us: 6], peers: [Self.eu: .init(up: true, acknowledged: 5)])
        #expect(!out.contains { if case .send(_, .election(_, .timeoutNow, _)) = $0 { true } else { false } }, "eu-west lacks write 6")
        leader.ack(Self.accounts, epoch: 1, sentMs: sentMs, from: Self.ap)
        out = leader.tick(at: 400, applied: [Self.us: 6], peers: [Self.eu: .init(up: true, acknowledged: 6)])
        #expect(out.contains(.send(Self.eu, .election(keyspace: Self.accounts, message: .timeoutNow(epoch: 1), start: .initial(leader: Self.us)))))
        #expect(out.contains(.handOverFinished(7, .success(Self.eu))))
        #expect(leader.machine.snapshot(Self.accounts, nowMs: 400)?.role == .follower)
    }

    @Test func aHandOverThatTimesOutKeepsLeadershipAndWritesResume() {
        var leader = Driver(Self.us)
        _ = leader.tick(at: 100)
        leader.ack(Self.accounts, epoch: 1, sentMs: 100, from: Self.eu)
        leader.nowMs = 110
        leader.handle(.handOverRequested(1, keyspace: Self.accounts, target: Self.ap, timeoutMs: 100))
        let out = leader.tick(at: 210, applied: [Self.us: 3], peers: [Self.ap: .init(up: false, acknowledged: 0)])
        guard case .handOverFinished(1, .failure(let error))? = out.last else {
            Issue.record("no answer at the deadline: \(out)")
            return
        }
        #expect(error.code == .regionUnavailable && error.appliedOrImplied == .no)
        leader.ack(Self.accounts, epoch: 1, sentMs: 200, from: Self.eu)
        #expect(leader.machine.writableEpoch(Self.accounts, nowMs: 220) == 1)
        // Without its lease a leader refuses at once.
        leader.nowMs = 5_000
        guard case .handOverFinished(2, .failure(let refusal))? = leader.handle(.handOverRequested(2, keyspace: Self.accounts, target: Self.eu, timeoutMs: 100)).last else {
            Issue.record("a leader without its lease began a hand-over")
            return
        }
        #expect(refusal.code == .leaderUnavailable)
    }

    @Test func failbackHandsBackOnlyAfterThePreferredRegionHasBeenSteady() {
        var leader = Driver(Self.eu, stored: [Self.accounts: StoredElection(record: ElectionRecord(epoch: 1, leader: Self.us), start: .initial(leader: Self.us))])
        let epoch = leader.win(Self.accounts, at: 6_000, voter: Self.ap)
        #expect(epoch == 2)
        let up = [Self.us: RegionMachine.PeerLink(up: true, acknowledged: 9)]
        var sawTimeoutNow = false
        var ms: UInt64 = 6_100
        let steadyMs = UInt64(Limits().failbackSteadyMs)
        while ms <= 6_000 + steadyMs + 500 && !sawTimeoutNow {
            leader.ack(Self.accounts, epoch: epoch, sentMs: ms - 100, from: Self.ap)
            let out = leader.tick(at: ms, applied: [Self.eu: 9], peers: up)
            sawTimeoutNow = out.contains { if case .send(Self.us, .election(_, .timeoutNow(epoch), _)) = $0 { true } else { false } }
            if sawTimeoutNow {
                #expect(ms >= 6_100 + steadyMs, "failback before us-east was steady for 5 s (at \(ms))")
            }
            ms += 100
        }
        #expect(sawTimeoutNow, "failback to us-east")
    }
}
