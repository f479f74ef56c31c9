// The game day with each client library: while `meridian gameday`'s drill (MeridianDrills' `Drill`, the command's own
// code) kills the leader of a single-leader keyspace under its load and starts it again, a Swift program on
// MeridianClient and a Python one on clients/python put fresh keys there, increment a CRDT counter, and read earlier
// keys back. Afterwards: no read failed or came back stale, every acknowledged put is in every region with the
// version it was acknowledged with (nothing lost, and no retry applied it again after), and each counter counts
// exactly the increments acknowledged (none applied twice). And deterministically: a write whose answer says it may
// have been applied (an ack timeout while a replica is frozen) is sent again by each library with its idempotency key
// until it is answered, and counted once.
import Foundation
import MeridianClient
import MeridianCore
import MeridianDrills
import MeridianHarness
import Synchronization
import Testing

extension LiveTests {
    @Suite(.serialized) struct ClientGamedayLiveTests {
        final class StopFlag: Sendable {
            let raised = Atomic<Bool>(false)
        }

        /// What one client saw, as the Python load script writes it.
        struct Summary: Decodable {
            struct Put: Decodable {
                let key: String
                let value: String
                let version: String?
            }
            struct Failure: Decodable {
                let key: String
                let code: String
                let message: String
            }
            let puts: [Put]
            let increments: Int
            let counter: String
            let reads: Int
            let failedWrites: [Failure]
            let failedReads: [Failure]

            enum CodingKeys: String, CodingKey {
                case puts, increments, counter, reads
                case failedWrites = "failed_writes"
                case failedReads = "failed_reads"
            }
        }

