/// One message of the replication stream between two regions.
///
/// A stream is opened by the origin (the region whose log it ships) towards a peer, through the WAN link
/// between them. The origin speaks first with `hello`; the peer answers `welcome` with how much of the
/// origin's log it already holds, durably, which is where shipping resumes. The origin then sends
/// `batch`es (and `heartbeat`s when idle) and the peer answers each with an `ack`. The same stream carries
/// writes forwarded to the peer (`forward`) and their answers (`forwardReply`). Either side may send a
/// `refusal` before closing, saying why.
public enum PeerFrame: Sendable, Hashable {
    /// The origin introduces itself.
    case hello(PeerHello)
    /// The peer holds the origin's log up to `applied`; shipping resumes after it.
    /// `auditWitnessed`: the newest record of the origin's audit trail this peer keeps a checkpoint of (a region
    /// restored from a backup resumes its trail after it).
    case welcome(applied: UInt64, auditWitnessed: UInt64)
    /// Entries of the origin's log covering sequences `from...through`. Entries of keyspaces the peer does not
    /// replicate are left out (residency: they never leave the regions that may hold them); the range still
    /// covers them, so the peer knows nothing is missing. An origin ships entries while their commit's fsync
    /// runs: the peer applies them only up to the origin's latest `durable` point.
    case batch(from: UInt64, through: UInt64, entries: [ReplicationEntry])
    /// The origin's log is durable through `through`: what it shipped up to there may be applied. Sent once a stream
    /// is welcomed and after every commit's fsync; an entry beyond it may still be lost with the origin's commit,
    /// and its number given to another write (``ApplyQueue/takeBatch(through:)``).
    case durable(through: UInt64)
    /// The peer durably applied the origin's log up to `applied` (all that counts toward `majority` and `all`, and
    /// all the origin may trim), and made it readable up to `visible` (at least `applied`: a peer applies entries
    /// before its fsync and acknowledges again once they are durable). `echoMs` is the peer's own clock when it
    /// sent this; the origin returns it in its next heartbeat.
    case ack(applied: UInt64, visible: UInt64, echoMs: UInt64)
    /// Sent by the origin every heartbeat interval: its log's end and its clock, so the peer can tell an idle
    /// origin from a silent one, and `echoMs`, the latest `ack.echoMs` it received from the peer. Every write
    /// the origin answered before that ack arrived is at or below `logHighWater`, so once the peer has applied
    /// up to there it holds everything the origin accepted up to its own time `echoMs`: staleness is bounded
    /// with the peer's clock alone, whatever the clocks' offset. `unreachable`: the regions the origin's own streams
    /// cannot reach now, sorted, its vote in the cluster's health verdicts (``HealthVerdicts``).
    case heartbeat(logHighWater: UInt64, physicalMs: UInt64, echoMs: UInt64, unreachable: [RegionName] = [])
    /// A write sent to the region that takes it (the leader or the key's home).
    case forward(ForwardedWrite)
    /// The answer to a forwarded write or read: what the serving region answered, in the protocol's own terms.
    case forwardReply(ForwardedReply)
    /// A read sent to a region that can serve it at the level asked (the leader for strong reads, an origin
    /// a session or a staleness bound needs).
    case forwardRead(ForwardedRead)
    /// Why the sender is about to close the stream.
    case refusal(code: String, message: String)
    /// A message of a single-leader keyspace's election (heartbeats of its leader, votes, fencing), sent on
    /// the sender's own stream. A leader's heartbeats carry where its term began, so followers can tell the
    /// writes of earlier terms that count from those a deposed leader never shipped.
    case election(keyspace: KeyspaceName, message: ElectionMessage, start: EpochStart?)
    /// An operator asks the receiving region, which leads `keyspace`, to hand it over to `target`
    /// (`POST /v1/admin/failover` at another region).
    case handOverRequest(id: UInt64, keyspace: KeyspaceName, target: RegionName)
    /// The answer to a hand-over request.
    case handOverReply(id: UInt64, outcome: HandOverOutcome)
    /// Anti-entropy: a region asks the receiving peer for its Merkle tree of `keyspace`, or for a page of the
    /// states of some of its buckets.
    case repairRequest(id: UInt64, keyspace: KeyspaceName, RepairRequest)
    /// The answer to a repair request.
    case repairReply(id: UInt64, RepairReply)
    /// The sending region's signed statement of its audit trail's head, and the key it signed with: the receiver
    /// keeps it as a witness of the trail.
    case auditCheckpoint(AuditCheckpoint, publicKey: [UInt8])

    var typeByte: UInt8 {
        switch self {
        case .hello: 1
        case .welcome: 2
        case .batch: 3
        case .ack: 4
        case .heartbeat: 5
        case .forward: 6
        case .forwardReply: 7
        case .refusal: 8
        case .forwardRead: 9
        case .election: 10
        case .handOverRequest: 11
        case .handOverReply: 12
        case .repairRequest: 13
        case .repairReply: 14
        case .auditCheckpoint: 15
        case .durable: 16
        }
    }
}

/// What one step of an anti-entropy round asks a peer for.
public enum RepairRequest: Sendable, Hashable {
    /// The keyspace's Merkle tree, with what the peer held when it read it.
    case tree
    /// One page of the states of the keys in these Merkle buckets, in slot and key order after `after`.
    case states(buckets: [Int], after: Key?)
    /// The slot leaves of these buckets (at most ``RepairBounds/slotBucketsMax``): the tree's second level.
    case slots(buckets: [Int])
    /// One page of the states of the keys in these Merkle slots (at most ``RepairBounds/slotsMax``), in slot and
    /// key order after `after`.
    case slotStates(slots: [Int], after: Key?)
    /// One page of the keys of these Merkle slots with their item hashes (``KeyItemCodec``), in slot and key
    /// order after `after`: the asker then pulls the states of only the keys whose items differ.
    case slotItems(slots: [Int], after: Key?)
    /// The states of these keys (at most ``RepairBounds/keysMax``), as many as fit a page; `next` names the last
    /// one sent when some remain.
    case keyStates(keys: [Key])
    /// The data keys of a sealed keyspace with these ids (only a region of its residency is granted them).
    case dataKeys(ids: [DataKeyID])
    /// Destroy every data key of `subject` (an erasure another region of the residency carries out).
    case erase(subject: Subject)
    /// The ids of data keys the peer erased, in id order after `after` (a region that missed an erasure learns it).
    /// Answered with ``RepairReply/dataKeys(granted:erased:)``, nothing granted.
    case erasedKeys(after: DataKeyID?)
}

/// The most data keys one request names (a batch's entries name at most that many).
public enum DataKeyRequestBounds {
    public static let idsMax = 1_024
}

/// How much of a tree's second level one repair request names.
public enum RepairBounds {
    /// Buckets per slot-leaves request (their reply is 8 KiB per bucket): every bucket of a tree. An asker names
    /// no more than half a frame's worth (``slotBuckets(frameBytesMax:)``).
    public static let slotBucketsMax = MerkleTree.bucketCount

    /// Buckets per slot-leaves request whose reply fits half a frame.
    public static func slotBuckets(frameBytesMax: Int) -> Int {
        max(1, min(slotBucketsMax, frameBytesMax / 2 / (MerkleTree.slotsPerBucket * 32)))
    }
    /// Slots per states or items request.
    public static let slotsMax = 4_096
    /// Keys per key states request.
    public static let keysMax = 1_024
}

/// A peer's Merkle tree of a keyspace and what it held when it read it: its own log's end (every write of its
/// log up to there is in the states that follow) and how far it held each term's writes (single-leader
/// keyspaces).
public struct RepairTree: Sendable, Hashable {
    public let logHighWater: UInt64
    public let keys: UInt64
    public let terms: [TermEnd]
    public let tree: MerkleTree

