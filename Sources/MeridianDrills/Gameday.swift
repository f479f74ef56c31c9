import Foundation
import MeridianCore
import MeridianHarness
import Synchronization

// The game day: a failover drill against a running local cluster (`meridian up`), measured from the client's
// side. A library, so `meridian gameday` and the tests run the same code.

/// One game day's state and steps.
public struct Drill: Sendable {
    public let config: ClusterConfig
    public let policy: KeyspacePolicy
    public let writers: Int
    /// Where the log of a region the drill starts again goes (nil: that region's working directory).
    public let logDirectory: String?
    let runID = String(UUID().uuidString.prefix(8)).lowercased()

    public init(config: ClusterConfig, policy: KeyspacePolicy, writers: Int, logDirectory: String? = nil) {
        self.config = config
        self.policy = policy
        self.writers = writers
        self.logDirectory = logDirectory
    }

    public struct Round: Sendable {
        public let number: Int
        public let killed: String
        public let newLeader: String
        /// Client-side: from the kill until every writer had a write acknowledged again; and per writer.
        public let rtoMs: Double
        public let writerGapsMs: [Double]
        public let acknowledged: Int
        public let lost: Int
        public let keptAside: Int
        public let agreed: Bool
        public let failbackMs: Double?
        public let serverRtoMs: Int?
        public let refusals: String
        /// How far each other region had applied the killed leader's log just before the kill (-1: unknown).
        public let appliedAtKill: [(region: String, sequence: Int)]

        public var line: String {
            let gaps = writerGapsMs.sorted()
            return "round \(number): killed \(killed), \(newLeader) led; RTO \(Int(rtoMs)) ms (writers \(Int(gaps.first ?? 0))–\(Int(gaps.last ?? 0)) ms, "
                + "leader's own view \(serverRtoMs.map { "\($0) ms" } ?? "-")); \(acknowledged) writes acknowledged, \(lost) lost, \(keptAside) kept aside; "
                + "regions agree: \(agreed ? "yes" : "NO"); failback \(failbackMs.map { "after \(Int($0)) ms" } ?? "none"); refused meanwhile: \(refusals); "
                + "\(killed)'s log applied at the kill: \(appliedAtKill.map { "\($0.region) \($0.sequence)" }.joined(separator: ", "))"
        }
    }

    private func status(_ region: RegionConfig) async -> [String: Any]? {
        await RegionProbe.json(region.client, "/v1/status")
    }

    private func term(_ status: [String: Any]?) -> [String: Any] {
        (status?["keyspaces"] as? [[String: Any]])?.first { $0["name"] as? String == policy.name.rawValue } ?? [:]
    }

