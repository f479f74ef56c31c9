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
            let cluster = try LiveCluster(keyspaces: Self.keyspaces, logLevel: "debug")
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
    }
}
