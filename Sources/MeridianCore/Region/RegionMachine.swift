/// How one region takes part in leading its single-leader keyspaces: the joints between the core's parts that
/// decide when a leader's term starts, when a leader may acknowledge, which replicated entries apply, what
/// becomes of a deposed leader's writes, and when leadership is handed over or failed back.
///
/// Pure and deterministic, as ``ElectionMember`` is: every call is an event with the time it happened (`nowMs`,
/// a monotonic clock of the region; `wallMs`, its wall clock, only for reports), and everything to be done
/// comes back as ``Effect``s. The node and the simulator drive the same machine.
///
/// Rules it keeps (each has a test that plants its violation):
/// - A new leader's term starts from what this region holds once no replicated batch is between admission and
///   commit: new batches wait while earlier ones commit, so nothing applied is missing from the start it
///   announces, and no wait is cut short by a timeout.
/// - A leader acknowledges only within its lease, in a term whose start is durable, and not while it hands over.
/// - A replicated entry of a single-leader keyspace applies only when ``Fence`` says so; a deposed leader's
///   unshipped entries are diverted; entries wait while the term they belong to is unknown, and while the
///   region brings keys back from a deposed leader's writes.
/// - A hand-over goes out only once every write admitted before it began has committed and the target has
///   acknowledged this region's whole log, and only while the lease is held.
/// - A term's writes apply only once this region holds every earlier term's writes its start counts (log
///   matching); what the streams do not bring within a silence is pulled from the leader, and the terms a pull
///   brought count as held only once every state it read is merged.
public struct RegionMachine: Sendable {
    /// Identifies a replicated batch between its arrival and its commit.
    public typealias BatchID = UInt64
    /// Identifies a hand-over request awaiting its answer.
    public typealias RequestID = UInt64

    /// A peer as the region's replication streams see it now.
    public struct PeerLink: Sendable, Hashable {
        /// The stream to the peer is up (heard within its silence limit).
        public var up: Bool
        /// How far the peer has applied this region's log.
        public var acknowledged: UInt64

        public init(up: Bool, acknowledged: UInt64) {
            self.up = up
            self.acknowledged = acknowledged
        }
    }

    /// Something that happened to the region.
    public enum Event: Sendable {
        /// The node started: first terms are stored before anything else is done.
        case started
        /// Time passed. `applied` is the store's applied point per origin; `peers` the streams' view.
        case ticked(applied: [RegionName: UInt64], peers: [RegionName: PeerLink])
        /// A peer's election message arrived on its stream.
        case electionReceived(keyspace: KeyspaceName, message: ElectionMessage, start: EpochStart?, from: RegionName,
                              applied: [RegionName: UInt64])
        /// This region's clock went out of tolerance with its peers', or came back.
        case clockFenceChanged(fenced: Bool)
        /// A batch of another origin's log arrived and waits to be admitted.
        case batchArrived(BatchID, entries: [ReplicationEntry])
        /// The node stopped waiting for a batch (its stream closed or the node stops): forget it.
        case batchAbandoned(BatchID)
        /// An admitted batch was committed (or failed to be, `committed` false).
        case batchCommitted(BatchID, committed: Bool)
        /// The store's applied points and the keyspace's term history, read for a term this region won.
        case startCaptured(keyspace: KeyspaceName, epoch: UInt64, applied: [RegionName: UInt64], history: [TermEnd])
        /// The store could not be read for a term this region won.
        case startCaptureFailed(keyspace: KeyspaceName, epoch: UInt64, reason: String)
        /// The region, restored from a backup, caught up with its peers (``RestoreCatchUp``): it votes and stands
        /// again, never in an epoch it heard of while restoring.
        case restoreEnded
        /// A ``Effect/persist(_:_:)`` could not be carried out: the region must not act on that state.
        case persistFailed(keyspace: KeyspaceName, reason: String)
        /// The deposed leader's writes of a term's start were kept aside and their keys brought back.
        case revertFinished(keyspace: KeyspaceName, epoch: UInt64)
        /// An operator (or a peer on an operator's behalf) asks this region to hand a keyspace it leads to `target`.
        case handOverRequested(RequestID, keyspace: KeyspaceName, target: RegionName, timeoutMs: UInt64)
        /// A write admitted with ``RegionMachine/admitWrite(_:nowMs:)`` committed in `epoch`, at `sequence` of this
        /// region's log.
        case writeCommitted(keyspace: KeyspaceName, epoch: UInt64, sequence: UInt64)
        /// A write admitted with ``RegionMachine/admitWrite(_:nowMs:)`` was not committed (refused or failed).
        case writeAbandoned(keyspace: KeyspaceName)
        /// The leader asked by ``Effect/catchUp(_:from:epoch:)`` said which terms' writes it holds, read before the
        /// states it serves.
        case catchUpTermsRead(keyspace: KeyspaceName, epoch: UInt64, terms: [TermEnd])
        /// The round ended with every state of the keyspace the leader served merged here (each page admitted with
        /// ``RegionMachine/admitMerge(_:token:from:)``, the last reporting the terms).
        case catchUpPulled(keyspace: KeyspaceName, epoch: UInt64)
        /// The round failed (the leader unreachable, a page refused, the store): it is tried again later.
        case catchUpFailed(keyspace: KeyspaceName, epoch: UInt64, reason: String)
        /// The store now records the terms of ``Effect/raiseHeld(_:_:)`` as held.
        case heldRaised(keyspace: KeyspaceName, terms: [TermEnd])
        /// A merge admitted with ``RegionMachine/admitMerge(_:token:from:)`` was committed: the states of `keys`, pulled
        /// from a peer (anti-entropy, a catch-up, a revert's pull from its leader). `terms`: on a round's last
        /// merge, the peer's held terms read before its tree, when the round merged every state that differed (or
        /// the merge failed and nothing changed: empty keys, nil terms). A term that changed since the admission
        /// may exclude writes the states hold: their keys are brought to its leader's state.
        case mergeCommitted(keyspace: KeyspaceName, token: UInt64, keys: Set<Key>, terms: [TermEnd]?)
        /// A revert could not bring these keys (of its ``Effect/revert(_:_:keys:)``) back because its term is over:
        /// the next revert does.
        case reconcileLater(keyspace: KeyspaceName, keys: Set<Key>)
    }

