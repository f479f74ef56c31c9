// Proves `meridian up` as a user runs it: every region of the file starts, answers the README's curl
// flow, the CLI reads and writes through it, and SIGTERM (or the parent being SIGKILLed) stops every
// region process — no orphans, no ports left open.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct UpCommandTests {
        /// The cluster's regions on ports[0...5] (client, peer), its gateway on ports[6].
        func startCluster(_ scratch: Scratch) throws -> (process: Process, ports: [Int], config: String) {
            var ports: [Int] = []
            for _ in 0..<7 { ports.append(try LocalProcesses.freePort()) }
            let config = scratch.file("cluster.yaml")
            try (try clusterYAML(regions: ["us-east", "eu-west", "ap-southeast"], ports: ports, keyspaces: """
                  - { name: profiles, topology: multi-leader, conflict: lww, ack: async }
                  - { name: accounts, topology: single-leader, leader: us-east, ack: majority }
                routing: { gateway: 127.0.0.1:\(ports[6]) }

                """)).write(toFile: config, atomically: true, encoding: .utf8)
            let up = try LocalProcesses.start(MeridianBinary.path, ["up", "--config", config, "--data", scratch.file("data")], logPath: scratch.file("up.log"))
            return (up, ports, config)
        }

        func childPids(of parent: Int32) -> [Int32] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.compactMap(Int32.init).filter { pid in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
                return fields.count > 1 && Int32(fields[1]) == parent
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func upServesEveryRegionAndStopsCleanly() async throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let (up, ports, config) = try startCluster(scratch)
            defer { if up.isRunning { kill(up.processIdentifier, SIGKILL) } }
            for index in 0..<3 {
                #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: ports[2 * index], process: up, timeoutSeconds: 60))
            }
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: ports[6], process: up, timeoutSeconds: 60, credentials: .none))
            let children = childPids(of: up.processIdentifier)
            #expect(children.count == 5, "three regions, the WAN emulator and the gateway")

            // The WAN emulator answers `meridian chaos`.
            let chaos = try await runCLI(["chaos", "partition", "--config", config, "us-east", "eu-west"])
            #expect(chaos.status == 0 && chaos.stdout.contains("PARTITIONED"), "\(chaos)")
            let healed = try await runCLI(["chaos", "heal", "--config", config])
            #expect(healed.status == 0 && !healed.stdout.contains("PARTITIONED"), "\(healed)")

            // The README's flow: PUT then GET on the first region.
            let connection = try await HTTPConnection.connect(host: "127.0.0.1", port: ports[0])
            let put = try await connection.request("PUT", "/v1/kv/profiles/k", body: Array("v".utf8))
            #expect(put.status == 200)
            let get = try await connection.request("GET", "/v1/kv/profiles/k")
            #expect(get.status == 200 && get.text == "v")
            await connection.close()

            // The CLI against the same cluster: success exits 0, errors exit non-zero with the error code.
            let endpoint = "127.0.0.1:\(ports[2])"
            let cliPut = try await runCLI(["put", "--config", config, "--region", "eu-west", "profiles", "greeting", "hello"])
            #expect(cliPut.status == 0, "\(cliPut.stderr)")
            #expect(cliPut.stdout.contains("\"region\":\"eu-west\""))
            let cliGet = try await runCLI(["get", "--endpoint", endpoint, "profiles", "greeting"])
            #expect(cliGet.status == 0 && cliGet.stdout == "hello\n", "\(cliGet)")
            #expect(cliGet.stderr.contains("version"))
            let cliLs = try await runCLI(["ls", "--endpoint", endpoint, "profiles"])
            #expect(cliLs.status == 0 && cliLs.stdout.hasPrefix("greeting\t"), "\(cliLs)")
            let cliMissing = try await runCLI(["get", "--endpoint", endpoint, "profiles", "absent"])
            #expect(cliMissing.status != 0 && cliMissing.stderr.contains("key_not_found"), "\(cliMissing)")
            let cliRefused = try await runCLI(["put", "--endpoint", "127.0.0.1:\(ports[0])", "no_such_keyspace", "a", "1"])
            #expect(cliRefused.status != 0 && cliRefused.stderr.contains("unknown_keyspace"), "\(cliRefused)")
            // The regions `up` started replicate: eu-west's write reaches us-east through the WAN emulator.
            let usEast = try await HTTPConnection.connect(host: "127.0.0.1", port: ports[0])
            var replicated = false
            for _ in 0..<200 where !replicated {
                replicated = try await usEast.request("GET", "/v1/kv/profiles/greeting").text == "hello"
                if !replicated { try await Task.sleep(for: .milliseconds(50)) }
            }
            await usEast.close()
            #expect(replicated, "eu-west's write never reached us-east")
            let cliDel = try await runCLI(["del", "--endpoint", endpoint, "profiles", "greeting"])
            #expect(cliDel.status == 0)
            let cliStatus = try await runCLI(["status", "--endpoint", endpoint])
            #expect(cliStatus.status == 0 && cliStatus.stdout.contains("region eu-west"), "\(cliStatus)")
            let cliDown = try await runCLI(["get", "--endpoint", "127.0.0.1:\(try LocalProcesses.freePort())", "profiles", "k"])
            #expect(cliDown.status != 0 && cliDown.stderr.contains("cannot reach"))

            #expect(await LocalProcesses.stop(up, graceSeconds: 30), "up exits on SIGTERM")
            #expect(!up.isRunning && up.terminationStatus == 0)
            for pid in children { #expect(!processExists(pid), "region process \(pid) outlived `meridian up`") }
            for index in 0..<3 { #expect(!(await portAcceptsConnections(ports[2 * index]))) }
            let log = try String(contentsOfFile: scratch.file("up.log"), encoding: .utf8)
            #expect(log.contains("http://127.0.0.1:\(ports[0])"), "the endpoint table names every region")
        }

        /// Processes whose command line names `path` (the demo's PostgreSQL servers under a data directory).
        func processes(naming path: String) -> [Int32] {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.compactMap(Int32.init).filter { pid in
                guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
                return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(path)
            }
        }

        /// `meridian up --store postgres`: each demo region on a PostgreSQL server of its own in the data directory, with
        /// two nodes (the second takes over when the first is killed), replicating as on SQLite; the servers stop with
        /// `up`, and the data is there at the next start.
        @Test(.timeLimit(.minutes(4)))
        func upWithThePostgreSQLStoreKeepsEachRegionInItsOwnServerAcrossRestarts() async throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let data = scratch.file("data")
            let demo = try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
            for run in 0..<2 {
                let up = try LocalProcesses.start(MeridianBinary.path, ["up", "--store", "postgres", "--data", data, "--latency-scale", "0.1"],
                                                  logPath: scratch.file("up-\(run).log"))
                defer { if up.isRunning { kill(up.processIdentifier, SIGKILL) } }
                for region in demo.regions {
                    #expect(await LocalProcesses.waitHealthy(host: region.client.host, port: region.client.port, process: up, timeoutSeconds: 90),
                            "\(region.name) did not start: \(LocalCluster.tail(scratch.file("up-\(run).log"), lines: 20))")
                }
                let (first, last) = (demo.regions[0].client, demo.regions[demo.regions.count - 1].client)
                if run == 0 {
                    // A region takes writes once its peers compared clocks with it, a heartbeat after start.
                    let writer = try await HTTPConnection.connect(host: first.host, port: first.port)
                    var put = try await writer.request("PUT", "/v1/kv/profiles/on-postgres", body: Array("kept".utf8))
                    for _ in 0..<200 where put.status != 200 {
                        try await Task.sleep(for: .milliseconds(50))
                        put = try await writer.request("PUT", "/v1/kv/profiles/on-postgres", body: Array("kept".utf8))
                    }
                    #expect(put.status == 200, "\(put.text)")
                    await writer.close()
                }
                // Written in the first run; read in the last region, after a restart the second time.
                let reader = try await HTTPConnection.connect(host: last.host, port: last.port)
                var value = ""
                for _ in 0..<200 where value != "kept" {
                    value = try await reader.request("GET", "/v1/kv/profiles/on-postgres").text
                    if value != "kept" { try await Task.sleep(for: .milliseconds(50)) }
                }
                await reader.close()
                #expect(value == "kept", "run \(run): the write never reached \(demo.regions.last!.name)")
                if run == 1 {
                    // Two nodes per region: kill the one serving the first region, and its standby serves it.
                    for region in demo.regions {
                        #expect(processes(naming: "--node-name \(region.name)-standby").count == 1, "\(region.name) runs a standby node")
                    }
                    let status = await RegionProbe.json(first, "/v1/status")
                    let serving = status?["pid"] as? Int32 ?? 0
                    #expect(serving > 1, "\(String(describing: status))")
                    if serving > 1 { kill(serving, SIGKILL) }
                    let killed = ContinuousClock.now
                    var takenOver = false
                    while !takenOver && ContinuousClock.now - killed < .seconds(30) {
                        try await Task.sleep(for: .milliseconds(200))
                        let pid = await RegionProbe.json(first, "/v1/status")?["pid"] as? Int32
                        takenOver = pid != nil && pid != serving
                    }
                    #expect(takenOver, "no standby served \(demo.regions[0].name) within 30 s: \(LocalCluster.tail(scratch.file("up-\(run).log"), lines: 20))")
                    let again = try await HTTPConnection.connect(host: first.host, port: first.port)
                    #expect(try await again.request("GET", "/v1/kv/profiles/on-postgres").text == "kept")
                    await again.close()
                }
                for region in demo.regions {
                    #expect(FileManager.default.fileExists(atPath: "\(data)/\(region.name)-postgres/data/PG_VERSION"))
                    #expect(!FileManager.default.fileExists(atPath: "\(data)/\(region.name)/\(region.name).sqlite"), "\(region.name) ran on SQLite")
                }
                #expect(processes(naming: data + "/").count >= demo.regions.count, "the PostgreSQL servers run under the data directory")
                #expect(await LocalProcesses.stop(up, graceSeconds: 30), "up exits on SIGTERM")
                let deadline = Date().addingTimeInterval(20)
                while !processes(naming: data + "/").isEmpty && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
                #expect(processes(naming: data + "/").isEmpty, "a PostgreSQL server outlived `meridian up`")
            }
        }

        @Test(.timeLimit(.minutes(3)))
        func regionsExitWhenUpIsKilled() async throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let (up, ports, _) = try startCluster(scratch)
            for index in 0..<3 {
                #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: ports[2 * index], process: up, timeoutSeconds: 60))
            }
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: ports[6], process: up, timeoutSeconds: 60, credentials: .none))
            let children = childPids(of: up.processIdentifier)
            #expect(children.count == 5)
            kill(up.processIdentifier, SIGKILL)
            #expect(await LocalProcesses.waitExited(up), "up survived SIGKILL")
            let deadline = Date().addingTimeInterval(20)
            while children.contains(where: processExists) && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
            for pid in children {
                #expect(!processExists(pid), "region process \(pid) was orphaned")
                if processExists(pid) { kill(pid, SIGKILL) }
            }
        }
    }
}
