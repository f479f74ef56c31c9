// The access rule (what a token's scopes cover), the routes' requirements, and the cluster file's auth section.
import MeridianAPI
import MeridianCore
import Testing

@Suite struct AccessTests {
    static let usEast = RegionName(validated: "us-east")

    static func principal(_ keyspaces: [String], _ ops: Set<AccessOperation>, prefix: String? = nil, regions: [String]? = nil) -> Principal {
        Principal(name: "p", tokenID: "t", scope: AccessScope(keyspaces: keyspaces, operations: ops, keyPrefix: prefix, regions: regions?.map { RegionName(validated: $0) }),
                  expiresAtMs: .max)
    }

    static func missing(_ principal: Principal, _ requirement: AccessRequirement) -> String? {
        do throws(MeridianError) {
            try AccessRule.authorize(principal, requirement, in: usEast)
            return nil
        } catch {
            #expect(error.code == .forbidden)
            return error.context["missing_scope"] ?? "?"
        }
    }

    @Test func theRuleCoversExactlyWhatTheScopesName() throws {
        let profiles = try KeyspaceName("profiles"), carts = try KeyspaceName("carts"), system = try KeyspaceName("_revocations")
        let reader = Self.principal(["profiles"], [.read])
        #expect(Self.missing(reader, .operation(.read, keyspace: profiles, target: .key("a"))) == nil)
        #expect(Self.missing(reader, .operation(.write, keyspace: profiles, target: .key("a"))) == "op:write")
        #expect(Self.missing(reader, .operation(.read, keyspace: carts, target: .key("a"))) == "keyspace:carts")
        #expect(Self.missing(reader, .operation(.read, keyspace: nil, target: .keyspace)) == "keyspace:*")
        #expect(Self.missing(reader, .authenticated) == nil)
        let everything = Self.principal(["*"], [.read, .write, .admin])
        #expect(Self.missing(everything, .operation(.admin, keyspace: nil, target: .keyspace)) == nil)
        #expect(Self.missing(everything, .operation(.read, keyspace: carts, target: .listing(prefix: ""))) == nil)
        #expect(Self.missing(everything, .operation(.write, keyspace: system, target: .key("x"))) == "keyspace:_revocations")
        let prefixed = Self.principal(["profiles"], [.read], prefix: "users/")
        #expect(Self.missing(prefixed, .operation(.read, keyspace: profiles, target: .key("users/1"))) == nil)
        #expect(Self.missing(prefixed, .operation(.read, keyspace: profiles, target: .key("user"))) == "prefix:users/")
        #expect(Self.missing(prefixed, .operation(.read, keyspace: profiles, target: .listing(prefix: "users/a"))) == nil)
        #expect(Self.missing(prefixed, .operation(.read, keyspace: profiles, target: .listing(prefix: ""))) == "prefix:users/")
        #expect(Self.missing(prefixed, .operation(.read, keyspace: profiles, target: .keyspace)) == "prefix:users/")
        let elsewhere = Self.principal(["*"], [.read], regions: ["eu-west"])
        #expect(Self.missing(elsewhere, .authenticated) == "region:us-east")
        #expect(Self.missing(Self.principal(["*"], [.read], regions: ["eu-west", "us-east"]), .authenticated) == nil)
    }

