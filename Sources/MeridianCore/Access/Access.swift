/// Who may do what: the scopes a client token grants, and the one rule that decides whether they cover a request.
///
/// Tokens are verified in the shell (the signature, the expiry, revocation); what a verified token allows is
/// decided here, so every front end (the HTTP API now, the gateway and the Redis protocol later) asks the same question.

/// What a request does, as a token's scopes name it.
public enum AccessOperation: String, Sendable, Hashable, CaseIterable, Codable, Comparable {
    /// Reads keys, listings, CRDT values and conflicts.
    case read
    /// Writes and deletes keys, and applies CRDT operations.
    case write
    /// Failovers, repair, divergence and token revocation.
    case admin

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// What a token allows: which keyspaces, which operations, optionally a key prefix and the regions it is valid in.
public struct AccessScope: Sendable, Hashable {
    /// The keyspaces the token may touch; `*` names every keyspace the cluster file defines (never a system keyspace).
    public var keyspaces: [String]
    /// The operations the token may do.
    public var operations: Set<AccessOperation>
    /// When set, only keys starting with it (and listings inside it).
    public var keyPrefix: String?
    /// When set, the only regions that accept the token.
    public var regions: [RegionName]?

    /// The wildcard that names every user keyspace.
    public static let everyKeyspace = "*"
    /// The most keyspaces one token names.
    public static let keyspacesMax = 64

    public init(keyspaces: [String], operations: Set<AccessOperation>, keyPrefix: String? = nil, regions: [RegionName]? = nil) {
        self.keyspaces = keyspaces
        self.operations = operations
        self.keyPrefix = keyPrefix
        self.regions = regions
    }

    /// Whether the scope covers every user keyspace.
    public var coversEveryKeyspace: Bool { keyspaces.contains(Self.everyKeyspace) }

    /// Checks the scope's own shape (a token could carry anything).
    /// - Throws: `MeridianError` `unauthenticated` naming what is wrong.
    public func validate() throws(MeridianError) {
        guard !keyspaces.isEmpty, keyspaces.count <= Self.keyspacesMax else {
            throw MeridianError(.unauthenticated, "The token's scope names \(keyspaces.count) keyspaces; a token names 1 to \(Self.keyspacesMax) (or '*').")
        }
        for name in keyspaces where name != Self.everyKeyspace {
            do { _ = try KeyspaceName(name) } catch {
                throw MeridianError(.unauthenticated, "The token's scope names an invalid keyspace: \(error.message)")
            }
        }
        guard !operations.isEmpty else {
            throw MeridianError(.unauthenticated, "The token's scope grants no operation; a token grants read, write or admin.")
        }
        if let keyPrefix, keyPrefix.isEmpty || keyPrefix.utf8.count > Key.utf8BytesMax {
            throw MeridianError(.unauthenticated, "The token's key prefix must be 1 to \(Key.utf8BytesMax) bytes.")
        }
        if let regions, regions.isEmpty {
            throw MeridianError(.unauthenticated, "The token's scope lists no region; omit 'regions' for a token valid everywhere.")
        }
    }
}

/// A client whose token was verified: who it is, which token it used, and what that token allows.
public struct Principal: Sendable, Hashable {
    /// The principal's name (the token's subject).
    public let name: String
    /// The token's id, which revocation names.
    public let tokenID: String
    /// What the token allows.
    public let scope: AccessScope
    /// When the token stops being valid, in ms since the Unix epoch.
    public let expiresAtMs: UInt64

    /// The most bytes of a principal's name or a token id.
    public static let nameBytesMax = 128

    public init(name: String, tokenID: String, scope: AccessScope, expiresAtMs: UInt64) {
        self.name = name
        self.tokenID = tokenID
        self.scope = scope
        self.expiresAtMs = expiresAtMs
    }