    /// What the caller must do, in order. A `persist` must be durable before any later effect is carried out;
    /// if it fails, the caller drops the later effects of its keyspace (``Effect/keyspace``; answers to requests
    /// and admitted batches are always carried) and reports ``Event/persistFailed(keyspace:reason:)``.
    public enum Effect: Sendable, Hashable {
        /// Store the keyspace's election state durably.
        case persist(KeyspaceName, StoredElection)
        /// Send a frame to a peer over its stream.
        case send(RegionName, PeerFrame)
        /// Apply an arrived batch, keeping aside the entries named (sequence → the epoch that fenced them), then
        /// report ``Event/batchCommitted(_:committed:)``.
        case applyBatch(BatchID, diverted: [UInt64: UInt64])
        /// Read the store's applied points and the keyspace's term history, then report
        /// ``Event/startCaptured(keyspace:epoch:applied:history:)``.
        case captureStart(KeyspaceName, epoch: UInt64)
        /// Keep aside the writes of earlier terms held here beyond where the leader of `start` held them, bring
        /// their keys and `keys` (merged from a peer while the term changed) to that leader's state, then report
        /// ``Event/revertFinished(keyspace:epoch:)``.
        case revert(KeyspaceName, EpochStart, keys: Set<Key>)
        /// Record a failover this region won, for the RTO report.
        case recordFailover(FailoverRecord)
        /// Record the first write of a term this region won (the end of that failover's RTO).
        case recordFirstWrite(KeyspaceName, epoch: UInt64, atWallMs: UInt64)
        /// Answer a hand-over request: the region now led by `target`, or why not.
        case handOverFinished(RequestID, Result<RegionName, MeridianError>)
        /// Pull the keyspace's states from its leader `from`: first the terms it holds (report
        /// ``Event/catchUpTermsRead(keyspace:epoch:terms:)``), read before its states, then every state that
        /// differs here, each merge through the gate under `epoch` (``RegionMachine/admitMerge(_:token:from:)``, the
        /// round's last ``Event/mergeCommitted(keyspace:token:keys:terms:)`` carrying the terms); then report
        /// ``Event/catchUpPulled(keyspace:epoch:)``, or ``Event/catchUpFailed(keyspace:epoch:reason:)``.
        case catchUp(KeyspaceName, from: RegionName, epoch: UInt64)
        /// Record durably that this region holds these terms' writes up to their `last` (never lowering), then
        /// report ``Event/heldRaised(keyspace:terms:)``; on failure report
        /// ``Event/catchUpFailed(keyspace:epoch:reason:)`` with epoch 0.
        case raiseHeld(KeyspaceName, [TermEnd])
        /// Write a line to the node's log.
        case log(LogLine)
    }

    /// The single-leader keyspace whose term an effect acts on (nil: an answer or an admitted batch, which a
    /// failed persist never holds back).
    public static func keyspace(of effect: Effect) -> KeyspaceName? {
        switch effect {
        case .persist(let keyspace, _), .captureStart(let keyspace, _), .revert(let keyspace, _, _), .recordFirstWrite(let keyspace, _, _),
             .catchUp(let keyspace, _, _), .raiseHeld(let keyspace, _):
            keyspace
        case .send(_, .election(let keyspace, _, _)): keyspace
        case .recordFailover(let record): record.keyspace
        case .send, .applyBatch, .handOverFinished, .log: nil
        }
    }

    /// A failover as the region elected in it saw it.
    public struct FailoverRecord: Sendable, Hashable {
        public let keyspace: KeyspaceName
        public let epoch: UInt64
        public let leader: RegionName
        public let previousLeader: RegionName?
        public let lastHeardWallMs: UInt64?
        public let suspectedWallMs: UInt64
        public let electedWallMs: UInt64
        /// `failure` (an election after silence) or `transfer` (a hand-over).
        public let reason: String
    }

    /// A line for the node's log.
    public struct LogLine: Sendable, Hashable {
        public enum Level: Sendable, Hashable { case info, notice, warning, error }
        public let level: Level
        public let message: String
        public let metadata: [String: String]

        public init(_ level: Level, _ message: String, _ metadata: [String: String] = [:]) {
            self.level = level
            self.message = message
            self.metadata = metadata
        }
    }

    /// What the routes see of one keyspace's leadership.
    public struct Snapshot: Sendable, Hashable {
        public let epoch: UInt64
        public let leader: RegionName?
        public let role: ElectionMember.Role
        public let holdsLease: Bool
        public let start: EpochStart?
    }

    /// A rule broken on purpose, for the simulator's sweeps to show they catch its violation (FoundationDB's
    /// planted bugs). The node never sets one.
    public enum PlantedBug: String, Sendable, Hashable, CaseIterable {
        /// A leader admits writes, and answers them, after its lease ran out.
        case acknowledgeAfterLease = "acknowledge-after-lease"
        /// A deposed leader's unshipped entry is applied at a replica instead of kept aside.
        case applyDivertedEntries = "apply-diverted-entries"
        /// A hand-over goes out before the target holds the leader's whole log.
        case handOverBeforeCaughtUp = "hand-over-before-caught-up"
        /// A won term's start is captured while replicated batches are still being applied.
        case startTermWhileApplying = "start-term-while-applying"
        /// A catch-up round counts the leader's terms as held as soon as it read them, before it pulled their
        /// writes (an anti-entropy round raising the applied point past what it pulled).
        case raisePastPulled = "raise-past-pulled"
        /// Regions stand for election regardless of the failover order: no stagger, and no region defers to
        /// a preferred one that holds as much.
        case ignoreFailoverOrder = "ignore-failover-order"
        /// A client's retry of an idempotent write reaches the leader without its key (the shell dropped it), so a
        /// write the leader already holds is applied again. The machine has no part in it; the simulator plants it.
        case applyRetriesAgain = "apply-retries-again"
        /// A log's entries go to every peer, a restricted keyspace's too (the shipping cut by residency skipped).
        /// The machine has no part in it; the simulator plants it.
        case shipOutsideResidency = "ship-outside-residency"
        /// An origin counts a peer's visible applied point toward `majority` (the peer's fsync not yet done). The machine
        /// has no part in it; the simulator plants it.
        case countVisibleAcks = "count-visible-acks"
        /// A replica acknowledges a batch as durable as soon as it is visible, before its fsync. The simulator plants it.
        /// (Reporting the batch committed to the replica's own machine before the fsync is no bug: a term start
        /// taken from it is saved with the election, and that durable write makes every apply before it durable.)
        case acknowledgeVisibleAsDurable = "acknowledge-visible-as-durable"
        /// An origin trims its log through what its peers acknowledged as visible, not durable: a replica's crash takes
        /// back an unsynced apply, and the origin no longer holds what it must ship again (``LogTrim``). The simulator
        /// plants it.
        case trimByVisibleAcks = "trim-by-visible-acks"
        /// A revert brings every key that differs to the new leader's state instead of keeping the deposed leader's
        /// writes aside: they vanish without a divergence-log record. The simulator plants it.
        case discardInsteadOfKeepingAside = "discard-instead-of-keeping-aside"
        /// An origin trims entries its peers acknowledged while a single-leader keyspace is unsettled here
        /// (``RegionMachine/mayTrimAcknowledged(nowMs:)`` ignored). Peers acknowledge the entries their fence keeps aside,
        /// so the deposed leader's revert no longer finds its own writes to keep aside. The simulator plants it.
        case trimWhileUnsettled = "trim-while-unsettled"
        /// A replica applies entries an origin shipped before its commit's fsync without waiting for the origin to say
        /// they are durable: an origin that crashes before its fsync leaves the replica with writes it lost (and gives
        /// their sequence numbers to other writes). The simulator plants it.
        case applyBeforeOriginDurable = "apply-before-origin-durable"
        /// An origin whose commit failed after its entries shipped keeps its streams open: the peers keep the lost
        /// entries, and apply them when the origin's next writes, numbered as they were, become durable. The
        /// simulator plants it.
        case keepStreamsAfterFailedCommit = "keep-streams-after-failed-commit"
    }

