// Proves client authentication and authorization over the router: every route but the open ones answers 401
// without a valid token (missing, malformed, forged, from another key or cluster, expired, revoked), and 403
// naming the missing scope when the token does not cover the request (operation, keyspace, key prefix, region).
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import MeridianCore
@testable import MeridianNode
import MeridianSecurity
import NIOCore
import PropertyBased
import Testing

struct AuthFixture {
    let issuer: TokenIssuer
    let yaml: String

    init(open: String = "[openapi]") throws {
        issuer = try TokenIssuer.generate(keyID: "test-key")
        yaml = NodeFixture.yaml + """

            session_secret: 0123456789abcdef0123456789abcdef
            auth:
              keys:
                - { id: test-key, public_key: \(issuer.verificationKey.encodedPublicKey) }
              open: \(open)
              token_ttl_max_hours: 48
            """
    }

    static var nowMs: UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

    func token(_ keyspaces: [String] = ["*"], ops: Set<AccessOperation> = [.read, .write, .admin], prefix: String? = nil,
               regions: [String]? = nil, ttlSeconds: UInt64 = 3600, issuedMs: UInt64 = AuthFixture.nowMs, cluster: String = "test",
               principal: String = "tester") async throws -> IssuedToken {
        try await issuer.issue(cluster: cluster, principal: principal,
                               scope: AccessScope(keyspaces: keyspaces, operations: ops, keyPrefix: prefix, regions: regions?.map { RegionName(validated: $0) }),
                               ttlSeconds: ttlSeconds, nowMs: issuedMs)
    }

    static func bearer(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)"] }
}

/// The error's code, reason and missing scope, after checking the 401/403 shape (JSON error, `WWW-Authenticate`).
func authError(_ response: TestResponse) throws -> (code: String, reason: String?, missing: String?) {
    let code = try errorCode(response)
    let error = try #require(try json(response)["error"] as? [String: Any])
    switch code {
    case "unauthenticated":
        #expect(response.status == .unauthorized)
        #expect(response.headers[.wwwAuthenticate]?.hasPrefix("Bearer realm=\"meridian\"") == true)
    case "forbidden":
        #expect(response.status == .forbidden)
        #expect(response.headers[.wwwAuthenticate]?.contains("insufficient_scope") == true)
    default:
        Issue.record("expected 401 or 403, got \(response.status) \(code)")
    }
    return (code, error["reason"] as? String, error["missing_scope"] as? String)
}

@Suite struct AuthTests {
    let fixture = NodeFixture()

    @Test func withoutATokenEveryRouteButTheOpenOnesAnswers401() async throws {
        let auth = try AuthFixture()
        try await fixture.withApp(yaml: auth.yaml) { client in
            try await client.execute(uri: "/health", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/openapi.yaml", method: .get) { #expect($0.status == .ok) }
            let guarded: [(String, HTTPRequest.Method)] = [
                ("/metrics", .get), ("/v1/status", .get), ("/v1/keyspaces", .get), ("/v1/kv/profiles", .get), ("/v1/kv/profiles/a", .get),
                ("/v1/kv/profiles/a", .put), ("/v1/kv/profiles/a", .delete), ("/v1/crdt/likes/a", .get), ("/v1/crdt/likes/a", .post),
                ("/v1/conflicts/profiles", .get), ("/v1/admin/repair", .post), ("/v1/admin/merkle/profiles", .get), ("/v1/failovers", .get),
                ("/v1/admin/failover", .post), ("/v1/divergence", .get), ("/v1/admin/divergence/1/reapply", .post),
                ("/v1/admin/tokens/revoke", .post), ("/v1/nowhere", .get), ("/nowhere", .get),
            ]
            for (path, method) in guarded {
                try await client.execute(uri: path, method: method) { response throws in
                    let refused = try authError(response)
                    #expect(refused.code == "unauthenticated" && refused.reason == "missing", "\(method) \(path)")
                    #expect(response.headers[.wwwAuthenticate] == "Bearer realm=\"meridian\"")
                }
            }
        }
    }

    @Test func aValidTokenIsServedAndTheForwardedPrincipalIsCarried() async throws {
        let auth = try AuthFixture()
        let token = try await auth.token().token
        try await fixture.withApp(yaml: auth.yaml) { client in
            try await client.execute(uri: "/v1/kv/profiles/a", method: .put, headers: AuthFixture.bearer(token), body: ByteBuffer(string: "1")) {
                #expect($0.status == .ok)
            }
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get, headers: AuthFixture.bearer(token)) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "1")
            }
            try await client.execute(uri: "/metrics", method: .get, headers: AuthFixture.bearer(token)) { #expect($0.status == .ok) }
            // A route that does not exist is a 404 once the caller is known.
            try await client.execute(uri: "/v1/nowhere", method: .get, headers: AuthFixture.bearer(token)) { #expect($0.status == .notFound) }
        }
    }

