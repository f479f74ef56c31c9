import ArgumentParser
import Foundation
import Logging
import MeridianCore
import MeridianGateway

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the gateway: one URL for the whole cluster, each request routed to the region the routing section picks.")

    @OptionGroup var cluster: ConfigOption
    @Option(help: "Listen on host:port (default: routing.gateway in the cluster file, else 127.0.0.1:7100).") var listen: String?
    @Option(help: "The CA bundle the regions' HTTPS certificates are checked against (default: MERIDIAN_CACERT, else tls.ca).") var cacert: String?
    @Flag(help: "Exit when the parent process exits (used by `meridian up`).") var exitWithParent = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error.") var logLevel: String = "info"
    @Flag(help: "Listen on an address other machines can reach (the gateway itself speaks plain HTTP: put it behind your TLS terminator).")
    var insecure = false

    func run() async throws {
        let config = try cluster.load(connecting: false)
        var address: Endpoint?
        if let listen {
            guard let parsed = Endpoint(parsing: listen) else { throw ValidationError("--listen '\(listen)' is not host:port.") }
            address = parsed
        }
        var logger = Logger(label: "meridian")
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level '\(logLevel)' is not a log level.") }
        logger.logLevel = level
        let environment = ProcessInfo.processInfo.environment
        let token = cluster.token ?? environment["MERIDIAN_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        let ca = config.tls?.clientAPI == true ? (cacert ?? environment["MERIDIAN_CACERT"] ?? config.tls?.ca) : nil
        let gateway: Gateway
        do throws(MeridianError) {
            let configuration = try GatewayConfiguration(cluster: config, listen: address, token: token, caPath: ca)
            let host = configuration.listen.host
            if !insecure && !(host == "127.0.0.1" || host == "::1" || host == "localhost") {
                throw MeridianError(.invalidConfig, "The gateway speaks plain HTTP and \(configuration.listen) is reachable from other machines: put it behind a TLS terminator on the same host and listen on loopback, or pass --insecure.")
            }
            if config.auth != nil && token == nil {
                logger.warning("the cluster asks for tokens and the gateway has none (--token or MERIDIAN_TOKEN): it cannot follow the regions' topology and routes on its own probes only")
            }
            gateway = try Gateway(configuration: configuration, logger: logger)
        } catch {
            throw CLIFailure(error.message)
        }
        if exitWithParent { watchParent() }
        try await gateway.run()
    }
}
