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
    /// Under the `siblings` policy, the causal context the client read: the write replaces exactly the
    /// versions it names (nil: replaces none, and becomes a sibling of what is there). Other policies
    /// supersede everything the region holds.
    public let context: VersionVector?
    /// A CRDT operation (the keyspace's policy must be `crdt`); `operation` and `value` are then unused.
    public let crdt: CRDTRequest?
    /// The client's idempotency key and its request's digest: the store answers a retry with the first
    /// outcome (``IdempotencyCheck``) and records this write's, in the same transaction.
    public let idempotency: IdempotencyMark?
    /// Whose data the value is, for a sealed keyspace (`Meridian-Subject`); nil: the keyspace's subject rule finds
    /// it from the key.
    public let subject: Subject?

    /// Creates a write request.
    public init(keyspace: KeyspaceName, key: Key, operation: MeridianCore.Operation, contentType: String, value: [UInt8],
                epoch: UInt64 = 0, precondition: Precondition? = nil, after: HLCTimestamp? = nil, dependencies: [RegionName: UInt64] = [:],
                context: VersionVector? = nil, crdt: CRDTRequest? = nil, idempotency: IdempotencyMark? = nil, subject: Subject? = nil) {
        self.idempotency = idempotency
        self.subject = subject
        self.context = context
        self.crdt = crdt
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

/// An operation on a key's CRDT value.
public struct CRDTRequest: Sendable, Hashable {
    /// The type the key holds (or is created as).
    public let type: CRDTType
    /// What to do to it.
    public let operation: CRDTOperation

    public init(type: CRDTType, operation: CRDTOperation) {
        self.type = type
        self.operation = operation
    }
}

/// What a write does to a key, decided before anything is stored.
public enum WritePlan: Sendable, Hashable {
    /// Append this entry to the region's log and apply it to the key.
    case append(ReplicationEntry)
    /// `If-Match` did not hold; nothing is written. Carries the key's current version, if it has one.
    case preconditionFailed(current: Version?)
    /// The write does not fit the key or keyspace; nothing is written.
    case refused(MeridianError)
}

/// Decides what a local write does to a key's state: the region machine's write planning, pure, with the
/// clock and the wall-clock reading passed in.
///
/// The caller runs it inside the write's transaction, in commit order, on the key's state as committed so far
/// and with the next sequence of the region's log: then the timestamp it issues is past every entry the write
/// can supersede and past what the writer's session saw, and sequences have no gap (a refused write takes none).
public enum WritePlanner {
    /// Plans one write.
    /// - Parameters:
    ///   - request: The write, as admitted.
    ///   - state: The key's state in this region now (nil: never written here).
    ///   - rule: The keyspace's conflict rule.
    ///   - origin: This region.
    ///   - sequence: The sequence the entry takes in this region's log.
    ///   - clock: The region's hybrid logical clock; moved past the issued timestamp.
    ///   - physicalMs: The wall clock now.
    ///   - limits: The node's limits (value size, siblings).
    /// - Returns: The entry to append, or why nothing is written.
    public static func plan(_ request: WriteRequest, state: KeyState?, rule: ConflictRule, origin: RegionName, sequence: UInt64,
                            clock: inout HybridLogicalClock, physicalMs: UInt64, limits: Limits) -> WritePlan {
        if let precondition = request.precondition {
            let current = state.map { $0.winner(rule) }.flatMap { $0.tombstone ? nil : $0.version }
            let holds = switch precondition {
            case .exists: current != nil
            case .versionIsOneOf(let expected): current.map(expected.contains) ?? false
            }
            guard holds else { return .preconditionFailed(current: current) }
        }
        let hlc: HLCTimestamp
        switch clock.issue(after: request.after, physicalMs: physicalMs) {
        case .success(let issued): hlc = issued
        case .failure(let refusal): return .refused(refusal)
        }
        var write = (operation: request.operation, contentType: request.contentType, value: request.value)
        switch crdtDelta(request, rule: rule, state: state, at: hlc, limits: limits) {
        case .failure(let error): return .refused(error)
        case .success(let delta?): write = (.merge, CRDTCodec.contentType, delta)
        case .success(nil): break
        }
        // What the write supersedes: everything this region holds of the key, except under `siblings`, where a
        // write replaces only the versions its client read (the context it sent); a delete without one removes
        // every version held here (a blind delete that removed nothing would answer 200 and change nothing a
        // reader sees).
        var seen = state?.context ?? VersionVector()
        if rule == .siblings, let given = request.context ?? (request.operation == .delete ? nil : VersionVector()) {
            seen = given
            if let refusal = siblingsRefusal(state: state, seen: seen, adding: write.value.count, request: request, limits: limits) {
                return .refused(refusal)
            }
        }
        return .append(ReplicationEntry(
            origin: origin, sequence: sequence, hlc: hlc, epoch: request.epoch, keyspace: request.keyspace,
            key: request.key, operation: write.operation, contentType: write.contentType, value: write.value,
            dependencies: request.dependencies.filter { $0.key != origin }, context: seen.byRegion, idempotency: request.idempotency))
    }

    /// For a CRDT operation: the delta to log, computed from the key's value (its type must match).
    /// - Returns: nil for a plain put or delete (refused in a `crdt` keyspace), or why the operation is refused.
    private static func crdtDelta(_ request: WriteRequest, rule: ConflictRule, state: KeyState?, at hlc: HLCTimestamp,
                                  limits: Limits) -> Result<[UInt8]?, MeridianError> {
        guard let crdt = request.crdt else {
            guard rule != .crdt else {
                return .failure(MeridianError(.conflictPolicyMismatch, "Keyspace '\(request.keyspace)' holds CRDT values; change them with POST /v1/crdt/\(request.keyspace)/{key}.",
                                              context: ["keyspace": request.keyspace.rawValue]))
            }
            return .success(nil)
        }
        guard rule == .crdt else {
            return .failure(MeridianError(.conflictPolicyMismatch, "Keyspace '\(request.keyspace)' resolves conflicts by \(rule.name), not crdt; write it with PUT /v1/kv/\(request.keyspace)/{key}.",
                                          context: ["keyspace": request.keyspace.rawValue, "conflict": rule.name]))
        }
        var value = CRDTValue.empty(crdt.type)
        if let current = state?.winner(.crdt), !current.tombstone {
            do { value = try CRDTCodec.decode(current.value) } catch {
                return .failure(MeridianError(.storageFailure, "The stored value of '\(request.key)' is not a readable CRDT (\(error.message)); nothing was written.",
                                              context: ["key": request.key.rawValue], applied: .no))
            }
        }
        guard value.type == crdt.type else {
            return .failure(MeridianError(.crdtTypeMismatch, "Key '\(request.key)' holds \(value.type.withArticle), not \(crdt.type.withArticle).",
                                          context: ["key": request.key.rawValue, "type": value.type.rawValue]))
        }
        do {
            let delta = try value.apply(crdt.operation, at: hlc)
            let size = CRDTCodec.encode(value).count
            guard size <= limits.valueBytesMax else {
                return .failure(MeridianError(.valueTooLarge, "The operation would grow '\(request.key)' to \(size) bytes; the limit is \(limits.valueBytesMax).",
                                              context: ["value_bytes_max": String(limits.valueBytesMax)]))
            }
            return .success(CRDTCodec.encode(delta))
        } catch {
            return .failure(error)
        }
    }

    /// Siblings are bounded in count and bytes: a forwarded read or an anti-entropy page carries a key's
    /// versions in one frame.
    private static func siblingsRefusal(state: KeyState?, seen: VersionVector, adding bytes: Int, request: WriteRequest, limits: Limits) -> MeridianError? {
        let kept = (state?.versions ?? []).filter { !seen.contains($0.dot) }
        let keptBytes = kept.reduce(0) { $0 + $1.value.count }
        guard kept.count + 1 > limits.siblingsMax || keptBytes + bytes > limits.replicationFrameBytesMax / 2 else { return nil }
        return MeridianError(
            .tooManySiblings,
            "Key '\(request.key)' already holds \(kept.count) versions (\(keptBytes) bytes) this write did not see; the limit is \(limits.siblingsMax) versions and \(limits.replicationFrameBytesMax / 2) bytes. Read the key and write with its Meridian-Context to resolve them.",
            context: ["key": request.key.rawValue, "siblings": String(kept.count), "siblings_max": String(limits.siblingsMax)])
    }
}

extension HybridLogicalClock {
    /// Issues a timestamp for a local write, past `after` (what the writer's session has seen).
    /// - Returns: The timestamp, or `clock_offset_exceeded` when `after` leads `physicalMs` by more than the
    ///   maximum offset: following it would adopt a runaway clock, ignoring it would order the write before what
    ///   its session saw.
    public mutating func issue(after: HLCTimestamp?, physicalMs: UInt64) -> Result<HLCTimestamp, MeridianError> {
        if let after {
            do throws(MeridianError) {
                _ = try receive(after, physicalMs: physicalMs)
            } catch {
                let leadMs = after.physicalMs - physicalMs
                return .failure(MeridianError(
                    .clockOffsetExceeded,
                    "This session has seen a write timestamped \(leadMs) ms ahead of \(region)'s clock, beyond max_clock_offset_ms (\(maxOffsetMs) ms), so a write here cannot be ordered after it; nothing was written. One of the two regions' clocks is wrong: retry shortly, or write through \(after.region).",
                    context: ["region": region.rawValue, "lead_ms": String(leadMs), "max_offset_ms": String(maxOffsetMs),
                              "issued_by": after.region.rawValue]))
            }
        }
        return .success(now(physicalMs: physicalMs))
    }
}
