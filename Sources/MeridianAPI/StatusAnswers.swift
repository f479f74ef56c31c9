import MeridianCore

/// The answer of `GET /v1/status`: this region's keyspaces, replication peers, logs, clock, storage and limits.
public struct StatusAnswer: Codable, Equatable, Sendable {
    /// One keyspace as this region takes part in it.
    public struct KeyspaceStatus: Codable, Equatable, Sendable {
        public let name: String
        public let topology: String
        public let role: String
        public let epoch: UInt64?
        /// Single-leader: the leader this region knows (absent while an election runs), and whether this region,
        /// leading, holds its lease now.
        public let leader: String?
        public let lease: Bool?
        public let keys: Int

        public init(name: String, topology: String, role: String, epoch: UInt64?, leader: String?, lease: Bool?, keys: Int) {
            self.name = name
            self.topology = topology
            self.role = role
            self.epoch = epoch
            self.leader = leader
            self.lease = lease
            self.keys = keys
        }
    }

    /// Replication between this region and one peer, both ways.
    public struct PeerStatus: Codable, Equatable, Sendable {
        /// This region's stream of its own log to the peer.
        public let region: String
        public let client: String
        public let peer: String
        public let rttMs: Double?
        /// `up`, `connecting`, `down` or `resync_required`.
        public let link: String
        /// How long the oldest entry the peer has not confirmed has waited (0 when caught up).
        public let lagMs: Double?
        public let lagEntries: UInt64
        /// The peer has durably applied this region's log up to here.
        public let cursor: UInt64
        public let lastError: String?
        /// The peer's stream of its log into this region.
        public let inbound: InboundStatus

        public init(region: String, client: String, peer: String, rttMs: Double?, link: String, lagMs: Double?, lagEntries: UInt64,
                    cursor: UInt64, lastError: String?, inbound: InboundStatus) {
            self.region = region
            self.client = client
            self.peer = peer
            self.rttMs = rttMs
            self.link = link
            self.lagMs = lagMs
            self.lagEntries = lagEntries
            self.cursor = cursor
            self.lastError = lastError
            self.inbound = inbound
        }

        enum CodingKeys: String, CodingKey {
            case region, client, peer, link, cursor, inbound
            case rttMs = "rtt_ms"
            case lagMs = "lag_ms"
            case lagEntries = "lag_entries"
            case lastError = "last_error"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            region = try container.decode(String.self, forKey: .region)
            client = try container.decode(String.self, forKey: .client)
            peer = try container.decode(String.self, forKey: .peer)
            rttMs = try container.decodeIfPresent(Double.self, forKey: .rttMs)
            link = try container.decode(String.self, forKey: .link)
            lagMs = try container.decodeIfPresent(Double.self, forKey: .lagMs)
            lagEntries = try container.decode(UInt64.self, forKey: .lagEntries)
            cursor = try container.decode(UInt64.self, forKey: .cursor)
            lastError = try container.decodeIfPresent(String.self, forKey: .lastError)
            inbound = try container.decode(InboundStatus.self, forKey: .inbound)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(region, forKey: .region)
            try container.encode(client, forKey: .client)
            try container.encode(peer, forKey: .peer)
            try container.encode(rttMs, forKey: .rttMs)
            try container.encode(link, forKey: .link)
            try container.encode(lagMs, forKey: .lagMs)
            try container.encode(lagEntries, forKey: .lagEntries)
            try container.encode(cursor, forKey: .cursor)
            try container.encode(lastError, forKey: .lastError)
            try container.encode(inbound, forKey: .inbound)
        }
    }

    /// The peer's stream of its log into this region.
    public struct InboundStatus: Codable, Equatable, Sendable {
        /// `up` while the peer's stream is connected and heard from.
        public let link: String
        /// This region has applied the peer's log up to here.
        public let applied: UInt64
        /// The peer's log end, from its latest heartbeat.
        public let originLog: UInt64
        public let lagEntries: UInt64
        /// Time from an entry's commit at the peer to its apply here, since this node started.
        public let applyLagMs: LagSummary
        /// An upper bound on how stale this region's copy of the peer's writes is now (what bounded reads
        /// are checked against); nil until the peer's heartbeats have echoed one of our acks.
        public let stalenessMs: UInt64?

        public init(link: String, applied: UInt64, originLog: UInt64, lagEntries: UInt64, applyLagMs: LagSummary, stalenessMs: UInt64?) {
            self.link = link
            self.applied = applied
            self.originLog = originLog
            self.lagEntries = lagEntries
            self.applyLagMs = applyLagMs
            self.stalenessMs = stalenessMs
        }

        enum CodingKeys: String, CodingKey {
            case link, applied
            case originLog = "origin_log"
            case lagEntries = "lag_entries"
            case applyLagMs = "apply_lag_ms"
            case stalenessMs = "staleness_ms"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            link = try container.decode(String.self, forKey: .link)
            applied = try container.decode(UInt64.self, forKey: .applied)
            originLog = try container.decode(UInt64.self, forKey: .originLog)
            lagEntries = try container.decode(UInt64.self, forKey: .lagEntries)
            applyLagMs = try container.decode(LagSummary.self, forKey: .applyLagMs)
            stalenessMs = try container.decodeIfPresent(UInt64.self, forKey: .stalenessMs)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(link, forKey: .link)
            try container.encode(applied, forKey: .applied)
            try container.encode(originLog, forKey: .originLog)
            try container.encode(lagEntries, forKey: .lagEntries)
            try container.encode(applyLagMs, forKey: .applyLagMs)
            try container.encode(stalenessMs, forKey: .stalenessMs)
        }
    }

