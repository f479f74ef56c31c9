import Crypto
import Foundation
import JWTKit
import MeridianCore
import Synchronization

/// The claims of a Meridian client token: an EdDSA-signed JWT naming the cluster, the principal, the token's id
/// and lifetime, and what it allows.
struct TokenClaims: JWTPayload {
    /// What the token allows, as the JWT carries it.
    struct Scope: Codable, Sendable {
        var keyspaces: [String]
        var ops: [String]
        var prefix: String?
        var regions: [String]?
    }

    /// The cluster the token is for: a token of one cluster never opens another that shares its key.
    var iss: IssuerClaim
    var sub: SubjectClaim
    var jti: IDClaim
    var iat: IssuedAtClaim
    var exp: ExpirationClaim
    var scope: Scope

    /// Time and revocation are checked by ``TokenVerifier`` on every request against the node's clock, cached or not.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A token as issued: the text a client sends, and what revocation and expiry name.
public struct IssuedToken: Sendable {
    public let token: String
    public let id: String
    public let expiresAtMs: UInt64
}

/// Signs client tokens with one Ed25519 signing key.
public struct TokenIssuer: Sendable {
    /// The signing key.
    let key: EdDSA.PrivateKey
    /// The id the cluster file lists the key's public half under.
    public let keyID: String

    /// Generates a new signing key.
    public static func generate(keyID: String? = nil) throws(MeridianError) -> TokenIssuer {
        let key = Curve25519.Signing.PrivateKey()
        let raw = Array(key.publicKey.rawRepresentation)
        return TokenIssuer(key: EdDSA.PrivateKey(backing: key), keyID: keyID ?? Self.defaultKeyID(raw))
    }

    /// Loads a signing key from a PEM file (PKCS#8, as `meridian token keygen` writes it), under the id the
    /// cluster file lists its public key with (found by the public key when `keyID` is nil).
    /// - Throws: `MeridianError` `invalid_config` naming the file and what is wrong.
    public static func load(path: String, keyID: String?, auth: AuthConfig?) throws(MeridianError) -> TokenIssuer {
        let pem = try SecretFile.read(path, what: "the signing key")
        let key: Curve25519.Signing.PrivateKey
        do {
            key = try Curve25519.Signing.PrivateKey(pemRepresentation: pem)
        } catch {
            throw MeridianError(.invalidConfig, "\(path): not an Ed25519 private key in PEM (PKCS#8); create one with `meridian token keygen`.", context: ["file": path])
        }
        let raw = Array(key.publicKey.rawRepresentation)
        let listed = auth?.keys.first { $0.publicKey == raw }
        if let keyID {
            if let auth, let entry = auth.keys.first(where: { $0.id == keyID }), entry.publicKey != raw {
                throw MeridianError(.invalidConfig, "\(path): the cluster file lists key id '\(keyID)' with another public key; tokens signed with this key would not verify.",
                                    context: ["file": path])
            }
            return TokenIssuer(key: EdDSA.PrivateKey(backing: key), keyID: keyID)
        }
        guard let listed else {
            throw MeridianError(.invalidConfig, "\(path): the cluster file's auth.keys does not list this key's public half (\(Base64URL.encode(raw))); add it there, or pass --key-id.",
                                context: ["file": path])
        }
        return TokenIssuer(key: EdDSA.PrivateKey(backing: key), keyID: listed.id)
    }

    /// The signing key as a PEM file holds it.
    public var pemRepresentation: String { key.pemRepresentation }
    /// The public half, as the cluster file lists it.
    public var verificationKey: AuthConfig.VerificationKey {
        AuthConfig.VerificationKey(id: keyID, publicKey: Array(key.publicKey.rawRepresentation))
    }

