import MeridianCore
import Synchronization

// What a region's store must do, split by concern, with no storage engine in sight. The node, the shells and
// the tests see only these protocols; a backend (SQLite, in memory, and later PostgreSQL) implements all of
// them and passes the conformance suite (`StorageConformance` in the tests).

/// The one port through which this region's own writes enter its log.
///
/// Contract: a write is planned against the key's state as committed (``WritePlanner``), then made durable
/// with its log entry in one step. Sequences and timestamps are assigned in commit order: a write committed
/// after another has the next sequence of this region's log and a higher timestamp, and no sequence is skipped
/// or reused, even across restarts.
public protocol CommitPort: Sendable {
    /// Plans and commits one write. A write carrying an idempotency mark is first checked against the live record
    /// of its key (``IdempotencyCheck``) and, once committed, recorded, in the same step; every applied entry
    /// that carries a mark is recorded the same way, and a diverted one forgotten.
    /// - Returns: `committed` with its log entry, `preconditionFailed` when If-Match did not hold, `replayed` for
    ///   a retry of a write held here, or `refused` when the write does not fit the key (nothing written but
    ///   the first).
    /// - Throws: `storage_full`, `storage_read_only` or `storage_failure` when nothing could be written.
    func write(_ request: WriteRequest) async throws(MeridianError) -> WriteOutcome
    /// The latest failed commit, cleared by the next one that succeeds.
    var writeFaults: WriteFaults { get }
    /// The live record of an idempotency key in a keyspace, if this region holds one.
    func idempotencyRecord(keyspace: KeyspaceName, key: IdempotencyKey) async throws(MeridianError) -> IdempotencyRecord?
}

/// Reading keys as they stand in this region.
public protocol KeyReads: Sendable {
    /// The key's current value (the winning version), or nil when the region never held the key.
    func get(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> StoredValue?
    /// The key's full state: every version not superseded and what it has seen.
    func state(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> KeyState?
    /// Live keys in key order after `after`, starting with `prefix`, at most `limit`.
    func list(keyspace: KeyspaceName, prefix: String, after: String?, limit: Int) async throws(MeridianError) -> [ListedKey]
    /// Live keys per keyspace.
    func keyCounts() async throws(MeridianError) -> [String: Int]
}

/// The per-origin replication logs: this region's own (shipped to peers) and how far every other origin's has
/// been applied here.
public protocol ReplicationLogStore: Sendable {
    /// Per origin, the last sequence applied here durably (this region's own: its log's end): what survives a
    /// crash of the machine, and so all an acknowledgement may count. Never blocks for long.
    func appliedHighWater() -> [RegionName: UInt64]
    /// Per origin, the last sequence applied here and readable, durable or not (at least ``appliedHighWater()``).
    func visibleHighWater() -> [RegionName: UInt64]
    /// Applies `from...through` of another origin's log in one step, exactly once: entries at or below the applied
    /// point are skipped, a range beginning past it is refused with nothing applied. `entries` are those this
    /// region replicates; the named sequences of `diverted` (→ the epoch that fenced them) are kept aside in
    /// the divergence log instead of applied.
    /// - Parameter durable: Whether the step is durable before it returns. Otherwise it is visible at once and
    ///   durable after the next ``syncApplied()`` (or any durable step after it); a crash of the machine before
    ///   then loses it whole, with its applied point, and the origin ships it again.
    /// - Returns: The origin's applied point afterwards.
    func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                         diverted: [UInt64: UInt64], durable: Bool) async throws(MeridianError) -> UInt64
    /// As ``applyReplicated(origin:from:through:entries:diverted:durable:)`` for entries their origin has not yet
    /// said are durable: the step's work is done at once, and it commits only if `originDurable` (called inside it,
    /// before the commit; it may block its thread, for a bounded time) returns true. Otherwise nothing is applied and
    /// the result is nil. A backend may also return nil without trying.
    func applyReplicatedOnceDurable(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry], diverted: [UInt64: UInt64],
                                    durable: Bool, originDurable: @escaping @Sendable () -> Bool) async throws(MeridianError) -> UInt64?
    /// Makes every step so far durable. - Returns: ``appliedHighWater()`` afterwards.
    func syncApplied() async throws(MeridianError) -> [RegionName: UInt64]
    /// Moves an origin's applied point up to `sequence` (never down), after anti-entropy brought everything
    /// up to there. - Returns: The applied point afterwards.
    func raiseApplied(origin: RegionName, to sequence: UInt64) async throws(MeridianError) -> UInt64
    /// This region's own log after `sequence`, at most `limit` entries.
    func logEntries(origin: RegionName, after sequence: UInt64, limit: Int) async throws(MeridianError) -> [ReplicationEntry]
    /// The last sequence of this region's log trimmed away (a peer behind it needs anti-entropy).
    func logFloor() -> UInt64
    /// Drops this region's log entries up to `sequence` (every peer has applied them).
    func trimLog(origin: RegionName, through sequence: UInt64) async throws(MeridianError)
}

