import Crypto
import Foundation

// The audit trail (issue 21): per region, append-only and hash-chained (each record's hash covers the one before),
// with the chain's head signed in checkpoints the other regions keep. A trail whose bytes were changed fails its
// own chain; one that was cut short, or recomputed from a changed record on, disagrees with a checkpoint a peer
// holds. These are the core's parts: records, the chain, checkpoints, and verification. The node appends and
// exchanges them.

/// One audited event in one region's trail.
public struct AuditRecord: Hashable, Sendable {
    /// What happened.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        case replicationSent = "replication_sent"
        case replicationReceived = "replication_received"
        case proxied
        case forwarded
        case repair
        case reapplied
        case backup
        case restore
        case keyWrap = "key_wrap"
        case keyRotation = "key_rotation"
        case erasure
        case authenticationFailed = "authentication_failed"
        case authorizationFailed = "authorization_failed"
        case configChange = "config_change"
        /// Records the node could not keep (its buffer was full): how many, so the loss is on the trail too.
        case overflow
    }

    /// The record's place in its region's trail, from 1, without gaps.
    public let sequence: UInt64
    public let timeMs: UInt64
    public let region: RegionName
    public let kind: Kind
    /// What the record names (peer, keyspace, sequence range, bytes, digest, principal, key hash...): never a
    /// restricted key's name or a value.
    public let fields: [String: String]
    /// The hash of the record before (32 zero bytes for the first).
    public let previous: [UInt8]
    /// SHA-256 over `previous` and the record's canonical bytes.
    public let hash: [UInt8]

    /// The hash a record with these contents must have.
    public static func hash(sequence: UInt64, timeMs: UInt64, region: RegionName, kind: Kind, fields: [String: String], previous: [UInt8]) -> [UInt8] {
        var bytes = Array("meridian/audit/v1".utf8)
        bytes += previous
        bytes += withUnsafeBytes(of: sequence.bigEndian, Array.init)
        bytes += withUnsafeBytes(of: timeMs.bigEndian, Array.init)
        func text(_ value: String) {
            bytes += withUnsafeBytes(of: UInt32(value.utf8.count).bigEndian, Array.init)
            bytes += Array(value.utf8)
        }
        text(region.rawValue)
        text(kind.rawValue)
        bytes += withUnsafeBytes(of: UInt32(fields.count).bigEndian, Array.init)
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) {
            text(name)
            text(value)
        }
        return Array(SHA256.hash(data: bytes))
    }

    /// The records a `restore` record says were lost with the backup's newer records (nil: none, or not a restore).
    static func lostRange(kind: Kind, fields: [String: String]) -> ClosedRange<UInt64>? {
        guard kind == .restore, let from = fields["lost_from"].flatMap(UInt64.init), let through = fields["lost_through"].flatMap(UInt64.init),
              from >= 1, through >= from else { return nil }
        return from...through
    }

    /// Whether `hash` is the hash of the record's contents.
    public var isSealed: Bool {
        hash == Self.hash(sequence: sequence, timeMs: timeMs, region: region, kind: kind, fields: fields, previous: previous)
    }

    public init(sequence: UInt64, timeMs: UInt64, region: RegionName, kind: Kind, fields: [String: String], previous: [UInt8], hash: [UInt8]) {
        self.sequence = sequence
        self.timeMs = timeMs
        self.region = region
        self.kind = kind
        self.fields = fields
        self.previous = previous
        self.hash = hash
    }
}

/// The head of a region's trail: where the next record goes and what it chains to.
public struct AuditChain: Hashable, Sendable {
    public static let genesis = [UInt8](repeating: 0, count: 32)
    public let region: RegionName
    public private(set) var sequence: UInt64
    public private(set) var hash: [UInt8]

    /// A trail's head: a new trail's (nothing yet), or the last record's when the trail is read back.
    public init(region: RegionName, sequence: UInt64 = 0, hash: [UInt8] = AuditChain.genesis) {
        self.region = region
        self.sequence = sequence
        self.hash = hash
    }

