import ArgumentParser
import Foundation
import Hummingbird
import Logging
import MeridianHarness
import MeridianCore
import MeridianWAN

struct WANCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wan", abstract: "Run the WAN emulator: a delaying TCP proxy per directed link between regions, with an admin API.")

    @OptionGroup var cluster: ConfigOption
    @Option(help: "Multiply every delay (tests run at 0.1; default: the file's wan.latency_scale).") var latencyScale: Double?
    @Option(help: "Seed for jitter.") var seed: UInt64 = 1
    @Flag(help: "Exit when the parent process exits (used by `meridian up`).") var exitWithParent = false
    @Option(name: .customLong("gateway"), help: ArgumentHelp(
        "Source-address mode: REGION=HOST:PORT, a listener forwarding to REGION's peer address; the link is told by the connecting address (see --source). Repeat per region.",
        valueName: "region=host:port")) var gatewayArguments: [String] = []
    @Option(name: .customLong("source"), help: ArgumentHelp(
        "Source-address mode: ADDRESS=REGION, the address REGION's processes connect from. Repeat per region.",
        valueName: "address=region")) var sourceArguments: [String] = []

    func validate() throws {
        if let latencyScale, !(latencyScale >= 0 && latencyScale <= 100) { throw ValidationError("--latency-scale must be 0 to 100.") }
        _ = try gateways()
        _ = try sources()
        if gatewayArguments.isEmpty != sourceArguments.isEmpty { throw ValidationError("--gateway and --source go together: source-address mode needs both.") }
    }

    private func gateways() throws -> [RegionName: Endpoint] {
        var gateways: [RegionName: Endpoint] = [:]
        for argument in gatewayArguments {
            let parts = argument.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let region = try? RegionName(parts[0]), let endpoint = Endpoint(parsing: parts[1]) else {
                throw ValidationError("--gateway '\(argument)' is not REGION=HOST:PORT, such as eu-west=10.231.2.1:24002.")
            }
            guard gateways.updateValue(endpoint, forKey: region) == nil else { throw ValidationError("--gateway names \(region) twice.") }
        }
        return gateways
    }

    private func sources() throws -> [String: RegionName] {
        var sources: [String: RegionName] = [:]
        for argument in sourceArguments {
            let parts = argument.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let region = try? RegionName(parts[1]) else {
                throw ValidationError("--source '\(argument)' is not ADDRESS=REGION, such as 10.231.2.2=eu-west.")
            }
            guard sources.updateValue(region, forKey: parts[0]) == nil else { throw ValidationError("--source names \(parts[0]) twice.") }
        }
        return sources
    }

    func run() async throws {
        let config = try cluster.load()
        let emulator: WANEmulator
        do {
            emulator = gatewayArguments.isEmpty
                ? WANEmulator(cluster: config, latencyScale: latencyScale, seed: seed)
                : try WANEmulator(cluster: config, latencyScale: latencyScale, gateways: try gateways(), sources: try sources(), seed: seed)
            try await emulator.start()
        } catch let error as MeridianError {
            throw CLIFailure(error.message)
        }
        if exitWithParent { watchParent() }
        say("WAN emulator: \(emulator.proxies.count) links, latency scale \(latencyScale ?? config.wan.latencyScale), admin http://\(config.wan.admin)")
        say("LINK                          LISTEN            TARGET            RTT ms")
        for proxy in emulator.proxies {
            let rtt = config.wan.rttMs(proxy.link.from, proxy.link.to) ?? 0
            say("\(proxy.link)".padding(toLength: 30, withPad: " ", startingAt: 0)
                + "\(proxy.listen)".padding(toLength: 18, withPad: " ", startingAt: 0)
                + "\(proxy.target)".padding(toLength: 18, withPad: " ", startingAt: 0) + String(format: "%.0f", rtt))
        }
        for gateway in emulator.gateways {
            say("* -> \(gateway.region) (by source)".padding(toLength: 30, withPad: " ", startingAt: 0)
                + "\(gateway.listen)".padding(toLength: 18, withPad: " ", startingAt: 0) + "\(gateway.target)")
        }
        let app = Application(
            router: emulator.adminRouter(),
            configuration: .init(address: .hostname(config.wan.admin.host, port: config.wan.admin.port), serverName: "meridian-wan"),
            logger: Logger(label: "meridian.wan"))
        try await app.runService(gracefulShutdownSignals: [.sigterm, .sigint])
        await emulator.stop()
    }
}

