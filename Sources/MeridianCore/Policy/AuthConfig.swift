import Crypto
import Foundation
import Yams

/// Client authentication, as the cluster file's `auth` section sets it: the keys that verify client tokens,
/// and which service routes stay open.
///
/// The file holds only public keys; the signing key stays with whoever issues tokens (`meridian token issue`).
/// Several keys may be listed at once, each under its own id, so a signing key can rotate while the tokens it
/// signed still verify until they expire.
public struct AuthConfig: Sendable, Hashable {
    /// One Ed25519 public key that verifies tokens whose header names its id.
    public struct VerificationKey: Sendable, Hashable {
        /// The key id tokens name in their header (`kid`).
        public let id: String
        /// The raw 32-byte Ed25519 public key.
        public let publicKey: [UInt8]

        public init(id: String, publicKey: [UInt8]) {
            self.id = id
            self.publicKey = publicKey
        }

        /// The public key as the cluster file writes it: base64url without padding.
        public var encodedPublicKey: String { Base64URL.encode(publicKey) }
    }

    /// Service routes the cluster file may open to callers without a token (`/health` is always open).
    public enum OpenRoute: String, Sendable, Hashable, CaseIterable {
        case metrics
        case openapi
    }

    /// The keys that verify tokens, by id.
    public let keys: [VerificationKey]
    /// The service routes open without a token.
    public let open: Set<OpenRoute>
    /// The longest lifetime a token may have; a revocation is kept at least this long.
    public let tokenTTLMaxSeconds: UInt64

    /// The most verification keys a cluster file lists.
    public static let keysMax = 16
    /// The keyspace that carries revoked token ids to every region.
    public static let revocationKeyspace = try! KeyspaceName("_revocations")

    public init(keys: [VerificationKey], open: Set<OpenRoute>, tokenTTLMaxSeconds: UInt64) {
        self.keys = keys
        self.open = open
        self.tokenTTLMaxSeconds = tokenTTLMaxSeconds
    }

    /// The system keyspace revocations travel in: multi-leader in every region, so a token can be revoked from
    /// any region and reaches every other one through replication (and anti-entropy after a partition).
    static let revocationKeyspaceYAML = """
        name: _revocations
        topology: multi-leader
        conflict: lww
        ack: async
        consistency: { default: eventual }
        """
}

extension ConfigParser {
    func parseAuth(_ value: YAMLValue) throws(ConfigProblem) -> AuthConfig {
        let fields = try value.mapping(allowed: ["keys", "open", "token_ttl_max_hours"])
        guard let keysValue = fields["keys"] else {
            throw ConfigProblem(path: value.child("keys"), message: "list the keys that verify tokens: `meridian token keygen` prints an entry to paste here")
        }
        var keys: [AuthConfig.VerificationKey] = []
        for item in try keysValue.sequence() {
            let keyFields = try item.mapping(allowed: ["id", "public_key"])
            guard let idValue = keyFields["id"], let publicValue = keyFields["public_key"] else {
                throw ConfigProblem(path: item.path, message: "each key needs 'id' and 'public_key' (as `meridian token keygen` prints them)")
            }
            let id = try idValue.string()
            guard Principal.validName(id), id.utf8.count <= 64 else {
                throw ConfigProblem(path: idValue.path, message: "a key id has 1 to 64 printable characters without spaces")
            }
            guard !keys.contains(where: { $0.id == id }) else { throw ConfigProblem(path: idValue.path, message: "the key id '\(id)' is listed twice") }
            let text = try publicValue.string()
            guard let bytes = Base64URL.decode(text.utf8), bytes.count == 32, (try? Curve25519.Signing.PublicKey(rawRepresentation: bytes)) != nil else {
                throw ConfigProblem(path: publicValue.path, message: "not an Ed25519 public key: expected 43 characters of base64url (32 bytes), as `meridian token keygen` prints it")
            }
            keys.append(AuthConfig.VerificationKey(id: id, publicKey: bytes))
        }
        guard !keys.isEmpty, keys.count <= AuthConfig.keysMax else {
            throw ConfigProblem(path: keysValue.path, message: "list 1 to \(AuthConfig.keysMax) keys")
        }
        var open: Set<AuthConfig.OpenRoute> = []
        for item in try fields["open"]?.sequence() ?? [] {
            open.insert(try item.choice(AuthConfig.OpenRoute.self))
        }
        let ttlHours = try fields["token_ttl_max_hours"]?.int(in: 1...8760) ?? 720
        return AuthConfig(keys: keys, open: open, tokenTTLMaxSeconds: UInt64(ttlHours) * 3600)
    }

    /// The system keyspaces a configuration with `auth` carries.
    func revocationKeyspace(regions: [RegionName]) throws(ConfigProblem) -> KeyspacePolicy {
        let node: Node
        do {
            guard let composed = try Yams.compose(yaml: AuthConfig.revocationKeyspaceYAML) else { preconditionFailure("built-in YAML is empty") }
            node = composed
        } catch {
            preconditionFailure("built-in YAML does not parse: \(error)")
        }
        return try parseKeyspace(YAMLValue(node: node, path: "auth"), regions: regions)
    }
}
