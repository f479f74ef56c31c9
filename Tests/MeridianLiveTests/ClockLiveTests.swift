// Proves that a region whose clock is beyond the maximum offset fences itself with real processes behind the
// WAN emulator: us-east runs 3 s ahead (max_clock_offset_ms is 500), ap-southeast 200 ms ahead (within it).
// us-east says so in its status and log, refuses writes with 503 clock_fenced while it still serves reads,
// and gives up leading its single-leader keyspace, which another region then leads and writes. The regions
// within tolerance are not fenced.
import Foundation
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct ClockLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }

            """

        static func clock(_ status: [String: Any]) -> [String: Any] { status["clock"] as? [String: Any] ?? [:] }

        static func error(_ result: HTTPResult) -> [String: Any] {
            ((try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any])?["error"] as? [String: Any] ?? [:]
        }

        @Test(.timeLimit(.minutes(3)))
        func aRegionBeyondTheMaximumClockOffsetFencesItselfAndTheOthersGoOn() async throws {
            let offsets = ["us-east": ["--clock-offset-ms", "3000"], "ap-southeast": ["--clock-offset-ms", "200"]]
            try await withLiveCluster(keyspaces: Self.keyspaces, nodeArguments: offsets) { cluster in
                let fenced = try await FailoverLiveTests.waitForStatus(cluster, "us-east") { Self.clock($0)["state"] as? String == "fenced" }
                let clock = Self.clock(fenced)
                #expect(clock["state"] as? String == "fenced", "\(fenced)")
                #expect(clock["injected_offset_ms"] as? Int == 3000)
                #expect((clock["reason"] as? String)?.contains("max_clock_offset_ms") == true, "\(clock)")
                // Both peers are bracketed well behind us-east (about -3,000 and -2,800 ms).
                let peers = clock["peers"] as? [String: [String: Any]] ?? [:]
                for peer in ["eu-west", "ap-southeast"] {
                    #expect((peers[peer]?["high_ms"] as? Int ?? 0) < -2_000, "\(peer): \(peers)")
                }

                // The regions within tolerance are not fenced: each has one far peer of three.
                for region in ["eu-west", "ap-southeast"] {
                    let status = try await cluster.status(region)
                    #expect(Self.clock(status)["state"] as? String == "ok", "\(region): \(Self.clock(status))")
                }

                // us-east refuses writes, and says why; the others take them, and us-east still serves reads.
                let east = try await cluster.connect("us-east")
                let refused = try await east.request("PUT", "/v1/kv/profiles/from-east", body: Array("x".utf8))
                #expect(refused.status == 503, "\(refused.text)")
                #expect(Self.error(refused)["code"] as? String == "clock_fenced", "\(refused.text)")
                let eu = try await cluster.connect("eu-west")
                let taken = try await eu.request("PUT", "/v1/kv/profiles/from-eu", body: Array("eu".utf8))
                #expect(taken.status == 200, "\(taken.text)")
                #expect(try await cluster.waitForValue("us-east", "/v1/kv/profiles/from-eu", "eu"))
                let ap = try await cluster.connect("ap-southeast")
                let apWrite = try await ap.request("PUT", "/v1/kv/profiles/from-ap", body: Array("ap".utf8))
                #expect(apWrite.status == 200, "\(apWrite.text)")

                // us-east gave up leading accounts; a region within tolerance leads it and takes writes.
                let led = try await FailoverLiveTests.waitForStatus(cluster, "eu-west", timeoutSeconds: 30) { status in
                    let leader = FailoverLiveTests.term(status, "accounts")["leader"] as? String
                    return leader == "eu-west" || leader == "ap-southeast"
                }
                let leader = FailoverLiveTests.term(led, "accounts")["leader"] as? String
                #expect(leader == "eu-west" || leader == "ap-southeast", "\(led)")
                let accepted = try await eventually(timeoutSeconds: 10, every: .milliseconds(100), {
                    try await eu.request("PUT", "/v1/kv/accounts/a1", body: Array("1".utf8)).status == 200
                }, until: { $0 })
                #expect(accepted, "accounts took no write after us-east stepped down")
                // us-east follows the new leader once it hears its heartbeats (a moment later on a loaded machine).
                let eastStatus = try await FailoverLiveTests.waitForStatus(cluster, "us-east") { status in
                    FailoverLiveTests.term(status, "accounts")["leader"] as? String == leader
                }
                #expect(FailoverLiveTests.term(eastStatus, "accounts")["role"] as? String != "leader", "\(eastStatus)")
                // A write to accounts at us-east is forwarded to the new leader (us-east timestamps nothing).
                let forwarded = try await east.request("PUT", "/v1/kv/accounts/a2", body: Array("2".utf8))
                #expect(forwarded.status == 200, "\(forwarded.text)")
                await east.close()
                await eu.close()
                await ap.close()

                let log = (try? String(contentsOfFile: cluster.scratch.file("us-east.log"), encoding: .utf8)) ?? ""
                #expect(log.contains("clock fenced"), "us-east's log does not say it fenced itself")
            }
        }
    }
}
