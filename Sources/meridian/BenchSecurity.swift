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
            guard (1...9).contains(rounds) else { throw ValidationError("--rounds is 1 to 9.") }
            guard (10...10_000).contains(writes), rate > 0, rate <= 10_000, (1...50).contains(revocations) else {
                throw ValidationError("--writes 10 to 10000, --rate up to 10000, --revocations 1 to 50.")
            }
        }

        @Option(help: "GETs per second in the fixed-rate phase (both clusters must sustain it).") var fixedRate: Double = 2000
        @Option(help: "Rounds of the three clusters (plain, tokens, secure); each figure is the median over rounds.") var rounds: Int = 1

        struct Figures {
            var put = 0.0, get = 0.0, majorityP50 = 0.0, majorityP99 = 0.0, lagP50 = 0, lagP99 = 0
            /// The us-east node's CPU time per request (user + system), in µs: what the node spent, not the load generator.
            var putCPU = 0.0, getCPU = 0.0
            /// The same, at a fixed rate of GETs both clusters sustain: a like-for-like cost, since a busier node
            /// batches more requests per wake-up.
            var fixedGetCPU = 0.0

            /// The median of each figure over rounds.
            static func median(_ rounds: [Figures]) -> Figures {
                func mid<T: Comparable>(_ values: [T]) -> T { values.sorted()[values.count / 2] }
                return Figures(put: mid(rounds.map(\.put)), get: mid(rounds.map(\.get)), majorityP50: mid(rounds.map(\.majorityP50)),
                               majorityP99: mid(rounds.map(\.majorityP99)), lagP50: mid(rounds.map(\.lagP50)), lagP99: mid(rounds.map(\.lagP99)),
                               putCPU: mid(rounds.map(\.putCPU)), getCPU: mid(rounds.map(\.getCPU)), fixedGetCPU: mid(rounds.map(\.fixedGetCPU)))
            }
        }

        /// A process's CPU time so far (user + system), in seconds, from /proc.
        static func cpuSeconds(_ pid: Int32) -> Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return 0 }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // After the command: state is field 3, utime 14 and stime 15 (1-based, over the whole line).
            guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
            return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
        }

        func run() async throws {
            say("meridian bench security: latency scale \(latencyScale), \(connections) connections x \(seconds) s per throughput phase, \(writes) majority writes, \(Int(rate)) async writes/s for 3 s")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load generator on the same machine\n")
            let plainCredentials = ClientCredentials.process
            var plainRounds: [Figures] = [], tokenRounds: [Figures] = [], secureRounds: [Figures] = []
            var revocationMs: [String: [Double]] = [:]
            var heartbeatMs = 0, oneWayMs: [String: Double] = [:]
            // tokens: authentication on, TLS off (to tell the two costs apart; never a deployment).
            for (round, mode) in (0..<rounds).flatMap({ round in ["plain", "tokens", "secure"].map { (round, $0) } }) {
                let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-security-\(UUID().uuidString)").path
                var yaml = try BenchCluster.yaml()
                var issuer: TokenIssuer?
                if mode != "plain" {
                    let setup: SecureSetup
                    let signing: TokenIssuer
                    do throws(MeridianError) {
                        setup = try await SecureSetup.prepare(directory: "\(directory)/secure", yaml: yaml)
                        signing = try TokenIssuer.load(path: "\(directory)/secure/signing.key", keyID: "up-1", auth: nil)
                    } catch {
                        throw CLIFailure(error.message)
                    }
                    yaml += mode == "secure" ? setup.sections : setup.authSections
                    issuer = mode == "secure" ? signing : nil
                    ClientCredentials.process = ClientCredentials(token: setup.adminToken, tls: mode == "secure" ? try ClientTLS(caPath: setup.caPath) : nil)
                } else {
                    ClientCredentials.process = plainCredentials
                }
                say("round \(round + 1), \(mode): starting the cluster in \(directory)")
                try await whileStarted(try BenchCluster(directory: directory, latencyScale: latencyScale, yaml: yaml),
                                       start: { try await $0.start() }, stop: { cluster in
                                           await cluster.stop()
                                           try? FileManager.default.removeItem(atPath: directory)
                                       }) { cluster in
                    let figures = try await measure(cluster)
                    switch mode {
                    case "plain": plainRounds.append(figures)
                    case "tokens": tokenRounds.append(figures)
                    default: secureRounds.append(figures)
                    }
                    heartbeatMs = cluster.config.limits.heartbeatIntervalMs
                    if let issuer, round == 0 {
                        revocationMs = try await timeRevocations(cluster, issuer: issuer)
                        for region in cluster.config.regions.map(\.name) {
                            oneWayMs[region.rawValue] = cluster.rttMs(RegionName(validated: "us-east"), region) / 2 * latencyScale
                        }
                    }
                }
            }
            ClientCredentials.process = plainCredentials
            let plain = Figures.median(plainRounds), tokens = Figures.median(tokenRounds), secure = Figures.median(secureRounds)

            say("\nCOST OF TLS AND TOKENS (same machine, same run: plain, then tokens only, then secure = tokens + TLS)")
            say("MEASURE                                PLAIN     TOKENS     SECURE    SECURE vs PLAIN   GOAL          MET")
            func row(_ name: String, _ a: Double, _ b: Double, _ c: Double, _ change: String, _ goal: String, _ met: Bool) {
                say(name.padding(toLength: 37, withPad: " ", startingAt: 0) + String(format: "%8.1f  %9.1f  %9.1f    %10@       ", a, b, c, change)
                    + goal.padding(toLength: 14, withPad: " ", startingAt: 0) + (met ? "yes" : "NO"))
            }
            let putChange = (secure.put / plain.put - 1) * 100, getChange = (secure.get / plain.get - 1) * 100
            row("local PUT, requests/s (us-east)", plain.put, tokens.put, secure.put, String(format: "%+.1f%%", putChange), "within 10%", putChange >= -10)
            row("local GET, requests/s (us-east)", plain.get, tokens.get, secure.get, String(format: "%+.1f%%", getChange), "within 10%", getChange >= -10)
            let putCPU = (secure.putCPU / plain.putCPU - 1) * 100, getCPU = (secure.getCPU / plain.getCPU - 1) * 100
            row("us-east CPU per PUT, µs", plain.putCPU, tokens.putCPU, secure.putCPU, String(format: "%+.1f%%", putCPU), "-", true)
            row("us-east CPU per GET, µs", plain.getCPU, tokens.getCPU, secure.getCPU, String(format: "%+.1f%%", getCPU), "-", true)
            row("  the same at \(Int(fixedRate)) GET/s, µs", plain.fixedGetCPU, tokens.fixedGetCPU, secure.fixedGetCPU,
                String(format: "%+.1f", secure.fixedGetCPU - plain.fixedGetCPU), "-", true)
            let majority = secure.majorityP50 - plain.majorityP50
            row("majority write p50, ms (us-east)", plain.majorityP50, tokens.majorityP50, secure.majorityP50, String(format: "%+.2f", majority), "within 1 ms", majority <= 1)
            row("majority write p99, ms (us-east)", plain.majorityP99, tokens.majorityP99, secure.majorityP99, String(format: "%+.2f", secure.majorityP99 - plain.majorityP99), "-", true)
            let lag = Double(secure.lagP50 - plain.lagP50)
            row("async lag p50, ms (us-east->eu-west)", Double(plain.lagP50), Double(tokens.lagP50), Double(secure.lagP50), String(format: "%+.0f", lag), "within 1 ms", lag <= 1)
            row("async lag p99, ms (us-east->eu-west)", Double(plain.lagP99), Double(tokens.lagP99), Double(secure.lagP99), String(format: "%+.0f", Double(secure.lagP99 - plain.lagP99)), "-", true)

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
            let pid = cluster.local.pid(usEast) ?? 0
            var cpu = Self.cpuSeconds(pid)
            let put = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("PUT", "/v1/kv/bench/k\(index % keys)", body: value)
            }
            try put.requireSuccess("PUT")
            figures.putCPU = (Self.cpuSeconds(pid) - cpu) / Double(max(put.requests, 1)) * 1e6
            cpu = Self.cpuSeconds(pid)
            let get = try await pool.run(seconds: seconds) { connection, index in
                try await connection.request("GET", "/v1/kv/bench/k\(index % keys)", headers: [("Meridian-Consistency", "eventual")])
            }
            try get.requireSuccess("GET")
            figures.getCPU = (Self.cpuSeconds(pid) - cpu) / Double(max(get.requests, 1)) * 1e6
            cpu = Self.cpuSeconds(pid)
            let fixed = try await pool.run(seconds: seconds, ratePerSecond: fixedRate) { connection, index in
                try await connection.request("GET", "/v1/kv/bench/k\(index % keys)", headers: [("Meridian-Consistency", "eventual")])
            }
            try fixed.requireSuccess("GET at a fixed rate")
            figures.fixedGetCPU = (Self.cpuSeconds(pid) - cpu) / Double(max(fixed.requests, 1)) * 1e6
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
