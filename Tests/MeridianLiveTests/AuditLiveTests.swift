// The audit trail with real processes: after restricted data moves (replicated, proxied, erased), every region's
// trail verifies against the checkpoints its peers witnessed, and every batch sent pairs with a batch received.
// Then each way of tampering with a stopped region's trail is caught by `meridian audit verify`, naming where:
// a record changed in place, the newest records deleted, and the whole chain recomputed after a change.
import Foundation
import GRDB
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct AuditLiveTests {
        static let keyspaces = """
              - { name: vault, topology: multi-leader, conflict: lww, replicas: [eu-west, ap-southeast], residency: { regions: [eu-west, ap-southeast], access: proxy } }

            """

        static func verify(_ cluster: LiveCluster) async throws -> (status: Int32, stdout: String, stderr: String) {
            try await runCLI(["audit", "verify", "--config", cluster.config])
        }

        /// Changes a stopped region's store with `body`.
        static func tamper(_ cluster: LiveCluster, _ region: String, _ body: (Database) throws -> Void) throws {
            let path = (cluster.local.dataDirectory(RegionName(validated: region)) as NSString).appendingPathComponent("\(region).sqlite")
            let queue = try DatabaseQueue(path: path)
            try queue.write(body)
            try queue.close()
        }

        /// Waits until every region's head is witnessed by the others (a checkpoint goes out each heartbeat the head moved).
        static func waitWitnessed(_ cluster: LiveCluster) async throws {
            let result = try await eventually(timeoutSeconds: 20, every: .milliseconds(200)) { try await verify(cluster) } until: { $0.status == 0 }
            #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
        }

        /// A node started with a changed cluster file records the change (which keyspaces) on its trail; started with
        /// the same file again, it records nothing.
        @Test(.timeLimit(.minutes(3)))
        func aChangedClusterFileGoesOnTheTrail() async throws {
            let cluster = try await LiveCluster(keyspaces: Self.keyspaces)
            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                func configRecords() async throws -> [[String: String]] {
                    let connection = try await cluster.connect("us-east")
                    defer { Task { await connection.close() } }
                    let answer = try await eventually(timeoutSeconds: 10, every: .milliseconds(100)) {
                        try await connection.request("GET", "/v1/audit?limit=10000")
                    } until: { $0.text.contains("config_change") }
                    let records = (try JSONSerialization.jsonObject(with: Data(answer.body)) as? [String: Any])?["records"] as? [[String: Any]] ?? []
                    return records.filter { $0["kind"] as? String == "config_change" }.compactMap { $0["fields"] as? [String: String] }
                }
                let first = try await configRecords()
                #expect(first.count == 1 && first.first?["event"] == "started" && first.first?["keyspaces_added"] == "vault", "\(first)")
                try await cluster.restartAfterKill("us-east")
                #expect(try await configRecords().count == 1, "the same file was recorded again")
                await cluster.kill9("us-east")
                let text = try String(contentsOfFile: cluster.config, encoding: .utf8)
                try text.replacingOccurrences(of: "name: vault, topology: multi-leader, conflict: lww,", with: "name: vault, topology: multi-leader, conflict: lww, consistency: { default: eventual },")
                    .write(toFile: cluster.config, atomically: true, encoding: .utf8)
                try await cluster.restartNode("us-east")
                let records = try await eventually(timeoutSeconds: 10, every: .milliseconds(100)) { try await configRecords() } until: { $0.count == 2 }
                #expect(records.count == 2 && records.last?["keyspaces_changed"] == "vault" && records.last?["previous_file_digest"] == first.first?["file_digest"],
                        "\(records)")
            }
        }

        @Test(.timeLimit(.minutes(4)))
        func trailsVerifyAndPairAndEveryTamperingIsCaught() async throws {
            let cluster = try await LiveCluster(keyspaces: Self.keyspaces)
            try await whileStarted(cluster, start: { try await $0.start() }, stop: { await $0.stop() }) { cluster in
                let us = try await cluster.connect("us-east"), eu = try await cluster.connect("eu-west")
                for index in 0..<20 {
                    #expect(try await eu.request("PUT", "/v1/kv/vault/u\(index)/v", body: Array("value-\(index)".utf8)).status == 200)
                    #expect(try await us.request("PUT", "/v1/kv/vault/p\(index)/v", body: Array("proxied-\(index)".utf8)).status == 200)
                }
                let erased = try await runCLI(["erase", "--config", cluster.config, "--region", "eu-west", "--keyspace", "vault", "--subject", "u1"])
                #expect(erased.status == 0, "\(erased)")
                await us.close()
                await eu.close()
                try await Self.waitWitnessed(cluster)
                let pairs = try await eventually(timeoutSeconds: 20, every: .milliseconds(200)) {
                    try await runCLI(["audit", "pairs", "--config", cluster.config])
                } until: { $0.status == 0 }
                #expect(pairs.status == 0 && !pairs.stdout.contains(" 0 batches sent"), "\(pairs.stdout)")

                // What the trails say: batches both ways, proxied writes at us-east, the erasure receipt at eu-west and
                // the erasure at ap-southeast, and never a key name of the restricted keyspace.
                for (region, kinds) in [("eu-west", ["replication_sent", "erasure", "key_wrap"]), ("ap-southeast", ["replication_received", "erasure"]), ("us-east", ["proxied"])] {
                    let connection = try await cluster.connect(region)
                    let trail = try await connection.request("GET", "/v1/audit?limit=10000")
                    await connection.close()
                    for kind in kinds { #expect(trail.text.contains("\"kind\":\"\(kind)\""), "\(region) has no \(kind) record") }
                    #expect(!trail.text.contains("p1/v") && !trail.text.contains("u1/v") && !trail.text.contains("\"u1\""), "\(region)'s trail names a key or subject")
                }
                let receipt = try await cluster.connect("eu-west")
                let trail = try await receipt.request("GET", "/v1/audit?limit=10000")
                await receipt.close()
                #expect(trail.text.contains("\"confirmed\":\"eu-west,ap-southeast\""), "the receipt names the regions that confirmed")

                // 1. A record changed in place (ap-southeast).
                await cluster.kill9("ap-southeast")
                try Self.tamper(cluster, "ap-southeast") { db in
                    try db.execute(sql: "UPDATE audit SET fields = replace(fields, 'vault', 'vaulu') WHERE sequence = 2")
                }
                try await cluster.restartNode("ap-southeast")
                var caught = try await Self.verify(cluster)
                #expect(caught.status == 1 && caught.stdout.contains("ap-southeast: BROKEN at record 2") && caught.stdout.contains("changed"), "\(caught.stdout)")

                // 2. The newest records deleted (eu-west): its peers witnessed a longer trail.
                await cluster.kill9("eu-west")
                try Self.tamper(cluster, "eu-west") { db in
                    try db.execute(sql: "DELETE FROM audit WHERE sequence > (SELECT MAX(sequence) - 5 FROM audit)")
                }
                try await cluster.restartNode("eu-west")
                caught = try await Self.verify(cluster)
                #expect(caught.status == 1 && caught.stdout.contains("eu-west: BROKEN"), "\(caught.stdout)")

                // 3. A record changed and the whole chain recomputed from it (us-east): the chain holds, the witnessed
                // checkpoints do not.
                await cluster.kill9("us-east")
                try Self.tamper(cluster, "us-east") { db in
                    var chain = AuditChain(region: RegionName(validated: "us-east"))
                    for row in try Row.fetchAll(db, sql: "SELECT sequence, time_ms, kind, fields FROM audit ORDER BY sequence") {
                        var fields = try JSONSerialization.jsonObject(with: Data((row["fields"] as String).utf8)) as? [String: String] ?? [:]
                        if (row["sequence"] as Int64) == 1 { fields["principal"] = "someone-else" }
                        let record = chain.append(AuditRecord.Kind(rawValue: row["kind"])!, fields: fields, timeMs: UInt64(row["time_ms"] as Int64))
                        let text = String(decoding: try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]), as: UTF8.self)
                        try db.execute(sql: "UPDATE audit SET fields = ?, previous = ?, hash = ? WHERE sequence = ?",
                                       arguments: [text, Data(record.previous), Data(record.hash), row["sequence"] as Int64])
                    }
                }
                try await cluster.restartNode("us-east")
                caught = try await Self.verify(cluster)
                #expect(caught.status == 1 && caught.stdout.contains("us-east: BROKEN") && caught.stdout.contains("witnessed"), "\(caught.stdout)")
            }
        }
    }
}