/// What anti-entropy and reverts read and write: whole key states.
public protocol RepairStore: Sendable {
    /// The keyspace's Merkle tree over every key's full state, and how many keys it covers.
    func merkleTree(keyspace: KeyspaceName) async throws(MeridianError) -> (tree: MerkleTree, keys: Int)
    /// The slot leaves of some of the keyspace's buckets (its tree's second level).
    func merkleSlots(keyspace: KeyspaceName, buckets: [Int]) async throws(MeridianError) -> MerkleSlots
    /// A page of the states of the keys in some ranges of Merkle slots, in slot and key order after `after`
    /// (``MerkleTree/seeks(_:after:)``), within about `bytesMax` (at least one key).
    func states(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (states: [(key: Key, state: KeyState)], next: Key?)
    /// The keys of some ranges of Merkle slots with their item hashes, in slot and key order after `after`, within
    /// `bytesMax` as ``KeyItemCodec`` encodes them (at least one). - Returns: The items, and the key to continue
    /// after when more remain.
    func items(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (items: [(key: Key, item: MerkleTree.Leaf)], next: Key?)
    /// The states of those of `keys` this region holds, as stored (sealed values stay sealed), in the order asked.
    func states(keyspace: KeyspaceName, keys: [Key]) async throws(MeridianError) -> [(key: Key, state: KeyState)]
    /// Merges states another region holds into this region's, logging what loses. - Returns: keys changed.
    func merge(keyspace: KeyspaceName, states: [(key: Key, state: KeyState)]) async throws(MeridianError) -> Int
    /// Replaces keys' states outright (nil: the key is removed), as a new leader holds them.
    func replaceStates(keyspace: KeyspaceName, _ states: [(key: Key, state: KeyState?)]) async throws(MeridianError)
}

extension RepairStore {
    /// A page of the states of the keys in whole Merkle buckets.
    public func states(keyspace: KeyspaceName, buckets: Set<Int>, after: Key?, bytesMax: Int) async throws(MeridianError) -> (states: [(key: Key, state: KeyState)], next: Key?) {
        try await states(keyspace: keyspace, slots: buckets.sorted().map(MerkleTree.slots(ofBucket:)), after: after, bytesMax: bytesMax)
    }
}

/// The conflicts log: values this region discarded because a concurrent write won.
public protocol ConflictLogStore: Sendable {
    /// Records after `after`, oldest first, of one key when `key` is given.
    func conflicts(keyspace: KeyspaceName, key: Key?, after: Int64, limit: Int) async throws(MeridianError) -> [ConflictRecord]
    /// Records held per keyspace.
    func conflictCounts() async throws(MeridianError) -> [String: Int]
}

/// Elections, terms and what failover keeps aside. A `saveElection` that returns is durable: the region
/// machine's shell carries out no later effect before it does.
public protocol FailoverStore: Sendable {
    /// The terms of a single-leader keyspace whose writes this region holds (newest first, at most `limit`).
    func terms(keyspace: KeyspaceName, limit: Int) async throws(MeridianError) -> [TermEnd]
    /// Records these terms' writes as held up to their `last`, never lowering.
    func raiseTerms(keyspace: KeyspaceName, _ terms: [TermEnd]) async throws(MeridianError)
    /// Every keyspace's stored election state.
    func elections() async throws(MeridianError) -> [KeyspaceName: StoredElection]
    /// Makes a keyspace's election state durable.
    func saveElection(_ keyspace: KeyspaceName, _ election: StoredElection) async throws(MeridianError)
    /// The newest epoch among the keyspace's writes held here, and that epoch's leader.
    func newestEpoch(keyspace: KeyspaceName) async throws(MeridianError) -> (epoch: UInt64, origin: RegionName)?
    /// Keeps aside this region's applied writes of `origin` after `after` (of `epoch`, if given) in the
    /// divergence log, lowering the held terms to match. - Returns: the keys they touched.
    func divertHeld(keyspace: KeyspaceName, origin: RegionName, after: UInt64, epoch: UInt64?, successorEpoch: UInt64,
                    nowMs: UInt64) async throws(MeridianError) -> Set<Key>
    /// The last sequence of `origin`'s writes of `epoch` to the keyspace that this region's log holds (0: none).
    /// Held terms beyond it came in merged states, not by the log.
    func loggedThrough(keyspace: KeyspaceName, origin: RegionName, epoch: UInt64) async throws(MeridianError) -> UInt64
    /// Writes kept aside, after `after`, of one keyspace or all.
    func divergence(keyspace: KeyspaceName?, after: Int64, limit: Int) async throws(MeridianError) -> [DivergedWrite]
    func divergedWrite(id: Int64) async throws(MeridianError) -> DivergedWrite?
    /// Marks a kept-aside write re-applied. - Returns: false when it already was.
    func markReapplied(id: Int64, nowMs: UInt64) async throws(MeridianError) -> Bool
    func unmarkReapplied(id: Int64) async throws(MeridianError)
    /// Kept-aside writes per keyspace.
    func divergenceCounts() async throws(MeridianError) -> [String: Int]
    /// Records a failover this region won, and later its first write.
    func recordFailover(keyspace: KeyspaceName, epoch: UInt64, leader: RegionName, previousLeader: RegionName?,
                        lastHeardMs: UInt64?, suspectedMs: UInt64, electedMs: UInt64, reason: String) async throws(MeridianError)
    func recordFirstWrite(keyspace: KeyspaceName, epoch: UInt64, atMs: UInt64) async throws(MeridianError)
    /// The newest `limit` failovers this region won, oldest first.
    func failovers(limit: Int) async throws(MeridianError) -> [FailoverEvent]
}

/// The key table of sealed keyspaces: which data keys this region holds (wrapped under its own key-encryption key),
/// which it erased, and granting and taking keys between allowed regions. Reads open sealed values with it; every
/// other port moves them sealed.
public protocol DataKeyStore: Sendable {
    /// The data keys these sealed values need that this region neither holds nor erased.
    func missingDataKeys(_ values: [(keyspace: KeyspaceName, value: [UInt8])]) async throws(MeridianError) -> [KeyspaceName: Set<DataKeyID>]
    /// The keys of `ids` this region holds (raw, for the authenticated peer stream only) and those it erased.
    func grantDataKeys(keyspace: KeyspaceName, ids: [DataKeyID]) async throws(MeridianError) -> (granted: [DataKeyGrant], erased: [DataKeyID])
    /// Keeps keys a peer granted, wrapped under this region's key; records those the peer erased as erased here.
    func installDataKeys(keyspace: KeyspaceName, _ grants: [DataKeyGrant], erased: [DataKeyID], nowMs: UInt64) async throws(MeridianError)
    /// The ids of the keys erased here, in id order after `after`, at most `limit`.
    func erasedDataKeys(keyspace: KeyspaceName, after: DataKeyID?, limit: Int) async throws(MeridianError) -> [DataKeyID]
    /// Wraps up to `limit` data keys held under an older epoch again under the sealer's current one (a rotation).
    /// - Returns: How many were wrapped again (0: none is left under an older epoch).
    func rewrapDataKeys(limit: Int) async throws(MeridianError) -> Int
    /// How many data keys are held under each epoch.
    func dataKeyEpochs() async throws(MeridianError) -> [UInt32: Int]
    /// Destroys every data key of `subject` held here (its wraps are deleted, their bytes zeroed), and remembers
    /// their ids as erased. - Returns: the ids destroyed.
    func erase(keyspace: KeyspaceName, subject: Subject, nowMs: UInt64) async throws(MeridianError) -> [DataKeyID]
}

/// The region's audit trail (append-only, hash-chained, bounded by `limits.audit_records_max`: the oldest records
/// go, and the trail keeps the last one dropped as its anchor), and the checkpoints of other regions' trails this
/// region witnessed.
public protocol AuditStore: Sendable {
    /// Chains `drafts` onto the trail's head and keeps them, in one step. - Returns: the records as kept.
    func appendAudit(_ drafts: [AuditDraft]) async throws(MeridianError) -> [AuditRecord]
    /// Records after `after`, oldest first, at most `limit`, and the trail's anchor.
    func auditRecords(after: UInt64, limit: Int) async throws(MeridianError) -> (records: [AuditRecord], anchor: AuditAnchor)
    /// The trail's head.
    func auditHead() async throws(MeridianError) -> AuditChain
    /// The newest record of `kind` still on the trail (nil: none).
    func lastAuditRecord(_ kind: AuditRecord.Kind) async throws(MeridianError) -> AuditRecord?
    /// Keeps a checkpoint another region signed, with the public key it was signed with. The first key seen for a
    /// region is kept (pinned); a checkpoint under another key is refused, as is one not signed by its key.
    func witness(_ checkpoint: AuditCheckpoint, publicKey: [UInt8]) async throws(MeridianError)
    /// The checkpoints of `region`'s trail witnessed here (newest `limit`, oldest first) and its pinned key.
    func witnessed(region: RegionName, limit: Int) async throws(MeridianError) -> (publicKey: [UInt8]?, checkpoints: [AuditCheckpoint])
}

/// The most checkpoints of one region's trail a region keeps as witness (older ones go).
public enum AuditBounds {
    public static let witnessedPerRegionMax = 1_000
}

/// What a backup holds, read from its `meta` and tables.
public struct BackupSummary: Sendable, Hashable, Codable {
    /// The region whose store it is a copy of.
    public let region: String
    /// The last sequence of that region's log in the copy.
    public let logEnd: UInt64
    /// The newest record of the region's audit trail in the copy.
    public let auditHead: UInt64
    /// Keys and data keys it holds (sealed values stay sealed; data keys stay wrapped under the region's root key).
    public let keys: Int
    public let dataKeys: Int
    public let bytes: Int

    public init(region: String, logEnd: UInt64, auditHead: UInt64, keys: Int, dataKeys: Int, bytes: Int) {
        self.region = region
        self.logEnd = logEnd
        self.auditHead = auditHead
        self.keys = keys
        self.dataKeys = dataKeys
        self.bytes = bytes
    }

    enum CodingKeys: String, CodingKey {
        case region, keys, bytes
        case logEnd = "log_end"
        case auditHead = "audit_head"
        case dataKeys = "data_keys"
    }
}

/// Backups of the region's store, and the mark a restored store carries until its region caught up.
public protocol BackupStore: Sendable {
    /// Copies the store to a new file at `path` (absolute, on the node's machine) while it keeps serving.
    /// - Throws: `invalid_request` when the path exists or its directory does not, or the backend keeps no file.
    func backup(to path: String) async throws(MeridianError) -> BackupSummary
    /// The backup's log end while a restored store's region has not caught up (nil: not restored, or caught up).
    func restorePending() async throws(MeridianError) -> UInt64?
    /// Ends a restore: the log continues after `logEnd`, and the mark goes.
    func finishRestore(logEnd: UInt64) async throws(MeridianError)
}

/// A region's whole store.
public protocol RegionStorage: CommitPort, KeyReads, ReplicationLogStore, RepairStore, ConflictLogStore, FailoverStore, DataKeyStore, AuditStore,
                               BackupStore {
    /// The region whose log this store numbers.
    var region: RegionName { get }
    /// Releases the store; nothing is called afterwards.
    func close()
}

/// What a node needs to open its region's store.
/// Where a store hands this region's own log as it grows: the node's replicator ships entries while their commit's
/// fsync runs, and tells the peers how far the log is durable once it completes.
///
/// The argument: a peer applies an entry only once its origin said the entry is durable
/// (``PeerFrame/durable(through:)``, ``ApplyQueue/takeBatch(through:)``); until then it holds it only in memory, on the
/// stream that brought it. An origin that crashes, or whose commit fails, before the fsync completes loses the entry,
/// and its peers drop it with the stream (a failed commit ends every stream): no region ever holds an entry its origin
/// lost, no client was answered for it, and the number the origin then gives its next write names one write
/// wherever it is held. Acknowledgements keep meaning durable at the peer, so `majority` and `all` are unchanged; an
/// origin answers a write only after its own commit returned.
public final class CommitShipping: Sendable {
    public struct Handlers: Sendable {
        /// The log ends at the sequence given; the commit's fsync is under way (ship, do not call it durable).
        public let written: @Sendable (UInt64) -> Void
        /// The log is durable through the sequence given.
        public let durable: @Sendable (UInt64) -> Void
        /// A commit whose entries were handed to `written` failed: the log ends at the sequence given, and what was
        /// handed out beyond it must be dropped wherever it went.
        public let failed: @Sendable (UInt64) -> Void

        public init(written: @escaping @Sendable (UInt64) -> Void, durable: @escaping @Sendable (UInt64) -> Void,
                    failed: @escaping @Sendable (UInt64) -> Void) {
            self.written = written
            self.durable = durable
            self.failed = failed
        }
    }

    private let handlers = Mutex<Handlers?>(nil)

    public init() {}

    /// Connects the shipping side (once it exists: the store opens first).
    public func connect(_ handlers: Handlers) {
        self.handlers.withLock { $0 = handlers }
    }

    /// Whether anything ships before the fsync: a store hands entries out early only then.
    public var isConnected: Bool { handlers.withLock { $0 != nil } }

    public func written(through sequence: UInt64) { handlers.withLock { $0 }?.written(sequence) }
    public func durable(through sequence: UInt64) { handlers.withLock { $0 }?.durable(sequence) }
    public func failed(committedThrough sequence: UInt64) { handlers.withLock { $0 }?.failed(sequence) }
}

public struct StoreContext: Sendable {
    public let region: RegionName
    public let limits: Limits
    public let conflictRules: [KeyspaceName: ConflictRule]
    /// The wall clock the store stamps writes with (the node's, offset included).
    public let physicalClockMs: @Sendable () -> UInt64
    public let observer: (any StoreObserver)?
    /// Seals the values of sealed keyspaces (nil: the cluster has none).
    public let sealer: ValueSealer?
    /// Where this region's own log entries go as they are written and once they are durable (nil: nowhere early).
    public let shipping: CommitShipping?

    public init(region: RegionName, limits: Limits, conflictRules: [KeyspaceName: ConflictRule],
                physicalClockMs: @escaping @Sendable () -> UInt64, observer: (any StoreObserver)?, sealer: ValueSealer? = nil,
                shipping: CommitShipping? = nil) {
        self.sealer = sealer
        self.shipping = shipping
        self.region = region
        self.limits = limits
        self.conflictRules = conflictRules
        self.physicalClockMs = physicalClockMs
        self.observer = observer
    }
}

/// Opens a region's store: the node is given one, and never learns which engine is behind it.
public typealias StoreFactory = @Sendable (StoreContext) async throws(MeridianError) -> any RegionStorage

extension ReplicationLogStore {
    /// Applies a contiguous run of another origin's entries (those after the applied point are applied).
    public func applyReplicated(_ entries: [ReplicationEntry], origin: RegionName) async throws(MeridianError) -> UInt64 {
        guard let first = entries.first, let last = entries.last else { return appliedHighWater()[origin, default: 0] }
        let dense = try ReplicationEntry.continuation(of: entries, origin: origin, after: first.sequence - 1)
        return try await applyReplicated(origin: origin, from: first.sequence, through: last.sequence, entries: dense, diverted: [:])
    }
}

/// The checks every backend makes before applying a range of another origin's log: a peer's malformed batch is
/// refused with `replication_protocol`, never trapped on.
public enum ReplicatedRange {
    public static func check(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry], region: RegionName) throws(MeridianError) {
        guard origin != region else {
            throw MeridianError(.replicationProtocol, "Region \(region) was sent its own log; check the peers' addresses.")
        }
        guard from >= 1, from <= through else {
            throw MeridianError(.replicationProtocol, "A batch of \(origin)'s log covers \(from) through \(through), which is no range.")
        }
        var previous: UInt64 = 0
        for entry in entries {
            guard entry.origin == origin, (from...through).contains(entry.sequence), entry.sequence > previous else {
                throw MeridianError(.replicationProtocol, "A batch of \(origin)'s log covering \(from) through \(through) holds entry \(entry.sequence) of \(entry.origin) out of place.",
                                    context: ["origin": origin.rawValue, "entry_origin": entry.origin.rawValue])
            }
            previous = entry.sequence
        }
    }
}

extension ReplicationLogStore {
    /// Never held: the caller applies the entries once their origin says they are durable.
    public func applyReplicatedOnceDurable(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry], diverted: [UInt64: UInt64],
                                           durable: Bool, originDurable: @escaping @Sendable () -> Bool) async throws(MeridianError) -> UInt64? {
        nil
    }

