import Foundation
import MeridianCore
import MeridianHarness
import MeridianTestKit
import Synchronization

// The nemesis: Jepsen-style fault injection against a cluster of real processes, and every checker over what
// the clients saw. A library, so `meridian nemesis` and the tests run the same code.

/// Why a drill could not run or what it found, in a sentence.
public struct DrillFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One injected fault, as the report lists it.
public struct Fault: Sendable {
    public enum Kind: String, CaseIterable, Sendable {
        case partition, isolate, kill, pause, skew, slow
        /// Every node of a region at once (with standbys: the holder and its standby), as a region's machines lost.
        case killRegion = "kill-region"
    }

    let kind: Kind
    let startedMs: UInt64
    var description: String
}

/// The demo cluster's keyspaces and latencies on free ports, as real processes (the shared ``LocalCluster``):
/// the WAN emulator and one node per region, each restartable with its own clock offset.
public final class NemesisCluster: Sendable {
    let local: LocalCluster
    let baseRTT: [String: Double]
    var directory: String { local.directory }
    var configPath: String { local.configPath }
    var config: ClusterConfig { local.config }
    var regions: [RegionConfig] { local.config.regions }

    /// - Parameter executable: The `meridian` binary the cluster runs.
    /// - Parameter yaml: The cluster file (default: the demo on free ports); connections present ``ClientCredentials/process``.
    /// - Parameter standbys: Regions (on PostgreSQL) given a second node: a kill then hits the node holding the region's
    ///   lease, the standby takes over, and the killed node comes back as the standby.
    public init(directory: String, latencyScale: Double, executable: String = LocalProcesses.currentExecutable(), yaml: String? = nil,
                standbys: Set<RegionName> = []) throws {
        var options = LocalCluster.Options(executable: executable, directory: directory, latencyScale: latencyScale, logLevel: "notice")
        options.standbyRegions = standbys
        local = try LocalCluster(yaml: try yaml ?? LocalCluster.demoYAML(), options: options)
        var rtt: [String: Double] = [:]
        for a in local.config.regions {
            for b in local.config.regions where a.name < b.name { rtt["\(a.name)|\(b.name)"] = local.config.wan.rttMs(a.name, b.name) ?? 0 }
        }
        baseRTT = rtt
    }

    public func start() async throws {
        do {
            try await local.start()
        } catch let failure as LocalCluster.LaunchFailure {
            throw DrillFailure(failure.description)
        }
        let unverified = await RegionProbe.waitForVerifiedClocks(regions.map(\.client), timeoutSeconds: 30, stop: { false })
        guard unverified.isEmpty else { throw DrillFailure("the clocks of \(unverified) were not verified by their peers within 30 s; see the logs in \(directory).") }
    }

    func startNode(_ region: String, clockOffsetMs: Int64) throws {
        try local.startNode(RegionName(validated: region), clockOffsetMs: clockOffsetMs)
    }

    func waitHealthy(_ region: String) async throws {
        do {
            try await local.waitHealthy(RegionName(validated: region))
        } catch let failure as LocalCluster.LaunchFailure {
            throw DrillFailure(failure.description)
        }
    }

    func client(_ region: String) -> Endpoint { local.endpoint(RegionName(validated: region)) }

    func pid(_ region: String) -> Int32? { local.pid(RegionName(validated: region)) }

    func offset(_ region: String) -> Int64 { local.clockOffsetMs(RegionName(validated: region)) }

    func kill9(_ region: String) async { await local.kill9(RegionName(validated: region)) }

    /// Kills every node of the region (its standby too) with SIGKILL.
    func kill9Everywhere(_ region: String) async {
        let name = RegionName(validated: region)
        if let standby = local.standbyProcess(name) {
            kill(standby.processIdentifier, SIGKILL)
            _ = await LocalProcesses.waitExited(standby)
        }
        await local.kill9(name)
    }

    /// Starts a killed region again: its node, and its standby when it has one.
    func restartEverywhere(_ region: String) throws {
        let name = RegionName(validated: region)
        try local.startNode(name, clockOffsetMs: local.clockOffsetMs(name))
        if local.standbyProcess(name) != nil { try local.startStandby(name) }
    }

    func signal(_ region: String, _ signal: Int32) { local.signal(RegionName(validated: region), signal) }

