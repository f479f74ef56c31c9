/// What one entry does to its key.
public enum Operation: UInt8, Sendable, Hashable, CustomStringConvertible {
    /// Store the value.
    case put = 1
    /// Replace the value with a tombstone.
    case delete = 2
    /// Merge a CRDT delta into the key's CRDT value.
    case merge = 3

    public var description: String {
        switch self {
        case .put: "put"
        case .delete: "delete"
        case .merge: "merge"
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
    /// What the writing client's session had seen of other origins' logs when it wrote (its token): a reader
    /// who sees this write is owed those writes too (monotonic writes, writes-follow-reads). Empty for writes
    /// outside a session.
    public let dependencies: [RegionName: UInt64]
    /// Every earlier write to this key the writer had seen, as a version vector of log sequences: the
    /// write supersedes exactly those. A write concurrent with this one is one this context does not name.
    public let context: [RegionName: UInt64]
    /// The client's `Idempotency-Key` and the digest of its request, for a write that carried one: every region
    /// that applies the entry answers a retry of that request with this entry's version.
    public let idempotency: IdempotencyMark?

    /// The most origins an entry's dependencies name.
    public static let dependenciesMax = 32

    /// Creates an entry; the HLC's region must be the origin, and dependencies name only other origins.
    public init(
        origin: RegionName, sequence: UInt64, hlc: HLCTimestamp, epoch: UInt64,
        keyspace: KeyspaceName, key: Key, operation: Operation, contentType: String, value: [UInt8],
        dependencies: [RegionName: UInt64] = [:], context: [RegionName: UInt64] = [:], idempotency: IdempotencyMark? = nil
    ) {
        precondition(hlc.region == origin, "an entry's HLC is issued by its origin")
        precondition(sequence >= 1, "sequences start at 1")
        precondition(dependencies[origin] == nil && dependencies.count <= Self.dependenciesMax, "dependencies name other origins, at most 32")
        precondition(context.count <= Self.dependenciesMax && context.values.allSatisfy { $0 >= 1 }, "a context names at most 32 origins")
        self.dependencies = dependencies
        self.context = context
        self.idempotency = idempotency
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

/// The compact binary form of dependencies, shared by the entry codec and the store: `u8 count`, then per
/// origin in name order `u8 nameLength, name bytes, u64 sequence` (big-endian). Empty dependencies encode as
/// no bytes at all in the store (NULL) and as a zero count on the wire.
public enum DependencyCodec {
    /// Appends the encoded form, count included.
    public static func append(_ dependencies: [RegionName: UInt64], to buffer: inout [UInt8]) {
        buffer.append(UInt8(dependencies.count))
        for (origin, sequence) in dependencies.sorted(by: { $0.key < $1.key }) {
            let name = Array(origin.rawValue.utf8)
            buffer.append(UInt8(name.count))
            buffer += name
            withUnsafeBytes(of: sequence.bigEndian) { buffer += $0 }
        }
    }

    /// The encoded size, count included.
    public static func encodedBytes(_ dependencies: [RegionName: UInt64]) -> Int {
        1 + dependencies.keys.reduce(0) { $0 + 1 + $1.rawValue.utf8.count + 8 }
    }

    /// Decodes a whole blob (the store's column).
    public static func decode(_ bytes: [UInt8]) throws(MeridianError) -> [RegionName: UInt64] {
        var reader = ByteReader(bytes[...])
        let dependencies = try read(&reader)
        guard reader.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "Entry dependencies are followed by \(reader.remaining) unexpected bytes.")
        }
        return dependencies
    }

    static func read(_ reader: inout ByteReader) throws(MeridianError) -> [RegionName: UInt64] {
        let count = Int(try reader.required(reader.readUInt8(), "dependency_count"))
        guard count <= ReplicationEntry.dependenciesMax else {
            throw MeridianError(.codecInvalidField, "The entry names \(count) dependencies; at most \(ReplicationEntry.dependenciesMax) are allowed.",
                                context: ["field": "dependency_count"])
        }
        var dependencies: [RegionName: UInt64] = [:]
        for _ in 0..<count {
            let length = Int(try reader.required(reader.readUInt8(), "dependency_origin_length"))
            let origin = try RegionName(try reader.utf8(length, "dependency_origin"))
            let sequence = try reader.required(reader.readUInt64(), "dependency_sequence")
            guard dependencies[origin] == nil, sequence >= 1, sequence <= UInt64(Int64.max) else {
                throw MeridianError(.codecInvalidField, "The entry's dependency on \(origin) is repeated or out of range.", context: ["field": "dependencies"])
            }
            dependencies[origin] = sequence
        }
        return dependencies
    }
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
