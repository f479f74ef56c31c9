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

/// A write to apply in this region as origin.
public struct WriteRequest: Sendable, Hashable {
    /// How a write depends on the key's current version.
    public enum Precondition: Sendable, Hashable {
        /// Apply only if the key's current version is one of these.
        case versionIsOneOf([Version])
        /// Apply only if the key currently exists (`If-Match: *`).
        case exists
    }

    /// The keyspace written.
    public let keyspace: KeyspaceName
    /// The key written.
    public let key: Key
    /// Put or delete.
    public let operation: MeridianCore.Operation
    /// The media type of `value`.
    public let contentType: String
    /// The bytes to store (empty for delete).
    public let value: [UInt8]
    /// The leadership term the write is accepted in.
    public let epoch: UInt64
    /// A condition on the current version, from `If-Match`.
    public let precondition: Precondition?
    /// A timestamp the write must order after: the highest the client's session saw (monotonic writes and
    /// writes-follow-reads under last-writer-wins, even when the session moved from a region with a faster clock).
    public let after: HLCTimestamp?
    /// What the writer's session had seen of other origins' logs (recorded on the entry).
    public let dependencies: [RegionName: UInt64]

    /// Creates a write request.
    public init(keyspace: KeyspaceName, key: Key, operation: MeridianCore.Operation, contentType: String, value: [UInt8],
                epoch: UInt64 = 0, precondition: Precondition? = nil, after: HLCTimestamp? = nil, dependencies: [RegionName: UInt64] = [:]) {
        self.after = after
        self.dependencies = dependencies
        self.keyspace = keyspace
        self.key = key
        self.operation = operation
        self.contentType = contentType
        self.value = value
        self.epoch = epoch
        self.precondition = precondition
    }
}

/// What became of a write request.
public enum WriteOutcome: Sendable, Hashable {
    /// The write is durable with this version; the entry is in the replication log.
    case committed(ReplicationEntry)
    /// `If-Match` did not hold; nothing was written. Carries the key's current version, if it has one.
    case preconditionFailed(current: Version?)
}

/// Receives store events for metrics; called off the request path, must not block.
public protocol StoreObserver: Sendable {
    /// A group commit finished.
    /// - Parameters:
    ///   - writes: How many writes shared the transaction.
    ///   - commitSeconds: How long the transaction took, fsync of the WAL included.
    func commitCompleted(writes: Int, commitSeconds: Double)
}
