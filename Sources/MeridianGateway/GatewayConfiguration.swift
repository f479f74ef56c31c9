import AsyncHTTPClient
import Foundation
import MeridianCore
import NIOSSL

/// Everything the gateway needs to start.
public struct GatewayConfiguration: Sendable {
    /// The cluster file: its regions, keyspaces and routing section.
    public let cluster: ClusterConfig
    /// Where the gateway listens.
    public let listen: Endpoint
    /// The token the gateway presents to read the regions' topology (client requests carry their own).
    public let token: String?
    /// The CA bundle the regions' HTTPS certificates are checked against (nil: the regions speak plain HTTP).
    public let caPath: String?
    /// The network prefix table of `routing.ip_prefixes`, loaded.
    public let prefixes: PrefixTable?

    /// Reads the prefix table, if the routing section names one.
    /// - Throws: `MeridianError` when the table cannot be read or parsed, or the regions speak HTTPS with no CA bundle.
    public init(cluster: ClusterConfig, listen: Endpoint? = nil, token: String? = nil, caPath: String? = nil, prefixes given: PrefixTable? = nil) throws(MeridianError) {
        self.cluster = cluster
        self.listen = listen ?? cluster.routing.gateway ?? Endpoint(host: "127.0.0.1", port: 7100)
        self.token = token
        self.caPath = caPath
        if let given {
            prefixes = given
        } else if let file = cluster.routing.ipPrefixes {
            let text: String
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                throw MeridianError(.invalidConfig, "routing.ip_prefixes: cannot read \(file): \(error.localizedDescription)")
            }
            prefixes = try PrefixTable(csv: text, file: file)
        } else {
            prefixes = nil
        }
        if cluster.tls?.clientAPI == true && caPath == nil {
            throw MeridianError(.invalidConfig, "The regions speak HTTPS (tls.client_api): give the gateway the cluster's CA bundle (--cacert or MERIDIAN_CACERT).")
        }
    }
}