struct Chaos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change the emulated WAN: partition, isolate, heal, latency, status.",
        subcommands: [Partition.self, Isolate.self, Heal.self, Latency.self, Jitter.self, WANStatus.self])

    /// Where the WAN emulator's admin API is.
    struct AdminOption: ParsableArguments {
        @OptionGroup var cluster: ConfigOption
        @Option(help: "The WAN admin API as host:port (default: wan.admin from the cluster file).") var admin: String?

        func post(_ path: String, _ body: [String: Any]) async throws {
            let data = try JSONSerialization.data(withJSONObject: body)
            try await call("POST", path, Array(data))
        }

        func call(_ method: String, _ path: String, _ body: [UInt8]? = nil) async throws {
            let endpoint: Endpoint
            if let admin {
                guard let parsed = Endpoint(parsing: admin) else { throw ValidationError("--admin '\(admin)' is not host:port.") }
                endpoint = parsed
            } else {
                endpoint = try cluster.load().wan.admin
            }
            let connection: HTTPConnection
            do {
                connection = try await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: 10, credentials: .none)
            } catch {
                throw CLIFailure("cannot reach the WAN emulator at \(endpoint): is `meridian wan` (or `meridian up`) running?")
            }
            let result = try await connection.request(method, path, headers: [("Content-Type", "application/json")], body: body)
            await connection.close()
            try report(result, verbose: false, printBody: false)
            try printLinks(result)
        }

        func printLinks(_ result: HTTPResult) throws {
            guard let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any],
                  let links = object["links"] as? [[String: Any]] else { return }
            print("LINK                          ONE-WAY ms  JITTER ms  STATE        CONNS  BYTES")
            for link in links {
                let name = "\(link["from"] as? String ?? "")->\(link["to"] as? String ?? "")"
                let state = (link["partitioned"] as? Bool ?? false) ? "PARTITIONED" : "up"
                print(name.padding(toLength: 30, withPad: " ", startingAt: 0)
                    + String(format: "%10.1f  %9.1f  ", link["one_way_ms"] as? Double ?? 0, link["jitter_ms"] as? Double ?? 0)
                    + state.padding(toLength: 13, withPad: " ", startingAt: 0)
                    + "\(link["connections"] as? Int ?? 0)".padding(toLength: 7, withPad: " ", startingAt: 0)
                    + "\(link["bytes"] as? Int ?? 0)")
            }
        }
    }

    struct Partition: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cut both directions between two regions.")
        @OptionGroup var admin: AdminOption
        @Argument var a: String
        @Argument var b: String
        func run() async throws { try await admin.post("/v1/wan/partition", ["a": a, "b": b]) }
    }

    struct Isolate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cut every link of one region.")
        @OptionGroup var admin: AdminOption
        @Argument var region: String
        func run() async throws { try await admin.post("/v1/wan/isolate", ["region": region]) }
    }

    struct Heal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Heal two regions' links, one region's links, or (no arguments) every link.")
        @OptionGroup var admin: AdminOption
        @Argument var a: String?
        @Argument var b: String?
        func run() async throws {
            var body: [String: Any] = [:]
            if let a { body["a"] = a }
            if let b { body["b"] = b }
            try await admin.post("/v1/wan/heal", body)
        }
    }

    struct Latency: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set the round-trip time between two regions, in ms (before scaling).")
        @OptionGroup var admin: AdminOption
        @Argument var a: String
        @Argument var b: String
        @Argument var rttMs: Double
        func run() async throws { try await admin.post("/v1/wan/latency", ["a": a, "b": b, "rtt_ms": rttMs]) }
    }

    struct Jitter: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make every link's delay vary by ± PERCENT of itself (0 turns jitter off).")
        @OptionGroup var admin: AdminOption
        @Argument var percent: Double
        func run() async throws { try await admin.post("/v1/wan/jitter", ["percent": percent]) }
    }

    struct WANStatus: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Show every link's delay, state and traffic.")
        @OptionGroup var admin: AdminOption
        func run() async throws { try await admin.call("GET", "/v1/wan/status") }
    }
}