    /// The rule this machine breaks on purpose (nil: none; only the simulator sets one).
    public var plantedBug: PlantedBug? {
        didSet {
            for keyspace in terms.keys { terms[keyspace]!.member.ranksByOrder = plantedBug != .ignoreFailoverOrder }
        }
    }


    /// Where one keyspace's term stands in this region.
    enum Phase: Sendable, Hashable {
        /// Nothing in progress.
        case steady
        /// Won `epoch`: waiting until no admitted batch is uncommitted (new batches wait), then capture.
        case drainingForStart(epoch: UInt64)
        /// Won `epoch`: the store is being read for its start.
        case capturingStart(epoch: UInt64)
        /// Learnt `start`, not yet checked against this region's copy: waiting until no batch is uncommitted.
        case drainingForRevert(EpochStart)
        /// Keeping aside a deposed leader's writes for `epoch`'s start; the keyspace's entries wait.
        case reverting(epoch: UInt64)

        var holdsEntries: Bool { self != .steady }
        /// A term this region won is being started: it takes no write yet.
        var startsTerm: Bool {
            switch self {
            case .drainingForStart, .capturingStart: true
            case .steady, .drainingForRevert, .reverting: false
            }
        }
        var drains: Bool {
            switch self {
            case .drainingForStart, .drainingForRevert: true
            case .steady, .capturingStart, .reverting: false
            }
        }
    }

    /// A hand-over in progress.
    struct HandOver: Sendable, Hashable {
        let target: RegionName
        let request: RequestID?
        let deadlineMs: UInt64
    }

    /// One keyspace's election and term in this region.
    struct Term: Sendable {
        var member: ElectionMember
        var failback: Bool
        /// Where the followed term began (nil while an election runs or until its leader says).
        var start: EpochStart?
        /// The newest epoch among this keyspace's writes held here, and that epoch's leader.
        var newest: (epoch: UInt64, origin: RegionName)
        var phase: Phase = .steady
        /// The epoch whose start this region has checked its copy against.
        var checkedEpoch: UInt64 = 0
        var handOver: HandOver?
        /// Writes admitted under this region's lease and not yet committed or abandoned.
        var writesInFlight = 0
        /// For the failover report: when the leader was last heard, when this region stood, who led before.
        var leaderHeardWallMs: UInt64?
        var stoodWallMs: UInt64?
        var previousLeader: RegionName?
        var firstWriteRecorded = true
        /// This region stands because its leader handed over to it; the term it leads was handed to it (an
        /// operator's choice, which failback leaves alone).
        var handedTo = false
        var wonByHandOver = false
        /// Failback: since when the preferred region has been up and close behind (nil: it is not).
        var preferredSteadySinceMs: UInt64?
        /// How far this region holds each term's writes of the keyspace (the store's record, mirrored).
        var held: [UInt64: TermEnd]
        /// Since when entries of the keyspace wait for earlier terms' writes this region lacks (nil: none do).
        var behindSinceMs: UInt64?
        /// A pull of the leader's states under way, with the terms it said it holds once read.
        var catchUp: CatchUp?
        /// No new pull before then (one silence after the last one ended).
        var catchUpNotBeforeMs: UInt64 = 0
        /// Keys merged from a peer under a term that ended before the merge committed: the next revert brings them
        /// to its leader's state (a merged write is not in the log, where a revert looks).
        var reconcile: Set<Key> = []
        /// Merges admitted and not yet committed: a term's start or a revert waits for them, as for batches.
        var mergesInFlight = 0

        /// A silence: how long a follower waits for its streams before acting on their absence.
        var silenceMs: UInt64 { member.settings.heartbeatIntervalMs * member.settings.missedHeartbeats }

        mutating func hold(_ written: TermEnd) {
            Self.hold(written, in: &held)
        }

        static func hold(_ written: TermEnd, in held: inout [UInt64: TermEnd]) {
            if let mine = held[written.epoch], mine.leader == written.leader, mine.last >= written.last { return }
            held[written.epoch] = written
        }
    }

    /// A pull of a keyspace's states from its leader, to hold an earlier term's writes no stream brought.
    struct CatchUp: Sendable {
        let epoch: UInt64
        let from: RegionName
        var terms: [TermEnd]?
    }

    public let region: RegionName
    private let limits: Limits
    private var terms: [KeyspaceName: Term]
    /// Keyspaces never elected anywhere: their first term is stored at start.
    private var firstTerms: [KeyspaceName]
    /// Arrived batches not yet admitted, in arrival order.
    private var waiting: [(id: BatchID, entries: [ReplicationEntry])] = []
    /// Admitted batches not yet committed, with what they keep aside.
    private var inFlight: [BatchID: (entries: [ReplicationEntry], diverted: [UInt64: UInt64])] = [:]
    /// Per origin, the highest entry of any batch admitted in this process: an entry at or below it that comes again
    /// (two streams from one origin overlap) is skipped by the store, so it must not count as held when judged again.
    private var admittedThrough: [RegionName: UInt64] = [:]
    private var nowMs: UInt64
    private var wallMs: UInt64
    /// Restored from a backup and not caught up: the region's stored votes may be older than votes it gave before
    /// its copy was lost, so it neither votes nor stands; it follows the leaders it hears, and notes the newest
    /// epoch each keyspace's messages named.
    public private(set) var restoring: Bool
    private var epochsHeard: [KeyspaceName: UInt64] = [:]

