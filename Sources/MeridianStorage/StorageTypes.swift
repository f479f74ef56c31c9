import MeridianCore
import Synchronization

/// A key's current state in a region: its value (or tombstone) and version metadata.
public struct StoredValue: Sendable, Hashable {
    /// The keyspace the key belongs to.
    public let keyspace: KeyspaceName
    /// The key.
    public let key: Key
    /// The bytes stored (empty for a tombstone).
    public let value: [UInt8]
    /// The media type given when the value was written.
    public let contentType: String
    /// The write that produced this state.
    public let version: Version
    /// Whether the key was deleted.
    public let tombstone: Bool
    /// What the writer's session had seen of other origins (a reader's session takes it in).
    public var dependencies: [RegionName: UInt64] = [:]
    /// How many other versions of the key are held beside this one (concurrent writes not yet superseded).
    public var concurrent: Int = 0

    public init(keyspace: KeyspaceName, key: Key, value: [UInt8], contentType: String, version: Version, tombstone: Bool,
                dependencies: [RegionName: UInt64] = [:], concurrent: Int = 0) {
        self.keyspace = keyspace
        self.key = key
        self.value = value
        self.contentType = contentType
        self.version = version
        self.tombstone = tombstone
        self.dependencies = dependencies
        self.concurrent = concurrent
    }
}

extension StoredValue {
    /// The stored form of one version of a key (the one reads show).
    public init(keyspace: KeyspaceName, key: Key, winner: KeyVersion) {
        self.init(keyspace: keyspace, key: key, value: winner.value, contentType: winner.contentType, version: winner.version,
                  tombstone: winner.tombstone, dependencies: winner.dependencies)
    }
}

/// One key of a list result.
public struct ListedKey: Sendable, Hashable {
    /// The key.
    public let key: Key
    /// Its current version.
    public let version: Version
    /// The size of its value in bytes.
    public let valueBytes: Int
    /// Its media type.
    public let contentType: String
    /// What the writer's session had seen of other origins.
    public var dependencies: [RegionName: UInt64] = [:]

    public init(key: Key, version: Version, valueBytes: Int, contentType: String, dependencies: [RegionName: UInt64] = [:]) {
        self.key = key
        self.version = version
        self.valueBytes = valueBytes
        self.contentType = contentType
        self.dependencies = dependencies
    }
}

/// What became of a write request.
public enum WriteOutcome: Sendable, Hashable {
    /// The write is durable with this version; the entry is in the replication log.
    case committed(ReplicationEntry)
    /// `If-Match` did not hold; nothing was written. Carries the key's current version, if it has one.
    case preconditionFailed(current: Version?)
    /// The write does not fit the key or keyspace (a CRDT type or policy mismatch, a value grown too large, an
    /// idempotency key reused for another request); nothing was written.
    case refused(MeridianError)
    /// A retry of an idempotent write this region already holds: nothing was written, and this is the first
    /// write's outcome.
    case replayed(IdempotencyRecord)
}

/// Receives store events for metrics; called off the request path, must not block.
public protocol StoreObserver: Sendable {
    /// A group commit finished.
    /// - Parameters:
    ///   - writes: How many writes shared the transaction.
    ///   - commitSeconds: How long the transaction took, fsync of the WAL included.
    func commitCompleted(writes: Int, commitSeconds: Double)
    /// Values that lost a conflict were recorded in a keyspace's conflicts log (and old records dropped
    /// beyond its retention).
    func conflictsRecorded(keyspace: KeyspaceName, recorded: Int, dropped: Int)
    /// Live idempotency keys were forgotten before their time because more than `idempotency_keys_max` were held.
    func idempotencyKeysEvicted(_ count: Int)
}

extension StoreObserver {
    public func conflictsRecorded(keyspace: KeyspaceName, recorded: Int, dropped: Int) {}
    public func idempotencyKeysEvicted(_ count: Int) {}
}

/// One record of a keyspace's conflicts log: a value this region discarded because a concurrent write won.
public struct ConflictRecord: Sendable, Hashable {
    /// The record's position in the log (increasing; page with it).
    public let id: Int64
    public let keyspace: KeyspaceName
    public let key: Key
    /// The rule that decided (`lww`, `fww`, `region-priority`, or `crdt-type` for a CRDT type clash).
    public let rule: String
    /// When this region recorded it (its wall clock, ms).
    public let recordedMs: UInt64
    /// The version that lost, and what it held.
    public let loser: KeyVersion
    /// The version that won.
    public let winner: Version

    public init(id: Int64, keyspace: KeyspaceName, key: Key, rule: String, recordedMs: UInt64, loser: KeyVersion, winner: Version) {
        self.id = id
        self.keyspace = keyspace
        self.key = key
        self.rule = rule
        self.recordedMs = recordedMs
        self.loser = loser
        self.winner = winner
    }
}

