import MeridianCore
import MeridianStorage
import MeridianTestKit
import Synchronization

/// A deterministic simulation of K regions replicating keyspaces of every topology and conflict policy with
/// `majority` acks (asked per write in the `async` keyspace `sim`, as `Meridian-Ack` does), driving the core's real state machines (`RegionMachine` with its `ElectionMember`s,
/// `LogShipper`, `LogReceiver`, `AckTracker`, `HybridLogicalClock`, `WritePlanner`'s clock rules, `Admission`)
/// with the node's `Limits`, under simulated time, WAN latency, partitions and isolations, crashes that lose
/// everything not durable, pauses past the lease (SIGSTOP), operators' hand-overs, and the permanent loss of a
/// region. A seed chooses every fault; the same seed replays the same run.
///
/// Each region keeps its durable state in the in-memory backend of the node's storage protocols (`MemoryStore`
/// on a `MemoryDisk`, which the conformance suite holds to the SQLite backend's behaviour): writes are planned
/// and committed by it, replicated batches applied, held terms recorded, writes kept aside, states merged and
/// replaced, elections saved, all by the calls the node makes. A crash closes the store and a restart opens a
/// new one on the same disk; the checks read what each disk holds.
///
/// The single-leader keyspace is led as the node leads it: every region runs a `RegionMachine` rebuilt from its
/// durable election state at each start; election frames travel on the regions' streams; a leader writes only
/// through the machine's write gate (its lease) and answers a `majority` write only if it still holds the lease;
/// replicated batches pass the machine's fence before they are persisted (a deposed leader's unshipped entries
/// go to the divergence log); a won term's start is captured from the durable state; reverts pull the new
/// leader's key states; failback and hand-overs go through the machine's ticks.
///
/// The model follows the node's protocol step by step, so the windows the node has are windows here:
/// - an origin's writes are a group commit: planned and visible to its later writes at once, shipped to the peers
///   at once (before the fsync, as a Raft leader sends while it writes its log), durable and answered only when
///   the simulated fsync completes; a crash before then loses them, and the restarted origin numbers its next
///   writes from its durable end. The origin then tells its peers its durable point, and a peer applies only up
///   to the last one it heard (``ApplyQueue/takeBatch(through:)``): no region ever holds an entry its origin
///   lost, so a number reused after a crash names one write wherever it is held. (The node's replica runs such an
///   apply's statements before the durable point arrives and holds its commit for it, a few milliseconds at most:
///   what becomes visible or durable, and when relative to the origin's fsync, is what is modelled here.) Readers
///   there, and the states a catch-up, a revert or anti-entropy pulls, see committed writes only;
/// - a stream opens with hello; the receiver answers with the applied point it holds durably (welcome),
///   the origin says how far its log is durable, and ships from there;
/// - a receiver hands entries out when they arrive and the machine admits them; a batch of `async` keyspaces
///   only is applied at once without an fsync (visible, the applied point moved in the same step: skipping what
///   another stream already applied, refusing a gap), and a simulated fsync later makes it durable (a crash
///   before it loses it, applied point and all, as a machine crash loses an unsynced write-ahead log); any other
///   batch is applied, visible and durable together, when its fsync completes (``ApplyDurability``); either
///   way the receiver acknowledges only then, once, on the stream that carried it; only durable points count
///   toward `majority` and reach the region machine;
/// - origins send heartbeats, receivers answer them with their durable and visible points, and an origin
///   closes a stream it has not heard from within the silence limit;
/// - a stream is a byte stream (FIFO), but different streams are not ordered with each other, and a
///   partition holds bytes rather than dropping them: after the heal, batches of a stream its origin
///   already abandoned still arrive, interleaved with the new stream's;
/// - a restarted region's clock starts above every timestamp it recorded, its own writes' and applied ones;
/// - an origin trims its own log by the core's ``LogTrim`` rule, through what every peer acknowledged as durable
///   while its single-leader keyspace is settled, and ships from what the trim left: a peer that resumes below
///   the trim, or a shipment the log no longer holds, is a violation.
///
/// Failover invariants: at most one lease holder at any instant and one leader per epoch; no write taken without
/// the lease; no replicated entry applied that the start of the term the region follows does not count; no term
/// started while an admitted batch is uncommitted; no hand-over sent before its target durably
/// holds the leader's whole log; no majority-acknowledged write kept aside, and no acknowledged async write kept
/// aside by a term a hand-over started; no kept-aside write in any region's state after convergence; no write
/// discarded silently (each write of a surviving origin is in the final term's history or in that origin's own
/// divergence log). Each has a planted bug (`RegionMachine.PlantedBug`) that the sweep shows is caught.
///
/// No region applies an entry beyond what its origin holds durably (the planted bug applies what arrived).
///
/// Invariants checked: every `majority`-acknowledged write was durable in a majority when acknowledged and
/// is never lost (with a region lost for good: it survives in a surviving region); every region applies
/// each origin's log as a gap-free prefix, each entry once; a region's new write orders after everything it
/// has applied; after the faults stop and the network heals, the regions converge to byte-identical states
/// (log delivery plus anti-entropy every 2 s) within a time budget.
public struct Simulation {
    /// What a run is asked to do.
    public struct Options: Sendable {
        /// Seeds every random choice.
        public var seed: UInt64
        /// How many random steps (writes, faults, heals) the fault phase takes.
        public var steps: Int
        /// How many regions (3 to 5).
        public var regions: Int
        /// Lose one region for good (process and disk) at a random point of the fault phase.
        public var loseARegion: Bool
        /// Simulated time to converge after the faults stop, in ms.
        public var convergenceBudgetMs: UInt64 = 60_000
        /// A rule every region machine breaks on purpose: the run must report a violation.
        public var plantedBug: RegionMachine.PlantedBug?

        /// Creates options.
        public init(seed: UInt64, steps: Int, regions: Int, loseARegion: Bool = false, plantedBug: RegionMachine.PlantedBug? = nil) {
            precondition((3...5).contains(regions) && steps >= 0)
            self.seed = seed
            self.steps = steps
            self.regions = regions
            self.loseARegion = loseARegion
            self.plantedBug = plantedBug
        }
    }

    /// What a run did and found.
    public struct Report: Sendable, CustomStringConvertible {
        /// The options replayed by the run.
        public let seed: UInt64
        /// Writes clients issued.
        public var writes = 0
        /// Writes acknowledged with `majority`.
        public var acknowledged = 0
        /// Writes whose ack wait timed out (durable at their origin, not confirmed).
        public var timedOut = 0
        /// Writes lost with their region before they were answered.
        public var unanswered = 0
        /// Crashes, partitions and heals injected.
        public var crashes = 0, partitions = 0, heals = 0
        /// The region lost for good, if any.
        public var lostRegion: String?
        /// Messages delivered and dropped.
        public var delivered = 0, dropped = 0
        /// Batches that arrived on a stream its origin had already closed.
        public var staleBatches = 0
        /// Reads answered, and reads refused (no region could serve them at their level in time).
        public var readsServed = 0, readsRefused = 0
        /// Operations the linearizability, session and staleness checkers examined.
        public var strongOperations = 0, sessionOperations = 0, boundedReads = 0
        /// Persists interrupted by a crash (entries handed out, never made durable).
        public var persistsLost = 0
        /// Writes lost with their origin's crash before their commit's fsync (never answered).
        public var commitsLost = 0
        /// Writes whose commit failed after their entries shipped (answered with an error; the number taken again).
        public var commitsFailed = 0
        /// Streams closed because the peer went silent.
        public var silenceCloses = 0
        /// Writes to the conflict-policy keyspaces (fww, region-priority, siblings, crdt), and what they caused:
        /// values logged as discarded (summed over regions), the most siblings one key held, the final counter total.
        public var policyWrites = 0, conflictsLogged = 0, siblingsMax = 0
        public var counterTotal: UInt64 = 0
        /// Simulated ms from the final heal to identical state, if reached.
        public var convergenceMs: UInt64?
        /// Keys anti-entropy changed after the heal (with a region lost for good: its writes that only some
        /// survivors received).
        public var keysRepaired = 0
        /// The strong keyspace's leadership: terms won by an election after a failure and by a hand-over (manual
        /// or failback), hand-overs asked for, pauses past the lease, writes a leader kept aside for a successor
        /// that never held them, and strong writes refused because no region held the write gate.
        public var elections = 0, transfers = 0, handOversAsked = 0, pauses = 0, diverted = 0, strongRefused = 0
        /// Pulls from the leader of earlier terms' writes no stream had brought (log matching's catch-up).
        public var catchUps = 0
        /// Writes to the keyspace restricted to one region.
        public var residentWrites = 0
        /// Strong writes forwarded from the region the client called to the leader it knew.
        public var forwardedWrites = 0
        /// Retries of idempotent async writes (their clients never trust an answer), and those answered with the first
        /// attempt's outcome.
        public var idempotentRetries = 0, idempotentReplays = 0
        /// Times a region's clock fence closed (restarted with its clock beyond the maximum offset), and writes a
        /// region refused because its clock was not proven within tolerance.
        public var clockFences = 0, clockRefused = 0
        /// What the failover drill after the run saw (nil: it did not run, the run having not converged).
        public var drill: String?
        /// Every invariant broken, described.
        public var violations: [String] = []

        /// Whether every invariant held.
        public var passed: Bool { violations.isEmpty }

        public var description: String {
            var text = "seed \(seed): \(writes) writes, \(acknowledged) majority-acknowledged, \(timedOut) timed out, \(unanswered) unanswered; "
            text += "\(crashes) crashes, \(partitions) partitions, \(heals) heals"
            if let lostRegion { text += ", \(lostRegion) lost for good" }
            text += "; \(readsServed) reads served, \(readsRefused) refused; checked \(strongOperations) strong ops, \(sessionOperations) session ops, \(boundedReads) bounded reads"
            text += "; \(policyWrites) policy writes, \(conflictsLogged) conflicts logged, up to \(siblingsMax) siblings, counter \(counterTotal)"
            text += "; \(elections) elections, \(transfers) transfers (\(handOversAsked) asked), \(pauses) pauses, \(diverted) writes kept aside, \(catchUps) catch-ups, \(strongRefused) strong writes refused, \(forwardedWrites) forwarded, \(idempotentRetries) idempotent retries (\(idempotentReplays) replayed), \(clockFences) clock fences, \(clockRefused) writes refused for the clock, \(residentWrites) writes resident in one region"
            text += "; \(delivered) messages delivered, \(dropped) dropped, \(staleBatches) stale batches, \(persistsLost) persists lost, \(commitsLost) commits lost in their fsync, \(commitsFailed) failed, \(silenceCloses) silence closes; "
            text += convergenceMs.map { "converged \($0) ms after heal" } ?? "did not converge"
            if keysRepaired > 0 { text += " (\(keysRepaired) keys repaired by anti-entropy)" }
            if let drill { text += "; drill: \(drill)" }
            if !violations.isEmpty { text += "\nVIOLATIONS:\n- " + violations.joined(separator: "\n- ") }
            return text
        }
    }

    // MARK: - Model

    private enum Message {
        case hello
        case welcome(applied: UInt64)
        case batch(from: UInt64, through: UInt64, entries: [ReplicationEntry])
        /// The origin's log end and its wall clock when sent, and the latest `ack.echo` it had from the peer.
        case heartbeat(logHighWater: UInt64, physicalMs: UInt64, echo: UInt64)
        /// The peer's durable and visible applied points; `echo`: the peer's own (monotonic) clock when it sent the ack.
        case ack(durable: UInt64, visible: UInt64, echo: UInt64)
        /// An election frame of the strong keyspace, carried on the sender's stream as the node carries it.
        case election(keyspace: KeyspaceName, message: ElectionMessage, start: EpochStart?)
        /// The origin's log is durable through `through`: entries shipped beyond it (during the commit's fsync) may
        /// be applied up to there.
        case durable(through: UInt64)
    }

    /// One direction of one stream: origin to peer, or back.
    private struct Channel: Hashable {
        let stream: UInt64
        let toPeer: Bool
    }

    private struct Stream {
        let origin: Int
        let peer: Int
        /// The origin still uses it (it closes a stream on silence, a protocol error or a crash).
        var openAtOrigin = true
        var lastHeardMs: UInt64
        var lastHeartbeatMs: UInt64
    }

    /// The receiving side of one stream at its peer, as the node's `BatchApplier`.
    private struct Inbound {
        let origin: Int
        var receiver: LogReceiver
        /// Checked batches waiting for the next persist (merged), as the node's applier queues them.
        var queue = ApplyQueue()
        /// The batch being persisted now, once the region machine admitted it (`admission` names it until then),
        /// and its entries to keep aside.
        var persisting: ApplyQueue.Batch?
        var admission: RegionMachine.BatchID?
        var admitted = false
        var diverted: [UInt64: UInt64] = [:]
        /// How the batch being persisted applies (``ApplyDurability``): a durable one applies, visible and durable at
        /// once, only when its fsync completes.
        var durability = ApplyDurability.visibleFirst
        /// How far the origin said its log is durable on this stream: queued entries beyond it wait.
        var originDurable: UInt64 = 0
    }

    /// What the client of a write learns once the origin's commit is durable (the node answers after its group
    /// commit's fsync): until then it has no answer, and a crash leaves its outcome open.
    private enum Answer {
        case none
        /// A session's write: its token and history record it.
        case session(session: Int, key: String, delete: Bool)
        /// A write of the strong keyspace, taken in `epoch`; a `majority` one waits for its acks next.
        case strong(StrongWrite, epoch: UInt64, forwarded: Int?, operation: Int?)
    }

    /// A write committed at its origin whose fsync has not completed: visible to later writes there (as the writes
    /// of one group commit), not yet to readers, and already on its way to the peers.
    private struct PendingCommit {
        let entry: ReplicationEntry
        let register: Bool
        let answer: Answer
    }

    private enum EventKind {
        case channel(Channel)
        case persist(region: Int, stream: UInt64, generation: Int)
        /// The fsync of a region's group commit completed: its pending writes are durable.
        case originFsync(region: Int, generation: Int)
        case reconnect(from: Int, to: Int)
        case restart(Int)
        case tick
        case read(Int)
        /// A revert of the strong keyspace for `epoch`'s start (the pull from its leader took a round trip).
        case revert(region: Int, start: EpochStart, keys: Set<Key>, generation: Int)
        /// A catch-up's first answer (the leader's terms) arrives, then its states a round trip later.
        case catchUpTerms(region: Int, from: Int, epoch: UInt64, generation: Int)
        case catchUpStates(region: Int, from: Int, epoch: UInt64, generation: Int)
        /// A strong write forwarded to the leader its region knows arrives there; its answer arrives back.
        case forwardedWrite(id: Int, to: Int)
        case forwardedAnswer(id: Int, from: Int)
        /// An idempotent async write's client sends it again, with the same key, to the next region.
        case idempotentRetry(id: Int)
    }

    private struct Event {
        let timeMs: UInt64
        let order: UInt64
        let kind: EventKind
        func precedes(_ other: Event) -> Bool { (timeMs, order) < (other.timeMs, other.order) }
    }

    /// One region: its store on its disk (what survives a crash), and what a process holds in memory.
    private struct Region {
        let name: RegionName
        var up = true
        var lost = false
        /// Incremented by every crash: work started before it (a persist in progress) is void after it.
        var generation = 0
        /// The region's disk, and the in-memory store opened on it (the node's storage protocols, the same
        /// backend the conformance suite checks against SQLite): its logs, applied points, key states, conflicts,
        /// election state, held terms, divergence log and clock high-water. A crash closes the store; a restart
        /// opens a new one on the same disk.
        let disk: MemoryDisk
        var store: MemoryStore
        // Volatile.
        var acks: AckTracker
        var outbound: [UInt64?]                    // per peer: the stream this region ships on
        var shippers: [LogShipper?]                // per peer: set once the stream is welcomed
        var inbound: [UInt64: Inbound] = [:]       // per stream from an origin
        var reconnectFailures: [Int]               // per peer, for backoff
        var echoFrom: [UInt64]                     // per peer: the latest echo it acknowledged with
        /// Per peer: the highest durable and visible points of this region's log its acks and welcomes named since the
        /// process started (the log trim counts the durable ones, as the node's links).
        var peerDurable: [UInt64]
        var peerVisible: [UInt64]
        /// When the region last trimmed its log (the node's maintenance runs once a second).
        var trimmedMs: UInt64 = 0
        var freshness: [FreshnessTracker]          // per origin, on the true clock (a perfect monotonic clock)
        /// The region machine, rebuilt from the durable election state at every start.
        var machine: RegionMachine?
        /// When the process last started.
        var startedMs: UInt64 = 0
        /// A paused process (SIGSTOP) neither runs nor hears until then; its state stays.
        var pausedUntilMs: UInt64 = 0
        /// The clock fence, from the brackets of its peers' clocks their heartbeats give (rebuilt unproven at
        /// every start, as the node's).
        var fence: ClockFence
        /// Writes committed here whose fsync is under way, and whether one is.
        var pendingCommits: [PendingCommit] = []
        var originFsyncRunning = false
    }