    public init(logHighWater: UInt64, keys: UInt64, terms: [TermEnd], tree: MerkleTree) {
        self.logHighWater = logHighWater
        self.keys = keys
        self.terms = terms
        self.tree = tree
    }
}

/// The answer to a ``RepairRequest``: transport-neutral.
public enum RepairReply: Sendable, Hashable {
    case tree(RepairTree)
    /// A page of states as ``KeyStateCodec`` encodes them (the asker decodes them with its own bounds), and the
    /// key to continue after when more remain.
    case states(encoded: [UInt8], next: Key?)
    /// Slot leaves as ``MerkleSlots`` encodes them, for the buckets asked for.
    case slots(encoded: [UInt8])
    /// A page of keys and their items as ``KeyItemCodec`` encodes them, and the key to continue after when more remain.
    case items(encoded: [UInt8], next: Key?)
    /// The peer does not serve it: the error's code and sentence.
    case refused(code: String, message: String)
    /// The keys asked for that the peer holds, and those it erased (the rest it never held).
    case dataKeys(granted: [DataKeyGrant], erased: [DataKeyID])
    /// The peer destroyed the subject's keys: the ids it held.
    case erased(ids: [DataKeyID])
}

/// What became of a hand-over request: transport-neutral, so any shell renders it its own way.
public enum HandOverOutcome: Sendable, Hashable {
    /// The leader handed the keyspace over to this region.
    case handedOver(to: RegionName)
    /// The leader did not hand it over: the error's code and sentence.
    case refused(code: String, message: String)
}

/// The first frame of a stream.
public struct PeerHello: Sendable, Hashable {
    /// The stream protocol version the origin speaks.
    public let protocolVersion: UInt8
    /// The cluster's name; a stream between regions of different clusters is refused.
    public let cluster: String
    /// The region opening the stream (whose log it ships).
    public let from: RegionName
    /// The region the origin means to reach; a peer that is another region refuses the stream.
    public let to: RegionName

    public init(protocolVersion: UInt8 = PeerFrameCodec.protocolVersion, cluster: String, from: RegionName, to: RegionName) {
        self.protocolVersion = protocolVersion
        self.cluster = cluster
        self.from = from
        self.to = to
    }
}

extension ElectionMessage {
    /// The message's kind byte in an election frame.
    var kind: UInt8 {
        switch self {
        case .heartbeat: 1
        case .heartbeatAck: 2
        case .voteRequest: 3
        case .vote: 4
        case .newerEpoch: 5
        case .preVoteRequest: 6
        case .preVote: 7
        case .timeoutNow: 8
        case .transferVoteRequest: 9
        }
    }

    /// The epoch every election message names.
    var epoch: UInt64 {
        switch self {
        case .heartbeat(let epoch, _), .heartbeatAck(let epoch, _), .voteRequest(let epoch, _), .vote(let epoch, _), .newerEpoch(let epoch, _),
             .preVoteRequest(let epoch, _), .preVote(let epoch, _), .timeoutNow(let epoch), .transferVoteRequest(let epoch, _):
            epoch
        }
    }
}

/// The binary form of ``PeerFrame``s on a replication stream.
///
/// Layout (integers big-endian): `u32 length` (bytes after it), `u8 type`, then the payload:
///
///     1 hello        u8 protocolVersion, str8 cluster, str8 from, str8 to
///     2 welcome      u64 applied, u64 auditWitnessed
///     3 batch        u64 from, u64 through, u32 count, count × EntryCodec frame
///     4 ack          u64 applied, u64 visible (≥ applied), u64 echoMs
///     5 heartbeat    u64 logHighWater, u64 physicalMs, u64 echoMs, u8 count × str8 unreachable region
///     6 forward      u64 id, str8 keyspace, str16 key, u8 operation, str8 contentType, u32 + value,
///                    opt(str8 ack), u8 precondition: 0 none, 1 exists, 2 versions (u8 count × version),
///                    opt(str16 session), opt(str16 context), opt(str8 principal), opt(str8 idempotencyKey),
///                       opt(str8 subject)
///     7 forwardReply u64 id, u8 answer: 1 read (str8 level, opt(u64 stalenessMs), opt(u64 epoch), str16 session,
///                    opt(u32 + state)); 2 written (version, str8 ack, u8 count × str8 region, str8 operation,
///                    opt(u64 epoch), str16 session, opt(u32 + CRDT value), u8 replayed); 3 refused (str8 code, str16 message,
///                    u8 applied: 0 as the code implies, 1 no, 2 maybe, u8 count × (str8 name, str16 value),
///                    opt(str16 session), opt(version))
///     8 refusal      str8 code, str16 message
///     9 forwardRead  u64 id, str8 keyspace, str16 key, u8 form (1 value, 2 crdt), opt(str8 level),
///                    opt(u64 maxStalenessMs), opt(str16 session), opt(str8 principal)
///    10 election     str8 keyspace, u8 kind, kind's fields, u8 hasStart, [u64 epoch, str8 leader, u8 count,
///                    count × (str8 origin, u64 sequence), u8 terms, terms × (u64 epoch, str8 leader, u64 last)];
///                    kinds: 1 heartbeat (u64 epoch, u64 sentMs),
///                    2 heartbeatAck (same), 3 voteRequest (u64 epoch, u64 positionEpoch, u64 positionSequence),
///                    4 vote (u64 epoch, u8 granted), 5 newerEpoch (u64 epoch, str8 leader, empty for none),
///                    6 preVoteRequest (as 3), 7 preVote (as 4), 8 timeoutNow (u64 epoch),
///                    9 transferVoteRequest (as 3)
///    11 handOverRequest u64 id, str8 keyspace, str8 target
///    12 handOverReply   u64 id, u8 outcome: 1 handed over (str8 region), 2 refused (str8 code, str16 message)
///    13 repairRequest   u64 id, str8 keyspace, u8 kind: 1 tree; 2 states (u16 count, count × u16 bucket,
///                       u8 hasAfter, [str16 after])
///    15 auditCheckpoint str8 region, u64 sequence, 32-byte hash, 64-byte Ed25519 signature, 32-byte public key
///    16 durable         u64 through
///    14 repairReply     u64 id, u8 kind: 1 tree (u64 logHighWater, u64 keys, u8 terms, terms × (u64 epoch,
///                       str8 leader, u64 last), u32 + tree leaves); 2 states (u8 hasNext, [str16 next],
///                       u32 + states); 3 refused (str8 code, str16 message); 4 data keys (u16 granted,
///                       granted × (16-byte id, str8 subject, 32-byte key), u16 erased, erased × 16-byte id);
///                       5 erased (u16 count, count × 16-byte id)
///                    (repairRequest kinds 3 data keys: u16 count, count × 16-byte id; 4 erase: str8 subject;
///                    5 erased keys: u8 hasAfter, [16-byte id]; 6 slot leaves: u16 count, count × u16 bucket;
///                    7 slot states and 8 slot items: u16 count, count × u16 slot, u8 hasAfter, [str16 after];
///                    9 key states: u16 count, count × str16 key; repairReply kinds 6 slot leaves: u32 + 8 KiB per
///                    bucket asked for; 7 key items: u8 hasNext, [str16 next], u32 + items)
///
/// where `str8`/`str16` are UTF-8 with a u8/u16 length, `opt(x)` is `u8 present` then `x` when it is 1, `version`
/// is `str8 origin, u64 sequence, u64 hlcPhysicalMs, u32 hlcLogical`, and a state is ``KeyStateCodec``'s.
/// Decoding checks the length against `frameBytesMax` before buffering and validates every field; bad
/// input gives a typed error, never a trap.
public struct PeerFrameCodec: Sendable {
    /// The stream protocol version this build speaks.
    public static let protocolVersion: UInt8 = 13
    /// The most fields of context a forwarded refusal carries.
    public static let refusalContextMax = 32