    /// The next record, chained to the head, which moves to it. A `restore` record whose `lost_through` lies ahead
    /// takes the place after it: the records a restored backup lost keep their numbers, witnessed by peers, and
    /// the trail goes on after them (``AuditVerifier`` accepts exactly that gap).
    public mutating func append(_ kind: AuditRecord.Kind, fields: [String: String], timeMs: UInt64) -> AuditRecord {
        var next = sequence + 1
        if kind == .restore, let lost = AuditRecord.lostRange(kind: kind, fields: fields), lost.lowerBound == next { next = lost.upperBound + 1 }
        let sealed = AuditRecord.hash(sequence: next, timeMs: timeMs, region: region, kind: kind, fields: fields, previous: hash)
        let record = AuditRecord(sequence: next, timeMs: timeMs, region: region, kind: kind, fields: fields, previous: hash, hash: sealed)
        sequence = next
        hash = sealed
        return record
    }
}

/// A region's signed statement of its trail's head, kept by its peers as witnesses.
public struct AuditCheckpoint: Hashable, Sendable {
    public let region: RegionName
    public let sequence: UInt64
    public let hash: [UInt8]
    public let signature: [UInt8]

    public init(region: RegionName, sequence: UInt64, hash: [UInt8], signature: [UInt8]) {
        self.region = region
        self.sequence = sequence
        self.hash = hash
        self.signature = signature
    }

    /// The head of `chain`, signed with the region's audit key.
    public static func sign(_ chain: AuditChain, with key: Curve25519.Signing.PrivateKey) -> AuditCheckpoint {
        let payload = signedBytes(region: chain.region, sequence: chain.sequence, hash: chain.hash)
        let signature: Data
        do {
            signature = try key.signature(for: payload)
        } catch {
            preconditionFailure("Ed25519 signing cannot fail: \(error)")
        }
        return AuditCheckpoint(region: chain.region, sequence: chain.sequence, hash: chain.hash, signature: Array(signature))
    }

    /// Whether the region's audit key signed this checkpoint.
    public func isSigned(by key: Curve25519.Signing.PublicKey) -> Bool {
        key.isValidSignature(signature, for: Self.signedBytes(region: region, sequence: sequence, hash: hash))
    }

    private static func signedBytes(region: RegionName, sequence: UInt64, hash: [UInt8]) -> [UInt8] {
        Array("meridian/audit-checkpoint/v1\0\(region.rawValue)\0".utf8) + withUnsafeBytes(of: sequence.bigEndian, Array.init) + hash
    }
}

/// What verifying a trail found.
public enum AuditVerdict: Hashable, Sendable {
    /// The chain holds from its first record to `head`, and every checkpoint given agrees with it.
    case intact(head: UInt64, checkpoints: Int)
    /// The first thing wrong, at `sequence`, in a sentence an operator can act on.
    case broken(sequence: UInt64, reason: String)
}

public enum AuditVerifier {
    /// Verifies a region's trail, read in order from `anchor` (the record before the first one given: genesis
    /// for a whole trail, or where retention cut it), against checkpoints its peers witnessed.
    /// - Parameters:
    ///   - key: The region's audit public key (checkpoints not signed by it are reported, not trusted).
    public static func verify(_ records: [AuditRecord], region: RegionName, anchor: (sequence: UInt64, hash: [UInt8]) = (0, AuditChain.genesis),
                              checkpoints: [AuditCheckpoint] = [], key: Curve25519.Signing.PublicKey? = nil) -> AuditVerdict {
        var previous = anchor
        // The anchor is witnessed too: a retention cut keeps the hash of the last record it dropped.
        var byHash: [UInt64: [UInt8]] = anchor.sequence > 0 ? [anchor.sequence: anchor.hash] : [:]
        // Records a restore lost: peers witnessed them, and the trail no longer holds them.
        var lost: [ClosedRange<UInt64>] = []
        for record in records {
            let expected = previous.sequence + 1
            if record.sequence != expected, let range = AuditRecord.lostRange(kind: record.kind, fields: record.fields),
               range.lowerBound == expected, range.upperBound + 1 == record.sequence {
                lost.append(range)
            } else if record.sequence != expected {
                return .broken(sequence: expected, reason: "\(region)'s trail skips from record \(previous.sequence) to \(record.sequence): records were deleted or reordered.")
            }
            guard record.region == region else {
                return .broken(sequence: record.sequence, reason: "Record \(record.sequence) names region \(record.region), not \(region): it was copied from another trail.")
            }
            guard record.previous == previous.hash else {
                return .broken(sequence: record.sequence, reason: "Record \(record.sequence) does not chain to record \(previous.sequence): a record before it was changed, or the trail was spliced.")
            }
            guard record.isSealed else {
                return .broken(sequence: record.sequence, reason: "Record \(record.sequence)'s contents do not match its hash: the record was changed after it was written.")
            }
            byHash[record.sequence] = record.hash
            previous = (record.sequence, record.hash)
        }
        let checked = checkpoints.filter { checkpoint in
            checkpoint.region == region && checkpoint.sequence >= max(anchor.sequence, 1) && !lost.contains { $0.contains(checkpoint.sequence) }
        }
        for checkpoint in checked.sorted(by: { $0.sequence < $1.sequence }) {
            if let key, !checkpoint.isSigned(by: key) {
                return .broken(sequence: checkpoint.sequence, reason: "A checkpoint of \(region) at record \(checkpoint.sequence) is not signed by \(region)'s audit key: it cannot witness the trail.")
            }
            guard let hash = byHash[checkpoint.sequence] else {
                return .broken(sequence: checkpoint.sequence, reason: "A peer witnessed \(region)'s trail at record \(checkpoint.sequence), but the trail ends at \(previous.sequence): its newest records were deleted.")
            }
            guard hash == checkpoint.hash else {
                return .broken(sequence: checkpoint.sequence, reason: "Record \(checkpoint.sequence) is not the one a peer witnessed: the trail was rewritten (its chain recomputed) from there or before.")
            }
        }
        return .intact(head: previous.sequence, checkpoints: checked.count)
    }
}