    /// Every region's wall clock (simulated time plus its skew), shared with the stores that stamp writes by it.
    private final class WallClocks: Sendable {
        private let state: Mutex<(nowMs: UInt64, skewMs: [Int64])>

        init(nowMs: UInt64, regions: Int) { state = Mutex((nowMs, Array(repeating: 0, count: regions))) }

        func set(nowMs: UInt64) { state.withLock { $0.nowMs = nowMs } }
        func set(skewMs: [Int64]) { state.withLock { $0.skewMs = skewMs } }
        func physicalMs(_ index: Int) -> UInt64 { state.withLock { UInt64(Int64($0.nowMs) + $0.skewMs[index]) } }
    }

    /// A read in progress: where it is being tried, until when, for which session.
    private struct PendingRead {
        var region: Int
        let session: Int
        let keyspace: KeyspaceName
        let key: String
        let level: ConsistencyLevel
        let bound: UInt64?
        let call: UInt64
        var deadline: UInt64
        var forwarded: Bool
    }

    /// An operation on the strong (single-leader) keyspace, for the linearizability checker.
    private struct StrongOperation {
        let key: String
        let kind: RegisterOperation.Kind
        let call: UInt64
        var returned: UInt64?
    }

    /// A client's write to the strong keyspace, as the region it called takes it or forwards it to the leader.
    private struct StrongWrite {
        let key: String
        /// The value written; nil for a delete.
        let value: String?
        /// Acknowledged once durable at the leader (keys `a*`), or with a majority (keys `s*`).
        let async: Bool
        /// The region the client called, and its generation then (a crash ends the client's connection).
        var entry: Int
        var generation: Int
        var call: UInt64
        /// When the region the client called stops waiting for the leader's answer (the node's forward timeout):
        /// the client is told the outcome is open, and the write may still take effect.
        var deadline: UInt64
        /// An async put's `Idempotency-Key` and request fingerprint: its retry must not apply it twice.
        var idempotency: IdempotencyMark?
    }

    private let options: Options
    private var generator: SeededGenerator
    private var nowMs: UInt64 = 1_000_000 { didSet { wallClocks.set(nowMs: nowMs) } }
    /// Each region's clock error: two regions differ by up to 480 ms, within the 500 ms the HLC accepts.
    private var skewMs: [Int64] = [] { didSet { wallClocks.set(skewMs: skewMs) } }
    private let wallClocks: WallClocks
    private var events: [Event] = []
    private var order: UInt64 = 0
    private var nextStream: UInt64 = 1
    private var streams: [UInt64: Stream] = [:]
    private var channels: [Channel: [(atMs: UInt64, message: Message)]] = [:]
    private var regions: [Region]
    private var names: [RegionName]
    private var rttMs: [[UInt64]]
    private var cut: Set<[Int]> = []
    /// Per region, the terms its catch-up's leader said it held (what the round's last merge reports).
    private var catchUpTerms: [Int: [TermEnd]] = [:]
    private var reconnectPending: Set<[Int]> = []
    private var report: Report
    /// Per origin, every entry it committed (its log as it would be untrimmed): what the checks compare with.
    private var history: [[ReplicationEntry]] = []
    /// Sessions with an operation under way: a session's client waits for each answer before its next operation, so
    /// its history (in answer order) is the order it acted in, and a write's causal past is what it saw when it wrote.
    private var busySessions: Set<Int> = []
    /// Acknowledged writes: (origin, sequence).
    private var acknowledgedWrites: [(origin: Int, sequence: UInt64)] = []
    private let keyspace = try! KeyspaceName("sim")
    /// A single-leader keyspace led by the first region: strong reads and writes.
    private let strongKeyspace = try! KeyspaceName("strong")
    /// Multi-leader keyspaces of the other conflict policies (the `sim` keyspace resolves by lww).
    private let policyKeyspaces = ["fww", "prio", "sib", "crdt"].map { try! KeyspaceName($0) }
    /// A keyspace restricted to region 1 (residency): its writes must never reach another region.
    private let residentKeyspace = try! KeyspaceName("resident")
    private let residentHome = 1
    private var rules: [KeyspaceName: ConflictRule] = [:]
    /// Versions a local write superseded while they were the value its region showed (a causal overwrite,
    /// not a conflict), and every increment made to each counter: for the conflicts-log accounting and the
    /// counter's exact total.
    private var overwrittenVisible: Set<Dot> = []
    private var increments: [Dot: (key: String, amount: UInt64)] = [:]
    private let cluster: ClusterConfig
    private let ackTimeoutMs: UInt64 = 2_000
    private let readWaitMs: UInt64 = 1_000
    /// Client sessions: their tokens, and what each did and saw, for the session checker.
    private var tokens: [SessionToken]
    private var sessionHistory: [[SessionOperation]]
    private var strongOperations: [StrongOperation] = []
    /// Strong writes awaiting their majority, by the entry's dot: the operation and the term it was taken in.
    private var strongPending: [Dot: (operation: Int, epoch: UInt64, forwarded: Int?)] = [:]
    /// Strong writes forwarded to a leader, by id, until their answer arrives or their client stops waiting.
    private var forwardedWrites: [Int: StrongWrite] = [:]
    private var nextForwarded = 0
    /// Forwarded strong writes the leader answered, by id: their operation, answered when the answer arrives.
    private var forwardedOperations: [Int: Int] = [:]
    /// Async writes to the strong keyspace a leader acknowledged (a hand-over must never keep one aside).
    private var asyncAcknowledged: [Dot: UInt64] = [:]
    /// Who led each term of the strong keyspace (at most one per epoch), and the terms won by a hand-over.
    private var leaderOfEpoch: [UInt64: Int] = [:]
    private var transferEpochs: Set<UInt64> = []
    private var nextBatchID: RegionMachine.BatchID = 0
    private var nextHandOver: RegionMachine.RequestID = 0
    private var stalenessWrites: [StalenessChecker.Write] = []
    private var stalenessReads: [StalenessChecker.Read] = []
    private var pendingReads: [Int: PendingRead] = [:]
    private var nextRead = 0
    private var strongValue = 0
    /// Idempotent async writes, by id, until their client's retry.
    private var idempotentWrites: [Int: StrongWrite] = [:]
    /// The node's heartbeat interval (`Limits.heartbeatIntervalMs`), which streams and elections share.
    private let heartbeatIntervalMs = UInt64(Limits().heartbeatIntervalMs)
    private let shipperLimits = LogShipper.Limits(batchEntriesMax: 8, inflightEntriesMax: 32)

    /// Prepares a run.
    public init(_ options: Options) {
        self.options = options
        generator = SeededGenerator(seed: options.seed)
        let all = ["us-east", "eu-west", "ap-southeast", "sa-east", "ap-northeast"].prefix(options.regions).map { RegionName(validated: $0) }
        names = Array(all)
        // Round-trip times from shared/latency/rtt-ms.csv for these regions.
        let table: [Set<String>: UInt64] = [
            ["us-east", "eu-west"]: 81, ["us-east", "ap-southeast"]: 230, ["eu-west", "ap-southeast"]: 170,
            ["us-east", "sa-east"]: 120, ["us-east", "ap-northeast"]: 145, ["ap-northeast", "ap-southeast"]: 74,
            ["ap-northeast", "sa-east"]: 257, ["ap-southeast", "sa-east"]: 328, ["eu-west", "sa-east"]: 190,
            ["eu-west", "ap-northeast"]: 220,
        ]
        rttMs = all.map { a in all.map { b in a == b ? 0 : table[[a.rawValue, b.rawValue]] ?? 150 } }
        let count = options.regions
        wallClocks = WallClocks(nowMs: 1_000_000, regions: count)
        var links: [String] = []
        for a in all.indices { for b in all.indices where a < b { links.append("    - { between: [\(all[a]), \(all[b])], ms: \(rttMs[a][b]) }") } }
        cluster = try! ClusterConfig.parse(yaml: """
            cluster: sim
            wan:
              rtt_ms:
            \(links.joined(separator: "\n"))
            regions:
            \(all.enumerated().map { "  - { name: \($1), client: 127.0.0.1:\(1000 + $0), peer: 127.0.0.1:\(2000 + $0) }" }.joined(separator: "\n"))
            keyspaces:
              - { name: sim, topology: multi-leader, ack: async, consistency: { default: session } }
              - { name: strong, topology: single-leader, leader: \(all[0]), ack: majority,
                  failover: { order: [\(all.map(\.rawValue).joined(separator: ", "))], missed_heartbeats: 5, failback: true } }
              - { name: fww, topology: multi-leader, conflict: fww, ack: majority }
              - { name: prio, topology: multi-leader, conflict: region-priority, priority: [\(all.reversed().map(\.rawValue).joined(separator: ", "))], ack: majority }
              - { name: sib, topology: multi-leader, conflict: siblings, ack: majority }
              - { name: crdt, topology: multi-leader, conflict: crdt, ack: majority }
              - { name: resident, topology: geo-partitioned, home: \(all[1]), residency: { regions: [\(all[1])], access: proxy } }
            """, file: "simulation")
        let rules = Dictionary(uniqueKeysWithValues: cluster.keyspaces.map { ($0.name, ConflictRule(policy: $0)) })
        self.rules = rules
        let clocks = wallClocks
        let (parsed, seed) = (cluster, options.seed)
        regions = all.enumerated().map { index, name in
            let disk = MemoryDisk()
            return Region(name: name, disk: disk, store: Self.open(disk, region: name, index: index, rules: rules, clocks: clocks,
                                                                   sealer: Self.sealer(parsed, region: name, seed: seed, index: index, generation: 0)),
                          acks: AckTracker(origin: name), outbound: Array(repeating: nil, count: count),
                          shippers: Array(repeating: nil, count: count), reconnectFailures: Array(repeating: 0, count: count),
                          echoFrom: Array(repeating: 0, count: count), peerDurable: Array(repeating: 0, count: count),
                          peerVisible: Array(repeating: 0, count: count), freshness: Array(repeating: FreshnessTracker(), count: count),
                          fence: ClockFence(region: name, peers: all, maxOffsetMs: HybridLogicalClock.maxOffsetMsDefault))
        }
        history = Array(repeating: [], count: count)
        tokens = Array(repeating: SessionToken(), count: 4)
        sessionHistory = Array(repeating: [], count: 4)
        report = Report(seed: options.seed)
        skewMs = (0..<count).map { _ in Int64.random(in: -240...240, using: &generator) }
        wallClocks.set(skewMs: skewMs)  // (observers do not run in an initializer)
        leaderOfEpoch[1] = 0
        for index in regions.indices { startMachine(index) }
    }

    private func physicalMs(_ index: Int) -> UInt64 { UInt64(Int64(nowMs) + skewMs[index]) }

    /// Opens a region's store on its disk, stamping writes with the region's wall clock.
    /// - Parameter sealer: Seals the restricted keyspace's values, as a node's does.
    private static func open(_ disk: MemoryDisk, region: RegionName, index: Int, rules: [KeyspaceName: ConflictRule], clocks: WallClocks,
                             sealer: ValueSealer) -> MemoryStore {
        let context = StoreContext(region: region, limits: Limits(), conflictRules: rules, physicalClockMs: { clocks.physicalMs(index) }, observer: nil,
                                   sealer: sealer)
        do {
            return try MemoryStore(disk: disk, context: context)
        } catch {
            preconditionFailure("a region's store opens on its own disk: \(error)")
        }
    }

    /// A region's sealer: its root key fixed by the seed (it survives restarts, as a key file does), its data keys
    /// drawn from a generator of the seed, the region and the process's generation (a restart draws anew).
    private static func sealer(_ cluster: ClusterConfig, region: RegionName, seed: UInt64, index: Int, generation: Int) -> ValueSealer {
        var rootSource = SeededGenerator(seed: seed ^ (0x5EA1 &* UInt64(index + 1)))
        let root = try! RegionRootKey(bytes: SealedValue.randomBytes(RegionRootKey.byteCount, using: &rootSource), source: "simulated \(region)")
        let draws = Mutex(SeededGenerator(seed: seed &+ UInt64(index) << 40 &+ UInt64(generation) << 20 &+ 1))
        return ValueSealer(region: region, root: root, sealed: ValueSealer.sealedKeyspaces(cluster), random: { count in
            draws.withLock { SealedValue.randomBytes(count, using: &$0) }
        })
    }

    // MARK: - What a region's disk holds

    /// What region `index`'s disk holds now (its store may be closed: down, or lost for good).
    /// What region `index` holds as its readers see it: while its store is open, what it applied visibly too.
    private func held(_ index: Int) -> MemoryStore.Contents {
        if regions[index].up, let contents = regions[index].store.visibleContents { return contents }
        return durable(index)
    }

    /// How far region `index`'s own log is committed, as its process knows it: up to its first write still in its
    /// commit's fsync (the node's committed sequence moves when the commit returns; a later durable step here may
    /// have made the pending writes durable already, which the process learns only when their fsync completes).
    private func committedThrough(_ index: Int) -> UInt64 {
        if let first = regions[index].pendingCommits.first { return first.entry.sequence - 1 }
        return regions[index].up ? appliedThrough(index, index) : durableThrough(index, index)
    }

    /// What region `index` holds durably: what survives a crash of its machine.
    private func durable(_ index: Int) -> MemoryStore.Contents {
        guard let contents = regions[index].disk.held else { preconditionFailure("every region's store was opened at the start") }
        return contents
    }

    /// Every entry region `index` committed, in sequence order: its own log before any trim. A write lost with a
    /// crash before its commit's fsync is dropped from it: no region may hold it, and its number goes to a later write.
    private func log(_ index: Int) -> [ReplicationEntry] { history[index] }

    /// How far region `index` holds `origin`'s log: its own log's end, or its applied point of another's.
    private func appliedThrough(_ index: Int, _ origin: Int) -> UInt64 { held(index).appliedThrough(names[origin]) }

    /// How far region `index` holds `origin`'s log durably.
    private func durableThrough(_ index: Int, _ origin: Int) -> UInt64 { durable(index).appliedThrough(names[origin]) }

    /// Region `index`'s state of one key.
    private func state(_ index: Int, _ keyspace: KeyspaceName, _ key: String) -> KeyState? {
        held(index).keys[keyspace]?[try! Key(key)]
    }

    /// The strong keyspace's terms region `index` holds writes of, newest first (the store's `keyspace_terms`).
    private func terms(_ index: Int) -> [TermEnd] {
        do { return try regions[index].store.terms(keyspace: strongKeyspace, limit: .max) } catch {
            preconditionFailure("terms are read from regions that are up: \(error)")
        }
    }

    /// Every key state region `index` holds, by "keyspace/key".
    private func states(_ index: Int) -> [String: KeyState] {
        var all: [String: KeyState] = [:]
        for (keyspace, keys) in held(index).keys { for (key, state) in keys { all["\(keyspace)/\(key)"] = state } }
        return all
    }