    /// The machine of `region`, from each single-leader keyspace's durable election state.
    /// - Parameters:
    ///   - stored: The election state the store holds, per keyspace (absent: never elected here).
    ///   - newest: Per keyspace, the newest epoch among the writes the store holds and that epoch's leader.
    ///   - held: Per keyspace, how far the store holds each term's writes (its `terms`).
    ///   - nowMs: The region's monotonic clock now; `wallMs` its wall clock.
    public init(region: RegionName, cluster: ClusterConfig, stored: [KeyspaceName: StoredElection],
                newest: [KeyspaceName: (epoch: UInt64, origin: RegionName)], held: [KeyspaceName: [TermEnd]] = [:], nowMs: UInt64, wallMs: UInt64,
                restoring: Bool = false) {
        self.region = region
        self.restoring = restoring
        limits = cluster.limits
        self.nowMs = nowMs
        self.wallMs = wallMs
        var terms: [KeyspaceName: Term] = [:]
        var firstTerms: [KeyspaceName] = []
        for policy in cluster.keyspaces where policy.topology == .singleLeader && policy.isReplica(region) {
            let order = policy.failover?.order ?? policy.leader.map { [$0] + policy.replicas.filter { $0 != policy.leader } } ?? policy.replicas
            guard order.contains(region), let configured = order.first else { continue }
            var rtt: [RegionName: UInt64] = [:]
            for peer in order where peer != region { rtt[peer] = cluster.wan.timeoutRttMs(region, peer) }
            let settings = ElectionMember.Settings(
                order: order, heartbeatIntervalMs: UInt64(limits.heartbeatIntervalMs),
                missedHeartbeats: UInt64(policy.failover?.missedHeartbeats ?? limits.missedHeartbeatsMax), rttMs: rtt)
            // A keyspace never elected here starts in epoch 1 led by its configured leader; its record is stored
            // at start, so only the very first start of a region leads without an election.
            let firstTerm = stored[policy.name] == nil
            if firstTerm { firstTerms.append(policy.name) }
            let election = stored[policy.name] ?? StoredElection(record: ElectionRecord(leader: configured), start: .initial(leader: configured))
            // Right after a start, streams take a moment (and reconnect backoff) to come up: a follower waits ten
            // suspicion times before suspecting a leader it has not heard yet. A sole replica needs none.
            let graceMs = order.count > 1 ? UInt64(limits.electionGraceSilences) * settings.heartbeatIntervalMs * settings.missedHeartbeats : 0
            let member = ElectionMember(region: region, settings: settings, record: election.record, nowMs: nowMs, firstTerm: firstTerm, graceMs: graceMs)
            var term = Term(member: member, failback: policy.failover?.failback == true, start: election.start,
                            newest: newest[policy.name] ?? (0, configured), held: [:])
            for written in held[policy.name] ?? [] { term.hold(written) }
            terms[policy.name] = term
        }
        self.terms = terms
        self.firstTerms = firstTerms.sorted()
    }

    // MARK: - Queries

    /// The single-leader keyspaces this region takes part in, sorted.
    public var keyspaces: [KeyspaceName] { terms.keys.sorted() }

    /// One keyspace's leadership as the routes see it (nil: not a single-leader keyspace of this region).
    public func snapshot(_ keyspace: KeyspaceName, nowMs: UInt64) -> Snapshot? {
        guard let term = terms[keyspace] else { return nil }
        return Snapshot(epoch: term.member.record.epoch, leader: term.member.leader, role: term.member.role,
                        holdsLease: term.member.holdsLease(nowMs: nowMs), start: term.start)
    }

    /// How far this region's copy of the keyspace reaches for its elections, given what it has applied of each
    /// region's log: the newest epoch among the writes it holds, and how far it holds that epoch's leader's log.
    public func position(_ keyspace: KeyspaceName, applied: [RegionName: UInt64]) -> LogPosition? {
        terms[keyspace].map { position($0, applied) }
    }

    /// The term a write accepted here now would belong to: this region leads, holds its lease, its term's start
    /// is durable, and it is not handing over (nil otherwise).
    public func writableEpoch(_ keyspace: KeyspaceName, nowMs: UInt64) -> UInt64? {
        guard let term = terms[keyspace], term.start?.epoch == term.member.record.epoch, !term.phase.startsTerm, term.handOver == nil else { return nil }
        let leads = plantedBug == .acknowledgeAfterLease ? term.member.role == .leader : term.member.holdsLease(nowMs: nowMs)
        guard leads else { return nil }
        return term.member.record.epoch
    }

    /// Whether this region may trim its own log up to what its peers acknowledged. Not while a single-leader
    /// keyspace it takes part in is unsettled here: it leads without its lease (a successor may have begun a term
    /// it has not heard of, and peers acknowledge the entries such a fence keeps aside as applied), it follows a
    /// term it led itself (restarted after leading it: the same successor may exist), an election runs, or it
    /// follows a term whose start it has not yet checked its copy against (the revert finds the deposed leader's
    /// writes in the log, to keep them aside here). The retention bound still trims.
    public func mayTrimAcknowledged(nowMs: UInt64) -> Bool {
        terms.values.allSatisfy { term in
            guard term.phase == .steady, let start = term.start, start.epoch == term.member.record.epoch,
                  term.checkedEpoch == start.epoch else { return false }
            switch term.member.role {
            case .leader: return term.member.holdsLease(nowMs: nowMs)
            case .follower: return start.leader != region
            case .candidate: return false
            }
        }
    }

    /// Whether `epoch` is still the term this region follows (a revert of an older term's start stops).
    public func follows(_ keyspace: KeyspaceName, epoch: UInt64) -> Bool {
        terms[keyspace]?.member.record.epoch == epoch
    }

    /// Single-leader keyspaces repair only from their leader, whose copy is the truth.
    public func leader(_ keyspace: KeyspaceName) -> RegionName? {
        terms[keyspace]?.member.leader
    }

    /// The term a merge of a peer's states is admitted under: the followed epoch once its start is known and
    /// this region's copy was checked against it (0 otherwise: no merge now).
    public func mergeToken(_ keyspace: KeyspaceName) -> UInt64 {
        guard let term = terms[keyspace], let start = term.start, start.epoch == term.member.record.epoch,
              term.checkedEpoch == start.epoch, !term.phase.startsTerm else { return 0 }
        return start.epoch
    }

    // MARK: - The merge gate

    /// Admits one merge of a peer's states of a single-leader keyspace (a page of anti-entropy, a catch-up, a
    /// revert's pull), counted until ``Event/mergeCommitted(keyspace:token:keys:terms:)``: only while the region
    /// still follows the term `token` names, checked, and no term start or revert drains. A term's start and a
    /// revert wait for admitted merges as for batches, so no merge lands unseen after the term changed.
    /// The states must come from that term's leader (`peer`), and a leader merges none: a round that began while a
    /// deposed leader led would otherwise bring the writes it acknowledged after its term ended into the new term,
    /// while the deposed leader keeps the same writes aside.
    public mutating func admitMerge(_ keyspace: KeyspaceName, token: UInt64, from peer: RegionName) -> Bool {
        guard token != 0, mergeToken(keyspace) == token, let term = terms[keyspace], !term.phase.drains,
              term.start?.leader == peer, peer != region else { return false }
        terms[keyspace]?.mergesInFlight += 1
        return true
    }

    // MARK: - The write gate

    /// Admits a local write of a single-leader keyspace: the term it belongs to, counted until it commits or is
    /// abandoned (a hand-over waits for it). Nil: this region may not write it now.
    public mutating func admitWrite(_ keyspace: KeyspaceName, nowMs: UInt64) -> UInt64? {
        guard let epoch = writableEpoch(keyspace, nowMs: nowMs) else { return nil }
        terms[keyspace]?.writesInFlight += 1
        return epoch
    }