        /// The Swift load: the same rounds as the Python script, until `stop`.
        static func swiftLoad(_ client: MeridianClient, tag: String, stop: StopFlag) async -> Summary {
            var puts: [Summary.Put] = [], failedWrites: [Summary.Failure] = [], failedReads: [Summary.Failure] = []
            var increments = 0, reads = 0, index = 0
            let counter = "\(tag)-counter"
            let started = ContinuousClock.now
            while !stop.raised.load(ordering: .relaxed) && ContinuousClock.now - started < .seconds(120) {
                index += 1
                let key = "\(tag)-\(index)", value = "\(index)-\(UInt32.random(in: 0...UInt32.max))"
                do {
                    let answer = try await client.put("accounts", key, Array(value.utf8), contentType: "text/plain")
                    puts.append(.init(key: key, value: value, version: answer.version))
                } catch {
                    failedWrites.append(.init(key: key, code: error.code, message: error.message))
                }
                do {
                    _ = try await client.crdt("likes", counter, operation: #"{"type":"pn-counter","op":"increment","by":1}"#)
                    increments += 1
                } catch {
                    failedWrites.append(.init(key: counter, code: error.code, message: error.message))
                }
                if let earlier = puts.randomElement() {
                    do {
                        let read = try await client.get("accounts", earlier.key, consistency: .session)
                        reads += 1
                        if read.text != earlier.value { failedReads.append(.init(key: earlier.key, code: "stale", message: "read \(read.text), wrote \(earlier.value)")) }
                    } catch {
                        failedReads.append(.init(key: earlier.key, code: error.code, message: error.message))
                    }
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
            return Summary(puts: puts, increments: increments, counter: counter, reads: reads, failedWrites: failedWrites, failedReads: failedReads)
        }

        /// Checks a client's summary against every region: nothing lost, nothing applied twice, no failed read.
        static func check(_ summary: Summary, library: String, cluster: LiveCluster) async throws {
            #expect(summary.failedReads.isEmpty, "\(library): failed reads \(summary.failedReads.map { "\($0.key) \($0.code): \($0.message)" })")
            #expect(summary.failedWrites.isEmpty, "\(library): failed writes \(summary.failedWrites.map { "\($0.key) \($0.code): \($0.message)" })")
            #expect(summary.puts.count >= 20 && summary.reads >= 10, "\(library): \(summary.puts.count) puts, \(summary.reads) reads")
            for region in cluster.regions {
                let connection = try await cluster.connect(region)
                var lost: [String] = [], rewritten: [String] = []
                for put in summary.puts {
                    let read = try await eventually(timeoutSeconds: 10, {
                        try await connection.request("GET", "/v1/kv/accounts/\(put.key)", headers: [("Meridian-Consistency", "eventual")])
                    }, until: { $0.status == 200 && $0.text == put.value })
                    if read.status != 200 || read.text != put.value { lost.append(put.key) }
                    // The version acknowledged is the version held: no retry applied the write a second time after it.
                    else if read.header("ETag") != put.version.map({ "\"\($0)\"" }) { rewritten.append("\(put.key) \(read.header("ETag") ?? "-") != \(put.version ?? "-")") }
                }
                let counter = try await eventually(timeoutSeconds: 10, {
                    try await connection.request("GET", "/v1/crdt/likes/\(summary.counter)", headers: [("Meridian-Consistency", "eventual")])
                }, until: { $0.text.contains("\"value\":\(summary.increments),") || $0.text.contains("\"value\":\(summary.increments)}") })
                await connection.close()
                #expect(lost.isEmpty, "\(library): acknowledged puts missing at \(region): \(lost)")
                #expect(rewritten.isEmpty, "\(library): puts applied again at \(region): \(rewritten)")
                #expect(counter.text.contains("\"value\":\(summary.increments)"), "\(library): \(summary.increments) increments acknowledged, \(region) counts \(counter.text)")
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aWriteWhoseFateIsOpenIsRetriedByEachLibraryAndCountedOnce() async throws {
            let keyspaces = """
                  - { name: tally, topology: multi-leader, conflict: crdt, ack: all }

                """
            // The ack timeout is short so that the first attempts time out while ap-southeast is frozen, and long enough
            // for the retries to be confirmed once it resumes on a machine busy with other tests.
            try await withLiveCluster(keyspaces: keyspaces, extraYAML: "limits: { ack_timeout_ms: 1000 }\n") { cluster in
                try await cluster.waitUntilLinksUp()
                let seeds = cluster.regions.map { "http://\(cluster.local.endpoint(RegionName(validated: $0)))" }
                let keys = ["open-fate-\(UUID().uuidString)", "open-fate-\(UUID().uuidString)"]
                var configuration = MeridianClient.Configuration(seeds: seeds, preferredRegions: [RegionName(validated: "eu-west"), RegionName(validated: "us-east")])
                configuration.timeoutMs = 60_000
                let client = try MeridianClient(configuration: configuration)
                try await client.refresh()
                // The Python client starts, learns the topology and waits for the go: its interpreter can take seconds to
                // start on a machine busy with other tests, and by then eu-west would know ap-southeast is down and refuse
                // the write outright (applied: no) instead of committing it and timing out its ack.
                let (ready, go) = (cluster.scratch.file("python.ready"), cluster.scratch.file("python.go"))
                let script = """
                    import os, time
                    from meridian_client import MeridianClient
                    client = MeridianClient([\(seeds.map { "'\($0)'" }.joined(separator: ", "))], preferred_regions=['eu-west', 'us-east'], follow_topology=False, timeout=60.0)
                    open('\(ready)', 'w').close()
                    deadline = time.monotonic() + 120
                    while not os.path.exists('\(go)') and time.monotonic() < deadline:
                        time.sleep(0.01)
                    answer = client.crdt('tally', 'python', {'type': 'pn-counter', 'op': 'increment', 'by': 1}, idempotency_key='\(keys[1])')
                    print(answer.status, answer.headers.get('idempotent-replayed'), answer.text)
                    """
                let python = Task { try await ClientLibraryLiveTests.python(["-c", script], environment: [:]) }
                let started = try await eventually(timeoutSeconds: 60, { FileManager.default.fileExists(atPath: ready) }, until: { $0 })
                guard started else {
                    _ = FileManager.default.createFile(atPath: go, contents: nil)
                    let pythonSaid = (try? await python.value).map { "exit \($0.0): \($0.1.suffix(800))" } ?? "did not run"
                    Issue.record("the Python client did not start within 60 s: \(pythonSaid)")
                    try await client.shutdown()
                    return
                }
                cluster.local.signal(RegionName(validated: "ap-southeast"), SIGSTOP)
                let swift = Task { try await client.crdt("tally", "swift", operation: #"{"type":"pn-counter","op":"increment","by":1}"#, idempotencyKey: keys[0]) }
                _ = FileManager.default.createFile(atPath: go, contents: nil)
                // Both first attempts are committed at eu-west, and their ack waits (1 s) over, before ap-southeast
                // resumes.
                let probe = try await cluster.connect("eu-west")
                for counter in ["swift", "python"] {
                    let committed = try await eventually(timeoutSeconds: 60, {
                        try await probe.request("GET", "/v1/crdt/tally/\(counter)", headers: [("Meridian-Consistency", "eventual")])
                    }, until: { $0.status == 200 })
                    guard committed.status == 200 else {
                        // Without it the test would go on to check a first attempt that never happened (an answer confirmed by all).
                        cluster.local.signal(RegionName(validated: "ap-southeast"), SIGCONT)
                        let swiftSaid = (try? await swift.value).map { "\($0.status) \($0.text)" } ?? "no answer"
                        let pythonSaid = (try? await python.value).map { "exit \($0.0): \($0.1.suffix(800))" } ?? "did not run"
                        Issue.record("the \(counter) client's first attempt did not reach eu-west within 60 s: \(committed.status) \(committed.text); the Swift client got \(swiftSaid); the Python client: \(pythonSaid)")
                        try await client.shutdown()
                        return
                    }
                }
                await probe.close()
                try await Task.sleep(for: .seconds(2))
                // Meanwhile a retry refused before it reaches the store still says the write may be applied: eu-west
                // holds the first attempt.
                let euWest = try await cluster.connect("eu-west")
                let refused = try await euWest.request("POST", "/v1/crdt/tally/swift", headers: [("Idempotency-Key", keys[0])],
                                                       body: Array(#"{"type":"pn-counter","op":"increment","by":1}"#.utf8))
                await euWest.close()
                #expect([503, 504].contains(refused.status) && refused.text.contains("\"applied\":\"maybe\""), "\(refused.status) \(refused.text)")
                cluster.local.signal(RegionName(validated: "ap-southeast"), SIGCONT)
                let swiftAnswer: MeridianClient.Answer
                do {
                    swiftAnswer = try await swift.value
                } catch {
                    Issue.record("the Swift client's increment failed: \(error)")
                    _ = try? await python.value
                    try await client.shutdown()
                    return
                }
                let (pythonStatus, pythonOutput) = try await python.value
                // Each first attempt timed out waiting for ap-southeast (applied: maybe); a retry got the first outcome.
                #expect(swiftAnswer.status == 200 && swiftAnswer.headers["idempotent-replayed"] == "true", "\(swiftAnswer.headers) \(swiftAnswer.text)")
                #expect(pythonStatus == 0 && pythonOutput.hasPrefix("200 true "), "\(pythonOutput)")
                for region in cluster.regions {
                    let connection = try await cluster.connect(region)
                    for counter in ["swift", "python"] {
                        let read = try await eventually({ try await connection.request("GET", "/v1/crdt/tally/\(counter)") }, until: { $0.status == 200 })
                        #expect(read.text.contains("\"value\":1,") || read.text.contains("\"value\":1}"), "\(region) counts \(counter): \(read.text)")
                    }
                    await connection.close()
                }
                try await client.shutdown()
            }
        }

        @Test(.timeLimit(.minutes(4)))
        func duringTheGameDayEachClientLibrarySeesNoFailedReadAndNoLostOrDuplicatedWrite() async throws {
            try await withLiveCluster(keyspaces: ClientLibraryLiveTests.keyspaces) { cluster in
                try await cluster.waitUntilLinksUp()
                try await FailoverLiveTests.expectLeading(cluster, "us-east", "accounts")
                let seeds = cluster.regions.map { "http://\(cluster.local.endpoint(RegionName(validated: $0)))" }

                // The Python client, in its own process.
                let stopFile = cluster.scratch.file("python-load.stop"), summaryFile = cluster.scratch.file("python-load.json")
                let python = Process()
                python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                python.arguments = ["python3", "examples/gameday_load.py", "--seeds"] + seeds + ["--preferred", "eu-west", "--stop-file", stopFile, "--out", summaryFile,
                                                                                                 "--tag", "python"]
                python.currentDirectoryURL = URL(fileURLWithPath: ClientLibraryLiveTests.package)
                let pythonLog = cluster.scratch.file("python-load.log")
                _ = FileManager.default.createFile(atPath: pythonLog, contents: nil)
                python.standardOutput = FileHandle(forWritingAtPath: pythonLog)
                python.standardError = FileHandle(forWritingAtPath: pythonLog)
                try python.run()
                defer { if python.isRunning { kill(python.processIdentifier, SIGKILL) } }

                // The Swift client, in this process.
                let client = try MeridianClient(configuration: .init(seeds: seeds, preferredRegions: [RegionName(validated: "ap-southeast")]))
                try await client.refresh()
                let follower = Task { await client.run() }
                let stop = StopFlag()
                let swiftLoad = Task { await Self.swiftLoad(client, tag: "swift", stop: stop) }

                // The game day: the drill kills the accounts leader under its own load, then starts it again.
                let config = try ClusterConfig.parse(yaml: String(contentsOfFile: cluster.config, encoding: .utf8), file: cluster.config)
                let drill = Drill(config: config, policy: config.keyspace(try KeyspaceName("accounts"))!, writers: 2, logDirectory: cluster.scratch.path)
                let round = try await drill.round(1, warmupSeconds: 3, downSeconds: 3, settleSeconds: 20)
                // The drill started the killed region again, detached: it is stopped with the cluster.
                let restartedPid = try await cluster.status(round.killed)["pid"] as? Int32
                defer { if let restartedPid, restartedPid > 1 { kill(restartedPid, SIGKILL) } }
                print(round.line)
                // The regions agree once the clients stop too (checked below, key by key); the drill's own load lost nothing.
                #expect(round.lost == 0, "\(round.line)")
                try await Task.sleep(for: .seconds(2))

                stop.raised.store(true, ordering: .relaxed)
                _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
                let swift = await swiftLoad.value
                let deadline = ContinuousClock.now + .seconds(60)
                while python.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
                let output = (try? String(contentsOfFile: pythonLog, encoding: .utf8)) ?? ""
                #expect(!python.isRunning && python.terminationStatus == 0, "the Python load ended: \(output)")
                let pythonSummary = try JSONDecoder().decode(Summary.self, from: Data(contentsOf: URL(fileURLWithPath: summaryFile)))
                print(output.trimmingCharacters(in: .whitespacesAndNewlines))
                print("swift: \(swift.puts.count) puts and \(swift.increments) increments acknowledged, \(swift.reads) reads; \(swift.failedWrites.count) failed writes, \(swift.failedReads.count) failed reads")
                try await Self.check(swift, library: "Swift", cluster: cluster)
                try await Self.check(pythonSummary, library: "Python", cluster: cluster)
                let endpoints = cluster.regions.map { cluster.local.endpoint(RegionName(validated: $0)) }
                #expect(await RegionProbe.rootsAgree(endpoints, keyspace: "accounts", within: 20), "every region holds the same accounts")
                #expect(await RegionProbe.rootsAgree(endpoints, keyspace: "likes", within: 20), "every region holds the same counters")
                follower.cancel()
                try await client.shutdown()
            }
        }
    }
}