    /// Runs the fault phase, heals, runs the convergence phase, and checks every invariant.
    public mutating func run() -> Report {
        for origin in regions.indices { for peer in regions.indices where peer != origin { connect(origin, peer) } }
        schedule(after: 50, .tick)
        let lossStep = options.loseARegion ? Int.random(in: 0..<max(options.steps, 1), using: &generator) : -1
        // Safety phase: writes and faults.
        for step in 0..<options.steps {
            advance(by: UInt64.random(in: 1...40, using: &generator))
            if step == lossStep { loseForGood(Int.random(in: regions.indices, using: &generator)) }
            let roll = Int.random(in: 0..<100, using: &generator)
            switch roll {
            case 0..<20: clientWrite(at: Int.random(in: regions.indices, using: &generator), session: Int.random(in: 0..<tokens.count, using: &generator))
            case 20..<32: strongWrite()
            case 32..<46: policyWrite(at: Int.random(in: regions.indices, using: &generator))
            case 46..<70: startRead()
            case 70..<76: partitionRandomPair()
            case 76..<77: isolate(faultTarget())
            case 77..<84: healAll()
            case 84..<87: crash(Int.random(in: regions.indices, using: &generator))
            case 87..<88: pause(faultTarget())
            case 88..<89: askHandOver()
            case 89..<92: residentWrite()
            default: break
            }
        }
        if options.loseARegion && report.lostRegion == nil { loseForGood(Int.random(in: regions.indices, using: &generator)) }
        // Liveness phase: heal, restart everyone not lost, and demand convergence within the budget.
        healAll()
        // A clock left wrong is put right, as the nemesis restarts a skewed node with its clock corrected: with a
        // region lost for good, the one region holding a term's whole log may be the skewed one, and no term
        // can start without it.
        for index in regions.indices where !regions[index].lost && Self.clockIsWrong(skewMs[index]) {
            crash(index)
            skewMs[index] = Int64.random(in: -240...240, using: &generator)
        }
        for index in regions.indices where !regions[index].up && !regions[index].lost { restart(index, clockWrongChance: false) }
        for index in regions.indices { regions[index].pausedUntilMs = min(regions[index].pausedUntilMs, nowMs) }
        let healedAt = nowMs
        while nowMs - healedAt < options.convergenceBudgetMs {
            advance(by: 100)
            // Anti-entropy, as the nodes run it: every couple of seconds each pair of regions merges states.
            if (nowMs - healedAt) % 2_000 == 0 { antiEntropy() }
            if converged() {
                report.convergenceMs = nowMs - healedAt
                break
            }
        }
        checkInvariants()
        if report.convergenceMs != nil { failoverDrill() }
        return report
    }

    /// After the run, the game day's round: the strong keyspace's leader is killed while every other region
    /// runs and every link is whole, with strong writes in flight. The region that takes over must be the first
    /// in the failover order among those that could have stood before it holding as much as it did: the
    /// up-to-date rule lets no region holding less win, and the stagger and the pre-vote let the preferred one go
    /// first. "Could have": its silence and stagger had run out, and it had held that much, long enough before
    /// the winner stood for its request for pre-votes to reach the winner (a disk stall that holds back a
    /// region's apply legitimately lets a region further down the order win). The game day once saw the last
    /// region in the order win because the next one had dropped the entries its stream delivered as the leader
    /// died; this drill checks the same rule on every seed's latencies.
    private mutating func failoverDrill() {
        // A region restarted less than its start-up grace ago may not stand yet (until its streams are up): wait
        // for the grace to pass everywhere, so every region may stand.
        // The strong keyspace's `missed_heartbeats`, and the period of the machines' ticks.
        let missedHeartbeats = UInt64(5), tickMs = UInt64(25)
        let graceMs = UInt64(cluster.limits.electionGraceSilences) * heartbeatIntervalMs * missedHeartbeats
        for _ in 0..<100 where regions.contains(where: { $0.up && nowMs < $0.startedMs + graceMs }) { advance(by: 100) }
        guard let leader = regions.indices.first(where: { isRunning($0) && regions[$0].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.holdsLease == true }),
              let before = regions[leader].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.epoch else { return }
        let others = regions.indices.filter { $0 != leader && isRunning($0) }
        guard others.count >= regions.count / 2 + 1 else { return }
        for _ in 0..<Int.random(in: 1...4, using: &generator) {
            strongWrite()
            advance(by: UInt64.random(in: 1...20, using: &generator))
        }
        crash(leader)
        // Down for the whole drill: its restart, scheduled by the crash, finds it lost.
        regions[leader].lost = true
        let killedAt = nowMs
        // When each region may stand at the latest: the leader's last heartbeat reached it by a one-way delay (and
        // its jitter) after the kill, then its silence and its stagger (two heartbeat intervals per rank) pass.
        let mayStandMs = Dictionary(uniqueKeysWithValues: others.map { region in
            (region, killedAt + rttMs[leader][region] / 2 + 5 + heartbeatIntervalMs * missedHeartbeats + rttMs[region][leader] + UInt64(region) * 2 * heartbeatIntervalMs)
        })
        var positions: [Int: LogPosition] = [:]
        var heldSinceMs: [Int: UInt64] = [:]
        var stood: [Int: (atMs: UInt64, positions: [Int: LogPosition], heldSinceMs: [Int: UInt64])] = [:]
        while nowMs - killedAt < 20_000 {
            advance(by: 10)
            for region in others {
                let position = regions[region].machine!.position(strongKeyspace, applied: appliedPoints(region))!
                if positions[region] != position { heldSinceMs[region] = nowMs }
                positions[region] = position
            }
            for region in others where stood[region] == nil {
                if let snapshot = regions[region].machine!.snapshot(strongKeyspace, nowMs: nowMs), snapshot.epoch > before, snapshot.role != .follower {
                    stood[region] = (nowMs, positions, heldSinceMs)
                }
            }
            guard let epoch = leaderOfEpoch.keys.filter({ $0 > before }).min(), let winner = leaderOfEpoch[epoch] else { continue }
            report.drill = "\(names[leader]) killed, \(names[winner]) took over epoch \(epoch) in \(nowMs - killedAt) ms"
            guard let stand = stood[winner] else { return }
            // A region's request for pre-votes goes out on a tick, at most a heartbeat interval after it may ask, and
            // takes a one-way delay (and its jitter) to arrive.
            let couldHaveStood = others.filter { region in
                regions[region].fence.mayWrite && stand.positions[region]! >= stand.positions[winner]!
                    && max(mayStandMs[region]!, stand.heldSinceMs[region]!) + heartbeatIntervalMs + tickMs + rttMs[region][winner] / 2 + 5 <= stand.atMs
            }
            if let preferred = couldHaveStood.min(), preferred < winner {
                report.violations.append("\(names[winner]) took over epoch \(epoch) from the killed \(names[leader]), though \(names[preferred]), before it in the failover order, "
                                         + "could have stood first and held as much: positions when \(names[winner]) stood \(stand.positions.sorted { $0.key < $1.key }.map { "\(names[$0.key]) \($0.value)" })")
            }
            return
        }
        report.violations.append("nobody took over from the killed \(names[leader]) within 20 s, with \(others.map { names[$0].rawValue }) running and every link whole")
    }

    // MARK: - Clients

    /// A session's write to the multi-leader keyspace: ordered after what the session saw, recording it as
    /// the entry's dependencies, as the node does with a token.
    private mutating func clientWrite(at index: Int, session: Int) {
        guard isRunning(index), mayWrite(index) else { return }
        let key = "k\(Int.random(in: 0..<6, using: &generator))"
        let token = tokens[session]
        // One write in six is a delete: a tombstone a session sees must never be undone for it.
        let delete = Int.random(in: 0..<6, using: &generator) == 0
        guard !busySessions.contains(session) else { return }
        if commit(at: index, keyspace: keyspace, key: key, operation: delete ? .delete : .put, after: token.clock,
                  dependencies: token.seen.filter { $0.key != names[index] }, answer: .session(session: session, key: key, delete: delete)) != nil {
            busySessions.insert(session)
        }
    }

    /// A write to a keyspace of another conflict policy. Under fww and region-priority the write supersedes
    /// what the region holds; under siblings, a client that just read the key here sends its context, and a
    /// blind one sends none; under crdt it increments a counter (the delta is what ships).
    /// A write to the keyspace restricted to its home region, taken there (the node forwards it from elsewhere).
    private mutating func residentWrite() {
        guard isRunning(residentHome), mayWrite(residentHome) else { return }
        report.residentWrites += 1
        _ = commit(at: residentHome, keyspace: residentKeyspace, key: "r\(Int.random(in: 0..<3, using: &generator))", register: false)
    }

    private mutating func policyWrite(at index: Int) {
        guard isRunning(index), mayWrite(index) else { return }
        let keyspace = policyKeyspaces.randomElement(using: &generator)!
        let key = "p\(Int.random(in: 0..<3, using: &generator))"
        let state = state(index, keyspace, key)
        report.policyWrites += 1
        switch rules[keyspace]! {
        case .crdt:
            let amount = UInt64.random(in: 1...5, using: &generator)
            guard let entry = commit(at: index, keyspace: keyspace, key: key, operation: .merge,
                                     crdt: CRDTRequest(type: .gCounter, operation: .increment(amount))) else { return }
            increments[Dot(region: entry.origin, counter: entry.sequence)] = ("\(keyspace)/\(key)", amount)
        case .siblings:
            let context = Bool.random(using: &generator) ? (state?.context ?? VersionVector()) : VersionVector()
            _ = commit(at: index, keyspace: keyspace, key: key, operation: Int.random(in: 0..<6, using: &generator) == 0 ? .delete : .put, context: context)
        default:
            _ = commit(at: index, keyspace: keyspace, key: key, operation: Int.random(in: 0..<6, using: &generator) == 0 ? .delete : .put)
        }
    }

    /// A client's write to the strong keyspace: half the clients call the region that believes it leads (as a
    /// client behind a gateway that routes to the leader), the others a random region. The region takes it if it
    /// leads with its lease, else forwards it to the leader it knows, as the node routes it; refused while no
    /// leader is known. Half the writes wait for a majority (register keys `s*`, checked for linearizability);
    /// the rest are async (keys `a*`: a hand-over must never keep one aside).
    private mutating func strongWrite() {
        let leading = regions.indices.filter { isRunning($0) && regions[$0].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.role == .leader }
        let entry = Bool.random(using: &generator) ? (leading.randomElement(using: &generator) ?? 0) : Int.random(in: regions.indices, using: &generator)
        let async = Bool.random(using: &generator)
        strongValue += 1
        let key = (async ? "a" : "s") + "\(Int.random(in: 0..<4, using: &generator))"
        let delete = Int.random(in: 0..<6, using: &generator) == 0
        guard isRunning(entry) else {
            report.strongRefused += 1
            return
        }
        var write = StrongWrite(key: key, value: delete ? nil : "s\(strongValue)", async: async, entry: entry, generation: regions[entry].generation,
                                call: nowMs, deadline: nowMs + readWaitMs + ackTimeoutMs + 2_000 + rttMs[entry].max()!)
        // Every async put carries an idempotency key, and its client sends it again later to the next region
        // whatever the first answer was (as if it never arrived): the retry must leave one write, never two.
        if async, let value = write.value {
            write.idempotency = IdempotencyMark(key: try! IdempotencyKey("retry-\(strongValue)"), keyspace: strongKeyspace, dataKey: try! Key(key), operation: .put,
                                                contentType: "", value: Array(value.utf8), precondition: nil)
            idempotentWrites[strongValue] = write
            schedule(after: 300 + rttMs[entry].max()!, .idempotentRetry(id: strongValue))
        }
        take(write, at: entry, forwarded: nil)
    }

    /// The client of an idempotent async write sends it again, to the region after the one it called first.
    private mutating func retryIdempotent(_ id: Int) {
        guard var write = idempotentWrites.removeValue(forKey: id) else { return }
        let entry = (write.entry + 1) % regions.count
        guard isRunning(entry) else { return }
        report.idempotentRetries += 1
        (write.entry, write.generation, write.call) = (entry, regions[entry].generation, nowMs)
        write.deadline = nowMs + readWaitMs + ackTimeoutMs + 2_000 + rttMs[entry].max()!
        // The planted bug: the retry goes without its key, so nothing tells the leader it already holds the write.
        if options.plantedBug == .applyRetriesAgain { write.idempotency = nil }
        take(write, at: entry, forwarded: nil)
    }

    /// Region `index` takes a strong write if its machine admits it, or forwards it to the leader it knows (a write
    /// forwarded here, `forwarded` naming it, is never forwarded again: the leader changed on its way).
    private mutating func take(_ write: StrongWrite, at index: Int, forwarded: Int?) {
        guard let leader = regions[index].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.leader.flatMap({ names.firstIndex(of: $0) }) else {
            report.strongRefused += 1
            return
        }
        if leader != index {
            guard forwarded == nil else {
                report.strongRefused += 1
                return
            }
            report.forwardedWrites += 1
            nextForwarded += 1
            forwardedWrites[nextForwarded] = write
            return schedule(after: rttMs[index][leader] / 2, .forwardedWrite(id: nextForwarded, to: leader))
        }
        guard mayWrite(index), let epoch = regions[index].machine!.admitWrite(strongKeyspace, nowMs: nowMs) else {
            report.strongRefused += 1
            return
        }
        if regions[index].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.holdsLease != true {
            report.violations.append("\(names[index]) took a write of epoch \(epoch) without holding its lease")
        }
        if !write.async { strongOperations.append(StrongOperation(key: write.key, kind: .write(write.value), call: write.call, returned: nil)) }
        guard commit(at: index, keyspace: strongKeyspace, key: write.key, operation: write.value == nil ? .delete : .put, value: write.value ?? "",
                     epoch: epoch, idempotency: write.idempotency, register: !write.async,
                     answer: .strong(write, epoch: epoch, forwarded: forwarded, operation: write.async ? nil : strongOperations.count - 1)) != nil else {
            // Refused, or the retry of a write this leader already holds (answered with its first outcome).
            carryMachine(index, regions[index].machine!.handle(.writeAbandoned(keyspace: strongKeyspace), nowMs: nowMs, wallMs: physicalMs(index)))
            return
        }
    }

    /// A forwarded strong write reaches the leader over the stream between the regions: a cut link holds it until
    /// the heal (its client may have stopped waiting by then: it still takes effect), a paused leader reads it when
    /// it resumes, and a leader that is down never gets it.
    private mutating func forwardedWriteArrived(_ id: Int, at index: Int) {
        guard let write = forwardedWrites[id] else { return }
        if cut.contains([write.entry, index]) { return schedule(after: 50, .forwardedWrite(id: id, to: index)) }
        if regions[index].pausedUntilMs > nowMs { return schedule(after: regions[index].pausedUntilMs - nowMs, .forwardedWrite(id: id, to: index)) }
        guard regions[index].up else {
            forwardedWrites[id] = nil
            return
        }
        take(write, at: index, forwarded: id)
        // Refused at once, or taken: then answered once its commit is durable (and its acks, for a majority one).
        let taken = regions[index].pendingCommits.contains { pending in
            if case .strong(_, _, let forwarded, _) = pending.answer { return forwarded == id }
            return false
        }
        if !taken { forwardedWrites[id] = nil }
    }

    /// The leader's answer to a forwarded write reaches the region the client called: the client learns the write
    /// took effect, unless that region crashed or stopped waiting first (the outcome then stays open).
    private mutating func forwardedAnswerArrived(_ id: Int, from leader: Int) {
        guard let write = forwardedWrites[id] else { return }
        guard regions[write.entry].up, regions[write.entry].generation == write.generation, nowMs <= write.deadline else {
            forwardedWrites[id] = nil
            return
        }
        if cut.contains([leader, write.entry]) || regions[write.entry].pausedUntilMs > nowMs {
            return schedule(after: 50, .forwardedAnswer(id: id, from: leader))
        }
        forwardedWrites[id] = nil
        if let operation = forwardedOperations.removeValue(forKey: id) { strongOperations[operation].returned = nowMs }
    }

