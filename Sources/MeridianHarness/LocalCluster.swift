import Foundation
import MeridianCore
import Synchronization

/// A cluster of real `meridian` processes on this machine: the WAN emulator and one node per region, from one
/// cluster file, in one directory (the file, each region's data, the logs). Every process it starts is
/// stopped by ``stop()``; a region can be killed, signalled and started again (with a clock offset).
///
/// The one launcher `meridian up`, the nemesis, the game day, the benchmarks and the live tests share.
public final class LocalCluster: Sendable {
    public struct Options: Sendable {
        /// The `meridian` binary to run.
        public var executable: String
        /// Where the cluster file, the regions' data and the logs go.
        public var directory: String
        /// Multiplies every emulated WAN delay (nil: the cluster file's own scale).
        public var latencyScale: Double?
        /// The nodes' log level (nil: the default).
        public var logLevel: String?
        /// Extra `meridian node` arguments per region.
        public var nodeArguments: [String: [String]]
        /// How long a process may take to answer `/health`.
        public var startupTimeoutSeconds: Double
        /// Start the gateway too, on `routing.gateway` (``start(stop:)``).
        public var gateway = false
        /// The environment of the gateway's process (its token, its CA bundle).
        public var gatewayEnvironment: [String: String] = [:]
        /// Regions (on PostgreSQL) given a second node process sharing their database: it waits for the region's lease
        /// and serves the region when the first node dies (started once every region answers `/health`).
        public var standbyRegions: Set<RegionName> = []

        public init(executable: String = LocalProcesses.currentExecutable(), directory: String, latencyScale: Double? = nil, logLevel: String? = nil,
                    nodeArguments: [String: [String]] = [:], startupTimeoutSeconds: Double = 60) {
            self.executable = executable
            self.directory = directory
            self.latencyScale = latencyScale
            self.logLevel = logLevel
            self.nodeArguments = nodeArguments
            self.startupTimeoutSeconds = startupTimeoutSeconds
        }
    }

    /// Why a cluster could not be started, with the tail of the log that says more.
    public struct LaunchFailure: Error, CustomStringConvertible {
        public let description: String
    }

    private struct Processes {
        var wan: Process?
        var gateway: Process?
        var gatewayListen: Endpoint?
        var nodes: [RegionName: Process] = [:]
        var standbys: [RegionName: Process] = [:]
        var incarnations: [RegionName: Int] = [:]
        var offsets: [RegionName: Int64] = [:]
    }

    public let config: ClusterConfig
    public let configPath: String
    public let options: Options
    public var directory: String { options.directory }
    private let processes = Mutex(Processes())
    private let clientCredentials: Mutex<ClientCredentials>

    /// What connections to the regions present: HTTPS with the cluster's CA bundle when its client API speaks
    /// it, and the process's token (`MERIDIAN_TOKEN`) unless a test sets another.
    public var credentials: ClientCredentials {
        get { clientCredentials.withLock { $0 } }
        set { clientCredentials.withLock { $0 = newValue } }
    }

    /// A cluster from a cluster file's text, written to `cluster.yaml` in the directory.
    public convenience init(yaml: String, options: Options) throws {
        try FileManager.default.createDirectory(atPath: options.directory, withIntermediateDirectories: true)
        let path = (options.directory as NSString).appendingPathComponent("cluster.yaml")
        try yaml.write(toFile: path, atomically: true, encoding: .utf8)
        try self.init(configPath: path, options: options)
    }

    /// A cluster from an existing cluster file.
    public init(configPath: String, options: Options) throws {
        try FileManager.default.createDirectory(atPath: options.directory, withIntermediateDirectories: true)
        self.configPath = configPath
        self.options = options
        config = try ClusterConfig.parse(yaml: String(contentsOfFile: configPath, encoding: .utf8), file: configPath)
        var credentials = ClientCredentials.process
        if let tls = config.tls, tls.clientAPI { credentials.tls = try ClientTLS(caPath: tls.ca) }
        clientCredentials = Mutex(credentials)
    }

