import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import Synchronization

/// The region's audit trail as the node keeps it: events are buffered (at most ``bufferedMax``; beyond it they are
/// counted, and the count goes on the trail as an `overflow` record) and written together on each tick; when the
/// head moved, it is signed and sent to every peer, which keeps it as a witness.
final class AuditLog: Sendable {
    static let bufferedMax = 10_000
    /// Records written per transaction at most.
    static let flushMax = 1_000

    let region: RegionName
    private let store: any RegionStorage
    private let signingKey: Curve25519.Signing.PrivateKey
    private let wallClockMs: @Sendable () -> UInt64
    private let pending = Mutex<(drafts: [AuditDraft], dropped: Int, lastSigned: UInt64)>(([], 0, 0))
    /// A restored region's trail waits (buffered, bounded) until its `restore` record says where it resumes.
    private let held: Mutex<Bool>

    /// - Parameter rootKey: The region's root key; the audit signing key is derived from it (HKDF), so it
    ///   survives restarts and never leaves the region.
    init(region: RegionName, store: any RegionStorage, rootKey: RegionRootKey, wallClockMs: @escaping @Sendable () -> UInt64, held: Bool = false) {
        self.held = Mutex(held)
        self.region = region
        self.store = store
        self.signingKey = rootKey.auditSigningKey(region: region)
        self.wallClockMs = wallClockMs
    }

    /// The key peers verify this region's checkpoints with.
    var publicKey: [UInt8] { Array(signingKey.publicKey.rawRepresentation) }

    /// Notes an event; it reaches the trail on the next tick.
    func record(_ kind: AuditRecord.Kind, _ fields: [String: String]) {
        let draft = AuditDraft(kind, fields, timeMs: wallClockMs())
        pending.withLock { pending in
            if pending.drafts.count < Self.bufferedMax { pending.drafts.append(draft) } else { pending.dropped += 1 }
        }
    }

    /// Writes what is buffered. - Returns: the checkpoint to send when the head moved since the last one.
    func flush() async throws(MeridianError) -> AuditCheckpoint? {
        guard !held.withLock({ $0 }) else { return nil }
        let (drafts, dropped) = pending.withLock { pending in
            let taken = Array(pending.drafts.prefix(Self.flushMax))
            pending.drafts.removeFirst(taken.count)
            defer { pending.dropped = 0 }
            return (taken, pending.dropped)
        }
        var all = drafts
        if dropped > 0 { all.append(AuditDraft(.overflow, ["dropped": String(dropped)], timeMs: wallClockMs())) }
        if !all.isEmpty { _ = try await store.appendAudit(all) }
        let head = try await store.auditHead()
        let moved = pending.withLock { pending in
            defer { pending.lastSigned = head.sequence }
            return head.sequence != pending.lastSigned
        }
        return moved && head.sequence > 0 ? AuditCheckpoint.sign(head, with: signingKey) : nil
    }
}

extension AuditLog {
    /// Resumes a restored region's trail: the `restore` record first (``RestoreCatchUp/auditFields(head:)``: it takes
    /// its place after the records peers witnessed and the backup lost), then what was buffered meanwhile.
    func resume(restoreFields: [String: String]) async throws(MeridianError) {
        guard held.withLock({ $0 }) else { return }
        _ = try await store.appendAudit([AuditDraft(.restore, restoreFields, timeMs: wallClockMs())])
        held.withLock { $0 = false }
    }
}

extension RegionNode {
    /// Puts the configuration this node starts with on the trail when it differs from the one last recorded.
    func recordConfiguration() async {
        guard let audit else { return }
        do throws(MeridianError) {
            let previous = try await store.lastAuditRecord(.configChange)
            guard let fields = ConfigurationAudit.startFields(configuration.cluster, previous: previous) else { return }
            audit.record(.configChange, fields)
            logger.notice("the configuration changed since the trail last recorded it", metadata: [
                "added": "\(fields["keyspaces_added"] ?? "")", "removed": "\(fields["keyspaces_removed"] ?? "")",
                "changed": "\(fields["keyspaces_changed"] ?? "")",
            ])
        } catch {
            logger.warning("the configuration could not be compared with the trail's last record", metadata: ["reason": "\(error.message)"])
        }
    }
}