    /// Commits a write at `index` as its origin through its store (planned by the core's `WritePlanner`), as the node's
    /// group commit: the entry goes to the shippers as the transaction's statements end, before its fsync, and the
    /// write is durable, answered (`answer`) and counted toward its acks only when the fsync completes
    /// (``originFsyncCompleted(_:generation:)``). A crash before then loses it, at the origin and everywhere else:
    /// peers apply only what the origin said is durable (``ApplyQueue/takeBatch(through:)``), so no region ever holds
    /// an entry its origin lost, and the sequence number it had names nothing when the origin gives it to its next write.
    private mutating func commit(at index: Int, keyspace: KeyspaceName, key: String, operation: MeridianCore.Operation = .put, value: String? = nil,
                                 crdt: CRDTRequest? = nil, context: VersionVector? = nil, after: HLCTimestamp? = nil,
                                 dependencies: [RegionName: UInt64] = [:], epoch: UInt64 = 0, idempotency: IdempotencyMark? = nil,
                                 register: Bool = true, answer: Answer = .none) -> ReplicationEntry? {
        report.writes += 1
        if Self.clockIsWrong(skewMs[index]) {
            report.violations.append("\(names[index]) issued a write while its clock was \(skewMs[index]) ms off, beyond the maximum offset of every honest region's")
        }
        // What the write supersedes: the key as this region holds it, unless the caller says otherwise (siblings).
        let held = state(index, keyspace, key)
        let highWater = self.held(index).hlcHighWater
        let request = WriteRequest(keyspace: keyspace, key: try! Key(key), operation: operation, contentType: "",
                                   value: crdt != nil || operation == .delete ? [] : Array((value ?? "\(names[index])-w\(report.writes)").utf8),
                                   epoch: epoch, after: after, dependencies: dependencies, context: context, crdt: crdt, idempotency: idempotency)
        // Now and then the commit fails after its statements ran (an I/O error in COMMIT): the entry shipped, and
        // the transaction rolls back.
        let commitFails = Int.random(in: 0..<150, using: &generator) == 0
        let entry: ReplicationEntry
        do {
            let outcome = try regions[index].store.write(request, durable: false, commitFails: commitFails)
            if case .replayed = outcome {
                report.writes -= 1
                report.idempotentReplays += 1
                return nil
            }
            guard case .committed(let committed) = outcome else {
                report.violations.append("\(names[index]) refused a write of \(keyspace)/\(key) no client precondition or limit refuses")
                return nil
            }
            entry = committed
        } catch {
            report.violations.append("\(names[index]) could not commit a write of \(keyspace)/\(key): \(error)")
            return nil
        }
        if entry.sequence != UInt64(history[index].count) + 1 {
            report.violations.append("\(names[index]) numbered a write \(entry.sequence) after \(history[index].count) entries of its log")
        }
        if commitFails {
            commitFailed(at: index, entry)
            return nil
        }
        if context == nil, let visible = held?.winner(rules[keyspace] ?? .lww) { overwrittenVisible.insert(visible.dot) }
        history[index].append(entry)
        if let highWater, entry.hlc <= highWater {
            report.violations.append("\(names[index]) issued \(entry.hlc) for a new write, not above \(highWater), which it had already recorded")
        }
        noteSiblings(index, keyspace, key)
        regions[index].pendingCommits.append(PendingCommit(entry: entry, register: register, answer: answer))
        startOriginFsync(index)
        for peer in regions.indices where peer != index {
            carry(index, peer, regions[index].shippers[peer]?.entriesAppended(upTo: entry.sequence) ?? [])
        }
        return entry
    }

    /// The write's statements ran and its entry went to the shippers, as the node's group commit hands a batch over
    /// before COMMIT; then COMMIT failed and the transaction rolled back. The client gets an error, and the next write
    /// takes the same sequence number. The node ends every outbound stream at once, announcing no durable point on it
    /// (`OutboundLink.commitFailed`): a peer holds the entry staged beyond every durable point the stream carried,
    /// and drops it with the stream. A stream kept open (the planted bug) would carry the origin's next durable
    /// point, which names the number's next write, and the peer would apply the lost entry under it.
    private mutating func commitFailed(at index: Int, _ entry: ReplicationEntry) {
        report.commitsFailed += 1
        if let trace { trace("\(nowMs) ms \(names[index]): the commit of \(entry.sequence) failed after it shipped") }
        for peer in regions.indices where peer != index {
            guard let id = regions[index].outbound[peer], let effects = regions[index].shippers[peer]?.entriesAppended(upTo: entry.sequence) else { continue }
            // What the shipper's window lets go now, the failed entry last (the log before it is committed).
            for case .send(let first, let count) in effects {
                let last = first + UInt64(count) - 1
                var entries: [ReplicationEntry]
                do {
                    entries = try regions[index].store.logEntries(origin: names[index], after: first - 1, limit: Int(min(last, entry.sequence - 1) + 1 - first))
                } catch {
                    preconditionFailure("an open in-memory store reads: \(error)")
                }
                if last == entry.sequence { entries.append(entry) }
                send(batchesOf: entries, from: first, through: last, to: peer, on: id)
            }
            if options.plantedBug != .keepStreamsAfterFailedCommit { close(index, peer) }
        }
    }

    /// Starts the fsync of the region's pending writes unless one is under way (writes that arrive meanwhile join
    /// the next); now and then the disk stalls.
    private mutating func startOriginFsync(_ index: Int) {
        guard !regions[index].originFsyncRunning, !regions[index].pendingCommits.isEmpty else { return }
        regions[index].originFsyncRunning = true
        let fsyncMs = Int.random(in: 0..<33, using: &generator) == 0 ? UInt64.random(in: 300...1_500, using: &generator) : UInt64.random(in: 1...8, using: &generator)
        schedule(after: fsyncMs, .originFsync(region: index, generation: regions[index].generation))
    }

    /// The group commit's fsync completed: every pending write is durable (the store syncs what it holds, as a
    /// write-ahead log's fsync covers every commit before it). The peers hear the durable point, and only then may
    /// apply the entries shipped before it; each write's client gets its answer, and a `majority` write waits for its acks.
    private mutating func originFsyncCompleted(_ index: Int, generation: Int) {
        guard regions[index].up, regions[index].generation == generation else { return }
        if regions[index].pausedUntilMs > nowMs {
            return schedule(after: regions[index].pausedUntilMs - nowMs, .originFsync(region: index, generation: generation))
        }
        regions[index].originFsyncRunning = false
        do {
            _ = try regions[index].store.syncApplied()
        } catch {
            report.violations.append("\(names[index]) could not sync its commits: \(error)")
            return
        }
        let durable = durableThrough(index, index)
        let completed = regions[index].pendingCommits.filter { $0.entry.sequence <= durable }
        regions[index].pendingCommits.removeAll { $0.entry.sequence <= durable }
        for peer in regions.indices where peer != index {
            guard let id = regions[index].outbound[peer], regions[index].shippers[peer] != nil else { continue }
            send(.durable(through: durable), on: id, toPeer: true)
        }
        for pending in completed { answer(index, pending) }
        startOriginFsync(index)
    }

    /// A durable write's client learns its outcome (an `async` write now; a `majority` one once its acks arrive).
    private mutating func answer(_ index: Int, _ pending: PendingCommit) {
        let entry = pending.entry
        switch pending.answer {
        case .none:
            break
        case .session(let session, let key, let delete):
            busySessions.remove(session)
            tokens[session].observe(entry.version)
            sessionHistory[session].append(SessionOperation(session: session, key: key, kind: .write(entry.version, deleted: delete)))
            stalenessWrites.append(StalenessChecker.Write(key: key, version: entry.version, deleted: delete, acknowledged: nowMs))
        case .strong(let write, let epoch, let forwarded, let operation):
            carryMachine(index, regions[index].machine!.handle(.writeCommitted(keyspace: strongKeyspace, epoch: epoch, sequence: entry.sequence), nowMs: nowMs, wallMs: physicalMs(index)))
            let dot = Dot(region: entry.origin, counter: entry.sequence)
            if write.async {
                asyncAcknowledged[dot] = epoch
                if let forwarded { forwardedWrites[forwarded] = nil }
            } else {
                strongPending[dot] = (operation!, epoch, forwarded)
            }
        }
        if pending.register { registerAck(index, entry.sequence) }
    }

    /// The most concurrent versions one key held.
    private mutating func noteSiblings(_ index: Int, _ keyspace: KeyspaceName, _ key: String) {
        report.siblingsMax = max(report.siblingsMax, state(index, keyspace, key)?.versions.count ?? 0)
    }

    private mutating func registerAck(_ index: Int, _ sequence: UInt64) {
        let required = AckMode.majority.regionsRequired(replicaCount: regions.count)
        do {
            if let done = try regions[index].acks.register(sequence: sequence, required: required, replicas: names, deadlineMs: nowMs + ackTimeoutMs) {
                resolve(index, done)
            }
        } catch {
            report.violations.append("ack tracker refused a write: \(error)")
        }
    }

    // MARK: - Reads

    /// A client read at a random region and level; it is tried (and retried, and forwarded) by `.read` events.
    private mutating func startRead() {
        let session = Int.random(in: 0..<tokens.count, using: &generator)
        let level = [ConsistencyLevel.session, .bounded, .eventual, .strong].randomElement(using: &generator)!
        let strong = level == .strong
        let read = PendingRead(
            region: Int.random(in: regions.indices, using: &generator), session: session,
            keyspace: strong ? strongKeyspace : keyspace,
            key: strong ? "s\(Int.random(in: 0..<4, using: &generator))" : "k\(Int.random(in: 0..<6, using: &generator))",
            level: level, bound: level == .bounded ? UInt64.random(in: 10...1_000, using: &generator) : nil,
            call: nowMs, deadline: nowMs + readWaitMs, forwarded: false)
        if level == .session {
            guard !busySessions.contains(session) else { return }
            busySessions.insert(session)
        }
        nextRead += 1
        pendingReads[nextRead] = read
        schedule(after: 0, .read(nextRead))
    }

    /// What region `index` can tell a read about itself, as the node's `Replicator.readView()`.
    private func readView(_ index: Int) -> (Admission, Admission.ReadView) {
        var reachable: Set<RegionName> = [names[index]]
        for peer in regions.indices where peer != index {
            guard let id = regions[index].outbound[peer], regions[index].shippers[peer] != nil, let stream = streams[id] else { continue }
            if nowMs - stream.lastHeardMs <= heartbeatIntervalMs * 5 + rttMs[index][peer] { reachable.insert(names[peer]) }
        }
        var applied: [RegionName: UInt64] = [:]
        var staleness: [RegionName: UInt64] = [:]
        for origin in regions.indices {
            applied[names[origin]] = appliedThrough(index, origin)
            if let stale = regions[index].freshness[origin].stalenessMs(now: nowMs) { staleness[names[origin]] = stale }
        }
        return (Admission(region: names[index], reachable: reachable, clusterRegions: Set(names)),
                Admission.ReadView(applied: applied, stalenessMs: staleness, reachable: reachable))
    }

    private mutating func attemptRead(_ id: Int) {
        guard var read = pendingReads[id] else { return }
        let region = read.region
        guard regions[region].up else { return finishRead(id, served: false) }
        if regions[region].pausedUntilMs > nowMs { return schedule(after: regions[region].pausedUntilMs - nowMs, .read(id)) }
        let (admission, baseView) = readView(region)
        var view = baseView
        let policy = cluster.keyspace(read.keyspace)!
        if read.keyspace == strongKeyspace, let term = regions[region].machine!.snapshot(strongKeyspace, nowMs: nowMs) {
            // As the node routes: to the leader this region knows, which serves strong reads only within its lease;
            // while an election runs a strong read waits (bounded, as the node's settled policy) for one.
            if term.leader == nil && read.level == .strong && nowMs < read.deadline { return schedule(after: 20, .read(id)) }
            view.leadership = Admission.ReadView.Leadership(leader: term.leader, holdsLease: term.holdsLease)
        }
        let decision: Admission.ReadDecision
        do {
            decision = try admission.admitRead(policy, key: try Key(read.key), level: read.level,
                                               maxStalenessMs: read.bound, session: tokens[read.session], view: view, forwarded: read.forwarded)
        } catch {
            return finishRead(id, served: false)
        }
        let rtt = rttMs[region]
        switch decision {
        case .serve(let level, _):
            // A write of the key whose commit is still in its fsync is not readable yet (the node's readers see
            // committed transactions only): the read is served once it is.
            if regions[region].pendingCommits.contains(where: { $0.entry.keyspace.rawValue == read.keyspace.rawValue && $0.entry.key.rawValue == read.key }) {
                return schedule(after: 1, .read(id))
            }
            let current = state(region, read.keyspace, read.key)?.winner(.lww)
            // A strong read returns only a version a majority holds (the leader waits for its confirmation).
            if level == .strong, let current, current.version.origin == names[region],
               !regions[region].acks.isConfirmed(sequence: current.version.sequence, required: AckMode.majority.regionsRequired(replicaCount: regions.count), replicas: names) {
                guard nowMs < read.deadline + ackTimeoutMs else { return finishRead(id, served: false) }
                return schedule(after: 20, .read(id))
            }
            served(read, current)
            finishRead(id, served: true)
        case .forward(let target, _):
            read.region = names.firstIndex(of: target)!
            read.forwarded = true
            pendingReads[id] = read
            schedule(after: rtt[read.region] / 2, .read(id))
        case .behind(_, _, let target):
            if nowMs < read.deadline { return schedule(after: 20, .read(id)) }
            guard let target, !read.forwarded else { return finishRead(id, served: false) }
            read.region = names.firstIndex(of: target)!
            read.forwarded = true
            read.deadline = nowMs + readWaitMs
            pendingReads[id] = read
            schedule(after: rtt[read.region] / 2, .read(id))
        }
    }

    /// Records what a served read returned, in the histories its level is checked by, and updates the token.
    private mutating func served(_ read: PendingRead, _ current: KeyVersion?) {
        report.readsServed += 1
        switch read.level {
        case .strong:
            let seen = current.flatMap { $0.tombstone ? nil : String(decoding: $0.value, as: UTF8.self) }
            strongOperations.append(StrongOperation(key: read.key, kind: .read(seen),
                                                    call: read.call, returned: nowMs))
        case .session:
            sessionHistory[read.session].append(SessionOperation(session: read.session, key: read.key, kind: .read(current?.version)))
        case .bounded:
            stalenessReads.append(StalenessChecker.Read(key: read.key, call: read.call, maxStalenessMs: read.bound!, returned: current?.version))
        case .prefix, .eventual:
            break
        }
        guard read.level != .strong, let current else { return }
        tokens[read.session].observe(current.version)
        tokens[read.session].observe(dependencies: current.dependencies)
    }

    private mutating func finishRead(_ id: Int, served: Bool) {
        if let read = pendingReads.removeValue(forKey: id), read.level == .session { busySessions.remove(read.session) }
        if !served { report.readsRefused += 1 }
    }

    private mutating func resolve(_ origin: Int, _ resolution: AckTracker.Resolution) {
        switch resolution {
        case .acknowledged(let sequence, let ackedBy):
            report.acknowledged += 1
            // As the node: answered only if the leader still holds its lease in the write's term; otherwise the
            // client is told the outcome is open (a successor may not hold it, and then keeps it aside).
            var answered = true
            if let pending = strongPending.removeValue(forKey: Dot(region: names[origin], counter: sequence)) {
                answered = regions[origin].machine?.writableEpoch(strongKeyspace, nowMs: nowMs) == pending.epoch
                if let id = pending.forwarded {
                    // The answer travels back to the region the client called; the client learns of it there (unless
                    // that region is gone: then the outcome stays open).
                    if answered, let write = forwardedWrites[id] {
                        forwardedOperations[id] = pending.operation
                        schedule(after: rttMs[origin][write.entry] / 2, .forwardedAnswer(id: id, from: origin))
                    } else {
                        forwardedWrites[id] = nil
                    }
                } else if answered {
                    strongOperations[pending.operation].returned = nowMs
                }
            }
            // Only a write its client was told is acknowledged must never be kept aside or lost.
            if answered { acknowledgedWrites.append((origin, sequence)) }
            // The ack's promise: durable right now in every region it names, and those are a majority, so
            // the write survives the loss of any one region (RPO 0).
            let majority = AckMode.majority.regionsRequired(replicaCount: regions.count)
            if Set(ackedBy).count < majority {
                report.violations.append("write \(names[origin])#\(sequence) acknowledged by \(ackedBy.count) regions; a majority is \(majority)")
            }
            for name in ackedBy {
                let region = names.firstIndex(of: name)!
                if durableThrough(region, origin) < sequence {
                    report.violations.append("write \(names[origin])#\(sequence) acknowledged by \(name), which has not durably applied it")
                }
            }
        case .timedOut(let sequence, _, _):
            report.timedOut += 1
            // The outcome stays unknown to the client: it may take effect later, or (here) already has.
            if let id = strongPending.removeValue(forKey: Dot(region: names[origin], counter: sequence))?.forwarded { forwardedWrites[id] = nil }
        }
    }

    // MARK: - Streams, origin side