    /// Decodes the entries inside batches.
    public let entryCodec: EntryCodec
    /// The largest frame accepted, length prefix included.
    public let frameBytesMax: Int

    /// Creates a codec.
    /// - Parameters:
    ///   - valueBytesMax: The largest value an entry or forwarded write may carry.
    ///   - frameBytesMax: The largest frame; at least one entry of the largest value must fit.
    public init(valueBytesMax: Int, frameBytesMax: Int) {
        entryCodec = EntryCodec(valueBytesMax: valueBytesMax)
        self.frameBytesMax = max(frameBytesMax, entryCodec.frameBytesMax + 64, valueBytesMax + 70_000)
    }

    /// Appends one frame to `buffer`.
    public func encode(_ frame: PeerFrame, into buffer: inout [UInt8]) {
        let start = buffer.count
        buffer += [0, 0, 0, 0, frame.typeByte]
        switch frame {
        case .hello(let hello):
            buffer.append(hello.protocolVersion)
            appendString8(hello.cluster, to: &buffer)
            appendString8(hello.from.rawValue, to: &buffer)
            appendString8(hello.to.rawValue, to: &buffer)
        case .welcome(let applied, let auditWitnessed):
            append(applied, to: &buffer)
            append(auditWitnessed, to: &buffer)
        case .durable(let through):
            append(through, to: &buffer)
        case .ack(let applied, let visible, let echoMs):
            append(applied, to: &buffer)
            append(visible, to: &buffer)
            append(echoMs, to: &buffer)
        case .batch(let from, let through, let entries):
            append(from, to: &buffer)
            append(through, to: &buffer)
            append(UInt32(entries.count), to: &buffer)
            for entry in entries { entryCodec.encode(entry, into: &buffer) }
        case .heartbeat(let logHighWater, let physicalMs, let echoMs, let unreachable):
            append(logHighWater, to: &buffer)
            append(physicalMs, to: &buffer)
            append(echoMs, to: &buffer)
            let kept = unreachable.prefix(Int(UInt8.max))
            buffer.append(UInt8(kept.count))
            for region in kept { appendString8(region.rawValue, to: &buffer) }
        case .forward(let write):
            append(write.id, to: &buffer)
            appendString8(write.keyspace.rawValue, to: &buffer)
            appendString16(write.key.rawValue, to: &buffer)
            buffer.append(write.operation.rawValue)
            appendString8(write.contentType, to: &buffer)
            append(UInt32(write.value.count), to: &buffer)
            buffer += write.value
            appendOptional(write.options.ack, to: &buffer) { appendString8($0.rawValue, to: &$1) }
            switch write.options.precondition {
            case nil:
                buffer.append(0)
            case .exists:
                buffer.append(1)
            case .versionIsOneOf(let versions):
                buffer.append(2)
                let kept = versions.prefix(WriteOptions.preconditionVersionsMax)
                buffer.append(UInt8(kept.count))
                for version in kept { appendVersion(version, to: &buffer) }
            }
            appendOptional(write.options.session, to: &buffer) { appendString16($0, to: &$1) }
            appendOptional(write.options.context, to: &buffer) { appendString16($0, to: &$1) }
            appendOptional(write.options.principal, to: &buffer) { appendString8($0, to: &$1) }
            appendOptional(write.options.idempotencyKey, to: &buffer) { appendString8($0.rawValue, to: &$1) }
            appendOptional(write.options.subject, to: &buffer) { appendString8($0.rawValue, to: &$1) }
        case .forwardReply(let reply):
            append(reply.id, to: &buffer)
            appendAnswer(reply.answer, to: &buffer)
        case .refusal(let code, let message):
            appendString8(code, to: &buffer)
            appendString16(message, to: &buffer)
        case .forwardRead(let read):
            append(read.id, to: &buffer)
            appendString8(read.keyspace.rawValue, to: &buffer)
            appendString16(read.key.rawValue, to: &buffer)
            buffer.append(read.form.rawValue)
            appendOptional(read.options.consistency, to: &buffer) { appendString8($0.rawValue, to: &$1) }
            appendOptional(read.options.maxStalenessMs, to: &buffer) { append($0, to: &$1) }
            appendOptional(read.options.session, to: &buffer) { appendString16($0, to: &$1) }
            appendOptional(read.options.principal, to: &buffer) { appendString8($0, to: &$1) }
        case .handOverRequest(let id, let keyspace, let target):
            append(id, to: &buffer)
            appendString8(keyspace.rawValue, to: &buffer)
            appendString8(target.rawValue, to: &buffer)
        case .handOverReply(let id, let outcome):
            append(id, to: &buffer)
            switch outcome {
            case .handedOver(let region):
                buffer.append(1)
                appendString8(region.rawValue, to: &buffer)
            case .refused(let code, let message):
                buffer.append(2)
                appendString8(code, to: &buffer)
                appendString16(message, to: &buffer)
            }
        case .repairRequest(let id, let keyspace, let request):
            append(id, to: &buffer)
            appendString8(keyspace.rawValue, to: &buffer)
            switch request {
            case .tree:
                buffer.append(1)
            case .states(let buckets, let after):
                buffer.append(2)
                let kept = buckets.prefix(MerkleTree.bucketCount)
                append(UInt16(kept.count), to: &buffer)
                for bucket in kept { append(UInt16(clamping: bucket), to: &buffer) }
                buffer.append(after == nil ? 0 : 1)
                if let after { appendString16(after.rawValue, to: &buffer) }
            case .dataKeys(let ids):
                buffer.append(3)
                appendKeyIDs(ids, to: &buffer)
            case .erase(let subject):
                buffer.append(4)
                appendString8(subject.rawValue, to: &buffer)
            case .erasedKeys(let after):
                buffer.append(5)
                buffer.append(after == nil ? 0 : 1)
                if let after { buffer += after.bytes }
            case .slots(let buckets):
                precondition(buckets.count <= RepairBounds.slotBucketsMax, "a slot leaves request names at most \(RepairBounds.slotBucketsMax) buckets")
                buffer.append(6)
                let kept = buckets.prefix(RepairBounds.slotBucketsMax)
                append(UInt16(kept.count), to: &buffer)
                for bucket in kept { append(UInt16(clamping: bucket), to: &buffer) }
            case .slotStates(let slots, let after), .slotItems(let slots, let after):
                precondition(slots.count <= RepairBounds.slotsMax, "a repair request names at most \(RepairBounds.slotsMax) slots")
                if case .slotStates = request { buffer.append(7) } else { buffer.append(8) }
                let kept = slots.prefix(RepairBounds.slotsMax)
                append(UInt16(kept.count), to: &buffer)
                for slot in kept { append(UInt16(clamping: slot), to: &buffer) }
                buffer.append(after == nil ? 0 : 1)
                if let after { appendString16(after.rawValue, to: &buffer) }
            case .keyStates(let keys):
                precondition(keys.count <= RepairBounds.keysMax, "a key states request names at most \(RepairBounds.keysMax) keys")
                buffer.append(9)
                let kept = keys.prefix(RepairBounds.keysMax)
                append(UInt16(kept.count), to: &buffer)
                for key in kept { appendString16(key.rawValue, to: &buffer) }
            }
        case .repairReply(let id, let reply):
            append(id, to: &buffer)
            switch reply {
            case .tree(let tree):
                buffer.append(1)
                append(tree.logHighWater, to: &buffer)
                append(tree.keys, to: &buffer)
                let terms = tree.terms.prefix(EpochStart.termsMax)
                buffer.append(UInt8(terms.count))
                for term in terms {
                    append(term.epoch, to: &buffer)
                    appendString8(term.leader.rawValue, to: &buffer)
                    append(term.last, to: &buffer)
                }
                let leaves = tree.tree.encoded
                append(UInt32(leaves.count), to: &buffer)
                buffer += leaves
            case .states(let encoded, let next):
                buffer.append(2)
                buffer.append(next == nil ? 0 : 1)
                if let next { appendString16(next.rawValue, to: &buffer) }
                append(UInt32(encoded.count), to: &buffer)
                buffer += encoded
            case .refused(let code, let message):
                buffer.append(3)
                appendString8(code, to: &buffer)
                appendString16(message, to: &buffer)
            case .dataKeys(let granted, let erased):
                buffer.append(4)
                let kept = granted.prefix(DataKeyRequestBounds.idsMax)
                append(UInt16(kept.count), to: &buffer)
                for grant in kept {
                    buffer += grant.id.bytes
                    appendString8(grant.subject.rawValue, to: &buffer)
                    buffer += grant.key
                }
                appendKeyIDs(erased, to: &buffer)
            case .erased(let ids):
                buffer.append(5)
                appendKeyIDs(ids, to: &buffer)
            case .slots(let encoded):
                buffer.append(6)
                append(UInt32(encoded.count), to: &buffer)
                buffer += encoded
            case .items(let encoded, let next):
                buffer.append(7)
                buffer.append(next == nil ? 0 : 1)
                if let next { appendString16(next.rawValue, to: &buffer) }
                append(UInt32(encoded.count), to: &buffer)
                buffer += encoded
            }
        case .auditCheckpoint(let checkpoint, let key):
            appendString8(checkpoint.region.rawValue, to: &buffer)
            append(checkpoint.sequence, to: &buffer)
            buffer += checkpoint.hash.prefix(32) + [UInt8](repeating: 0, count: max(0, 32 - checkpoint.hash.count))
            buffer += checkpoint.signature.prefix(64) + [UInt8](repeating: 0, count: max(0, 64 - checkpoint.signature.count))
            buffer += key.prefix(32) + [UInt8](repeating: 0, count: max(0, 32 - key.count))
        case .election(let keyspace, let message, let start):
            appendString8(keyspace.rawValue, to: &buffer)
            buffer.append(message.kind)
            append(message.epoch, to: &buffer)
            switch message {
            case .heartbeat(_, let sentMs), .heartbeatAck(_, let sentMs):
                append(sentMs, to: &buffer)
            case .voteRequest(_, let position), .preVoteRequest(_, let position), .transferVoteRequest(_, let position):
                append(position.epoch, to: &buffer)
                append(position.sequence, to: &buffer)
            case .vote(_, let granted), .preVote(_, let granted):
                buffer.append(granted ? 1 : 0)
            case .newerEpoch(_, let leader):
                appendString8(leader?.rawValue ?? "", to: &buffer)
            case .timeoutNow:
                break
            }
            if let start {
                let applied = start.applied.sorted { $0.key < $1.key }.prefix(Self.originsMax)
                buffer.append(1)
                append(start.epoch, to: &buffer)
                appendString8(start.leader.rawValue, to: &buffer)
                buffer.append(UInt8(applied.count))
                for (origin, sequence) in applied {
                    appendString8(origin.rawValue, to: &buffer)
                    append(sequence, to: &buffer)
                }
                buffer.append(UInt8(start.terms.count))
                for term in start.terms {
                    append(term.epoch, to: &buffer)
                    appendString8(term.leader.rawValue, to: &buffer)
                    append(term.last, to: &buffer)
                }
            } else {
                buffer.append(0)
            }
        }
        let length = UInt32(buffer.count - start - 4)
        withUnsafeBytes(of: length.bigEndian) { bytes in
            for (offset, byte) in bytes.enumerated() { buffer[start + offset] = byte }
        }
    }