    /// POSTs a command to the WAN emulator's admin API.
    func wan(_ path: String, _ body: [String: Any]) async throws {
        do {
            try await local.wan(path, body)
        } catch let failure as LocalCluster.LaunchFailure {
            throw DrillFailure(failure.description)
        }
    }

    public func stop() async { await local.stop() }
}

/// The clients' histories, shared by every client task.
final class NemesisHistory: Sendable {
    struct State {
        var majorityAcked: [(key: String, value: String)] = []
        var asyncAcked: [(key: String, value: String)] = []
        var registers: [RegisterOperation] = []
        var sessions: [Int: [SessionOperation]] = [:]
        /// Per session, one line per recorded operation (time, region, version), to explain a violation.
        var sessionTraces: [Int: [String]] = [:]
        var staleWrites: [StalenessChecker.Write] = []
        var staleReads: [StalenessChecker.Read] = []
        var incrementsAcked = 0
        var incrementsAttempted = 0
        var operations: [String: Int] = [:]
        var refusals: [String: Int] = [:]
        /// The first answer of each refusal, as the operation that got it and the error's message.
        var firstRefusal: [String: String] = [:]
    }

    let state = Mutex(State())
    let started = ContinuousClock.now

    /// Ms since the run began, on the one clock every client shares.
    var nowMs: UInt64 { UInt64(max(0, (ContinuousClock.now - started) / .milliseconds(1))) }

    func count(_ operation: String, _ result: HTTPResult?) {
        state.withLock { state in
            state.operations[operation, default: 0] += 1
            if let result, result.status != 200 {
                let error = ((try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any])?["error"] as? [String: Any]
                let refusal = "\(result.status) \(error?["code"] as? String ?? "?")"
                state.refusals[refusal, default: 0] += 1
                if state.firstRefusal[refusal] == nil {
                    state.firstRefusal[refusal] = "\(operation), at \(nowMs) ms: \(error?["message"] as? String ?? result.text.prefix(200).description)"
                }
            } else if result == nil {
                state.refusals["no answer", default: 0] += 1
            }
        }
    }
}

/// The load, the fault schedule, healing and the checks of one run.
public final class NemesisRun: Sendable {
    let cluster: NemesisCluster
    let seed: UInt64
    let kinds: [Fault.Kind]
    let faultSeconds: Double

    public init(cluster: NemesisCluster, seed: UInt64, kinds: [Fault.Kind], faultSeconds: Double) {
        self.cluster = cluster
        self.seed = seed
        self.kinds = kinds
        self.faultSeconds = faultSeconds
    }
    let history = NemesisHistory()
    let stopFlag = Atomic<Bool>(false)
    static let registerKeys = ["reg-0", "reg-1", "reg-2"]
    static let sessionKeys = ["s-0", "s-1", "s-2"]
    static let counterKey = "nemesis-counter"

    public struct Report: Sendable {
        public let text: String
        public let violations: [String]
    }

    var regionNames: [String] { cluster.regions.map(\.name.rawValue) }

    // MARK: - Clients

    /// One request on a connection to `region` (reconnecting as needed); nil when nothing came back in time.
    final class Client: @unchecked Sendable {
        let cluster: NemesisCluster
        private var connections: [String: HTTPConnection] = [:]

        init(cluster: NemesisCluster) { self.cluster = cluster }

        func request(_ region: String, _ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) async -> HTTPResult? {
            do {
                let connection: HTTPConnection
                if let open = connections[region] {
                    connection = open
                } else {
                    let endpoint = cluster.client(region)
                    connection = try await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: 3)
                    connections[region] = connection
                }
                return try await connection.request(method, path, headers: headers, body: body)
            } catch {
                if let broken = connections.removeValue(forKey: region) { await broken.close() }
                return nil
            }
        }