/// A record not yet on the trail: the trail gives it its place and chains it.
public struct AuditDraft: Hashable, Sendable {
    public let kind: AuditRecord.Kind
    public let fields: [String: String]
    public let timeMs: UInt64

    public init(_ kind: AuditRecord.Kind, _ fields: [String: String], timeMs: UInt64) {
        self.kind = kind
        self.fields = fields
        self.timeMs = timeMs
    }
}

/// Where a trail begins after retention dropped its oldest records: the last record dropped.
public struct AuditAnchor: Hashable, Sendable {
    public let sequence: UInt64
    public let hash: [UInt8]

    public init(sequence: UInt64 = 0, hash: [UInt8] = AuditChain.genesis) {
        self.sequence = sequence
        self.hash = hash
    }
}

extension AuditChain {
    /// Chains drafts onto the head, which moves to the last.
    public mutating func append(_ drafts: [AuditDraft]) -> [AuditRecord] {
        drafts.map { append($0.kind, fields: $0.fields, timeMs: $0.timeMs) }
    }
}

/// What a replication batch of a restricted keyspace carried, as both ends record it: the same entries give the
/// same count, bytes and digest at the sender and the receiver.
public enum AuditedBatch {
    /// Per restricted keyspace among `entries`: its entries' count, encoded bytes and SHA-256 digest (hex).
    public static func summaries(_ entries: [ReplicationEntry], cluster: ClusterConfig) -> [(keyspace: KeyspaceName, entries: Int, bytes: Int, digest: String)] {
        var grouped: [KeyspaceName: [ReplicationEntry]] = [:]
        for entry in entries where cluster.keyspace(entry.keyspace)?.residency.classification == .restricted {
            grouped[entry.keyspace, default: []].append(entry)
        }
        return grouped.sorted { $0.key < $1.key }.map { keyspace, entries in
            var hasher = SHA256()
            var bytes = 0
            let codec = EntryCodec(valueBytesMax: Int(UInt32.max))
            for entry in entries {
                var encoded: [UInt8] = []
                codec.encode(entry, into: &encoded)
                bytes += encoded.count
                hasher.update(data: encoded)
            }
            return (keyspace, entries.count, bytes, Hex.encode(hasher.finalize()))
        }
    }
}

extension AuditCheckpoint {
    /// Checks a checkpoint another region sent before it is kept: signed by the key it names, and that key the one
    /// pinned for the region (the first seen), if one is.
    /// - Throws: `replication_protocol` saying which.
    public func admit(publicKey: [UInt8], pinned: [UInt8]?) throws(MeridianError) {
        let key: Curve25519.Signing.PublicKey
        do { key = try Curve25519.Signing.PublicKey(rawRepresentation: publicKey) } catch {
            throw MeridianError(.replicationProtocol, "\(region)'s audit checkpoint names a public key that is not an Ed25519 key.")
        }
        guard isSigned(by: key) else {
            throw MeridianError(.replicationProtocol, "\(region)'s audit checkpoint at record \(sequence) is not signed by the key it names.")
        }
        if let pinned, pinned != publicKey {
            throw MeridianError(.replicationProtocol, "\(region)'s audit checkpoint is signed by another key than the one pinned for it; it is not kept.")
        }
    }
}