    /// Encodes one frame.
    public func encode(_ frame: PeerFrame) -> [UInt8] {
        var buffer: [UInt8] = []
        encode(frame, into: &buffer)
        return buffer
    }

    /// The body length announced by a frame whose first four bytes are `prefix`, checked against the limit.
    /// - Throws: `codec_length_mismatch` when the frame would exceed `frameBytesMax` (or is empty).
    public func announcedLength(_ prefix: UInt32) throws(MeridianError) -> Int {
        let length = Int(prefix)
        guard length >= 1, length + 4 <= frameBytesMax else {
            throw MeridianError(.codecLengthMismatch, "The peer frame announces \(length) bytes; frames hold 1 to \(frameBytesMax - 4).",
                                context: ["frame_bytes": String(length)])
        }
        return length
    }

    /// Decodes the first frame of a stream buffer.
    /// - Returns: The frame and the bytes it used, or nil when the buffer does not yet hold a whole frame.
    /// - Throws: `MeridianError` when the bytes cannot be a valid frame.
    public func decodeFrame(_ bytes: ArraySlice<UInt8>) throws(MeridianError) -> (PeerFrame, Int)? {
        var reader = ByteReader(bytes)
        guard let prefix = reader.readUInt32() else { return nil }
        let length = try announcedLength(prefix)
        guard let body = reader.take(length) else { return nil }
        return (try decodeBody(body), 4 + length)
    }

