import Crypto

/// A client's name for one write request (`Idempotency-Key`): a retry that carries the same name gets the first
/// attempt's outcome instead of applying the write again.
///
/// 1 to 255 bytes of visible ASCII (a UUID is the usual choice).
public struct IdempotencyKey: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// The longest key, in bytes.
    public static let bytesMax = 255

    /// - Throws: `invalid_header` for an empty key, one longer than 255 bytes, or one with a byte outside visible ASCII.
    public init(_ text: String) throws(MeridianError) {
        guard !text.isEmpty, text.utf8.count <= Self.bytesMax, text.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw MeridianError(.invalidHeader, "Idempotency-Key must be 1 to \(Self.bytesMax) visible ASCII characters (a UUID, say); this one is \(text.utf8.count) bytes\(text.utf8.allSatisfy { (0x21...0x7E).contains($0) } ? "" : " with a space or a byte outside visible ASCII").",
                                context: ["header": "Idempotency-Key"])
        }
        rawValue = text
    }

    public var description: String { rawValue }
}

/// What an idempotent write carries with it, in its log entry and wherever it is forwarded: the client's key, and
/// a digest of the request the key was first used for, so a retry can be told from a different request that
/// reuses the key.
public struct IdempotencyMark: Hashable, Sendable {
    public let key: IdempotencyKey
    /// ``fingerprintBytes`` bytes of SHA-256 over the request.
    public let fingerprint: [UInt8]

    public static let fingerprintBytes = 16

    public init(key: IdempotencyKey, fingerprint: [UInt8]) {
        precondition(fingerprint.count == Self.fingerprintBytes, "a fingerprint is \(Self.fingerprintBytes) bytes")
        self.key = key
        self.fingerprint = fingerprint
    }

    /// The mark of a request: its key, and the digest of everything that makes it the request it is (keyspace,
    /// key, operation, content type, value, and its `If-Match` condition).
    public init(key: IdempotencyKey, keyspace: KeyspaceName, dataKey: Key, operation: Operation, contentType: String, value: [UInt8],
                precondition: WriteRequest.Precondition?) {
        var hasher = SHA256()
        func field(_ bytes: some Collection<UInt8>) {
            withUnsafeBytes(of: UInt32(bytes.count).bigEndian) { hasher.update(bufferPointer: $0) }
            hasher.update(data: Array(bytes))
        }
        field(keyspace.rawValue.utf8)
        field(dataKey.rawValue.utf8)
        field([operation.rawValue])
        field(contentType.utf8)
        field(value)
        switch precondition {
        case nil: field([0])
        case .exists: field([1])
        case .versionIsOneOf(let versions): field(([2] + versions.map(\.description).sorted().joined(separator: ",").utf8))
        }
        self.init(key: key, fingerprint: Array(hasher.finalize().prefix(Self.fingerprintBytes)))
    }
}

/// The first outcome of an idempotent write, as a region keeps it (for `limits.idempotency_ttl_ms`).
public struct IdempotencyRecord: Hashable, Sendable {
    public let keyspace: KeyspaceName
    public let mark: IdempotencyMark
    /// The key the write changed.
    public let key: Key
    /// The version the write created.
    public let version: Version
    /// Put, delete, or merge.
    public let operation: Operation
    /// The term of a single-leader keyspace the write was accepted in (0: none).
    public let epoch: UInt64
    /// When this region recorded it (its wall clock, ms): it is forgotten `idempotency_ttl_ms` later.
    public let recordedMs: UInt64

    public init(keyspace: KeyspaceName, mark: IdempotencyMark, key: Key, version: Version, operation: Operation, epoch: UInt64, recordedMs: UInt64) {
        self.keyspace = keyspace
        self.mark = mark
        self.key = key
        self.version = version
        self.operation = operation
        self.epoch = epoch
        self.recordedMs = recordedMs
    }

    /// The record an applied entry leaves, if it carries a mark.
    public init?(_ entry: ReplicationEntry, recordedMs: UInt64) {
        guard let mark = entry.idempotency else { return nil }
        self.init(keyspace: entry.keyspace, mark: mark, key: entry.key, version: entry.version, operation: entry.operation, epoch: entry.epoch,
                  recordedMs: recordedMs)
    }

    /// Whether the record still answers retries at `nowMs`.
    public func isLive(nowMs: UInt64, ttlMs: UInt64) -> Bool { nowMs < recordedMs &+ ttlMs || recordedMs > nowMs }
}

/// What a region does with a write that carries an idempotency key, given what it keeps.
public enum IdempotencyCheck: Sendable, Hashable {
    /// No live record: apply the write and record it.
    case apply
    /// A retry of a write already applied: answer its first outcome.
    case replay(IdempotencyRecord)
    /// The key was first used for another request: refuse, nothing written.
    case reused(MeridianError)

    /// Compares a write's mark with the live record its key has here (nil: none).
    public static func check(_ mark: IdempotencyMark, against record: IdempotencyRecord?) -> IdempotencyCheck {
        guard let record else { return .apply }
        guard record.mark.fingerprint == mark.fingerprint else {
            return .reused(MeridianError(
                .idempotencyKeyReused,
                "Idempotency-Key '\(mark.key.rawValue.prefix(64))' was first used for a different request (version \(record.version) of key '\(record.key.rawValue.prefix(200))' in keyspace '\(record.keyspace)'); a retry must repeat the same key, value, operation and If-Match. Use a new key for a new request.",
                context: ["idempotency_key": String(mark.key.rawValue.prefix(64)), "version": record.version.description]))
        }
        return .replay(record)
    }
}

/// Where the idempotency keys of a multi-leader keyspace are kept: a write that carries one is taken by one region
/// chosen from the key (rendezvous hashing over the replicas not agreed down), so retries sent to any region meet
/// in one place. Removing a region moves only the keys it held.
public enum IdempotencyHome {
    /// The region that takes writes carrying `key` in `keyspace`, or nil when every replica is down.
    public static func region(for key: IdempotencyKey, keyspace: KeyspaceName, replicas: [RegionName], down: Set<RegionName>) -> RegionName? {
        var best: (weight: UInt64, region: RegionName)?
        for region in replicas where !down.contains(region) {
            var hasher = SHA256()
            hasher.update(data: Array(keyspace.rawValue.utf8) + [0] + Array(key.rawValue.utf8) + [0] + Array(region.rawValue.utf8))
            let weight = hasher.finalize().prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if best == nil || weight > best!.weight || (weight == best!.weight && region < best!.region) { best = (weight, region) }
        }
        return best?.region
    }
}
