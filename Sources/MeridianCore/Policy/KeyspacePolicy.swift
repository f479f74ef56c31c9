/// Which regions accept writes for a keyspace.
public enum Topology: String, Sendable, Hashable, CaseIterable, Codable {
    /// One writer region; the others serve reads and forward writes to it.
    case singleLeader = "single-leader"
    /// Every replica region accepts writes (active-active).
    case multiLeader = "multi-leader"
    /// Each key has a home region that takes its writes.
    case geoPartitioned = "geo-partitioned"
}

/// When a write is answered.
public enum AckMode: String, Sendable, Hashable, CaseIterable, Codable {
    /// After the local durable commit.
    case async
    /// After a majority of the keyspace's replica regions applied it durably.
    case majority
    /// After every replica region applied it durably.
    case all

    /// How many replica regions, the origin included, must have applied a write before it is answered.
    public func regionsRequired(replicaCount: Int) -> Int {
        switch self {
        case .async: 1
        case .majority: replicaCount / 2 + 1
        case .all: replicaCount
        }
    }
}

/// How concurrent writes to one key in a multi-leader keyspace are resolved.
/// Where a multi-leader keyspace takes a write that carries an `Idempotency-Key`.
public enum IdempotencyScope: String, Sendable, Hashable, CaseIterable, Codable {
    /// In the region the client called, like any write (no extra hop): a retry is recognized wherever the first
    /// attempt has replicated to, which a retry sent to another region too soon may miss.
    case local
    /// At the key's ``IdempotencyHome`` (one replica chosen from the key), so retries sent anywhere meet there: applied
    /// once across regions, for a round trip to that region on two writes of three.
    case home
}

public enum ConflictPolicy: String, Sendable, Hashable, CaseIterable, Codable {
    /// Highest HLC wins; region name breaks ties.
    case lww
    /// Lowest HLC wins.
    case fww
    /// The write from the region listed first in `priority` wins.
    case regionPriority = "region-priority"
    /// The value's CRDT type merges concurrent operations.
    case crdt
    /// Concurrent versions are kept and returned together.
    case siblings
}

/// How much a read may lag behind writes.
public enum ConsistencyLevel: String, Sendable, Hashable, CaseIterable, Codable {
    /// Linearizable (single-leader keyspaces only).
    case strong
    /// Never staler than a stated bound.
    case bounded
    /// Read-your-writes, monotonic reads and writes, writes-follow-reads for one session token.
    case session
    /// Never a later write of an origin without all its earlier ones.
    case prefix
    /// Local, with no promise beyond convergence.
    case eventual
}

/// How a region outside a keyspace's residency reaches its data.
public enum ResidencyAccess: String, Sendable, Hashable, CaseIterable, Codable {
    /// Forward the request to a region that holds the data.
    case proxy
    /// Refuse the request.
    case deny
}

/// How sensitive a keyspace's data is.
public enum DataClassification: String, Sendable, Hashable, CaseIterable, Codable {
    /// Regulated data, kept inside its residency regions.
    case restricted
    /// Data that may live anywhere in the cluster.
    case global
}

/// Read consistency settings of a keyspace.
public struct ConsistencyPolicy: Sendable, Hashable, Codable {
    /// The level used when a read names none.
    public var `default`: ConsistencyLevel
    /// The levels a read may ask for, in the order of `ConsistencyLevel.allCases`.
    public var allowed: [ConsistencyLevel]

    public init(default level: ConsistencyLevel, allowed: [ConsistencyLevel]) {
        self.default = level
        self.allowed = allowed
    }
}

/// Where a keyspace's data may live and how other regions reach it.
public struct ResidencyPolicy: Sendable, Hashable, Codable {
    /// The regions allowed to hold the data.
    public var regions: [RegionName]
    /// How other regions reach the data.
    public var access: ResidencyAccess
    /// How sensitive the data is.
    public var classification: DataClassification
    /// How values are kept at rest and between regions (`sealed` by default for restricted data).
    public var encryption: ValueEncryption = .none
    /// How a key's subject (the unit of erasure) is found.
    public var subject: SubjectRule = .keyPrefix(separator: "/", depth: 1)

    enum CodingKeys: String, CodingKey {
        case regions, access, classification, encryption, subject
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        regions = try container.decode([RegionName].self, forKey: .regions)
        access = try container.decode(ResidencyAccess.self, forKey: .access)
        classification = try container.decode(DataClassification.self, forKey: .classification)
        encryption = try container.decodeIfPresent(ValueEncryption.self, forKey: .encryption) ?? .none
        subject = try container.decodeIfPresent(SubjectRule.self, forKey: .subject) ?? .keyPrefix(separator: "/", depth: 1)
    }

    /// The subject rule is shown only for a sealed keyspace, where it means something.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(regions, forKey: .regions)
        try container.encode(access, forKey: .access)
        try container.encode(classification, forKey: .classification)
        try container.encode(encryption, forKey: .encryption)
        if encryption == .sealed { try container.encode(subject, forKey: .subject) }
    }

    public init(regions: [RegionName], access: ResidencyAccess, classification: DataClassification,
                encryption: ValueEncryption = .none, subject: SubjectRule = .keyPrefix(separator: "/", depth: 1)) {
        self.regions = regions
        self.access = access
        self.classification = classification
        self.encryption = encryption
        self.subject = subject
    }
}