        func close() async {
            for connection in connections.values { await connection.close() }
            connections = [:]
        }
    }

    /// A refused write that provably wrote nothing: a 4xx, or a 503 whose code says so.
    static func definitelyNotWritten(_ result: HTTPResult) -> Bool {
        if (400..<500).contains(result.status) { return true }
        let code = (((try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any])?["error"] as? [String: Any])?["code"] as? String
        return ["ack_unavailable", "clock_fenced", "overloaded", "storage_full", "storage_read_only", "region_unavailable"].contains(code ?? "")
    }

    private func writerLoop(_ region: String) async {
        let client = Client(cluster: cluster)
        var index = 0
        while !stopFlag.load(ordering: .relaxed) {
            index += 1
            switch index % 4 {
            case 0, 2:
                // A unique key and value, majority-acknowledged: must survive anything.
                let key = "u-\(region)-\(index)", value = "v-\(region)-\(index)"
                let result = await client.request(region, "PUT", "/v1/kv/accounts/\(key)", body: Array(value.utf8))
                history.count("majority write", result)
                if result?.status == 200 { history.state.withLock { $0.majorityAcked.append((key, value)) } }
            case 1:
                // A shared register, for linearizability.
                let key = Self.registerKeys[index / 4 % Self.registerKeys.count], value = "r-\(region)-\(index)"
                let call = history.nowMs
                let result = await client.request(region, "PUT", "/v1/kv/accounts/\(key)", body: Array(value.utf8))
                let returned = history.nowMs
                history.count("register write", result)
                if let result, Self.definitelyNotWritten(result) { break }
                history.state.withLock { $0.registers.append(RegisterOperation(key: key, kind: .write(value), call: call, returned: result?.status == 200 ? returned : nil)) }
            default:
                // A unique async write: if the leader that acknowledged it is deposed, it must be kept aside.
                let key = "a-\(region)-\(index)", value = "v-\(region)-\(index)"
                let result = await client.request(region, "PUT", "/v1/kv/accounts/\(key)", headers: [("Meridian-Ack", "async")], body: Array(value.utf8))
                history.count("async write", result)
                if result?.status == 200 { history.state.withLock { $0.asyncAcked.append((key, value)) } }
            }
            try? await Task.sleep(for: .milliseconds(15))
        }
        await client.close()
    }

    private func strongReaderLoop(_ region: String) async {
        let client = Client(cluster: cluster)
        var index = 0
        while !stopFlag.load(ordering: .relaxed) {
            index += 1
            let key = Self.registerKeys[index % Self.registerKeys.count]
            let call = history.nowMs
            let result = await client.request(region, "GET", "/v1/kv/accounts/\(key)", headers: [("Meridian-Consistency", "strong")])
            let returned = history.nowMs
            history.count("strong read", result)
            if let result, result.status == 200 || (result.status == 404 && result.text.contains("key_not_found")) {
                let value = result.status == 200 ? result.text : nil
                history.state.withLock { $0.registers.append(RegisterOperation(key: key, kind: .read(value), call: call, returned: returned)) }
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        await client.close()
    }

    private func counterLoop(_ region: String) async {
        let client = Client(cluster: cluster)
        while !stopFlag.load(ordering: .relaxed) {
            history.state.withLock { $0.incrementsAttempted += 1 }
            let result = await client.request(region, "POST", "/v1/crdt/likes/\(Self.counterKey)", headers: [("Content-Type", "application/json")],
                                              body: Array(#"{"type":"pn-counter","op":"increment","by":1}"#.utf8))
            history.count("counter increment", result)
            if let result {
                if result.status == 200 { history.state.withLock { $0.incrementsAcked += 1 } }
                else if Self.definitelyNotWritten(result) { history.state.withLock { $0.incrementsAttempted -= 1 } }
            }
            try? await Task.sleep(for: .milliseconds(40))
        }
        await client.close()
    }

    /// A session that moves to the next region on every operation, carrying its token.
    private func sessionLoop(_ session: Int) async {
        let client = Client(cluster: cluster)
        let regions = regionNames
        var token: String?
        var index = 0
        var operations: [SessionOperation] = []
        var trace: [String] = []
        while !stopFlag.load(ordering: .relaxed) {
            index += 1
            let region = regions[(index + session) % regions.count]
            let key = Self.sessionKeys[(index / 2 + session) % Self.sessionKeys.count]
            var headers: [(String, String)] = [("Meridian-Consistency", "session")]
            if let token { headers.append(("Meridian-Session", token)) }
            if index % 2 == 0 {
                let result = await client.request(region, "PUT", "/v1/kv/profiles/\(key)", headers: headers.filter { $0.0 != "Meridian-Consistency" },
                                                  body: Array("s\(session)-\(index)".utf8))
                history.count("session write", result)
                guard let result, result.status == 200, let etag = result.header("ETag"),
                      let version = Version(parsing: etag.trimmingCharacters(in: CharacterSet(charactersIn: "\""))) else { continue }
                token = result.header("Meridian-Session") ?? token
                operations.append(SessionOperation(session: session, key: key, kind: .write(version, deleted: false)))
                trace.append("\(history.nowMs) ms write \(key) at \(region) → \(version)")
                history.state.withLock { $0.staleWrites.append(StalenessChecker.Write(key: key, version: version, acknowledged: history.nowMs)) }
            } else {
                let result = await client.request(region, "GET", "/v1/kv/profiles/\(key)", headers: headers)
                history.count("session read", result)
                guard let result else { continue }
                let served = "\(region)\(result.header("Meridian-Forwarded-To").map { " via \($0)" } ?? "")"
                if result.status == 200, let etag = result.header("ETag"),
                   let version = Version(parsing: etag.trimmingCharacters(in: CharacterSet(charactersIn: "\""))) {
                    operations.append(SessionOperation(session: session, key: key, kind: .read(version)))
                    trace.append("\(history.nowMs) ms read \(key) at \(served) → \(version)")
                } else if result.status == 404, result.text.contains("key_not_found") {
                    operations.append(SessionOperation(session: session, key: key, kind: .read(nil)))
                    trace.append("\(history.nowMs) ms read \(key) at \(served) → absent")
                } else {
                    continue
                }
                token = result.header("Meridian-Session") ?? token
            }
            try? await Task.sleep(for: .milliseconds(25))
        }
        history.state.withLock {
            $0.sessions[session] = operations
            $0.sessionTraces[session] = trace
        }
        await client.close()
    }

    /// Bounded reads of the session keys: each must reflect every write acknowledged more than the bound before it.
    private func boundedReaderLoop(_ region: String) async {
        let client = Client(cluster: cluster)
        let boundMs: UInt64 = 2_000
        var index = 0
        while !stopFlag.load(ordering: .relaxed) {
            index += 1
            let key = Self.sessionKeys[index % Self.sessionKeys.count]
            let call = history.nowMs
            let result = await client.request(region, "GET", "/v1/kv/profiles/\(key)",
                                              headers: [("Meridian-Consistency", "bounded"), ("Meridian-Max-Staleness-Ms", String(boundMs))])
            history.count("bounded read", result)
            if let result {
                if result.status == 200, let etag = result.header("ETag"),
                   let version = Version(parsing: etag.trimmingCharacters(in: CharacterSet(charactersIn: "\""))) {
                    history.state.withLock { $0.staleReads.append(StalenessChecker.Read(key: key, call: call, maxStalenessMs: boundMs, returned: version)) }
                } else if result.status == 404, result.text.contains("key_not_found") {
                    history.state.withLock { $0.staleReads.append(StalenessChecker.Read(key: key, call: call, maxStalenessMs: boundMs, returned: nil)) }
                }
            }
            try? await Task.sleep(for: .milliseconds(30))
        }
        await client.close()
    }

    // MARK: - Faults

    private func status(_ region: String) async -> [String: Any]? {
        await RegionProbe.json(cluster.client(region), "/v1/status")
    }

    /// Injects one fault, holds it, and heals it. Returns what was done and whether it behaved (a skew beyond the
    /// maximum offset must fence the region).
    private func inject(_ kind: Fault.Kind, generator: inout SeededGenerator) async throws -> (Fault, String?) {
        let regions = regionNames
        let region = regions[Int.random(in: 0..<regions.count, using: &generator)]
        let other = regions.filter { $0 != region }[Int.random(in: 0..<(regions.count - 1), using: &generator)]
        let hold = Double.random(in: (faultSeconds / 3)...faultSeconds, using: &generator)
        let started = history.nowMs
        var violation: String?
        let description: String
        switch kind {
        case .partition:
            try await cluster.wan("partition", ["a": region, "b": other])
            try await Task.sleep(for: .seconds(hold))
            try await cluster.wan("heal", ["a": region, "b": other])
            description = "partition \(region) | \(other) for \(Self.seconds(hold))"
        case .isolate:
            try await cluster.wan("isolate", ["region": region])
            try await Task.sleep(for: .seconds(hold))
            try await cluster.wan("heal", [:])
            description = "isolate \(region) for \(Self.seconds(hold))"
        case .kill:
            await cluster.kill9(region)
            try await Task.sleep(for: .seconds(hold))
            try cluster.startNode(region, clockOffsetMs: cluster.offset(region))
            try await cluster.waitHealthy(region)
            description = "SIGKILL \(region), restarted after \(Self.seconds(hold))"
        case .killRegion:
            await cluster.kill9Everywhere(region)
            try await Task.sleep(for: .seconds(hold))
            try cluster.restartEverywhere(region)
            try await cluster.waitHealthy(region)
            description = "SIGKILL every node of \(region), restarted after \(Self.seconds(hold))"
        case .pause:
            // Longer than the lease (about missed_heartbeats × heartbeat interval, plus the RTT).
            let pause = max(hold, 2.5)
            cluster.signal(region, SIGSTOP)
            try await Task.sleep(for: .seconds(pause))
            cluster.signal(region, SIGCONT)
            description = "SIGSTOP \(region) for \(Self.seconds(pause)), then SIGCONT"
        case .skew:
            let maxOffset = Int64(cluster.config.limits.clockOffsetMsMax)
            let beyond = Bool.random(using: &generator)
            let sign: Int64 = Bool.random(using: &generator) ? 1 : -1
            let offset = sign * (beyond ? maxOffset * 4 : maxOffset * 2 / 5)
            await cluster.kill9(region)
            try cluster.startNode(region, clockOffsetMs: offset)
            try await cluster.waitHealthy(region)
            let deadline = Date().addingTimeInterval(max(hold, 3))
            var states: Set<String> = []
            while Date() < deadline {
                if let state = ((await status(region))?["clock"] as? [String: Any])?["state"] as? String { states.insert(state) }
                try await Task.sleep(for: .milliseconds(100))
            }
            let fenced = states.contains("fenced")
            if beyond && !fenced { violation = "\(region) ran \(offset) ms off (beyond \(maxOffset)) and never reported itself fenced" }
            if beyond && states.contains("ok") { violation = "\(region) ran \(offset) ms off (beyond \(maxOffset)) yet reported its clock ok (writable)" }
            if !beyond && fenced { violation = "\(region) ran \(offset) ms off (within \(maxOffset)) but fenced itself" }
            if !beyond && !states.contains("ok") { violation = "\(region) ran \(offset) ms off (within \(maxOffset)) but never had its clock verified (\(states.sorted()))" }
            await cluster.kill9(region)
            try cluster.startNode(region, clockOffsetMs: 0)
            try await cluster.waitHealthy(region)
            description = "clock of \(region) \(offset > 0 ? "+" : "")\(offset) ms (\(beyond ? "beyond" : "within") the \(maxOffset) ms maximum; \(fenced ? "fenced" : "not fenced")) for \(Self.seconds(max(hold, 3)))"
        case .slow:
            let key = [region, other].sorted().joined(separator: "|")
            let base = cluster.baseRTT[key] ?? 100
            try await cluster.wan("latency", ["a": region, "b": other, "rtt_ms": base * 4])
            try await Task.sleep(for: .seconds(hold))
            try await cluster.wan("latency", ["a": region, "b": other, "rtt_ms": base])
            description = "slow \(region) – \(other) to \(Int(base * 4)) ms RTT for \(Self.seconds(hold))"
        }
        return (Fault(kind: kind, startedMs: started, description: description), violation)
    }

    static func seconds(_ value: Double) -> String { String(format: "%.1f s", value) }

    // MARK: - The run

    public func execute(durationSeconds: Double, settleSeconds: Double) async throws -> Report {
        var tasks: [Task<Void, Never>] = []
        for region in regionNames {
            tasks.append(Task { await writerLoop(region) })
            tasks.append(Task { await strongReaderLoop(region) })
            tasks.append(Task { await counterLoop(region) })
            tasks.append(Task { await boundedReaderLoop(region) })
        }
        for session in 0..<2 { tasks.append(Task { await sessionLoop(session) }) }

        var generator = SeededGenerator(seed: seed)
        var faults: [Fault] = []
        var violations: [String] = []
        let deadline = ContinuousClock.now + .milliseconds(Int64(durationSeconds * 1000))
        try await Task.sleep(for: .seconds(min(2, durationSeconds / 4)))
        while ContinuousClock.now < deadline {
            let kind = kinds[Int.random(in: 0..<kinds.count, using: &generator)]
            let (fault, violation) = try await inject(kind, generator: &generator)
            faults.append(fault)
            print(String(format: "  %7.1f s  %@", Double(fault.startedMs) / 1000, fault.description))
            if let violation { violations.append(violation) }
            // A quiet spell between faults, so the cluster recovers and the clients make progress.
            try await Task.sleep(for: .seconds(Double.random(in: 0.5...1.5, using: &generator)))
        }
        stopFlag.store(true, ordering: .relaxed)
        for task in tasks { await task.value }

        // Heal: every link, every paused process, every clock.
        try await cluster.wan("heal", [:])
        for region in regionNames {
            cluster.signal(region, SIGCONT)
            if cluster.offset(region) != 0 {
                await cluster.kill9(region)
                try cluster.startNode(region, clockOffsetMs: 0)
                try await cluster.waitHealthy(region)
            }
        }
        let agreed = await converge(within: settleSeconds)
        if !agreed.isEmpty { violations.append("the regions did not converge within \(Int(settleSeconds)) s: \(agreed.joined(separator: "; "))") }
        violations += try await check()
        return report(faults: faults, violations: violations)
    }

    /// Waits until every region's Merkle root agrees for each keyspace the clients used (within one deadline);
    /// returns the keyspaces that still differ.
    private func converge(within seconds: Double) async -> [String] {
        let deadline = Date().addingTimeInterval(seconds)
        var differing: [String] = []
        for keyspace in ["accounts", "profiles", "likes"] {
            let agreed = await RegionProbe.rootsAgree(cluster.regions.map(\.client), keyspace: keyspace,
                                                      within: max(0.5, deadline.timeIntervalSinceNow))
            if !agreed { differing.append("\(keyspace): the regions' Merkle roots differ") }
        }
        return differing
    }

    /// Runs every checker over the histories and the healed cluster's state.
    private func check() async throws -> [String] {
        var violations: [String] = []
        let state = history.state.withLock { $0 }
        let client = Client(cluster: cluster)
        defer { Task { await client.close() } }
        let reader = regionNames[0]

        // A strong read's answer, retried (bounded) while the cluster cannot answer it (a failback hand-over may
        // still run): only an answer, a value or 404, says whether a write is there.
        func strongRead(_ key: String) async -> HTTPResult? {
            var result: HTTPResult?
            for attempt in 0..<25 {
                result = await client.request(reader, "GET", "/v1/kv/accounts/\(key)", headers: [("Meridian-Consistency", "strong")])
                if let status = result?.status, status == 200 || status == 404 { return result }
                if attempt < 24 { try? await Task.sleep(for: .milliseconds(200)) }
            }
            return result
        }

        // Acknowledged majority writes: every one must be the current value of its key (strong read).
        var lostMajority: [String] = []
        for write in state.majorityAcked {
            let result = await strongRead(write.key)
            if result?.status != 200 || result?.text != write.value { lostMajority.append(write.key) }
        }
        if !lostMajority.isEmpty { violations.append("\(lostMajority.count) acknowledged majority writes lost: \(lostMajority.prefix(10).joined(separator: ", "))") }

        // Acknowledged async writes: current, or kept aside in some region's divergence log.
        var keptAside: Set<String> = []
        for region in regionNames {
            var after = "0"
            for _ in 0..<100 {
                guard let result = await client.request(region, "GET", "/v1/divergence?keyspace=accounts&limit=1000&after=\(after)"),
                      result.status == 200,
                      let answer = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any] else { break }
                for write in answer["writes"] as? [[String: Any]] ?? [] {
                    if let key = write["key"] as? String, let value = write["value"] as? String { keptAside.insert("\(key)=\(value)") }
                }
                guard let next = answer["next"] as? Int else { break }
                after = String(next)
            }
        }
        var unaccounted: [String] = []
        var asyncLostButKept = 0
        for write in state.asyncAcked {
            let result = await strongRead(write.key)
            if result?.status == 200 && result?.text == write.value { continue }
            if keptAside.contains("\(write.key)=\(write.value)") { asyncLostButKept += 1; continue }
            unaccounted.append(write.key)
        }
        if !unaccounted.isEmpty { violations.append("\(unaccounted.count) acknowledged async writes neither current nor in a divergence log: \(unaccounted.prefix(10).joined(separator: ", "))") }

        // Linearizability of the strong register operations.
        let verdict = LinearizabilityChecker().check(state.registers)
        if verdict != .linearizable {
            // The history, one operation per line (key, kind, value, call and return in ms; return null: timed
            // out), kept with the logs for whoever examines it.
            let file = (cluster.directory as NSString).appendingPathComponent("registers.tsv")
            let lines = state.registers.map { operation -> String in
                let (kind, value): (String, String?) = switch operation.kind {
                case .write(let value): ("write", value)
                case .read(let value): ("read", value)
                }
                return [operation.key, kind, value ?? "-", String(operation.call), operation.returned.map(String.init) ?? "-"].joined(separator: "\t")
            }
            try? (["key\tkind\tvalue\tcall_ms\treturned_ms"] + lines).joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        }
        switch verdict {
        case .linearizable: break
        case .violation(let key, let operations): violations.append("register '\(key)' is not linearizable (\(operations.count) operations; the history is in registers.tsv)")
        case .unknown(let key): violations.append("register '\(key)': the linearizability search did not finish (the history is in registers.tsv)")
        }

        // Session guarantees and bounded staleness.
        let sessionViolations = SessionChecker().check(state.sessions.keys.sorted().map { state.sessions[$0]! })
        violations += sessionViolations.prefix(10).map { violation in
            let trace = state.sessionTraces[violation.session] ?? []
            let window = trace[max(0, violation.index - 8)..<min(trace.count, violation.index + 1)]
            return "session: \(violation)\n      " + window.joined(separator: "\n      ")
        }
        let stale = StalenessChecker().check(writes: state.staleWrites, reads: state.staleReads)
        violations += stale.prefix(10).map { "bounded read of '\($0.read.key)' at \($0.read.call) ms returned \($0.read.returned?.description ?? "nothing"), owed \($0.owed.version)" }

        // The counter: at least every acknowledged increment, at most every attempted one, the same everywhere.
        var counterValues: [String] = []
        for region in regionNames {
            let result = await client.request(region, "GET", "/v1/crdt/likes/\(Self.counterKey)")
            let value = ((try? JSONSerialization.jsonObject(with: Data(result?.body ?? []))) as? [String: Any])?["value"] as? Int ?? -1
            counterValues.append("\(region)=\(value)")
            if value < state.incrementsAcked || value > state.incrementsAttempted {
                violations.append("the counter at \(region) is \(value), outside [\(state.incrementsAcked) acknowledged, \(state.incrementsAttempted) attempted]")
            }
        }
        lastSummary.withLock {
            $0 = """
                checked: \(state.majorityAcked.count) majority writes acknowledged, \(lostMajority.count) lost; \(state.asyncAcked.count) async writes acknowledged, \
                \(asyncLostButKept) overwritten by a failover and kept aside, \(unaccounted.count) unaccounted; \(state.registers.count) register operations \
                (linearizability); \(state.sessions.values.map(\.count).reduce(0, +)) session operations in \(state.sessions.count) sessions, \
                \(sessionViolations.count) violations; \(state.staleReads.count) bounded reads, \(stale.count) too stale; counter \
                \(counterValues.joined(separator: " ")) for \(state.incrementsAcked) acknowledged of \(state.incrementsAttempted) attempted increments
                """
        }
        return violations
    }

    let lastSummary = Mutex<String>("")

    private func report(faults: [Fault], violations: [String]) -> Report {
        let state = history.state.withLock { $0 }
        var lines: [String] = []
        let byKind = Dictionary(grouping: faults, by: \.kind).map { "\($0.value.count) \($0.key.rawValue)" }.sorted()
        lines.append("faults: \(faults.count) (\(byKind.joined(separator: ", ")))")
        lines.append("operations: \(state.operations.values.reduce(0, +)) (\(state.operations.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")))")
        lines.append("not acknowledged: \(state.refusals.sorted { $0.value > $1.value }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))")
        for (refusal, first) in state.firstRefusal.sorted(by: { $0.key < $1.key }) { lines.append("  first \(refusal): \(first)") }
        lines.append(lastSummary.withLock { $0 })
        if violations.isEmpty {
            lines.append("violations: none")
        } else {
            lines.append("violations: \(violations.count)")
            lines += violations.map { "  - \($0)" }
        }
        return Report(text: lines.joined(separator: "\n"), violations: violations)
    }
}
