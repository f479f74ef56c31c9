/// A typed, user-facing failure with a stable code, a sentence a user can act on, and the offending context.
///
/// Bad input from a client, a peer or a config file is an expected outcome, not a crash: every layer
/// reports it as a `MeridianError`, and the HTTP shell turns the ``Code`` into a status.
public struct MeridianError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable, snake_case identifier of one kind of failure. Codes are part of the API contract.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case invalidRegion = "invalid_region"
            case invalidKeyspace = "invalid_keyspace"
            case invalidKey = "invalid_key"
            case invalidHeader = "invalid_header"
            case invalidParameter = "invalid_parameter"
            case invalidRequest = "invalid_request"
            case invalidConfig = "invalid_config"
            case unknownKeyspace = "unknown_keyspace"
            case unknownRegion = "unknown_region"
            case keyNotFound = "key_not_found"
            case routeNotFound = "route_not_found"
            case methodNotAllowed = "method_not_allowed"
            case consistencyNotAllowed = "consistency_not_allowed"
            case notReplicaRegion = "not_replica_region"
            case crdtTypeMismatch = "crdt_type_mismatch"
            case conflictPolicyMismatch = "conflict_policy_mismatch"
            case tooManySiblings = "too_many_siblings"
            case preconditionFailed = "precondition_failed"
            case valueTooLarge = "value_too_large"
            case ackUnavailable = "ack_unavailable"
            case ackTimeout = "ack_timeout"
            case leaderUnavailable = "leader_unavailable"
            case consistencyUnavailable = "consistency_unavailable"
            case regionUnavailable = "region_unavailable"
            case overloaded = "overloaded"
            case storageFailure = "storage_failure"
            case clockOffsetExceeded = "clock_offset_exceeded"
            case clockFenced = "clock_fenced"
            case clockUnverified = "clock_unverified"
            case storageFull = "storage_full"
            case storageReadOnly = "storage_read_only"
            case codecTruncated = "codec_truncated"
            case codecUnsupportedVersion = "codec_unsupported_version"
            case codecInvalidField = "codec_invalid_field"
            case codecLengthMismatch = "codec_length_mismatch"
            case replicationProtocol = "replication_protocol"
            case internalError = "internal_error"
            case unauthenticated = "unauthenticated"
            case forbidden = "forbidden"
            case idempotencyKeyReused = "idempotency_key_reused"
            case sealedValueUnreadable = "sealed_value_unreadable"
            case dataKeyUnavailable = "data_key_unavailable"
            case erased = "erased"
            case restorePending = "restore_pending"
            /// A node of a region whose nodes share one database no longer holds the region's lease for the
            /// single-instance duties: another node was granted it, and this one's statements are fenced.
            case leaseLost = "lease_lost"
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The snake_case string sent to clients.
        public var description: String { value.rawValue }

        /// The code a peer or a client names by its string (nil: a code this build does not know).
        public init?(_ text: String) {
            guard let value = Value(rawValue: text) else { return nil }
            self.value = value
        }

        /// What kind of failure a code is; the HTTP contract maps each kind to one status.
        public enum Kind: Hashable, Sendable, CaseIterable {
            /// The request, a peer's frame or a config file is malformed: fix it (400).
            case badInput
            /// The keyspace, region, key or route does not exist (404).
            case notFound
            /// The request carries no valid credentials: no token, or one that is malformed, expired, forged or revoked (401).
            case unauthenticated
            /// The credentials are valid but do not cover the request: the error names the missing scope (403).
            case forbidden
            /// The path does not serve that method (405).
            case methodNotAllowed
            /// The keyspace's policy does not allow the operation here (409).
            case notAllowedByPolicy
            /// A condition the request set does not hold (412).
            case preconditionFailed
            /// The value or body exceeds a limit (413).
            case tooLarge
            /// The cluster cannot do it now: regions, a leader, a clock or the disk; retry later (503).
            case unavailable
            /// A wait ran out before the request's guarantee was met (504).
            case timedOut
            /// The region's disk is full (507).
            case storageFull
            /// A failure of the node itself (500).
            case internalFailure
            /// The request is well formed but contradicts an earlier one (an idempotency key reused for another request).
            case unprocessable
            /// What was asked for existed and was destroyed on purpose (a subject's data erased) (410).
            case gone
        }

        /// The code's kind. The switch is exhaustive: a new code must say which it is.
        public var kind: Kind {
            switch value {
            case .invalidRegion, .invalidKeyspace, .invalidKey, .invalidHeader, .invalidParameter, .invalidRequest, .invalidConfig,
                 .codecTruncated, .codecUnsupportedVersion, .codecInvalidField, .codecLengthMismatch, .replicationProtocol:
                .badInput
            case .unknownKeyspace, .unknownRegion, .keyNotFound, .routeNotFound: .notFound
            case .methodNotAllowed: .methodNotAllowed
            case .consistencyNotAllowed, .notReplicaRegion, .crdtTypeMismatch, .conflictPolicyMismatch, .tooManySiblings: .notAllowedByPolicy
            case .preconditionFailed: .preconditionFailed
            case .valueTooLarge: .tooLarge
            case .ackUnavailable, .leaderUnavailable, .consistencyUnavailable, .regionUnavailable, .overloaded, .storageFailure,
                 .clockOffsetExceeded, .clockFenced, .clockUnverified, .storageReadOnly, .dataKeyUnavailable, .restorePending,
                 .leaseLost:
                .unavailable
            case .ackTimeout: .timedOut
            case .storageFull: .storageFull
            case .internalError, .sealedValueUnreadable: .internalFailure
            case .unauthenticated: .unauthenticated
            case .forbidden: .forbidden
            case .idempotencyKeyReused: .unprocessable
            case .erased: .gone
            }
        }

        /// Whether a refused change took effect, when the code is all that is known. Only codes raised before
        /// anything is written say `no`; the rest say `maybe`: answering `no` for a write that did take effect
        /// would make a client apply it twice. A refusal that knows better states it (``MeridianError/applied``).
        public var appliedUnlessStated: Applied {
            switch value {
            case .invalidRegion, .invalidKeyspace, .invalidKey, .invalidHeader, .invalidParameter, .invalidRequest, .invalidConfig,
                 .unknownKeyspace, .unknownRegion, .keyNotFound, .routeNotFound, .methodNotAllowed, .consistencyNotAllowed,
                 .notReplicaRegion, .crdtTypeMismatch, .conflictPolicyMismatch, .tooManySiblings, .preconditionFailed, .valueTooLarge,
                 .ackUnavailable, .leaderUnavailable, .consistencyUnavailable, .overloaded, .clockOffsetExceeded, .clockFenced,
                 .clockUnverified, .storageFull, .storageReadOnly, .codecTruncated, .codecUnsupportedVersion, .codecInvalidField,
                 .codecLengthMismatch, .replicationProtocol, .unauthenticated, .forbidden, .idempotencyKeyReused,
                 .sealedValueUnreadable, .dataKeyUnavailable, .erased, .restorePending, .leaseLost:
                .no
            // A forwarded request whose stream closed, an ack that timed out (the write is durable at its origin),
            // a commit whose fsync failed, and the node's own failures: the change may be there.
            case .regionUnavailable, .ackTimeout, .storageFailure, .internalError:
                .maybe
            }
        }

        public static let invalidRegion = Code(.invalidRegion)
        public static let invalidKeyspace = Code(.invalidKeyspace)
        public static let invalidKey = Code(.invalidKey)
        public static let invalidHeader = Code(.invalidHeader)
        public static let invalidParameter = Code(.invalidParameter)
        public static let invalidRequest = Code(.invalidRequest)
        public static let invalidConfig = Code(.invalidConfig)
        public static let unknownKeyspace = Code(.unknownKeyspace)
        public static let unknownRegion = Code(.unknownRegion)
        public static let keyNotFound = Code(.keyNotFound)
        public static let routeNotFound = Code(.routeNotFound)
        public static let methodNotAllowed = Code(.methodNotAllowed)
        public static let consistencyNotAllowed = Code(.consistencyNotAllowed)
        public static let notReplicaRegion = Code(.notReplicaRegion)
        public static let crdtTypeMismatch = Code(.crdtTypeMismatch)
        public static let conflictPolicyMismatch = Code(.conflictPolicyMismatch)
        public static let tooManySiblings = Code(.tooManySiblings)
        public static let preconditionFailed = Code(.preconditionFailed)
        public static let valueTooLarge = Code(.valueTooLarge)
        public static let ackUnavailable = Code(.ackUnavailable)
        public static let ackTimeout = Code(.ackTimeout)
        public static let leaderUnavailable = Code(.leaderUnavailable)
        public static let consistencyUnavailable = Code(.consistencyUnavailable)
        public static let regionUnavailable = Code(.regionUnavailable)
        public static let overloaded = Code(.overloaded)
        public static let storageFailure = Code(.storageFailure)
        /// This node no longer holds its region's lease for the single-instance duties (its transaction rolled back).
        public static let leaseLost = Code(.leaseLost)
        /// A timestamp (a peer's, or one a session saw) leads this region's clock by more than the maximum offset.
        public static let clockOffsetExceeded = Code(.clockOffsetExceeded)
        /// This region's clock is too far from its peers': it refuses writes and does not lead.
        public static let clockFenced = Code(.clockFenced)
        /// This region has not yet compared its clock with enough peers since it started: it refuses writes for now.
        public static let clockUnverified = Code(.clockUnverified)
        /// The data directory's disk is full: writes are refused, reads go on.
        public static let storageFull = Code(.storageFull)
        /// The data directory cannot be written (read-only file system or permissions): writes are refused, reads go on.
        public static let storageReadOnly = Code(.storageReadOnly)
        public static let codecTruncated = Code(.codecTruncated)
        public static let codecUnsupportedVersion = Code(.codecUnsupportedVersion)
        public static let codecInvalidField = Code(.codecInvalidField)
        public static let codecLengthMismatch = Code(.codecLengthMismatch)
        public static let replicationProtocol = Code(.replicationProtocol)
        public static let internalError = Code(.internalError)
        public static let unauthenticated = Code(.unauthenticated)
        public static let forbidden = Code(.forbidden)
        /// An `Idempotency-Key` already named a different request (another key, operation, value or condition).
        public static let idempotencyKeyReused = Code(.idempotencyKeyReused)
        /// A sealed value or its subject's data key does not open with this region's root key (a wrong root key,
        /// or corrupted bytes): nothing is served in its place.
        public static let sealedValueUnreadable = Code(.sealedValueUnreadable)
        /// This region does not hold the data key a sealed value needs yet, and no region of the keyspace's residency
        /// granted it: retry shortly.
        public static let dataKeyUnavailable = Code(.dataKeyUnavailable)
        /// The value belonged to a subject whose data key was destroyed (erasure): it can never be read again.
        public static let erased = Code(.erased)
        /// The region was restored from a backup and takes no request until it has caught up from its peers.
        public static let restorePending = Code(.restorePending)
    }

    /// Whether a refused change (a write, a delete, a CRDT operation, an admin action) took effect: what a
    /// client needs to know to decide whether it may simply retry.
    public enum Applied: String, Hashable, Sendable {
        /// Certainly not, in any region: retrying is safe.
        case no
        /// It may have (it is durable somewhere, or the answer was lost on its way): read before retrying, or
        /// retry with `If-Match`.
        case maybe
    }

    /// What kind of failure this is.
    public let code: Code
    /// A sentence that says what went wrong and what to do about it.
    public let message: String
    /// Extra fields that name the offending values (sorted by key when rendered).
    public let context: [String: String]
    /// Whether the refused change took effect, where the refusal knows better than its code (nil: the code's
    /// ``Code/appliedUnlessStated``).
    public let applied: Applied?

    /// Creates an error.
    /// - Parameters:
    ///   - code: The stable code.
    ///   - message: A sentence a user can act on.
    ///   - context: The offending values, by field name.
    ///   - applied: Whether the refused change took effect, if the code alone does not tell.
    public init(_ code: Code, _ message: String, context: [String: String] = [:], applied: Applied? = nil) {
        self.code = code
        self.message = message
        self.context = context
        self.applied = applied
    }

    /// Whether the refused change took effect: as stated, or as the code implies.
    public var appliedOrImplied: Applied { applied ?? code.appliedUnlessStated }

    public var description: String { "\(code): \(message)" }
}
