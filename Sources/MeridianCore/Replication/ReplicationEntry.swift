/// What one entry does to its key.
public enum Operation: UInt8, Sendable, Hashable, CustomStringConvertible {
    /// Store the value.
    case put = 1
    /// Replace the value with a tombstone.
    case delete = 2

    public var description: String {
        switch self {
        case .put: "put"
        case .delete: "delete"
        }
    }
}

/// The version of a stored value: who first accepted the write, its place in that origin's log, and its HLC.
///
/// Rendered as `<physicalMs>.<logical>.<origin>.<sequence>`, which is also the value's `ETag`.
public struct Version: Hashable, Sendable, CustomStringConvertible {
    /// The write's hybrid logical clock timestamp; its region is the origin.
    public let hlc: HLCTimestamp
    /// The write's position in its origin's replication log, starting at 1.
    public let sequence: UInt64

    /// The region where the write was first accepted.
    public var origin: RegionName { hlc.region }

    /// Creates a version.
    public init(hlc: HLCTimestamp, sequence: UInt64) {
        self.hlc = hlc
        self.sequence = sequence
    }

    /// Parses the text form produced by `description`.
    /// - Returns: nil when the text is not a version.
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4,
              let physicalMs = UInt64(parts[0]), let logical = UInt32(parts[1]),
              let origin = try? RegionName(String(parts[2])), let sequence = UInt64(parts[3])
        else { return nil }
        self.init(hlc: HLCTimestamp(physicalMs: physicalMs, logical: logical, region: origin), sequence: sequence)
    }

    public var description: String { "\(hlc.physicalMs).\(hlc.logical).\(hlc.region).\(sequence)" }
}

/// One write in an origin's replication log.
public struct ReplicationEntry: Hashable, Sendable {
    /// The region where the write was first accepted.
    public let origin: RegionName
    /// The entry's position in its origin's log; consecutive from 1.
    public let sequence: UInt64
    /// The write's HLC timestamp (its region is `origin`).
    public let hlc: HLCTimestamp
    /// The leadership term the write was accepted in (0 for keyspaces without a leader).
    public let epoch: UInt64
    /// The keyspace written.
    public let keyspace: KeyspaceName
    /// The key written.
    public let key: Key
    /// What the write does.
    public let operation: Operation
    /// The media type of `value` (empty for deletes).
    public let contentType: String
    /// The bytes stored (empty for deletes).
    public let value: [UInt8]

    /// Creates an entry; the HLC's region must be the origin.
    public init(
        origin: RegionName, sequence: UInt64, hlc: HLCTimestamp, epoch: UInt64,
        keyspace: KeyspaceName, key: Key, operation: Operation, contentType: String, value: [UInt8]
    ) {
        precondition(hlc.region == origin, "an entry's HLC is issued by its origin")
        precondition(sequence >= 1, "sequences start at 1")
        self.origin = origin
        self.sequence = sequence
        self.hlc = hlc
        self.epoch = epoch
        self.keyspace = keyspace
        self.key = key
        self.operation = operation
        self.contentType = contentType
        self.value = value
    }

    /// The version this entry gives its key.
    public var version: Version { Version(hlc: hlc, sequence: sequence) }
}

extension ReplicationEntry {
    /// The entries of a batch that follow `applied` in `origin`'s log, in order: duplicates at or below
    /// `applied` (a resumed stream resends them) are dropped, and the rest must continue the log without a gap.
    /// The one rule both the stream receiver and the store's apply path follow.
    /// - Throws: `replication_protocol` for an entry of another origin or a gap.
    public static func continuation(of entries: [ReplicationEntry], origin: RegionName, after applied: UInt64) throws(MeridianError) -> [ReplicationEntry] {
        var expected = applied + 1
        var fresh: [ReplicationEntry] = []
        for entry in entries {
            guard entry.origin == origin else {
                throw MeridianError(.replicationProtocol, "A batch of \(origin)'s log holds an entry of \(entry.origin).",
                                    context: ["origin": origin.rawValue, "entry_origin": entry.origin.rawValue])
            }
            if entry.sequence < expected { continue }
            guard entry.sequence == expected else {
                throw MeridianError(.replicationProtocol, "\(origin)'s log skipped from \(expected - 1) to \(entry.sequence); the stream must resume from \(applied).",
                                    context: ["origin": origin.rawValue, "expected": String(expected), "received": String(entry.sequence)])
            }
            fresh.append(entry)
            expected += 1
        }
        return fresh
    }
}