    // MARK: - Events

    /// Handles one event at `nowMs` (monotonic) and `wallMs` (wall clock), returning what to do, in order.
    public mutating func handle(_ event: Event, nowMs: UInt64, wallMs: UInt64) -> [Effect] {
        self.nowMs = max(self.nowMs, nowMs)
        self.wallMs = wallMs
        var effects: [Effect] = []
        switch event {
        case .started:
            for keyspace in firstTerms { effects += persist(keyspace) }
            firstTerms = []
        case .ticked(let applied, let peers):
            effects += tick(applied: applied, peers: peers)
        case .electionReceived(let keyspace, let message, let start, let peer, let applied):
            effects += received(message, start: start, keyspace: keyspace, from: peer, applied: applied)
        case .clockFenceChanged(let fenced):
            for keyspace in keyspaces {
                effects += carry(keyspace, terms[keyspace]!.member.setFenced(fenced, nowMs: self.nowMs))
            }
        case .batchArrived(let id, let entries):
            waiting.append((id, entries))
        case .batchAbandoned(let id):
            waiting.removeAll { $0.id == id }
        case .batchCommitted(let id, let committed):
            guard let batch = inFlight.removeValue(forKey: id) else { preconditionFailure("batch \(id) committed without being admitted") }
            if committed {
                for entry in batch.entries where batch.diverted[entry.sequence] == nil {
                    guard var term = terms[entry.keyspace] else { continue }
                    if entry.epoch > term.newest.epoch { term.newest = (entry.epoch, entry.origin) }
                    if entry.epoch > 0 { term.hold(TermEnd(epoch: entry.epoch, leader: entry.origin, last: entry.sequence)) }
                    terms[entry.keyspace] = term
                }
            }
        case .startCaptured(let keyspace, let epoch, let applied, let history):
            effects += takeOffice(keyspace, epoch: epoch, applied: applied, history: history)
        case .startCaptureFailed(let keyspace, let epoch, let reason):
            guard terms[keyspace]?.phase == .capturingStart(epoch: epoch) else { break }
            effects.append(.log(LogLine(.error, "the keyspace's terms could not be read; not leading it", ["keyspace": keyspace.rawValue, "reason": reason])))
            effects += stepDown(keyspace)
        case .restoreEnded:
            // Every keyspace's record is stored again (the votes forgone included), also when this is a retry of
            // an end whose records did not all become durable: the caller ends the restore only once they are.
            restoring = false
            for keyspace in keyspaces {
                let heard = max(epochsHeard[keyspace] ?? 0, terms[keyspace]!.member.record.epoch)
                let forgone = carry(keyspace, terms[keyspace]!.member.forgoVotes(through: heard))
                effects += forgone.isEmpty ? persist(keyspace) : forgone
            }
        case .persistFailed(let keyspace, let reason):
            effects.append(.log(LogLine(.error, "election state not stored; not acting on it", ["keyspace": keyspace.rawValue, "reason": reason])))
            effects += stepDown(keyspace)
        case .revertFinished(let keyspace, let epoch):
            if terms[keyspace]?.phase == .reverting(epoch: epoch) {
                terms[keyspace]?.phase = .steady

            }
            // The store now holds earlier terms' writes only as far as that start's leader did.
            if var term = terms[keyspace], let start = term.start, start.epoch == epoch {
                let oldestNamed = start.terms.count >= EpochStart.termsMax ? (start.terms.map(\.epoch).min() ?? 0) : 0
                for (termEpoch, mine) in term.held where termEpoch < epoch && termEpoch >= oldestNamed {
                    let kept = min(mine.last, start.last(of: mine.leader, in: termEpoch) ?? 0)
                    term.held[termEpoch] = kept == 0 ? nil : TermEnd(epoch: termEpoch, leader: mine.leader, last: kept)
                }
                terms[keyspace] = term
            }
        case .handOverRequested(let id, let keyspace, let target, let timeoutMs):
            effects += beginHandOver(keyspace, to: target, request: id, timeoutMs: timeoutMs)
        case .writeCommitted(let keyspace, let epoch, let sequence):
            guard var term = terms[keyspace] else { break }
            term.writesInFlight -= 1
            term.hold(TermEnd(epoch: epoch, leader: region, last: sequence))
            precondition(term.writesInFlight >= 0, "a write committed that was not admitted")
            if epoch > term.newest.epoch || (epoch == term.newest.epoch && term.newest.origin != region) { term.newest = (epoch, region) }
            if !term.firstWriteRecorded && term.member.record.epoch == epoch {
                term.firstWriteRecorded = true
                if epoch > 1 { effects.append(.recordFirstWrite(keyspace, epoch: epoch, atWallMs: self.wallMs)) }
            }
            terms[keyspace] = term
        case .writeAbandoned(let keyspace):
            terms[keyspace]?.writesInFlight -= 1
            precondition((terms[keyspace]?.writesInFlight ?? 0) >= 0, "a write abandoned that was not admitted")
        case .catchUpTermsRead(let keyspace, let epoch, let read):
            guard var term = terms[keyspace], term.catchUp?.epoch == epoch else { break }
            term.catchUp?.terms = read
            terms[keyspace] = term
            if plantedBug == .raisePastPulled { effects.append(.raiseHeld(keyspace, read)) }
        case .catchUpPulled(let keyspace, let epoch):
            guard var term = terms[keyspace], let catchUp = term.catchUp, catchUp.epoch == epoch else { break }
            term.catchUp = nil
            term.catchUpNotBeforeMs = self.nowMs + term.silenceMs
            terms[keyspace] = term
        case .catchUpFailed(let keyspace, let epoch, let reason):
            guard var term = terms[keyspace] else { break }
            if epoch != 0 {
                guard term.catchUp?.epoch == epoch else { break }
                term.catchUp = nil
                term.catchUpNotBeforeMs = self.nowMs + term.silenceMs
                terms[keyspace] = term
            }
            effects.append(.log(LogLine(.warning, "could not pull an earlier term's writes from the leader; trying again",
                                        ["keyspace": keyspace.rawValue, "reason": reason])))
        case .heldRaised(let keyspace, let raised):
            guard var term = terms[keyspace] else { break }
            for written in raised { term.hold(written) }
            terms[keyspace] = term
        case .mergeCommitted(let keyspace, let token, let keys, let pulled):
            guard var term = terms[keyspace] else { break }
            term.mergesInFlight -= 1
            precondition(term.mergesInFlight >= 0, "a merge committed that was not admitted")
            terms[keyspace] = term
            // The writes are merged here whether or not this region's log brought them (anti-entropy may move the
            // peer's applied point past them): record them held, or a start captured here would leave them out.
            // Recorded before any drained phase moves on (a start captured here counts them).
            if plantedBug != .raisePastPulled {
                let raised = (pulled ?? []).filter { written in term.held[written.epoch].map { $0.leader != written.leader || $0.last < written.last } ?? true }
                if !raised.isEmpty { effects.append(.raiseHeld(keyspace, raised)) }
            }
            // Admitted under a term that is over: its leader may have served writes the new term keeps aside, which a
            // revert cannot find in the log; the new term's revert brings these keys to its leader's state.
            if mergeToken(keyspace) != token { effects += reconcile(keyspace, keys) }
        case .reconcileLater(let keyspace, let keys):
            effects += reconcile(keyspace, keys)
        }
        effects += advancePhases()
        effects += admitWaiting()
        return effects
    }