    /// A key id from the public key: `ed25519-` and the first 8 bytes of its SHA-256, in hex.
    static func defaultKeyID(_ publicKey: [UInt8]) -> String {
        "ed25519-" + SHA256.hash(data: publicKey).prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// Signs a token.
    /// - Parameters:
    ///   - cluster: The cluster the token opens (its `iss`).
    ///   - principal: Who the token speaks for.
    ///   - scope: What it allows.
    ///   - ttlSeconds: How long it is valid.
    ///   - nowMs: The wall clock, in ms since the Unix epoch.
    public func issue(cluster: String, principal: String, scope: AccessScope, ttlSeconds: UInt64, nowMs: UInt64) async throws(MeridianError) -> IssuedToken {
        guard Principal.validName(principal) else {
            throw MeridianError(.invalidParameter, "The principal must be 1 to \(Principal.nameBytesMax) printable characters without spaces.")
        }
        try scope.validate()
        let id = Base64URL.encode((0..<16).map { _ in UInt8.random(in: 0...255) })
        let issued = Date(timeIntervalSince1970: Double(nowMs / 1000))
        let expires = Date(timeIntervalSince1970: Double(nowMs / 1000 + ttlSeconds))
        let claims = TokenClaims(
            iss: IssuerClaim(value: cluster), sub: SubjectClaim(value: principal), jti: IDClaim(value: id),
            iat: IssuedAtClaim(value: issued), exp: ExpirationClaim(value: expires),
            scope: TokenClaims.Scope(keyspaces: scope.keyspaces, ops: scope.operations.sorted().map(\.rawValue), prefix: scope.keyPrefix,
                                     regions: scope.regions?.map(\.rawValue)))
        let keys = JWTKeyCollection()
        await keys.add(eddsa: key, kid: JWKIdentifier(string: keyID))
        do {
            let token = try await keys.sign(claims, kid: JWKIdentifier(string: keyID))
            return IssuedToken(token: token, id: id, expiresAtMs: (nowMs / 1000 + ttlSeconds) * 1000)
        } catch {
            throw MeridianError(.internalError, "Signing the token failed: \(error)")
        }
    }
}

/// Verifies client tokens locally, in every region: the signature against the cluster file's keys, the cluster,
/// the lifetime against this node's clock, revocation, and the scope's shape.
///
/// Verified tokens are cached (bounded), so a client sending the same token pays for the signature check once;
/// expiry and revocation are checked on every request, cached or not.
public final class TokenVerifier: RequestAuthenticator {
    /// The longest `Authorization` header accepted.
    public static let tokenBytesMax = 8192
    /// The most verified tokens kept; when full, the cache starts over.
    public static let cacheEntriesMax = 10_000
    /// How far a token's issue time may lie in this node's future (clocks differ between machines).
    public static let clockLeewaySeconds: UInt64 = 60

    private let keys: JWTKeyCollection
    private let cluster: String
    private let tokenTTLMaxSeconds: UInt64
    private let nowMs: @Sendable () -> UInt64
    private let cache = Mutex<[String: Principal]>([:])
    /// The revoked token ids this region knows of.
    public let revocations: RevocationList

    /// Creates a verifier for the cluster's `auth` keys.
    /// - Parameter nowMs: The node's wall clock, in ms since the Unix epoch.
    public static func make(auth: AuthConfig, cluster: String, nowMs: @escaping @Sendable () -> UInt64) async -> TokenVerifier {
        let keys = JWTKeyCollection()
        for key in auth.keys {
            // Validated by the config parser.
            guard let publicKey = try? Curve25519.Signing.PublicKey(rawRepresentation: key.publicKey) else { continue }
            await keys.add(eddsa: EdDSA.PublicKey(backing: publicKey), kid: JWKIdentifier(string: key.id))
        }
        // The first key added becomes the default, which would verify tokens naming an unknown key id.
        _ = await keys.clearDefault()
        return TokenVerifier(keys: keys, cluster: cluster, tokenTTLMaxSeconds: auth.tokenTTLMaxSeconds, nowMs: nowMs)
    }

    private init(keys: JWTKeyCollection, cluster: String, tokenTTLMaxSeconds: UInt64, nowMs: @escaping @Sendable () -> UInt64) {
        self.keys = keys
        self.cluster = cluster
        self.tokenTTLMaxSeconds = tokenTTLMaxSeconds
        self.nowMs = nowMs
        self.revocations = RevocationList(nowMs: nowMs)
    }

