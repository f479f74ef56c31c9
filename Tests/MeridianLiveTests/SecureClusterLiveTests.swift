// Proves the secure deployment with real processes behind the WAN emulator: TLS on every peer stream and on
// the client API, certificates from `meridian certs`, tokens from `meridian token`. Replication, forwarding,
// strong reads and a failover work; requests without a valid token or scope are refused in every region; a
// revoked or expired token is refused everywhere; only a region's own certificate from the cluster CA joins;
// and the CA rotates under load with no region restarted and no acknowledged write lost.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct SecureClusterLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }
              - { name: carts, topology: multi-leader, conflict: lww, ack: async }

            """

        /// Runs `body` against a started secure cluster whose launcher holds an admin token, and stops it afterwards.
        static func withSecureCluster(tlsFields: String = "reload_interval_ms: 300", clientCertificate: Bool = false,
                                      _ body: (LiveCluster) async throws -> Void) async throws {
            // Info: the leader's log records the principals of the requests forwarded to it.
            let cluster = try await LiveCluster(keyspaces: keyspaces, secure: true, logLevel: "info", tlsFields: tlsFields)
            cluster.local.credentials.token = try await cluster.issueToken(principal: "ops").token
            if clientCertificate {
                // The launcher's connections present us-east's certificate (any certificate of the cluster CA will do).
                let certs = cluster.certificates
                cluster.local.credentials.tls = try ClientTLS(caPath: "\(certs)/ca.pem", certificatePath: "\(certs)/us-east.pem", keyPath: "\(certs)/us-east.key")
            }
            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }, body)
        }

        static func bearer(_ token: String) -> [(String, String)] { [("Authorization", "Bearer \(token)")] }

        static func errorField(_ result: HTTPResult, _ field: String) -> String? {
            ((try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any])?["error"] as? [String: Any])?[field] as? String
        }

        /// The gateway in front of a secure cluster: HTTPS and the cluster's CA to every region, its own token to
        /// follow their topology, and each client's token passed through (a request without one is refused by the
        /// region, with its challenge).
        @Test func theGatewaySpeaksTLSToTheRegionsAndPassesTokensThrough() async throws {
            try await Self.withSecureCluster { cluster in
                let token = try #require(cluster.local.credentials.token)
                let listen = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
                try await cluster.local.startGateway(listen: listen, environment: ["MERIDIAN_TOKEN": token, "MERIDIAN_CACERT": "\(cluster.certificates)/ca.pem"])
                let gateway = try await HTTPConnection.connect(host: listen.host, port: listen.port, credentials: .none)
                defer { Task { await gateway.close() } }
                let status = try await eventually(timeoutSeconds: 20, {
                    (try? JSONSerialization.jsonObject(with: Data(try await gateway.request("GET", "/gateway/status", headers: [("Authorization", "Bearer \(token)")]).body))
                        as? [String: Any]) ?? [:]
                }, until: { ($0["regions"] as? [[String: Any]])?.allSatisfy { $0["stream"] as? String == "live" } == true })
                // The gateway's operator routes ask for what GET /v1/topology asks for (a region checks the token).
                let anonymousStatus = try await gateway.request("GET", "/gateway/status")
                #expect(anonymousStatus.status == 401 && anonymousStatus.header("WWW-Authenticate") == "Bearer" && anonymousStatus.text.contains("unauthenticated"),
                        "\(anonymousStatus.status) \(anonymousStatus.text)")
                let forged = try await gateway.request("GET", "/gateway/metrics", headers: [("Authorization", "Bearer not-a-token")])
                #expect(forged.status == 401 && !forged.text.contains("meridian_gateway"), "\(forged.status) \(forged.text)")
                let metrics = try await gateway.request("GET", "/gateway/metrics", headers: [("Authorization", "Bearer \(token)")])
                #expect(metrics.status == 200, "\(metrics.status) \(metrics.text)")
                #expect(try await gateway.request("GET", "/health").status == 200)
                #expect((status["regions"] as? [[String: Any]])?.allSatisfy { ($0["url"] as? String)?.hasPrefix("https://") == true } == true, "\(status)")
                #expect((status["regions"] as? [[String: Any]])?.allSatisfy { $0["stream"] as? String == "live" } == true, "the gateway follows every region over TLS: \(status)")
                let write = try await gateway.request("PUT", "/v1/kv/profiles/through-gateway", headers: [("Authorization", "Bearer \(token)"), ("CF-IPCountry", "JP")],
                                                      body: Array("tls".utf8))
                // The cluster file has no country map: the gateway routes by its measured latency.
                #expect(write.status == 200 && write.header("Meridian-Routed-To") != nil && write.header("Meridian-Routed-To") == write.header("Meridian-Region"),
                        "\(write.status) \(write.text)")
                let anonymous = try await gateway.request("GET", "/v1/kv/profiles/through-gateway", headers: [("CF-IPCountry", "DE")])
                #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate")?.hasPrefix("Bearer") == true, "\(anonymous.status) \(anonymous.text)")
                #expect(anonymous.header("Meridian-Routed-To") != nil && anonymous.header("Meridian-Routed-To") == anonymous.header("Meridian-Region"))
            }
        }

        @Test func replicationForwardingStrongReadsAndFailoverWorkAndBadCredentialsAreRefusedEverywhere() async throws {
            try await Self.withSecureCluster { cluster in
                let usEast = try await cluster.connect("us-east"), euWest = try await cluster.connect("eu-west"), apSoutheast = try await cluster.connect("ap-southeast")
                defer { Task { for connection in [usEast, euWest, apSoutheast] { await connection.close() } } }

                // Replication over mutual TLS: a write in us-east is read in ap-southeast.
                #expect(try await usEast.request("PUT", "/v1/kv/profiles/ada", body: Array("lovelace".utf8)).status == 200)
                #expect(try await cluster.waitForValue("ap-southeast", "/v1/kv/profiles/ada", "lovelace"))
                // Forwarding: a single-leader write sent to eu-west is taken by us-east, which records who asked.
                let forwarded = try await euWest.request("PUT", "/v1/kv/accounts/alice", body: Array("100".utf8))
                #expect(forwarded.status == 200 && forwarded.header("Meridian-Forwarded-To") == "us-east", "\(forwarded.text)")
                // A strong read in ap-southeast is forwarded to the leader and sees it.
                let strong = try await apSoutheast.request("GET", "/v1/kv/accounts/alice", headers: [("Meridian-Consistency", "strong")])
                #expect(strong.status == 200 && strong.text == "100", "\(strong.text)")
                let leaderLog = try String(contentsOfFile: cluster.local.log(RegionName(validated: "us-east")), encoding: .utf8)
                #expect(leaderLog.contains("serving a forwarded request") && leaderLog.contains("principal=ops"), "the leader records the forwarded principal")

                // Without a token, with too small a scope, expired or revoked: refused in every region.
                let reader = try await cluster.issueToken(principal: "reader", keyspaces: "profiles", ops: "read")
                let shortLived = try await cluster.issueToken(principal: "brief", ttl: "1s")
                let victim = try await cluster.issueToken(principal: "victim", keyspaces: "profiles", ops: "read")
                for connection in [usEast, euWest, apSoutheast] {
                    let anonymous = try await connection.request("GET", "/v1/kv/profiles/ada", headers: [("Authorization", "")])
                    #expect(anonymous.status == 401 && anonymous.header("WWW-Authenticate")?.hasPrefix("Bearer") == true)
                    let write = try await connection.request("PUT", "/v1/kv/profiles/ada", headers: Self.bearer(reader.token), body: Array("x".utf8))
                    #expect(write.status == 403 && Self.errorField(write, "missing_scope") == "op:write", "\(write.text)")
                    let other = try await connection.request("GET", "/v1/kv/carts/x", headers: Self.bearer(reader.token))
                    #expect(other.status == 403 && Self.errorField(other, "missing_scope") == "keyspace:carts", "\(other.text)")
                    #expect(try await connection.request("GET", "/v1/kv/profiles/ada", headers: Self.bearer(victim.token)).status == 200)
                }
                let revoke = try await runCLI(["token", "revoke", "--config", cluster.config, "--region", "eu-west", "--token", try #require(cluster.local.credentials.token), victim.token])
                #expect(revoke.status == 0, "\(revoke)")
                for connection in [usEast, euWest, apSoutheast] {
                    let refused = try await eventually(timeoutSeconds: 10, { try await connection.request("GET", "/v1/kv/profiles/ada", headers: Self.bearer(victim.token)) },
                                                       until: { $0.status == 401 })
                    #expect(refused.status == 401 && Self.errorField(refused, "reason") == "revoked", "\(refused.text)")
                    let expired = try await eventually(timeoutSeconds: 5, { try await connection.request("GET", "/v1/status", headers: Self.bearer(shortLived.token)) },
                                                       until: { $0.status == 401 })
                    #expect(Self.errorField(expired, "reason") == "expired", "\(expired.text)")
                }

                // A failover with TLS on every stream: eu-west takes accounts over and serves it.
                let failover = try await usEast.request("POST", "/v1/admin/failover", headers: [("Content-Type", "application/json")],
                                                        body: Array(#"{"keyspace":"accounts","to":"eu-west"}"#.utf8))
                #expect(failover.status == 200, "\(failover.text)")
                let afterFailover = try await euWest.request("PUT", "/v1/kv/accounts/bob", body: Array("7".utf8))
                #expect(afterFailover.status == 200 && afterFailover.header("Meridian-Forwarded-To") == nil, "\(afterFailover.text)")
            }
        }

        @Test func onlyARegionsOwnCertificateFromTheClusterCAJoins() async throws {
            try await Self.withSecureCluster { cluster in
                let certs = cluster.certificates
                let euWestPeer = try #require(cluster.local.config.region(RegionName(validated: "eu-west"))).peer
                let usEast = RegionName(validated: "us-east"), apSoutheast = RegionName(validated: "ap-southeast"), euWest = RegionName(validated: "eu-west")
                let ownCertificate = try PeerProbe.Identity(caPath: "\(certs)/ca.pem", certificatePath: "\(certs)/us-east.pem", keyPath: "\(certs)/us-east.key")
                // The probe itself works: us-east's certificate, saying it is us-east, is welcomed.
                #expect(await PeerProbe.knock(euWestPeer, identity: ownCertificate, cluster: "live", from: usEast, to: euWest) == .welcomed)
                // us-east's certificate cannot speak for ap-southeast.
                guard case .refused = await PeerProbe.knock(euWestPeer, identity: ownCertificate, cluster: "live", from: apSoutheast, to: euWest) else {
                    Issue.record("a stream with us-east's certificate joined as ap-southeast")
                    return
                }
                // Plaintext is refused.
                guard case .refused = await PeerProbe.knock(euWestPeer, identity: nil, cluster: "live", from: usEast, to: euWest) else {
                    Issue.record("a plaintext stream joined")
                    return
                }
                // A certificate from another CA, naming the right region, is refused.
                let base = cluster.scratch.file("base.yaml")
                for arguments in [["certs", "init"], ["certs", "issue", "--region", "us-east"]] {
                    #expect(try await runCLI(arguments + ["--config", base, "--dir", cluster.scratch.file("rogue")]).status == 0)
                }
                let rogue = cluster.scratch.file("rogue")
                let foreign = try PeerProbe.Identity(caPath: "\(certs)/ca.pem", certificatePath: "\(rogue)/us-east.pem", keyPath: "\(rogue)/us-east.key")
                guard case .refused = await PeerProbe.knock(euWestPeer, identity: foreign, cluster: "live", from: usEast, to: euWest) else {
                    Issue.record("a certificate of another CA joined")
                    return
                }
                let metrics = try await cluster.connect("eu-west").request("GET", "/metrics").text
                #expect(metrics.contains("meridian_peer_refusals_total{reason=\"identity_mismatch\"}"), "the refusal is counted")
                // And audited, with the region claimed and the one the certificate proves; so is a token used in a
                // region its scope excludes.
                let euOnly = try await cluster.issueToken(principal: "eu-only", keyspaces: "profiles", ops: "read", regions: "eu-west")
                let usConnection = try await cluster.connect("us-east")
                let outside = try await usConnection.request("GET", "/v1/kv/profiles/ada", headers: Self.bearer(euOnly.token))
                #expect(outside.status == 403, "\(outside.text)")
                for (region, expected) in [("eu-west", ["authentication_failed", "identity_mismatch", "ap-southeast", "us-east"]),
                                           ("us-east", ["authorization_failed", "eu-only"])] {
                    let connection = try await cluster.connect(region)
                    let trail = try await eventually(timeoutSeconds: 10) { try await connection.request("GET", "/v1/audit?limit=10000") } until: { answer in
                        expected.allSatisfy { answer.text.contains($0) }
                    }
                    #expect(expected.allSatisfy { trail.text.contains($0) }, "\(region)'s trail: \(trail.text.prefix(2000))")
                    await connection.close()
                }
                await usConnection.close()
                // A node given another region's certificate does not start, and says why.
                let misconfigured = try String(contentsOfFile: cluster.config, encoding: .utf8)
                    .replacingOccurrences(of: "cert: \(certs)/{region}.pem", with: "cert: \(certs)/us-east.pem")
                    .replacingOccurrences(of: "key: \(certs)/{region}.key", with: "key: \(certs)/us-east.key")
                let misconfiguredPath = cluster.scratch.file("misconfigured.yaml")
                try misconfigured.write(toFile: misconfiguredPath, atomically: true, encoding: .utf8)
                let refused = try await runCLI(["node", "--config", misconfiguredPath, "--region", "ap-southeast", "--data", cluster.scratch.file("rogue-data")], timeoutSeconds: 30)
                #expect(refused.status != 0 && refused.stderr.contains("is the certificate of us-east, not of ap-southeast"), "\(refused)")
            }
        }

        @Test func theCARotatesUnderLoadWithNoRegionRestartedAndNoAcknowledgedWriteLost() async throws {
            try await Self.withSecureCluster { cluster in
                let pids = cluster.regions.map { cluster.local.pid(RegionName(validated: $0)) }
                let base = cluster.scratch.file("base.yaml"), certs = cluster.certificates
                let connection = try await cluster.connect("us-east")
                let writer = Task { () -> [String] in
                    var acknowledged: [String] = []
                    defer { Task { await connection.close() } }
                    for index in 0..<100_000 where !Task.isCancelled {
                        let key = "k\(index)"
                        if let result = try? await connection.request("PUT", "/v1/kv/accounts/\(key)", body: Array("v\(index)".utf8)), result.status == 200 {
                            acknowledged.append(key)
                        }
                    }
                    return acknowledged
                }
                // The three steps, each once every region has had time to reload the last (reload_interval_ms: 300).
                for step in [["certs", "rotate"], ["certs", "issue", "--all"], ["certs", "rotate", "--finish"]] {
                    try await Task.sleep(for: .seconds(1.5))
                    let done = try await runCLI(step + ["--config", base, "--dir", certs])
                    #expect(done.status == 0, "\(done)")
                    // Clients take the bundle too: trusting both CAs mid-rotation, the new one after.
                    cluster.local.credentials.tls = try ClientTLS(caPath: "\(certs)/ca.pem")
                }
                try await Task.sleep(for: .seconds(2))
                writer.cancel()
                let acknowledged = try await writer.value
                #expect(acknowledged.count > 20, "writes ran during the rotation: \(acknowledged.count)")
                #expect(cluster.regions.map { cluster.local.pid(RegionName(validated: $0)) } == pids, "no region restarted")
                for region in cluster.regions {
                    let log = try String(contentsOfFile: cluster.local.log(RegionName(validated: region)), encoding: .utf8)
                    #expect(log.contains("reloaded the TLS certificates"), "\(region) reloaded")
                }
                // Streams came back on the new certificates, and every acknowledged write is everywhere.
                try await cluster.waitUntilLinksUp()
                let last = try #require(acknowledged.last)
                for region in cluster.regions {
                    #expect(try await cluster.waitForValue(region, "/v1/kv/accounts/\(last)", "v\(last.dropFirst())"))
                    let connection = try await cluster.connect(region)
                    defer { Task { await connection.close() } }
                    var missing: [String] = []
                    for key in acknowledged {
                        let read = try await connection.request("GET", "/v1/kv/accounts/\(key)", headers: [("Meridian-Consistency", "eventual")])
                        if read.status != 200 { missing.append(key) }
                    }
                    #expect(missing.isEmpty, "\(region) lacks \(missing.count) acknowledged writes, first \(missing.prefix(5))")
                }
            }
        }

        @Test func sigHupReloadsTheCertificatesAndTheNodeKeepsRunning() async throws {
            // Files are looked at only every ten minutes: only SIGHUP can make this reload.
            try await Self.withSecureCluster(tlsFields: "reload_interval_ms: 600000") { cluster in
                let base = cluster.scratch.file("base.yaml")
                #expect(try await runCLI(["certs", "issue", "--all", "--config", base, "--dir", cluster.certificates]).status == 0)
                let regions = cluster.regions.map { RegionName(validated: $0) }
                for region in regions {
                    #expect(try !String(contentsOfFile: cluster.local.log(region), encoding: .utf8).contains("reloaded the TLS certificates"))
                    kill(try #require(cluster.local.pid(region)), SIGHUP)
                }
                for region in regions {
                    let reloaded = try await eventually(timeoutSeconds: 10, { try String(contentsOfFile: cluster.local.log(region), encoding: .utf8) },
                                                        until: { $0.contains("reloaded the TLS certificates") && $0.contains("trigger=SIGHUP") })
                    #expect(reloaded.contains("trigger=SIGHUP"), "\(region) did not reload on SIGHUP")
                    #expect(cluster.local.process(region)?.isRunning == true, "SIGHUP ended \(region)")
                }
                try await cluster.waitUntilLinksUp()
                let connection = try await cluster.connect("eu-west")
                defer { Task { await connection.close() } }
                #expect(try await connection.request("PUT", "/v1/kv/profiles/after-hup", body: Array("x".utf8)).status == 200)
                #expect(try await cluster.waitForValue("ap-southeast", "/v1/kv/profiles/after-hup", "x"))
            }
        }

        @Test func aClientAPIThatRequiresCertificatesRefusesClientsWithoutOne() async throws {
            try await Self.withSecureCluster(tlsFields: "client_certificates: required", clientCertificate: true) { cluster in
                let certs = cluster.certificates
                let withCertificate = try await cluster.connect("eu-west")
                defer { Task { await withCertificate.close() } }
                #expect(try await withCertificate.request("GET", "/v1/status").status == 200)
                let client = try #require(cluster.local.config.region(RegionName(validated: "eu-west"))).client
                let without = try await HTTPConnection.connect(host: client.host, port: client.port, timeoutSeconds: 5,
                                                               credentials: ClientCredentials(token: cluster.local.credentials.token, tls: try ClientTLS(caPath: "\(certs)/ca.pem")))
                defer { Task { await without.close() } }
                await #expect(throws: ConnectionError.self) { try await without.request("GET", "/v1/status") }
            }
        }
    }
}
