// Proves the cluster file parser builds the documented policies (defaults included) and that every
// kind of mistake is rejected with a message naming the file, the path inside it and what is allowed.
import MeridianCore
import Testing

@Suite struct ClusterConfigTests {
    static let regions = """
        regions:
          - { name: us-east, client: 127.0.0.1:7101, peer: 127.0.0.1:7201 }
          - { name: eu-west, client: 127.0.0.1:7102, peer: 127.0.0.1:7202 }
          - { name: ap-southeast, client: 127.0.0.1:7103, peer: 127.0.0.1:7203 }

        """

    @Test func demoClusterParsesWithEveryKindOfKeyspace() throws {
        let config = try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo.yaml")
        #expect(config.regions.map(\.name.rawValue) == ["us-east", "eu-west", "ap-southeast"])
        #expect(config.regions.map(\.client.port) == [7101, 7102, 7103])
        #expect(config.regions.map(\.peer.port) == [7201, 7202, 7203])
        #expect(config.wan.rttMs(RegionName(validated: "eu-west"), RegionName(validated: "us-east")) == 81)
        let topologies = Set(config.keyspaces.map(\.topology))
        #expect(topologies == Set(Topology.allCases))
        let accounts = try #require(config.keyspace(KeyspaceName("accounts")))
        #expect(accounts.leader?.rawValue == "us-east" && accounts.ack == .majority)
        #expect(accounts.failover?.order.first?.rawValue == "us-east")
        let conflicts = Set(config.keyspaces.compactMap(\.conflict))
        #expect(conflicts.isSuperset(of: [.lww, .crdt, .siblings]))
        let eu = try #require(config.keyspace(KeyspaceName("eu_users")))
        #expect(eu.replicas.map(\.rawValue) == ["eu-west"])
        #expect(eu.residency.classification == .restricted)
        #expect(eu.writeRegion(for: try Key("anything"))?.rawValue == "eu-west")
    }

    @Test func appliesDocumentedDefaults() throws {
        let config = try ClusterConfig.parse(yaml: Self.regions + """
            keyspaces:
              - { name: s, topology: single-leader, leader: eu-west }
              - { name: m, topology: multi-leader }
            """, file: "c.yaml")
        let single = try #require(config.keyspace(KeyspaceName("s")))
        #expect(single.ack == .majority)
        #expect(single.replicas.count == 3)
        #expect(single.consistency.allowed.contains(.strong))
        #expect(single.failover?.order.map(\.rawValue) == ["eu-west", "ap-southeast", "us-east"])
        let multi = try #require(config.keyspace(KeyspaceName("m")))
        #expect(multi.conflict == .lww && multi.ack == .async)
        #expect(!multi.consistency.allowed.contains(.strong))
        #expect(multi.consistency.default == .session)
        #expect(config.limits == Limits())
    }

    @Test func geoPartitionedHomesPickTheLongestPrefix() throws {
        let config = try ClusterConfig.parse(yaml: Self.regions + """
            keyspaces:
              - name: users
                topology: geo-partitioned
                home: us-east
                homes:
                  - { prefix: "eu/", region: eu-west }
                  - { prefix: "eu/ap/", region: ap-southeast }
            """, file: "c.yaml")
        let users = try #require(config.keyspace(KeyspaceName("users")))
        #expect(users.writeRegion(for: try Key("eu/1"))?.rawValue == "eu-west")
        #expect(users.writeRegion(for: try Key("eu/ap/1"))?.rawValue == "ap-southeast")
        #expect(users.writeRegion(for: try Key("us/1"))?.rawValue == "us-east")
    }

