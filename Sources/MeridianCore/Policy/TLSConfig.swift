import Foundation

/// TLS, as the cluster file's `tls` section sets it: mutual TLS on every peer stream (always, once the section is
/// there), and HTTPS on the client API (optionally asking clients for certificates).
///
/// Paths may name `{region}`, which each node replaces with its own region's name; relative paths are read from
/// the cluster file's directory.
public struct TLSConfig: Sendable, Hashable {
    /// Whether the client API asks clients for certificates from the cluster CA.
    public enum ClientCertificates: String, Sendable, Hashable, CaseIterable {
        /// Clients authenticate with tokens only.
        case none
        /// A client may present a certificate; one that does not verify is refused.
        case optional
        /// Every client must present a certificate from the cluster CA.
        case required
    }

    /// The trust bundle: the cluster CA's certificate (two during a rotation).
    public var ca: String
    /// This region's certificate, with `{region}`.
    public var certificate: String
    /// This region's private key, with `{region}`.
    public var key: String
    /// Whether the client API speaks HTTPS (true) or plain HTTP (false: for a TLS-terminating proxy on the same host).
    public var clientAPI: Bool
    /// Client certificates on the client API.
    public var clientCertificates: ClientCertificates
    /// How often each node checks its certificate, key and bundle files for changes (SIGHUP checks at once).
    public var reloadIntervalMs: Int

    public init(ca: String, certificate: String, key: String, clientAPI: Bool = true, clientCertificates: ClientCertificates = .none,
                reloadIntervalMs: Int = 2_000) {
        self.ca = ca
        self.certificate = certificate
        self.key = key
        self.clientAPI = clientAPI
        self.clientCertificates = clientCertificates
        self.reloadIntervalMs = reloadIntervalMs
    }

    /// The certificate file of `region`.
    public func certificatePath(_ region: RegionName) -> String { certificate.replacingOccurrences(of: "{region}", with: region.rawValue) }
    /// The key file of `region`.
    public func keyPath(_ region: RegionName) -> String { key.replacingOccurrences(of: "{region}", with: region.rawValue) }
}

extension ConfigParser {
    func parseTLS(_ value: YAMLValue, directory: String?) throws(ConfigProblem) -> TLSConfig {
        let fields = try value.mapping(allowed: ["ca", "cert", "key", "client_api", "client_certificates", "reload_interval_ms"])
        func path(_ field: String) throws(ConfigProblem) -> String {
            guard let item = fields[field] else {
                throw ConfigProblem(path: value.child(field), message: "name the \(field == "ca" ? "CA bundle" : field == "cert" ? "region certificate" : "region key") file (`meridian certs init` and `certs issue` write them)")
            }
            let text = try item.string()
            guard !text.isEmpty, text.utf8.count <= 4096, !text.contains("\0") else {
                throw ConfigProblem(path: item.path, message: "a file path of 1 to 4096 bytes")
            }
            guard let directory, !text.hasPrefix("/") else { return text }
            return directory.isEmpty ? text : "\(directory)/\(text)"
        }
        var config = TLSConfig(ca: try path("ca"), certificate: try path("cert"), key: try path("key"))
        if let api = fields["client_api"] {
            let text = try api.string()
            guard text == "https" || text == "http" else {
                throw ConfigProblem(path: api.path, message: "'\(text)' is not allowed; use https (the default) or http (only behind a TLS-terminating proxy on the same host)")
            }
            config.clientAPI = text == "https"
        }
        if let certificates = fields["client_certificates"] { config.clientCertificates = try certificates.choice(TLSConfig.ClientCertificates.self) }
        if let interval = fields["reload_interval_ms"] { config.reloadIntervalMs = try interval.int(in: 100...600_000) }
        if !config.clientAPI && config.clientCertificates != .none {
            throw ConfigProblem(path: value.child("client_certificates"), message: "client certificates need client_api: https")
        }
        return config
    }
}
