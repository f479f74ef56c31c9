import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness
import MeridianSecurity

extension Bench {
    /// `meridian bench security`: what TLS and token checks cost, measured side by side in one run.
    struct Security: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "security",
            abstract: "The cost of TLS and token checks: the same cluster plain and secure, side by side, and the time a revocation takes to reach every region.",
            discussion: """
                Starts the three-region demo twice, plain and then as `meridian up --secure` runs it (HTTPS with tokens on the \
                client API, mutual TLS on every peer stream), and measures each the same way: local PUT and GET throughput in \
                us-east, majority write latency from us-east, async replication lag us-east -> eu-west. In the secure cluster it \
                then revokes tokens at us-east and times how long each region takes to refuse them. Build with -c release.
                """)

        @Option(help: "Multiply every emulated WAN delay (1 = real scale).") var latencyScale: Double = 1
        @Option(help: "Concurrent keep-alive connections for the throughput phases.") var connections: Int = 32
        @Option(help: "Seconds per throughput phase.") var seconds: Double = 5
        @Option(help: "Majority writes timed per cluster.") var writes: Int = 200
        @Option(help: "Async writes per second in the lag phase (for 3 s).") var rate: Double = 1000
        @Option(help: "Revocations timed.") var revocations: Int = 5

        func validate() throws {
            guard (0.1...1).contains(latencyScale) else { throw ValidationError("--latency-scale is 0.1 to 1.") }
            guard (1...256).contains(connections), seconds > 0, seconds <= 120 else { throw ValidationError("--connections 1 to 256, --seconds up to 120.") }
            guard (10...10_000).contains(writes), rate > 0, rate <= 10_000, (1...50).contains(revocations) else {
                throw ValidationError("--writes 10 to 10000, --rate up to 10000, --revocations 1 to 50.")
            }
        }

        struct Figures {
            var put = 0.0, get = 0.0, majorityP50 = 0.0, majorityP99 = 0.0, lagP50 = 0, lagP99 = 0
        }

        func run() async throws {
            say("meridian bench security: latency scale \(latencyScale), \(connections) connections x \(seconds) s per throughput phase, \(writes) majority writes, \(Int(rate)) async writes/s for 3 s")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load generator on the same machine\n")
            let plainCredentials = ClientCredentials.process
            var plain = Figures(), secure = Figures()
            var revocationMs: [String: [Double]] = [:]
            var heartbeatMs = 0, oneWayMs: [String: Double] = [:]
            for mode in ["plain", "secure"] {
                let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-security-\(UUID().uuidString)").path
                var yaml = try BenchCluster.yaml()
                var issuer: TokenIssuer?
                if mode == "secure" {
                    let setup: SecureSetup
                    let signing: TokenIssuer
                    do throws(MeridianError) {
                        setup = try await SecureSetup.prepare(directory: "\(directory)/secure", yaml: yaml)
                        signing = try TokenIssuer.load(path: "\(directory)/secure/signing.key", keyID: "up-1", auth: nil)
                    } catch {
                        throw CLIFailure(error.message)
                    }
                    yaml += setup.sections
                    issuer = signing
                    ClientCredentials.process = ClientCredentials(token: setup.adminToken, tls: try ClientTLS(caPath: setup.caPath))
                } else {
                    ClientCredentials.process = plainCredentials
                }
                say("\(mode): starting the cluster in \(directory)")
                try await whileStarted(try BenchCluster(directory: directory, latencyScale: latencyScale, yaml: yaml),
                                       start: { try await $0.start() }, stop: { cluster in
                                           await cluster.stop()
                                           try? FileManager.default.removeItem(atPath: directory)
                                       }) { cluster in
                    let figures = try await measure(cluster)
                    if mode == "plain" { plain = figures } else { secure = figures }
                    heartbeatMs = cluster.config.limits.heartbeatIntervalMs
                    if let issuer {
                        revocationMs = try await timeRevocations(cluster, issuer: issuer)
                        for region in cluster.config.regions.map(\.name) {
                            oneWayMs[region.rawValue] = cluster.rttMs(RegionName(validated: "us-east"), region) / 2 * latencyScale
                        }
                    }
                }
            }
            ClientCredentials.process = plainCredentials

            say("\nCOST OF TLS AND TOKENS (same machine, same run; plain first, then secure)")
            say("MEASURE                                PLAIN     SECURE    CHANGE   GOAL                MET")
            func row(_ name: String, _ a: Double, _ b: Double, _ change: String, _ goal: String, _ met: Bool) {
                say(name.padding(toLength: 37, withPad: " ", startingAt: 0) + String(format: "%8.1f  %9.1f  %8@   ", a, b, change)
                    + goal.padding(toLength: 20, withPad: " ", startingAt: 0) + (met ? "yes" : "NO"))
            }
            let putChange = (secure.put / plain.put - 1) * 100, getChange = (secure.get / plain.get - 1) * 100
            row("local PUT, requests/s (us-east)", plain.put, secure.put, String(format: "%+.1f%%", putChange), "within 10%", putChange >= -10)
            row("local GET, requests/s (us-east)", plain.get, secure.get, String(format: "%+.1f%%", getChange), "within 10%", getChange >= -10)
            let majority = secure.majorityP50 - plain.majorityP50
            row("majority write p50, ms (us-east)", plain.majorityP50, secure.majorityP50, String(format: "%+.2f", majority), "within 1 ms", majority <= 1)
            row("majority write p99, ms (us-east)", plain.majorityP99, secure.majorityP99, String(format: "%+.2f", secure.majorityP99 - plain.majorityP99), "-", true)
            let lag = Double(secure.lagP50 - plain.lagP50)
            row("async lag p50, ms (us-east->eu-west)", Double(plain.lagP50), Double(secure.lagP50), String(format: "%+.0f", lag), "within 1 ms", lag <= 1)
            row("async lag p99, ms (us-east->eu-west)", Double(plain.lagP99), Double(secure.lagP99), String(format: "%+.0f", Double(secure.lagP99 - plain.lagP99)), "-", true)

            say("\nREVOCATION (revoked at us-east; time until each region refuses the token, \(revocations) revocations)")
            say("REGION          ONE-WAY ms  + HEARTBEAT ms   p50 ms   max ms   MET (max <= one-way + heartbeat)")
            for region in ["us-east", "eu-west", "ap-southeast"] {
                let times = (revocationMs[region] ?? []).sorted()
                guard !times.isEmpty else { continue }
                let bound = (oneWayMs[region] ?? 0) + Double(heartbeatMs)
                say(region.padding(toLength: 16, withPad: " ", startingAt: 0)
                    + String(format: "%10.1f  %14.1f  %7.1f  %7.1f   %@", oneWayMs[region] ?? 0, bound, times[times.count / 2], times.last!, times.last! <= bound ? "yes" : "NO"))
            }
        }

        private func measure(_ cluster: BenchCluster) async throws -> Figures {
            var figures = Figures()
            let usEast = RegionName(validated: "us-east"), euWest = RegionName(validated: "eu-west")
            let client = cluster.config.region(usEast)!.client
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: 100)
            let pool = try await ConnectionPool.open(client, count: connections)
            let keys = 10_000
            try (try await pool.run(seconds: 600, requestsMax: keys) { connection, index in
                try await connection.request("PUT", "/v1/kv/bench/k\(index)", body: value)
            }).requireSuccess("preload")
            let put = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("PUT", "/v1/kv/bench/k\(index % keys)", body: value)
            }
            try put.requireSuccess("PUT")
            let get = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("GET", "/v1/kv/bench/k\(index % keys)", headers: [("Meridian-Consistency", "eventual")])
            }
            try get.requireSuccess("GET")
            await pool.close()
            figures.put = put.throughput
            figures.get = get.throughput

            let writers = try await ConnectionPool.open(client, count: 4)
            let majority = try await writers.run(seconds: 600, requestsMax: writes) { connection, index in
                try await connection.request("PUT", "/v1/kv/ledger/m\(index)", body: value)
            }
            await writers.close()
            try majority.requireSuccess("majority writes")
            figures.majorityP50 = Double(majority.histogram.valueAtPercentile(50)) / 1000
            figures.majorityP99 = Double(majority.histogram.valueAtPercentile(99)) / 1000

            let lagPool = try await ConnectionPool.open(client, count: 16)
            let count = Int(rate * 3)
            let lagged = try await lagPool.run(seconds: 10, requestsMax: count, ratePerSecond: rate) { connection, index in
                try await connection.request("PUT", "/v1/kv/bench/lag-\(index)", body: value)
            }
            await lagPool.close()
            try lagged.requireSuccess("async writes")
            try await cluster.waitCaughtUp(origin: usEast, entries: UInt64(keys + count))
            let lag = try await cluster.applyLag(at: euWest, from: usEast)
            figures.lagP50 = lag.p50
            figures.lagP99 = lag.p99
            return figures
        }

        /// Revokes fresh tokens at us-east and polls every region with each until it refuses it (bounded).
        private func timeRevocations(_ cluster: BenchCluster, issuer: TokenIssuer) async throws -> [String: [Double]] {
            var times: [String: [Double]] = [:]
            let regions = cluster.config.regions.map(\.name)
            var connections: [RegionName: HTTPConnection] = [:]
            for region in regions { connections[region] = try await cluster.connect(region) }
            let opened = Array(connections.values)
            defer { Task { for connection in opened { await connection.close() } } }
            for round in 0..<revocations {
                let issued: IssuedToken
                do throws(MeridianError) {
                    issued = try await issuer.issue(cluster: cluster.config.name, principal: "victim-\(round)",
                                                    scope: AccessScope(keyspaces: ["bench"], operations: [.read]), ttlSeconds: 3600,
                                                    nowMs: UInt64(Date().timeIntervalSince1970 * 1000))
                } catch {
                    throw CLIFailure(error.message)
                }
                for region in regions {
                    let accepted = try await connections[region]!.request("GET", "/v1/kv/bench/k1", headers: [("Authorization", "Bearer \(issued.token)")])
                    guard accepted.status == 200 else { throw BenchFailure("\(region) refused a fresh token: \(accepted.text)") }
                }
                let started = ContinuousClock.now
                let revoked = try await connections[RegionName(validated: "us-east")]!.request(
                    "POST", "/v1/admin/tokens/revoke", headers: [("Content-Type", "application/json")], body: Array(#"{"id":"\#(issued.id)"}"#.utf8))
                guard revoked.status == 200 else { throw BenchFailure("the revocation was refused: \(revoked.text)") }
                try await withThrowingTaskGroup(of: (RegionName, Double).self) { group in
                    for region in regions {
                        let connection = connections[region]!
                        group.addTask {
                            let deadline = started + .seconds(30)
                            while ContinuousClock.now < deadline {
                                let answer = try await connection.request("GET", "/v1/kv/bench/k1", headers: [("Authorization", "Bearer \(issued.token)")])
                                if answer.status == 401 {
                                    let elapsed = ContinuousClock.now - started
                                    return (region, Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000)
                                }
                            }
                            throw BenchFailure("\(region) still accepted a revoked token after 30 s")
                        }
                    }
                    for try await (region, ms) in group { times[region.rawValue, default: []].append(ms) }
                }
            }
            return times
        }
    }
}
