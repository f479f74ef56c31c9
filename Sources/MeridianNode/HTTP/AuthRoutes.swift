import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianSecurity

/// The principal the request being served was authorized for, where it entered the cluster.
enum RequestPrincipal {
    @TaskLocal static var current: Principal?
}

extension RegionNode {
    /// Authenticates and authorizes a request before any route runs, then runs `serve` as its principal.
    /// Without `auth` in the cluster file every request is served as before.
    func authorized(_ request: Request, _ serve: () async throws -> Response) async throws -> Response {
        guard let verifier else { return try await serve() }
        // The query is parsed only for the routes that need it (a listing's prefix, a conflict's key).
        let requirement = RouteAccess.requirement(method: request.method.rawValue, path: request.uri.path, query: { request.uri.queryParameters.get($0) },
                                                  open: configuration.cluster.auth?.open ?? [])
        guard requirement != .open else { return try await serve() }
        var principal: Principal?
        do {
            let known = try await verifier.authenticate(authorization: request.headers[.authorization])
            principal = known
            try AccessRule.authorize(known, requirement, in: region)
        } catch {
            metrics.recordAuthRefusal(code: error.code.description, reason: error.context["reason"] ?? error.context["missing_scope"].map { $0.split(separator: ":").first.map(String.init) ?? "" } ?? "")
            // On the trail by method and keyspace, never by path (a restricted keyspace's key names stay out of it).
            var fields = ["method": request.method.rawValue]
            if case .operation(_, let keyspace, _) = requirement, let keyspace { fields["keyspace"] = keyspace.rawValue }
            if let principal {
                fields["principal"] = principal.name
                fields["missing_scope"] = error.context["missing_scope"] ?? ""
                audit?.record(.authorizationFailed, fields)
            } else {
                fields["reason"] = error.context["reason"] ?? error.code.description
                audit?.record(.authenticationFailed, fields)
            }
            throw error
        }
        guard let principal else { return try await serve() }
        return try await RequestPrincipal.$current.withValue(principal) { try await serve() }
    }

    /// Notes a request another region forwarded here, with the principal it was authorized for there.
    func recordForwarded(_ operation: String, keyspace: KeyspaceName, principal: String?, from peer: RegionName?) {
        guard let principal else { return }
        logger.info("serving a forwarded request", metadata: [
            "principal": "\(principal)", "operation": "\(operation)", "keyspace": "\(keyspace)", "from": "\(peer?.rawValue ?? "peer")",
        ])
    }

    /// The latest expiry a revocation may name: the last ms of the year 9999.
    static let expiresAtMsMax: UInt64 = 253_402_300_799_999

    /// `POST /v1/admin/tokens/revoke` with `{"id": "...", "expires_at_ms": N}`: revokes a token in every region.
    /// The revocation is written to the revocation keyspace here, takes effect here at once, and reaches the
    /// other regions through replication (anti-entropy after a partition).
    func revokeToken(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        guard let verifier, let auth = configuration.cluster.auth, let policy = configuration.cluster.keyspace(AuthConfig.revocationKeyspace) else {
            throw MeridianError(.routeNotFound, "Authentication is off in this cluster (no auth section in the cluster file): there are no tokens to revoke.")
        }
        let body = try await readBody(request)
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any], let id = object["id"] as? String,
              Set(object.keys).isSubset(of: ["id", "expires_at_ms"]) else {
            throw MeridianError(.invalidRequest, "The body must be a JSON object with \"id\" (the token's id, as `meridian token issue` printed it) and optionally \"expires_at_ms\".")
        }
        guard Principal.validName(id) else {
            throw MeridianError(.invalidParameter, "A token id has 1 to \(Principal.nameBytesMax) printable characters.", context: ["parameter": "id"])
        }
        let now = wallClockMs()
        let longest = now + auth.tokenTTLMaxSeconds * 1000
        var expiresAtMs = longest
        if let given = object["expires_at_ms"] {
            // Up to the year 9999: beyond it a number is not a time (and JSON numbers past 2^53 are not exact).
            guard let number = given as? NSNumber, !(given is Bool), let value = UInt64(exactly: number.doubleValue), value <= Self.expiresAtMsMax else {
                throw MeridianError(.invalidParameter, "expires_at_ms must be a whole number of ms since the Unix epoch, at most \(Self.expiresAtMsMax).",
                                    context: ["parameter": "expires_at_ms"])
            }
            expiresAtMs = min(value, longest)
        }
        let record = RevocationRecord(expiresAtMs: expiresAtMs, revokedAtMs: now, by: RequestPrincipal.current?.name ?? "unknown")
        let value = Array((try? JSONEncoder().encode(record)) ?? Data())
        _ = try await write(options: RequestOptions(), precondition: nil, contextToken: nil, policy: policy, key: try Key(id), operation: .put,
                            contentType: "application/json", value: value, forwarded: false)
        verifier.revocations.insert(id, untilMs: expiresAtMs)
        logger.notice("token revoked", metadata: ["token_id": "\(id)", "by": "\(record.by)"])
        return JSON.response(["id": id, "region": region.rawValue, "revoked_at_ms": String(now), "expires_at_ms": String(expiresAtMs)],
                             headers: [.cacheControl: "no-store"])
    }

    /// Loads every revocation this region holds (at start, and after anti-entropy repaired the keyspace).
    func loadRevocations() async {
        guard let verifier, configuration.cluster.auth != nil else { return }
        var after: String?
        // Bounded: a million revocations at most, a page at a time.
        for _ in 0..<1_000 {
            guard let page = try? await store.list(keyspace: AuthConfig.revocationKeyspace, prefix: "", after: after, limit: 1_000) else {
                logger.error("cannot read the revocation keyspace; revoked tokens arriving by replication still apply")
                return
            }
            for listed in page {
                if let stored = try? await store.get(keyspace: AuthConfig.revocationKeyspace, key: listed.key), !stored.tombstone {
                    verifier.revocations.insert(listed.key.rawValue, record: stored.value)
                }
            }
            guard page.count == 1_000, let last = page.last else { break }
            after = last.key.rawValue
        }
        verifier.revocations.dropExpired()
    }
}
