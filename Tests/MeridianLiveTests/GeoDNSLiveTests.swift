// GeoDNS with the real PowerDNS (Debian's pdns-server and pdns-backend-remote, started by deploy/powerdns/run.sh)
// asking the gateway: `dig +subnet=` from a European, an American and an Asian prefix gets that region's address
// with the prefix's scope; after a region is killed the answer moves to the next region within 5 s, and moves back
// once it returns and is re-admitted.
import Foundation
import MeridianCore
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct GeoDNSLiveTests {
        static let zone = "geo.meridian.test"

        /// The prefix table: documentation prefixes standing for Germany, Japan and the US.
        static let prefixes = """
            network,country_iso_code
            198.51.100.0/24,DE
            203.0.113.0/24,JP
            192.0.2.0/24,US
            """

        static func routing(_ scratch: Scratch) throws -> String {
            try prefixes.write(toFile: scratch.file("prefixes.csv"), atomically: true, encoding: .utf8)
            return """
                routing:
                  gateway: 127.0.0.1:\(try LocalProcesses.freePort())
                  ip_prefixes: \(scratch.file("prefixes.csv"))
                  country_regions: { DE: [eu-west, us-east, ap-southeast], JP: [ap-southeast, eu-west, us-east], US: [us-east, eu-west, ap-southeast], "*": [us-east] }
                  dns:
                    zone: \(zone)
                    names: [api, "@"]
                    ttl_s: 1
                    addresses: { us-east: 127.0.0.1, eu-west: 127.0.0.2, ap-southeast: 127.0.0.3 }

                """
        }

        /// PowerDNS through the repository's own script, on a free port; stopped with the test.
        final class PowerDNS {
            let process = Process()
            let port: Int
            let log: String

            init(gateway: Endpoint, directory: String) throws {
                port = try LocalProcesses.freePort()
                log = (directory as NSString).appendingPathComponent("pdns.log")
                let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                    .appendingPathComponent("deploy/powerdns/run.sh").path
                process.executableURL = URL(fileURLWithPath: "/bin/bash")
                process.arguments = [script, "--gateway", gateway.description, "--port", String(port), "--dir", (directory as NSString).appendingPathComponent("pdns")]
                FileManager.default.createFile(atPath: log, contents: nil)
                let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
                process.standardOutput = handle
                process.standardError = handle
                try process.run()
            }

            /// `dig` through this PowerDNS: the answer's addresses and the ECS option it echoed.
            func dig(_ name: String, subnet: String) async throws -> (addresses: [String], clientSubnet: String?, output: String) {
                let result = try await runTool("/usr/bin/dig", ["@127.0.0.1", "-p", String(port), name, "A", "+subnet=\(subnet)", "+norec", "+time=2", "+tries=1"])
                let lines = result.split(separator: "\n")
                let addresses = lines.filter { !$0.hasPrefix(";") && $0.contains("\tA\t") }.compactMap { $0.split(separator: "\t").last.map(String.init) }
                let subnetLine = lines.first { $0.contains("CLIENT-SUBNET:") }
                return (addresses, subnetLine.map { $0.components(separatedBy: "CLIENT-SUBNET:").last!.trimmingCharacters(in: .whitespaces) }, result)
            }

            /// SIGKILL (the script execs pdns_server, so this is PowerDNS itself): a child of the test runner may
            /// inherit a mask that blocks SIGTERM.
            func stop() {
                kill(process.processIdentifier, SIGKILL)
                let deadline = Date().addingTimeInterval(5)
                while process.isRunning && Date() < deadline { usleep(20_000) }
            }
        }

        static func runTool(_ path: String, _ arguments: [String]) async throws -> String {
            let result = try await runProgram(path, arguments, timeoutSeconds: 10)
            return result.stdout + result.stderr
        }

        @Test(.timeLimit(.minutes(3)), .enabled(if: FileManager.default.fileExists(atPath: "/usr/sbin/pdns_server") || ProcessInfo.processInfo.environment["CI"] != nil))
        func digGetsTheNearestHealthyRegionAndTheAnswerFollowsHealth() async throws {
            let scratch = try Scratch()
            try await withLiveCluster(keyspaces: "  - { name: profiles, topology: multi-leader, conflict: lww }\n", extraYAML: try Self.routing(scratch), gateway: true) { cluster in
                try await GatewayLiveTests.waitAllRoutable(cluster)
                let pdns = try PowerDNS(gateway: cluster.local.gatewayEndpoint, directory: cluster.scratch.path)
                defer { pdns.stop() }
                let name = "api.\(Self.zone)"
                // PowerDNS is up once it answers the zone's SOA.
                let soa = try await eventually(timeoutSeconds: 10, every: .milliseconds(100), {
                    try await Self.runTool("/usr/bin/dig", ["@127.0.0.1", "-p", String(pdns.port), Self.zone, "SOA", "+short", "+time=1", "+tries=1"])
                }, until: { $0.contains("hostmaster") })
                #expect(soa.contains("ns1.\(Self.zone). hostmaster.\(Self.zone). 1"), "no SOA from PowerDNS: \(soa)\n\((try? String(contentsOfFile: pdns.log, encoding: .utf8)) ?? "")")
                for (subnet, address) in [("198.51.100.0/24", "127.0.0.2"), ("203.0.113.0/24", "127.0.0.3"), ("192.0.2.0/24", "127.0.0.1")] {
                    let answer = try await pdns.dig(name, subnet: subnet)
                    #expect(answer.addresses == [address], "\(subnet): \(answer.output)")
                    #expect(answer.clientSubnet == "\(subnet)/24", "the scope is the prefix's: \(answer.output)")
                }
                // A subnet narrower than the prefix gets the prefix's length as its scope; an unknown one scope 0.
                #expect(try await pdns.dig(name, subnet: "198.51.100.7/32").clientSubnet == "198.51.100.7/32/24")
                let unknown = try await pdns.dig(name, subnet: "10.9.8.0/24")
                #expect(unknown.addresses == ["127.0.0.1"] && unknown.clientSubnet == "10.9.8.0/24/0", "\(unknown.output)")

                await cluster.kill9("eu-west")
                let killed = ContinuousClock.now
                let moved = try await eventually(timeoutSeconds: 10, every: .milliseconds(100), { try await pdns.dig(name, subnet: "198.51.100.0/24") },
                                                 until: { $0.addresses == ["127.0.0.1"] })
                let took = ContinuousClock.now - killed
                #expect(moved.addresses == ["127.0.0.1"], "the European answer did not move to us-east: \(moved.output)")
                #expect(took < .seconds(5), "the answer changed \(took) after the kill")

                try await cluster.restartNode("eu-west")
                let back = try await eventually(timeoutSeconds: 20, every: .milliseconds(100), { try await pdns.dig(name, subnet: "198.51.100.0/24") },
                                                until: { $0.addresses == ["127.0.0.2"] })
                #expect(back.addresses == ["127.0.0.2"], "the European answer did not come back to eu-west: \(back.output)")
                let hits = try await Self.runTool("/usr/bin/pdns_control", ["--socket-dir=\(cluster.scratch.file("pdns"))", "show", "packetcache-hit"])
                #expect(hits.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "PowerDNS answered from its cache: \(hits)")
            }
            scratch.remove()
        }
    }
}