/// Leader failover settings of a single-leader keyspace.
public struct FailoverPolicy: Sendable, Hashable, Codable {
    /// Regions in the order they take leadership.
    public var order: [RegionName]
    /// Heartbeat intervals missed before a leader is suspected.
    public var missedHeartbeats: Int
    /// Whether leadership returns to the first region of `order` once it is healthy and caught up.
    public var failback: Bool

    enum CodingKeys: String, CodingKey {
        case order
        case missedHeartbeats = "missed_heartbeats"
        case failback
    }
}

/// Read caching settings of a keyspace.
public struct CachePolicy: Sendable, Hashable, Codable {
    /// How long, in ms, a read may be served from cache and by HTTP caches (0 disables caching).
    public var ttlMs: UInt64

    public init(ttlMs: UInt64) {
        self.ttlMs = ttlMs
    }

    enum CodingKeys: String, CodingKey {
        case ttlMs = "ttl_ms"
    }
}

/// A key prefix whose keys have their home in one region (geo-partitioned keyspaces).
public struct HomeRule: Sendable, Hashable, Codable {
    /// Keys starting with this prefix belong to `region`.
    public var prefix: String
    /// The home region of those keys.
    public var region: RegionName
}

/// Everything that governs one keyspace. Field names match the cluster YAML file.
public struct KeyspacePolicy: Sendable, Hashable, Encodable {
    /// The keyspace's name.
    public var name: KeyspaceName
    /// Which regions accept writes.
    public var topology: Topology
    /// The writer region (single-leader only).
    public var leader: RegionName?
    /// The regions that hold a replica, in name order.
    public var replicas: [RegionName]
    /// When writes are answered, unless a request asks otherwise.
    public var ack: AckMode
    /// How concurrent writes resolve (multi-leader only).
    public var conflict: ConflictPolicy?
    /// Region order for `region-priority` conflicts.
    public var priority: [RegionName]?
    /// The default home region of keys (geo-partitioned only).
    public var home: RegionName?
    /// Prefix rules that override `home`, longest prefix first.
    public var homes: [HomeRule]?
    /// Read consistency settings.
    public var consistency: ConsistencyPolicy
    /// Where the data may live.
    public var residency: ResidencyPolicy
    /// Leader failover (single-leader only).
    public var failover: FailoverPolicy?
    /// Read caching.
    public var cache: CachePolicy
    /// Where idempotent writes are taken (multi-leader only; the others have one writer per key).
    public var idempotency: IdempotencyScope = .local

    /// Creates a policy (the cluster file's parser validates; this does not: a client library rebuilds one from a
    /// region's topology to route by it).
    public init(name: KeyspaceName, topology: Topology, leader: RegionName?, replicas: [RegionName], ack: AckMode, conflict: ConflictPolicy?,
                priority: [RegionName]?, home: RegionName?, homes: [HomeRule]?, consistency: ConsistencyPolicy, residency: ResidencyPolicy,
                failover: FailoverPolicy?, cache: CachePolicy) {
        self.name = name
        self.topology = topology
        self.leader = leader
        self.replicas = replicas
        self.ack = ack
        self.conflict = conflict
        self.priority = priority
        self.home = home
        self.homes = homes
        self.consistency = consistency
        self.residency = residency
        self.failover = failover
        self.cache = cache
    }

    /// The region that takes writes for `key`: the leader, the key's home, or nil when every replica does.
    public func writeRegion(for key: Key) -> RegionName? {
        switch topology {
        case .singleLeader:
            return leader
        case .multiLeader:
            return nil
        case .geoPartitioned:
            let rule = (homes ?? []).filter { key.rawValue.hasPrefix($0.prefix) }.max { $0.prefix.utf8.count < $1.prefix.utf8.count }
            return rule?.region ?? home
        }
    }

    /// Whether `region` holds a replica of this keyspace.
    public func isReplica(_ region: RegionName) -> Bool { replicas.contains(region) }

    enum CodingKeys: String, CodingKey {
        case name, topology, leader, replicas, ack, conflict, priority, home, homes, consistency, residency, failover, cache
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name.rawValue, forKey: .name)
        try container.encode(topology, forKey: .topology)
        try container.encodeIfPresent(leader, forKey: .leader)
        try container.encode(replicas, forKey: .replicas)
        try container.encode(ack, forKey: .ack)
        try container.encodeIfPresent(conflict, forKey: .conflict)
        try container.encodeIfPresent(priority, forKey: .priority)
        try container.encodeIfPresent(home, forKey: .home)
        try container.encodeIfPresent(homes, forKey: .homes)
        try container.encode(consistency, forKey: .consistency)
        try container.encode(residency, forKey: .residency)
        try container.encodeIfPresent(failover, forKey: .failover)
        try container.encode(cache, forKey: .cache)
    }
}
