// Proves the conflict policies on three real region processes behind the WAN emulator (latency scale 0.1):
// us-east and eu-west are cut apart and write the same keys; after the heal every region shows the value
// its keyspace's rule picks (lww, fww, region-priority), and every region's conflicts log names the loser.
// A siblings key answers 300 with both versions and is resolved by a write carrying the context. A like
// counter incremented in all three regions while each is cut off from the others ends at the exact total,
// and an add-wins cart keeps an item added on one side while the other side removed it.
import Foundation
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct ConflictLiveTests {
        static let keyspaces = """
              - { name: last, topology: multi-leader, conflict: lww, ack: async }
              - { name: first, topology: multi-leader, conflict: fww, ack: async }
              - { name: ranked, topology: multi-leader, conflict: region-priority, priority: [us-east, eu-west, ap-southeast], ack: async }
              - { name: carts, topology: multi-leader, conflict: siblings, ack: async }
              - { name: likes, topology: multi-leader, conflict: crdt, ack: async }

            """
        static let regions = ["us-east", "eu-west", "ap-southeast"]

        /// Polls every region until `check` holds for all of them (bounded), and returns the last answers.
        static func converge(_ connections: [HTTPConnection], _ path: String, seconds: Double = 15,
                             _ check: ([HTTPResult]) -> Bool) async throws -> [HTTPResult] {
            try await eventually(timeoutSeconds: seconds, {
                var answers: [HTTPResult] = []
                for connection in connections { answers.append(try await connection.request("GET", path)) }
                return answers
            }, until: check)
        }

        static func json(_ result: HTTPResult) -> [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any]) ?? [:]
        }

        @Test(.timeLimit(.minutes(3)), arguments: StoreMix.allCases)
        func everyPolicyResolvesAPartitionTheSameWayEverywhere(_ stores: StoreMix) async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, stores: stores) { cluster in
                var connections: [HTTPConnection] = []
                for region in Self.regions { connections.append(try await cluster.connect(region)) }
                defer { let all = connections; Task { for connection in all { await connection.close() } } }
                let (us, eu) = (connections[0], connections[1])
                try await cluster.waitUntilLinksUp()

                // us-east and eu-west cannot talk; both write every key, eu-west a little later (higher HLC).
                try await cluster.chaos("partition", "us-east", "eu-west")
                for keyspace in ["last", "first", "ranked", "carts"] {
                    let early = try await us.request("PUT", "/v1/kv/\(keyspace)/item", body: Array("from-us".utf8))
                    #expect(early.status == 200, "\(early.text)")
                    try await Task.sleep(for: .milliseconds(20))
                    let late = try await eu.request("PUT", "/v1/kv/\(keyspace)/item", body: Array("from-eu".utf8))
                    #expect(late.status == 200, "\(late.text)")
                }
                try await cluster.chaos("heal")

                let expected = ["last": ("from-eu", "from-us", "us-east"), "first": ("from-us", "from-eu", "eu-west"),
                                "ranked": ("from-us", "from-eu", "eu-west")]
                for (keyspace, (winner, loser, loserRegion)) in expected.sorted(by: { $0.key < $1.key }) {
                    let answers = try await Self.converge(connections, "/v1/kv/\(keyspace)/item") { $0.allSatisfy { $0.text == winner } }
                    #expect(answers.map(\.text) == [winner, winner, winner], "\(keyspace): every region shows the rule's winner: \(answers.map(\.text))")
                    #expect(Set(answers.compactMap { $0.header("ETag") }).count == 1, "\(keyspace): one version everywhere")
                    // Every region discarded the loser, and says so.
                    let logs = try await Self.converge(connections, "/v1/conflicts/\(keyspace)") { results in
                        results.allSatisfy { (Self.json($0)["conflicts"] as? [Any])?.count == 1 }
                    }
                    for (index, log) in logs.enumerated() {
                        let records = Self.json(log)["conflicts"] as? [[String: Any]] ?? []
                        let record = records.first ?? [:]
                        let lost = record["loser"] as? [String: Any] ?? [:]
                        #expect(records.count == 1 && lost["value"] as? String == loser && lost["region"] as? String == loserRegion
                                    && record["rule"] as? String == (keyspace == "last" ? "lww" : keyspace == "first" ? "fww" : "region-priority"),
                                "\(keyspace) at \(Self.regions[index]): \(log.text)")
                    }
                }

                // Siblings: both versions come back together with a context; a write carrying it resolves them.
                let siblings = try await Self.converge(connections, "/v1/kv/carts/item") { $0.allSatisfy { $0.status == 300 } }
                #expect(siblings.allSatisfy { $0.status == 300 }, "\(siblings.map(\.text))")
                let listed = (Self.json(siblings[2])["siblings"] as? [[String: Any]] ?? []).compactMap { $0["value"] as? String }
                #expect(Set(listed) == ["from-us", "from-eu"], "\(siblings[2].text)")
                let context = try #require(siblings[2].header("Meridian-Context"))
                let resolved = try await connections[2].request("PUT", "/v1/kv/carts/item", headers: [("Meridian-Context", context)],
                                                                body: Array("from-us+from-eu".utf8))
                #expect(resolved.status == 200, "\(resolved.text)")
                let after = try await Self.converge(connections, "/v1/kv/carts/item") { $0.allSatisfy { $0.status == 200 && $0.text == "from-us+from-eu" } }
                #expect(after.allSatisfy { $0.status == 200 && $0.text == "from-us+from-eu" }, "the resolution replaced both: \(after.map(\.text))")
                let conflictsOfSiblings = try await us.request("GET", "/v1/conflicts/carts")
                #expect((Self.json(conflictsOfSiblings)["conflicts"] as? [Any])?.isEmpty == true, "siblings discard nothing")
                // Byte-identical everywhere: every region's Merkle root of each keyspace is the same.
                for keyspace in ["last", "first", "ranked", "carts"] {
                    let roots = try await Self.converge(connections, "/v1/admin/merkle/\(keyspace)") { answers in
                        Set(answers.map { Self.json($0)["root"] as? String ?? "" }).count == 1
                    }
                    #expect(Set(roots.map { Self.json($0)["root"] as? String ?? "" }).count == 1, "\(keyspace): \(roots.map(\.text))")
                }
                // A forged context is refused rather than trusted.
                let forged = try await us.request("PUT", "/v1/kv/carts/item", headers: [("Meridian-Context", "c1.AAAA")], body: Array("x".utf8))
                #expect(forged.status == 400, "\(forged.text)")
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aLikeCounterCountsEveryIncrementMadeDuringAPartition() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                var connections: [HTTPConnection] = []
                for region in Self.regions { connections.append(try await cluster.connect(region)) }
                defer { let all = connections; Task { for connection in all { await connection.close() } } }
                try await cluster.waitUntilLinksUp()
                let start = try await connections[0].request("POST", "/v1/crdt/likes/cart", body: Array(#"{"type":"or-set","op":"add","elements":["book","pen"]}"#.utf8))
                #expect(start.status == 200, "\(start.text)")
                _ = try await Self.converge(connections, "/v1/crdt/likes/cart") { $0.allSatisfy { $0.status == 200 } }

                // Every region cut off from every other.
                try await cluster.chaos("partition", "us-east", "eu-west")
                try await cluster.chaos("partition", "us-east", "ap-southeast")
                try await cluster.chaos("partition", "eu-west", "ap-southeast")
                var total = 0
                for (index, connection) in connections.enumerated() {
                    for round in 0..<(10 * (index + 1)) {
                        let by = round % 3 + 1
                        let answer = try await connection.request("POST", "/v1/crdt/likes/post-1", body: Array(#"{"type":"pn-counter","op":"increment","by":\#(by)}"#.utf8))
                        #expect(answer.status == 200, "\(answer.text)")
                        total += by
                    }
                }
                let down = try await connections[1].request("POST", "/v1/crdt/likes/post-1", body: Array(#"{"type":"pn-counter","op":"decrement","by":4}"#.utf8))
                #expect(down.status == 200 && (Self.json(down)["value"] as? Int) != nil, "\(down.text)")
                total -= 4
                // Add-wins: eu-west removes the pen it saw while ap-southeast adds it again.
                let removed = try await connections[1].request("POST", "/v1/crdt/likes/cart", body: Array(#"{"type":"or-set","op":"remove","element":"pen"}"#.utf8))
                let readded = try await connections[2].request("POST", "/v1/crdt/likes/cart", body: Array(#"{"type":"or-set","op":"add","element":"pen"}"#.utf8))
                #expect(removed.status == 200 && readded.status == 200)
                // Wrong type and wrong API are refused with a code, not merged.
                let mismatch = try await connections[0].request("POST", "/v1/crdt/likes/post-1", body: Array(#"{"type":"or-set","op":"add","element":"x"}"#.utf8))
                #expect(mismatch.status == 409 && mismatch.text.contains("crdt_type_mismatch"), "\(mismatch.text)")
                let plain = try await connections[0].request("PUT", "/v1/kv/likes/post-1", body: Array("7".utf8))
                #expect(plain.status == 409 && plain.text.contains("conflict_policy_mismatch"), "\(plain.text)")
                try await cluster.chaos("heal")

                let counts = try await Self.converge(connections, "/v1/crdt/likes/post-1") { answers in
                    answers.allSatisfy { Self.json($0)["value"] as? Int == total }
                }
                #expect(counts.map { Self.json($0)["value"] as? Int } == [total, total, total], "exact total \(total) everywhere: \(counts.map(\.text))")
                let carts = try await Self.converge(connections, "/v1/crdt/likes/cart") { answers in
                    answers.allSatisfy { (Self.json($0)["value"] as? [String]) == ["book", "pen"] }
                }
                #expect(carts.allSatisfy { (Self.json($0)["value"] as? [String]) == ["book", "pen"] }, "add wins: \(carts.map(\.text))")
            }
        }
    }
}
