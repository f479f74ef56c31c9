// Proves idempotent writes with real processes behind the WAN emulator: the same write (one Idempotency-Key)
// sent to each of three regions is applied once, in a multi-leader keyspace with `idempotency: home` (retries meet at
// the key's idempotency home), to a CRDT counter (an increment counted once), in a multi-leader keyspace of the
// default scope once the write has replicated (taken where it arrives), and in a single-leader keyspace across a
// failover (the leader that took it is killed; the retry at the new leader gets the first answer). Every answer is
// the same: status 200, the same ETag, and `Idempotent-Replayed: true` on the retries.
import Foundation
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct IdempotencyLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async, idempotency: home }
              - { name: likes, topology: multi-leader, conflict: crdt, ack: async, idempotency: home }
              - { name: notes, topology: multi-leader, conflict: lww, ack: async }

            """

        /// Per region, how far it has each origin's log (its own written, every other applied), once every region agrees.
        /// A trim of the log does not move these, so equal listings before and after mean nothing was written.
        static func settledLogs(_ cluster: LiveCluster, regions: [String]) async throws -> [String: Int] {
            let logs = try await eventually(timeoutSeconds: 20, { () async throws -> [[String: Int]] in
                var all: [[String: Int]] = []
                for region in regions { all.append(((try? await cluster.status(region))?["log"] as? [String: Int]) ?? [:]) }
                return all
            }, until: { (all: [[String: Int]]) in Set(all).count == 1 && !(all.first ?? [:]).isEmpty })
            return logs.first ?? [:]
        }

        static func entries(_ logs: [String: Int]) -> Int { logs.values.reduce(0, +) }

        @Test(.timeLimit(.minutes(3)))
        func theSameWriteRetriedIntoThreeRegionsAndAcrossAFailoverIsAppliedOnce() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                try await cluster.waitUntilLinksUp()
                try await FailoverLiveTests.expectLeading(cluster, "us-east", "accounts")
                var connections: [String: HTTPConnection] = [:]
                for region in cluster.regions { connections[region] = try await cluster.connect(region) }
                let before = Self.entries(try await Self.settledLogs(cluster, regions: cluster.regions))

                // A multi-leader put, sent to every region in turn: one version, wherever the retry lands.
                let put = UUID().uuidString
                var answers: [HTTPResult] = []
                for region in cluster.regions {
                    answers.append(try await connections[region]!.request("PUT", "/v1/kv/profiles/ada", headers: [("Idempotency-Key", put)],
                                                                         body: Array("first".utf8)))
                }
                #expect(answers.allSatisfy { $0.status == 200 }, "\(answers.map(\.text))")
                #expect(Set(answers.map { $0.header("ETag") ?? "" }).count == 1, "one version: \(answers.map { $0.header("ETag") ?? "" })")
                #expect(answers.filter { $0.header("Idempotent-Replayed") == "true" }.count == 2, "\(answers.map { $0.header("Idempotent-Replayed") ?? "-" })")
                #expect(answers.allSatisfy { $0.header("Meridian-Idempotency") == nil }, "every region reached the idempotency home")
                // A different request under the same key is refused, nothing written.
                let reused = try await connections["eu-west"]!.request("PUT", "/v1/kv/profiles/ada", headers: [("Idempotency-Key", put)], body: Array("second".utf8))
                #expect(reused.status == 422 && reused.text.contains("idempotency_key_reused") && reused.text.contains("\"applied\":\"no\""), "\(reused.text)")

                // A CRDT increment, sent to every region: counted once.
                let like = UUID().uuidString
                var increments: [HTTPResult] = []
                for region in cluster.regions {
                    increments.append(try await connections[region]!.request("POST", "/v1/crdt/likes/post-1", headers: [("Idempotency-Key", like)],
                                                                            body: Array(#"{"type":"pn-counter","op":"increment","by":5}"#.utf8)))
                }
                #expect(increments.allSatisfy { $0.status == 200 && $0.text.contains("\"value\":5") }, "\(increments.map(\.text))")
                #expect(Set(increments.map { $0.header("ETag") ?? "" }).count == 1)
                for region in cluster.regions {
                    let value = try await eventually({ try await connections[region]!.request("GET", "/v1/crdt/likes/post-1").text }, until: { $0.contains("\"value\":5") })
                    #expect(value.contains("\"value\":5"), "\(region): \(value)")
                }
                let afterMultiLeader = Self.entries(try await Self.settledLogs(cluster, regions: cluster.regions))
                #expect(afterMultiLeader - before == 2, "one log entry for the put, one for the increment: \(afterMultiLeader - before)")

                // The default scope (local): taken where it arrives, no hop; a retry there, or anywhere the write has
                // replicated to, gets the first answer.
                let note = UUID().uuidString
                let local = try await connections["eu-west"]!.request("PUT", "/v1/kv/notes/n1", headers: [("Idempotency-Key", note)], body: Array("x".utf8))
                #expect(local.status == 200 && local.text.contains("\"region\":\"eu-west\"") && local.header("Meridian-Forwarded-To") == nil, "\(local.text)")
                let settled = try await Self.settledLogs(cluster, regions: cluster.regions)
                for region in cluster.regions {
                    let retry = try await connections[region]!.request("PUT", "/v1/kv/notes/n1", headers: [("Idempotency-Key", note)], body: Array("x".utf8))
                    #expect(retry.status == 200 && retry.header("ETag") == local.header("ETag") && retry.header("Idempotent-Replayed") == "true", "\(region): \(retry.text)")
                }
                #expect(try await Self.settledLogs(cluster, regions: cluster.regions) == settled, "the retries wrote nothing")

                // A single-leader write taken by us-east (sent to eu-west, forwarded), acknowledged by a majority; then us-east dies.
                let transfer = UUID().uuidString
                let first = try await connections["eu-west"]!.request("PUT", "/v1/kv/accounts/alice", headers: [("Idempotency-Key", transfer)], body: Array("100".utf8))
                #expect(first.status == 200 && first.header("Meridian-Forwarded-To") == "us-east", "\(first.status) \(first.text)")
                let logsBeforeFailover = try await Self.settledLogs(cluster, regions: cluster.regions)
                await cluster.kill9("us-east")
                await connections["us-east"]!.close()
                connections["us-east"] = nil
                // The retry, at ap-southeast, until a survivor leads: then the first answer, not a second write.
                var retried: HTTPResult?
                let killed = ContinuousClock.now
                while ContinuousClock.now - killed < .seconds(30) {
                    let response = try await connections["ap-southeast"]!.request("PUT", "/v1/kv/accounts/alice", headers: [("Idempotency-Key", transfer)],
                                                                                 body: Array("100".utf8))
                    if response.status == 200 { retried = response; break }
                    #expect([503, 504].contains(response.status), "a refusal while the leader is gone is a 503/504: \(response.text)")
                    try await Task.sleep(for: .milliseconds(50))
                }
                let retry = try #require(retried, "a survivor took over within 30 s")
                #expect(retry.header("ETag") == first.header("ETag") && retry.header("Idempotent-Replayed") == "true", "\(retry.text)")
                #expect(Int(retry.header("Meridian-Epoch") ?? "") == Int(first.header("Meridian-Epoch") ?? ""), "the first write's term answers")
                let again = try await connections["eu-west"]!.request("PUT", "/v1/kv/accounts/alice", headers: [("Idempotency-Key", transfer)], body: Array("100".utf8))
                #expect(again.status == 200 && again.header("ETag") == first.header("ETag"), "\(again.text)")
                // No new entry in any survivor's log: neither survivor's own log grew (a retry applied again would be
                // an entry of the new leader's), and us-east's log ends at the first write, whose sequence
                // its version names (the ETag ends with it).
                let survivors = ["eu-west", "ap-southeast"]
                let logsAfter = try await Self.settledLogs(cluster, regions: survivors)
                let firstSequence = Int(first.header("ETag")?.trimmingCharacters(in: CharacterSet(charactersIn: "\"")).split(separator: ".").last ?? "") ?? 0
                #expect(firstSequence > 0, "the first write's ETag names its sequence: \(first.header("ETag") ?? "none")")
                #expect(survivors.allSatisfy { (logsAfter[$0] ?? 0) <= max(logsBeforeFailover[$0] ?? 0, settled[$0] ?? 0) } && (logsAfter["us-east"] ?? 0) <= firstSequence,
                        "before \(logsBeforeFailover), after \(logsAfter), the first write us-east #\(firstSequence)")
                for (_, connection) in connections { await connection.close() }
            }
        }
    }
}
