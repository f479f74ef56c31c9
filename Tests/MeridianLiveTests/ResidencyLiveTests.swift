// Residency you can prove (issue 21), with real processes: a restricted keyspace's key names never show outside
// its residency, not in the answers a proxying region composes, its logs, its metrics or its status, and nothing
// about the keyspace is cacheable wherever it is relayed.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct ResidencyLiveTests {
        static let keyspaces = """
              - { name: eu_health, topology: geo-partitioned, home: eu-west, replicas: [eu-west], residency: { regions: [eu-west], access: proxy } }
              - { name: eu_likes, topology: multi-leader, conflict: crdt, replicas: [eu-west], residency: { regions: [eu-west], access: proxy } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }

            """

        @Test(.timeLimit(.minutes(3)))
        func keyNamesOfARestrictedKeyspaceNeverShowOutsideItsResidency() async throws {
            let cluster = try await LiveCluster(keyspaces: Self.keyspaces, logLevel: "debug")
            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                let secret = "alice.marker-7f3a@example.eu"
                let encoded = secret.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "@"))) ?? secret
                let us = try await cluster.connect("us-east")
                var answers: [(String, HTTPResult)] = []
                answers.append(("missing read", try await us.request("GET", "/v1/kv/eu_health/\(encoded)")))
                answers.append(("write", try await us.request("PUT", "/v1/kv/eu_health/\(encoded)", body: Array("record".utf8))))
                answers.append(("stale If-Match", try await us.request("PUT", "/v1/kv/eu_health/\(encoded)", headers: [("If-Match", "\"1.0.eu-west.999\"")],
                                                                        body: Array("lost".utf8))))
                answers.append(("read", try await us.request("GET", "/v1/kv/eu_health/\(encoded)")))
                answers.append(("CRDT increment", try await us.request("POST", "/v1/crdt/eu_likes/\(encoded)", body: Array(#"{"type":"g-counter","op":"increment","by":1}"#.utf8))))
                answers.append(("CRDT read as a value", try await us.request("GET", "/v1/kv/eu_likes/\(encoded)")))
                answers.append(("unserved method", try await us.request("PATCH", "/v1/kv/eu_health/\(encoded)", body: Array("x".utf8))))
                answers.append(("no route", try await us.request("GET", "/v1/kv/eu_health/\(encoded)/../../nowhere/x")))
                #expect(answers[0].1.status == 404 && answers[1].1.status == 200 && answers[2].1.status == 412 && answers[3].1.status == 200,
                        "\(answers.map { "\($0.0): \($0.1.status)" })")
                #expect(answers[0].1.text.contains(KeyNameHasher.prefix) && answers[2].1.text.contains(KeyNameHasher.prefix),
                        "the hash stands in for the key: \(answers[0].1.text) \(answers[2].1.text)")
                for (name, answer) in answers {
                    // Errors never name the key; every answer about the keyspace is uncacheable where it is relayed.
                    if answer.status >= 400 { #expect(!answer.text.contains(secret) && !answer.text.contains(encoded), "\(name): \(answer.text)") }
                    #expect(answer.header("Cache-Control") == "no-store", "\(name): Cache-Control \(answer.header("Cache-Control") ?? "none")")
                }
                #expect(answers[3].1.text == "record" && answers[3].1.header("Meridian-Forwarded-To") == "eu-west", "proxied to its residency")
                // The same for a global keyspace's key: shown as it is.
                let plain = try await us.request("GET", "/v1/kv/profiles/\(encoded)")
                #expect(plain.status == 404 && plain.text.contains(secret), "\(plain.text)")

                // Nothing in us-east's or ap-southeast's logs (at debug level), metrics or status names the key.
                for region in ["us-east", "ap-southeast"] {
                    let connection = try await cluster.connect(region)
                    for path in ["/metrics", "/v1/status", "/v1/topology"] {
                        let answer = try await connection.request("GET", path)
                        #expect(!answer.text.contains(secret) && !answer.text.contains("alice.marker"), "\(region) \(path) names the key")
                    }
                    await connection.close()
                }
                await us.close()
                // No node can dump its memory to a core file.
                for region in cluster.regions {
                    let pid = try #require(cluster.local.pid(try RegionName(region)))
                    let limits = (try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? ""
                    let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }.map { $0.split(separator: " ", omittingEmptySubsequences: true) } ?? []
                    #expect(core.count >= 6 && core[4] == "0" && core[5] == "0", "\(region): \(core.joined(separator: " "))")
                }
                for region in ["us-east", "ap-southeast"] {
                    let log = (try? String(contentsOfFile: cluster.local.log(try RegionName(region)), encoding: .utf8)) ?? ""
                    #expect(!log.isEmpty, "\(region) wrote a log")
                    #expect(!log.contains("alice.marker"), "\(region)'s log names the key")
                }
            }
        }

        static let sealedKeyspaces = """
              - { name: vault, topology: multi-leader, conflict: lww, replicas: [eu-west, ap-southeast], residency: { regions: [eu-west, ap-southeast], access: proxy } }
              - { name: vault_counts, topology: multi-leader, conflict: crdt, replicas: [eu-west, ap-southeast], residency: { regions: [eu-west, ap-southeast], access: proxy } }
              - { name: vault_sibs, topology: multi-leader, conflict: siblings, replicas: [eu-west, ap-southeast], residency: { regions: [eu-west, ap-southeast], access: proxy } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }

            """

        /// Runs `meridian residency check` for one keyspace over the cluster's directory.
        static func residencyCheck(_ cluster: LiveCluster, keyspace: String, markers: [String], keyNames: [String] = []) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCLI(["residency", "check", "--config", cluster.config, "--keyspace", keyspace, "--data", cluster.scratch.path]
                       + markers.flatMap { ["--marker", $0] } + keyNames.flatMap { ["--key-name", $0] })
        }

        @Test(.timeLimit(.minutes(4)))
        func sealedValuesAreCiphertextEverywhereTheyRestAndAnErasureReachesEveryReplica() async throws {
            let cluster = try await LiveCluster(keyspaces: Self.sealedKeyspaces)
            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                let run = UUID().uuidString.prefix(8)
                let markers = (1...6).map { "mk\($0)-\(run)-plain" }
                let eu = try await cluster.connect("eu-west"), ap = try await cluster.connect("ap-southeast"), us = try await cluster.connect("us-east")
                defer { Task { await eu.close(); await ap.close(); await us.close() } }
                // Every path in: direct in each replica region, proxied from outside the residency, a CRDT, siblings.
                #expect(try await eu.request("PUT", "/v1/kv/vault/ada@example.eu/email", body: Array(markers[0].utf8)).status == 200)
                let proxied = try await us.request("PUT", "/v1/kv/vault/bob@example.eu/email", body: Array(markers[1].utf8))
                #expect(proxied.status == 200 && proxied.header("Meridian-Forwarded-To") != nil, "\(proxied.status) \(proxied.text)")
                #expect(try await ap.request("PUT", "/v1/kv/vault/carol@example.eu/email", headers: [("Meridian-Subject", "carol")],
                                             body: Array(markers[2].utf8)).status == 200)
                let add = #"{"type":"or-set","op":"add","elements":["\#(markers[3])"]}"#
                #expect(try await us.request("POST", "/v1/crdt/vault_counts/ada@example.eu/tags", body: Array(add.utf8)).status == 200)
                #expect(try await eu.request("PUT", "/v1/kv/vault_sibs/ada@example.eu/note", body: Array(markers[4].utf8)).status == 200)
                #expect(try await ap.request("PUT", "/v1/kv/vault_sibs/ada@example.eu/note", body: Array(markers[5].utf8)).status == 200)
                // A header subject on a keyspace that is not sealed is refused.
                #expect(try await eu.request("PUT", "/v1/kv/profiles/p1", headers: [("Meridian-Subject", "x")], body: Array("v".utf8)).status == 400)

                // Each replica reads what the other took: the data keys came along with replication.
                let fromAP = try await eventually(timeoutSeconds: 20) { try await ap.request("GET", "/v1/kv/vault/ada@example.eu/email") } until: { $0.status == 200 }
                #expect(fromAP.text == markers[0], "\(fromAP.status) \(fromAP.text)")
                let fromEU = try await eventually(timeoutSeconds: 20) { try await eu.request("GET", "/v1/kv/vault/carol@example.eu/email") } until: { $0.status == 200 }
                #expect(fromEU.text == markers[2], "\(fromEU.status) \(fromEU.text)")
                let tags = try await eventually(timeoutSeconds: 20) { try await ap.request("GET", "/v1/crdt/vault_counts/ada@example.eu/tags") } until: { $0.text.contains(markers[3]) }
                #expect(tags.text.contains(markers[3]), "\(tags.status) \(tags.text)")
                let siblings = try await eventually(timeoutSeconds: 20) { try await eu.request("GET", "/v1/kv/vault_sibs/ada@example.eu/note") } until: { $0.status == 300 }
                #expect(siblings.text.contains(markers[4]) || siblings.text.contains(Data(markers[4].utf8).base64EncodedString()), "\(siblings.status) \(siblings.text)")
                let relayed = try await us.request("GET", "/v1/kv/vault/ada@example.eu/email")
                #expect(relayed.text == markers[0] && relayed.header("Cache-Control") == "no-store")
                // Anti-entropy moves the same ciphertext.
                for connection in [eu, ap] { #expect(try await connection.request("POST", "/v1/admin/repair").status == 200) }

                // Nowhere a marker in any form: not outside the residency, and not in plaintext inside it; no key
                // name outside it.
                let names = ["ada@example.eu/email", "bob@example.eu/email", "carol@example.eu/email"]
                for (keyspace, planted) in [("vault", Array(markers[0...2])), ("vault_counts", [markers[3]]), ("vault_sibs", Array(markers[4...5]))] {
                    let check = try await Self.residencyCheck(cluster, keyspace: keyspace, markers: planted, keyNames: keyspace == "vault" ? names : [])
                    #expect(check.status == 0 && check.stdout.contains(": 0 hits"), "\(keyspace): \(check.stdout) \(check.stderr)")
                }
                // The check finds what is there: a marker written to a global keyspace is in every region, in plaintext.
                let control = "control-\(run)-plain"
                #expect(try await eu.request("PUT", "/v1/kv/profiles/control", body: Array(control.utf8)).status == 200)
                _ = try await eventually(timeoutSeconds: 20) { try await us.request("GET", "/v1/kv/profiles/control") } until: { $0.status == 200 }
                let caught = try await Self.residencyCheck(cluster, keyspace: "vault", markers: [control])
                #expect(caught.status == 1 && caught.stdout.contains("HIT us-east") && caught.stdout.contains("plaintext inside the residency"), "\(caught.stdout)")

                // Erasure: in every replica region at once; reads answer 410 erased there and through a proxy. Another
                // subject is untouched, and the erased subject's new writes read again.
                let erased = try await runCLI(["erase", "--config", cluster.config, "--region", "eu-west", "--keyspace", "vault", "--subject", "ada@example.eu"])
                #expect(erased.status == 0 && erased.stdout.contains("eu-west") && erased.stdout.contains("ap-southeast"), "\(erased)")
                for (name, connection) in [("eu-west", eu), ("ap-southeast", ap), ("us-east", us)] {
                    let gone = try await connection.request("GET", "/v1/kv/vault/ada@example.eu/email")
                    #expect(gone.status == 410 && gone.text.contains("erased"), "\(name): \(gone.status) \(gone.text)")
                }
                #expect(try await ap.request("GET", "/v1/kv/vault/bob@example.eu/email").text == markers[1])
                #expect(try await eu.request("PUT", "/v1/kv/vault/ada@example.eu/email", body: Array("fresh".utf8)).status == 200)
                #expect(try await eu.request("GET", "/v1/kv/vault/ada@example.eu/email").text == "fresh")
                // Erasing from outside the residency is refused; a keyspace that is not sealed has nothing to erase.
                let outside = try await runCLI(["erase", "--config", cluster.config, "--region", "us-east", "--keyspace", "vault", "--subject", "bob@example.eu"])
                #expect(outside.status != 0 && outside.stderr.contains("not_replica_region"), "\(outside)")
                let plain = try await runCLI(["erase", "--config", cluster.config, "--region", "eu-west", "--keyspace", "profiles", "--subject", "bob@example.eu"])
                #expect(plain.status != 0 && plain.stderr.contains("invalid_request"), "\(plain)")

                // Key rotation in every region: values still read, new writes too, and only the new epoch's root key
                // is left in each region's file.
                let rotated = try await runCLI(["keys", "rotate", "--all", "--config", cluster.config])
                #expect(rotated.status == 0 && rotated.stdout.contains("eu-west: epoch 2") && rotated.stdout.contains("epochs 1 destroyed"), "\(rotated)")
                #expect(try await ap.request("GET", "/v1/kv/vault/bob@example.eu/email").text == markers[1])
                #expect(try await eu.request("GET", "/v1/kv/vault/carol@example.eu/email").text == markers[2])
                #expect(try await eu.request("PUT", "/v1/kv/vault/dan@example.eu/email", body: Array("after".utf8)).status == 200)
                let keyFile = try String(contentsOfFile: cluster.local.rootKeyFile(RegionName(validated: "eu-west")), encoding: .utf8)
                #expect(keyFile.contains("epoch 2 ") && !keyFile.contains("epoch 1 ") && keyFile.contains("audit "), "\(keyFile.count) bytes")
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aRegionThatMissedAnErasureLearnsItBeforeServingTheSubjectAgain() async throws {
            let cluster = try await LiveCluster(keyspaces: Self.sealedKeyspaces)
            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                let eu = try await cluster.connect("eu-west")
                #expect(try await eu.request("PUT", "/v1/kv/vault/erin@example.eu/email", body: Array("erin-value-1".utf8)).status == 200)
                let ap = try await cluster.connect("ap-southeast")
                let before = try await eventually(timeoutSeconds: 20) { try await ap.request("GET", "/v1/kv/vault/erin@example.eu/email") } until: { $0.status == 200 }
                #expect(before.text == "erin-value-1")
                await ap.close()
                // ap-southeast is down while the subject is erased: the erasure names it as pending.
                await cluster.kill9("ap-southeast")
                let partial = try await runCLI(["erase", "--config", cluster.config, "--region", "eu-west", "--keyspace", "vault", "--subject", "erin@example.eu"])
                #expect(partial.status != 0 && partial.stderr.contains("region_unavailable") && partial.stderr.contains("ap-southeast"), "\(partial)")
                #expect(try await eu.request("GET", "/v1/kv/vault/erin@example.eu/email").status == 410)
                // Back up, it still holds the key; its next anti-entropy round with eu-west learns the erasure first.
                try await cluster.restartNode("ap-southeast")
                try await cluster.waitUntilLinksUp()
                let restarted = try await cluster.connect("ap-southeast")
                #expect(try await restarted.request("POST", "/v1/admin/repair?keyspace=vault").status == 200)
                let after = try await restarted.request("GET", "/v1/kv/vault/erin@example.eu/email")
                #expect(after.status == 410 && after.text.contains("erased"), "\(after.status) \(after.text)")
                let trail = try await eventually(timeoutSeconds: 10) { try await restarted.request("GET", "/v1/audit?limit=10000") } until: { $0.text.contains("learned_from") }
                #expect(trail.text.contains("\"learned_from\":\"eu-west\""), "the learned erasure is on ap-southeast's trail")
                await restarted.close()
                await eu.close()
            }
        }
    }
}