    @Test func routesNeedWhatTheyDo() {
        func requirement(_ method: String, _ path: String, query: [String: String] = [:], open: Set<AuthConfig.OpenRoute> = []) -> AccessRequirement {
            RouteAccess.requirement(method: method, path: path, query: { query[$0] }, open: open)
        }
        let profiles = try! KeyspaceName("profiles")
        #expect(requirement("GET", "/health") == .open)
        #expect(requirement("GET", "/metrics") == .authenticated)
        #expect(requirement("GET", "/metrics", open: [.metrics]) == .open)
        #expect(requirement("GET", "/openapi.yaml", open: [.openapi]) == .open)
        #expect(requirement("GET", "/v1/kv/profiles/a%2Fb/c") == .operation(.read, keyspace: profiles, target: .key("a/b/c")))
        #expect(requirement("PUT", "/v1/kv/profiles/k") == .operation(.write, keyspace: profiles, target: .key("k")))
        #expect(requirement("DELETE", "/v1/kv/profiles/k") == .operation(.write, keyspace: profiles, target: .key("k")))
        #expect(requirement("GET", "/v1/kv/profiles", query: ["prefix": "u/"]) == .operation(.read, keyspace: profiles, target: .listing(prefix: "u/")))
        #expect(requirement("POST", "/v1/crdt/profiles/k") == .operation(.write, keyspace: profiles, target: .key("k")))
        #expect(requirement("GET", "/v1/conflicts/profiles", query: ["key": "k"]) == .operation(.read, keyspace: profiles, target: .key("k")))
        #expect(requirement("GET", "/v1/admin/merkle/profiles") == .operation(.admin, keyspace: profiles, target: .keyspace))
        for path in ["/v1/admin/repair", "/v1/admin/failover", "/v1/admin/tokens/revoke", "/v1/admin/divergence/3/reapply"] {
            #expect(requirement("POST", path) == .operation(.admin, keyspace: nil, target: .keyspace))
        }
        #expect(requirement("GET", "/v1/divergence") == .operation(.admin, keyspace: nil, target: .keyspace))
        for path in ["/v1/status", "/v1/keyspaces", "/v1/failovers", "/v1/nothing", "/x", "/", "/v1/kv/BAD!/k"] {
            #expect(requirement("GET", path) == .authenticated, "\(path)")
        }
    }

    static let base = """
        cluster: c
        regions:
          - { name: us-east, client: 127.0.0.1:1, peer: 127.0.0.1:2 }
        keyspaces:
          - { name: profiles, topology: multi-leader }
        """

    static func configError(_ yaml: String) -> String? {
        do throws(MeridianError) {
            _ = try ClusterConfig.parse(yaml: yaml, file: "c.yaml")
            return nil
        } catch {
            #expect(error.code == .invalidConfig)
            return error.message
        }
    }

    @Test func theAuthSectionIsValidated() throws {
        let key = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        let good = Self.base + "\nsession_secret: 0123456789abcdef0123456789abcdef\nauth: { keys: [{ id: k1, public_key: \(key) }], open: [metrics] }\n"
        let config = try ClusterConfig.parse(yaml: good, file: "c.yaml")
        #expect(config.auth?.keys.map(\.id) == ["k1"] && config.auth?.open == [.metrics])
        #expect(config.auth?.tokenTTLMaxSeconds == 720 * 3600)
        // The revocation keyspace rides along, in every region.
        let revocations = try #require(config.keyspace(AuthConfig.revocationKeyspace))
        #expect(revocations.topology == .multiLeader && revocations.replicas == config.regions.map(\.name))
        #expect(Self.configError(Self.base + "\nauth: { keys: [{ id: k1, public_key: \(key) }] }\n")?.contains("session_secret") == true)
        let secret = "\nsession_secret: 0123456789abcdef0123456789abcdef\n"
        #expect(Self.configError(Self.base + secret + "auth: { keys: [] }\n")?.contains("auth.keys") == true)
        #expect(Self.configError(Self.base + secret + "auth: { open: [metrics] }\n")?.contains("keygen") == true)
        #expect(Self.configError(Self.base + secret + "auth: { keys: [{ id: k1, public_key: abc }] }\n")?.contains("auth.keys[0].public_key") == true)
        #expect(Self.configError(Self.base + secret + "auth: { keys: [{ id: k1, public_key: \(key) }, { id: k1, public_key: \(key) }] }\n")?.contains("twice") == true)
        #expect(Self.configError(Self.base + secret + "auth: { keys: [{ id: k1, public_key: \(key) }], open: [status] }\n")?.contains("auth.open[0]") == true)
        #expect(Self.configError(Self.base + secret + "auth: { keys: [{ id: k1, public_key: \(key) }], token_ttl_max_hours: 0 }\n") != nil)
        #expect(Self.configError(Self.base + "\n  - { name: _mine, topology: multi-leader }\n")?.contains("reserved") == true)
    }
}