    public func authenticate(authorization: String?) async throws(MeridianError) -> Principal {
        let token = try Self.bearerToken(authorization)
        let principal: Principal
        if let cached = cache.withLock({ $0[token] }) {
            principal = cached
        } else {
            principal = try await verify(token)
            cache.withLock { cache in
                if cache.count >= Self.cacheEntriesMax { cache.removeAll(keepingCapacity: true) }
                cache[token] = principal
            }
        }
        guard nowMs() < principal.expiresAtMs else {
            throw Self.invalid("The token of '\(principal.name)' expired; issue a new one with `meridian token issue`.", reason: "expired")
        }
        guard !revocations.contains(principal.tokenID) else {
            throw Self.invalid("The token \(principal.tokenID) of '\(principal.name)' was revoked.", reason: "revoked")
        }
        return principal
    }

    /// The token an `Authorization` header carries.
    static func bearerToken(_ authorization: String?) throws(MeridianError) -> String {
        guard let authorization, !authorization.isEmpty else {
            throw MeridianError(.unauthenticated, "The request carries no token: send `Authorization: Bearer TOKEN` (`meridian token issue` makes one).",
                                context: ["reason": "missing"])
        }
        guard authorization.utf8.count <= tokenBytesMax else {
            throw invalid("The Authorization header is longer than \(tokenBytesMax) bytes.", reason: "malformed")
        }
        // Parsed as bytes: this runs on every request, and Foundation's trimming (through NSString and UTF-16)
        // measured at a tenth of a node's CPU time under a GET load.
        let bytes = authorization.utf8
        var index = bytes.startIndex
        for expected in "bearer".utf8 {
            // `| 0x20` lowercases an ASCII letter; only letters map onto these lowercase targets.
            guard index != bytes.endIndex, bytes[index] | 0x20 == expected else {
                throw invalid("The Authorization header must be `Bearer TOKEN`.", reason: "malformed")
            }
            bytes.formIndex(after: &index)
        }
        guard index != bytes.endIndex, bytes[index] == UInt8(ascii: " ") else {
            throw invalid("The Authorization header must be `Bearer TOKEN`.", reason: "malformed")
        }
        while index != bytes.endIndex, bytes[index] == UInt8(ascii: " ") { bytes.formIndex(after: &index) }
        var end = bytes.endIndex
        while end > index, bytes[bytes.index(before: end)] == UInt8(ascii: " ") { bytes.formIndex(before: &end) }
        var dots = 0
        for byte in bytes[index..<end] {
            guard byte > 0x20 && byte < 0x7F else { dots = -1; break }
            if byte == UInt8(ascii: ".") { dots += 1 }
        }
        guard dots == 2 else {
            throw invalid("The bearer token is not a JWT (three base64url parts separated by dots).", reason: "malformed")
        }
        let token = String(Substring(bytes[index..<end]))
        return token
    }

    /// Checks the signature and the claims of a token not seen before.
    private func verify(_ token: String) async throws(MeridianError) -> Principal {
        let claims: TokenClaims
        do {
            claims = try await keys.verify(token, as: TokenClaims.self)
        } catch let error as JWTError where error.errorType == .signatureVerificationFailed {
            throw Self.invalid("The token's signature does not verify against the key it names; it was altered or signed by another key.", reason: "bad_signature")
        } catch let error as JWTError where error.errorType == .noKeyProvided {
            throw Self.invalid("The token names a signing key this cluster does not list (auth.keys); it was issued for another cluster or with a retired key.",
                               reason: "unknown_key")
        } catch {
            throw Self.invalid("The token is malformed: it does not decode as a Meridian JWT.", reason: "malformed")
        }
        guard claims.iss.value == cluster else {
            throw Self.invalid("The token was issued for cluster '\(String(claims.iss.value.prefix(64)))', not '\(cluster)'.", reason: "wrong_cluster")
        }
        let name = claims.sub.value, id = claims.jti.value
        guard Principal.validName(name), Principal.validName(id) else {
            throw Self.invalid("The token's subject and id must be 1 to \(Principal.nameBytesMax) printable characters.", reason: "malformed")
        }
        let issuedMs = Self.milliseconds(claims.iat.value), expiresMs = Self.milliseconds(claims.exp.value)
        guard issuedMs <= nowMs() + Self.clockLeewaySeconds * 1000 else {
            throw Self.invalid("The token was issued in the future; check the issuer's clock.", reason: "not_yet_valid")
        }
        guard expiresMs > issuedMs, expiresMs - issuedMs <= tokenTTLMaxSeconds * 1000 else {
            throw Self.invalid("The token is valid for longer than auth.token_ttl_max_hours allows (\(tokenTTLMaxSeconds / 3600) h).", reason: "lifetime")
        }
        var operations: Set<AccessOperation> = []
        for op in claims.scope.ops {
            guard let operation = AccessOperation(rawValue: op) else {
                throw Self.invalid("The token grants an unknown operation '\(String(op.prefix(32)))'; operations are read, write and admin.", reason: "malformed")
            }
            operations.insert(operation)
        }
        var regions: [RegionName]?
        if let names = claims.scope.regions {
            regions = []
            for name in names.prefix(64) {
                do { regions?.append(try RegionName(name)) } catch {
                    throw Self.invalid("The token names an invalid region: \(error.message)", reason: "malformed")
                }
            }
        }
        let scope = AccessScope(keyspaces: claims.scope.keyspaces, operations: operations, keyPrefix: claims.scope.prefix, regions: regions)
        do { try scope.validate() } catch { throw Self.invalid(error.message, reason: "malformed") }
        return Principal(name: name, tokenID: id, scope: scope, expiresAtMs: expiresMs)
    }