    /// Applies `from...through` of another origin's log, keeping nothing aside.
    public func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry]) async throws(MeridianError) -> UInt64 {
        try await applyReplicated(origin: origin, from: from, through: through, entries: entries, diverted: [:])
    }

    /// Applies `from...through` of another origin's log durably.
    public func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                                diverted: [UInt64: UInt64]) async throws(MeridianError) -> UInt64 {
        try await applyReplicated(origin: origin, from: from, through: through, entries: entries, diverted: diverted, durable: true)
    }
}

extension FailoverStore {
    /// The terms a start names (its newest ``EpochStart/termsMax`` below its epoch), and the term under way: a
    /// follower's held terms and a leader's catch-up answer must cover every term the start counts once the leader
    /// has written in its own epoch.
    public func terms(keyspace: KeyspaceName) async throws(MeridianError) -> [TermEnd] {
        try await terms(keyspace: keyspace, limit: EpochStart.termsMax + 1)
    }
}

/// Runs a step of the sealer's (whose table is the store's own) with its failures typed: the sealer's own errors
/// (`erased`, `data_key_unavailable`, `sealed_value_unreadable`) pass through, anything else is a storage failure.
public func sealerStep<T>(_ what: String, _ body: () throws -> T) throws(MeridianError) -> T {
    do {
        return try body()
    } catch let error as MeridianError {
        throw error
    } catch {
        throw MeridianError(.storageFailure, "\(what) failed: \(error).")
    }
}