    /// The region that leads the keyspace now, as the regions report it (polling up to `seconds`).
    private func leader(within seconds: Double) async -> RegionConfig? {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            for region in config.regions where term(await status(region))["role"] as? String == "leader" { return region }
            try? await Task.sleep(for: .milliseconds(100))
        } while Date() < deadline
        return nil
    }

    /// Each writer's outcomes, shared with the drill.
    final class Load: Sendable {
        struct Write: Sendable {
            let key: String
            let value: String
            let acknowledgedAt: ContinuousClock.Instant
            let region: String
        }

        let acknowledged = Mutex<[Write]>([])
        /// Per writer: its latest acknowledged write and the region that took it.
        let lastSuccess = Mutex<[Int: (at: ContinuousClock.Instant, region: String)]>([:])
        let refused = Atomic<Int>(0)
        /// Refusals by error code (or `connection` when the request got no answer).
        let refusals = Mutex<[String: Int]>([:])

        func refusedSummary() -> String {
            let counts = refusals.withLock { $0 }
            return counts.isEmpty ? "none" : counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        }
        let stop = Atomic<Bool>(false)
    }

    /// Runs `writers` writers until `load.stop`, each through a region other than `avoiding`.
    private func startLoad(_ load: Load, round: Int, avoiding leader: RegionName) -> Task<Void, Never> {
        let targets = config.regions.filter { $0.name != leader }
        let keyspace = policy.name.rawValue, runID = runID, writers = writers
        return Task {
            await withTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    let region = targets[writer % targets.count]
                    group.addTask {
                        var connection: HTTPConnection?
                        var index = 0
                        while !load.stop.load(ordering: .relaxed) {
                            if connection == nil {
                                connection = try? await HTTPConnection.connect(host: region.client.host, port: region.client.port, timeoutSeconds: 2)
                                if connection == nil { try? await Task.sleep(for: .milliseconds(50)); continue }
                            }
                            index += 1
                            let key = "gameday-\(runID)-r\(round)-w\(writer)-\(index)", value = "\(index)-\(UUID().uuidString.prefix(8))"
                            do {
                                let result = try await connection!.request("PUT", "/v1/kv/\(keyspace)/\(key)", body: Array(value.utf8))
                                if result.status == 200 {
                                    let answer = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any]
                                    let now = ContinuousClock.now, taker = answer?["region"] as? String ?? ""
                                    load.acknowledged.withLock { $0.append(Load.Write(key: key, value: value, acknowledgedAt: now, region: taker)) }
                                    load.lastSuccess.withLock { $0[writer] = (now, taker) }
                                } else {
                                    load.refused.add(1, ordering: .relaxed)
                                    let error = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any]
                                    let code = (error?["error"] as? [String: Any])?["code"] as? String ?? "http_\(result.status)"
                                    load.refusals.withLock { $0[code, default: 0] += 1 }
                                    try? await Task.sleep(for: .milliseconds(20))
                                }
                            } catch {
                                await connection?.close()
                                connection = nil
                                load.refused.add(1, ordering: .relaxed)
                                load.refusals.withLock { $0["connection", default: 0] += 1 }
                            }
                        }
                        await connection?.close()
                    }
                }
            }
        }
    }

    public func round(_ number: Int, warmupSeconds: Double, downSeconds: Double, settleSeconds: Double) async throws -> Round {
        guard let leader = await leader(within: settleSeconds), let pid = (await status(leader))?["pid"] as? Int32, pid > 1 else {
            throw DrillFailure("No region reports leading \(policy.name); is the cluster up (meridian up)?")
        }
        let (arguments, directory) = try Self.commandLine(of: pid)
        let load = Load()
        let loader = startLoad(load, round: number, avoiding: leader.name)
        try await Task.sleep(for: .seconds(warmupSeconds))
        let appliedAtKill = await applied(of: leader)
        let killedAt = ContinuousClock.now
        guard kill(pid, SIGKILL) == 0 else { throw DrillFailure("cannot kill \(leader.name) (pid \(pid)): errno \(errno)") }
        // Every writer must have a write acknowledged after the kill by another region (answers the killed
        // leader sent just before dying may still arrive after the kill).
        let deadline = killedAt + .seconds(settleSeconds)
        var gaps: [Double] = []
        while ContinuousClock.now < deadline {
            let successes = load.lastSuccess.withLock { $0 }.filter { $0.value.at > killedAt && $0.value.region != leader.name.rawValue }
            if successes.count == writers {
                gaps = successes.values.map { Self.ms($0.at - killedAt) }
                break
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        let rto = gaps.max() ?? Self.ms(ContinuousClock.now - killedAt)
        let newLeader = await self.leader(within: 5)?.name.rawValue ?? "nobody"
        try await Task.sleep(for: .seconds(downSeconds))
        let log = "\(logDirectory ?? directory)/\(leader.name).gameday.log"
        let restarted = try Self.restart(arguments, in: directory, log: log)
        print("  restarted \(leader.name) as pid \(restarted) (log \(log)); `meridian up` stops it on Ctrl-C")
        // Failback, if the keyspace asks for it and the killed region was the preferred one.
        var failbackMs: Double?
        if policy.failover?.failback == true && policy.failover?.order.first == leader.name {
            let started = ContinuousClock.now
            while ContinuousClock.now - started < .seconds(settleSeconds) {
                if term(await status(leader))["role"] as? String == "leader" { failbackMs = Self.ms(ContinuousClock.now - started); break }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        load.stop.store(true, ordering: .relaxed)
        await loader.value
        let writes = load.acknowledged.withLock { $0 }
        let (lost, keptAside) = try await rpo(writes, round: number)
        let agreed = await regionsAgree(within: settleSeconds)
        let serverRto = await serverRTO(epochLeader: newLeader)
        return Round(number: number, killed: leader.name.rawValue, newLeader: newLeader, rtoMs: rto, writerGapsMs: gaps, acknowledged: writes.count,
                     lost: lost, keptAside: keptAside, agreed: agreed, failbackMs: failbackMs, serverRtoMs: serverRto, refusals: load.refusedSummary(), appliedAtKill: appliedAtKill)
    }

    /// How far each other region reports having applied `leader`'s log, read from every region at once: the
    /// election's up-to-date rule lets only a region that holds as much as a majority take over.
    private func applied(of leader: RegionConfig) async -> [(region: String, sequence: Int)] {
        await withTaskGroup(of: (String, Int).self) { group in
            for region in config.regions where region.name != leader.name {
                group.addTask {
                    let peers = (await status(region))?["peers"] as? [[String: Any]] ?? []
                    let inbound = peers.first { $0["region"] as? String == leader.name.rawValue }?["inbound"] as? [String: Any]
                    return (region.name.rawValue, inbound?["applied"] as? Int ?? -1)
                }
            }
            var found: [(region: String, sequence: Int)] = []
            for await item in group { found.append(item) }
            return found.sorted { $0.region < $1.region }
        }
    }

    /// Acknowledged writes the current leader does not hold (read strongly), and writes kept aside anywhere.
    private func rpo(_ writes: [Load.Write], round: Int) async throws -> (lost: Int, keptAside: Int) {
        guard let leader = await leader(within: 10) else { return (writes.count, 0) }
        let connection = try await HTTPConnection.connect(host: leader.client.host, port: leader.client.port, timeoutSeconds: 10)
        var lost = 0
        for write in writes {
            let result = try await connection.request("GET", "/v1/kv/\(policy.name)/\(write.key)")
            if result.status != 200 || result.text != write.value { lost += 1 }
        }
        await connection.close()
        var keptAside = 0
        for region in config.regions {
            guard let connection = try? await HTTPConnection.connect(host: region.client.host, port: region.client.port, timeoutSeconds: 2),
                  let result = try? await connection.request("GET", "/v1/divergence?keyspace=\(policy.name)&limit=1000") else { continue }
            await connection.close()
            let answer = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any]
            keptAside += (answer?["writes"] as? [[String: Any]] ?? []).filter { ($0["key"] as? String)?.hasPrefix("gameday-\(runID)-r\(round)-") == true }.count
        }
        return (lost, keptAside)
    }

    /// Whether every region's Merkle root of the keyspace is the same (polled until it is, bounded).
    private func regionsAgree(within seconds: Double) async -> Bool {
        await RegionProbe.rootsAgree(config.regions.filter { policy.isReplica($0.name) }.map(\.client), keyspace: policy.name.rawValue, within: seconds)
    }

    /// The newest failover the new leader recorded for the keyspace: its own RTO view.
    private func serverRTO(epochLeader: String) async -> Int? {
        guard let region = config.regions.first(where: { $0.name.rawValue == epochLeader }),
              let answer = await RegionProbe.json(region.client, "/v1/failovers") else { return nil }
        let events = answer["failovers"] as? [[String: Any]] ?? []
        return events.last { $0["keyspace"] as? String == policy.name.rawValue && $0["reason"] as? String == "failure" }?["rto_ms"] as? Int
    }

    /// Load under latency jitter, killing nothing: every epoch change is a false failover.
    public func soak(seconds: Double, jitterPercent: Double) async throws {
        let singleLeader = config.keyspaces.filter { $0.topology == .singleLeader }.map(\.name.rawValue)
        func epochs() async -> [String: Int] {
            var result: [String: Int] = [:]
            for region in config.regions {
                for keyspace in (await status(region))?["keyspaces"] as? [[String: Any]] ?? [] where singleLeader.contains(keyspace["name"] as? String ?? "") {
                    let name = keyspace["name"] as? String ?? ""
                    result[name] = max(result[name] ?? 0, keyspace["epoch"] as? Int ?? 0)
                }
            }
            return result
        }
        guard let leader = await leader(within: 10) else { throw DrillFailure("No region reports leading \(policy.name); is the cluster up?") }
        try await setJitter(jitterPercent)
        let before = await epochs()
        let load = Load()
        let loader = startLoad(load, round: 0, avoiding: leader.name)
        let started = ContinuousClock.now
        var reported = 0
        while ContinuousClock.now - started < .seconds(seconds) {
            try await Task.sleep(for: .seconds(1))
            let elapsed = Int(Self.ms(ContinuousClock.now - started) / 1000)
            if elapsed / 60 > reported {
                reported = elapsed / 60
                print("  \(elapsed) s: \(load.acknowledged.withLock { $0.count }) writes acknowledged, epochs \(await epochs())")
            }
        }
        load.stop.store(true, ordering: .relaxed)
        await loader.value
        let after = await epochs()
        try await setJitter(0)
        let changes = before.keys.reduce(0) { $0 + max(0, (after[$1] ?? 0) - (before[$1] ?? 0)) }
        let writes = load.acknowledged.withLock { $0 }
        let (lost, _) = try await rpo(writes, round: 0)
        print("soak: \(Int(seconds)) s at ±\(Int(jitterPercent))% latency jitter; \(writes.count) writes acknowledged, \(lost) lost; refused: \(load.refusedSummary())")
        print("epochs before \(before), after \(after): \(changes) false failovers")
        if changes > 0 || lost > 0 { throw DrillFailure("\(changes) false failovers, \(lost) lost writes during the soak.") }
    }

    private func setJitter(_ percent: Double) async throws {
        let admin = config.wan.admin
        let connection = try await HTTPConnection.connect(host: admin.host, port: admin.port, timeoutSeconds: 5, credentials: .none)
        let body = try JSONSerialization.data(withJSONObject: ["percent": percent])
        let result = try await connection.request("POST", "/v1/wan/jitter", headers: [("Content-Type", "application/json")], body: Array(body))
        await connection.close()
        guard result.status == 200 else { throw DrillFailure("the WAN emulator refused the jitter of \(percent)%: \(result.text)") }
    }

    public static func summarize(_ rounds: [Round]) {
        let rtos = rounds.map(\.rtoMs).sorted()
        func percentile(_ p: Double) -> Int { Int(rtos[min(rtos.count - 1, Int((Double(rtos.count) * p).rounded(.up)) - 1)]) }
        print("\nRTO (client side) over \(rounds.count) failovers: p50 \(percentile(0.5)) ms, p99 \(percentile(0.99)) ms, max \(Int(rtos.last ?? 0)) ms")
        print("RPO: \(rounds.map(\.lost).reduce(0, +)) acknowledged writes lost of \(rounds.map(\.acknowledged).reduce(0, +)); \(rounds.map(\.keptAside).reduce(0, +)) kept aside in divergence logs")
        print("regions agreed after every round: \(rounds.allSatisfy(\.agreed) ? "yes" : "NO")")
    }

    static func ms(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    /// A process's command line and working directory, from /proc (Linux), to start it again after the kill.
    static func commandLine(of pid: Int32) throws -> ([String], String) {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty,
              let directory = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd") else {
            throw DrillFailure("cannot read the command line of pid \(pid) from /proc; game days run against a local cluster on Linux.")
        }
        let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        return (arguments, directory)
    }

    /// Starts the command again, detached from this one's lifetime (without --exit-with-parent).
    static func restart(_ arguments: [String], in directory: String, log: String) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0].hasPrefix("/") ? arguments[0] : (directory as NSString).appendingPathComponent(arguments[0]))
        process.arguments = Array(arguments.dropFirst()).filter { $0 != "--exit-with-parent" }
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process.processIdentifier
    }
}
