// Several node processes of one region on one PostgreSQL database: the one holding the region's lease serves the
// region, another takes over when it dies, nothing acknowledged is lost and no log number is reused, and a holder
// that was paused past its lease changes nothing once it wakes.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct RegionNodesLiveTests {
        static let keyspaces = """
              - { name: ledger, topology: single-leader, leader: solo, ack: majority }
              - { name: notes, topology: multi-leader, ack: async }

            """

        /// Two nodes of region `solo` sharing a database and a root key, the cluster file naming one client address.
        struct Region {
            let scratch: Scratch
            let port: Int
            let arguments: [String]

            init() async throws {
                scratch = try Scratch()
                let server = try await PostgresServer.shared.value
                let store = "{ kind: postgres, url: \"postgres://\(server.user)@127.0.0.1:\(server.port)/\(try await server.newDatabase())?sslmode=disable\" }"
                port = try LocalProcesses.freePort()
                let config = scratch.file("cluster.yaml")
                peerPort = try LocalProcesses.freePort()
                try (try clusterYAML(regions: ["solo"], ports: [port, peerPort], keyspaces: RegionNodesLiveTests.keyspaces,
                                     stores: ["solo": store])).write(toFile: config, atomically: true, encoding: .utf8)
                var health: [String: Endpoint] = [:]
                var relay: [String: (client: Endpoint, peer: Endpoint)] = [:]
                for name in ["node-a", "node-b"] {
                    health[name] = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
                    relay[name] = (Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort()), Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort()))
                }
                (self.health, self.relay) = (health, relay)
                arguments = ["node", "--config", config, "--region", "solo", "--root-key-file", scratch.file("solo.root-key"),
                             "--exit-with-parent", "--log-level", "info"]
            }

            /// The region's peer port (the lease holder binds it).
            let peerPort: Int
            /// Each node's own health address (`--health-listen`), answering whether it holds the lease or stands by.
            let health: [String: Endpoint]
            /// Where each node relays client and peer connections to the holder while it stands by.
            let relay: [String: (client: Endpoint, peer: Endpoint)]

            func start(_ name: String) throws -> Process {
                try LocalProcesses.start(MeridianBinary.path, arguments + ["--data", scratch.file(name), "--node-name", name,
                                                                            "--health-listen", health[name]!.description,
                                                                            "--relay-listen", relay[name]!.client.description,
                                                                            "--relay-peer-listen", relay[name]!.peer.description],
                                         logPath: scratch.file("\(name).log"))
            }

            /// What a node's own health address says its role is ("holder", "standby"; nil: no answer).
            func role(_ name: String) async -> String? {
                await RegionProbe.json(health[name]!, "/health")?["role"] as? String
            }

            func log(_ name: String) -> String {
                (try? String(contentsOfFile: scratch.file("\(name).log"), encoding: .utf8)) ?? ""
            }

            /// Whether `name`'s log says it holds the lease (it started the region's duties).
            func holds(_ name: String) -> Bool {
                log(name).contains("holding the region's lease")
            }
        }

        /// Waits (bounded) until `condition` holds.
        static func eventually(seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
            let deadline = ContinuousClock.now + .seconds(seconds)
            while ContinuousClock.now < deadline {
                if try await condition() { return true }
                try await Task.sleep(for: .milliseconds(100))
            }
            return try await condition()
        }

        actor WriteCount {
            private(set) var count = 0
            func add() { count += 1 }
        }

        static func sequence(_ etag: String?) -> Int? {
            etag.flatMap { Int($0.dropFirst().dropLast().split(separator: ".").last ?? "") }
        }

        @Test(.timeLimit(.minutes(3)))
        func whenTheHolderIsKilledMidWriteAnotherNodeServesEveryAcknowledgedWrite() async throws {
            let region = try await Region()
            defer { region.scratch.remove() }
            let first = try region.start("node-a")
            defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: first, timeoutSeconds: 60))
            #expect(region.holds("node-a"), "\(LocalCluster.tail(region.log("node-a"), lines: 20))")
            let second = try region.start("node-b")
            defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
            #expect(try await Self.eventually(seconds: 30) { region.log("node-b").contains("this one stands by to take over") })

            // Six writers to both keyspaces, 60 keys each, each key written until acknowledged once; node-a is killed
            // with writes in flight, and the writers carry on at whichever node serves the region.
            let progress = WriteCount()
            let writers = Task {
                try await withThrowingTaskGroup(of: [(String, String, String)].self) { group in
                    for writer in 0..<6 {
                        group.addTask {
                            var acks: [(String, String, String)] = []
                            var connection: HTTPConnection?
                            let deadline = ContinuousClock.now + .seconds(90)
                            for index in 0..<60 {
                                let path = "/v1/kv/\(writer % 2 == 0 ? "ledger" : "notes")/w\(writer)/k\(index)"
                                var attempt = 0
                                while ContinuousClock.now < deadline {
                                    attempt += 1
                                    let value = "value-\(writer)-\(index)-\(attempt)"
                                    do {
                                        if connection == nil { connection = try await HTTPConnection.connect(host: "127.0.0.1", port: region.port) }
                                        let response = try await connection!.request("PUT", path, body: Array(value.utf8))
                                        if response.status == 200, let etag = response.header("ETag") {
                                            acks.append((path, value, etag))
                                            await progress.add()
                                            break
                                        }
                                    } catch {
                                        await connection?.close()
                                        connection = nil
                                    }
                                    try await Task.sleep(for: .milliseconds(100))
                                }
                            }
                            await connection?.close()
                            return acks
                        }
                    }
                    return try await group.reduce(into: []) { $0 += $1 }
                }
            }
            #expect(try await Self.eventually(seconds: 60) { await progress.count >= 120 })
            #expect(!region.holds("node-b"), "node-b took the lease while node-a held it")
            #expect(await region.role("node-a") == "holder")
            #expect(await region.role("node-b") == "standby")

            kill(first.processIdentifier, SIGKILL)
            #expect(await LocalProcesses.waitExited(first), "node-a survived SIGKILL")
            let killed = ContinuousClock.now
            // The lease runs 5 s; node-b then binds the region's addresses and serves.
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: second, timeoutSeconds: 30))
            let takeover = ContinuousClock.now - killed
            #expect(region.holds("node-b"))
            #expect(await region.role("node-b") == "holder")
            #expect(takeover < .seconds(15), "node-b served \(takeover) after node-a was killed")
            let acknowledged = try await writers.value
            #expect(acknowledged.count == 360, "every key was acknowledged once: \(acknowledged.count)")

            let connection = try await HTTPConnection.connect(host: "127.0.0.1", port: region.port)
            var missing: [String] = []
            for (path, value, etag) in acknowledged {
                let response = try await connection.request("GET", path)
                if response.status != 200 || response.text != value || response.header("ETag") != etag { missing.append("\(path): \(response.text)") }
            }
            #expect(missing.isEmpty, "\(missing.count) acknowledged writes lost or changed: \(missing.prefix(5))")
            // One log for the region, whichever node writes: no number is used twice, before or after the takeover.
            let sequences = acknowledged.compactMap { Self.sequence($0.2) }
            #expect(Set(sequences).count == sequences.count, "a log number was acknowledged twice")
            let next = try await connection.request("PUT", "/v1/kv/notes/after-takeover", body: Array("x".utf8))
            #expect(next.status == 200, "\(next.text)")
            #expect((Self.sequence(next.header("ETag")) ?? 0) > (sequences.max() ?? 0), "after \(sequences.max() ?? 0): \(next.header("ETag") ?? "-")")
            await connection.close()
            #expect(await LocalProcesses.stop(second), "node-b shuts down cleanly on SIGTERM")
        }

        @Test(.timeLimit(.minutes(3)))
        func aHolderPausedPastItsLeaseChangesNothingWhenItWakes() async throws {
            let region = try await Region()
            defer { region.scratch.remove() }
            let first = try region.start("node-a")
            defer {
                if first.isRunning {
                    kill(first.processIdentifier, SIGCONT)
                    kill(first.processIdentifier, SIGKILL)
                }
            }
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: first, timeoutSeconds: 60))
            let second = try region.start("node-b")
            defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
            #expect(try await Self.eventually(seconds: 30) { region.log("node-b").contains("this one stands by to take over") })
            let stale = try await HTTPConnection.connect(host: "127.0.0.1", port: region.port)
            #expect(try await stale.request("PUT", "/v1/kv/notes/before", body: Array("a".utf8)).status == 200)
            // Connected while node-a serves. Connections accepted while it stops its server (node-b's health probes
            // below) once crashed it: NIO's "Deinited NIOAsyncWriter without calling finish()" (RELIABILITY.md).
            let staleReader = try await HTTPConnection.connect(host: "127.0.0.1", port: region.port)

            // Paused, node-a keeps its sockets; node-b is granted the lease once it expires, and cannot bind the
            // region's addresses until node-a lets them go.
            kill(first.processIdentifier, SIGSTOP)
            #expect(try await Self.eventually(seconds: 30) { region.holds("node-b") }, "node-b was not granted the lease")
            // A read and a write already on their way to node-a when it wakes: neither is answered (its lease ran out by
            // its own clock), and the write is never applied (the store's fence refuses it).
            async let read = staleReader.request("GET", "/v1/kv/notes/before")
            async let answer = stale.request("PUT", "/v1/kv/notes/from-the-stale-holder", body: Array("stale".utf8))
            try await Task.sleep(for: .milliseconds(200))
            kill(first.processIdentifier, SIGCONT)
            let staleRead = try? await read
            let staleAnswer = try? await answer
            #expect(staleRead == nil, "the paused holder answered a read after losing its lease: \(staleRead?.status ?? 0)")
            #expect(staleAnswer?.status != 200, "the paused holder acknowledged a write after losing its lease: \(staleAnswer?.text ?? "")")
            await stale.close()
            await staleReader.close()

            // node-a stops its duties and frees the addresses; node-b serves the region.
            #expect(try await Self.eventually(seconds: 30) { region.log("node-a").contains("stopping the region's single-instance duties") })
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: second, timeoutSeconds: 30))
            let connection = try await HTTPConnection.connect(host: "127.0.0.1", port: region.port)
            #expect(try await connection.request("GET", "/v1/kv/notes/before").text == "a")
            #expect(try await connection.request("GET", "/v1/kv/notes/from-the-stale-holder").status == 404)
            #expect(try await connection.request("PUT", "/v1/kv/ledger/after", body: Array("b".utf8)).status == 200)
            await connection.close()
            // node-a waits as a standby now: stopping node-b hands the lease back to it at once.
            #expect(await LocalProcesses.stop(second), "node-b shuts down cleanly on SIGTERM")
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: first, timeoutSeconds: 30),
                    "node-a (running: \(first.isRunning)) did not serve again: \(LocalCluster.tail(region.scratch.file("node-a.log"), lines: 30))")
            #expect(await LocalProcesses.stop(first), "node-a shuts down cleanly on SIGTERM")
        }

        @Test(.timeLimit(.minutes(1)))
        func relayOptionsSayWhatIsWrongWithThem() async throws {
            let region = try await Region()
            defer { region.scratch.remove() }
            let base = region.arguments + ["--data", region.scratch.file("node-x")]
            let badListen = try await runCLI(base + ["--relay-listen", "nowhere"])
            #expect(badListen.status != 0 && badListen.stderr.contains("--relay-listen 'nowhere' is not host:port."), "\(badListen.stderr)")
            let badHost = try await runCLI(base + ["--advertise", "0.0.0.0"])
            #expect(badHost.status != 0 && badHost.stderr.contains("is not a host the region's other nodes can reach"), "\(badHost.stderr)")
            // A region on SQLite has one node: nothing to relay.
            let sqlite = region.scratch.file("sqlite.yaml")
            try clusterYAML(regions: ["solo"], ports: [try LocalProcesses.freePort(), try LocalProcesses.freePort()], keyspaces: Self.keyspaces)
                .write(toFile: sqlite, atomically: true, encoding: .utf8)
            let onSQLite = try await runCLI(["node", "--config", sqlite, "--region", "solo", "--data", region.scratch.file("node-y"), "--advertise", "10.0.0.1"])
            #expect(onSQLite.status != 0 && onSQLite.stderr.contains("--advertise is for regions on PostgreSQL"), "\(onSQLite.stderr)")
        }

        @Test(.timeLimit(.minutes(3)))
        func aStandbyRelaysClientsAndPeersToTheHolderAndSaysSoWhenThereIsNone() async throws {
            let region = try await Region()
            defer { region.scratch.remove() }
            let first = try region.start("node-a")
            defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: first, timeoutSeconds: 60))
            let second = try region.start("node-b")
            defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
            #expect(try await Self.eventually(seconds: 30) {
                await RegionProbe.json(region.health["node-b"]!, "/health")?["relaying_to"] as? String == "127.0.0.1:\(region.port)"
            }, "node-b does not say it relays to node-a: \(LocalCluster.tail(region.log("node-b"), lines: 20))")

            // Through node-b: a write, its read, and the holder's readiness.
            let relayed = try await HTTPConnection.connect(host: "127.0.0.1", port: region.relay["node-b"]!.client.port)
            let logs = { "node-a: \(LocalCluster.tail(region.log("node-a"), lines: 15))\nnode-b: \(LocalCluster.tail(region.log("node-b"), lines: 15))" }
            var relayedWrite: HTTPResult?
            var failure = ""
            do { relayedWrite = try await relayed.request("PUT", "/v1/kv/notes/relayed", body: Array("through b".utf8)) } catch { failure = "\(error)" }
            #expect(relayedWrite?.status == 200, "a write through node-b: \(relayedWrite?.status ?? 0) \(relayedWrite?.text ?? failure)\n\(logs())")
            #expect(try await relayed.request("GET", "/v1/kv/notes/relayed").text == "through b")
            #expect(try await relayed.request("GET", "/ready").status == 200)
            await relayed.close()
            // A peer's hello through node-b reaches the holder, which answers it as it answers one sent to it directly
            // (refused: the cluster has no other region to send it).
            let solo = RegionName(validated: "solo")
            let relayedKnock = await PeerProbe.knock(region.relay["node-b"]!.peer, identity: nil, cluster: "live", from: solo, to: solo)
            let directKnock = await PeerProbe.knock(Endpoint(host: "127.0.0.1", port: region.peerPort), identity: nil, cluster: "live", from: solo, to: solo)
            #expect(relayedKnock == directKnock && "\(directKnock)".contains("not a peer of solo"), "relayed: \(relayedKnock); direct: \(directKnock)")

            // The holder killed: until node-b takes the lease over, a client of node-b is told the region is between
            // holders (a typed 503), not left hanging.
            kill(first.processIdentifier, SIGKILL)
            first.waitUntilExit()
            let between = try await HTTPConnection.connect(host: "127.0.0.1", port: region.relay["node-b"]!.client.port)
            let answer = try await between.request("GET", "/v1/kv/notes/relayed")
            #expect(answer.status == 503 && answer.text.contains("region_unavailable"), "\(answer.status) \(answer.text)")
            await between.close()

            // node-b serves the region itself; node-a, started again, stands by and relays to node-b.
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: region.port, process: second, timeoutSeconds: 30))
            let restarted = try region.start("node-a")
            defer { if restarted.isRunning { kill(restarted.processIdentifier, SIGKILL) } }
            #expect(try await Self.eventually(seconds: 30) { await region.role("node-a") == "standby" })
            #expect(try await Self.eventually(seconds: 30) {
                guard let connection = try? await HTTPConnection.connect(host: "127.0.0.1", port: region.relay["node-a"]!.client.port) else { return false }
                defer { Task { await connection.close() } }
                return (try? await connection.request("GET", "/v1/kv/notes/relayed"))?.text == "through b"
            }, "node-a does not relay to node-b: \(LocalCluster.tail(region.log("node-a"), lines: 20))")
            #expect(await LocalProcesses.stop(restarted), "node-a shuts down cleanly on SIGTERM")
            #expect(await LocalProcesses.stop(second), "node-b shuts down cleanly on SIGTERM")
        }
    }
}
