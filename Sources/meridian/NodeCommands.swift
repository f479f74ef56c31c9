import ArgumentParser
import Foundation
import Logging
import MeridianHarness
import MeridianSecurity
import MeridianCore
import MeridianNode
import MeridianPostgres
import MeridianStorage
import MeridianStore
import UnixSignals

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Print or check cluster files.", subcommands: [Demo.self, Check.self])

    struct Demo: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the built-in demo cluster file, to copy and edit.")
        func run() { print(DemoCluster.yaml, terminator: "") }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a cluster file and summarise it.")
        @Argument var file: String
        func run() throws {
            let config = try ConfigOption(config: file).load()
            print("\(file): valid — \(config.regions.count) regions, \(config.keyspaces.count) keyspaces")
        }
    }
}

extension ConfigOption {
    init(config: String?) {
        self.init()
        self.config = config
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "node", abstract: "Run one region's node.")

    @OptionGroup var cluster: ConfigOption
    @Option(help: "The region this node serves.") var region: String
    @Option(help: "The region's data directory.") var data: String
    @Option(help: "Serve the client API on host:port instead of the address in the cluster file.") var listen: String?
    @Flag(help: "Exit when the parent process exits (used by `meridian up`, so no node outlives it).") var exitWithParent = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel: String = "info"
    @Option(help: "How to reach the other regions: wan (through `meridian wan`'s proxies) or direct.") var peerRoute: String = "wan"
    @Option(help: ArgumentHelp("Add this many ms (may be negative) to the node's wall clock: a skewed clock, for fault injection.",
                               valueName: "ms")) var clockOffsetMs: Int64 = 0
    @Flag(help: "Start even on an address other machines can reach without auth and TLS in the cluster file (protected mode off).")
    var insecure = false
    @Option(help: ArgumentHelp("Answer GET /health on host:port whether this node serves the region or stands by (regions on PostgreSQL: a standby binds none of the region's addresses, so liveness probes use this one).",
                               valueName: "host:port")) var healthListen: String?
    @Option(help: ArgumentHelp("This node's name in the region's lease (regions on PostgreSQL, where several nodes may share one database). Default: the host name.",
                               valueName: "name")) var nodeName: String?
    @Option(help: ArgumentHelp("The host the region's other nodes reach this one at while it holds the region's lease (regions on PostgreSQL: standbys relay to it). Default: the host of its client address, or the host name when that is a wildcard.",
                               valueName: "host")) var advertise: String?
    @Option(help: ArgumentHelp("Where this node, while it stands by, relays client connections to the node holding the region's lease (regions on PostgreSQL). Default: the client address it serves on when it holds the lease.",
                               valueName: "host:port")) var relayListen: String?
    @Option(help: ArgumentHelp("Where this node, while it stands by, relays peer connections to the node holding the region's lease (regions on PostgreSQL). Default: the region's peer address.",
                               valueName: "host:port")) var relayPeerListen: String?
    @Option(help: ArgumentHelp("The region's root key (base64 of 32 bytes, mode 0600), which seals the data keys of sealed keyspaces; made when the data directory is new. Default: <data>/<region>.root-key. MERIDIAN_ROOT_KEY overrides it.",
                               valueName: "file")) var rootKeyFile: String?

