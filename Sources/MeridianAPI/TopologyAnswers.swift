import MeridianCore

/// The answer of `GET /v1/topology` (and each event of its stream): where every region is served, whether the
/// cluster agrees it is up, who takes each keyspace's writes, where its data may live, and this region's links.
/// Routers (the gateway, GeoDNS, the client libraries) route from it.
public struct TopologyAnswer: Codable, Equatable, Sendable {
    /// One region: its client address and the cluster's verdict on it.
    public struct Region: Codable, Equatable, Sendable {
        public let name: String
        /// The region's client API, as a URL (`http://host:port` or `https://…`).
        public let url: String
        /// `up`, `suspect` (some regions cannot reach it; still routed to) or `down` (not routed to).
        public let health: HealthVerdicts.Verdict
        /// The regions that cannot reach it now.
        public let suspectedBy: [String]
        /// While `down`: good probes still needed before it is routed to again.
        public let readmitProbesLeft: Int?

        public init(name: String, url: String, health: HealthVerdicts.Verdict, suspectedBy: [String], readmitProbesLeft: Int?) {
            self.name = name
            self.url = url
            self.health = health
            self.suspectedBy = suspectedBy
            self.readmitProbesLeft = readmitProbesLeft
        }

        enum CodingKeys: String, CodingKey {
            case name, url, health
            case suspectedBy = "suspected_by"
            case readmitProbesLeft = "readmit_probes_left"
        }
    }

    /// One keyspace: who takes its writes and where its data may live.
    public struct Keyspace: Codable, Equatable, Sendable {
        public let name: String
        public let topology: Topology
        public let replicas: [String]
        /// Single-leader: the leader the answering region knows (absent during an election), and its term.
        public let leader: String?
        public let epoch: UInt64?
        /// Geo-partitioned: the default home and the prefix rules (longest prefix wins).
        public let home: String?
        public let homes: [HomeRule]?
        public let residency: ResidencyPolicy
        /// The consistency level a read gets when it names none.
        public let consistency: ConsistencyLevel

        public init(name: String, topology: Topology, replicas: [String], leader: String?, epoch: UInt64?, home: String?, homes: [HomeRule]?,
                    residency: ResidencyPolicy, consistency: ConsistencyLevel) {
            self.name = name
            self.topology = topology
            self.replicas = replicas
            self.leader = leader
            self.epoch = epoch
            self.home = home
            self.homes = homes
            self.residency = residency
            self.consistency = consistency
        }
    }

    /// One of the answering region's replication links.
    public struct Link: Codable, Equatable, Sendable {
        public let to: String
        /// The answering region's stream to the peer: `up`, `connecting`, `down` or `resync_required`.
        public let state: String
        /// The emulated or configured round trip, in ms.
        public let rttMs: Double?
        /// Entries of the answering region's log the peer has not confirmed.
        public let lagEntries: UInt64
        /// An upper bound on how stale the answering region's copy of the peer's writes is (nil until known).
        public let stalenessMs: UInt64?

        public init(to: String, state: String, rttMs: Double?, lagEntries: UInt64, stalenessMs: UInt64?) {
            self.to = to
            self.state = state
            self.rttMs = rttMs
            self.lagEntries = lagEntries
            self.stalenessMs = stalenessMs
        }

        enum CodingKeys: String, CodingKey {
            case to, state
            case rttMs = "rtt_ms"
            case lagEntries = "lag_entries"
            case stalenessMs = "staleness_ms"
        }
    }

    public let cluster: String
    /// The region that answered.
    public let region: String
    /// Grows whenever a verdict, a suspicion, a leader or a term changes (the stream's event id).
    public let version: UInt64
    /// The answering region hears from a majority of the cluster: its verdicts are the cluster's. A router should
    /// prefer a quorate region's topology.
    public let quorate: Bool
    public let regions: [Region]
    public let keyspaces: [Keyspace]
    public let links: [Link]

    public init(cluster: String, region: String, version: UInt64, quorate: Bool, regions: [Region], keyspaces: [Keyspace], links: [Link]) {
        self.cluster = cluster
        self.region = region
        self.version = version
        self.quorate = quorate
        self.regions = regions
        self.keyspaces = keyspaces
        self.links = links
    }
}