    @Test func scopesThatDoNotCoverTheRequestAnswer403NamingWhatIsMissing() async throws {
        let auth = try AuthFixture()
        let readOnly = try await auth.token(["profiles"], ops: [.read]).token
        let profilesOnly = try await auth.token(["profiles"], ops: [.read, .write]).token
        let prefixed = try await auth.token(["profiles"], ops: [.read, .write], prefix: "users/").token
        let euOnly = try await auth.token(regions: ["eu-west"]).token
        let writer = try await auth.token(["*"], ops: [.read, .write]).token
        try await fixture.withApp(yaml: auth.yaml) { client in
            let cases: [(String, HTTPRequest.Method, String, String)] = [
                (readOnly, .put, "/v1/kv/profiles/a", "op:write"),
                (readOnly, .delete, "/v1/kv/profiles/a", "op:write"),
                (profilesOnly, .get, "/v1/kv/carts/a", "keyspace:carts"),
                (profilesOnly, .post, "/v1/crdt/likes/a", "keyspace:likes"),
                (prefixed, .get, "/v1/kv/profiles/admins/1", "prefix:users/"),
                (prefixed, .get, "/v1/kv/profiles", "prefix:users/"),
                (prefixed, .get, "/v1/conflicts/profiles", "prefix:users/"),
                (euOnly, .get, "/v1/kv/profiles/a", "region:us-east"),
                (writer, .post, "/v1/admin/repair", "op:admin"),
                (writer, .get, "/v1/kv/_revocations/x", "keyspace:_revocations"),
                (writer, .put, "/v1/kv/_revocations/x", "keyspace:_revocations"),
            ]
            for (token, method, path, missing) in cases {
                try await client.execute(uri: path, method: method, headers: AuthFixture.bearer(token), body: ByteBuffer(string: "v")) { response throws in
                    let refused = try authError(response)
                    #expect(refused.code == "forbidden" && refused.missing == missing, "\(method) \(path): \(refused)")
                    if method != .get { #expect(try errorApplied(response) == "no") }
                }
            }
            // What the scopes do cover is served.
            try await client.execute(uri: "/v1/kv/profiles/users/1", method: .put, headers: AuthFixture.bearer(prefixed), body: ByteBuffer(string: "v")) {
                #expect($0.status == .ok)
            }
            try await client.execute(uri: "/v1/kv/profiles?prefix=users/", method: .get, headers: AuthFixture.bearer(prefixed)) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/profiles/users/1", method: .get, headers: AuthFixture.bearer(readOnly)) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/status", method: .get, headers: AuthFixture.bearer(readOnly)) { #expect($0.status == .ok) }
        }
    }

    @Test func badTokensAnswer401WithTheReason() async throws {
        let auth = try AuthFixture()
        let other = try AuthFixture()
        let good = try await auth.token().token
        let expired = try await auth.token(ttlSeconds: 60, issuedMs: AuthFixture.nowMs - 3_600_000).token
        let tooLong = try await auth.token(ttlSeconds: 49 * 3600).token
        let otherCluster = try await auth.token(cluster: "prod").token
        let forged = try await other.token().token  // same key id, another key
        let parts = good.split(separator: ".").map(String.init)
        let tampered = [parts[0], Base64URL.encode(Array(#"{"iss":"test","sub":"root","jti":"x","iat":1,"exp":99999999999,"scope":{"keyspaces":["*"],"ops":["admin"]}}"#.utf8)), parts[2]].joined(separator: ".")
        let unknownKid = [Base64URL.encode(Array(#"{"alg":"EdDSA","typ":"JWT","kid":"retired"}"#.utf8)), parts[1], parts[2]].joined(separator: ".")
        let noKid = [Base64URL.encode(Array(#"{"alg":"EdDSA","typ":"JWT"}"#.utf8)), parts[1], parts[2]].joined(separator: ".")
        let algNone = [Base64URL.encode(Array(#"{"alg":"none","kid":"test-key"}"#.utf8)), parts[1], ""].joined(separator: ".")
        let cases: [(String, String)] = [
            ("Bearer \(expired)", "expired"), ("Bearer \(tooLong)", "lifetime"), ("Bearer \(otherCluster)", "wrong_cluster"),
            ("Bearer \(forged)", "bad_signature"), ("Bearer \(tampered)", "bad_signature"), ("Bearer \(unknownKid)", "unknown_key"),
            ("Bearer \(noKid)", "unknown_key"), ("Bearer \(algNone)", "bad_signature"), ("Basic dXNlcjpwYXNz", "malformed"), ("Bearer", "malformed"),
            ("Bearer not-a-jwt", "malformed"), ("Bearer a.b.c", "malformed"), ("Bearer \(parts[0]).\(parts[1]).%%%", "malformed"),
            ("Bearer " + String(repeating: "a", count: 9000), "malformed"),
        ]
        try await fixture.withApp(yaml: auth.yaml) { client in
            for (header, reason) in cases {
                try await client.execute(uri: "/v1/kv/profiles/a", method: .get, headers: [.authorization: header]) { response throws in
                    let refused = try authError(response)
                    #expect(refused.code == "unauthenticated" && refused.reason == reason, "\(header.prefix(60)): \(refused)")
                    #expect(response.headers[.wwwAuthenticate]?.contains("invalid_token") == true)
                }
            }
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get, headers: AuthFixture.bearer(good)) { #expect($0.status == .notFound) }
        }
    }

    @Test func aRevokedTokenAnswers401AndTheRevocationTravelsInTheSystemKeyspace() async throws {
        let auth = try AuthFixture()
        let admin = try await auth.token(principal: "ops").token
        let victim = try await auth.token(["profiles"], ops: [.read])
        try await fixture.withNode(yaml: auth.yaml) { node, client in
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get, headers: AuthFixture.bearer(victim.token)) { #expect($0.status == .notFound) }
            // Only an admin token may revoke.
            try await client.execute(uri: "/v1/admin/tokens/revoke", method: .post, headers: AuthFixture.bearer(victim.token),
                                     body: ByteBuffer(string: #"{"id":"\#(victim.id)"}"#)) { response throws in #expect(try authError(response).missing == "op:admin") }
            for bad in [#"{}"#, #"{"id":""}"#, #"{"id":"x","extra":1}"#, #"{"id":"x","expires_at_ms":-1}"#, "[", #"{"id":"a b"}"#] {
                try await client.execute(uri: "/v1/admin/tokens/revoke", method: .post, headers: AuthFixture.bearer(admin), body: ByteBuffer(string: bad)) {
                    #expect($0.status == .badRequest, "\(bad)")
                }
            }
            try await client.execute(uri: "/v1/admin/tokens/revoke", method: .post, headers: AuthFixture.bearer(admin),
                                     body: ByteBuffer(string: #"{"id":"\#(victim.id)","expires_at_ms":\#(victim.expiresAtMs)}"#)) { response throws in
                #expect(response.status == .ok)
                #expect(try json(response)["id"] as? String == victim.id)
            }
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get, headers: AuthFixture.bearer(victim.token)) { response throws in
                let refused = try authError(response)
                #expect(refused.code == "unauthenticated" && refused.reason == "revoked")
            }
            // The revocation is a write in the system keyspace: what replication carries to the other regions.
            let stored = try #require(try await node.store.get(keyspace: AuthConfig.revocationKeyspace, key: Key(victim.id)))
            let record = try JSONDecoder().decode(RevocationRecord.self, from: Data(stored.value))
            #expect(record.by == "ops" && record.expiresAtMs == victim.expiresAtMs)
            // Another token of the same principal is not affected.
            let sibling = try await auth.token(["profiles"], ops: [.read]).token
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get, headers: AuthFixture.bearer(sibling)) { #expect($0.status == .notFound) }
        }
    }

    @Test func revocationsArrivingByReplicationTakeEffect() async throws {
        let auth = try AuthFixture()
        let victim = try await auth.token()
        let verifier = await TokenVerifier.make(auth: try #require(try ClusterConfig.parse(yaml: auth.yaml, file: "t").auth), cluster: "test",
                                                nowMs: { AuthFixture.nowMs })
        #expect(try await verifier.authenticate(authorization: "Bearer \(victim.token)").name == "tester")
        let record = try JSONEncoder().encode(RevocationRecord(expiresAtMs: victim.expiresAtMs, revokedAtMs: 1, by: "ops"))
        let entry = ReplicationEntry(origin: RegionName(validated: "eu-west"), sequence: 1,
                                     hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: RegionName(validated: "eu-west")), epoch: 0,
                                     keyspace: AuthConfig.revocationKeyspace, key: try Key(victim.id), operation: .put,
                                     contentType: "application/json", value: Array(record), dependencies: [:], context: [:])
        let unrelated = ReplicationEntry(origin: RegionName(validated: "eu-west"), sequence: 2,
                                         hlc: HLCTimestamp(physicalMs: 2, logical: 0, region: RegionName(validated: "eu-west")), epoch: 0,
                                         keyspace: try KeyspaceName("profiles"), key: try Key("other"), operation: .put,
                                         contentType: "text/plain", value: [], dependencies: [:], context: [:])
        verifier.revocations.apply([unrelated])
        #expect(verifier.revocations.count == 0)
        verifier.revocations.apply([entry])
        await #expect(throws: MeridianError.self) { try await verifier.authenticate(authorization: "Bearer \(victim.token)") }
    }

    /// Whatever a client sends as a token, the verifier answers a principal or `unauthenticated`: it never
    /// crashes, never answers another error, and never accepts a token it did not sign.
    @Test func theTokenParserSurvivesArbitraryAndMutatedInput() async throws {
        let auth = try AuthFixture()
        let good = try await auth.token().token
        let verifier = await TokenVerifier.make(auth: try #require(try ClusterConfig.parse(yaml: auth.yaml, file: "t").auth), cluster: "test",
                                                nowMs: { AuthFixture.nowMs })
        let goodID = try await verifier.authenticate(authorization: "Bearer \(good)").tokenID
        await propertyCheck(count: 400, input: Gen.uint8(in: 0...255).array(of: 0...300), Gen.int(in: 0...(good.utf8.count - 1)), Gen.uint8(in: 0...255)) { noise, position, byte in
            var mutated = Array(good.utf8)
            mutated[position] = byte
            for candidate in [String(decoding: noise, as: UTF8.self), "Bearer " + String(decoding: noise, as: UTF8.self),
                              "Bearer " + String(decoding: mutated, as: UTF8.self)] {
                do throws(MeridianError) {
                    let principal = try await verifier.authenticate(authorization: candidate)
                    // Only the token it signed passes: untouched, or spelled differently in the signature's last
                    // character's unused bits (base64url leaves 4 of them), which decodes to the same signature.
                    #expect(principal.tokenID == goodID)
                    #expect(candidate == "Bearer \(good)" || position == good.utf8.count - 1, "accepted a token mutated at \(position)")
                } catch {
                    #expect(error.code == .unauthenticated)
                }
            }
        }
    }
}