/// A write kept aside because its leader was deposed before its successor held it.
public struct DivergedWrite: Sendable, Hashable {
    public let id: Int64
    public let keyspace: KeyspaceName
    public let key: Key
    public let origin: RegionName
    public let sequence: UInt64
    /// The epoch the deposed leader wrote it in, and the epoch that fenced it off.
    public let epoch: UInt64
    public let successorEpoch: UInt64
    public let hlc: HLCTimestamp
    public let operation: MeridianCore.Operation
    public let contentType: String
    public let value: [UInt8]
    public let recordedMs: UInt64
    /// When an operator re-applied it through the current leader (nil: not yet).
    public let reappliedMs: UInt64?

    public init(id: Int64, keyspace: KeyspaceName, key: Key, origin: RegionName, sequence: UInt64, epoch: UInt64, successorEpoch: UInt64,
                hlc: HLCTimestamp, operation: MeridianCore.Operation, contentType: String, value: [UInt8], recordedMs: UInt64, reappliedMs: UInt64?) {
        self.id = id
        self.keyspace = keyspace
        self.key = key
        self.origin = origin
        self.sequence = sequence
        self.epoch = epoch
        self.successorEpoch = successorEpoch
        self.hlc = hlc
        self.operation = operation
        self.contentType = contentType
        self.value = value
        self.recordedMs = recordedMs
        self.reappliedMs = reappliedMs
    }
}

/// A failover as the region elected in it saw it, for the RTO report.
public struct FailoverEvent: Sendable, Hashable {
    public let id: Int64
    public let keyspace: KeyspaceName
    public let epoch: UInt64
    public let leader: RegionName
    public let previousLeader: RegionName?
    /// Wall-clock ms: when the new leader last heard the previous one, when it stood, when it won, and
    /// when it first committed a write in the new epoch (nil until then).
    public let lastHeardMs: UInt64?
    public let suspectedMs: UInt64
    public let electedMs: UInt64
    public let firstWriteMs: UInt64?
    /// Why the term began: `failure` (the leader went silent) or `transfer` (an operator moved it).
    public let reason: String

    public init(id: Int64, keyspace: KeyspaceName, epoch: UInt64, leader: RegionName, previousLeader: RegionName?, lastHeardMs: UInt64?,
                suspectedMs: UInt64, electedMs: UInt64, firstWriteMs: UInt64?, reason: String) {
        self.id = id
        self.keyspace = keyspace
        self.epoch = epoch
        self.leader = leader
        self.previousLeader = previousLeader
        self.lastHeardMs = lastHeardMs
        self.suspectedMs = suspectedMs
        self.electedMs = electedMs
        self.firstWriteMs = firstWriteMs
        self.reason = reason
    }
}

/// The latest failed commit of this region's own writes, cleared by the next commit that succeeds: what
/// `/v1/status` reports as the storage state.
public final class WriteFaults: Sendable {
    private let latest = Mutex<MeridianError?>(nil)
    /// Whether `latest` holds a failure: every successful commit asks, and takes the lock only after a failure.
    private let failing = Atomic<Bool>(false)

    public init() {}

    public func record(_ error: MeridianError) {
        latest.withLock { $0 = error }
        failing.store(true, ordering: .releasing)
    }

    public func clear() {
        guard failing.load(ordering: .acquiring) else { return }
        latest.withLock { $0 = nil }
        failing.store(false, ordering: .releasing)
    }

    /// The error of the latest commit, if it failed.
    public var current: MeridianError? { latest.withLock { $0 } }
}

extension EpochStart {
    /// The start as a store keeps it: `epoch leader origin=applied,... terms`.
    public var storedText: String {
        "\(epoch) \(leader) " + applied.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") + " " + TermEnd.encode(terms)
    }

    /// Reads a start ``storedText`` wrote.
    /// - Throws: `storage_failure` when the stored text is not a start this code wrote.
    public init(storedText text: String) throws(MeridianError) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: false)
        let corrupt = MeridianError(.storageFailure, "A stored election start is unreadable: '\(text.prefix(200))'.")
        guard parts.count == 3 || parts.count == 4, let epoch = UInt64(parts[0]), let leader = try? RegionName(String(parts[1])) else { throw corrupt }
        var applied: [RegionName: UInt64] = [:]
        for pair in parts[2].split(separator: ",") {
            let fields = pair.split(separator: "=")
            guard fields.count == 2, let sequence = UInt64(fields[1]), let origin = try? RegionName(String(fields[0])) else { throw corrupt }
            applied[origin] = sequence
        }
        var terms: [TermEnd] = []
        if parts.count == 4 {
            do { terms = try TermEnd.decode(parts[3]) } catch { throw corrupt }
        }
        self.init(epoch: epoch, leader: leader, applied: applied, terms: terms)
    }
}