    /// Opens a stream: through the WAN proxy the connection itself succeeds even towards a cut link or a down
    /// peer; the hello then waits, or is lost, and the silence limit closes the stream.
    private mutating func connect(_ origin: Int, _ peer: Int) {
        guard regions[origin].up, regions[origin].outbound[peer] == nil else { return }
        let id = nextStream
        nextStream += 1
        streams[id] = Stream(origin: origin, peer: peer, lastHeardMs: nowMs, lastHeartbeatMs: nowMs)
        regions[origin].outbound[peer] = id
        regions[origin].shippers[peer] = nil
        send(.hello, on: id, toPeer: true)
    }

    /// The origin stops using its stream to `peer` and reconnects after a backoff (unless it is down).
    private mutating func close(_ origin: Int, _ peer: Int) {
        guard let id = regions[origin].outbound[peer] else { return }
        streams[id]?.openAtOrigin = false
        regions[origin].outbound[peer] = nil
        regions[origin].shippers[peer] = nil
        guard regions[origin].up, !reconnectPending.contains([origin, peer]) else { return }
        reconnectPending.insert([origin, peer])
        let failures = regions[origin].reconnectFailures[peer]
        regions[origin].reconnectFailures[peer] = failures + 1
        let backoff = min(1_000, UInt64(25) << UInt64(min(failures, 6)))
        schedule(after: backoff + UInt64.random(in: 0...50, using: &generator), .reconnect(from: origin, to: peer))
    }

    private mutating func carry(_ origin: Int, _ peer: Int, _ effects: [LogShipper.Effect]) {
        guard let id = regions[origin].outbound[peer] else { return }
        for effect in effects {
            switch effect {
            case .send(let first, let count):
                // Read from the origin's log as the node reads it, which the trim may have shortened; cut as the node
                // cuts them: only entries of keyspaces the peer replicates travel (residency).
                let entries: [ReplicationEntry]
                do {
                    entries = try regions[origin].store.logEntries(origin: names[origin], after: first - 1, limit: count)
                } catch {
                    preconditionFailure("an open in-memory store reads: \(error)")
                }
                guard entries.count == count, entries.first?.sequence == first else {
                    report.violations.append("\(names[origin]) must ship \(first)...\(first + UInt64(count) - 1) of its log to \(names[peer]), but trimmed it through \(regions[origin].store.logFloor())")
                    return close(origin, peer)
                }
                send(batchesOf: entries, from: first, through: first + UInt64(count) - 1, to: peer, on: id)
            }
        }
    }

    /// Sends a range of the origin's log on stream `id`, cut as the node cuts it: only entries of keyspaces the peer
    /// replicates travel (residency).
    private mutating func send(batchesOf entries: [ReplicationEntry], from first: UInt64, through last: UInt64, to peer: Int, on id: UInt64) {
        let frames = options.plantedBug == .shipOutsideResidency
            ? [.batch(from: first, through: last, entries: entries)]
            : Shipment.batches(entries, from: first, through: last, for: names[peer], cluster: cluster, bytesMax: 1 << 20)
        for case .batch(let from, let through, let shipped) in frames {
            send(.batch(from: from, through: through, entries: shipped), on: id, toPeer: true)
        }
    }

    /// A frame arrived at the origin on stream `id`.
    private mutating func originReceived(_ message: Message, on id: UInt64) {
        guard let stream = streams[id], stream.openAtOrigin, regions[stream.origin].up,
              regions[stream.origin].outbound[stream.peer] == id else {
            report.dropped += 1
            return
        }
        let (origin, peer) = (stream.origin, stream.peer)
        report.delivered += 1
        streams[id]?.lastHeardMs = nowMs
        switch message {
        case .welcome(let applied):
            guard regions[origin].shippers[peer] == nil else {
                report.violations.append("\(names[peer]) welcomed one stream twice")
                return close(origin, peer)
            }
            guard applied <= appliedThrough(origin, origin) else {
                report.violations.append("\(names[peer]) holds \(names[origin])'s log up to \(applied), beyond its end \(appliedThrough(origin, origin)): the origin lost durable entries")
                return close(origin, peer)
            }
            guard applied >= regions[origin].store.logFloor() else {
                report.violations.append("\(names[peer]) resumes \(names[origin])'s log after \(applied), but \(names[origin]) trimmed it through \(regions[origin].store.logFloor())")
                return close(origin, peer)
            }
            regions[origin].reconnectFailures[peer] = 0
            // As the node's link: the welcome is the peer's durable point from now on.
            regions[origin].peerDurable[peer] = applied
            regions[origin].peerVisible[peer] = applied
            var shipper = LogShipper(peer: names[peer], acknowledged: applied, logHighWater: appliedThrough(origin, origin), limits: shipperLimits)
            let effects = shipper.streamOpened()
            regions[origin].shippers[peer] = shipper
            // The durable point first: the peer applies what the stream brings up to it, and waits for the next.
            send(.durable(through: committedThrough(origin)), on: id, toPeer: true)
            carry(origin, peer, effects)
            for resolution in regions[origin].acks.peerApplied(names[peer], upTo: applied) { resolve(origin, resolution) }
        case .ack(let durable, let visible, let echo):
            // Only the durable point counts (the planted bug counts the visible one).
            let upTo = options.plantedBug == .countVisibleAcks ? visible : durable
            regions[origin].echoFrom[peer] = max(regions[origin].echoFrom[peer], echo)
            regions[origin].peerDurable[peer] = max(regions[origin].peerDurable[peer], durable)
            regions[origin].peerVisible[peer] = max(regions[origin].peerVisible[peer], visible)
            guard var shipper = regions[origin].shippers[peer] else {
                report.violations.append("\(names[peer]) acknowledged on a stream it never welcomed")
                return close(origin, peer)
            }
            do {
                let effects = try shipper.ackReceived(upTo: upTo)
                regions[origin].shippers[peer] = shipper
                carry(origin, peer, effects)
            } catch {
                report.violations.append("\(names[origin]) refused an ack from \(names[peer]): \(error)")
                return close(origin, peer)
            }
            for resolution in regions[origin].acks.peerApplied(names[peer], upTo: upTo) { resolve(origin, resolution) }
        case .hello, .batch, .heartbeat, .election, .durable:
            report.violations.append("an origin received a frame only origins send")
        }
    }

    // MARK: - Streams, receiving side

    /// A frame arrived at the peer on stream `id`. Bytes a partition held are delivered even when the origin
    /// has since abandoned the stream (the connection's close follows its data).
    private mutating func peerReceived(_ message: Message, on id: UInt64) {
        guard let stream = streams[id], regions[stream.peer].up else {
            report.dropped += 1
            return
        }
        let (origin, peer) = (stream.origin, stream.peer)
        if case .hello = message {
            report.delivered += 1
            guard regions[peer].inbound[id] == nil else {
                report.violations.append("one stream said hello twice")
                return
            }
            let applied = durableThrough(peer, origin)
            regions[peer].inbound[id] = Inbound(origin: origin, receiver: LogReceiver(origin: names[origin], applied: applied))
            // As the node: a new stream may be a new process with its clock set anew.
            let wasWritable = regions[peer].fence.mayWrite
            regions[peer].fence.peerReconnected(names[origin])
            if wasWritable && !regions[peer].fence.mayWrite, let trace { trace("\(nowMs) ms \(names[peer]): clock proof from \(names[origin]) dropped on reconnect") }
            send(.welcome(applied: applied), on: id, toPeer: false)
            return
        }
        // A stream this region does not know opened before its restart: the connection died with the process.
        guard var inbound = regions[peer].inbound[id] else {
            report.dropped += 1
            return
        }
        report.delivered += 1
        switch message {
        case .batch(let from, let through, let entries):
            if !stream.openAtOrigin { report.staleBatches += 1 }
            // Residency, checked where bytes arrive: no entry of a keyspace reaches a region outside its residency.
            for entry in entries where cluster.keyspace(entry.keyspace)?.residency.regions.contains(names[peer]) != true {
                report.violations.append("\(names[peer]) was sent \(names[origin])'s entry \(entry.sequence) of \(entry.keyspace), which may live only in \(cluster.keyspace(entry.keyspace)?.residency.regions.map(\.rawValue) ?? [])")
            }
            do {
                inbound.queue.add(try inbound.receiver.received(from: from, through: through, entries: entries), from: from)
                regions[peer].inbound[id] = inbound
                startPersist(peer, stream: id)
            } catch {
                report.violations.append("\(names[peer]) refused \(names[origin])'s batch \(from)...\(through): \(error)")
                regions[peer].inbound[id] = nil
            }
        case .heartbeat(let logHighWater, let originMs, let echo):
            regions[peer].freshness[origin].heard(logHighWater: logHighWater, echo: echo, now: nowMs,
                                                  applied: appliedThrough(peer, origin))
            // The origin read its clock after this region's ack stamped `echo` arrived: a bracket of its clock,
            // as the node's replicator takes one; a change of verdict reaches the region machine.
            if echo > 0, echo <= nowMs {
                let wallNow = physicalMs(peer)
                let wasFenced = regions[peer].fence.isFenced
                regions[peer].fence.sample(peer: names[origin], sentMs: wallNow - min(wallNow, nowMs - echo), peerMs: originMs, receivedMs: wallNow)
                if regions[peer].fence.isFenced != wasFenced {
                    if regions[peer].fence.isFenced { report.clockFences += 1 }
                    if let trace {
                        let brackets = regions[peer].fence.offsets.sorted { $0.key < $1.key }.map { "\($0.key) [\($0.value.lowMs), \($0.value.highMs)]" }.joined(separator: ", ")
                        trace("\(nowMs) ms \(names[peer]): clock \(regions[peer].fence.isFenced ? "fenced" : "no longer fenced") (skew \(skewMs[peer]) ms; \(brackets))")
                    }
                    carryMachine(peer, regions[peer].machine!.handle(.clockFenceChanged(fenced: regions[peer].fence.isFenced), nowMs: nowMs, wallMs: wallNow))
                }
            }
            send(.ack(durable: durableThrough(peer, origin), visible: appliedThrough(peer, origin), echo: nowMs), on: id, toPeer: false)
        case .durable(let through):
            if through > appliedThrough(origin, origin) && regions[origin].up {
                report.violations.append("\(names[origin]) said its log is durable through \(through), beyond its end \(appliedThrough(origin, origin))")
            }
            inbound.originDurable = max(inbound.originDurable, through)
            regions[peer].inbound[id] = inbound
            startPersist(peer, stream: id)
        case .election(let keyspace, let message, let start):
            carryMachine(peer, regions[peer].machine!.handle(.electionReceived(keyspace: keyspace, message: message, start: start, from: names[origin],
                                                                               applied: appliedPoints(peer)), nowMs: nowMs, wallMs: physicalMs(peer)))
        case .hello, .welcome, .ack:
            report.violations.append("a receiving region received a frame only receivers send")
        }
    }

    /// Starts persisting what one stream queued, unless a persist of it is under way (one at a time per
    /// stream, as the node's applier task); answers a pending re-acknowledgement when idle.
    private mutating func startPersist(_ region: Int, stream id: UInt64) {
        guard var inbound = regions[region].inbound[id], inbound.persisting == nil else { return }
        // Only what the origin said is durable (the planted bug applies what arrived, durable at its origin or not).
        let taken = options.plantedBug == .applyBeforeOriginDurable ? inbound.queue.takeBatch() : inbound.queue.takeBatch(through: inbound.originDurable)
        if let batch = taken {
            // The region machine judges the batch first (the fence); its `applyBatch` starts the persist.
            nextBatchID += 1
            inbound.persisting = batch
            inbound.admission = nextBatchID
            regions[region].inbound[id] = inbound
            carryMachine(region, regions[region].machine!.handle(.batchArrived(nextBatchID, entries: batch.entries), nowMs: nowMs, wallMs: physicalMs(region)))
        } else if let again = inbound.queue.takeReacknowledgement() {
            regions[region].inbound[id] = inbound
            send(.ack(durable: again, visible: max(again, appliedThrough(region, inbound.origin)), echo: nowMs), on: id, toPeer: false)
        }
    }

    /// The machine admitted a batch of `async` keyspaces only (``ApplyDurability/visibleFirst``): the store applies it
    /// at once, without an fsync, in one step against its applied point (skipping what is already applied, refusing a
    /// gap, keeping aside what the machine diverted), and the simulated fsync that follows (``persistCompleted``) makes
    /// it durable. As the node's, the region acknowledges it only then.
    private mutating func applyVisibly(_ region: Int, stream id: UInt64, diverted: [UInt64: UInt64]) {
        guard let visible = apply(region, stream: id, diverted: diverted, durable: false) else { return }
        // The planted bug: the replica calls what it applied visibly durable before its fsync.
        if options.plantedBug == .acknowledgeVisibleAsDurable {
            send(.ack(durable: visible, visible: visible, echo: nowMs), on: id, toPeer: false)
        }
    }

    /// Applies the batch being persisted on stream `id` in one step, durably or not; nil when the store refused it.
    private mutating func apply(_ region: Int, stream id: UInt64, diverted: [UInt64: UInt64], durable: Bool) -> UInt64? {
        guard var inbound = regions[region].inbound[id], let batch = inbound.persisting else { return nil }
        let origin = inbound.origin
        let before = appliedThrough(region, origin)
        let visible: UInt64
        do {
            visible = try regions[region].store.applyReplicated(origin: names[origin], from: batch.from, through: batch.through,
                                                                entries: batch.entries, diverted: diverted, durable: durable)
        } catch {
            report.violations.append("\(names[region]) could not apply \(names[origin])'s \(batch.from)...\(batch.through) after applying up to \(before): \(error)")
            regions[region].inbound[id] = nil
            return nil
        }
        for entry in batch.entries where entry.sequence > before {
            // Applied (readable, or kept aside) only once its origin's commit is durable: an origin that crashes
            // before its fsync loses the entry, and then no region may hold it.
            if entry.sequence > durableThrough(origin, origin) {
                report.violations.append("\(names[region]) applied \(names[origin])'s entry \(entry.sequence), which \(names[origin]) holds durably only through \(durableThrough(origin, origin))")
            } else if entry.sequence <= UInt64(history[origin].count), history[origin][Int(entry.sequence) - 1] != entry {
                // The number names another write at the origin: this one was lost there (a crash before its fsync,
                // or a failed commit) after it shipped, and the number was taken again.
                report.violations.append("\(names[region]) applied \(names[origin])'s entry \(entry.sequence) written at \(entry.hlc), which \(names[origin]) lost; its \(entry.sequence) is the write at \(history[origin][Int(entry.sequence) - 1].hlc)")
            }
            if let successor = diverted[entry.sequence] {
                if let trace { trace("\(nowMs) ms \(names[region]): kept aside \(entry.origin):\(entry.sequence) of epoch \(entry.epoch) on arrival (epoch \(successor))") }
                report.diverted += 1
            } else if rules[entry.keyspace] == .siblings {
                noteSiblings(region, entry.keyspace, entry.key.rawValue)
            }
        }
        inbound.diverted = diverted
        inbound.admitted = true
        regions[region].inbound[id] = inbound
        regions[region].freshness[origin].advance(applied: visible)
        return visible
    }

    /// A persist (the fsync after a visible apply) completed: the region's applies so far are durable; the receiver
    /// and the machine hear so, and the region acknowledges the durable point. A crash before it lost the batch
    /// whole (the store reopens on the durable disk).
    private mutating func persistCompleted(_ region: Int, stream id: UInt64, generation: Int) {
        guard regions[region].up, regions[region].generation == generation,
              var inbound = regions[region].inbound[id], let batch = inbound.persisting else {
            report.persistsLost += 1
            return
        }
        let origin = inbound.origin
        let durable: UInt64
        switch inbound.durability {
        case .durable:
            // One transaction with its fsync: the batch becomes visible and durable together.
            guard apply(region, stream: id, diverted: inbound.diverted, durable: true) != nil, let applied = regions[region].inbound[id] else { return }
            inbound = applied
            durable = durableThrough(region, origin)
        case .visibleFirst:
            do {
                durable = try regions[region].store.syncApplied()[names[origin]] ?? 0
            } catch {
                report.violations.append("\(names[region]) could not sync \(names[origin])'s \(batch.from)...\(batch.through): \(error)")
                regions[region].inbound[id] = nil
                return
            }
        }
        _ = inbound.receiver.persisted(upTo: batch.through)
        let admitted = inbound.admission
        inbound.persisting = nil
        inbound.admission = nil
        inbound.admitted = false
        inbound.diverted = [:]
        regions[region].inbound[id] = inbound
        if let admitted {
            carryMachine(region, regions[region].machine!.handle(.batchCommitted(admitted, committed: true), nowMs: nowMs, wallMs: physicalMs(region)))
        }
        send(.ack(durable: durable, visible: appliedThrough(region, origin), echo: nowMs), on: id, toPeer: false)
        startPersist(region, stream: id)
    }