    func run() async throws {
        // A core dump would write the node's memory (values, keys, root keys) to a file anywhere the kernel says:
        // none is ever written, whatever limit the shell set.
        var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
        guard setrlimit(Int32(RLIMIT_CORE.rawValue), &noCore) == 0 else {
            throw CLIFailure("Cannot turn core dumps off (setrlimit RLIMIT_CORE: errno \(errno)); the node does not start with them on.")
        }
        let config = try cluster.load()
        let regionName: RegionName
        do { regionName = try RegionName(region) } catch { throw ValidationError(error.message) }
        var address: Endpoint?
        if let listen {
            guard let parsed = Endpoint(parsing: listen) else { throw ValidationError("--listen '\(listen)' is not host:port.") }
            address = parsed
        }
        var health: Endpoint?
        if let healthListen {
            guard let parsed = Endpoint(parsing: healthListen) else { throw ValidationError("--health-listen '\(healthListen)' is not host:port.") }
            health = parsed
        }
        guard let route = PeerRoute(rawValue: peerRoute) else {
            throw ValidationError("--peer-route '\(peerRoute)' is not one of \(PeerRoute.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        var logger = Logger(label: "meridian")
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level '\(logLevel)' is not a log level.") }
        logger.logLevel = level
        var node: RegionNode?
        var leased: LeasedNode?
        do {
            var configuration = try NodeConfiguration(cluster: config, region: regionName, clientAddress: address, peerRoute: route, clockOffsetMs: clockOffsetMs)
            configuration.insecure = insecure
            // The root key seals sealed keyspaces' data keys and signs the audit trail's checkpoints. A new one is made
            // for a new data directory, or where nothing was sealed under the old one.
            try SecretFile.makeDirectory(data)
            let store = (data as NSString).appendingPathComponent("\(regionName).sqlite")
            let keyPath = rootKeyFile ?? (data as NSString).appendingPathComponent("\(regionName).root-key")
            try SecretFile.makeDirectory((keyPath as NSString).deletingLastPathComponent.isEmpty ? "." : (keyPath as NSString).deletingLastPathComponent)
            let environment = ProcessInfo.processInfo.environment
            configuration.rootKeys = try RootKeyFile.load(path: keyPath, environment: environment,
                                                          mayCreate: !FileManager.default.fileExists(atPath: store) || ValueSealer.sealedKeyspaces(config).isEmpty)
            configuration.rootKeyFile = environment[RootKeyFile.environmentVariable] == nil ? keyPath : nil
            // Absolute: the node's working directory is not the operator's, and backups name absolute paths.
            configuration.backupDirectory = URL(fileURLWithPath: data).appendingPathComponent("backups").standardizedFileURL.path
            switch config.region(regionName)?.store ?? .sqlite {
            case .sqlite:
                guard health == nil else {
                    throw MeridianError(.invalidConfig, "--health-listen is for regions on PostgreSQL, whose standby nodes bind none of the region's addresses; region \(regionName) runs on SQLite, so probe its client address's /health.")
                }
                for (flag, value) in [("--advertise", advertise), ("--relay-listen", relayListen), ("--relay-peer-listen", relayPeerListen)] where value != nil {
                    throw MeridianError(.invalidConfig, "\(flag) is for regions on PostgreSQL, where several nodes share a region; region \(regionName) runs on SQLite, with one node.")
                }
                node = try await RegionNode(configuration: configuration, store: RegionStore.factory(directory: data, logger: logger), logger: logger)
            case .postgres(let settings):
                // Any number of nodes may share the region's database: the one holding its lease serves the region.
                let (configured, logger) = (configuration, logger)
                let standby = try StandbyAddresses(configuration, advertise: advertise, relayListen: relayListen, relayPeerListen: relayPeerListen)
                let table = RegionLeaseTable(region: regionName, node: nodeName ?? ProcessInfo.processInfo.hostName, advertised: standby.advertised)
                leased = LeasedNode(store: settings, table: table,
                                    settings: try DutyLease.Settings(ttlMs: settings.leaseTTLMs, renewEveryMs: settings.leaseTTLMs / 5,
                                                                    marginMs: settings.leaseTTLMs / 5),
                                    logger: logger, healthListen: health, standby: standby,
                                    refusal: config.tls?.clientAPI == true ? nil : RegionRelay.unavailableHTTPAnswer(region: regionName)) { fence, holds throws(MeridianError) in
                    var configuration = configured
                    configuration.holdsDuties = holds
                    return try await RegionNode(configuration: configuration, store: PostgresStore.factory(settings, fence: fence, logger: logger), logger: logger)
                }
            }
        } catch {
            throw CLIFailure((error as? MeridianError)?.message ?? "\(error)")
        }
        if exitWithParent { watchParent() }
        try await node?.run()
        try await leased?.run()
    }
}

/// Polls the parent pid; when the parent is gone, asks this process to shut down gracefully (SIGTERM).
func watchParent() {
    let parent = getppid()
    // Started after the parent already exited (reparented to init): exit now.
    if parent == 1 { kill(getpid(), SIGTERM) }
    Thread.detachNewThread {
        while getppid() == parent { usleep(250_000) }
        kill(getpid(), SIGTERM)
    }
}

struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start every region of a cluster on this machine (the built-in demo when no --config is given).")

    @OptionGroup var cluster: ConfigOption
    @Option(help: "Where the regions keep their data (one sub-directory per region).") var data: String = "meridian-data"
    @Option(help: "Seconds to wait for every region to answer /health.") var startupTimeout: Double = 60
    @Option(help: "Multiply every emulated WAN delay (0.1 for fast experiments).") var latencyScale: Double?
    @Flag(help: "The demo with TLS everywhere and token authentication: the CA, certificates, a signing key and an admin token go in DATA/secure.")
    var secure = false
    @Flag(help: "Start every node with --insecure (protected mode off: an address other machines reach, without auth and TLS).")
    var insecure = false
    @Option(help: ArgumentHelp("Where the demo's regions keep their data: sqlite (a file each) or postgres (a local PostgreSQL server each, made in DATA/REGION-postgres with Debian's postgresql package).",
                               valueName: "kind"))
    var store: String = "sqlite"

    func validate() throws {
        if secure && cluster.config != nil {
            throw ValidationError("--secure sets up the built-in demo; for your own cluster file add auth and tls sections (docs/security.md).")
        }
        guard ["sqlite", "postgres"].contains(store) else { throw ValidationError("--store '\(store)' is not sqlite or postgres.") }
        if store != "sqlite" && cluster.config != nil {
            throw ValidationError("--store sets up the built-in demo; for your own cluster file give each region a store section (docs/scaling-a-region.md).")
        }
    }

    func run() async throws {
        _ = try cluster.load(connecting: false)
        let local: LocalCluster
        var options = LocalCluster.Options(directory: data, latencyScale: latencyScale, startupTimeoutSeconds: startupTimeout)
        options.gateway = true
        var setup: SecureSetup?
        var databases: [PostgresServer] = []
        do {
            if let path = cluster.config {
                let config = try cluster.load()
                if insecure { options.nodeArguments = Dictionary(uniqueKeysWithValues: config.regions.map { ($0.name.rawValue, ["--insecure"]) }) }
                local = try LocalCluster(configPath: path, options: options)
            } else {
                // A fresh secret per run: the demo's session tokens are authenticated, not just checksummed.
                var yaml = DemoCluster.yaml + "\nsession_secret: \(LocalCluster.secret())\n"
                if store == "postgres" {
                    var urls: [RegionName: String] = [:]
                    for region in try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo").regions {
                        let directory = (data as NSString).appendingPathComponent("\(region.name)-postgres")
                        say("starting PostgreSQL for \(region.name) in \(directory)…")
                        let server = try await PostgresServer(directory: directory)
                        databases.append(server)
                        try server.ensureDatabase("meridian")
                        urls[region.name] = "postgres://\(server.user)@127.0.0.1:\(server.port)/meridian?sslmode=disable"
                    }
                    yaml = DemoCluster.withPostgresStores(yaml, urls)
                    // Two nodes per region: the one holding the region's lease serves it, the other takes over.
                    options.standbyRegions = Set(urls.keys)
                }
                if secure {
                    let prepared = try await SecureSetup.prepare(directory: (data as NSString).appendingPathComponent("secure"), yaml: yaml)
                    yaml += prepared.sections
                    // This command's own probes (clocks, pids) present the admin token over HTTPS.
                    ClientCredentials.process = ClientCredentials(token: prepared.adminToken, tls: try ClientTLS(caPath: prepared.caPath))
                    options.gatewayEnvironment = ["MERIDIAN_TOKEN": prepared.adminToken, "MERIDIAN_CACERT": prepared.caPath]
                    setup = prepared
                }
                local = try LocalCluster(yaml: yaml, options: options)
            }
        } catch let error as MeridianError {
            for server in databases { await server.stop() }
            throw CLIFailure(error.message)
        } catch {
            for server in databases { await server.stop() }
            throw CLIFailure("\(error)")
        }
        let config = local.config
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        let stop = StopFlag()
        let signalWatch = Task {
            for await _ in signals {
                stop.set()
                return
            }
        }
        defer { signalWatch.cancel() }

        func stopAll() async {
            // A region that died and was started again by another command (`meridian gameday` restarts the
            // region it kills) is no child of this one: ask it for its pid and stop it too.
            for region in config.regions where local.process(region.name).map({ !$0.isRunning }) ?? false {
                guard let status = await RegionProbe.json(region.client, "/v1/status"), let pid = status["pid"] as? Int32,
                      status["region"] as? String == region.name.rawValue, pid > 1 else { continue }
                kill(pid, SIGTERM)
            }
            await local.stop()
            for server in databases { await server.stop() }
        }

        // The WAN emulator first: the regions' replication streams run through its proxies, and `meridian chaos`
        // works as soon as the regions are up.
        do {
            try await local.start(stop: { stop.isSet })
        } catch {
            await stopAll()
            throw CLIFailure("\(error)")
        }
        if stop.isSet {
            say("interrupted during start-up; stopping \(config.regions.count) regions…")
            await stopAll()
            return
        }

        // A region takes writes once its peers have compared clocks with it (one heartbeat after its
        // streams connect): say the cluster is up only then, so the first write the banner suggests lands.
        let unverified = await RegionProbe.waitForVerifiedClocks(config.regions.map(\.client), timeoutSeconds: startupTimeout, stop: { stop.isSet })
        if stop.isSet {
            say("interrupted during start-up; stopping \(config.regions.count) regions…")
            await stopAll()
            return
        }
        if config.auth != nil && ClientCredentials.process.token == nil {
            say("note: the cluster asks for tokens and this command has none (--token or MERIDIAN_TOKEN), so it did not wait for the regions' clocks")
        }
        for endpoint in unverified {
            say("warning: the region at \(endpoint) has not compared its clock with its peers yet and refuses writes until it does (see /v1/status, clock)")
        }
        say("Meridian cluster '\(config.name)' is up: \(config.regions.count) regions. Ctrl-C stops it.\n")
        let scheme = config.tls?.clientAPI == true ? "https" : "http"
        say("REGION          CLIENT API                  PEER              PID      LOG")
        for region in config.regions {
            say("\(region.name.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0))"
                + "\(scheme)://\(region.client)".padding(toLength: 28, withPad: " ", startingAt: 0)
                + "\(region.peer)".padding(toLength: 18, withPad: " ", startingAt: 0)
                + "\(local.pid(region.name) ?? 0)".padding(toLength: 9, withPad: " ", startingAt: 0) + local.log(region.name))
            if let standby = local.standbyProcess(region.name) {
                say("  standby".padding(toLength: 62, withPad: " ", startingAt: 0)
                    + "\(standby.processIdentifier)".padding(toLength: 9, withPad: " ", startingAt: 0) + local.standbyLog(region.name))
            }
        }
        say("\("gateway".padding(toLength: 16, withPad: " ", startingAt: 0))"
            + "http://\(local.gatewayEndpoint)".padding(toLength: 46, withPad: " ", startingAt: 0)
            + "\(local.gatewayProcess?.processIdentifier ?? 0)".padding(toLength: 9, withPad: " ", startingAt: 0) + local.gatewayLog)
        if !local.options.standbyRegions.isEmpty {
            say("\nEach region runs two nodes on its PostgreSQL: the one holding the region's lease serves it; kill it and the standby takes over within seconds.")
        }
        let first = config.regions[0]
        let last = config.regions[config.regions.count - 1]
        var curlOptions = ""
        if let setup {
            curlOptions = " --cacert \(setup.caPath) -H \"Authorization: Bearer $(cat \(setup.adminTokenPath))\""
            say("TLS and tokens are on: the CA bundle is \(setup.caPath), an admin token (24 h) is in \(setup.adminTokenPath);")
            say("the CLI takes it as MERIDIAN_TOKEN=$(cat \(setup.adminTokenPath)), with --config \(local.configPath) (which names the CA).\n")
        }
        let keyspace = config.keyspaces.first { $0.ack == .async && $0.topology == .multiLeader && $0.residency.regions.count == config.regions.count }?.name.rawValue
            ?? config.keyspaces.first?.name.rawValue ?? "KEYSPACE"
        say("""

            WAN emulator: admin http://\(config.wan.admin), proxies from port \(config.wan.basePort), log \(local.wanLog)

            Try:
              curl\(curlOptions) -X PUT \(scheme)://\(first.client)/v1/kv/\(keyspace)/hello -d world      # write in \(first.name)
              curl\(curlOptions) \(scheme)://\(last.client)/v1/kv/\(keyspace)/hello                       # read in \(last.name)
              curl\(curlOptions.replacingOccurrences(of: " --cacert \(setup?.caPath ?? "")", with: "")) -H 'CF-IPCountry: DE' http://\(local.gatewayEndpoint)/v1/kv/\(keyspace)/hello   # through the gateway: the region nearest Germany
              meridian chaos partition \(first.name) \(last.name)                       # cut the link; then: meridian chaos heal
              \(setup.map { "MERIDIAN_TOKEN=$(cat \($0.adminTokenPath)) meridian status --config \(local.configPath)" } ?? "meridian status") --region \(last.name)
            """)

        // Wait for a signal, or for every region to exit on its own, reporting each exit.
        var exited: Set<RegionName> = []
        while !stop.isSet && exited.count < config.regions.count {
            for region in config.regions.map(\.name) where !exited.contains(region) {
                guard let process = local.process(region), !process.isRunning, !(local.standbyProcess(region)?.isRunning ?? false) else { continue }
                exited.insert(region)
                say("region \(region) exited with status \(process.terminationStatus); see \(local.log(region))")
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        say("\nstopping \(config.regions.count) regions…")
        await stopAll()
        say("stopped.")
    }
}

/// A flag set once from another task.
final class StopFlag: @unchecked Sendable {
    // Safety: `value` is guarded by `lock`.
    private let lock = NSLock()
    private var value = false

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    func set() {
        lock.lock()
        value = true
        lock.unlock()
    }
}