    /// Checks that a name or token id is 1 to 128 printable bytes.
    public static func validName(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= nameBytesMax && text.unicodeScalars.allSatisfy { $0.value >= 0x21 && $0.value != 0x7F }
    }
}

/// What a request needs from its client.
public enum AccessRequirement: Sendable, Hashable {
    /// Anyone may call it (`/health`, and what the cluster file opens).
    case open
    /// Any valid token: cluster-wide views that name no keyspace's data (status, keyspaces, failovers).
    case authenticated
    /// An operation on a keyspace (nil: every keyspace, as admin routes without a keyspace in the path need),
    /// on one key or inside one listing prefix.
    case operation(AccessOperation, keyspace: KeyspaceName?, target: Target)

    /// What part of a keyspace the request touches, for tokens limited to a key prefix.
    public enum Target: Sendable, Hashable {
        /// The keyspace as a whole (conflicts, a tree of hashes).
        case keyspace
        /// One key.
        case key(String)
        /// A listing of the keys that start with this prefix (empty: all of them).
        case listing(prefix: String)
    }
}

/// The rule that decides whether a principal's scope covers a request.
public enum AccessRule {
    /// Keyspaces whose names start with this belong to Meridian itself; `*` never covers them.
    public static let systemKeyspacePrefix = "_"

    /// Checks that `principal` may make a request needing `requirement` in `region`.
    /// - Throws: `MeridianError` `forbidden`, whose message names the missing scope.
    public static func authorize(_ principal: Principal, _ requirement: AccessRequirement, in region: RegionName) throws(MeridianError) {
        let scope = principal.scope
        if let regions = scope.regions, !regions.contains(region) {
            throw MeridianError(.forbidden, "The token of '\(principal.name)' is valid only in \(regions.map(\.rawValue).joined(separator: ", ")), not in \(region); call one of those regions or issue a token for this one.",
                                context: ["missing_scope": "region:\(region)"])
        }
        guard case .operation(let operation, let keyspace, let target) = requirement else { return }
        guard scope.operations.contains(operation) else {
            throw MeridianError(.forbidden, "The token of '\(principal.name)' does not allow '\(operation.rawValue)' (it allows \(scope.operations.sorted().map(\.rawValue).joined(separator: ", "))).",
                                context: ["missing_scope": "op:\(operation.rawValue)"])
        }
        if let keyspace {
            let system = keyspace.rawValue.hasPrefix(systemKeyspacePrefix)
            guard scope.keyspaces.contains(keyspace.rawValue) || (!system && scope.coversEveryKeyspace) else {
                throw MeridianError(.forbidden, "The token of '\(principal.name)' does not cover keyspace '\(keyspace)'.",
                                    context: ["missing_scope": "keyspace:\(keyspace)", "keyspace": keyspace.rawValue])
            }
        } else if !scope.coversEveryKeyspace {
            throw MeridianError(.forbidden, "This request concerns every keyspace; the token of '\(principal.name)' must name keyspace '*'.",
                                context: ["missing_scope": "keyspace:*"])
        }
        guard let keyPrefix = scope.keyPrefix else { return }
        let covered = switch target {
        case .keyspace: false
        case .key(let key): key.hasPrefix(keyPrefix)
        case .listing(let prefix): prefix.hasPrefix(keyPrefix)
        }
        guard covered else {
            throw MeridianError(.forbidden, "The token of '\(principal.name)' covers only keys starting with '\(keyPrefix)'\(target == .keyspace ? ", not the whole keyspace" : ""); name keys (or a listing prefix) inside it.",
                                context: ["missing_scope": "prefix:\(keyPrefix)"])
        }
    }
}

/// Verifies the credentials a request carries. The shell holds one; the front ends ask it before they serve.
public protocol RequestAuthenticator: Sendable {
    /// The principal whose token `authorization` (the whole `Authorization` header, nil when absent) carries.
    /// - Throws: `MeridianError` `unauthenticated` saying what is wrong with the credentials.
    func authenticate(authorization: String?) async throws(MeridianError) -> Principal
}
