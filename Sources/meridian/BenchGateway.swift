import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness

extension Bench {
    /// `meridian bench gateway`: what the gateway costs against calling a region directly, how fast it stops routing
    /// to a dead region, and whether latency jitter makes it exclude healthy ones; side by side in one run.
    struct GatewayBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gateway",
            abstract: "Gateway overhead against direct calls, the time to route around a killed region, and exclusions under latency jitter.",
            discussion: """
                Starts the three-region demo with its gateway. Overhead: point GETs to us-east, directly and through the gateway \
                (as a client in the US), one connection at a time for latency and --connections for throughput, interleaved in \
                rounds. Failover: kills eu-west while a client in Germany reads through the gateway every 10 ms; reports failed \
                reads, the time until the gateway stops routing there, and until the cluster marks it down. Jitter: sets ±N% \
                jitter on every WAN link for --jitter-seconds and counts every region any node marked suspect or down, and every \
                ejection by the gateway. Build with -c release.
                """)

        @Option(help: "Multiply every emulated WAN delay (1 = real scale).") var latencyScale: Double = 1
        @Option(help: "Concurrent keep-alive connections for the throughput phases.") var connections: Int = 32
        @Option(help: "Seconds per throughput phase.") var seconds: Double = 5
        @Option(help: "Sequential GETs per latency phase.") var requests: Int = 2000
        @Option(help: "Rounds of direct and gateway phases, interleaved; each figure is the median over rounds.") var rounds: Int = 3
        @Option(help: "Seconds of WAN jitter in the exclusion phase (0 skips it).") var jitterSeconds: Double = 60
        @Option(help: "Jitter, in percent of each link's delay.") var jitterPercent: Double = 50
        @Option(help: "HAProxy (Debian's haproxy) to measure beside the gateway, in front of us-east alone, as the floor of an HTTP proxy on these cores; none to skip.")
        var haproxy: String = "/usr/sbin/haproxy"

        func validate() throws {
            guard (0.1...1).contains(latencyScale) else { throw ValidationError("--latency-scale is 0.1 to 1.") }
            guard (1...256).contains(connections), seconds > 0, seconds <= 120, (100...100_000).contains(requests), (1...9).contains(rounds) else {
                throw ValidationError("--connections 1 to 256, --seconds up to 120, --requests 100 to 100000, --rounds 1 to 9.")
            }
            guard (0...3_600).contains(jitterSeconds), (0...100).contains(jitterPercent) else { throw ValidationError("--jitter-seconds 0 to 3600, --jitter-percent 0 to 100.") }
        }

        func run() async throws {
            say("meridian bench gateway: latency scale \(latencyScale), \(rounds) rounds of \(requests) sequential GETs and \(connections) connections x \(seconds) s, jitter ±\(Int(jitterPercent))% for \(Int(jitterSeconds)) s")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, load generator, gateway and regions on the same machine\n")
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-bench-gateway-\(UUID().uuidString)").path
            var options = LocalCluster.Options(directory: directory, latencyScale: latencyScale, logLevel: "warning")
            options.gateway = true
            let local = try LocalCluster(yaml: try BenchCluster.yaml(), options: options)
            try await whileStarted(local, start: { local in
                try await local.start()
                let pending = await local.waitReady(timeoutSeconds: 30)
                guard pending.isEmpty else { throw BenchFailure("the streams or clocks of \(pending) were not ready within 30 s; see the logs in \(directory)") }
            }, stop: { local in
                await local.stop()
                try? FileManager.default.removeItem(atPath: directory)
            }) { local in
                try await measure(local)
            }
        }

        private func measure(_ local: LocalCluster) async throws {
            let usEast = RegionName(validated: "us-east")
            let direct = local.endpoint(usEast), gateway = local.gatewayEndpoint
            try await waitRoutable(gateway)
            let value = [UInt8](repeating: UInt8(ascii: "x"), count: 100)
            let keys = 1_000
            let preload = try await ConnectionPool.open(direct, count: 16)
            try (try await preload.run(seconds: 600, requestsMax: keys) { connection, index in
                try await connection.request("PUT", "/v1/kv/bench/k\(index)", body: value)
            }).requireSuccess("preload")
            await preload.close()
            let us = [("CF-IPCountry", "US"), ("Meridian-Consistency", "eventual")]

            var latency: [String: [(p50: Double, p99: Double)]] = [:], throughput: [String: [Double]] = [:]
            // CPU per request at peak (user + system, from /proc): the proxy's (gateway or HAProxy), and the serving node's.
            var proxyCPU: [String: [Double]] = [:], nodeCPU: [String: [Double]] = [:]
            let nodePid = local.pid(usEast) ?? 0
            var targets = [("direct", direct, Int32(0)), ("gateway", gateway, local.gatewayProcess?.processIdentifier ?? 0)]
            let peer = try await startHAProxy(in: local.directory, upstream: direct)
            defer { if let peer { kill(peer.process.processIdentifier, SIGKILL) } }
            if let peer { targets.append(("haproxy", peer.endpoint, peer.process.processIdentifier)) }
            for round in 0..<rounds {
                for (name, target, proxyPid) in targets {
                    let single = try await ConnectionPool.open(target, count: 1)
                    let sequential = try await single.run(seconds: 600, requestsMax: requests) { connection, index in
                        try await connection.request("GET", "/v1/kv/bench/k\(index % keys)", headers: us)
                    }
                    await single.close()
                    try sequential.requireSuccess("\(name) sequential GETs")
                    latency[name, default: []].append((Double(sequential.histogram.valueAtPercentile(50)) / 1000, Double(sequential.histogram.valueAtPercentile(99)) / 1000))
                    let pool = try await ConnectionPool.open(target, count: connections)
                    let (proxyBefore, nodeBefore) = (Security.cpuSeconds(proxyPid), Security.cpuSeconds(nodePid))
                    let peak = try await pool.run(seconds: seconds) { connection, index in
                        try await connection.request("GET", "/v1/kv/bench/k\(index % keys)", headers: us)
                    }
                    await pool.close()
                    try peak.requireSuccess("\(name) GETs at peak")
                    throughput[name, default: []].append(peak.throughput)
                    let requests = Double(max(peak.requests, 1))
                    nodeCPU[name, default: []].append((Security.cpuSeconds(nodePid) - nodeBefore) / requests * 1e6)
                    if proxyPid > 0 { proxyCPU[name, default: []].append((Security.cpuSeconds(proxyPid) - proxyBefore) / requests * 1e6) }
                }
                say("round \(round + 1): " + targets.map { name, _, _ in
                    "\(name) p50 \(String(format: "%.3f", latency[name]!.last!.p50)) ms, \(Int(throughput[name]!.last!))/s"
                }.joined(separator: "; "))
            }
            func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
            let directP50 = median(latency["direct"]!.map(\.p50)), gatewayP50 = median(latency["gateway"]!.map(\.p50))
            let directP99 = median(latency["direct"]!.map(\.p99)), gatewayP99 = median(latency["gateway"]!.map(\.p99))
            let directPeak = median(throughput["direct"]!), gatewayPeak = median(throughput["gateway"]!)

            say("\nGATEWAY OVERHEAD (point GETs served by us-east; median of \(rounds) interleaved rounds)")
            say("MEASURE                          DIRECT    GATEWAY    DIFFERENCE   GOAL                MET")
            func row(_ name: String, _ a: Double, _ b: Double, _ difference: String, _ goal: String, _ met: Bool?) {
                say(name.padding(toLength: 31, withPad: " ", startingAt: 0) + String(format: "%8.3f  %9.3f    ", a, b)
                    + difference.padding(toLength: 13, withPad: " ", startingAt: 0) + goal.padding(toLength: 20, withPad: " ", startingAt: 0)
                    + (met.map { $0 ? "yes" : "NO" } ?? "-"))
            }
            row("GET p50, ms (one connection)", directP50, gatewayP50, String(format: "%+.3f ms", gatewayP50 - directP50), "within 0.3 ms", gatewayP50 - directP50 <= 0.3)
            row("GET p99, ms (one connection)", directP99, gatewayP99, String(format: "%+.3f ms", gatewayP99 - directP99), "-", nil)
            row("GETs/s at peak", directPeak, gatewayPeak, String(format: "%.0f%%", gatewayPeak / directPeak * 100), "at least 80%", gatewayPeak >= 0.8 * directPeak)
            row("us-east CPU per GET, µs", median(nodeCPU["direct"]!), median(nodeCPU["gateway"]!), "-", "-", nil)
            row("gateway CPU per GET, µs", 0, median(proxyCPU["gateway"]!), "-", "-", nil)
            if peer != nil {
                // The floor of any HTTP proxy sharing these cores: HAProxy relaying to us-east alone (no routing).
                let peerP50 = median(latency["haproxy"]!.map(\.p50)), peerPeak = median(throughput["haproxy"]!)
                say("\nHAPROXY IN FRONT OF US-EAST (the same phases, interleaved; no routing, health or headers of its own)")
                say("MEASURE                          DIRECT    HAPROXY    DIFFERENCE")
                say("GET p50, ms (one connection)   " + String(format: "%8.3f  %9.3f    %+.3f ms", directP50, peerP50, peerP50 - directP50))
                say("GETs/s at peak                 " + String(format: "%8.0f  %9.0f    %.0f%%", directPeak, peerPeak, peerPeak / directPeak * 100))
                say("haproxy CPU per GET, µs        " + String(format: "%8.3f  %9.3f", 0.0, median(proxyCPU["haproxy"]!)))
            }

            try await killAndReadmit(local, gateway: gateway)
            if jitterSeconds > 0 { try await jitter(local, gateway: gateway) }
        }

        /// Starts HAProxy in HTTP mode on a free port, relaying to `upstream` over reused keep-alive connections; nil
        /// when `--haproxy none` or the binary is not there.
        private func startHAProxy(in directory: String, upstream: Endpoint) async throws -> (process: Process, endpoint: Endpoint)? {
            guard haproxy != "none", FileManager.default.isExecutableFile(atPath: haproxy) else {
                if haproxy != "none" { say("(no HAProxy at \(haproxy): apt-get install haproxy to measure it beside the gateway)") }
                return nil
            }
            let endpoint = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())
            let config = """
                global
                  maxconn 4096
                defaults
                  mode http
                  timeout connect 2s
                  timeout client 60s
                  timeout server 60s
                  http-reuse always
                frontend meridian
                  bind \(endpoint)
                  default_backend us_east
                backend us_east
                  server us_east \(upstream)

                """
            let path = (directory as NSString).appendingPathComponent("haproxy.cfg")
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            let process = try LocalProcesses.start(haproxy, ["-db", "-f", path], logPath: (directory as NSString).appendingPathComponent("haproxy.log"))
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline {
                if let probe = try? await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: 1) {
                    await probe.close()
                    return (process, endpoint)
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            kill(process.processIdentifier, SIGKILL)
            throw BenchFailure("HAProxy did not listen on \(endpoint) within 5 s; see \(directory)/haproxy.log")
        }

        /// Waits until the gateway routes to every region.
        private func waitRoutable(_ gateway: Endpoint) async throws {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                if let status = await RegionProbe.json(gateway, "/gateway/status"),
                   let regions = status["regions"] as? [[String: Any]], regions.allSatisfy({ $0["routable"] as? Bool == true && $0["stream"] as? String == "live" }) {
                    return
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw BenchFailure("the gateway at \(gateway) did not route to every region within 30 s")
        }

        /// Kills eu-west under reads from Germany; times the gateway's and the cluster's reactions, then its return.
        private func killAndReadmit(_ local: LocalCluster, gateway: Endpoint) async throws {
            let euWest = RegionName(validated: "eu-west"), usEast = RegionName(validated: "us-east")
            let reader = try await HTTPConnection.connect(host: gateway.host, port: gateway.port, credentials: .none)
            defer { Task { await reader.close() } }
            let de = [("CF-IPCountry", "DE"), ("Meridian-Consistency", "eventual")]
            for _ in 0..<50 { _ = try await reader.request("GET", "/v1/kv/bench/k1", headers: de) }
            _ = await local.kill9(euWest)
            let killed = ContinuousClock.now
            var failed = 0, reads = 0
            var lastToDead: Duration = .zero, clusterDown: Duration?, gatewayOut: Duration?
            while ContinuousClock.now - killed < .seconds(5) {
                let read = try await reader.request("GET", "/v1/kv/bench/k1", headers: de)
                reads += 1
                if read.status != 200 { failed += 1 }
                if read.header("Meridian-Routed-To") == "eu-west" { lastToDead = ContinuousClock.now - killed }
                if gatewayOut == nil, let status = await RegionProbe.json(gateway, "/gateway/status"),
                   (status["regions"] as? [[String: Any]])?.first(where: { $0["name"] as? String == "eu-west" })?["routable"] as? Bool == false {
                    gatewayOut = ContinuousClock.now - killed
                }
                if clusterDown == nil, let topology = await RegionProbe.json(local.endpoint(usEast), "/v1/topology"),
                   (topology["regions"] as? [[String: Any]])?.first(where: { $0["name"] as? String == "eu-west" })?["health"] as? String == "down" {
                    clusterDown = ContinuousClock.now - killed
                }
                if clusterDown != nil && gatewayOut != nil && ContinuousClock.now - killed > .seconds(2) { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            func ms(_ duration: Duration?) -> String { duration.map { String(format: "%.0f", Double($0.components.attoseconds) / 1e15 + Double($0.components.seconds) * 1000) } ?? "never" }
            say("\nA REGION KILLED (eu-west, SIGKILL, while a client in Germany reads through the gateway every 10 ms)")
            say("MEASURE                                              MERIDIAN    GOAL       ROUTE 53 DEFAULTS   POWERDNS LUA")
            say("failed reads through the gateway                     \(String(failed).padding(toLength: 12, withPad: " ", startingAt: 0))0          -                   -")
            say("last read sent to eu-west after the kill, ms          \(ms(lastToDead).padding(toLength: 11, withPad: " ", startingAt: 0))-          -                   -")
            say("gateway stops routing to eu-west, ms                 \(ms(gatewayOut).padding(toLength: 12, withPad: " ", startingAt: 0))<= 1000    ~90000              ~4000, flapping")
            say("cluster marks eu-west down (majority agrees), ms     \(ms(clusterDown).padding(toLength: 12, withPad: " ", startingAt: 0))-          -                   -")
            say("(\(reads) reads; every failed read would have been a client-visible error)")

            try local.startNode(euWest)
            try await local.waitHealthy(euWest)
            let back = ContinuousClock.now
            var readmitted: Duration?
            while ContinuousClock.now - back < .seconds(30) {
                let read = try await reader.request("GET", "/v1/kv/bench/k1", headers: de)
                if read.header("Meridian-Routed-To") == "eu-west" { readmitted = ContinuousClock.now - back; break }
                try await Task.sleep(for: .milliseconds(20))
            }
            say("eu-west restarted: served Germany again after \(ms(readmitted)) ms from answering /health (readmit_probes good probes first)")
        }

        /// Jitter on every link: counts every verdict other than up, at any region, and every gateway ejection.
        private func jitter(_ local: LocalCluster, gateway: Endpoint) async throws {
            try await waitRoutable(gateway)
            // Every region's own verdicts settled too (a region re-admitted after the kill counts its probes first).
            let deadline = Date().addingTimeInterval(30)
            for region in local.config.regions {
                while Date() < deadline {
                    if let topology = await RegionProbe.json(region.client, "/v1/topology"),
                       (topology["regions"] as? [[String: Any]])?.allSatisfy({ $0["health"] as? String == "up" }) == true { break }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            try await local.wan("jitter", ["percent": jitterPercent])
            let started = ContinuousClock.now
            var samples = 0, suspect = 0, down = 0, unroutable = 0
            var seen: Set<String> = []
            while ContinuousClock.now - started < .seconds(jitterSeconds) {
                for region in local.config.regions {
                    guard let topology = await RegionProbe.json(region.client, "/v1/topology") else { continue }
                    samples += 1
                    for entry in topology["regions"] as? [[String: Any]] ?? [] {
                        let health = entry["health"] as? String ?? "?"
                        if health == "suspect" { suspect += 1; seen.insert("\(region.name) saw \(entry["name"] ?? "?") suspect") }
                        if health == "down" { down += 1; seen.insert("\(region.name) saw \(entry["name"] ?? "?") down") }
                    }
                }
                if let status = await RegionProbe.json(gateway, "/gateway/status") {
                    unroutable += (status["regions"] as? [[String: Any]] ?? []).filter { $0["routable"] as? Bool == false }.count
                }
                try await Task.sleep(for: .milliseconds(200))
            }
            try await local.wan("jitter", ["percent": 0])
            say("\nJITTER (±\(Int(jitterPercent))% on every WAN link for \(Int(jitterSeconds)) s; every region's topology sampled every 200 ms)")
            say("MEASURE                                   COUNT     GOAL   MET")
            say("samples with a region marked down         \(String(down).padding(toLength: 10, withPad: " ", startingAt: 0))0      \(down == 0 ? "yes" : "NO")")
            say("gateway samples with a region left out    \(String(unroutable).padding(toLength: 10, withPad: " ", startingAt: 0))0      \(unroutable == 0 ? "yes" : "NO")")
            say("samples with a region suspect             \(String(suspect).padding(toLength: 10, withPad: " ", startingAt: 0))-      -")
            say("(\(samples) topology samples\(seen.isEmpty ? "" : "; " + seen.sorted().joined(separator: ", ")))")
        }
    }
}
