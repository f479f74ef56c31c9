import MeridianCore

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
}

/// What became of a write request.
public enum WriteOutcome: Sendable, Hashable {
    /// The write is durable with this version; the entry is in the replication log.
    case committed(ReplicationEntry)
    /// `If-Match` did not hold; nothing was written. Carries the key's current version, if it has one.
    case preconditionFailed(current: Version?)
    /// The write does not fit the key or keyspace (a CRDT type or policy mismatch, a value grown too large);
    /// nothing was written.
    case refused(MeridianError)
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
}

extension StoreObserver {
    public func conflictsRecorded(keyspace: KeyspaceName, recorded: Int, dropped: Int) {}
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
}