    /// Keys merged under a term that is over: a revert of the current term's start brings them to its leader's
    /// state, now (if the start's own revert is done) or with that revert.
    private mutating func reconcile(_ keyspace: KeyspaceName, _ keys: Set<Key>) -> [Effect] {
        // A region that leads (or is starting its term) counted what it merged in its start: nothing to bring back.
        guard var term = terms[keyspace], !keys.isEmpty, term.member.role != .leader, !term.phase.startsTerm else { return [] }
        term.reconcile.formUnion(keys)
        if term.phase == .steady, let start = term.start, start.epoch == term.member.record.epoch, term.checkedEpoch == start.epoch, start.leader != region {
            term.phase = .drainingForRevert(start)
        }
        terms[keyspace] = term
        return [.log(LogLine(.notice, "keys merged under a term that ended are brought to the leader's state", ["keyspace": keyspace.rawValue, "keys": String(keys.count)]))]
    }

    // MARK: - Elections

    private mutating func tick(applied: [RegionName: UInt64], peers: [RegionName: PeerLink]) -> [Effect] {
        var effects: [Effect] = []
        for keyspace in keyspaces {
            var term = terms[keyspace]!
            if term.member.settings.order.allSatisfy({ $0 == region || peers[$0]?.up == true }) { term.member.streamsConnected(nowMs: nowMs) }
            // Restoring: no candidacy (a tick is where a follower that heard no leader stands).
            let memberEffects = restoring ? [] : term.member.tick(nowMs: nowMs, position: position(term, applied))
            if term.member.role == .candidate && term.stoodWallMs == nil { term.stoodWallMs = wallMs }
            terms[keyspace] = term
            effects += carry(keyspace, memberEffects)
            effects += progressHandOver(keyspace, applied: applied, peers: peers)
            effects += considerFailback(keyspace, applied: applied, peers: peers)
            effects += considerCatchUp(keyspace, peers: peers)
        }
        return effects
    }

    /// Entries that wait for earlier terms' writes no stream brought: pull them from the leader, which holds
    /// everything its start counts. At once when no stream can bring them (every region whose writes are
    /// missing is unreachable: down, or cut off from this one), else after a silence in which none did.
    private mutating func considerCatchUp(_ keyspace: KeyspaceName, peers: [RegionName: PeerLink]) -> [Effect] {
        guard var term = terms[keyspace], let since = term.behindSinceMs, term.catchUp == nil, let start = term.start,
              start.epoch == term.member.record.epoch, start.leader != region, nowMs >= term.catchUpNotBeforeMs else { return [] }
        let missing = start.terms.filter { earlier in
            earlier.epoch < start.epoch && earlier.leader != region && earlier.last > 0
                && term.held[earlier.epoch].map { $0.leader == earlier.leader && $0.last >= earlier.last } != true
        }
        let noStreamCanBringThem = !missing.isEmpty && missing.allSatisfy { peers[$0.leader]?.up != true }
        guard noStreamCanBringThem || nowMs - since >= term.silenceMs else { return [] }
        term.catchUp = CatchUp(epoch: start.epoch, from: start.leader, terms: nil)
        terms[keyspace] = term
        return [.catchUp(keyspace, from: start.leader, epoch: start.epoch),
                .log(LogLine(.notice, "pulling earlier terms' writes from the leader", ["keyspace": keyspace.rawValue, "leader": start.leader.rawValue]))]
    }

    private mutating func received(_ message: ElectionMessage, start: EpochStart?, keyspace: KeyspaceName, from peer: RegionName,
                                   applied: [RegionName: UInt64]) -> [Effect] {
        guard var term = terms[keyspace] else { return [] }
        if restoring {
            epochsHeard[keyspace] = max(epochsHeard[keyspace] ?? 0, message.epoch)
            switch message {
            case .voteRequest, .preVoteRequest, .transferVoteRequest, .timeoutNow:
                return [.log(LogLine(.notice, "restored from a backup and catching up: not voting", ["keyspace": keyspace.rawValue, "from": peer.rawValue]))]
            default:
                break
            }
        }
        if case .timeoutNow = message {
            // Stand only holding everything the handing-over leader's term began with (its own log it checked
            // itself): otherwise a majority write of an earlier term, held by the leader but not here, could be
            // left behind. Not caught up: decline, and an ordinary election follows.
            guard let start, start.leader == peer,
                  start.applied.allSatisfy({ origin, sequence in origin == peer || applied[origin, default: 0] >= sequence }) else {
                return [.log(LogLine(.warning, "declined a hand-over: not caught up with the leader's term", ["keyspace": keyspace.rawValue, "from": peer.rawValue]))]
            }
        }
        var memberEffects = term.member.received(message, from: peer, nowMs: nowMs, position: position(term, applied))
        if case .timeoutNow = message, term.member.role == .candidate { term.handedTo = true }
        if case .heartbeat(let epoch, _) = message, term.member.record.epoch == epoch, term.member.leader == peer {
            term.leaderHeardWallMs = wallMs
            // The leader says where its term began: learn it once, durably (with the record).
            if let start, start.epoch == epoch, start.leader == peer, term.start != start {
                term.start = start
                if !memberEffects.contains(where: { if case .persist = $0 { true } else { false } }) {
                    memberEffects.insert(.persist(term.member.record), at: 0)
                }
            }
        }
        terms[keyspace] = term
        return carry(keyspace, memberEffects)
    }

    /// How far this region's copy of the keyspace reaches, for elections.
    private func position(_ term: Term, _ applied: [RegionName: UInt64]) -> LogPosition {
        LogPosition(epoch: term.newest.epoch, sequence: applied[term.newest.origin] ?? 0)
    }