    // MARK: - Network

    private mutating func send(_ message: Message, on id: UInt64, toPeer: Bool) {
        guard var stream = streams[id] else { return }
        let (from, to) = toPeer ? (stream.origin, stream.peer) : (stream.peer, stream.origin)
        if toPeer, case .heartbeat = message {
            stream.lastHeartbeatMs = nowMs
            streams[id] = stream
        }
        let channel = Channel(stream: id, toPeer: toPeer)
        let at = nowMs + rttMs[from][to] / 2 + UInt64.random(in: 0...5, using: &generator)
        let wasEmpty = channels[channel, default: []].isEmpty
        channels[channel, default: []].append((at, message))
        if wasEmpty { schedule(after: at - nowMs, .channel(channel)) }
    }

    /// Delivers the head of a channel, in order; a cut link holds it until the heal.
    private mutating func deliverHead(_ channel: Channel) {
        guard let stream = streams[channel.stream], let head = channels[channel]?.first else { return }
        let (from, to) = channel.toPeer ? (stream.origin, stream.peer) : (stream.peer, stream.origin)
        if cut.contains([from, to]) {
            schedule(after: 50, .channel(channel))
            return
        }
        // A paused process reads nothing; its socket buffers hold the bytes.
        if regions[to].pausedUntilMs > nowMs {
            schedule(after: regions[to].pausedUntilMs - nowMs, .channel(channel))
            return
        }
        channels[channel]!.removeFirst()
        if channel.toPeer { peerReceived(head.message, on: channel.stream) } else { originReceived(head.message, on: channel.stream) }
        if let next = channels[channel]?.first {
            schedule(after: next.atMs > nowMs ? next.atMs - nowMs : 0, .channel(channel))
        } else {
            channels[channel] = nil
        }
    }

    /// Heartbeats on idle streams, and the silence limit.
    private mutating func heartbeatAndSilence() {
        for origin in regions.indices where isRunning(origin) {
            for peer in regions.indices where peer != origin {
                guard let id = regions[origin].outbound[peer], let stream = streams[id] else { continue }
                let silenceLimit = heartbeatIntervalMs * 5 + rttMs[origin][peer]
                if nowMs - stream.lastHeardMs > silenceLimit {
                    report.silenceCloses += 1
                    close(origin, peer)
                } else if regions[origin].shippers[peer] != nil, nowMs - stream.lastHeartbeatMs >= heartbeatIntervalMs {
                    // Every interval, even while batches flow: the echo bounds the peer's staleness.
                    send(.heartbeat(logHighWater: committedThrough(origin), physicalMs: physicalMs(origin), echo: regions[origin].echoFrom[peer]),
                         on: id, toPeer: true)
                }
            }
        }
    }

    // MARK: - Faults

    private mutating func partitionRandomPair() {
        let a = Int.random(in: regions.indices, using: &generator)
        var b = Int.random(in: regions.indices, using: &generator)
        if a == b { b = (a + 1) % regions.count }
        report.partitions += 1
        cut.insert([a, b])
        cut.insert([b, a])
    }

    /// Cuts every link of one region at once (its bytes in flight are held until the heal).
    private mutating func isolate(_ index: Int) {
        report.partitions += 1
        for other in regions.indices where other != index {
            cut.insert([index, other])
            cut.insert([other, index])
        }
    }

    /// The region a fault hits: the strong keyspace's leader half the time (the faults failover exists for).
    private mutating func faultTarget() -> Int {
        let leader = regions.indices.first { regions[$0].up && regions[$0].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.role == .leader }
        if let leader, Bool.random(using: &generator) { return leader }
        return Int.random(in: regions.indices, using: &generator)
    }

    private mutating func healAll() {
        guard !cut.isEmpty else { return }
        report.heals += 1
        cut.removeAll()
    }

    private mutating func crash(_ index: Int) {
        guard regions[index].up else { return }
        report.crashes += 1
        report.unanswered += regions[index].acks.waitingCount
        // Their outcome stays unknown to the clients, and so does that of every forwarded write this region took
        // or its clients were waiting for.
        for (dot, pending) in strongPending where dot.region == names[index] {
            if let id = pending.forwarded { forwardedWrites[id] = nil }
        }
        strongPending = strongPending.filter { $0.key.region != names[index] }
        forwardedWrites = forwardedWrites.filter { $0.value.entry != index }
        regions[index].up = false
        regions[index].pausedUntilMs = 0
        regions[index].generation += 1
        regions[index].store.close()
        // Writes whose fsync had not completed are gone (unless a later durable step took them along): their
        // clients never had an answer, and no peer applied them.
        let kept = durableThrough(index, index)
        let lost = history[index].filter { $0.sequence > kept }
        if !lost.isEmpty {
            report.commitsLost += lost.count
            if let trace { trace("\(nowMs) ms \(names[index]): crashed before the fsync of \(lost.map(\.sequence))") }
            history[index].removeAll { $0.sequence > kept }
            for entry in lost { increments[Dot(region: entry.origin, counter: entry.sequence)] = nil }
        }
        // Their clients hear the connection close, and go on.
        for case .session(let session, _, _) in regions[index].pendingCommits.map(\.answer) { busySessions.remove(session) }
        regions[index].pendingCommits = []
        regions[index].originFsyncRunning = false
        for peer in regions.indices where peer != index { close(index, peer) }
        regions[index].inbound = [:]
        // Restarts are sometimes quick, so a clock that forgot what it recorded would show.
        let downMs = Bool.random(using: &generator) ? UInt64.random(in: 20...300, using: &generator) : UInt64.random(in: 300...2_500, using: &generator)
        schedule(after: downMs, .restart(index))
    }

    /// The region and its disk are gone; it never returns.
    private mutating func loseForGood(_ index: Int) {
        guard report.lostRegion == nil else { return }
        crash(index)
        regions[index].lost = true
        report.lostRegion = names[index].rawValue
    }

    private mutating func restart(_ index: Int, clockWrongChance: Bool = true) {
        guard !regions[index].up, !regions[index].lost else { return }
        regions[index].up = true
        regions[index].startedMs = nowMs
        let count = regions.count
        regions[index].shippers = Array(repeating: nil, count: count)
        regions[index].outbound = Array(repeating: nil, count: count)
        regions[index].inbound = [:]
        regions[index].acks = AckTracker(origin: names[index])
        regions[index].reconnectFailures = Array(repeating: 0, count: count)
        regions[index].echoFrom = Array(repeating: 0, count: count)
        regions[index].peerDurable = Array(repeating: 0, count: count)
        regions[index].peerVisible = Array(repeating: 0, count: count)
        regions[index].freshness = Array(repeating: FreshnessTracker(), count: count)
        // Now and then the host's clock comes back wrong, beyond the maximum offset of every honest region's
        // (as the nemesis restarts a node with --clock-offset-ms), never for a majority at once (the fence cannot
        // tell which side is wrong then); otherwise it is put right again.
        let othersWrong = regions.indices.filter { $0 != index && Self.clockIsWrong(skewMs[$0]) }.count
        if clockWrongChance && Int.random(in: 0..<10, using: &generator) == 0 && (othersWrong + 1) * 2 < regions.count {
            skewMs[index] = (Bool.random(using: &generator) ? 1 : -1) * Int64.random(in: 2_000...3_000, using: &generator)
        } else if abs(skewMs[index]) > 240 {
            skewMs[index] = Int64.random(in: -240...240, using: &generator)
        }
        regions[index].fence = ClockFence(region: names[index], peers: names, maxOffsetMs: HybridLogicalClock.maxOffsetMsDefault)
        // A new process opens the store on the same disk: its clock starts above the highest timestamp the store
        // recorded, applied ones included.
        regions[index].store = Self.open(regions[index].disk, region: names[index], index: index, rules: rules, clocks: wallClocks,
                                         sealer: Self.sealer(cluster, region: names[index], seed: options.seed, index: index, generation: regions[index].generation))
        startMachine(index)
        for peer in regions.indices where peer != index { connect(index, peer) }
    }

    /// SIGSTOP for longer than the lease: the process keeps its state and its clock runs on, but it does nothing
    /// (no tick, no read of its sockets, no persist) until it resumes.
    private mutating func pause(_ index: Int) {
        guard isRunning(index) else { return }
        report.pauses += 1
        regions[index].pausedUntilMs = nowMs + UInt64.random(in: 300...2_500, using: &generator)
    }

    /// An operator moves the strong keyspace's leadership to another region (as `POST /v1/admin/failover`).
    private mutating func askHandOver() {
        guard let leader = regions.indices.first(where: { isRunning($0) && regions[$0].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.holdsLease == true }) else { return }
        // An operator moves it to a region that is up (one down would hold writes back until the deadline).
        guard let target = regions.indices.filter({ $0 != leader && isRunning($0) }).randomElement(using: &generator) else { return }
        report.handOversAsked += 1
        nextHandOver += 1
        carryMachine(leader, regions[leader].machine!.handle(.handOverRequested(nextHandOver, keyspace: strongKeyspace, target: names[target],
                                                                                timeoutMs: ackTimeoutMs), nowMs: nowMs, wallMs: physicalMs(leader)))
    }

    // MARK: - The region machine

    /// Whether a region runs now: up and not paused.
    /// Receives a line for everything every region machine logs (elections, terms, hand-overs), writes kept
    /// aside and starts captured, with the simulated time (nil: nothing is traced).
    public var trace: (@Sendable (String) -> Void)?

    private func isRunning(_ index: Int) -> Bool { regions[index].up && regions[index].pausedUntilMs <= nowMs }

    /// As the node: a region writes only once its peers' brackets prove its clock within tolerance (and never
    /// while fenced); a refusal is counted.
    private mutating func mayWrite(_ index: Int) -> Bool {
        if regions[index].fence.mayWrite { return true }
        report.clockRefused += 1
        return false
    }

    /// A clock set wrong on purpose: at least 2 s off. An honest region's is at most 240 ms off, and a bracket
    /// counts as in tolerance only if it is at most twice the maximum offset wide, so no honest peer's bracket
    /// can allow a wrong clock within the maximum offset (500 ms): 2,000 − 240 > 500 + 2 × 500.
    private static func clockIsWrong(_ skewMs: Int64) -> Bool { abs(skewMs) >= 2_000 }

    /// Builds the region's machine from its durable election state, as a node does when it starts.
    private mutating func startMachine(_ index: Int) {
        let store = regions[index].store
        var machine: RegionMachine
        do {
            machine = RegionMachine(region: names[index], cluster: cluster, stored: try store.elections(),
                                    newest: try store.newestEpoch(keyspace: strongKeyspace).map { [strongKeyspace: $0] } ?? [:],
                                    held: [strongKeyspace: try store.terms(keyspace: strongKeyspace, limit: .max)], nowMs: nowMs, wallMs: physicalMs(index))
        } catch {
            preconditionFailure("an open in-memory store reads: \(error)")
        }
        machine.plantedBug = options.plantedBug
        regions[index].machine = machine
        carryMachine(index, regions[index].machine!.handle(.started, nowMs: nowMs, wallMs: physicalMs(index)))
    }

    /// The store's applied point per origin, as the machine reads it.
    private func appliedPoints(_ index: Int, visible: Bool = false) -> [RegionName: UInt64] {
        var applied: [RegionName: UInt64] = [:]
        // Its own log as far as it is committed (durable): a write in its commit's fsync is not held yet.
        for origin in regions.indices {
            applied[names[origin]] = origin == index ? committedThrough(index) : visible ? appliedThrough(index, origin) : durableThrough(index, origin)
        }
        return applied
    }

    /// The streams' view of each peer, as the node's `peerLinks`.
    private func peerLinks(_ index: Int) -> [RegionName: RegionMachine.PeerLink] {
        var links: [RegionName: RegionMachine.PeerLink] = [:]
        for peer in regions.indices where peer != index {
            guard let id = regions[index].outbound[peer], let shipper = regions[index].shippers[peer], let stream = streams[id] else {
                links[names[peer]] = RegionMachine.PeerLink(up: false, acknowledged: 0)
                continue
            }
            let up = nowMs - stream.lastHeardMs <= heartbeatIntervalMs * 5 + rttMs[index][peer]
            links[names[peer]] = RegionMachine.PeerLink(up: up, acknowledged: shipper.acknowledged)
        }
        return links
    }

    /// Carries out a machine's effects in order, as the node's `Leadership` shell does.
    private mutating func carryMachine(_ index: Int, _ effects: [RegionMachine.Effect]) {
        var queue = effects[...]
        while let effect = queue.popFirst() {
            switch effect {
            case .persist(let keyspace, let election):
                do { try regions[index].store.saveElection(keyspace, election) } catch {
                    queue += regions[index].machine!.handle(.persistFailed(keyspace: keyspace, reason: error.message), nowMs: nowMs, wallMs: physicalMs(index))
                }
            case .send(let peer, .election(let keyspace, let message, let start)):
                // As the node's link: only on a stream the peer has welcomed.
                let to = names.firstIndex(of: peer)!
                // A hand-over goes to a region that durably holds this region's whole log.
                if case .timeoutNow = message, durableThrough(to, index) < committedThrough(index) {
                    report.violations.append("\(names[index]) handed over to \(peer), which held its log up to \(durableThrough(to, index)) of \(committedThrough(index))")
                }
                guard let id = regions[index].outbound[to], regions[index].shippers[to] != nil else { continue }
                send(.election(keyspace: keyspace, message: message, start: start), on: id, toPeer: true)
            case .send:
                continue
            case .applyBatch(let id, let diverted):
                guard let stream = regions[index].inbound.first(where: { $0.value.admission == id })?.key else { continue }
                // Every entry released to apply belongs to the history of the term this region follows: its
                // start counts it (or it is that term's leader's own); a deposed leader's unshipped entry never is.
                let start = regions[index].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.start
                let batch = regions[index].inbound[stream]!.persisting?.entries ?? []
                for entry in batch where entry.keyspace == strongKeyspace && diverted[entry.sequence] == nil {
                    guard let start, entry.sequence > appliedThrough(index, names.firstIndex(of: entry.origin)!) else { continue }
                    let counted = (entry.origin == start.leader && entry.epoch == start.epoch) || (start.last(of: entry.origin, in: entry.epoch) ?? 0) >= entry.sequence
                    if !counted {
                        report.violations.append("\(names[index]) applied \(entry.origin):\(entry.sequence) of epoch \(entry.epoch), which the start of epoch \(start.epoch) does not count")
                    }
                    // Log matching: a write of a term applies only where every earlier term's counted write is held.
                    // The batch's entries before this one count once applied (not those the store skips as applied).
                    let origin = names.firstIndex(of: entry.origin)!
                    let before = batch.filter { $0.sequence < entry.sequence && $0.sequence > appliedThrough(index, origin) && diverted[$0.sequence] == nil }
                    if let missing = missingEarlierWrite(index, before: entry, start: start, alsoApplying: before) {
                        report.violations.append("\(names[index]) applied \(entry.origin):\(entry.sequence) of epoch \(entry.epoch) without holding \(missing), which the start of epoch \(start.epoch) counts")
                    }
                }
                let durability = ApplyDurability.of(regions[index].inbound[stream]!.persisting?.entries ?? [], in: cluster)
                regions[index].inbound[stream]!.durability = durability
                switch durability {
                case .visibleFirst: applyVisibly(index, stream: stream, diverted: diverted)
                case .durable:
                    regions[index].inbound[stream]!.diverted = diverted
                    regions[index].inbound[stream]!.admitted = true
                }
                guard regions[index].inbound[stream] != nil else { continue }
                // The fsync: a crash before it completes loses the batch; now and then the disk stalls.
                let fsyncMs = Int.random(in: 0..<33, using: &generator) == 0 ? UInt64.random(in: 300...1_500, using: &generator) : UInt64.random(in: 1...8, using: &generator)
                schedule(after: fsyncMs, .persist(region: index, stream: stream, generation: regions[index].generation))
            case .captureStart(let keyspace, let epoch):
                // The start is what this region holds: no admitted batch may be between admission and commit.
                if regions[index].inbound.values.contains(where: { $0.admitted }) {
                    report.violations.append("\(names[index]) started epoch \(epoch) while a replicated batch it admitted was still being applied")
                }
                let history = terms(index)
                // What the region holds and its readers see, as the node: the election saved next is durable, and so is
                // every apply before it.
                let visible = appliedPoints(index, visible: true)
                if let trace { trace("\(nowMs) ms \(names[index]): captures epoch \(epoch) from \(visible) terms \(history.map { "\($0.epoch):\($0.leader):\($0.last)" })") }
                queue += regions[index].machine!.handle(.startCaptured(keyspace: keyspace, epoch: epoch, applied: visible, history: Array(history)),
                                                        nowMs: nowMs, wallMs: physicalMs(index))
            case .revert(_, let start, let keys):
                let leader = names.firstIndex(of: start.leader)!
                schedule(after: rttMs[index][leader], .revert(region: index, start: start, keys: keys, generation: regions[index].generation))
            case .recordFailover(let record):
                let winner = names.firstIndex(of: record.leader)!
                if let other = leaderOfEpoch[record.epoch], other != winner {
                    report.violations.append("two leaders of the strong keyspace in epoch \(record.epoch): \(names[other]) and \(names[winner])")
                }
                leaderOfEpoch[record.epoch] = winner
                if record.reason == "transfer" {
                    report.transfers += 1
                    transferEpochs.insert(record.epoch)
                } else {
                    report.elections += 1
                }
            case .log(let line):
                if let trace { trace("\(nowMs) ms \(names[index]): \(line.message) \(line.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))") }
            case .catchUp(_, let from, let epoch):
                let leader = names.firstIndex(of: from)!
                schedule(after: rttMs[index][leader], .catchUpTerms(region: index, from: leader, epoch: epoch, generation: regions[index].generation))
            case .raiseHeld(let keyspace, let terms):
                do { try regions[index].store.raiseTerms(keyspace: keyspace, terms) } catch {
                    report.violations.append("\(names[index]) could not record the terms it holds: \(error)")
                }
                if let trace { trace("\(nowMs) ms \(names[index]): holds terms \(TermEnd.encode(terms))") }
                queue += regions[index].machine!.handle(.heldRaised(keyspace: keyspace, terms: terms), nowMs: nowMs, wallMs: physicalMs(index))
            case .recordFirstWrite, .handOverFinished:
                continue
            }
        }
    }