extension RegionRootKey {
    /// The region's audit signing key (Ed25519), derived from its root key.
    func auditSigningKey(region: RegionName) -> Curve25519.Signing.PrivateKey {
        let seed = derivedBytes(info: "meridian/audit-signing/v1\0\(region.rawValue)", count: 32)
        do {
            return try Curve25519.Signing.PrivateKey(rawRepresentation: seed)
        } catch {
            preconditionFailure("32 bytes are always an Ed25519 seed: \(error)")
        }
    }
}

extension RegionNode {
    /// Writes the audit trail every heartbeat interval and sends its signed head to every peer when it moved;
    /// returns once cancelled.
    func runAuditTrail() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(limits.heartbeatIntervalMs))
            do throws(MeridianError) {
                guard let audit, let checkpoint = try await audit.flush() else { continue }
                for peer in configuration.cluster.regions.map(\.name) where peer != region {
                    replicator.send(to: peer, .auditCheckpoint(checkpoint, publicKey: audit.publicKey))
                }
            } catch {
                logger.error("the audit trail could not be written", metadata: ["code": "\(error.code)", "error": "\(error.message)"])
            }
        }
    }

    /// `GET /v1/audit?after=&limit=`: this region's trail, oldest first, with its anchor; `GET /v1/audit?witnessed=R`:
    /// the checkpoints of region R's trail this region keeps, and R's pinned key.
    func auditRoute(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let query = request.uri.queryParameters
        if let text = query.get("witnessed") {
            let peer = try RegionName(text)
            guard configuration.cluster.region(peer) != nil else {
                throw MeridianError(.unknownRegion, "Region '\(peer)' is not in the cluster.", context: ["region": peer.rawValue])
            }
            let (key, checkpoints) = try await store.witnessed(region: peer, limit: AuditBounds.witnessedPerRegionMax)
            return JSON.response(WitnessedAnswer(region: peer.rawValue, witness: region.rawValue, publicKey: key.map(Self.hex),
                                                 checkpoints: checkpoints.map { .init(sequence: $0.sequence, hash: Self.hex($0.hash), signature: Self.hex($0.signature)) }),
                                 headers: [.cacheControl: "no-store"])
        }
        var after: UInt64 = 0
        if let text = query.get("after") {
            guard let value = UInt64(text) else { throw MeridianError(.invalidParameter, "after is a record's sequence, a whole number.", context: ["parameter": "after"]) }
            after = value
        }
        var limit = 1_000
        if let text = query.get("limit") {
            guard let value = Int(text), (1...10_000).contains(value) else {
                throw MeridianError(.invalidParameter, "limit is 1 to 10000.", context: ["parameter": "limit"])
            }
            limit = value
        }
        guard let audit else {
            throw MeridianError(.routeNotFound, "Region \(region) keeps no audit trail: it runs without a root key.")
        }
        let (records, anchor) = try await store.auditRecords(after: after, limit: limit)
        return JSON.response(AuditAnswer(region: region.rawValue, anchor: AuditAnswer.Anchor(sequence: anchor.sequence, hash: Self.hex(anchor.hash)),
                                         publicKey: Hex.encode(audit.publicKey),
                                         records: records.map { AuditAnswer.Record(sequence: $0.sequence, timeMs: $0.timeMs, kind: $0.kind.rawValue, fields: $0.fields,
                                                                                   previous: Self.hex($0.previous), hash: Self.hex($0.hash)) }),
                             headers: [.cacheControl: "no-store"])
    }

    static func hex(_ bytes: [UInt8]) -> String { Hex.encode(bytes) }
}

struct AuditAnswer: Encodable {
    struct Anchor: Encodable {
        let sequence: UInt64
        let hash: String
    }

    struct Record: Encodable {
        let sequence: UInt64
        let timeMs: UInt64
        let kind: String
        let fields: [String: String]
        let previous: String
        let hash: String

        enum CodingKeys: String, CodingKey {
            case sequence, kind, fields, previous, hash
            case timeMs = "time_ms"
        }
    }

    let region: String
    let anchor: Anchor
    let publicKey: String
    let records: [Record]

    enum CodingKeys: String, CodingKey {
        case region, anchor, records
        case publicKey = "public_key"
    }
}

struct WitnessedAnswer: Encodable {
    struct Checkpoint: Encodable {
        let sequence: UInt64
        let hash: String
        let signature: String
    }

    let region: String
    let witness: String
    let publicKey: String?
    let checkpoints: [Checkpoint]

    enum CodingKeys: String, CodingKey {
        case region, witness, checkpoints
        case publicKey = "public_key"
    }
}