    /// Each bad file, the path its error must name, and a phrase the message must contain.
    static let badFiles: [(String, String, String)] = [
        ("", "c.yaml", "empty"),
        ("regions: [\n", "c.yaml", "not valid YAML"),
        ("cluster: x\nregionz: []\n", "regionz", "unknown field"),
        ("regions: []\n", "regions", "at least one region"),
        ("regions:\n  - { name: US, client: 127.0.0.1:1, peer: 127.0.0.1:2 }\n", "regions[0].name", "a-z"),
        ("regions:\n  - { name: a, client: localhost, peer: 127.0.0.1:2 }\n", "regions[0].client", "host:port"),
        ("regions:\n  - { name: a, client: 127.0.0.1:1, peer: 127.0.0.1:1 }\n", "regions[0].peer", "already used"),
        ("regions:\n  - { name: a, client: 127.0.0.1:1, peer: 127.0.0.1:2 }\n  - { name: a, client: 127.0.0.1:3, peer: 127.0.0.1:4 }\n", "regions[1].name", "defined twice"),
        (regions + "keyspaces:\n  - { name: k }\n", "keyspaces[0].topology", "single-leader, multi-leader or geo-partitioned"),
        (regions + "keyspaces:\n  - { name: k, topology: star }\n", "keyspaces[0].topology", "use one of single-leader, multi-leader, geo-partitioned"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader }\n", "keyspaces[0].leader", "names its leader"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: mars }\n", "keyspaces[0].leader", "not a region of this cluster"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: us-east, ack: mostly }\n", "keyspaces[0].ack", "async, majority, all"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: us-east, conflict: lww }\n", "keyspaces[0].conflict", "multi-leader"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, conflict: newest }\n", "keyspaces[0].conflict", "lww, fww, region-priority, crdt, siblings"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, conflict: region-priority }\n", "keyspaces[0].priority", "winning order"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, conflict: region-priority, priority: [us-east] }\n", "keyspaces[0].priority", "every replica"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, consistency: { allowed: [strong] } }\n", "keyspaces[0].consistency.allowed[0]", "one writer"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, consistency: { default: strong } }\n", "keyspaces[0].consistency.default", "not among the allowed"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: us-east, residency: { regions: [eu-west] } }\n", "keyspaces[0].leader", "must be one of the replicas"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, replicas: [us-east], residency: { regions: [eu-west] } }\n", "keyspaces[0].replicas[0]", "outside the keyspace's residency"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, residency: { regions: [eu-west], classification: global } }\n", "keyspaces[0].residency.classification", "restricted"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, residency: { access: maybe } }\n", "keyspaces[0].residency.access", "proxy, deny"),
        (regions + "keyspaces:\n  - { name: k, topology: geo-partitioned }\n", "keyspaces[0].home", "default home"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: us-east, failover: { missed_heartbeats: 0 } }\n", "keyspaces[0].failover.missed_heartbeats", "out of range"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: us-east, failover: { order: [us-east, eu-west] } }\n", "keyspaces[0].failover.order", "every replica"),
        (regions + "keyspaces:\n  - { name: k, topology: single-leader, leader: us-east, failover: { order: [eu-west, us-east, ap-southeast] } }\n", "keyspaces[0].failover.order", "put it first"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader, cache: { ttl_ms: -1 } }\n", "keyspaces[0].cache.ttl_ms", "out of range"),
        (regions + "keyspaces:\n  - { name: k, topology: multi-leader }\n  - { name: k, topology: multi-leader }\n", "keyspaces[1].name", "defined twice"),
        (regions + "keyspaces:\n  - { name: Bad!, topology: multi-leader }\n", "keyspaces[0].name", "a-z"),
        (regions + "limits: { value_bytes_max: 0 }\n", "limits.value_bytes_max", "out of range"),
        (regions + "limits: { list_limit_default: 50, list_limit_max: 10 }\n", "limits.list_limit_default", "list_limit_max"),
        (regions + "limits: { failback_steady_ms: -1 }\n", "limits.failback_steady_ms", "out of range"),
        (regions + "limits: { election_grace_silences: 1000 }\n", "limits.election_grace_silences", "out of range"),
        (regions + "wan: { rtt_ms: [ { between: [us-east], ms: 3 } ] }\n", "wan.rtt_ms[0].between", "exactly two"),
        (regions + "wan: { latency_scale: fast }\n", "wan.latency_scale", "expected a number"),
        (store("{ kind: mysql }"), "regions[0].store.kind", "sqlite or postgres"),
        (store("{ url: 'postgres://m@db/r' }"), "regions[0].store.kind", "sqlite or postgres"),
        (store("{ kind: postgres }"), "regions[0].store.url", "needs a url"),
        (store("{ kind: sqlite, url: 'postgres://m@db/r' }"), "regions[0].store.url", "takes no url"),
        (store("{ kind: postgres, url: 'mysql://m@db/r' }"), "regions[0].store.url", "not a PostgreSQL URL"),
        (store("{ kind: postgres, url: 'postgres://m:secret@db/r' }"), "regions[0].store.url", "holds a password"),
        (store("{ kind: postgres, url: 'postgres://db/r' }"), "regions[0].store.url", "names no user"),
        (store("{ kind: postgres, url: 'postgres://m@db' }"), "regions[0].store.url", "names no database"),
        (store("{ kind: postgres, url: 'postgres://m@db/r?sslmode=prefer' }"), "regions[0].store.url", "verify-full"),
        (store("{ kind: postgres, url: 'postgres://m@db/r?sslmode=require&sslrootcert=/ca.pem' }"), "regions[0].store.url", "only with sslmode=verify-full"),
        (store("{ kind: postgres, url: 'postgres://m@db/r?application_name=x' }"), "regions[0].store.url", "not supported"),
        (store("{ kind: postgres, url: 'postgres://m@db/r', password_env: 'A-B' }"), "regions[0].store.password_env", "environment variable"),
        (store("{ kind: postgres, url: 'postgres://m@db/r', password_env: A, password_file: /p }"), "regions[0].store.password_env", "not both"),
        (store("{ kind: postgres, url: 'postgres://m@db/r', pasword_env: A }"), "regions[0].store.pasword_env", "unknown field"),
        (store("{ kind: postgres, url: 'postgres://m@db/r', lease_ttl_ms: 500 }"), "regions[0].store.lease_ttl_ms", "out of range"),
        (store("{ kind: sqlite, lease_ttl_ms: 5000 }"), "regions[0].store.lease_ttl_ms", "takes no lease_ttl_ms"),
    ]

    static func store(_ store: String) -> String {
        "regions:\n  - { name: us-east, client: 127.0.0.1:7101, peer: 127.0.0.1:7201, store: \(store) }\n"
    }

    @Test func aRegionsStoreIsSQLiteUnlessItNamesAPostgreSQLDatabaseWhosePasswordStaysOutOfTheFile() throws {
        let config = try ClusterConfig.parse(yaml: """
            regions:
              - { name: us-east, client: 127.0.0.1:7101, peer: 127.0.0.1:7201 }
              - name: eu-west
                client: 127.0.0.1:7102
                peer: 127.0.0.1:7202
                store: { kind: postgres, url: "postgresql://meridian@db.eu-west.internal/meridian_eu", password_env: MERIDIAN_POSTGRES_PASSWORD }
              - name: ap-southeast
                client: 127.0.0.1:7103
                peer: 127.0.0.1:7203
                store: { kind: postgres, url: "postgres://m@[::1]:6432/ap?sslmode=verify-full&sslrootcert=/etc/ca.pem", password_file: /run/secrets/pg, lease_ttl_ms: 2000 }
              - { name: sa-east, client: 127.0.0.1:7104, peer: 127.0.0.1:7204, store: { kind: sqlite } }
            """, file: "c.yaml")
        #expect(config.regions.map(\.store) == [
            .sqlite,
            .postgres(PostgresStoreConfig(host: "db.eu-west.internal", user: "meridian", database: "meridian_eu", tls: .verifyFull,
                                          password: .environment("MERIDIAN_POSTGRES_PASSWORD"))),
            .postgres(PostgresStoreConfig(host: "::1", port: 6432, user: "m", database: "ap", tls: .verifyFull, rootCertificateFile: "/etc/ca.pem",
                                          password: .file("/run/secrets/pg"), leaseTTLMs: 2_000)),
            .sqlite,
        ])
        guard case .postgres(let settings) = config.regions[2].store else { return }
        #expect(settings.url == "postgres://m@[::1]:6432/ap?sslmode=verify-full&sslrootcert=/etc/ca.pem")
    }

    @Test(arguments: 0..<badFiles.count)
    func rejectsBadFilesNamingFileAndPath(_ index: Int) {
        let (yaml, path, phrase) = Self.badFiles[index]
        do {
            _ = try ClusterConfig.parse(yaml: yaml, file: "c.yaml")
            Issue.record("accepted bad file #\(index)")
        } catch {
            #expect(error.code == .invalidConfig)
            #expect(error.message.hasPrefix(path == "c.yaml" ? "c.yaml" : "c.yaml: \(path):"), "message: \(error.message)")
            #expect(error.message.contains(phrase), "message: \(error.message)")
        }
    }
}