    /// The first write the start counts of a term before `entry`'s that region `index` does not hold (neither applied
    /// from its origin's log, nor kept aside and then merged into its key's state, nor in `alsoApplying`). The
    /// entry's origin's own earlier terms too: its log brings them first, but this region may have kept them aside.
    private func missingEarlierWrite(_ index: Int, before entry: ReplicationEntry, start: EpochStart, alsoApplying: [ReplicationEntry]) -> Dot? {
        let kept = Set(held(index).divergence.map { Dot(region: $0.origin, counter: $0.sequence) })
        let applying = Set(alsoApplying.map { Dot(region: $0.origin, counter: $0.sequence) })
        for term in start.terms where term.epoch < entry.epoch {
            let origin = names.firstIndex(of: term.leader)!
            for write in log(origin).prefix(Int(term.last)) where write.keyspace == strongKeyspace && write.epoch == term.epoch {
                let dot = Dot(region: write.origin, counter: write.sequence)
                let applied = (appliedThrough(index, origin) >= write.sequence && !kept.contains(dot)) || applying.contains(dot)
                if !applied && state(index, write.keyspace, write.key.rawValue)?.context.contains(dot) != true { return dot }
            }
        }
        return nil
    }

    /// The node's catch-up: the leader's terms (read before its states), then, a round trip later, its states
    /// of the strong keyspace merged here; either fails when the leader cannot be reached then.
    private mutating func catchUp(_ index: Int, from leader: Int, epoch: UInt64, generation: Int, states: Bool) {
        guard regions[index].up, regions[index].generation == generation else { return }
        if regions[index].pausedUntilMs > nowMs {
            return schedule(after: regions[index].pausedUntilMs - nowMs,
                            states ? .catchUpStates(region: index, from: leader, epoch: epoch, generation: generation)
                                   : .catchUpTerms(region: index, from: leader, epoch: epoch, generation: generation))
        }
        guard isRunning(leader), !cut.contains([index, leader]), !cut.contains([leader, index]) else {
            return carryMachine(index, regions[index].machine!.handle(.catchUpFailed(keyspace: strongKeyspace, epoch: epoch, reason: "\(names[leader]) unreachable"),
                                                                      nowMs: nowMs, wallMs: physicalMs(index)))
        }
        guard states else {
            report.catchUps += 1
            let terms = terms(leader)
            catchUpTerms[index] = terms
            carryMachine(index, regions[index].machine!.handle(.catchUpTermsRead(keyspace: strongKeyspace, epoch: epoch, terms: terms), nowMs: nowMs, wallMs: physicalMs(index)))
            return schedule(after: rttMs[index][leader], .catchUpStates(region: index, from: leader, epoch: epoch, generation: generation))
        }
        // The leader's pages hold committed states only: a write of the keyspace in its fsync there is read once durable.
        if regions[leader].pendingCommits.contains(where: { $0.entry.keyspace == strongKeyspace }) {
            return schedule(after: 1, .catchUpStates(region: index, from: leader, epoch: epoch, generation: generation))
        }
        // Through the machine's merge gate, as the node: no merge lands after the term changed.
        guard regions[index].machine!.admitMerge(strongKeyspace, token: epoch, from: names[leader]) else {
            return carryMachine(index, regions[index].machine!.handle(.catchUpFailed(keyspace: strongKeyspace, epoch: epoch, reason: "the term changed"),
                                                                      nowMs: nowMs, wallMs: physicalMs(index)))
        }
        // The leader's states, merged by the store as the node's catch-up pages are.
        let theirs = (held(leader).keys[strongKeyspace] ?? [:]).map { (key: $0.key, state: $0.value) }
        let keys = Set(theirs.map(\.key))
        do {
            let changed = try regions[index].store.merge(keyspace: strongKeyspace, states: theirs)
            if changed > 0, let trace { trace("\(nowMs) ms \(names[index]): catch-up merged \(changed) keys from \(names[leader])") }
        } catch {
            report.violations.append("\(names[index]) could not merge \(names[leader])'s states: \(error)")
        }
        if let trace { trace("\(nowMs) ms \(names[index]): caught up from \(names[leader]) for epoch \(epoch)") }
        carryMachine(index, regions[index].machine!.handle(.mergeCommitted(keyspace: strongKeyspace, token: epoch, keys: keys, terms: catchUpTerms[index]),
                                                           nowMs: nowMs, wallMs: physicalMs(index)))
        carryMachine(index, regions[index].machine!.handle(.catchUpPulled(keyspace: strongKeyspace, epoch: epoch), nowMs: nowMs, wallMs: physicalMs(index)))
    }

    /// The node's `bringBack`: writes of earlier terms held here beyond where the new term's leader held them go
    /// to the divergence log, and their keys take that leader's state (pulled from it; retried while it cannot
    /// be reached). A newer term's check replaces this one.
    private mutating func revert(_ index: Int, start: EpochStart, keys merged: Set<Key>, generation: Int) {
        guard regions[index].up, regions[index].generation == generation else { return }
        if regions[index].pausedUntilMs > nowMs {
            return schedule(after: regions[index].pausedUntilMs - nowMs, .revert(region: index, start: start, keys: merged, generation: generation))
        }
        guard regions[index].machine!.follows(strongKeyspace, epoch: start.epoch) else {
            if !merged.isEmpty { carryMachine(index, regions[index].machine!.handle(.reconcileLater(keyspace: strongKeyspace, keys: merged), nowMs: nowMs, wallMs: physicalMs(index))) }
            return carryMachine(index, regions[index].machine!.handle(.revertFinished(keyspace: strongKeyspace, epoch: start.epoch), nowMs: nowMs, wallMs: physicalMs(index)))
        }
        let leader = names.firstIndex(of: start.leader)!
        guard leader == index || (regions[leader].up && !cut.contains([index, leader])) else {
            return schedule(after: 1_000, .revert(region: index, start: start, keys: merged, generation: generation))
        }
        // The leader's states are read as committed: a write of the keyspace in its fsync there is read once durable.
        if regions[leader].pendingCommits.contains(where: { $0.entry.keyspace == strongKeyspace }) {
            return schedule(after: 1, .revert(region: index, start: start, keys: merged, generation: generation))
        }
        let oldestNamed = start.terms.count >= EpochStart.termsMax ? (start.terms.map(\.epoch).min() ?? 0) : 0
        // Keys merged from a peer under a term that ended take this term's leader's state too.
        var keys = merged
        let store = regions[index].store
        let divergedBefore = held(index).divergence.count
        // Writes held beyond the start that the log does not show (they came in merged states): they cannot be
        // found one by one, so every key that differs from the leader's takes its state, and this region holds
        // the leader's terms afterwards (read before its states). The store keeps the others aside, as the node's.
        var replaceAll = false
        do {
            for term in terms(index) where term.epoch < start.epoch && term.epoch >= oldestNamed {
                let held = start.last(of: term.leader, in: term.epoch) ?? 0
                guard term.last > held else { continue }
                if try store.loggedThrough(keyspace: strongKeyspace, origin: term.leader, epoch: term.epoch) < term.last { replaceAll = true }
                if options.plantedBug == .discardInsteadOfKeepingAside {
                    replaceAll = true
                    continue
                }
                keys.formUnion(try store.divertHeld(keyspace: strongKeyspace, origin: term.leader, after: held, epoch: term.epoch,
                                                    successorEpoch: start.epoch, nowMs: physicalMs(index)))
            }
        } catch {
            report.violations.append("\(names[index]) could not keep aside the writes epoch \(start.epoch)'s start does not count: \(error)")
        }
        let kept = held(index).divergence.dropFirst(divergedBefore)
        report.diverted += kept.count
        if let trace { for write in kept { trace("\(nowMs) ms \(names[index]): kept aside \(write.origin):\(write.sequence) of epoch \(write.epoch) by revert (start \(start))") } }
        var leaderTerms: [TermEnd]?
        if replaceAll && leader != index {
            leaderTerms = terms(leader)
            let mine = held(index).keys[strongKeyspace] ?? [:], theirs = held(leader).keys[strongKeyspace] ?? [:]
            for key in Set(mine.keys).union(theirs.keys) where mine[key] != theirs[key] { keys.insert(key) }
            if let trace { trace("\(nowMs) ms \(names[index]): writes held beyond the start are not in the log; every key follows \(names[leader])") }
        }
        // The leader's states come in through the merge gate, as the node's.
        if (!keys.isEmpty || leaderTerms != nil) && leader != index {
            guard regions[index].machine!.admitMerge(strongKeyspace, token: start.epoch, from: start.leader) else {
                if !merged.isEmpty { carryMachine(index, regions[index].machine!.handle(.reconcileLater(keyspace: strongKeyspace, keys: merged), nowMs: nowMs, wallMs: physicalMs(index))) }
                return carryMachine(index, regions[index].machine!.handle(.revertFinished(keyspace: strongKeyspace, epoch: start.epoch), nowMs: nowMs, wallMs: physicalMs(index)))
            }
            let theirs = held(leader).keys[strongKeyspace] ?? [:]
            do {
                try store.replaceStates(keyspace: strongKeyspace, keys.map { (key: $0, state: theirs[$0]) })
            } catch {
                report.violations.append("\(names[index]) could not bring keys back to \(names[leader])'s state: \(error)")
            }
            carryMachine(index, regions[index].machine!.handle(.mergeCommitted(keyspace: strongKeyspace, token: start.epoch, keys: keys, terms: leaderTerms),
                                                               nowMs: nowMs, wallMs: physicalMs(index)))
        }
        carryMachine(index, regions[index].machine!.handle(.revertFinished(keyspace: strongKeyspace, epoch: start.epoch), nowMs: nowMs, wallMs: physicalMs(index)))
    }

    // MARK: - Time

