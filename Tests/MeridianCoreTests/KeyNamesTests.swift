@testable import MeridianCore
import Testing

/// A restricted keyspace's key names are shown only as keyed hashes; other keyspaces' keys as they are.
@Suite struct KeyNamesTests {
    static let yaml = """
        cluster: keynames
        regions:
          - { name: us-east, peer: 127.0.0.1:1, client: 127.0.0.1:2 }
          - { name: eu-west, peer: 127.0.0.1:3, client: 127.0.0.1:4 }
        keyspaces:
          - { name: eu_health, topology: geo-partitioned, home: eu-west, replicas: [eu-west], residency: { regions: [eu-west], access: proxy } }
          - { name: profiles, topology: multi-leader, conflict: lww }
        """

    @Test func aRestrictedKeyIsShownAsItsHashEverywhereAnErrorShowsIt() throws {
        let cluster = try ClusterConfig.parse(yaml: Self.yaml, file: "keynames.yaml")
        let health = try #require(cluster.keyspace(try KeyspaceName("eu_health")))
        let profiles = try #require(cluster.keyspace(try KeyspaceName("profiles")))
        #expect(health.keyNamesArePrivate && !profiles.keyNamesArePrivate, "a partial residency is restricted by default")
        let key = try Key("alice@example.eu")
        let hash = cluster.shownKey(key, in: health)
        #expect(hash.hasPrefix(KeyNameHasher.prefix) && hash.count == KeyNameHasher.prefix.count + 24 && !hash.contains("alice"))
        #expect(hash == KeyNameHasher(sessionSecret: nil, clusterName: "keynames").hash(health.name, key), "the same in every region")
        #expect(hash != KeyNameHasher(sessionSecret: "0123456789abcdef", clusterName: "keynames").hash(health.name, key), "keyed by the session secret")
        #expect(hash != cluster.keyNameHasher.hash(profiles.name, key), "bound to the keyspace")
        #expect(cluster.shownKey(key, in: profiles) == "alice@example.eu")

        let error = MeridianError(.preconditionFailed, "Key 'alice@example.eu' changed; see /v1/kv/eu_health/alice@example.eu?x (alice@example.eu).",
                                  context: ["key": "alice@example.eu", "keyspace": "eu_health"])
        let shown = cluster.hidingKey(in: error, path: "/v1/kv/eu_health/alice%40example.eu")
        #expect(!shown.message.contains("'alice@example.eu'") && shown.message.contains("'\(hash)'") && shown.message.contains("/eu_health/\(hash)?"))
        #expect(shown.context["key"] == hash && shown.context["keyspace"] == "eu_health")
        #expect(cluster.hidingKey(in: error, path: "/v1/kv/profiles/alice@example.eu").message == error.message, "a global keyspace's key is shown")
        // A one-letter key does not eat the sentence: only quoted keys, path ends and whole context values go.
        let short = cluster.hiding(try Key("a"), of: health, in: MeridianError(.keyNotFound, "Key 'a' is not in keyspace 'eu_health'.", context: ["key": "a"]))
        #expect(short.message == "Key '\(cluster.keyNameHasher.hash(health.name, try Key("a")))' is not in keyspace 'eu_health'.")

        #expect(cluster.shownPath("/v1/kv/eu_health/alice%40example.eu") == "/v1/kv/eu_health/\(hash)")
        #expect(cluster.shownPath("/v1/kv/profiles/alice@example.eu") == "/v1/kv/profiles/alice@example.eu")
        #expect(cluster.pathNamesRestrictedKeyspace("/v1/kv/eu_health") && cluster.pathNamesRestrictedKeyspace("/v1/crdt/eu_health/x"))
        #expect(!cluster.pathNamesRestrictedKeyspace("/v1/kv/profiles/x") && !cluster.pathNamesRestrictedKeyspace("/v1/status"))
    }

    @Test func aRestrictedKeyspaceCannotBeCached() throws {
        let yaml = Self.yaml.replacingOccurrences(of: "access: proxy } }", with: "access: proxy }, cache: { ttl_ms: 1000 } }")
        do {
            _ = try ClusterConfig.parse(yaml: yaml, file: "keynames.yaml")
            Issue.record("a restricted keyspace with a cache was accepted")
        } catch {
            #expect(error.message.contains("cache") && error.message.contains("no-store"), "\(error.message)")
        }
    }
}
