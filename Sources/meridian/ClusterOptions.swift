import ArgumentParser
import Foundation
import MeridianHarness
import MeridianCore

/// `--config FILE`, shared by every command that needs the cluster file (the built-in demo when absent).
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The cluster YAML file (default: the built-in demo cluster, see `meridian config demo`).")
    var config: String?

    @Option(name: .long, help: ArgumentHelp("The client token requests carry, when the cluster has authentication on (default: MERIDIAN_TOKEN).",
                                            valueName: "token"))
    var token: String?

    /// Every connection this process opens to a node presents `--token` (else `MERIDIAN_TOKEN`).
    func validate() throws {
        if let token { ClientCredentials.process.token = token.isEmpty ? nil : token }
    }

    /// The cluster file; `connecting`: this command talks to the regions (so their client API's TLS is set up).
    func load(connecting: Bool = true) throws -> ClusterConfig {
        guard let path = config else {
            // The built-in demo speaks plain HTTP, unless MERIDIAN_CACERT says the regions answer HTTPS (`up --secure`).
            if connecting, let ca = ProcessInfo.processInfo.environment["MERIDIAN_CACERT"], ClientCredentials.process.tls == nil {
                do { ClientCredentials.process.tls = try ClientTLS(caPath: ca) } catch { throw ValidationError("\(error)") }
            }
            return try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "<demo>")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("Cannot read the cluster file \(path).")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("\(path) is not UTF-8 text.")
        }
        let config: ClusterConfig
        do {
            config = try ClusterConfig.parse(yaml: text, file: path)
        } catch {
            throw ValidationError(error.message)
        }
        // A cluster whose client API speaks HTTPS is verified with its own CA bundle (or MERIDIAN_CACERT), and
        // MERIDIAN_CERT / MERIDIAN_KEY present a client certificate where the API asks for one.
        if connecting, let tls = config.tls, tls.clientAPI, ClientCredentials.process.tls == nil {
            let environment = ProcessInfo.processInfo.environment
            do {
                ClientCredentials.process.tls = try ClientTLS(caPath: environment["MERIDIAN_CACERT"] ?? tls.ca, certificatePath: environment["MERIDIAN_CERT"],
                                                              keyPath: environment["MERIDIAN_KEY"])
            } catch {
                throw ValidationError("\(error)")
            }
        }
        return config
    }
}

/// Which node a client command talks to.
struct TargetOptions: ParsableArguments {
    @OptionGroup var cluster: ConfigOption

    @Option(name: .long, help: "The region to talk to, by name from the cluster file (default: the first region).")
    var region: String?

    @Option(name: .long, help: "The node's address as host:port (overrides --region).")
    var endpoint: String?

    func resolve() throws -> Endpoint {
        if let endpoint {
            let trimmed = endpoint.replacingOccurrences(of: "http://", with: "")
            guard let parsed = Endpoint(parsing: trimmed.hasSuffix("/") ? String(trimmed.dropLast()) : trimmed) else {
                throw ValidationError("--endpoint '\(endpoint)' is not host:port.")
            }
            return parsed
        }
        let config = try cluster.load()
        guard let name = region else { return config.regions[0].client }
        let regionName: RegionName
        do { regionName = try RegionName(name) } catch { throw ValidationError(error.message) }
        guard let region = config.region(regionName) else {
            throw ValidationError("Region '\(name)' is not in the cluster; regions are \(config.regions.map(\.name.rawValue).joined(separator: ", ")).")
        }
        return region.client
    }

    func connect() async throws -> HTTPConnection {
        let target = try resolve()
        do {
            return try await HTTPConnection.connect(host: target.host, port: target.port, timeoutSeconds: 30)
        } catch {
            throw CLIFailure("cannot reach a Meridian node at \(target): is `meridian up` running?")
        }
    }
}

/// Percent-encodes one path segment (keys may hold `/`, which stays as is so paths read naturally).
func pathEncoded(_ text: String) -> String {
    var allowed = CharacterSet.urlPathAllowed
    allowed.remove(charactersIn: "?#%")
    return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
}

func queryEncoded(_ text: String) -> String {
    var allowed = CharacterSet.urlQueryAllowed
    allowed.remove(charactersIn: "&=+#%")
    return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
}

/// A failure the CLI reports as one line on stderr, exiting with status 1.
struct CLIFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints a line straight to standard output, unbuffered, so long-running commands (up, wan) show their
/// tables at once even when their output goes to a file or pipe.
func say(_ line: String = "") {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

extension Duration {
    /// The duration in seconds, for figures.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