    /// The demo cluster (its regions, keyspaces and RTTs) on freshly chosen free ports, with a fresh session
    /// secret; `keyspaces` replaces its keyspaces when given (the YAML list's items).
    public static func demoYAML(keyspaces: String? = nil) throws -> String {
        var yaml = DemoCluster.yaml
        for region in try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo").regions {
            for endpoint in [region.client, region.peer] {
                yaml = yaml.replacingOccurrences(of: "\(endpoint.host):\(endpoint.port)", with: "127.0.0.1:\(try LocalProcesses.freePort())")
            }
        }
        let demo = try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
        yaml = yaml.replacingOccurrences(of: "admin: \(demo.wan.admin.host):\(demo.wan.admin.port)", with: "admin: 127.0.0.1:\(try LocalProcesses.freePort())")
        let links = demo.regions.count * (demo.regions.count - 1)
        yaml = yaml.replacingOccurrences(of: "base_port: \(demo.wan.basePort)", with: "base_port: \(try LocalProcesses.freePortRange(count: links))")
        if let gateway = demo.routing.gateway {
            yaml = yaml.replacingOccurrences(of: "gateway: \(gateway)", with: "gateway: 127.0.0.1:\(try LocalProcesses.freePort())")
        }
        if let keyspaces, let start = yaml.range(of: "\nkeyspaces:\n") {
            let rest = yaml[start.upperBound...]
            let end = rest.range(of: "\n[a-z_]+:", options: .regularExpression)?.lowerBound ?? rest.endIndex
            yaml = String(yaml[..<start.upperBound]) + keyspaces + String(rest[end...])
        }
        return yaml + "\nsession_secret: \(secret())\n"
    }

    /// 32 random bytes as hex: a cluster's session secret.
    public static func secret() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    // MARK: - Starting and stopping

    /// Starts the WAN emulator, then every region, and waits until each answers `/health`.
    /// - Parameter stop: Polled while waiting: true gives up (a Ctrl-C).
    /// - Throws: ``LaunchFailure`` naming the process that did not come up and its log's last lines.
    public func start(stop: @escaping @Sendable () -> Bool = { false }) async throws {
        try await startWAN(stop: stop)
        for region in config.regions { try startNode(region.name) }
        for region in config.regions { try await waitHealthy(region.name, stop: stop) }
        // After the first node made the region's root key, which the second reads.
        for region in config.regions where options.standbyRegions.contains(region.name) { try startStandby(region.name) }
        if options.gateway { try await startGateway(stop: stop) }
    }

    /// The gateway's address: where ``startGateway(listen:environment:stop:)`` started it, else `routing.gateway`, else
    /// the default.
    public var gatewayEndpoint: Endpoint {
        processes.withLock { $0.gatewayListen } ?? config.routing.gateway ?? Endpoint(host: "127.0.0.1", port: 7100)
    }
    public var gatewayLog: String { (directory as NSString).appendingPathComponent("gateway.log") }
    public var gatewayProcess: Process? { processes.withLock { $0.gateway } }

    /// Starts the gateway (on `listen`, else ``gatewayEndpoint``; with `environment`, else the options') and waits
    /// until it answers `/health`.
    public func startGateway(listen: Endpoint? = nil, environment: [String: String]? = nil, stop: @escaping @Sendable () -> Bool = { false }) async throws {
        if let listen { processes.withLock { $0.gatewayListen = listen } }
        var arguments = ["gateway", "--config", configPath, "--exit-with-parent", "--listen", gatewayEndpoint.description]
        if let level = options.logLevel { arguments += ["--log-level", level] }
        let process = try LocalProcesses.start(options.executable, arguments, logPath: gatewayLog, environment: environment ?? options.gatewayEnvironment)
        processes.withLock { $0.gateway = process }
        let endpoint = gatewayEndpoint
        guard await LocalProcesses.waitHealthy(host: endpoint.host, port: endpoint.port, process: process, timeoutSeconds: options.startupTimeoutSeconds, stop: stop,
                                               credentials: .none) else {
            if stop() { return }
            throw LaunchFailure(description: "the gateway did not start (see \(gatewayLog)):\n\(Self.tail(gatewayLog))")
        }
    }

    /// Starts the WAN emulator (the regions' streams run through it) and waits for its admin API.
    public func startWAN(stop: @escaping @Sendable () -> Bool = { false }) async throws {
        var arguments = ["wan", "--config", configPath, "--exit-with-parent"]
        if let scale = options.latencyScale { arguments += ["--latency-scale", String(scale)] }
        let process = try LocalProcesses.start(options.executable, arguments, logPath: wanLog)
        processes.withLock { $0.wan = process }
        let admin = config.wan.admin
        guard await LocalProcesses.waitHealthy(host: admin.host, port: admin.port, process: process, timeoutSeconds: options.startupTimeoutSeconds, stop: stop,
                                               credentials: .none) else {
            if stop() { return }
            throw LaunchFailure(description: "the WAN emulator did not start (see \(wanLog)):\n\(Self.tail(wanLog))")
        }
    }

    /// Starts (or starts again) one region's node, its clock offset by `clockOffsetMs`; each start logs to a
    /// file of its own when the region was started before.
    public func startNode(_ region: RegionName, clockOffsetMs: Int64 = 0) throws {
        let incarnation = processes.withLock { state -> Int in
            state.incarnations[region, default: 0] += 1
            state.offsets[region] = clockOffsetMs
            return state.incarnations[region]!
        }
        let arguments = nodeArguments(region, clockOffsetMs == 0 ? [] : ["--clock-offset-ms=\(clockOffsetMs)"])
        let process = try LocalProcesses.start(options.executable, arguments, logPath: log(region, incarnation: incarnation))
        processes.withLock { $0.nodes[region] = process }
    }

    /// `meridian node`'s arguments for a region, with `extra`. Root keys live apart from the data: a copy of a data
    /// directory (a backup) holds no key that opens it.
    private func nodeArguments(_ region: RegionName, _ extra: [String]) -> [String] {
        var arguments = ["node", "--config", configPath, "--region", region.rawValue, "--data", dataDirectory(region), "--exit-with-parent",
                         "--root-key-file", rootKeyFile(region)] + extra
        if let level = options.logLevel { arguments += ["--log-level", level] }
        // Nodes sharing a region on one machine: while one stands by, it relays on ports of its own.
        if options.standbyRegions.contains(region), let client = try? LocalProcesses.freePort(), let peer = try? LocalProcesses.freePort() {
            arguments += ["--relay-listen", "127.0.0.1:\(client)", "--relay-peer-listen", "127.0.0.1:\(peer)"]
        }
        return arguments + options.nodeArguments[region.rawValue, default: []]
    }

    /// Starts a second node for a region on PostgreSQL: the same arguments under another node name, logging to
    /// `REGION-standby.log`. It serves the region once it holds the region's lease.
    public func startStandby(_ region: RegionName) throws {
        let process = try LocalProcesses.start(options.executable, nodeArguments(region, ["--node-name", "\(region)-standby"]), logPath: standbyLog(region))
        processes.withLock { $0.standbys[region] = process }
    }

    /// Waits until the region answers `/health`.
    /// - Throws: ``LaunchFailure`` when it does not within the start-up timeout (or its process exits).
    public func waitHealthy(_ region: RegionName, stop: @escaping @Sendable () -> Bool = { false }) async throws {
        let client = endpoint(region)
        guard await LocalProcesses.waitHealthy(host: client.host, port: client.port, process: process(region),
                                               timeoutSeconds: options.startupTimeoutSeconds, stop: stop, credentials: credentials) else {
            if stop() { return }
            throw LaunchFailure(description: "region \(region) did not become healthy (see \(log(region))):\n\(Self.tail(log(region)))")
        }
    }

    /// Stops every process started (SIGCONT first, so a paused one can exit), the nodes before the WAN emulator.
    public func stop() async {
        let (nodes, wan, gateway) = processes.withLock { (Array($0.nodes.values) + Array($0.standbys.values), $0.wan, $0.gateway) }
        if let gateway { await LocalProcesses.stop(gateway) }
        await withTaskGroup(of: Void.self) { group in
            for process in nodes {
                group.addTask {
                    kill(process.processIdentifier, SIGCONT)
                    await LocalProcesses.stop(process)
                }
            }
        }
        if let wan { await LocalProcesses.stop(wan) }
    }

    /// Kills the node serving a region with SIGKILL (continuing it first if paused) and waits until it is gone; with a
    /// standby, the one holding the region's lease, whose standby then serves the region (and is its node from then on).
    /// - Returns: false when it was still running after the wait.
    @discardableResult
    public func kill9(_ region: RegionName) async -> Bool {
        await followTakeover(region)
        guard let process = process(region) else { return true }
        kill(process.processIdentifier, SIGCONT)
        kill(process.processIdentifier, SIGKILL)
        return await LocalProcesses.waitExited(process)
    }

    /// A region with a standby: when the standby serves the region (it took the lease over), the two swap places, so
    /// the region's node is the one serving it and the standby the one waiting.
    public func followTakeover(_ region: RegionName) async {
        guard processes.withLock({ $0.standbys[region] }) != nil,
              let serving = await RegionProbe.json(endpoint(region), "/v1/status")?["pid"] as? Int32 else { return }
        processes.withLock { state in
            guard let standby = state.standbys[region], standby.processIdentifier == serving else { return }
            state.standbys[region] = state.nodes[region]
            state.nodes[region] = standby
        }
    }

    /// Sends a signal to a region's node (SIGSTOP and SIGCONT pause and resume it).
    public func signal(_ region: RegionName, _ signal: Int32) {
        if let pid = pid(region) { kill(pid, signal) }
    }

    // MARK: - Looking at it

    public func process(_ region: RegionName) -> Process? { processes.withLock { $0.nodes[region] } }
    public func pid(_ region: RegionName) -> Int32? { process(region)?.processIdentifier }
    public func clockOffsetMs(_ region: RegionName) -> Int64 { processes.withLock { $0.offsets[region] ?? 0 } }
    public var wanProcess: Process? { processes.withLock { $0.wan } }

    /// The region's client API address.
    public func endpoint(_ region: RegionName) -> Endpoint {
        guard let config = config.region(region) else { preconditionFailure("\(region) is not a region of the cluster") }
        return config.client
    }

    public func dataDirectory(_ region: RegionName) -> String { (directory as NSString).appendingPathComponent(region.rawValue) }

    /// Where the region's root key is kept (made on its first start), apart from its data directory.
    public func rootKeyFile(_ region: RegionName) -> String { (directory as NSString).appendingPathComponent("keys/\(region).root-key") }

    /// The log of the region's current (or given) start.
    public func log(_ region: RegionName, incarnation: Int? = nil) -> String {
        let number = incarnation ?? processes.withLock { $0.incarnations[region] ?? 1 }
        return (directory as NSString).appendingPathComponent(number <= 1 ? "\(region).log" : "\(region).\(number).log")
    }

    public func standbyLog(_ region: RegionName) -> String { (directory as NSString).appendingPathComponent("\(region)-standby.log") }
    public func standbyProcess(_ region: RegionName) -> Process? { processes.withLock { $0.standbys[region] } }

    public var wanLog: String { (directory as NSString).appendingPathComponent("wan.log") }

    /// Opens a connection to a region's client API.
    public func connect(_ region: RegionName) async throws -> HTTPConnection {
        let client = endpoint(region)
        return try await HTTPConnection.connect(host: client.host, port: client.port, credentials: credentials)
    }

    /// POSTs a command to the WAN emulator's admin API (`partition`, `isolate`, `heal`, `jitter`, `latency`).
    public func wan(_ path: String, _ body: [String: Any]) async throws {
        let admin = config.wan.admin
        let connection = try await HTTPConnection.connect(host: admin.host, port: admin.port, timeoutSeconds: 5, credentials: .none)
        defer { Task { await connection.close() } }
        let result = try await connection.request("POST", "/v1/wan/\(path)", headers: [("Content-Type", "application/json")],
                                                  body: Array(try JSONSerialization.data(withJSONObject: body)))
        guard result.status == 200 else { throw LaunchFailure(description: "the WAN emulator refused \(path) \(body): \(result.text)") }
    }

    /// Waits (bounded) until every region's stream to every peer is up and its clock is verified by its peers
    /// (a region takes writes only then).
    /// - Returns: The regions still not ready.
    public func waitReady(timeoutSeconds: Double = 30, stop: @escaping @Sendable () -> Bool = { false }) async -> [RegionName] {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var pending = config.regions.map(\.name)
        while !pending.isEmpty && Date() < deadline && !stop() {
            var still: [RegionName] = []
            for region in pending {
                let status = await RegionProbe.json(endpoint(region), "/v1/status")
                let peers = status?["peers"] as? [[String: Any]] ?? []
                let clock = (status?["clock"] as? [String: Any])?["state"] as? String
                let ready = peers.count == config.regions.count - 1 && peers.allSatisfy { $0["link"] as? String == "up" } && clock != nil && clock != "unverified"
                if !ready { still.append(region) }
            }
            pending = still
            if !pending.isEmpty { try? await Task.sleep(for: .milliseconds(50)) }
        }
        return pending
    }

    public static func tail(_ path: String, lines: Int = 5) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8))?.split(separator: "\n").suffix(lines).joined(separator: "\n") ?? ""
    }
}

/// Starts `value`, runs `body` with it, and stops it whatever happens (a failed start included): how every
/// cluster a test, drill or benchmark starts is used.
public func whileStarted<T>(_ value: T, start: (T) async throws -> Void, stop: (T) async -> Void,
                            _ body: (T) async throws -> Void) async throws {
    do {
        try await start(value)
        try await body(value)
    } catch {
        await stop(value)
        throw error
    }
    await stop(value)
}