    /// The machine's effects for a member's: the record made durable (with the start of its epoch), messages
    /// sent with the start they announce, and the term's phase moved.
    private mutating func carry(_ keyspace: KeyspaceName, _ memberEffects: [ElectionMember.Effect]) -> [Effect] {
        var effects: [Effect] = []
        for effect in memberEffects {
            switch effect {
            case .persist:
                effects += persist(keyspace)
            case .send(let peer, let message):
                var start: EpochStart?
                switch message {
                case .heartbeat, .timeoutNow: start = terms[keyspace]?.start
                default: break
                }
                effects.append(.send(peer, .election(keyspace: keyspace, message: message, start: start)))
            case .becameLeader(let epoch):
                terms[keyspace]?.phase = .drainingForStart(epoch: epoch)
            case .following(let epoch, let leader):
                guard var term = terms[keyspace] else { continue }
                if let leader, leader != region {
                    term.leaderHeardWallMs = wallMs
                    term.previousLeader = nil
                    term.stoodWallMs = nil
                } else if term.previousLeader == nil {
                    // An election began: remember who led before, for the failover report.
                    term.previousLeader = term.start?.leader
                }
                if term.start?.epoch != epoch { term.start = nil }
                // A term this region won and had not yet started is over before it began.
                if term.phase.startsTerm { term.phase = .steady }
                if let handOver = term.handOver {
                    term.handOver = nil
                    if let request = handOver.request {
                        effects.append(.handOverFinished(request, .failure(MeridianError(
                            .leaderUnavailable, "\(region) stopped leading keyspace '\(keyspace)' (epoch \(epoch)) before \(handOver.target) caught up; nothing was handed over.",
                            context: ["keyspace": keyspace.rawValue, "region": handOver.target.rawValue]))))
                    }
                }
                terms[keyspace] = term
                effects.append(.log(LogLine(.info, "following", ["keyspace": keyspace.rawValue, "epoch": String(epoch), "leader": leader?.rawValue ?? "none yet"])))
            }
        }
        // A known start this region has not checked its copy against: keep aside what a deposed leader wrote,
        // once the batches admitted under the previous term have committed (the keyspace's entries wait).
        if var term = terms[keyspace], let start = term.start, start.epoch == term.member.record.epoch, term.checkedEpoch < start.epoch,
           term.phase == .steady || { if case .reverting = term.phase { true } else { false } }() {
            term.checkedEpoch = start.epoch
            term.phase = .drainingForRevert(start)
            terms[keyspace] = term
        }
        return effects
    }

    /// The keyspace's current record, with the start if it belongs to its epoch.
    private func persist(_ keyspace: KeyspaceName) -> [Effect] {
        guard let term = terms[keyspace] else { return [] }
        let record = term.member.record
        return [.persist(keyspace, StoredElection(record: record, start: term.start.flatMap { $0.epoch == record.epoch ? $0 : nil }))]
    }

    /// Stops leading (or standing for) a keyspace whose state cannot be stored or read: its heartbeats stop,
    /// so the others elect a successor.
    private mutating func stepDown(_ keyspace: KeyspaceName) -> [Effect] {
        guard var term = terms[keyspace] else { return [] }
        _ = term.member.stepDown(nowMs: nowMs)
        if term.phase.startsTerm { term.phase = .steady }
        var effects: [Effect] = []
        if let handOver = term.handOver, let request = handOver.request {
            effects.append(.handOverFinished(request, .failure(MeridianError(
                .leaderUnavailable, "\(region) stepped down from keyspace '\(keyspace)' (its election state could not be stored); nothing was handed over.",
                context: ["keyspace": keyspace.rawValue]))))
        }
        term.handOver = nil
        terms[keyspace] = term
        return effects
    }

    // MARK: - Starting a term

    /// Drained phases move on: a won term's start is captured, a learnt start is checked (its revert begins).
    /// While any keyspace drains, no batch is admitted, so the drain ends as soon as the admitted ones commit.
    private mutating func advancePhases() -> [Effect] {
        var effects: [Effect] = []
        for keyspace in keyspaces {
            guard (inFlight.isEmpty && terms[keyspace]!.mergesInFlight == 0) || (plantedBug == .startTermWhileApplying && terms[keyspace]!.phase.startsTerm) else { continue }
            switch terms[keyspace]!.phase {
            case .drainingForStart(let epoch):
                terms[keyspace]!.phase = .capturingStart(epoch: epoch)
                effects.append(.captureStart(keyspace, epoch: epoch))
            case .drainingForRevert(let start):
                terms[keyspace]!.phase = .reverting(epoch: start.epoch)
                effects.append(.revert(keyspace, start, keys: terms[keyspace]!.reconcile))
                terms[keyspace]!.reconcile = []
            case .steady, .capturingStart, .reverting:
                break
            }
        }
        return effects
    }

    /// This region won `epoch` and the store says what it holds: that is the term's start, recorded durably
    /// before any heartbeat announces it or any write is taken.
    private mutating func takeOffice(_ keyspace: KeyspaceName, epoch: UInt64, applied: [RegionName: UInt64], history: [TermEnd]) -> [Effect] {
        guard var term = terms[keyspace], term.phase == .capturingStart(epoch: epoch) else { return [] }
        term.phase = .steady
        guard term.member.record.epoch == epoch, term.member.role == .leader else {
            // A newer epoch arrived meanwhile: this term is over before it began.
            terms[keyspace] = term
            return []
        }
        let start = EpochStart(epoch: epoch, leader: region, applied: applied, terms: history.filter { $0.epoch < epoch })
        let record = FailoverRecord(keyspace: keyspace, epoch: epoch, leader: region, previousLeader: term.previousLeader,
                                    lastHeardWallMs: term.leaderHeardWallMs, suspectedWallMs: term.stoodWallMs ?? wallMs, electedWallMs: wallMs,
                                    reason: term.handedTo ? "transfer" : "failure")
        term.start = start
        term.checkedEpoch = epoch
        term.firstWriteRecorded = false
        term.wonByHandOver = term.handedTo
        term.previousLeader = nil
        term.stoodWallMs = nil
        term.handedTo = false
        terms[keyspace] = term
        var effects = persist(keyspace)
        if epoch > 1 { effects.append(.recordFailover(record)) }
        effects.append(.log(LogLine(.notice, "leading", ["keyspace": keyspace.rawValue, "epoch": String(epoch),
                                                         "previous": record.previousLeader?.rawValue ?? "none"])))
        return effects
    }

    // MARK: - The apply path

    /// Admits waiting batches, in arrival order, that can be judged now; each comes out as an `applyBatch`.
    private mutating func admitWaiting() -> [Effect] {
        guard !terms.values.contains(where: { $0.phase.drains }) else { return [] }
        var effects: [Effect] = []
        var stillWaiting: [(id: BatchID, entries: [ReplicationEntry])] = []
        var behind: Set<KeyspaceName> = []
        for batch in waiting {
            guard let diverted = verdict(batch.entries, behind: &behind) else {
                stillWaiting.append(batch)
                continue
            }
            inFlight[batch.id] = (batch.entries, diverted)
            for entry in batch.entries { admittedThrough[entry.origin] = max(admittedThrough[entry.origin] ?? 0, entry.sequence) }
            effects.append(.applyBatch(batch.id, diverted: diverted))
        }
        waiting = stillWaiting
        for keyspace in keyspaces {
            if behind.contains(keyspace) {
                if terms[keyspace]!.behindSinceMs == nil { terms[keyspace]!.behindSinceMs = nowMs }
            } else {
                terms[keyspace]!.behindSinceMs = nil
            }
        }
        return effects
    }

