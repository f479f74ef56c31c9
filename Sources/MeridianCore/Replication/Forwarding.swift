/// A client's write, forwarded to the region that takes it (the leader, or the key's home).
///
/// It carries the write and its options in the peer protocol's own terms: the region that takes it runs it
/// as if the client had sent it there, whatever protocol the client spoke.
public struct ForwardedWrite: Sendable, Hashable {
    /// Pairs the write with its reply on the stream.
    public let id: UInt64
    public let keyspace: KeyspaceName
    public let key: Key
    /// Put, delete, or merge (a CRDT operation, `value` being its JSON).
    public let operation: Operation
    public let contentType: String
    public let value: [UInt8]
    public let options: WriteOptions

    public init(id: UInt64, keyspace: KeyspaceName, key: Key, operation: Operation, contentType: String, value: [UInt8], options: WriteOptions) {
        self.id = id
        self.keyspace = keyspace
        self.key = key
        self.operation = operation
        self.contentType = contentType
        self.value = value
        self.options = options
    }
}

/// What a client asked of a write besides its value.
public struct WriteOptions: Sendable, Hashable {
    /// The ack mode asked for; nil: the keyspace's default.
    public var ack: AckMode?
    /// The write applies only if the key's current version satisfies this (`If-Match`).
    public var precondition: WriteRequest.Precondition?
    /// The client's session token as it carries it (authenticated with the cluster's session key).
    public var session: String?
    /// The causal context token the client read (siblings keyspaces): the write supersedes what it names.
    public var context: String?
    /// The principal the region the client called authorized the write for (nil: authentication is off).
    public var principal: String?
    /// The client's `Idempotency-Key`: a retry of the same request gets the first outcome.
    public var idempotencyKey: IdempotencyKey?
    /// The client's `Meridian-Subject`: whose data a sealed keyspace's value is.
    public var subject: Subject?

    public init(ack: AckMode? = nil, precondition: WriteRequest.Precondition? = nil, session: String? = nil, context: String? = nil,
                principal: String? = nil, idempotencyKey: IdempotencyKey? = nil, subject: Subject? = nil) {
        self.subject = subject
        self.idempotencyKey = idempotencyKey
        self.ack = ack
        self.precondition = precondition
        self.session = session
        self.context = context
        self.principal = principal
    }

    /// The most versions a precondition names.
    public static let preconditionVersionsMax = 16
}

/// A client's read of one key, forwarded to a region that can serve it at the level it asks.
public struct ForwardedRead: Sendable, Hashable {
    /// How the client reads the key: as stored bytes, or as a CRDT's value.
    public enum Form: UInt8, Sendable, Hashable {
        case value = 1
        case crdt = 2
    }

    /// Pairs the read with its reply on the stream.
    public let id: UInt64
    public let keyspace: KeyspaceName
    public let key: Key
    public let form: Form
    public let options: ReadOptions

    public init(id: UInt64, keyspace: KeyspaceName, key: Key, form: Form, options: ReadOptions) {
        self.id = id
        self.keyspace = keyspace
        self.key = key
        self.form = form
        self.options = options
    }
}

/// What a client asked of a read.
public struct ReadOptions: Sendable, Hashable {
    /// The consistency level asked for; nil: the keyspace's default.
    public var consistency: ConsistencyLevel?
    /// The staleness bound of a `bounded` read, in milliseconds.
    public var maxStalenessMs: UInt64?
    /// The client's session token as it carries it.
    public var session: String?
    /// The principal the region the client called authorized the read for (nil: authentication is off).
    public var principal: String?

    public init(consistency: ConsistencyLevel? = nil, maxStalenessMs: UInt64? = nil, session: String? = nil, principal: String? = nil) {
        self.consistency = consistency
        self.maxStalenessMs = maxStalenessMs
        self.session = session
        self.principal = principal
    }
}

/// The answer to a forwarded write or read.
public struct ForwardedReply: Sendable, Hashable {
    /// The id of the forwarded request.
    public let id: UInt64
    public let answer: ServedAnswer

    public init(id: UInt64, answer: ServedAnswer) {
        self.id = id
        self.answer = answer
    }
}

/// What a region answered a read or a write it served, with nothing of any client protocol in it: the region
/// the client is connected to renders it (as HTTP today) exactly as if it had served the request itself.
public enum ServedAnswer: Sendable, Hashable {
    /// A read: what the key holds, at the level served.
    case read(ServedRead)
    /// A write took effect and its ack mode was met.
    case written(ServedWrite)
    /// The request was refused; the error says whether a refused write may have taken effect.
    case refused(Refusal)
}

/// A read a region served.
public struct ServedRead: Sendable, Hashable {
    /// The level the read was served at.
    public let level: ConsistencyLevel
    /// How stale the answer may be, for a bounded read, in milliseconds.
    public let stalenessMs: UInt64?
    /// The term of a single-leader keyspace the serving region knew of.
    public let epoch: UInt64?
    /// What the key holds; nil when it was never written. For siblings and CRDT keyspaces the whole state
    /// (every version not superseded, and the context); otherwise the version reads show.
    public let state: KeyState?
    /// The client's session token after the read.
    public let session: String

    public init(level: ConsistencyLevel, stalenessMs: UInt64?, epoch: UInt64?, state: KeyState?, session: String) {
        self.level = level
        self.stalenessMs = stalenessMs
        self.epoch = epoch
        self.state = state
        self.session = session
    }
}

/// A write a region took, once its ack mode was met.
public struct ServedWrite: Sendable, Hashable {
    /// The version the write created.
    public let version: Version
    /// The ack mode met.
    public let ack: AckMode
    /// The regions that confirmed the write (the serving region first).
    public let ackedBy: [RegionName]
    /// What the write did: `put`, `delete`, or the CRDT operation's name.
    public let operation: String
    /// The term of a single-leader keyspace the write was accepted in.
    public let epoch: UInt64?
    /// The client's session token after the write.
    public let session: String
    /// For a CRDT operation, the key's value after it (``CRDTCodec``'s form).
    public let crdtValue: [UInt8]?
    /// The write was a retry of one already applied (the same `Idempotency-Key`): this is the first one's outcome.
    public let replayed: Bool

    public init(version: Version, ack: AckMode, ackedBy: [RegionName], operation: String, epoch: UInt64?, session: String, crdtValue: [UInt8]?,
                replayed: Bool = false) {
        self.replayed = replayed
        self.version = version
        self.ack = ack
        self.ackedBy = ackedBy
        self.operation = operation
        self.epoch = epoch
        self.session = session
        self.crdtValue = crdtValue
    }
}

/// A refused read or write: the error, and what the client carries on with.
public struct Refusal: Sendable, Hashable {
    public let error: MeridianError
    /// The client's session token after the refusal: a write durable where it was taken but not acknowledged
    /// is in it, so the client's next session read sees it.
    public let session: String?
    /// The version the refusal is about (a durable write not acknowledged, or a deleted key's tombstone).
    public let version: Version?

    public init(_ error: MeridianError, session: String? = nil, version: Version? = nil) {
        self.error = error
        self.session = session
        self.version = version
    }
}
