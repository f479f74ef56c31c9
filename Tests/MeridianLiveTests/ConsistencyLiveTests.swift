// Proves the read consistency levels on three real region processes behind the WAN emulator (latency
// scale 0.1): a session token carries read-your-writes from us-east to ap-southeast; a strong read at a
// follower is served by the leader and reflects the latest acknowledged write; a bounded read reports the
// staleness it served and is forwarded when the region cannot meet the bound; a reader who saw a session's
// later write is owed its earlier one (writes-follow-reads across three regions); a leader cut off from its
// majority refuses strong reads; an altered token is refused.
import Foundation
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct ConsistencyLiveTests {
        static let keyspaces = """
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async, consistency: { default: session, allowed: [bounded, session, prefix, eventual] } }
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority }

            """
        static let secret = "session_secret: live-test-secret-0123456789\n"

        @Test(.timeLimit(.minutes(3)), arguments: StoreMix.allCases)
        func everyLevelKeepsItsPromiseAcrossRegions(_ stores: StoreMix) async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, extraYAML: Self.secret, stores: stores) { cluster in
                let us = try await cluster.connect("us-east")
                let eu = try await cluster.connect("eu-west")
                let ap = try await cluster.connect("ap-southeast")
                defer { Task { await us.close(); await eu.close(); await ap.close() } }

                // Session: write in us-east, read at once in ap-southeast with the token: the write is there.
                for round in 0..<5 {
                    let write = try await us.request("PUT", "/v1/kv/profiles/ryw-\(round)", body: Array("v\(round)".utf8))
                    #expect(write.status == 200, "\(write.text)")
                    let token = try #require(write.header("Meridian-Session"))
                    let read = try await ap.request("GET", "/v1/kv/profiles/ryw-\(round)", headers: [("Meridian-Session", token)])
                    #expect(read.status == 200 && read.text == "v\(round)", "read-your-writes across regions: \(read.status) \(read.text)")
                    #expect(read.header("Meridian-Session") != nil, "every response returns the updated token")
                    // Moving on with the newer token: a write in ap-southeast, then a read in eu-west sees it.
                    let later = try await ap.request("PUT", "/v1/kv/profiles/ryw-\(round)", headers: [("Meridian-Session", read.header("Meridian-Session")!)],
                                                     body: Array("w\(round)".utf8))
                    #expect(later.status == 200)
                    let moved = try await eu.request("GET", "/v1/kv/profiles/ryw-\(round)", headers: [("Meridian-Session", later.header("Meridian-Session")!)])
                    #expect(moved.status == 200 && moved.text == "w\(round)", "monotonic writes seen from a third region: \(moved.text)")
                }
                // An altered token is refused, not trusted.
                let write = try await us.request("PUT", "/v1/kv/profiles/t", body: Array("x".utf8))
                var token = Array(try #require(write.header("Meridian-Session")))
                token[token.count / 2] = token[token.count / 2] == "A" ? "B" : "A"
                let forged = try await ap.request("GET", "/v1/kv/profiles/t", headers: [("Meridian-Session", String(token))])
                #expect(forged.status == 400 && forged.text.contains("invalid_header"), "\(forged.text)")

                // Strong: a follower's strong read is served by the leader and reflects the latest acknowledged write.
                for round in 0..<5 {
                    let put = try await us.request("PUT", "/v1/kv/accounts/alice", body: Array("\(round)".utf8))
                    #expect(put.status == 200, "\(put.text)")
                    for follower in [eu, ap] {
                        let read = try await follower.request("GET", "/v1/kv/accounts/alice", headers: [("Meridian-Consistency", "strong")])
                        #expect(read.status == 200 && read.text == "\(round)", "strong read after an acknowledged write: \(read.text)")
                        #expect(read.header("Meridian-Forwarded-To") == "us-east")
                    }
                }
                let local = try await us.request("GET", "/v1/kv/accounts/alice")
                #expect(local.status == 200 && local.header("Meridian-Forwarded-To") == nil, "the leader serves its strong reads itself")

                // Bounded: a loose bound is served locally with the staleness stated; a bound no follower can meet
                // (below the round trip) is forwarded to the leader.
                let loose: HTTPResult? = try await eventually(timeoutSeconds: 2.5, {
                    try await eu.request("GET", "/v1/kv/accounts/alice", headers: [("Meridian-Consistency", "bounded"), ("Meridian-Max-Staleness-Ms", "5000")])
                }, until: { $0.status == 200 })
                #expect(loose?.status == 200 && loose?.header("Meridian-Forwarded-To") == nil, "\(loose?.text ?? "")")
                let staleness = loose?.header("Meridian-Staleness-Ms").flatMap(Int.init)
                #expect(staleness != nil && staleness! <= 5000, "Meridian-Staleness-Ms: \(String(describing: staleness))")
                let tight = try await eu.request("GET", "/v1/kv/accounts/alice", headers: [("Meridian-Consistency", "bounded"), ("Meridian-Max-Staleness-Ms", "1")])
                #expect(tight.status == 200 && tight.header("Meridian-Forwarded-To") == "us-east", "\(tight.status) \(tight.text)")
                #expect(tight.header("Meridian-Staleness-Ms") == "0", "the leader is never stale on its own writes")

                // Writes-follow-reads seen by another client: a session writes `a` in eu-west, then (with its token)
                // `b` in us-east. With eu-west cut off from ap-southeast, a reader there sees `b` (it came from
                // us-east); its token then owes it `a`, which ap-southeast cannot have: it must not answer 404.
                try await cluster.chaos("partition", "eu-west", "ap-southeast")
                let first = try await eu.request("PUT", "/v1/kv/profiles/wfr-a", body: Array("a1".utf8))
                let second = try await us.request("PUT", "/v1/kv/profiles/wfr-b", headers: [("Meridian-Session", try #require(first.header("Meridian-Session")))],
                                                  body: Array("b1".utf8))
                #expect(second.status == 200)
                let observed: HTTPResult? = try await eventually(timeoutSeconds: 2, every: .milliseconds(10), {
                    try await ap.request("GET", "/v1/kv/profiles/wfr-b")
                }, until: { $0.status == 200 })
                #expect(observed?.text == "b1")
                let observerToken = try #require(observed?.header("Meridian-Session"))
                let owed = try await ap.request("GET", "/v1/kv/profiles/wfr-a", headers: [("Meridian-Session", observerToken)])
                #expect(owed.status == 503 && owed.text.contains("consistency_unavailable"), "a reader who saw b must see a, or be told it cannot: \(owed.status) \(owed.text)")
                try await cluster.chaos("heal")
                let healed: HTTPResult? = try await eventually(timeoutSeconds: 5, {
                    try await ap.request("GET", "/v1/kv/profiles/wfr-a", headers: [("Meridian-Session", observerToken)])
                }, until: { $0.status == 200 })
                #expect(healed?.status == 200 && healed?.text == "a1", "\(healed?.text ?? "")")

                // A leader cut off from every replica cannot promise it still leads: strong reads are refused.
                try await cluster.chaos("isolate", "us-east")
                let refused: HTTPResult? = try await eventually(timeoutSeconds: 5, {
                    try await us.request("GET", "/v1/kv/accounts/alice")
                }, until: { $0.status == 503 })
                #expect(refused?.status == 503 && refused?.text.contains("consistency_unavailable") == true, "\(refused?.text ?? "")")
                // Eventual reads still answer locally.
                #expect(try await us.request("GET", "/v1/kv/accounts/alice?consistency=eventual").status == 200)
                try await cluster.chaos("heal")
            }
        }
    }
}