    /// The entries of a batch to keep aside (sequence → the epoch that fenced them), or nil when some entry
    /// cannot be judged yet (its keyspace added to `behind` when it waits for earlier terms' writes).
    private func verdict(_ entries: [ReplicationEntry], behind: inout Set<KeyspaceName>) -> [UInt64: UInt64]? {
        var diverted: [UInt64: UInt64] = [:]
        // What the region holds once the batch's entries before the one judged are applied (as `batchCommitted` holds
        // them); not those a batch admitted before brought already, which the store skips (kept aside, maybe).
        var heldBefore: [KeyspaceName: [UInt64: TermEnd]] = [:]
        for entry in entries {
            guard let term = terms[entry.keyspace] else { continue }
            if term.phase.holdsEntries { return nil }
            var held = heldBefore[entry.keyspace] ?? term.held
            switch Fence.verdict(epoch: entry.epoch, origin: entry.origin, sequence: entry.sequence,
                                 following: term.member.record.epoch, start: term.start, held: held) {
            case .apply:
                if entry.epoch > 0 && entry.sequence > admittedThrough[entry.origin] ?? 0 {
                    Term.hold(TermEnd(epoch: entry.epoch, leader: entry.origin, last: entry.sequence), in: &held)
                }
                heldBefore[entry.keyspace] = held
            case .divert where plantedBug == .applyDivertedEntries: break
            case .divert: diverted[entry.sequence] = term.member.record.epoch
            case .wait: return nil
            case .catchUp:
                behind.insert(entry.keyspace)
                return nil
            }
        }
        return diverted
    }

    // MARK: - Handing over

    private mutating func beginHandOver(_ keyspace: KeyspaceName, to target: RegionName, request: RequestID?, timeoutMs: UInt64) -> [Effect] {
        guard var term = terms[keyspace], term.member.holdsLease(nowMs: nowMs), term.handOver == nil, !term.phase.startsTerm,
              term.member.settings.order.contains(target), target != region else {
            let refusal = MeridianError(
                .leaderUnavailable,
                "\(region) does not lead keyspace '\(keyspace)' now (or has not heard a majority within its lease, or is already handing it over), so it cannot hand it over to \(target).",
                context: ["keyspace": keyspace.rawValue, "region": target.rawValue])
            return request.map { [.handOverFinished($0, .failure(refusal))] } ?? [.log(LogLine(.warning, refusal.message, ["keyspace": keyspace.rawValue]))]
        }
        // No new write from now on; those admitted already must commit, and the target hold them, first.
        term.handOver = HandOver(target: target, request: request, deadlineMs: nowMs + timeoutMs)
        terms[keyspace] = term
        return []
    }

    /// A hand-over goes out once no admitted write is uncommitted and `target` acknowledged this region's whole
    /// log; it fails at its deadline (leadership stays here and writes resume).
    private mutating func progressHandOver(_ keyspace: KeyspaceName, applied: [RegionName: UInt64], peers: [RegionName: PeerLink]) -> [Effect] {
        guard var term = terms[keyspace], let handOver = term.handOver else { return [] }
        let own = applied[region] ?? 0
        let caughtUp = plantedBug == .handOverBeforeCaughtUp || (term.writesInFlight == 0 && peers[handOver.target].map { $0.up && $0.acknowledged >= own } == true)
        if !caughtUp {
            guard nowMs >= handOver.deadlineMs else { return [] }
            term.handOver = nil
            terms[keyspace] = term
            let failure = MeridianError(
                .regionUnavailable, "\(handOver.target) did not catch up with \(region)'s log in time; \(region) keeps leading keyspace '\(keyspace)'.",
                context: ["keyspace": keyspace.rawValue, "region": handOver.target.rawValue], applied: .no)
            return [handOver.request.map { .handOverFinished($0, .failure(failure)) } ?? .log(LogLine(.warning, "failback did not go through", ["keyspace": keyspace.rawValue, "reason": failure.message]))]
        }
        let memberEffects = term.member.handOver(to: handOver.target, nowMs: nowMs)
        term.handOver = nil
        terms[keyspace] = term
        guard !memberEffects.isEmpty else {
            let failure = MeridianError(
                .leaderUnavailable, "\(region) lost its lease on keyspace '\(keyspace)' while \(handOver.target) caught up, so it handed nothing over; an election follows if it was deposed.",
                context: ["keyspace": keyspace.rawValue, "region": handOver.target.rawValue])
            return [handOver.request.map { .handOverFinished($0, .failure(failure)) } ?? .log(LogLine(.warning, "failback did not go through", ["keyspace": keyspace.rawValue, "reason": failure.message]))]
        }
        var effects = carry(keyspace, memberEffects)
        effects.append(.log(LogLine(.notice, handOver.request == nil ? "failback" : "handed over", ["keyspace": keyspace.rawValue, "to": handOver.target.rawValue])))
        if let request = handOver.request { effects.append(.handOverFinished(request, .success(handOver.target))) }
        return effects
    }

    /// Failback: a keyspace this region leads after a failure, in place of the first region of its failover
    /// order, goes back to it once that region's stream has been up and within a batch of this region's log for
    /// `Limits.failbackSteadyMs` in a row (a region that flaps does not take leadership back and forth). A term won
    /// by a hand-over stays where an operator sent it.
    private mutating func considerFailback(_ keyspace: KeyspaceName, applied: [RegionName: UInt64], peers: [RegionName: PeerLink]) -> [Effect] {
        guard var term = terms[keyspace] else { return [] }
        guard term.failback, term.member.holdsLease(nowMs: nowMs), term.handOver == nil, !term.phase.startsTerm, !term.wonByHandOver,
              let preferred = term.member.settings.order.first, preferred != region else {
            terms[keyspace]?.preferredSteadySinceMs = nil
            return []
        }
        let own = applied[region] ?? 0
        guard let link = peers[preferred], link.up, own - min(own, link.acknowledged) <= UInt64(limits.replicationBatchEntriesMax) else {
            terms[keyspace]?.preferredSteadySinceMs = nil
            return []
        }
        let since = term.preferredSteadySinceMs ?? nowMs
        term.preferredSteadySinceMs = since
        terms[keyspace] = term
        guard nowMs - since >= UInt64(limits.failbackSteadyMs) else { return [] }
        terms[keyspace]?.preferredSteadySinceMs = nil
        return beginHandOver(keyspace, to: preferred, request: nil, timeoutMs: UInt64(limits.ackTimeoutMs))
    }
}