    private mutating func schedule(after delayMs: UInt64, _ kind: EventKind) {
        order += 1
        events.append(Event(timeMs: nowMs + delayMs, order: order, kind: kind))
        // Sift up (binary min-heap by time, then scheduling order).
        var child = events.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard events[child].precedes(events[parent]) else { break }
            events.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popEvent() -> Event {
        let first = events[0]
        let last = events.removeLast()
        if !events.isEmpty {
            events[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < events.count && events[left].precedes(events[smallest]) { smallest = left }
                if right < events.count && events[right].precedes(events[smallest]) { smallest = right }
                if smallest == parent { break }
                events.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return first
    }

    private mutating func advance(by deltaMs: UInt64) {
        let until = nowMs + deltaMs
        while let next = events.first, next.timeMs <= until {
            let event = popEvent()
            nowMs = max(nowMs, event.timeMs)
            switch event.kind {
            case .channel(let channel): deliverHead(channel)
            case .persist(let region, let stream, let generation) where regions[region].pausedUntilMs > nowMs:
                schedule(after: regions[region].pausedUntilMs - nowMs, .persist(region: region, stream: stream, generation: generation))
            case .persist(let region, let stream, let generation): persistCompleted(region, stream: stream, generation: generation)
            case .originFsync(let region, let generation): originFsyncCompleted(region, generation: generation)
            case .revert(let region, let start, let keys, let generation): revert(region, start: start, keys: keys, generation: generation)
            case .catchUpTerms(let region, let from, let epoch, let generation):
                catchUp(region, from: from, epoch: epoch, generation: generation, states: false)
            case .catchUpStates(let region, let from, let epoch, let generation):
                catchUp(region, from: from, epoch: epoch, generation: generation, states: true)
            case .reconnect(let from, let to) where regions[from].pausedUntilMs > nowMs:
                schedule(after: regions[from].pausedUntilMs - nowMs, .reconnect(from: from, to: to))
            case .reconnect(let from, let to):
                reconnectPending.remove([from, to])
                connect(from, to)
            case .restart(let index): restart(index)
            case .read(let id): attemptRead(id)
            case .forwardedWrite(let id, let to): forwardedWriteArrived(id, at: to)
            case .forwardedAnswer(let id, let from): forwardedAnswerArrived(id, from: from)
            case .idempotentRetry(let id): retryIdempotent(id)
            case .tick:
                for index in regions.indices where isRunning(index) {
                    if nowMs >= regions[index].trimmedMs + 1_000 { trimLog(index) }
                    for resolution in regions[index].acks.tick(nowMs: nowMs) { resolve(index, resolution) }
                    carryMachine(index, regions[index].machine!.handle(.ticked(applied: appliedPoints(index), peers: peerLinks(index)),
                                                                       nowMs: nowMs, wallMs: physicalMs(index)))
                }
                heartbeatAndSilence()
                checkLeases()
                schedule(after: 25, .tick)
            }
        }
        nowMs = until
    }

    /// The node's log maintenance, once a second: the region trims its own log through what every peer acknowledged
    /// as durable (``LogTrim``). A trim is a durable step of the store, as the node's is a synced transaction, so
    /// it also makes the visible applies before it durable; trimming more often than the node would hide windows.
    private mutating func trimLog(_ index: Int) {
        regions[index].trimmedMs = nowMs
        let peers = regions.indices.filter { $0 != index }
        let acknowledged = peers.map { options.plantedBug == .trimByVisibleAcks ? regions[index].peerVisible[$0] : regions[index].peerDurable[$0] }
        guard let through = LogTrim.through(highWater: committedThrough(index), floor: regions[index].store.logFloor(), acknowledged: acknowledged,
                                            settled: options.plantedBug == .trimWhileUnsettled || regions[index].machine!.mayTrimAcknowledged(nowMs: nowMs), retentionEntries: UInt64(cluster.limits.logRetentionEntries)) else { return }
        if let trace {
            let snapshot = regions[index].machine!.snapshot(strongKeyspace, nowMs: nowMs)
            trace("\(nowMs) ms \(names[index]): trims its log through \(through) (peers acknowledged \(acknowledged); \(snapshot.map { "\($0.role) of epoch \($0.epoch), lease \($0.holdsLease), start \($0.start?.epoch ?? 0)" } ?? ""))")
        }
        do {
            try regions[index].store.trimLog(origin: names[index], through: through)
        } catch {
            report.violations.append("\(names[index]) could not trim its log through \(through): \(error)")
        }
    }

    // MARK: - Invariants

    /// At most one region holds the strong keyspace's lease at any instant (a paused one included: its lease
    /// runs on the clock, not on its work).
    private mutating func checkLeases() {
        let holders = regions.indices.filter { regions[$0].up && regions[$0].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.holdsLease == true }
        if holders.count > 1 {
            report.violations.append("at \(nowMs) ms \(holders.map { names[$0].rawValue }) all hold the strong keyspace's lease")
        }
    }

    /// Failover's promises: no majority-acknowledged write is kept aside; no async write a leader acknowledged is
    /// kept aside by a term it handed over to (a hand-over waits until the target holds the whole log); and no
    /// write kept aside anywhere is part of any region's state once they converged.
    private mutating func checkFailover() {
        // Per write kept aside, the first term that excluded it (a region that learns of it later records the
        // term it follows then).
        var diverted: [Dot: UInt64] = [:]
        for index in regions.indices {
            for item in held(index).divergence {
                let dot = Dot(region: item.origin, counter: item.sequence)
                diverted[dot] = min(diverted[dot] ?? .max, item.successorEpoch)
            }
        }
        for write in acknowledgedWrites {
            let dot = Dot(region: names[write.origin], counter: UInt64(write.sequence))
            if let successor = diverted[dot] {
                report.violations.append("majority-acknowledged write \(dot) was kept aside by epoch \(successor)")
            }
        }
        for (dot, epoch) in asyncAcknowledged.sorted(by: { ($0.key.region, $0.key.counter) < ($1.key.region, $1.key.counter) }) {
            if let successor = diverted[dot], transferEpochs.contains(successor) {
                report.violations.append("async write \(dot) of epoch \(epoch), acknowledged, was kept aside by epoch \(successor), which a hand-over started")
            }
        }
        // A write one term kept aside may count again in a later term whose leader held it and never heard of
        // the term that excluded it; what the regions hold must be the final term's history.
        guard report.convergenceMs != nil,
              let final = survivors.compactMap({ regions[$0].machine!.snapshot(strongKeyspace, nowMs: nowMs)?.start }).max(by: { $0.epoch < $1.epoch }) else { return }
        // Nor is a write discarded silently (the contract's second promise): each of the strong keyspace's writes a
        // surviving origin made is either in the final term's history or kept aside in that region's own divergence
        // log, where its failover report lists it (peers that kept it aside on arrival are not enough).
        let oldestNamed = final.terms.count >= EpochStart.termsMax ? (final.terms.map(\.epoch).min() ?? 0) : 0
        for origin in survivors {
            let keptHere = Set(held(origin).divergence.map { Dot(region: $0.origin, counter: $0.sequence) })
            for entry in log(origin) where entry.keyspace == strongKeyspace && entry.epoch >= oldestNamed {
                let dot = Dot(region: entry.origin, counter: entry.sequence)
                let counted = (entry.origin == final.leader && entry.epoch == final.epoch) || (final.last(of: entry.origin, in: entry.epoch) ?? 0) >= entry.sequence
                if !counted && !keptHere.contains(dot) {
                    report.violations.append("\(names[origin])'s write \(dot) of epoch \(entry.epoch) was discarded: epoch \(final.epoch)'s history does not count it, and \(names[origin]) did not keep it aside")
                }
            }
        }
        for index in survivors {
            for (key, state) in held(index).keys[strongKeyspace] ?? [:] {
                for version in state.versions where diverted[version.dot] != nil {
                    let entry = log(names.firstIndex(of: version.version.origin)!)[Int(version.version.sequence) - 1]
                    let counted = (entry.origin == final.leader && entry.epoch == final.epoch) || (final.last(of: entry.origin, in: entry.epoch) ?? 0) >= entry.sequence
                    if !counted {
                        report.violations.append("\(names[index]) holds \(key) version \(version.dot), which epoch \(diverted[version.dot]!) kept aside and epoch \(final.epoch)'s history does not count")
                    }
                }
            }
        }
    }

    private var survivors: [Int] { regions.indices.filter { !regions[$0].lost } }

    /// Every surviving region has applied every surviving origin's whole log; with no region lost, all hold
    /// the same value for every key.
    /// The client-visible guarantees, by the test kit's checkers over what the simulated clients saw.
    private mutating func checkHistories() {
        let strong = strongOperations.map { RegisterOperation(key: $0.key, kind: $0.kind, call: $0.call, returned: $0.returned) }
        report.strongOperations = strong.count
        switch LinearizabilityChecker().check(strong) {
        case .linearizable: break
        case .violation(let key, let operations):
            report.violations.append("strong operations on '\(key)' are not linearizable: \(operations.map { "\($0.kind)@\($0.call)-\($0.returned.map(String.init) ?? "?")" })")
        case .unknown(let key):
            report.violations.append("the linearizability search on '\(key)' gave up undecided")
        }
        report.sessionOperations = sessionHistory.reduce(0) { $0 + $1.count }
        for violation in SessionChecker().check(sessionHistory) { report.violations.append("session guarantee broken: \(violation)") }
        report.boundedReads = stalenessReads.count
        for (read, owed) in StalenessChecker().check(writes: stalenessWrites, reads: stalenessReads) {
            report.violations.append("bounded read of '\(read.key)' at \(read.call) (bound \(read.maxStalenessMs) ms) returned \(read.returned.map(\.description) ?? "nothing"), missing \(owed.version) acknowledged at \(owed.acknowledged)")
        }
    }

    /// Every pair of surviving regions that are up merges its key states both ways, by each keyspace's rule,
    /// logging what it discards: the nodes' Merkle repair, without the tree (the simulator compares all keys).
    private mutating func antiEntropy() {
        let live = survivors.filter { regions[$0].up }
        for a in live {
            // Not from a region whose commit is in its fsync: the node's rounds read committed states only.
            for b in live where b != a && regions[b].pendingCommits.isEmpty {
                // The strong keyspace repairs only from its leader (a follower's copy may hold a deposed leader's
                // writes that were kept aside, which merging would revive), through the region machine's merge
                // gate, recording the leader's held terms as the node does.
                let strongFromLeader = regions[a].machine?.leader(strongKeyspace) == names[b]
                let token = regions[a].machine?.mergeToken(strongKeyspace) ?? 0
                let mergeStrong = strongFromLeader && regions[a].machine!.admitMerge(strongKeyspace, token: token, from: names[b])
                var strongKeys: Set<Key> = []
                for (keyspace, theirs) in held(b).keys {
                    if keyspace == strongKeyspace && !mergeStrong { continue }
                    // Only keyspaces both regions replicate (residency), as the node's rounds.
                    guard let policy = cluster.keyspace(keyspace), policy.isReplica(names[a]), policy.isReplica(names[b]) else { continue }
                    let rule = rules[keyspace] ?? .lww
                    let mine = held(a).keys[keyspace] ?? [:]
                    // The pages that differ, merged by the store as the node's rounds merge them.
                    let differing = theirs.filter { key, state in (mine[key].map { $0.merged(with: state, rule: rule) } ?? state) != mine[key] }
                    guard !differing.isEmpty else { continue }
                    report.keysRepaired += differing.count
                    if keyspace == strongKeyspace {
                        strongKeys.formUnion(differing.keys)
                        if let trace { trace("\(nowMs) ms \(names[a]): anti-entropy merged \(differing.keys.map(\.rawValue).sorted()) from \(names[b])") }
                    }
                    do {
                        _ = try regions[a].store.merge(keyspace: keyspace, states: differing.map { (key: $0.key, state: $0.value) })
                    } catch {
                        report.violations.append("\(names[a]) could not merge \(names[b])'s states of \(keyspace): \(error)")
                    }
                    if rule == .siblings { for key in differing.keys { noteSiblings(a, keyspace, key.rawValue) } }
                }
                if mergeStrong {
                    let terms = terms(b)
                    carryMachine(a, regions[a].machine!.handle(.mergeCommitted(keyspace: strongKeyspace, token: token, keys: strongKeys, terms: terms),
                                                               nowMs: nowMs, wallMs: physicalMs(a)))
                }
            }
        }
    }

    /// Nothing discarded silently: every write to a keyspace whose rule discards losers, held by the surviving
    /// regions, is the value they show, or was the value its overwriter's region showed when a later write
    /// replaced it, or is in some region's conflicts log. And the counters hold every increment they received.
    private mutating func checkConflicts() {
        let survivors = self.survivors
        guard let reference = survivors.first, report.convergenceMs != nil else { return }
        var logged: Set<Dot> = []
        for index in regions.indices { logged.formUnion(held(index).conflicts.map(\.loser.dot)) }
        var winners: Set<Dot> = []
        for (keyspace, keys) in held(reference).keys {
            for state in keys.values { winners.insert(state.winner(rules[keyspace] ?? .lww).dot) }
        }
        for origin in regions.indices {
            // The reference's own log may be trimmed; every entry it committed is in the history.
            let entries = origin == reference ? log(origin) : held(reference).log[names[origin]] ?? []
            for entry in entries where (rules[entry.keyspace] ?? .lww).discardsLosers && entry.keyspace != strongKeyspace {
                let dot = Dot(region: entry.origin, counter: entry.sequence)
                guard !winners.contains(dot), !overwrittenVisible.contains(dot), !logged.contains(dot) else { continue }
                report.violations.append("\(entry.keyspace)/\(entry.key) write \(entry.origin)#\(entry.sequence) was discarded without a conflicts-log record")
            }
        }
        for (key, state) in states(reference) where key.hasPrefix("crdt/") {
            guard let value = try? CRDTCodec.decode(state.winner(.crdt).value), case .gCounter(let counter) = value else {
                report.violations.append("\(key) does not hold a counter")
                continue
            }
            // Every increment the counter's context names (merged here by the log, or by anti-entropy from a
            // region that had it): each origin's deltas to a key are merged as a prefix of its log.
            let expected = increments.filter { $0.value.key == key && state.context.contains($0.key) }.reduce(UInt64(0)) { $0 + $1.value.amount }
            report.counterTotal += counter.value
            if counter.value != expected { report.violations.append("\(key) counts \(counter.value); the increments it applied add up to \(expected)") }
        }
    }

    /// An idempotent write and its retry leave one write: in no region do two applied entries (not kept aside) carry
    /// the same async put (its value is unique to it).
    private mutating func checkIdempotency() {
        for index in survivors {
            let disk = held(index)
            let keptAside = Set(disk.divergence.map { Dot(region: $0.origin, counter: $0.sequence) })
            var applied: [String: Int] = [:]
            for entries in disk.log.values {
                for entry in entries where entry.keyspace == strongKeyspace && entry.key.rawValue.hasPrefix("a") && entry.operation == .put
                    && !keptAside.contains(Dot(region: entry.origin, counter: entry.sequence)) {
                    applied[String(decoding: entry.value, as: UTF8.self), default: 0] += 1
                }
            }
            for (value, count) in applied.sorted(by: { $0.key < $1.key }) where count > 1 {
                report.violations.append("\(names[index]) applied the async put of \(value) \(count) times: its idempotent retry was not recognized")
            }
        }
    }

    private func converged() -> Bool {
        let survivors = self.survivors
        for index in survivors {
            guard regions[index].up else { return false }
            for origin in survivors where appliedThrough(index, origin) != appliedThrough(origin, origin) { return false }
        }
        // Byte-identical: equal Merkle roots over every key's full state, values and concurrent versions included.
        // With a region lost for good, its writes reached some survivors and not others; anti-entropy evens that out.
        // Over the keyspaces every surviving region replicates (a restricted one lives in its home region only).
        let shared = Set(cluster.keyspaces.filter { policy in survivors.allSatisfy { policy.isReplica(names[$0]) } }.map { "\($0.name)/" })
        let roots = survivors.map { index in
            MerkleTree(states: states(index).filter { key, _ in shared.contains(where: { key.hasPrefix($0) }) }
                .map { (key: try! Key($0.key), state: $0.value) }).root
        }
        return roots.allSatisfy { $0 == roots[0] }
    }

    private mutating func checkInvariants() {
        if report.convergenceMs == nil {
            // Keys the surviving regions disagree on (a region lost for good is left out).
            let survivors = self.survivors
            let all = survivors.map { states($0) }
            let keys = Set(all.flatMap(\.keys))
            let diverged = keys.filter { key in all.contains { $0[key] != all[0][key] } }.sorted().prefix(5)
            for key in diverged {
                report.violations.append("\(key) diverged: " + survivors.indices.map { i in "\(names[survivors[i]]): ctx \(all[i][key]?.context.description ?? "-") versions \(all[i][key]?.versions.map { "\($0.dot)\($0.tombstone ? "T" : "")@\($0.version.hlc)" } ?? [])" }.joined(separator: " | "))
            }
            let applied = regions.indices.map { index in regions.indices.map { appliedThrough(index, $0) } }
            report.violations.append("no convergence within \(options.convergenceBudgetMs) ms after heal: applied points \(applied), logs \(regions.indices.map { appliedThrough($0, $0) })")
        }
        let survivors = self.survivors
        for index in survivors {
            let disk = held(index)
            for origin in regions.indices where origin != index {
                // What the store holds of the origin's log, and what it kept aside on arrival, is exactly the prefix
                // of the origin's log it covers, less the entries of keyspaces it does not replicate, each once.
                let logged = (disk.log[names[origin]] ?? []).map(\.sequence)
                let keptAside = Set(disk.divergence.filter { $0.origin == names[origin] }.map(\.sequence))
                let expected = log(origin).prefix(Int(appliedThrough(index, origin))).filter { cluster.keyspace($0.keyspace)?.isReplica(names[index]) == true }.map(\.sequence)
                if logged != logged.sorted() || Set(logged).count != logged.count || Set(logged).union(keptAside).sorted() != expected {
                    report.violations.append("\(names[index]) applied \(names[origin])'s log out of order or with a gap")
                }
            }
        }
        report.conflictsLogged = regions.indices.reduce(0) { $0 + held($1).conflicts.count }
        checkIdempotency()
        checkHistories()
        checkConflicts()
        checkFailover()
        // Sealing: the restricted keyspace's values rest only as ciphertext at its home, in key states and the log.
        let home = held(residentHome)
        let plaintext = (home.keys[residentKeyspace] ?? [:]).values.flatMap { $0.versions.map(\.value) }
            + home.log.values.flatMap { $0.filter { $0.keyspace == residentKeyspace }.map(\.value) }
        if plaintext.contains(where: { !$0.isEmpty && SealedValue.keyID(of: $0) == nil }) {
            report.violations.append("\(names[residentHome]) holds a value of \(residentKeyspace) that is not sealed")
        }
        // Residency: no byte of the restricted keyspace outside its home, in a key's state or a log.
        for index in regions.indices where index != residentHome {
            let disk = held(index)
            if !(disk.keys[residentKeyspace] ?? [:]).isEmpty || disk.log.values.contains(where: { $0.contains { $0.keyspace == residentKeyspace } })
                || disk.divergence.contains(where: { $0.keyspace == residentKeyspace }) {
                report.violations.append("\(names[index]) holds writes of \(residentKeyspace), which may live only in \(names[residentHome])")
            }
        }

        for write in acknowledgedWrites {
            // After convergence, held as readers see it (each acknowledging region's durability was checked when the
            // write was answered; a batch's sync may still be pending when the run ends).
            let holders = survivors.filter { appliedThrough($0, write.origin) >= write.sequence }
            if regions[write.origin].lost {
                // RPO 0 for majority writes: the loss of any one region, its origin included, loses none.
                if holders.isEmpty {
                    report.violations.append("acknowledged write \(names[write.origin])#\(write.sequence) was lost with its region")
                }
            } else if holders.count != survivors.count {
                report.violations.append("acknowledged write \(names[write.origin])#\(write.sequence) missing in \(survivors.filter { !holders.contains($0) }.map { names[$0].rawValue }) after convergence")
            }
        }
    }
}