    /// Decodes a frame body (the bytes after the length prefix).
    public func decodeBody(_ bytes: ArraySlice<UInt8>) throws(MeridianError) -> PeerFrame {
        var body = ByteReader(bytes)
        let type = try body.required(body.readUInt8(), "frame_type")
        let frame: PeerFrame
        switch type {
        case 1:
            let version = try body.required(body.readUInt8(), "protocol_version")
            guard version == Self.protocolVersion else {
                throw MeridianError(.codecUnsupportedVersion, "The peer speaks replication protocol \(version); this node speaks \(Self.protocolVersion). Upgrade the older region.",
                                    context: ["protocol_version": String(version)])
            }
            let cluster = try string8(&body, "cluster")
            let from = try RegionName(try string8(&body, "from"))
            let to = try RegionName(try string8(&body, "to"))
            frame = .hello(PeerHello(protocolVersion: version, cluster: cluster, from: from, to: to))
        case 2:
            frame = .welcome(applied: try sequenceField(&body, "applied", minimum: 0), auditWitnessed: try sequenceField(&body, "audit_witnessed", minimum: 0))
        case 3:
            let from = try sequenceField(&body, "from", minimum: 1)
            let through = try sequenceField(&body, "through", minimum: 1)
            guard from <= through else {
                throw MeridianError(.codecInvalidField, "The batch covers \(from) through \(through), an empty range.", context: ["field": "through"])
            }
            let count = Int(try body.required(body.readUInt32(), "entry_count"))
            guard UInt64(count) <= through - from + 1 else {
                throw MeridianError(.codecInvalidField, "The batch holds \(count) entries but covers only \(through - from + 1) sequences.",
                                    context: ["field": "entry_count"])
            }
            var entries: [ReplicationEntry] = []
            entries.reserveCapacity(min(count, 4096))
            var remaining = body.rest()
            for _ in 0..<count {
                guard let (entry, used) = try entryCodec.decodeFrame(remaining) else {
                    throw MeridianError(.codecTruncated, "The batch ends inside entry \(entries.count + 1) of \(count).", context: ["field": "entries"])
                }
                guard (from...through).contains(entry.sequence), entry.sequence > (entries.last?.sequence ?? 0) else {
                    throw MeridianError(.codecInvalidField, "The batch covering \(from) through \(through) holds entry \(entry.sequence) out of range or out of order.",
                                        context: ["field": "entries"])
                }
                entries.append(entry)
                remaining = remaining.dropFirst(used)
            }
            body = ByteReader(remaining)
            frame = .batch(from: from, through: through, entries: entries)
        case 4:
            let applied = try sequenceField(&body, "applied", minimum: 0)
            frame = .ack(applied: applied, visible: try sequenceField(&body, "visible", minimum: applied), echoMs: try sequenceField(&body, "echo_ms", minimum: 0))
        case 5:
            let logHighWater = try sequenceField(&body, "log_high_water", minimum: 0)
            let physicalMs = try sequenceField(&body, "physical_ms", minimum: 0)
            let echoMs = try sequenceField(&body, "echo_ms", minimum: 0)
            let count = try body.required(body.readUInt8(), "unreachable")
            var unreachable: [RegionName] = []
            for _ in 0..<count { unreachable.append(try RegionName(try string8(&body, "unreachable"))) }
            frame = .heartbeat(logHighWater: logHighWater, physicalMs: physicalMs, echoMs: echoMs, unreachable: unreachable)
        case 6:
            let id = try body.required(body.readUInt64(), "id")
            let keyspace = try KeyspaceName(try string8(&body, "keyspace"))
            let key = try Key(try string16(&body, "key"))
            let operationByte = try body.required(body.readUInt8(), "operation")
            guard let operation = Operation(rawValue: operationByte) else {
                throw MeridianError(.codecInvalidField, "The forwarded write has operation \(operationByte); known operations are 1 (put), 2 (delete) and 3 (merge).",
                                    context: ["field": "operation"])
            }
            let contentType = try string8(&body, "content_type")
            let value = try blob(&body, "value", max: entryCodec.valueBytesMax)
            let options = try writeOptions(&body)
            frame = .forward(ForwardedWrite(id: id, keyspace: keyspace, key: key, operation: operation, contentType: contentType, value: value, options: options))
        case 7:
            let id = try body.required(body.readUInt64(), "id")
            frame = .forwardReply(ForwardedReply(id: id, answer: try answer(&body)))
        case 8:
            frame = .refusal(code: try string8(&body, "code"), message: try string16(&body, "message"))
        case 9:
            let id = try body.required(body.readUInt64(), "id")
            let keyspace = try KeyspaceName(try string8(&body, "keyspace"))
            let key = try Key(try string16(&body, "key"))
            let formByte = try body.required(body.readUInt8(), "form")
            guard let form = ForwardedRead.Form(rawValue: formByte) else {
                throw MeridianError(.codecInvalidField, "The forwarded read has form \(formByte); it is 1 (value) or 2 (crdt).", context: ["field": "form"])
            }
            let consistency = try optional(&body, "has_consistency") { body throws(MeridianError) in try consistencyLevel(&body) }
            let maxStalenessMs = try optional(&body, "has_max_staleness_ms") { body throws(MeridianError) in try sequenceField(&body, "max_staleness_ms", minimum: 0) }
            let session = try optional(&body, "has_session") { body throws(MeridianError) in try string16(&body, "session") }
            let principal = try optional(&body, "has_principal") { body throws(MeridianError) in try principalName(&body) }
            frame = .forwardRead(ForwardedRead(id: id, keyspace: keyspace, key: key, form: form,
                                               options: ReadOptions(consistency: consistency, maxStalenessMs: maxStalenessMs, session: session, principal: principal)))
        case 10:
            frame = try election(&body)
        case 11:
            let id = try body.required(body.readUInt64(), "id")
            frame = .handOverRequest(id: id, keyspace: try KeyspaceName(try string8(&body, "keyspace")), target: try RegionName(try string8(&body, "target")))
        case 12:
            let id = try body.required(body.readUInt64(), "id")
            switch try body.required(body.readUInt8(), "outcome") {
            case 1: frame = .handOverReply(id: id, outcome: .handedOver(to: try RegionName(try string8(&body, "region"))))
            case 2: frame = .handOverReply(id: id, outcome: .refused(code: try string8(&body, "code"), message: try string16(&body, "message")))
            case let other:
                throw MeridianError(.codecInvalidField, "The hand-over reply has outcome \(other); it is 1 (handed over) or 2 (refused).", context: ["field": "outcome"])
            }
        case 13:
            frame = try repairRequest(&body)
        case 14:
            frame = try repairReply(&body)
        case 15:
            let region = try RegionName(try string8(&body, "region"))
            let sequence = try body.required(body.readUInt64(), "sequence")
            let hash = Array(try body.required(body.take(32), "hash"))
            let signature = Array(try body.required(body.take(64), "signature"))
            let key = Array(try body.required(body.take(32), "public_key"))
            frame = .auditCheckpoint(AuditCheckpoint(region: region, sequence: sequence, hash: hash, signature: signature), publicKey: key)
        case 16:
            frame = .durable(through: try sequenceField(&body, "through", minimum: 0))
        default:
            throw MeridianError(.codecInvalidField, "The peer frame has type \(type); this node knows types 1 to 16.", context: ["field": "frame_type"])
        }
        guard body.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "The peer frame's fields end \(body.remaining) bytes before its announced length.",
                                context: ["unused_bytes": String(body.remaining)])
        }
        return frame
    }

    /// The most origins an epoch's start names (regions of a cluster).
    public static let originsMax = 64

    private func repairRequest(_ body: inout ByteReader) throws(MeridianError) -> PeerFrame {
        let id = try body.required(body.readUInt64(), "id")
        let keyspace = try KeyspaceName(try string8(&body, "keyspace"))
        let kind = try body.required(body.readUInt8(), "repair_kind")
        switch kind {
        case 1:
            return .repairRequest(id: id, keyspace: keyspace, .tree)
        case 2:
            let buckets = try numbers(&body, "bucket", countMax: MerkleTree.bucketCount, below: MerkleTree.bucketCount)
            let after = try flag(&body, "has_after") ? try Key(try string16(&body, "after")) : nil
            return .repairRequest(id: id, keyspace: keyspace, .states(buckets: buckets, after: after))
        case 6:
            return .repairRequest(id: id, keyspace: keyspace, .slots(buckets: try numbers(&body, "bucket", countMax: RepairBounds.slotBucketsMax,
                                                                                         below: MerkleTree.bucketCount)))
        case 7, 8:
            let slots = try numbers(&body, "slot", countMax: RepairBounds.slotsMax, below: MerkleTree.slotCount)
            let after = try flag(&body, "has_after") ? try Key(try string16(&body, "after")) : nil
            return .repairRequest(id: id, keyspace: keyspace, kind == 7 ? .slotStates(slots: slots, after: after) : .slotItems(slots: slots, after: after))
        case 9:
            let count = Int(try body.required(body.readUInt16(), "key_count"))
            guard count <= RepairBounds.keysMax else {
                throw MeridianError(.codecInvalidField, "The repair request names \(count) keys; the limit is \(RepairBounds.keysMax).", context: ["field": "key_count"])
            }
            var keys: [Key] = []
            for _ in 0..<count { keys.append(try Key(try string16(&body, "key"))) }
            return .repairRequest(id: id, keyspace: keyspace, .keyStates(keys: keys))
        case 3:
            return .repairRequest(id: id, keyspace: keyspace, .dataKeys(ids: try keyIDs(&body, "data_key")))
        case 4:
            return .repairRequest(id: id, keyspace: keyspace, .erase(subject: try Subject(try string8(&body, "subject"))))
        case 5:
            let after = try flag(&body, "has_after") ? try DataKeyID(bytes: Array(try body.required(body.take(DataKeyID.byteCount), "after"))) : nil
            return .repairRequest(id: id, keyspace: keyspace, .erasedKeys(after: after))
        case let other:
            throw MeridianError(.codecInvalidField, "The repair request has kind \(other); it is 1 (tree), 2 (states), 3 (data keys), 4 (erase), 5 (erased keys), 6 (slot leaves), 7 (slot states), 8 (slot items) or 9 (key states).",
                                context: ["field": "repair_kind"])
        }
    }

    /// A u16 count of u16 numbers (buckets or slots), each below `below`.
    private func numbers(_ body: inout ByteReader, _ field: String, countMax: Int, below: Int) throws(MeridianError) -> [Int] {
        let count = Int(try body.required(body.readUInt16(), field + "_count"))
        guard count <= countMax else {
            throw MeridianError(.codecInvalidField, "The repair request names \(count) of \(field)s; the limit is \(countMax).", context: ["field": field + "_count"])
        }
        var numbers: [Int] = []
        for _ in 0..<count {
            let number = Int(try body.required(body.readUInt16(), field))
            guard number < below else {
                throw MeridianError(.codecInvalidField, "The repair request names \(field) \(number); they are 0 to \(below - 1).", context: ["field": field])
            }
            numbers.append(number)
        }
        return numbers
    }

    private func repairReply(_ body: inout ByteReader) throws(MeridianError) -> PeerFrame {
        let id = try body.required(body.readUInt64(), "id")
        switch try body.required(body.readUInt8(), "repair_kind") {
        case 1:
            let logHighWater = try sequenceField(&body, "log_high_water", minimum: 0)
            let keys = try sequenceField(&body, "keys", minimum: 0)
            let count = Int(try body.required(body.readUInt8(), "terms"))
            guard count <= EpochStart.termsMax else {
                throw MeridianError(.codecInvalidField, "The repair reply names \(count) terms; the limit is \(EpochStart.termsMax).", context: ["field": "terms"])
            }
            var terms: [TermEnd] = []
            for _ in 0..<count {
                terms.append(TermEnd(epoch: try sequenceField(&body, "term_epoch", minimum: 1), leader: try RegionName(try string8(&body, "term_leader")),
                                     last: try sequenceField(&body, "term_last", minimum: 0)))
            }
            let tree = try MerkleTree(encoded: try blob(&body, "tree", max: MerkleTree.bucketCount * 64))
            return .repairReply(id: id, .tree(RepairTree(logHighWater: logHighWater, keys: keys, terms: terms, tree: tree)))
        case 2:
            let next = try flag(&body, "has_next") ? try Key(try string16(&body, "next")) : nil
            return .repairReply(id: id, .states(encoded: try blob(&body, "states", max: frameBytesMax), next: next))
        case 3:
            return .repairReply(id: id, .refused(code: try string8(&body, "code"), message: try string16(&body, "message")))
        case 4:
            let count = Int(try body.required(body.readUInt16(), "granted"))
            guard count <= DataKeyRequestBounds.idsMax else {
                throw MeridianError(.codecInvalidField, "The reply grants \(count) data keys; the limit is \(DataKeyRequestBounds.idsMax).", context: ["field": "granted"])
            }
            var granted: [DataKeyGrant] = []
            for _ in 0..<count {
                let id = try DataKeyID(bytes: Array(try body.required(body.take(DataKeyID.byteCount), "data_key")))
                let subject = try Subject(try string8(&body, "subject"))
                granted.append(DataKeyGrant(id: id, subject: subject, key: Array(try body.required(body.take(DataKey.byteCount), "key"))))
            }
            return .repairReply(id: id, .dataKeys(granted: granted, erased: try keyIDs(&body, "erased")))
        case 5:
            return .repairReply(id: id, .erased(ids: try keyIDs(&body, "erased")))
        case 6:
            return .repairReply(id: id, .slots(encoded: try blob(&body, "slots", max: RepairBounds.slotBucketsMax * MerkleTree.slotsPerBucket * 32)))
        case 7:
            let next = try flag(&body, "has_next") ? try Key(try string16(&body, "next")) : nil
            return .repairReply(id: id, .items(encoded: try blob(&body, "items", max: frameBytesMax), next: next))
        case let other:
            throw MeridianError(.codecInvalidField, "The repair reply has kind \(other); it is 1 (tree), 2 (states), 3 (refused), 4 (data keys), 5 (erased), 6 (slot leaves) or 7 (key items).",
                                context: ["field": "repair_kind"])
        }
    }

    private func keyIDs(_ body: inout ByteReader, _ field: String) throws(MeridianError) -> [DataKeyID] {
        let count = Int(try body.required(body.readUInt16(), field + "_count"))
        guard count <= DataKeyRequestBounds.idsMax else {
            throw MeridianError(.codecInvalidField, "The frame names \(count) data keys; the limit is \(DataKeyRequestBounds.idsMax).", context: ["field": field + "_count"])
        }
        var ids: [DataKeyID] = []
        for _ in 0..<count { ids.append(try DataKeyID(bytes: Array(try body.required(body.take(DataKeyID.byteCount), field)))) }
        return ids
    }

    private func flag(_ body: inout ByteReader, _ field: String) throws(MeridianError) -> Bool {
        let value = try body.required(body.readUInt8(), field)
        guard value <= 1 else {
            throw MeridianError(.codecInvalidField, "The peer frame's \(field) is \(value); it is 0 or 1.", context: ["field": field])
        }
        return value == 1
    }

    private func election(_ body: inout ByteReader) throws(MeridianError) -> PeerFrame {
        let keyspace = try KeyspaceName(try string8(&body, "keyspace"))
        let kind = try body.required(body.readUInt8(), "election_kind")
        let epoch = try sequenceField(&body, "epoch", minimum: 1)
        let message: ElectionMessage
        switch kind {
        case 1: message = .heartbeat(epoch: epoch, sentMs: try sequenceField(&body, "sent_ms", minimum: 0))
        case 2: message = .heartbeatAck(epoch: epoch, sentMs: try sequenceField(&body, "sent_ms", minimum: 0))
        case 3, 6, 9:
            let positionEpoch = try sequenceField(&body, "position_epoch", minimum: 0)
            let position = LogPosition(epoch: positionEpoch, sequence: try sequenceField(&body, "position_sequence", minimum: 0))
            message = kind == 3 ? .voteRequest(epoch: epoch, position: position)
                : kind == 6 ? .preVoteRequest(epoch: epoch, position: position) : .transferVoteRequest(epoch: epoch, position: position)
        case 8:
            message = .timeoutNow(epoch: epoch)
        case 4, 7:
            let granted = try body.required(body.readUInt8(), "granted")
            guard granted <= 1 else {
                throw MeridianError(.codecInvalidField, "The vote's granted flag is \(granted); it is 0 or 1.", context: ["field": "granted"])
            }
            message = kind == 4 ? .vote(epoch: epoch, granted: granted == 1) : .preVote(epoch: epoch, granted: granted == 1)
        case 5:
            let leader = try string8(&body, "leader")
            message = .newerEpoch(epoch: epoch, leader: leader.isEmpty ? nil : try RegionName(leader))
        default:
            throw MeridianError(.codecInvalidField, "The election message has kind \(kind); known kinds are 1 to 9.", context: ["field": "election_kind"])
        }
        let hasStart = try body.required(body.readUInt8(), "has_start")
        guard hasStart <= 1 else {
            throw MeridianError(.codecInvalidField, "The election message's start flag is \(hasStart); it is 0 or 1.", context: ["field": "has_start"])
        }
        guard hasStart == 1 else { return .election(keyspace: keyspace, message: message, start: nil) }
        let startEpoch = try sequenceField(&body, "start_epoch", minimum: 1)
        let leader = try RegionName(try string8(&body, "start_leader"))
        let count = Int(try body.required(body.readUInt8(), "start_origins"))
        guard count <= Self.originsMax else {
            throw MeridianError(.codecInvalidField, "The epoch's start names \(count) origins; the limit is \(Self.originsMax).", context: ["field": "start_origins"])
        }
        var applied: [RegionName: UInt64] = [:]
        for _ in 0..<count {
            let origin = try RegionName(try string8(&body, "start_origin"))
            guard applied[origin] == nil else {
                throw MeridianError(.codecInvalidField, "The epoch's start names origin \(origin) twice.", context: ["field": "start_origin"])
            }
            applied[origin] = try sequenceField(&body, "start_sequence", minimum: 0)
        }
        let termCount = Int(try body.required(body.readUInt8(), "start_terms"))
        guard termCount <= EpochStart.termsMax else {
            throw MeridianError(.codecInvalidField, "The epoch's start names \(termCount) earlier terms; the limit is \(EpochStart.termsMax).", context: ["field": "start_terms"])
        }
        var terms: [TermEnd] = []
        for _ in 0..<termCount {
            let termEpoch = try sequenceField(&body, "term_epoch", minimum: 1)
            guard termEpoch < startEpoch, !terms.contains(where: { $0.epoch == termEpoch }) else {
                throw MeridianError(.codecInvalidField, "The epoch's start names term \(termEpoch) twice or not before its own epoch \(startEpoch).",
                                    context: ["field": "term_epoch"])
            }
            terms.append(TermEnd(epoch: termEpoch, leader: try RegionName(try string8(&body, "term_leader")), last: try sequenceField(&body, "term_last", minimum: 0)))
        }
        return .election(keyspace: keyspace, message: message, start: EpochStart(epoch: startEpoch, leader: leader, applied: applied, terms: terms))
    }

    // MARK: - Fields

    private func sequenceField(_ body: inout ByteReader, _ field: String, minimum: UInt64) throws(MeridianError) -> UInt64 {
        let value = try body.required(body.readUInt64(), field)
        guard value >= minimum, value <= UInt64(Int64.max) else {
            throw MeridianError(.codecInvalidField, "The peer frame's \(field) \(value) is out of range.", context: ["field": field])
        }
        return value
    }

    private func string8(_ body: inout ByteReader, _ field: String) throws(MeridianError) -> String {
        try body.utf8(Int(try body.required(body.readUInt8(), field + "_length")), field)
    }

    private func string16(_ body: inout ByteReader, _ field: String) throws(MeridianError) -> String {
        try body.utf8(Int(try body.required(body.readUInt16(), field + "_length")), field)
    }

    private func blob(_ body: inout ByteReader, _ field: String, max: Int) throws(MeridianError) -> [UInt8] {
        let count = Int(try body.required(body.readUInt32(), field + "_length"))
        guard count <= max else {
            throw MeridianError(.codecInvalidField, "The peer frame's \(field) holds \(count) bytes; the limit is \(max).", context: ["field": field])
        }
        return Array(try body.required(body.take(count), field))
    }

    // MARK: - Forwarded requests and answers

    private func writeOptions(_ body: inout ByteReader) throws(MeridianError) -> WriteOptions {
        var options = WriteOptions()
        options.ack = try optional(&body, "has_ack") { body throws(MeridianError) in
            let text = try string8(&body, "ack")
            guard let mode = AckMode(rawValue: text) else {
                throw MeridianError(.codecInvalidField, "The forwarded write asks for ack '\(text.prefix(32))'; known modes are \(AckMode.allCases.map(\.rawValue).joined(separator: ", ")).",
                                    context: ["field": "ack"])
            }
            return mode
        }
        switch try body.required(body.readUInt8(), "precondition") {
        case 0:
            break
        case 1:
            options.precondition = .exists
        case 2:
            let count = Int(try body.required(body.readUInt8(), "precondition_count"))
            guard (1...WriteOptions.preconditionVersionsMax).contains(count) else {
                throw MeridianError(.codecInvalidField, "The forwarded write's precondition names \(count) versions; it names 1 to \(WriteOptions.preconditionVersionsMax).",
                                    context: ["field": "precondition_count"])
            }
            var versions: [Version] = []
            for _ in 0..<count { versions.append(try version(&body, "precondition_version")) }
            options.precondition = .versionIsOneOf(versions)
        case let other:
            throw MeridianError(.codecInvalidField, "The forwarded write has precondition \(other); it is 0 (none), 1 (exists) or 2 (versions).",
                                context: ["field": "precondition"])
        }
        options.session = try optional(&body, "has_session") { body throws(MeridianError) in try string16(&body, "session") }
        options.context = try optional(&body, "has_context") { body throws(MeridianError) in try string16(&body, "context") }
        options.principal = try optional(&body, "has_principal") { body throws(MeridianError) in try principalName(&body) }
        options.idempotencyKey = try optional(&body, "has_idempotency_key") { body throws(MeridianError) in
            let text = try string8(&body, "idempotency_key")
            do { return try IdempotencyKey(text) } catch {
                throw MeridianError(.codecInvalidField, "The forwarded write's idempotency key is not 1 to 255 visible ASCII characters.", context: ["field": "idempotency_key"])
            }
        }
        options.subject = try optional(&body, "has_subject") { body throws(MeridianError) in try Subject(try string8(&body, "subject")) }
        return options
    }

    /// The principal a forwarded request was authorized for where it entered.
    private func principalName(_ body: inout ByteReader) throws(MeridianError) -> String {
        let name = try string8(&body, "principal")
        guard Principal.validName(name) else {
            throw MeridianError(.codecInvalidField, "The forwarded request names an invalid principal.", context: ["field": "principal"])
        }
        return name
    }

    private func answer(_ body: inout ByteReader) throws(MeridianError) -> ServedAnswer {
        switch try body.required(body.readUInt8(), "answer") {
        case 1:
            let level = try consistencyLevel(&body)
            let stalenessMs = try optional(&body, "has_staleness_ms") { body throws(MeridianError) in try sequenceField(&body, "staleness_ms", minimum: 0) }
            let epoch = try optional(&body, "has_epoch") { body throws(MeridianError) in try sequenceField(&body, "epoch", minimum: 1) }
            let session = try string16(&body, "session")
            let state = try optional(&body, "has_state") { body throws(MeridianError) in
                try KeyStateCodec.decodeState(try blob(&body, "state", max: frameBytesMax), valueBytesMax: entryCodec.valueBytesMax)
            }
            return .read(ServedRead(level: level, stalenessMs: stalenessMs, epoch: epoch, state: state, session: session))
        case 2:
            let written = try version(&body, "version")
            let ackText = try string8(&body, "ack")
            guard let ack = AckMode(rawValue: ackText) else {
                throw MeridianError(.codecInvalidField, "The forwarded reply names ack '\(ackText.prefix(32))'.", context: ["field": "ack"])
            }
            let count = Int(try body.required(body.readUInt8(), "acked_by_count"))
            guard count <= Self.originsMax else {
                throw MeridianError(.codecInvalidField, "The forwarded reply names \(count) regions that acknowledged; the limit is \(Self.originsMax).",
                                    context: ["field": "acked_by_count"])
            }
            var ackedBy: [RegionName] = []
            for _ in 0..<count { ackedBy.append(try RegionName(try string8(&body, "acked_by"))) }
            let operation = try string8(&body, "operation")
            let epoch = try optional(&body, "has_epoch") { body throws(MeridianError) in try sequenceField(&body, "epoch", minimum: 1) }
            let session = try string16(&body, "session")
            let crdtValue = try optional(&body, "has_crdt_value") { body throws(MeridianError) in try blob(&body, "crdt_value", max: entryCodec.valueBytesMax) }
            let replayed: Bool
            switch try body.required(body.readUInt8(), "replayed") {
            case 0: replayed = false
            case 1: replayed = true
            case let other:
                throw MeridianError(.codecInvalidField, "The forwarded reply's replayed flag is \(other); it is 0 or 1.", context: ["field": "replayed"])
            }
            return .written(ServedWrite(version: written, ack: ack, ackedBy: ackedBy, operation: operation, epoch: epoch, session: session, crdtValue: crdtValue,
                                        replayed: replayed))
        case 3:
            let codeText = try string8(&body, "code")
            guard let code = MeridianError.Code(codeText) else {
                throw MeridianError(.codecInvalidField, "The forwarded reply refuses with code '\(codeText.prefix(64))', which this node does not know.", context: ["field": "code"])
            }
            let message = try string16(&body, "message")
            let applied: MeridianError.Applied?
            switch try body.required(body.readUInt8(), "applied") {
            case 0: applied = nil
            case 1: applied = .no
            case 2: applied = .maybe
            case let other:
                throw MeridianError(.codecInvalidField, "The forwarded refusal says applied \(other); it is 0 (as the code implies), 1 (no) or 2 (maybe).",
                                    context: ["field": "applied"])
            }
            let count = Int(try body.required(body.readUInt8(), "context_count"))
            guard count <= Self.refusalContextMax else {
                throw MeridianError(.codecInvalidField, "The forwarded refusal carries \(count) context fields; the limit is \(Self.refusalContextMax).",
                                    context: ["field": "context_count"])
            }
            var context: [String: String] = [:]
            for _ in 0..<count { context[try string8(&body, "context_name")] = try string16(&body, "context_value") }
            let session = try optional(&body, "has_session") { body throws(MeridianError) in try string16(&body, "session") }
            let refused = try optional(&body, "has_version") { body throws(MeridianError) in try version(&body, "version") }
            return .refused(Refusal(MeridianError(code, message, context: context, applied: applied), session: session, version: refused))
        case let other:
            throw MeridianError(.codecInvalidField, "The forwarded reply has answer \(other); it is 1 (read), 2 (written) or 3 (refused).", context: ["field": "answer"])
        }
    }

    private func appendAnswer(_ answer: ServedAnswer, to buffer: inout [UInt8]) {
        switch answer {
        case .read(let read):
            buffer.append(1)
            appendString8(read.level.rawValue, to: &buffer)
            appendOptional(read.stalenessMs, to: &buffer) { append($0, to: &$1) }
            appendOptional(read.epoch, to: &buffer) { append($0, to: &$1) }
            appendString16(read.session, to: &buffer)
            appendOptional(read.state, to: &buffer) { state, buffer in
                let bytes = KeyStateCodec.encode(state)
                append(UInt32(bytes.count), to: &buffer)
                buffer += bytes
            }
        case .written(let write):
            buffer.append(2)
            appendVersion(write.version, to: &buffer)
            appendString8(write.ack.rawValue, to: &buffer)
            let ackedBy = write.ackedBy.prefix(Self.originsMax)
            buffer.append(UInt8(ackedBy.count))
            for region in ackedBy { appendString8(region.rawValue, to: &buffer) }
            appendString8(write.operation, to: &buffer)
            appendOptional(write.epoch, to: &buffer) { append($0, to: &$1) }
            appendString16(write.session, to: &buffer)
            appendOptional(write.crdtValue, to: &buffer) { value, buffer in
                append(UInt32(value.count), to: &buffer)
                buffer += value
            }
            buffer.append(write.replayed ? 1 : 0)
        case .refused(let refusal):
            buffer.append(3)
            appendString8(refusal.error.code.description, to: &buffer)
            appendString16(refusal.error.message, to: &buffer)
            switch refusal.error.applied {
            case nil: buffer.append(0)
            case .no: buffer.append(1)
            case .maybe: buffer.append(2)
            }
            let context = refusal.error.context.sorted { $0.key < $1.key }.prefix(Self.refusalContextMax)
            buffer.append(UInt8(context.count))
            for (name, value) in context {
                appendString8(name, to: &buffer)
                appendString16(value, to: &buffer)
            }
            appendOptional(refusal.session, to: &buffer) { appendString16($0, to: &$1) }
            appendOptional(refusal.version, to: &buffer) { appendVersion($0, to: &$1) }
        }
    }

    private func consistencyLevel(_ body: inout ByteReader) throws(MeridianError) -> ConsistencyLevel {
        let text = try string8(&body, "consistency")
        guard let level = ConsistencyLevel(rawValue: text) else {
            throw MeridianError(.codecInvalidField, "The peer frame names consistency level '\(text.prefix(32))'; known levels are \(ConsistencyLevel.allCases.map(\.rawValue).joined(separator: ", ")).",
                                context: ["field": "consistency"])
        }
        return level
    }

    private func version(_ body: inout ByteReader, _ field: String) throws(MeridianError) -> Version {
        let origin = try RegionName(try string8(&body, field + "_origin"))
        let sequence = try sequenceField(&body, field + "_sequence", minimum: 1)
        let physicalMs = try sequenceField(&body, field + "_hlc_physical_ms", minimum: 0)
        let logical = try body.required(body.readUInt32(), field + "_hlc_logical")
        return Version(hlc: HLCTimestamp(physicalMs: physicalMs, logical: logical, region: origin), sequence: sequence)
    }

    private func appendVersion(_ version: Version, to buffer: inout [UInt8]) {
        appendString8(version.origin.rawValue, to: &buffer)
        append(version.sequence, to: &buffer)
        append(version.hlc.physicalMs, to: &buffer)
        append(version.hlc.logical, to: &buffer)
    }

    /// Reads `opt(x)`: a presence byte (0 or 1), then the value when present.
    private func optional<T>(_ body: inout ByteReader, _ field: String, _ read: (inout ByteReader) throws(MeridianError) -> T) throws(MeridianError) -> T? {
        try flag(&body, field) ? try read(&body) : nil
    }

    private func appendOptional<T>(_ value: T?, to buffer: inout [UInt8], _ write: (T, inout [UInt8]) -> Void) {
        guard let value else {
            buffer.append(0)
            return
        }
        buffer.append(1)
        write(value, &buffer)
    }

    private func appendKeyIDs(_ ids: [DataKeyID], to buffer: inout [UInt8]) {
        let kept = ids.prefix(DataKeyRequestBounds.idsMax)
        append(UInt16(kept.count), to: &buffer)
        for id in kept { buffer += id.bytes }
    }

    private func appendString8(_ text: String, to buffer: inout [UInt8]) {
        let bytes = Self.truncated(text, to: Int(UInt8.max))
        buffer.append(UInt8(bytes.count))
        buffer += bytes
    }

    private func appendString16(_ text: String, to buffer: inout [UInt8]) {
        let bytes = Self.truncated(text, to: Int(UInt16.max))
        append(UInt16(bytes.count), to: &buffer)
        buffer += bytes
    }

    /// The text's UTF-8 bytes, cut at a character boundary so they fit `limit` and stay valid UTF-8.
    private static func truncated(_ text: String, to limit: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for scalar in text.unicodeScalars {
            let encoded = Array(String(scalar).utf8)
            guard bytes.count + encoded.count <= limit else { break }
            bytes += encoded
        }
        return bytes
    }

    private func append<I: FixedWidthInteger>(_ value: I, to buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { buffer.append(contentsOf: $0) }
    }
}
