/// How clients are routed to regions, as the cluster file's `routing` section sets it.
public struct RoutingConfig: Sendable, Hashable {
    /// Consecutive good probes (one per heartbeat interval) a region marked down needs before it is routed to
    /// again (`readmit_probes`).
    public var readmitProbes: Int

    public init(readmitProbes: Int = 10) {
        self.readmitProbes = readmitProbes
    }
}

extension ConfigParser {
    func parseRouting(_ value: YAMLValue, regions: [RegionName]) throws(ConfigProblem) -> RoutingConfig {
        let fields = try value.mapping(allowed: ["readmit_probes"])
        var config = RoutingConfig()
        if let probes = fields["readmit_probes"] { config.readmitProbes = try probes.int(in: 1...1_000) }
        return config
    }
}
