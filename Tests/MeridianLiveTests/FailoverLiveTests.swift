// Proves regional failover with real processes behind the WAN emulator (latency scale 0.1): the leader of a
// single-leader keyspace is killed with SIGKILL under a steady write load and another region takes the writes
// in a new epoch, with every majority-acknowledged write kept; the old leader returns as a follower. A leader
// cut off from the others stops acknowledging within its lease; the async writes it acknowledged meanwhile
// that its successor never held are kept in its divergence log (not applied anywhere), every region ends
// with the new leader's data, and a kept-aside write can be re-applied on request; a strong read it was serving
// never returns such a write. A region that missed an earlier term's write catches up from the leader before it
// applies the new term's.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct FailoverLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: ledger, topology: single-leader, leader: us-east, ack: async, failover: { order: [us-east, eu-west, ap-southeast] } }

            """

        /// The keyspace's entry in a region's status.
        static func term(_ status: [String: Any], _ keyspace: String) -> [String: Any] {
            (status["keyspaces"] as? [[String: Any]])?.first { $0["name"] as? String == keyspace } ?? [:]
        }

        /// Polls until `check` holds for the region's status (bounded).
        static func waitForStatus(_ cluster: LiveCluster, _ region: String, timeoutSeconds: Double = 20, _ check: ([String: Any]) -> Bool) async throws -> [String: Any] {
            try await eventually(timeoutSeconds: timeoutSeconds, { (try? await cluster.status(region)) ?? [:] }, until: check)
        }

        /// Waits until `region` leads `keyspace` with its lease (the first term at start-up).
        static func expectLeading(_ cluster: LiveCluster, _ region: String, _ keyspace: String) async throws {
            let status = try await waitForStatus(cluster, region) { term($0, keyspace)["lease"] as? Bool == true }
            #expect(term(status, keyspace)["role"] as? String == "leader", "\(region) leads \(keyspace): \(status)")
        }

        static func merkleRoots(_ cluster: LiveCluster, _ keyspace: String, regions: [String]) async throws -> [String] {
            var roots: [String] = []
            for region in regions {
                let connection = try await cluster.connect(region)
                let response = try await connection.request("GET", "/v1/admin/merkle/\(keyspace)")
                await connection.close()
                roots.append(((try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any])?["root"] as? String ?? "")
            }
            return roots
        }

        @Test(.timeLimit(.minutes(3)), arguments: StoreMix.allCases)
        func aLeaderKilledUnderLoadIsReplacedWithoutLosingAMajorityWrite(_ stores: StoreMix) async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, stores: stores) { cluster in
                try await Self.expectLeading(cluster, "us-east", "accounts")
                let eu = try await cluster.connect("eu-west")
                var acknowledged: [(key: String, value: String)] = []
                var index = 0
                func write() async throws -> HTTPResult {
                    index += 1
                    let value = "v\(index)-\(UUID().uuidString.prefix(6))"
                    let response = try await eu.request("PUT", "/v1/kv/accounts/a\(index)", body: Array(value.utf8))
                    if response.status == 200 { acknowledged.append(("a\(index)", value)) }
                    return response
                }
                // Written at eu-west, forwarded to the leader us-east, majority-acknowledged.
                for _ in 0..<30 {
                    let response = try await write()
                    #expect(response.status == 200 && response.header("Meridian-Epoch") == "1", "\(response.status) \(response.text)")
                }
                await cluster.kill9("us-east")
                let killed = ContinuousClock.now
                // Keep writing: refusals (an election is running) until a survivor leads (usually eu-west, next in the
                // failover order; ap-southeast when it had applied more of us-east's log).
                var recovered: HTTPResult?
                for _ in 0..<2_000 {
                    let response = try await write()
                    if response.status == 200 { recovered = response; break }
                    #expect([503, 504].contains(response.status), "a refusal while the leader is gone is a 503/504: \(response.text)")
                    guard ContinuousClock.now - killed < .seconds(20) else { break }
                    try await Task.sleep(for: .milliseconds(20))
                }
                let rto = ContinuousClock.now - killed
                let answer = recovered.flatMap { try? JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any] }
                let newLeader = answer?["region"] as? String ?? "none"
                #expect(["eu-west", "ap-southeast"].contains(newLeader), "a survivor took the writes: \(recovered?.text ?? "none")")
                #expect(Int(recovered?.header("Meridian-Epoch") ?? "") ?? 0 >= 2, "in a new epoch")
                #expect(rto < .seconds(10), "writes resumed after \(rto)")
                for _ in 0..<20 { #expect(try await write().status == 200) }
                // Every acknowledged write is in both survivors.
                for (key, value) in acknowledged {
                    for region in ["eu-west", "ap-southeast"] {
                        #expect(try await cluster.waitForValue(region, "/v1/kv/accounts/\(key)?consistency=eventual", value, timeoutSeconds: 10), "\(key) at \(region)")
                    }
                }
                // The old leader returns as a follower of the new epoch and catches up.
                try await cluster.restartNode("us-east")
                let status = try await Self.waitForStatus(cluster, "us-east") { status in
                    let term = Self.term(status, "accounts")
                    return term["role"] as? String == "follower" && term["leader"] as? String == newLeader
                }
                #expect(Self.term(status, "accounts")["role"] as? String == "follower", "\(status)")
                // Failback: once us-east has been up and caught up for a while, leadership returns to it, with
                // writes flowing all along (at eu-west, forwarded to whichever region leads).
                let failbackStarted = ContinuousClock.now
                var failedBack = false
                while ContinuousClock.now - failbackStarted < .seconds(30) {
                    let response = try await write()
                    #expect(response.status == 200 || [503, 504].contains(response.status), "\(response.text)")
                    let term = Self.term(try await cluster.status("us-east"), "accounts")
                    if term["role"] as? String == "leader", (term["epoch"] as? Int ?? 0) >= 3 { failedBack = true; break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(failedBack, "leadership returned to us-east")
                for _ in 0..<5 {
                    let response = try await write()
                    #expect(response.status == 200 && response.text.contains("\"region\":\"us-east\""), "\(response.text)")
                }
                for (key, value) in acknowledged {
                    #expect(try await cluster.waitForValue("us-east", "/v1/kv/accounts/\(key)?consistency=eventual", value, timeoutSeconds: 10),
                            "\(key) acknowledged before the failback is at us-east")
                }
                await eu.close()
                let last = acknowledged.last!
                #expect(try await cluster.waitForValue("us-east", "/v1/kv/accounts/\(last.key)?consistency=eventual", last.value))
                let roots = try await eventually({ try await Self.merkleRoots(cluster, "accounts", regions: cluster.regions) }, until: { Set($0).count == 1 })
                #expect(Set(roots).count == 1, "every region holds the same accounts: \(roots)")
                // The new leader reports the failover with its timings.
                let report = try await cluster.connect(newLeader)
                let failovers = try await report.request("GET", "/v1/failovers")
                await report.close()
                let events = ((try? JSONSerialization.jsonObject(with: Data(failovers.body))) as? [String: Any])?["failovers"] as? [[String: Any]] ?? []
                let event = events.first { $0["keyspace"] as? String == "accounts" }
                #expect(event?["previous_leader"] as? String == "us-east" && event?["rto_ms"] is Int, "\(failovers.text)")
            }
        }

        /// Log matching, live: ap-southeast never received us-east's stream, so it lacks a write eu-west
        /// acknowledged for epoch 1. Once eu-west leads epoch 2 with us-east dead, ap-southeast holds eu-west's
        /// entries until it holds that write (pulled from eu-west after a silence), so the majority write that
        /// needs its acknowledgement finds it holding both.
        @Test(.timeLimit(.minutes(3)))
        func aRegionMissingAnEarlierTermsWriteCatchesUpFromTheLeaderBeforeApplyingItsTerm() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                try await Self.expectLeading(cluster, "us-east", "accounts")
                let admin = try ClusterConfig.parse(yaml: String(contentsOfFile: cluster.config, encoding: .utf8), file: cluster.config).wan.admin
                let wanAdmin = try await HTTPConnection.connect(host: admin.host, port: admin.port)
                let cut = try await wanAdmin.request("POST", "/v1/wan/partition", headers: [("Content-Type", "application/json")],
                                                     body: Array(#"{"a":"us-east","b":"ap-southeast"}"#.utf8))
                await wanAdmin.close()
                #expect(cut.status == 200, "the WAN emulator cut us-east from ap-southeast: \(cut.text)")
                // Acknowledged by us-east and eu-west; ap-southeast never hears of it.
                let us = try await cluster.connect("us-east")
                let first = try await eventually(timeoutSeconds: 10, { try await us.request("PUT", "/v1/kv/accounts/first", body: Array("epoch-1".utf8)) },
                                                 until: { $0.status == 200 })
                await us.close()
                #expect(first.status == 200, "\(first.text)")
                await cluster.kill9("us-east")
                // eu-west holds more of us-east's log, so it is elected; its term's writes need ap-southeast's ack.
                _ = try await Self.waitForStatus(cluster, "eu-west") { Self.term($0, "accounts")["role"] as? String == "leader" && Self.term($0, "accounts")["lease"] as? Bool == true }
                let eu = try await cluster.connect("eu-west")
                let second = try await eventually(timeoutSeconds: 20, { try await eu.request("PUT", "/v1/kv/accounts/second", body: Array("epoch-2".utf8)) },
                                                  until: { $0.status == 200 })
                #expect(second.status == 200 && second.text.contains("ap-southeast"), "ap-southeast acknowledged eu-west's write: \(second.text)")
                await eu.close()
                // Holding epoch 2's write, ap-southeast holds epoch 1's too, at once.
                let ap = try await cluster.connect("ap-southeast")
                let read = try await ap.request("GET", "/v1/kv/accounts/first?consistency=eventual")
                await ap.close()
                #expect(read.status == 200 && read.text == "epoch-1", "ap-southeast applied epoch 2 without epoch 1's write: \(read.status) \(read.text)")
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aManualFailoverMovesLeadershipWithoutLosingAWriteAndStays() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                try await Self.expectLeading(cluster, "us-east", "accounts")
                // A writer at us-east keeps writing while an operator at ap-southeast moves accounts to ap-southeast.
                let config = cluster.config
                let moved = Task {
                    try await Task.sleep(for: .milliseconds(400))
                    return try await runCLI(["failover", "accounts", "--to", "ap-southeast", "--config", config, "--region", "ap-southeast"])
                }
                let us = try await cluster.connect("us-east")
                var acknowledged: [(key: String, value: String)] = []
                var regions: Set<String> = []
                for index in 0..<400 {
                    let value = "m\(index)"
                    let response = try await us.request("PUT", "/v1/kv/accounts/m\(index)", body: Array(value.utf8))
                    if response.status == 200 {
                        acknowledged.append(("m\(index)", value))
                        if let answer = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any], let region = answer["region"] as? String {
                            regions.insert(region)
                        }
                    } else {
                        #expect([503, 504].contains(response.status), "a write during the hand-over is refused or retried, never lost: \(response.text)")
                    }
                    if regions.contains("ap-southeast") && acknowledged.count >= 60 { break }
                    try await Task.sleep(for: .milliseconds(5))
                }
                let result = try await moved.value
                #expect(result.status == 0 && result.stdout.contains("ap-southeast"), "\(result)")
                #expect(regions == ["us-east", "ap-southeast"], "writes were taken by us-east, then by ap-southeast: \(regions)")
                for (key, value) in acknowledged {
                    #expect(try await cluster.waitForValue("ap-southeast", "/v1/kv/accounts/\(key)?consistency=eventual", value, timeoutSeconds: 10),
                            "\(key) acknowledged around the hand-over is at the new leader")
                }
                // A manual failover stays: no failback moves it back while us-east is healthy.
                try await Task.sleep(for: .seconds(6))
                let term = Self.term(try await cluster.status("us-east"), "accounts")
                #expect(term["leader"] as? String == "ap-southeast", "\(term)")
                // The new leader reports a transfer; nothing was kept aside.
                let ap = try await cluster.connect("ap-southeast")
                let failovers = try await ap.request("GET", "/v1/failovers")
                #expect(failovers.text.contains("\"reason\":\"transfer\""), "\(failovers.text)")
                let divergence = try await us.request("GET", "/v1/divergence")
                #expect(divergence.text.contains("\"writes\":[]"), "\(divergence.text)")
                // Bad requests are typed errors.
                let badRegion = try await ap.request("POST", "/v1/admin/failover", body: Array(#"{"keyspace":"accounts","to":"mars"}"#.utf8))
                #expect(badRegion.status == 400, "\(badRegion.text)")
                let badTopology = try await ap.request("POST", "/v1/admin/failover", body: Array(#"{"keyspace":"nope","to":"eu-west"}"#.utf8))
                #expect(badTopology.status == 404, "\(badTopology.text)")
                await ap.close()
                await us.close()
            }
        }

        /// Found by the nemesis (seed 1, 300 s): a strong read at the leader waits until a majority holds the version
        /// it would return. The leader, cut off, had taken a write it could not ship; its successor kept that write
        /// aside when the link healed, and still acknowledged its sequence, which confirmed the version, so the read
        /// answered with a value no region keeps. A read now is admitted again (its lease checked) after every wait.
        @Test(.timeLimit(.minutes(3)))
        func aStrongReadAtALeaderCutOffNeverReturnsAWriteItsSuccessorKeptAside() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                try await Self.expectLeading(cluster, "us-east", "accounts")
                let writer = try await cluster.connect("us-east")
                let reader = try await cluster.connect("us-east")
                let admin = try ClusterConfig.parse(yaml: String(contentsOfFile: cluster.config, encoding: .utf8), file: cluster.config).wan.admin
                let wanAdmin = try await HTTPConnection.connect(host: admin.host, port: admin.port)
                #expect(try await writer.request("PUT", "/v1/kv/accounts/k", body: Array("before".utf8)).status == 200)
                // Cut right after an acknowledged write, so us-east still holds its lease for the next moments.
                let cut = try await wanAdmin.request("POST", "/v1/wan/isolate", headers: [("Content-Type", "application/json")],
                                                     body: Array(#"{"region":"us-east"}"#.utf8))
                #expect(cut.status == 200, "\(cut.text)")
                // A majority write us-east takes and cannot ship: it waits for acks that cannot come.
                let write = Task { try await writer.request("PUT", "/v1/kv/accounts/k", body: Array("cut-off".utf8)) }
                #expect(try await cluster.waitForValue("us-east", "/v1/kv/accounts/k?consistency=eventual", "cut-off", timeoutSeconds: 5))
                // A strong read at us-east while the write is unconfirmed: it waits for a majority to hold it.
                let read = Task { try await reader.request("GET", "/v1/kv/accounts/k?consistency=strong") }
                // The others elect a successor; then the link heals, and us-east's stream delivers the cut-off write
                // to regions that keep it aside.
                let elected = try await Self.waitForStatus(cluster, "eu-west") {
                    let leader = Self.term($0, "accounts")["leader"] as? String
                    return leader != nil && leader != "us-east"
                }
                let newLeader = Self.term(elected, "accounts")["leader"] as? String ?? "none"
                #expect(["eu-west", "ap-southeast"].contains(newLeader), "a survivor leads accounts: \(Self.term(elected, "accounts"))")
                let healed = try await wanAdmin.request("POST", "/v1/wan/heal")
                #expect(healed.status == 200, "\(healed.text)")
                await wanAdmin.close()
                let answer = try await read.value
                _ = try? await write.value
                // Whatever the strong read answered, the new leader's history holds it.
                let leader = try await cluster.connect(newLeader)
                var atLeader = ""
                for _ in 0..<100 {
                    let response = try await leader.request("GET", "/v1/kv/accounts/k?consistency=strong")
                    if response.status == 200 {
                        atLeader = response.text
                        break
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(answer.status != 200 || answer.text == atLeader,
                        "a strong read at us-east answered \(answer.status) '\(answer.text)', but the new leader \(newLeader) holds '\(atLeader)'")
                await writer.close()
                await reader.close()
                await leader.close()
            }
        }

        @Test(.timeLimit(.minutes(3)), arguments: StoreMix.allCases)
        func anIsolatedLeadersUnshippedWritesAreKeptAsideNotLost(_ stores: StoreMix) async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces, stores: stores) { cluster in
                try await Self.expectLeading(cluster, "us-east", "ledger")
                let us = try await cluster.connect("us-east")
                #expect(try await us.request("PUT", "/v1/kv/ledger/shared", body: Array("before".utf8)).status == 200)
                #expect(try await cluster.waitForValue("eu-west", "/v1/kv/ledger/shared?consistency=eventual", "before"))
                // A writer keeps writing at us-east while us-east is cut off: it acknowledges async writes until its
                // lease runs out, then refuses. The cut comes right after a write was acknowledged (the lease held
                // then), through the WAN emulator's admin API, so a loaded machine cannot make the lease lapse first.
                let admin = try ClusterConfig.parse(yaml: String(contentsOfFile: cluster.config, encoding: .utf8), file: cluster.config).wan.admin
                let wanAdmin = try await HTTPConnection.connect(host: admin.host, port: admin.port)
                var acknowledged: [(key: String, value: String)] = []
                var refusals = 0
                var acknowledgedAfterCut = 0
                var isolated = false
                for index in 0..<5_000 {
                    let value = "u\(index)"
                    let response = try await us.request("PUT", "/v1/kv/ledger/d\(index % 50)", body: Array(value.utf8))
                    if response.status == 200 {
                        acknowledged.append(("d\(index % 50)", value))
                        if isolated { acknowledgedAfterCut += 1 }
                        refusals = 0
                        if !isolated && acknowledged.count >= 20 {
                            let cut = try await wanAdmin.request("POST", "/v1/wan/isolate", headers: [("Content-Type", "application/json")],
                                                                 body: Array(#"{"region":"us-east"}"#.utf8))
                            #expect(cut.status == 200, "the WAN emulator cut us-east off: \(cut.text)")
                            isolated = true
                        }
                    } else {
                        #expect(response.status == 503 && response.text.contains("leader_unavailable"), "\(response.text)")
                        // A refusal before the cut is the lease lapsing for a moment under load: only those after count.
                        if isolated { refusals += 1 }
                        if refusals >= 5 { break }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                }
                await wanAdmin.close()
                #expect(refusals >= 5, "the isolated leader stopped acknowledging")
                await us.close()
                // eu-west and ap-southeast elect one of them (usually eu-west), which then writes one of the same keys.
                let elected = try await Self.waitForStatus(cluster, "eu-west") { Self.term($0, "ledger")["leader"] as? String != nil && Self.term($0, "ledger")["leader"] as? String != "us-east" }
                let newLeader = Self.term(elected, "ledger")["leader"] as? String ?? "none"
                #expect(["eu-west", "ap-southeast"].contains(newLeader), "a survivor leads ledger: \(Self.term(elected, "ledger"))")
                let eu = try await cluster.connect("eu-west")
                let overwrite = try await eu.request("PUT", "/v1/kv/ledger/d0", body: Array("from-new-leader".utf8))
                #expect(overwrite.status == 200, "\(overwrite.text)")
                try await cluster.chaos("heal")
                // us-east follows the new term and keeps aside what the new leader never held.
                let back = try await Self.waitForStatus(cluster, "us-east") { Self.term($0, "ledger")["leader"] as? String == newLeader }
                #expect(Self.term(back, "ledger")["role"] as? String == "follower", "\(back)")
                let usAgain = try await cluster.connect("us-east")
                var diverted: [[String: Any]] = []
                var roots: [String] = []
                for _ in 0..<400 {
                    let listing = try await usAgain.request("GET", "/v1/divergence?keyspace=ledger&limit=1000")
                    diverted = ((try? JSONSerialization.jsonObject(with: Data(listing.body))) as? [String: Any])?["writes"] as? [[String: Any]] ?? []
                    roots = try await Self.merkleRoots(cluster, "ledger", regions: cluster.regions)
                    if !diverted.isEmpty && Set(roots).count == 1 { break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                if diverted.isEmpty {
                    // Where did they go? Kept aside at the peers instead (us-east trimmed its log before its revert),
                    // or nowhere.
                    var elsewhere: [String] = []
                    for region in ["eu-west", "ap-southeast"] {
                        let peer = try await cluster.connect(region)
                        let listing = try await peer.request("GET", "/v1/divergence?keyspace=ledger&limit=1000")
                        await peer.close()
                        let count = (((try? JSONSerialization.jsonObject(with: Data(listing.body))) as? [String: Any])?["writes"] as? [Any])?.count ?? -1
                        elsewhere.append("\(region): \(count) kept aside")
                    }
                    Issue.record("us-east kept nothing aside; \(elsewhere.joined(separator: ", ")). us-east's log tail: \(LocalCluster.tail(cluster.local.log(RegionName(validated: "us-east")), lines: 40))")
                }
                #expect(!diverted.isEmpty, "the writes us-east acknowledged after the cut are kept aside (acknowledged \(acknowledged.count), after the cut \(acknowledgedAfterCut), new leader \(newLeader))")
                #expect(Set(roots).count == 1, "every region ends with the new leader's ledger: \(roots)")
                // Each acknowledged write is either in the new leader's history or kept aside: none vanished.
                let keptAside = Set(diverted.compactMap { write in (write["key"] as? String).map { "\($0)=\(write["value"] as? String ?? "")" } })
                var current: [String: String] = [:]
                var currentVersion: [String: String] = [:]
                // The keys of writes kept aside too: a write committed at us-east whose lease ran out before it was
                // acknowledged (it was answered leader_unavailable, applied "maybe") is kept aside as well.
                for key in Set(acknowledged.map(\.key) + diverted.compactMap { $0["key"] as? String }) {
                    let response = try await eu.request("GET", "/v1/kv/ledger/\(key)")
                    current[key] = response.text
                    currentVersion[key] = response.header("ETag")
                }
                // A kept-aside write is in no region's data: the leader never applied one (the fence refused them
                // when they arrived after the heal), and us-east brought its keys back to the leader's state.
                for write in diverted {
                    guard let key = write["key"] as? String, let version = write["version"] as? String else { continue }
                    #expect(currentVersion[key] != "\"\(version)\"", "kept-aside write \(key) \(version) is the leader's current value")
                }
                var lastByKey: [String: String] = [:]
                for (key, value) in acknowledged { lastByKey[key] = value }
                for (key, value) in lastByKey where key != "d0" {
                    #expect(current[key] == value || keptAside.contains("\(key)=\(value)"), "\(key)=\(value) was acknowledged, yet is neither at the leader (\(current[key] ?? "-")) nor kept aside")
                }
                // No kept-aside value is visible anywhere: us-east reads what the leader has.
                for write in diverted.prefix(20) {
                    guard let key = write["key"] as? String else { continue }
                    let here = try await usAgain.request("GET", "/v1/kv/ledger/\(key)?consistency=eventual")
                    if !(here.text == current[key] ?? "" || (key == "d0" && here.text == "from-new-leader")) {
                        var seen: [String] = ["us-east: \(here.text) \(here.header("ETag") ?? "")", "leader: \(current[key] ?? "-") \(currentVersion[key] ?? "")"]
                        for region in ["eu-west", "ap-southeast"] {
                            let peer = try await cluster.connect(region)
                            let there = try await peer.request("GET", "/v1/kv/ledger/\(key)?consistency=eventual")
                            seen.append("\(region): \(there.text) \(there.header("ETag") ?? "")")
                            await peer.close()
                        }
                        seen.append("kept aside: \(diverted.filter { $0["key"] as? String == key })")
                        seen.append("acknowledged: \(acknowledged.filter { $0.key == key }.map(\.value))")
                        seen.append("roots now: \(try await Self.merkleRoots(cluster, "ledger", regions: cluster.regions))")
                        Issue.record("\(key): \(seen.joined(separator: "; "))")
                    }
                }
                #expect(current["d0"] == "from-new-leader")
                // A kept-aside write re-applied on request goes through the current leader.
                if let first = diverted.first, let id = first["id"] as? Int, let key = first["key"] as? String, let value = first["value"] as? String {
                    let reapplied = try await usAgain.request("POST", "/v1/admin/divergence/\(id)/reapply")
                    #expect(reapplied.status == 200, "\(reapplied.text)")
                    #expect(try await cluster.waitForValue("eu-west", "/v1/kv/ledger/\(key)", value))
                    let again = try await usAgain.request("POST", "/v1/admin/divergence/\(id)/reapply")
                    #expect(again.status == 412, "re-applied once: \(again.text)")
                }
                await usAgain.close()
                await eu.close()
            }
        }
    }
}