    private static func milliseconds(_ date: Date) -> UInt64 {
        let seconds = date.timeIntervalSince1970
        guard seconds.isFinite, seconds > 0 else { return 0 }
        return UInt64(min(seconds, 1e12) * 1000)
    }

    static func invalid(_ message: String, reason: String) -> MeridianError {
        MeridianError(.unauthenticated, message, context: ["reason": reason])
    }
}

/// The token ids revoked in this region, each until the token it names would have expired anyway.
public final class RevocationList: Sendable {
    private let revoked = Mutex<[String: UInt64]>([:])
    private let nowMs: @Sendable () -> UInt64

    init(nowMs: @escaping @Sendable () -> UInt64) {
        self.nowMs = nowMs
    }

    /// Records a revocation; `untilMs` is when the token expires (after that it fails on its own).
    public func insert(_ id: String, untilMs: UInt64) {
        revoked.withLock { $0[id] = max($0[id] ?? 0, untilMs) }
    }

    public func contains(_ id: String) -> Bool {
        revoked.withLock { $0[id] != nil }
    }

    /// Forgets the revocations of tokens that have expired since; returns how many remain.
    @discardableResult
    public func dropExpired() -> Int {
        let now = nowMs()
        return revoked.withLock { revoked in
            revoked = revoked.filter { $0.value > now }
            return revoked.count
        }
    }

    public var count: Int { revoked.withLock { $0.count } }

    /// Takes in the revocations among entries committed in this region (from a peer's stream, or written here).
    public func apply(_ entries: [ReplicationEntry]) {
        for entry in entries where entry.keyspace == AuthConfig.revocationKeyspace && entry.operation == .put {
            insert(entry.key.rawValue, record: entry.value)
        }
    }

    /// Takes in one stored revocation; a record that does not decode still revokes, for the longest lifetime a token may have.
    public func insert(_ id: String, record: [UInt8], fallbackUntilMs: UInt64 = .max) {
        let decoded = try? JSONDecoder().decode(RevocationRecord.self, from: Data(record))
        insert(id, untilMs: decoded?.expiresAtMs ?? fallbackUntilMs)
    }
}

/// What the revocation keyspace stores under a token's id.
public struct RevocationRecord: Codable, Sendable, Hashable {
    /// When the revoked token expires, in ms since the Unix epoch.
    public var expiresAtMs: UInt64
    /// When it was revoked, by this region's clock.
    public var revokedAtMs: UInt64
    /// Who revoked it.
    public var by: String

    enum CodingKeys: String, CodingKey {
        case expiresAtMs = "expires_at_ms"
        case revokedAtMs = "revoked_at_ms"
        case by
    }

    public init(expiresAtMs: UInt64, revokedAtMs: UInt64, by: String) {
        self.expiresAtMs = expiresAtMs
        self.revokedAtMs = revokedAtMs
        self.by = by
    }
}