    /// A latency distribution, in ms.
    public struct LagSummary: Codable, Equatable, Sendable {
        public let samples: UInt64
        public let p50: UInt64
        public let p99: UInt64
        public let max: UInt64
        /// [percentile, ms] points of the whole distribution (for benchmark plots).
        public let distribution: [[Double]]

        /// The percentiles `distribution` names, before its last point (100, the maximum).
        public static let percentiles: [Double] = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9]

        public init(samples: UInt64, p50: UInt64, p99: UInt64, max: UInt64, distribution: [[Double]]) {
            self.samples = samples
            self.p50 = p50
            self.p99 = p99
            self.max = max
            self.distribution = distribution
        }
    }

    /// This region's clock against its peers': beyond `max_offset_ms` from half the cluster it is fenced
    /// (no writes, no leading).
    public struct ClockStatus: Codable, Equatable, Sendable {
        /// The bracket of one peer's clock.
        public struct PeerOffset: Codable, Equatable, Sendable {
            /// The peer's clock minus this region's lies in [low_ms, high_ms] (from the latest heartbeat).
            public let lowMs: Int64
            public let highMs: Int64

            public init(lowMs: Int64, highMs: Int64) {
                self.lowMs = lowMs
                self.highMs = highMs
            }

            enum CodingKeys: String, CodingKey {
                case lowMs = "low_ms"
                case highMs = "high_ms"
            }
        }

        /// `ok`, `unverified` or `fenced`.
        public let state: String
        public let maxOffsetMs: UInt64
        /// Added to this host's clock by `--clock-offset-ms` (fault injection); 0 normally.
        public let injectedOffsetMs: Int64
        public let peers: [String: PeerOffset]
        /// Why the region is fenced, as writes are told (null when `ok`).
        public let reason: String?

        public init(state: String, maxOffsetMs: UInt64, injectedOffsetMs: Int64, peers: [String: PeerOffset], reason: String?) {
            self.state = state
            self.maxOffsetMs = maxOffsetMs
            self.injectedOffsetMs = injectedOffsetMs
            self.peers = peers
            self.reason = reason
        }

        enum CodingKeys: String, CodingKey {
            case state, peers, reason
            case maxOffsetMs = "max_offset_ms"
            case injectedOffsetMs = "injected_offset_ms"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            state = try container.decode(String.self, forKey: .state)
            maxOffsetMs = try container.decode(UInt64.self, forKey: .maxOffsetMs)
            injectedOffsetMs = try container.decode(Int64.self, forKey: .injectedOffsetMs)
            peers = try container.decode([String: PeerOffset].self, forKey: .peers)
            reason = try container.decodeIfPresent(String.self, forKey: .reason)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(state, forKey: .state)
            try container.encode(maxOffsetMs, forKey: .maxOffsetMs)
            try container.encode(injectedOffsetMs, forKey: .injectedOffsetMs)
            try container.encode(peers, forKey: .peers)
            try container.encode(reason, forKey: .reason)
        }
    }

    /// Whether this region's own writes commit: `ok`, or the latest commit's failure (`full`, `read_only`,
    /// `failing`) until one succeeds. Reads are served either way.
    public struct StorageStatus: Codable, Equatable, Sendable {
        public let state: String
        public let reason: String?

        public init(state: String, reason: String?) {
            self.state = state
            self.reason = reason
        }

        enum CodingKeys: String, CodingKey { case state, reason }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            state = try container.decode(String.self, forKey: .state)
            reason = try container.decodeIfPresent(String.self, forKey: .reason)
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(state, forKey: .state)
            try container.encode(reason, forKey: .reason)
        }
    }

    public let region: String
    public let cluster: String
    /// The node's process id (so a local game day can kill and restart it).
    public let pid: Int32
    public let uptimeMs: UInt64
    public let keyspaces: [KeyspaceStatus]
    public let peers: [PeerStatus]
    /// Each region's log end as held here.
    public let log: [String: UInt64]
    public let clock: ClockStatus
    public let storage: StorageStatus
    public let limits: Limits

    public init(region: String, cluster: String, pid: Int32, uptimeMs: UInt64, keyspaces: [KeyspaceStatus], peers: [PeerStatus],
                log: [String: UInt64], clock: ClockStatus, storage: StorageStatus, limits: Limits) {
        self.region = region
        self.cluster = cluster
        self.pid = pid
        self.uptimeMs = uptimeMs
        self.keyspaces = keyspaces
        self.peers = peers
        self.log = log
        self.clock = clock
        self.storage = storage
        self.limits = limits
    }

    enum CodingKeys: String, CodingKey {
        case region, cluster, keyspaces, peers, log, clock, storage, limits
        case pid
        case uptimeMs = "uptime_ms"
    }
}
