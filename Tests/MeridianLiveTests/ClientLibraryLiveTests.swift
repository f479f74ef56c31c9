// The Swift client library (MeridianClient) and the Python one against a live cluster. The Python client: its own tests (routing, sessions, leaders, CRDTs, a region
// killed under it) and the documents' MultiRegionDatabase example, run with the machine's python3.
import Foundation
import MeridianClient
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct ClientLibraryLiveTests {
        static let keyspaces = """
              - { name: accounts, topology: single-leader, leader: us-east, ack: majority, failover: { order: [us-east, eu-west, ap-southeast] } }
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }
              - { name: likes, topology: multi-leader, conflict: crdt, ack: async }

            """

        static let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("clients/python").path

        /// Runs python3 in the package directory with `arguments` and extra environment; returns its status and output.
        static func python(_ arguments: [String], environment: [String: String]) async throws -> (Int32, String) {
            let result = try await runProgram("/usr/bin/env", ["python3"] + arguments, directory: package,
                                        environment: environment.merging(["PYTHONPATH": package]) { $1 }, timeoutSeconds: 120)
            return (result.status, result.stdout + result.stderr)
        }

        /// The Swift library: leader routing without a hop, sessions across regions, CRDTs, the topology followed
        /// from a region's stream, and a preferred region killed under it (every read and write still served).
        @Test(.timeLimit(.minutes(3)))
        func theSwiftClientRoutesFollowsTheTopologyAndFailsOver() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                let seeds = cluster.regions.map { "http://\(cluster.local.endpoint(RegionName(validated: $0)))" }
                let client = try MeridianClient(configuration: .init(seeds: [seeds[1]], preferredRegions: [RegionName(validated: "eu-west")]))
                try await client.refresh()
                let follower = Task { await client.run() }
                defer { follower.cancel() }
                let write = try await client.put("profiles", "swift", Array("client".utf8), contentType: "text/plain")
                #expect(write.status == 200 && write.region == "eu-west", "\(write.region)")
                #expect(try await client.get("profiles", "swift").text == "client")
                let leader = try await client.put("accounts", "swift", Array("1".utf8))
                #expect(leader.region == "us-east" && leader.headers["meridian-forwarded-to"] == nil, "\(leader.headers)")
                let strong = try await client.get("accounts", "swift")
                #expect(strong.text == "1" && strong.region == "us-east")
                let counter = try await client.crdt("likes", "swift", operation: #"{"type":"pn-counter","op":"increment","by":3}"#)
                #expect(counter.text.contains("\"value\":3"), "\(counter.text)")
                do {
                    _ = try await client.get("profiles", "nobody")
                    Issue.record("a missing key was found")
                } catch let error as MeridianClient.Failure {
                    #expect(error.code == "key_not_found" && error.status == 404)
                }

                // Hedged: with eu-west paused (its connections open, nothing refused), a read is answered by the next
                // region shortly after the hedge delay.
                let hedging = try MeridianClient(configuration: .init(seeds: seeds, preferredRegions: [RegionName(validated: "eu-west")], hedgeAfterMs: 50))
                try await hedging.refresh()
                #expect(try await hedging.get("profiles", "swift", consistency: .eventual).region == "eu-west")
                cluster.local.signal(RegionName(validated: "eu-west"), SIGSTOP)
                let started = ContinuousClock.now
                let hedged = try await hedging.get("profiles", "swift", consistency: .eventual)
                let took = ContinuousClock.now - started
                cluster.local.signal(RegionName(validated: "eu-west"), SIGCONT)
                #expect(hedged.text == "client" && hedged.region != "eu-west" && took < .seconds(2), "\(hedged.region) after \(took)")
                try await hedging.shutdown()

                await cluster.kill9("eu-west")
                var served: [String] = []
                for index in 0..<20 {
                    let put = try await client.put("profiles", "after-\(index)", Array("v".utf8))
                    let get = try await client.get("profiles", "after-\(index)")
                    #expect(get.text == "v")
                    served += [put.region, get.region]
                }
                #expect(!served.contains("eu-west") && served.count == 40, "\(served)")
                // The stream told the client the cluster marked eu-west down.
                let topology = try await eventually(timeoutSeconds: 10, { client.topology }, until: {
                    $0?.regions.first { $0.name == "eu-west" }?.health == .down
                })
                #expect(topology?.regions.first { $0.name == "eu-west" }?.health == .down)
                follower.cancel()
                try await client.shutdown()
            }
        }

        @Test(.timeLimit(.minutes(4)))
        func thePythonClientRoutesFailsOverAndRunsTheDocumentsExample() async throws {
            try await withLiveCluster(keyspaces: Self.keyspaces) { cluster in
                let seeds = cluster.regions.map { "http://\(cluster.local.endpoint(RegionName(validated: $0)))" }
                let (status, output) = try await Self.python(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."],
                                                       environment: ["MERIDIAN_SEEDS": seeds.joined(separator: ",")])
                #expect(status == 0 && !output.contains("skipped 'MERIDIAN_SEEDS"), "\(output.suffix(3000))")
                let (exampleStatus, example) = try await Self.python(["examples/multi_region_database.py"] + seeds, environment: [:])
                #expect(exampleStatus == 0 && example.contains("SYNC") && example.contains("straight to us-east"), "\(example.suffix(2000))")
                #expect(example.contains("acked by ap-southeast, eu-west, us-east") || example.contains("acked by eu-west"), "\(example)")

                await cluster.kill9("eu-west")
                let (deadStatus, deadOutput) = try await Self.python(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."],
                                                               environment: ["MERIDIAN_SEEDS": seeds.joined(separator: ","), "MERIDIAN_DEAD": "eu-west"])
                #expect(deadStatus == 0, "with eu-west killed: \(deadOutput.suffix(3000))")
            }
        }
    }
}
