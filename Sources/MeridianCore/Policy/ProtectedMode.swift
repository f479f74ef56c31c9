/// Protected mode, as Redis has it: a node reachable from other machines must not start open to anyone. A
/// node whose client or peer address is not a loopback address refuses to start unless the cluster file turns
/// on both authentication (`auth`) and TLS (`tls`, with HTTPS on the client API); `--insecure` overrides it.
public enum ProtectedMode {
    /// Whether `host` names only this machine: `localhost`, `127.0.0.0/8`, or `::1`.
    public static func isLoopback(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if bare == "localhost" || bare == "::1" || bare == "0:0:0:0:0:0:0:1" { return true }
        let octets = bare.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }

    /// Checks that `region` may start with this configuration.
    /// - Parameter clientAddress: The client API's address when it overrides the cluster file's.
    /// - Throws: `MeridianError` `invalid_config` saying exactly what to add.
    public static func check(_ config: ClusterConfig, region: RegionName, clientAddress: Endpoint? = nil) throws(MeridianError) {
        guard let own = config.region(region) else { return }
        let exposed = [clientAddress ?? own.client, own.peer].filter { !isLoopback($0.host) }
        guard !exposed.isEmpty else { return }
        var missing: [String] = []
        if config.auth == nil {
            missing.append("an auth section (`meridian token keygen` prints one) with a session_secret")
        }
        if let tls = config.tls {
            if !tls.clientAPI { missing.append("tls.client_api: https") }
        } else {
            missing.append("a tls section naming the CA bundle and each region's certificate and key (`meridian certs init`, then `meridian certs issue --all`)")
        }
        guard !missing.isEmpty else { return }
        throw MeridianError(.invalidConfig, """
            Protected mode: \(region) listens on \(exposed.map(\.description).joined(separator: " and ")), which other machines can reach, \
            but the cluster file has no \(missing.joined(separator: ", and no ")). Add \(missing.count == 1 ? "it" : "them") (see docs/security.md), \
            bind to 127.0.0.1, or start with --insecure to serve anyone who can reach the node.
            """, context: ["region": region.rawValue])
    }
}
