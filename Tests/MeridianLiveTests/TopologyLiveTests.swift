// The cluster's health verdicts with real processes behind the WAN emulator: a killed region is marked down at
// every survivor within about a silence (pushed on the topology stream), and re-admitted only after its good
// probes once it returns; a link cut between two regions marks neither down; a node with open topology streams
// still stops promptly on SIGTERM.
import Foundation
import MeridianAPI
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct TopologyLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }

            """

        static func topology(_ cluster: LiveCluster, _ region: String) async throws -> TopologyAnswer {
            let connection = try await cluster.connect(region)
            defer { Task { await connection.close() } }
            let response = try await connection.request("GET", "/v1/topology")
            #expect(response.status == 200, "\(response.text)")
            return try JSONDecoder().decode(TopologyAnswer.self, from: Data(response.body))
        }

        static func health(_ answer: TopologyAnswer, _ region: String) -> HealthVerdicts.Verdict? {
            answer.regions.first { $0.name == region }?.health
        }

        /// Reads the topology stream of a region with curl (a real SSE client) into a file, until stopped.
        final class StreamReader {
            let process = Process()
            let output: String

            init(url: String, output: String) throws {
                self.output = output
                FileManager.default.createFile(atPath: output, contents: nil)
                process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                process.arguments = ["curl", "-sN", "--max-time", "60", "-H", "Accept: text/event-stream", url]
                process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
                process.standardError = FileHandle.nullDevice
                try process.run()
            }

            /// Each event's topology, in order.
            var events: [TopologyAnswer] {
                let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                return text.split(separator: "\n").filter { $0.hasPrefix("data: ") }.compactMap {
                    try? JSONDecoder().decode(TopologyAnswer.self, from: Data($0.dropFirst(6).utf8))
                }
            }

            var text: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }

            /// SIGKILL: a child may inherit a mask that blocks SIGTERM from the test runner.
            func stop() {
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aKilledRegionIsDownAtEverySurvivorAndReadmittedAfterItsProbes() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                for region in cluster.regions {
                    let answer = try await Self.topology(cluster, region)
                    #expect(answer.quorate && answer.regions.allSatisfy { $0.health == .up }, "\(region): \(answer.regions)")
                }
                let stream = try StreamReader(url: "http://\(cluster.local.endpoint(RegionName(validated: "us-east")))/v1/topology",
                                              output: cluster.scratch.file("us-east.sse"))
                defer { stream.stop() }
                _ = try await eventually(timeoutSeconds: 5, { stream.events.count }, until: { $0 >= 1 })
                await cluster.kill9("ap-southeast")
                let killed = ContinuousClock.now
                var detection: [String: Duration] = [:]
                for region in ["us-east", "eu-west"] {
                    let answer = try await eventually(timeoutSeconds: 5, every: .milliseconds(20), { try await Self.topology(cluster, region) },
                                                      until: { Self.health($0, "ap-southeast") == .down })
                    detection[region] = ContinuousClock.now - killed
                    #expect(Self.health(answer, "ap-southeast") == .down, "\(region): \(answer.regions)")
                    #expect(answer.quorate && Self.health(answer, "us-east") == .up && Self.health(answer, "eu-west") == .up)
                    let down = answer.regions.first { $0.name == "ap-southeast" }
                    #expect(down?.suspectedBy == ["eu-west", "us-east"] && down?.readmitProbesLeft == 10, "\(String(describing: down))")
                }
                // A silence is 5 heartbeats of 100 ms plus the link's round trip; then one probe for the votes to meet.
                #expect(detection.values.allSatisfy { $0 < .seconds(3) }, "down after \(detection)")
                // The stream pushed it: suspect (us-east alone), then down.
                let pushed = try await eventually(timeoutSeconds: 3, { stream.events }, until: { $0.contains { Self.health($0, "ap-southeast") == .down } })
                #expect(pushed.contains { Self.health($0, "ap-southeast") == .down }, "\(stream.text.suffix(2000))")
                let versions = pushed.map(\.version)
                #expect(versions == versions.sorted() && Set(versions).count == versions.count, "event versions grow: \(versions)")

                try await cluster.restartNode("ap-southeast")
                var sawProbesLeft = Set<Int>()
                let readmitted = try await eventually(timeoutSeconds: 20, every: .milliseconds(20), {
                    let answer = try await Self.topology(cluster, "us-east")
                    if let left = answer.regions.first(where: { $0.name == "ap-southeast" })?.readmitProbesLeft { sawProbesLeft.insert(left) }
                    return answer
                }, until: { Self.health($0, "ap-southeast") == .up })
                #expect(Self.health(readmitted, "ap-southeast") == .up, "not re-admitted within 20 s: \(readmitted.regions)")
                // It counted its good probes down before it was routed to again (10 probes of 100 ms: about a second).
                #expect(sawProbesLeft.contains { $0 < 10 }, "probes left seen: \(sawProbesLeft.sorted())")
                let atEU = try await eventually(timeoutSeconds: 10, { try await Self.topology(cluster, "eu-west") },
                                                until: { Self.health($0, "ap-southeast") == .up })
                #expect(Self.health(atEU, "ap-southeast") == .up)
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func aCutLinkMarksNeitherEndDownAndStreamsDoNotHoldUpAStop() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                try await cluster.chaos("partition", "us-east", "ap-southeast")
                // Both ends suspect each other; eu-west still reaches both, so neither is down anywhere.
                let seen = try await eventually(timeoutSeconds: 5, { try await Self.topology(cluster, "us-east") },
                                                until: { Self.health($0, "ap-southeast") == .suspect })
                #expect(Self.health(seen, "ap-southeast") == .suspect, "\(seen.regions)")
                let watchUntil = ContinuousClock.now + .seconds(3)
                var samples = 0
                while ContinuousClock.now < watchUntil {
                    for region in cluster.regions {
                        let answer = try await Self.topology(cluster, region)
                        samples += 1
                        for entry in answer.regions where entry.health == .down {
                            Issue.record("\(region) marked \(entry.name) down with only us-east~ap-southeast cut: \(answer.regions)")
                        }
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(samples > 20)
                try await cluster.chaos("heal")
                let healed = try await eventually(timeoutSeconds: 10, { try await Self.topology(cluster, "us-east") },
                                                  until: { $0.regions.allSatisfy { $0.health == .up } })
                #expect(healed.regions.allSatisfy { $0.health == .up }, "\(healed.regions)")

                // A node serving a topology stream still stops at once on SIGTERM: the stream ends with it.
                let stream = try StreamReader(url: "http://\(cluster.local.endpoint(RegionName(validated: "eu-west")))/v1/topology",
                                              output: cluster.scratch.file("eu-west.sse"))
                defer { stream.stop() }
                _ = try await eventually(timeoutSeconds: 5, { stream.events.count }, until: { $0 >= 1 })
                let process = try #require(cluster.local.process(RegionName(validated: "eu-west")))
                let signalled = ContinuousClock.now
                cluster.local.signal(RegionName(validated: "eu-west"), SIGTERM)
                let exited = try await eventually(timeoutSeconds: 10, { !process.isRunning }, until: { $0 })
                #expect(exited, "eu-west still runs 10 s after SIGTERM with a topology stream open")
                #expect(ContinuousClock.now - signalled < .seconds(3), "stopping took \(ContinuousClock.now - signalled)")
            }
        }
    }
}
