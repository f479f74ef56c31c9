import Crypto
import Yams

/// A `host:port` address.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible, Encodable {
    /// Host name or IP address.
    public let host: String
    /// TCP port, 1 to 65535.
    public let port: Int

    /// Creates an endpoint.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`; nil when malformed.
    public init?(parsing text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let host = String(text[..<colon])
        guard !host.isEmpty, host.utf8.count <= 253, !host.contains(where: { $0.isWhitespace }),
              let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port)
        else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { "\(host):\(port)" }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// One region of the cluster and where it listens.
public struct RegionConfig: Sendable, Hashable, Encodable {
    /// The region's name.
    public let name: RegionName
    /// Where the region serves the client HTTP API.
    public let client: Endpoint
    /// Where the region accepts replication streams from peers.
    public let peer: Endpoint
    /// Where the region keeps its data.
    public var store: RegionStoreConfig = .sqlite
}

/// The emulated WAN between regions.
public struct WANConfig: Sendable, Hashable {
    /// Round-trip time in ms per unordered pair of regions.
    public var rttMs: [RegionPair: Double]
    /// Multiplies every emulated delay (tests run at 0.1).
    public var latencyScale: Double
    /// Random extra one-way delay, up to this many ms.
    public var jitterMs: Double
    /// Where the WAN emulator serves its admin API (partition, heal, latency, status).
    public var admin: Endpoint
    /// The first port of the emulator's proxies: one per directed link, in `WANTable.links` order, on the admin host.
    public var basePort: Int

    /// The configured round-trip time between two regions (0 within one region, nil when not configured).
    public func rttMs(_ a: RegionName, _ b: RegionName) -> Double? {
        a == b ? 0 : rttMs[RegionPair(a, b)]
    }

    /// The round trip to allow for in a timeout, in whole ms: the configured RTT at real scale or slower (a
    /// cluster run at a tenth of its latency keeps its real timeouts), 0 when not configured.
    public func timeoutRttMs(_ a: RegionName, _ b: RegionName) -> UInt64 {
        UInt64(((rttMs(a, b) ?? 0) * max(latencyScale, 1)).rounded(.up))
    }
}

/// An unordered pair of distinct regions.
public struct RegionPair: Sendable, Hashable, CustomStringConvertible {
    /// The region whose name sorts first.
    public let low: RegionName
    /// The region whose name sorts last.
    public let high: RegionName

    /// Creates a pair; the order of the arguments does not matter.
    public init(_ a: RegionName, _ b: RegionName) {
        (low, high) = a < b ? (a, b) : (b, a)
    }

    public var description: String { "\(low)~\(high)" }
}

/// The whole cluster: regions, the emulated WAN, limits and keyspaces, as read from one YAML file.
public struct ClusterConfig: Sendable {
    /// A name for the cluster, shown in status.
    public let name: String
    /// Every region, in file order.
    public let regions: [RegionConfig]
    /// The emulated WAN.
    public let wan: WANConfig
    /// Size and count limits for every node.
    public let limits: Limits
    /// Every keyspace, in file order.
    public let keyspaces: [KeyspacePolicy]
    /// The shared secret that authenticates session tokens (`session_secret`), if the file sets one.
    public let sessionSecret: String?
    /// Client authentication (`auth`); nil: the client API is open to anyone who can reach it.
    public let auth: AuthConfig?
    /// TLS between regions and on the client API (`tls`); nil: plaintext.
    public let tls: TLSConfig?
    /// Health verdicts and client routing (`routing`).
    public let routing: RoutingConfig
    /// SHA-256 of the cluster file's text, in hex (empty for a configuration built in code).
    public private(set) var sourceDigest = ""

    /// The key session tokens are authenticated with: from `session_secret`, or else from the cluster name.
    public var sessionKey: SessionKey { sessionSecret.map { SessionKey(secret: $0) } ?? SessionKey(clusterName: name) }

    /// Creates a configuration (the parser validates; this does not).
    public init(name: String, regions: [RegionConfig], wan: WANConfig, limits: Limits, keyspaces: [KeyspacePolicy], sessionSecret: String? = nil,
                auth: AuthConfig? = nil, tls: TLSConfig? = nil, routing: RoutingConfig = RoutingConfig()) {
        self.auth = auth
        self.routing = routing
        self.tls = tls
        self.name = name
        self.regions = regions
        self.wan = wan
        self.limits = limits
        self.keyspaces = keyspaces
        self.sessionSecret = sessionSecret
    }

    /// The region with this name, if the cluster has one.
    public func region(_ name: RegionName) -> RegionConfig? { regions.first { $0.name == name } }

    /// The keyspace with this name, if the cluster has one.
    public func keyspace(_ name: KeyspaceName) -> KeyspacePolicy? { keyspaces.first { $0.name == name } }

    /// Parses and validates a cluster file.
    /// - Parameters:
    ///   - yaml: The file's text.
    ///   - file: The file's name, used in error messages.
    /// - Throws: `MeridianError` with code `invalid_config` whose message names the file, the path in it and what is allowed.
    public static func parse(yaml: String, file: String) throws(MeridianError) -> ClusterConfig {
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: yaml) else {
                throw ConfigProblem(path: "", message: "the file is empty; start from `meridian config demo`")
            }
            root = node
        } catch let problem as ConfigProblem {
            throw problem.error(file: file)
        } catch {
            throw MeridianError(.invalidConfig, "\(file): not valid YAML: \(error)", context: ["file": file])
        }
        do {
            // Relative paths in the file (certificates) are read from the file's directory.
            let directory: String? = file.hasPrefix("<") ? nil : (file.contains("/") ? String(file[..<file.lastIndex(of: "/")!]) : "")
            var config = try ConfigParser(root: YAMLValue(node: root, path: ""), directory: directory).parse()
            config.sourceDigest = Hex.encode(SHA256.hash(data: Array(yaml.utf8)))
            return config
        } catch {
            throw error.error(file: file)
        }
    }
}

/// A problem at one path in a config file.
struct ConfigProblem: Error {
    let path: String
    let message: String

    func error(file: String) -> MeridianError {
        let location = path.isEmpty ? file : "\(file): \(path)"
        return MeridianError(.invalidConfig, "\(location): \(message)", context: ["file": file, "path": path])
    }
}

/// A YAML node together with its path from the document root, for error messages.
struct YAMLValue {
    let node: Node
    let path: String

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func mapping(allowed: [String]) throws(ConfigProblem) -> [String: YAMLValue] {
        guard case .mapping(let mapping) = node else {
            throw ConfigProblem(path: path, message: "expected a mapping with fields \(allowed.joined(separator: ", "))")
        }
        var result: [String: YAMLValue] = [:]
        for (keyNode, valueNode) in mapping {
            guard let key = keyNode.string else { throw ConfigProblem(path: path, message: "field names must be strings") }
            guard allowed.contains(key) else {
                throw ConfigProblem(path: child(key), message: "unknown field '\(key)'; allowed fields are \(allowed.joined(separator: ", "))")
            }
            guard result[key] == nil else { throw ConfigProblem(path: child(key), message: "the field is given twice") }
            result[key] = YAMLValue(node: valueNode, path: child(key))
        }
        return result
    }

    /// A mapping whose field names are data (countries, keyspaces), in file order.
    func entries(what: String) throws(ConfigProblem) -> [(String, YAMLValue)] {
        guard case .mapping(let mapping) = node else { throw ConfigProblem(path: path, message: "expected a mapping of \(what)") }
        var result: [(String, YAMLValue)] = []
        for (keyNode, valueNode) in mapping {
            guard let key = keyNode.string else { throw ConfigProblem(path: path, message: "field names must be strings") }
            guard !result.contains(where: { $0.0 == key }) else { throw ConfigProblem(path: child(key), message: "'\(key)' is given twice") }
            result.append((key, YAMLValue(node: valueNode, path: child(key))))
        }
        return result
    }

    /// A `host:port` address.
    func endpoint() throws(ConfigProblem) -> Endpoint {
        let text = try string()
        guard let endpoint = Endpoint(parsing: text) else {
            throw ConfigProblem(path: path, message: "'\(text)' is not an address; use host:port, such as 127.0.0.1:7100")
        }
        return endpoint
    }

    func sequence() throws(ConfigProblem) -> [YAMLValue] {
        guard case .sequence(let sequence) = node else { throw ConfigProblem(path: path, message: "expected a list") }
        return sequence.enumerated().map { YAMLValue(node: $0.element, path: "\(path)[\($0.offset)]") }
    }

    func string() throws(ConfigProblem) -> String {
        guard case .scalar(let scalar) = node else { throw ConfigProblem(path: path, message: "expected a text value") }
        return scalar.string
    }

    func int(in range: ClosedRange<Int>) throws(ConfigProblem) -> Int {
        guard case .scalar = node, let value = node.int else {
            throw ConfigProblem(path: path, message: "expected a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        guard range.contains(value) else {
            throw ConfigProblem(path: path, message: "\(value) is out of range; use \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    func double(in range: ClosedRange<Double>) throws(ConfigProblem) -> Double {
        guard case .scalar = node, let value = node.float, value.isFinite else {
            throw ConfigProblem(path: path, message: "expected a number from \(range.lowerBound) to \(range.upperBound)")
        }
        guard range.contains(value) else {
            throw ConfigProblem(path: path, message: "\(value) is out of range; use \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    func bool() throws(ConfigProblem) -> Bool {
        guard case .scalar = node, let value = node.bool else { throw ConfigProblem(path: path, message: "expected true or false") }
        return value
    }

    func choice<T: RawRepresentable & CaseIterable>(_ type: T.Type) throws(ConfigProblem) -> T where T.RawValue == String {
        let text = try string()
        guard let value = T(rawValue: text) else {
            throw ConfigProblem(path: path, message: "'\(text)' is not allowed; use one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    func identifier<T>(_ make: (String) throws(MeridianError) -> T) throws(ConfigProblem) -> T {
        let text = try string()
        do { return try make(text) } catch { throw ConfigProblem(path: path, message: error.message) }
    }

    /// A subject rule: `key`, or `{separator: "/", segments: N}`.
    func subjectRule() throws(ConfigProblem) -> SubjectRule {
        if case .scalar = node {
            guard try string() == "key" else {
                throw ConfigProblem(path: path, message: "a subject is 'key' (the whole key) or {separator: \"/\", segments: 1} (the key's first segments)")
            }
            return .wholeKey
        }
        let fields = try mapping(allowed: ["separator", "segments"])
        let separator = try fields["separator"]?.string() ?? "/"
        guard separator.count == 1, let character = separator.first, separator.utf8.count == 1 else {
            throw ConfigProblem(path: child("separator"), message: "a separator is one ASCII character, such as /")
        }
        let depth = try fields["segments"]?.int(in: 1...16) ?? 1
        return .keyPrefix(separator: character, depth: depth)
    }

    func region(in known: [RegionName]) throws(ConfigProblem) -> RegionName {
        let text = try string()
        let name = try identifier { text throws(MeridianError) in try RegionName(text) }
        guard known.contains(name) else {
            throw ConfigProblem(path: path, message: "'\(text)' is not a region of this cluster; regions are \(known.map(\.rawValue).joined(separator: ", "))")
        }
        return name
    }

    func regionList(in known: [RegionName]) throws(ConfigProblem) -> [RegionName] {
        var result: [RegionName] = []
        for item in try sequence() {
            let name = try item.region(in: known)
            guard !result.contains(name) else { throw ConfigProblem(path: item.path, message: "'\(name)' is listed twice") }
            result.append(name)
        }
        guard !result.isEmpty else { throw ConfigProblem(path: path, message: "name at least one region") }
        return result
    }
}

/// Walks the YAML tree once, building and validating the configuration.
struct ConfigParser {
    let root: YAMLValue
    /// The cluster file's directory, for relative paths (nil: the file is built in).
    var directory: String?

    func parse() throws(ConfigProblem) -> ClusterConfig {
        let fields = try root.mapping(allowed: ["cluster", "regions", "wan", "limits", "keyspaces", "session_secret", "auth", "tls", "routing"])
        let name = try fields["cluster"]?.string() ?? "meridian"
        let sessionSecret = try fields["session_secret"].map { value throws(ConfigProblem) in
            let secret = try value.string()
            guard (16...256).contains(secret.utf8.count) else {
                throw ConfigProblem(path: value.path, message: "use 16 to 256 characters (for example the output of `openssl rand -hex 32`); every region must have the same one")
            }
            return secret
        }
        guard let regionsValue = fields["regions"] else { throw ConfigProblem(path: "regions", message: "the cluster needs at least one region") }
        let regions = try parseRegions(regionsValue)
        let names = regions.map(\.name)
        let wan = try fields["wan"].map { value throws(ConfigProblem) in try parseWAN(value, regions: names) }
            ?? WANConfig(rttMs: [:], latencyScale: 1, jitterMs: 0, admin: Endpoint(host: "127.0.0.1", port: 7300), basePort: 7310)
        let limits = try fields["limits"].map { value throws(ConfigProblem) in try parseLimits(value) } ?? Limits()
        var keyspaces: [KeyspacePolicy] = []
        for item in try fields["keyspaces"]?.sequence() ?? [] {
            let keyspace = try parseKeyspace(item, regions: names)
            guard !keyspace.name.rawValue.hasPrefix(AccessRule.systemKeyspacePrefix) else {
                throw ConfigProblem(path: item.child("name"), message: "names starting with '\(AccessRule.systemKeyspacePrefix)' are reserved for Meridian's own keyspaces")
            }
            guard !keyspaces.contains(where: { $0.name == keyspace.name }) else {
                throw ConfigProblem(path: item.child("name"), message: "keyspace '\(keyspace.name)' is defined twice")
            }
            keyspaces.append(keyspace)
        }
        let auth = try fields["auth"].map { value throws(ConfigProblem) in try parseAuth(value) }
        if auth != nil {
            guard sessionSecret != nil else {
                throw ConfigProblem(path: "session_secret", message: "with auth on, session tokens must be unforgeable too: set a session_secret of 16 to 256 characters (for example the output of `openssl rand -hex 32`), the same in every region")
            }
            keyspaces.append(try revocationKeyspace(regions: names))
        }
        let tls = try fields["tls"].map { value throws(ConfigProblem) in try parseTLS(value, directory: directory) }
        let routing = try fields["routing"].map { value throws(ConfigProblem) in try parseRouting(value, regions: names, keyspaces: keyspaces) } ?? RoutingConfig()
        return ClusterConfig(name: name, regions: regions, wan: wan, limits: limits, keyspaces: keyspaces, sessionSecret: sessionSecret, auth: auth, tls: tls,
                             routing: routing)
    }

    private func parseRegions(_ value: YAMLValue) throws(ConfigProblem) -> [RegionConfig] {
        var regions: [RegionConfig] = []
        var endpoints: [Endpoint: String] = [:]
        for item in try value.sequence() {
            let fields = try item.mapping(allowed: ["name", "client", "peer", "store"])
            guard let nameValue = fields["name"] else { throw ConfigProblem(path: item.child("name"), message: "every region needs a name") }
            let name = try nameValue.identifier { text throws(MeridianError) in try RegionName(text) }
            guard !regions.contains(where: { $0.name == name }) else {
                throw ConfigProblem(path: nameValue.path, message: "region '\(name)' is defined twice")
            }
            var pair: [Endpoint] = []
            for field in ["client", "peer"] {
                guard let endpointValue = fields[field] else {
                    throw ConfigProblem(path: item.child(field), message: "region '\(name)' needs a \(field) address as host:port")
                }
                let text = try endpointValue.string()
                guard let endpoint = Endpoint(parsing: text) else {
                    throw ConfigProblem(path: endpointValue.path, message: "'\(text)' is not host:port with a port from 1 to 65535")
                }
                if let other = endpoints[endpoint] {
                    throw ConfigProblem(path: endpointValue.path, message: "\(endpoint) is already used by \(other)")
                }
                endpoints[endpoint] = endpointValue.path
                pair.append(endpoint)
            }
            var region = RegionConfig(name: name, client: pair[0], peer: pair[1])
            if let store = fields["store"] { region.store = try parseStore(store) }
            regions.append(region)
        }
        guard !regions.isEmpty else { throw ConfigProblem(path: value.path, message: "the cluster needs at least one region") }
        guard regions.count <= 16 else { throw ConfigProblem(path: value.path, message: "at most 16 regions are supported") }
        return regions
    }

    private func parseWAN(_ value: YAMLValue, regions: [RegionName]) throws(ConfigProblem) -> WANConfig {
        let fields = try value.mapping(allowed: ["latency_scale", "jitter_ms", "rtt_ms", "admin", "base_port"])
        var wan = WANConfig(rttMs: [:], latencyScale: 1, jitterMs: 0, admin: Endpoint(host: "127.0.0.1", port: 7300), basePort: 7310)
        if let admin = fields["admin"] {
            let text = try admin.string()
            guard let endpoint = Endpoint(parsing: text) else {
                throw ConfigProblem(path: admin.path, message: "'\(text)' is not host:port with a port from 1 to 65535")
            }
            wan.admin = endpoint
        }
        let linkCount = regions.count * (regions.count - 1)
        if let base = fields["base_port"] { wan.basePort = try base.int(in: 1...(65535 - max(linkCount, 1) + 1)) }
        if let scale = fields["latency_scale"] { wan.latencyScale = try scale.double(in: 0...100) }
        if let jitter = fields["jitter_ms"] { wan.jitterMs = try jitter.double(in: 0...10_000) }
        for item in try fields["rtt_ms"]?.sequence() ?? [] {
            let link = try item.mapping(allowed: ["between", "ms"])
            guard let between = link["between"], let ms = link["ms"] else {
                throw ConfigProblem(path: item.path, message: "each link needs 'between: [region, region]' and 'ms'")
            }
            let ends = try between.regionList(in: regions)
            guard ends.count == 2 else { throw ConfigProblem(path: between.path, message: "name exactly two different regions") }
            let pair = RegionPair(ends[0], ends[1])
            guard wan.rttMs[pair] == nil else { throw ConfigProblem(path: item.path, message: "the link \(pair) is given twice") }
            wan.rttMs[pair] = try ms.double(in: 0...10_000)
        }
        return wan
    }

    private func parseLimits(_ value: YAMLValue) throws(ConfigProblem) -> Limits {
        let fields = try value.mapping(allowed: Limits.ranges.map(\.field))
        var limits = Limits()
        for (field, range) in Limits.ranges {
            guard let item = fields[field] else { continue }
            let number = try item.int(in: range)
            switch field {
            case "value_bytes_max": limits.valueBytesMax = number
            case "list_limit_max": limits.listLimitMax = number
            case "list_limit_default": limits.listLimitDefault = number
            case "commit_batch_max": limits.commitBatchMax = number
            case "commit_wait_us": limits.commitWaitUs = number
            case "commit_queue_max": limits.commitQueueMax = number
            case "commit_queue_bytes_max": limits.commitQueueBytesMax = number
            case "max_clock_offset_ms": limits.clockOffsetMsMax = UInt64(number)
            case "ack_timeout_ms": limits.ackTimeoutMs = number
            case "heartbeat_interval_ms": limits.heartbeatIntervalMs = number
            case "missed_heartbeats_max": limits.missedHeartbeatsMax = number
            case "replication_batch_entries_max": limits.replicationBatchEntriesMax = number
            case "replication_inflight_entries_max": limits.replicationInflightEntriesMax = number
            case "replication_frame_bytes_max": limits.replicationFrameBytesMax = number
            case "log_retention_entries": limits.logRetentionEntries = number
            case "forwards_inflight_max": limits.forwardsInflightMax = number
            case "read_wait_ms": limits.readWaitMs = number
            case "conflicts_log_max": limits.conflictsLogMax = number
            case "anti_entropy_interval_ms": limits.antiEntropyIntervalMs = number
            case "anti_entropy_slot_keys_min": limits.antiEntropySlotKeysMin = number
            case "siblings_max": limits.siblingsMax = number
            case "failback_steady_ms": limits.failbackSteadyMs = number
            case "election_grace_silences": limits.electionGraceSilences = number
            case "topology_streams_max": limits.topologyStreamsMax = number
            case "idempotency_ttl_ms": limits.idempotencyTtlMs = number
            case "idempotency_keys_max": limits.idempotencyKeysMax = number
            case "audit_records_max": limits.auditRecordsMax = number
            default: preconditionFailure("Limits.ranges names a field the parser does not set: \(field)")
            }
        }
        guard limits.commitQueueBytesMax >= limits.valueBytesMax else {
            throw ConfigProblem(path: value.child("commit_queue_bytes_max"), message: "must be at least value_bytes_max (\(limits.valueBytesMax)), or no value could be written")
        }
        guard limits.replicationBatchEntriesMax <= limits.replicationInflightEntriesMax else {
            throw ConfigProblem(path: value.child("replication_batch_entries_max"), message: "must not exceed replication_inflight_entries_max (\(limits.replicationInflightEntriesMax)), or a batch could never be sent")
        }
        guard limits.listLimitDefault <= limits.listLimitMax else {
            throw ConfigProblem(path: value.child("list_limit_default"), message: "must not exceed list_limit_max (\(limits.listLimitMax))")
        }
        return limits
    }

    func parseKeyspace(_ value: YAMLValue, regions: [RegionName]) throws(ConfigProblem) -> KeyspacePolicy {
        let fields = try value.mapping(allowed: [
            "name", "topology", "leader", "replicas", "ack", "conflict", "priority", "home", "homes",
            "consistency", "residency", "failover", "cache", "idempotency",
        ])
        guard let nameValue = fields["name"] else { throw ConfigProblem(path: value.child("name"), message: "every keyspace needs a name") }
        let name = try nameValue.identifier { text throws(MeridianError) in try KeyspaceName(text) }
        guard let topologyValue = fields["topology"] else {
            throw ConfigProblem(path: value.child("topology"), message: "keyspace '\(name)' needs a topology: single-leader, multi-leader or geo-partitioned")
        }
        let topology = try topologyValue.choice(Topology.self)

        // Residency bounds everything else: replicas, leader and homes must lie inside it.
        var residency = ResidencyPolicy(regions: regions, access: .proxy, classification: .global)
        if let residencyValue = fields["residency"] {
            let residencyFields = try residencyValue.mapping(allowed: ["regions", "access", "classification", "encryption", "subject"])
            if let list = residencyFields["regions"] { residency.regions = try list.regionList(in: regions) }
            if let access = residencyFields["access"] { residency.access = try access.choice(ResidencyAccess.self) }
            if let classification = residencyFields["classification"] {
                residency.classification = try classification.choice(DataClassification.self)
            }
            if residency.classification == .global && residency.regions.count < regions.count && residencyFields["classification"] != nil {
                throw ConfigProblem(path: residencyValue.child("classification"),
                                    message: "a keyspace limited to some regions is 'restricted'; 'global' data may live in every region")
            }
            if residencyFields["classification"] == nil && residency.regions.count < regions.count {
                residency.classification = .restricted
            }
            residency.encryption = residency.classification == .restricted ? .sealed : .none
            if let encryption = residencyFields["encryption"] { residency.encryption = try encryption.choice(ValueEncryption.self) }
            if let subjectValue = residencyFields["subject"] {
                guard residency.encryption == .sealed else {
                    throw ConfigProblem(path: subjectValue.path, message: "a subject names the unit of erasure of sealed values; this keyspace is not sealed (set encryption: sealed, or remove subject)")
                }
                residency.subject = try subjectValue.subjectRule()
            }
        }
        residency.regions.sort()

        var replicas = residency.regions
        if let replicasValue = fields["replicas"] {
            replicas = try replicasValue.regionList(in: regions).sorted()
            for (index, replica) in replicas.enumerated() where !residency.regions.contains(replica) {
                throw ConfigProblem(path: "\(replicasValue.path)[\(index)]",
                                    message: "'\(replica)' is outside the keyspace's residency (\(residency.regions.map(\.rawValue).joined(separator: ", ")))")
            }
        }

        func forbid(_ field: String, _ reason: String) throws(ConfigProblem) {
            if fields[field] != nil { throw ConfigProblem(path: value.child(field), message: reason) }
        }

        var leader: RegionName?
        var conflict: ConflictPolicy?
        var priority: [RegionName]?
        var home: RegionName?
        var homes: [HomeRule]?
        var failover: FailoverPolicy?
        switch topology {
        case .singleLeader:
            guard let leaderValue = fields["leader"] else {
                throw ConfigProblem(path: value.child("leader"), message: "a single-leader keyspace names its leader region")
            }
            let chosen = try leaderValue.region(in: regions)
            guard replicas.contains(chosen) else {
                throw ConfigProblem(path: leaderValue.path, message: "the leader '\(chosen)' must be one of the replicas (\(replicas.map(\.rawValue).joined(separator: ", ")))")
            }
            leader = chosen
            try forbid("conflict", "conflict policies apply to multi-leader keyspaces; a single-leader keyspace has one writer")
            try forbid("priority", "priority applies to multi-leader keyspaces with conflict: region-priority")
            try forbid("home", "home applies to geo-partitioned keyspaces")
            try forbid("homes", "homes applies to geo-partitioned keyspaces")
            failover = FailoverPolicy(order: [chosen] + replicas.filter { $0 != chosen }, missedHeartbeats: 5, failback: true)
            if let failoverValue = fields["failover"] {
                let failoverFields = try failoverValue.mapping(allowed: ["order", "missed_heartbeats", "failback"])
                if let orderValue = failoverFields["order"] {
                    let order = try orderValue.regionList(in: regions)
                    for (index, region) in order.enumerated() where !replicas.contains(region) {
                        throw ConfigProblem(path: "\(orderValue.path)[\(index)]", message: "'\(region)' is not a replica of this keyspace")
                    }
                    // Elections count the regions of the order, acks count every replica: they must be the same set,
                    // or a majority-acknowledged write could miss the voters that elect the next leader.
                    if let missing = replicas.first(where: { !order.contains($0) }) {
                        throw ConfigProblem(path: orderValue.path, message: "the failover order must list every replica of the keyspace; '\(missing)' is missing")
                    }
                    if order.first != chosen {
                        throw ConfigProblem(path: orderValue.path, message: "the failover order starts with the keyspace's leader '\(chosen)'; put it first")
                    }
                    failover?.order = order
                }
                if let missed = failoverFields["missed_heartbeats"] { failover?.missedHeartbeats = try missed.int(in: 1...100) }
                if let failback = failoverFields["failback"] { failover?.failback = try failback.bool() }
            }
        case .multiLeader:
            try forbid("leader", "a multi-leader keyspace accepts writes in every replica region; remove 'leader' or use single-leader")
            try forbid("home", "home applies to geo-partitioned keyspaces")
            try forbid("homes", "homes applies to geo-partitioned keyspaces")
            try forbid("failover", "failover applies to single-leader keyspaces; multi-leader keyspaces keep accepting writes in every region")
            conflict = try fields["conflict"]?.choice(ConflictPolicy.self) ?? .lww
            if conflict == .regionPriority {
                guard let priorityValue = fields["priority"] else {
                    throw ConfigProblem(path: value.child("priority"), message: "conflict: region-priority needs 'priority', the replica regions in winning order")
                }
                let order = try priorityValue.regionList(in: regions)
                guard Set(order) == Set(replicas) else {
                    throw ConfigProblem(path: priorityValue.path, message: "list every replica exactly once: \(replicas.map(\.rawValue).joined(separator: ", "))")
                }
                priority = order
            } else {
                try forbid("priority", "priority applies only with conflict: region-priority")
            }
        case .geoPartitioned:
            try forbid("leader", "a geo-partitioned keyspace takes each key's writes in its home region; use 'home' and 'homes'")
            try forbid("conflict", "conflict policies apply to multi-leader keyspaces")
            try forbid("priority", "priority applies to multi-leader keyspaces with conflict: region-priority")
            try forbid("failover", "failover applies to single-leader keyspaces")
            guard let homeValue = fields["home"] else {
                throw ConfigProblem(path: value.child("home"), message: "a geo-partitioned keyspace names the default home region of its keys")
            }
            home = try homeValue.region(in: replicas)
            var rules: [HomeRule] = []
            for item in try fields["homes"]?.sequence() ?? [] {
                let ruleFields = try item.mapping(allowed: ["prefix", "region"])
                guard let prefixValue = ruleFields["prefix"], let regionValue = ruleFields["region"] else {
                    throw ConfigProblem(path: item.path, message: "each home rule needs 'prefix' and 'region'")
                }
                let prefix = try prefixValue.string()
                guard !prefix.isEmpty, prefix.utf8.count <= Key.utf8BytesMax else {
                    throw ConfigProblem(path: prefixValue.path, message: "a prefix has 1 to \(Key.utf8BytesMax) bytes")
                }
                guard !rules.contains(where: { $0.prefix == prefix }) else {
                    throw ConfigProblem(path: prefixValue.path, message: "the prefix '\(prefix)' is given twice")
                }
                rules.append(HomeRule(prefix: prefix, region: try regionValue.region(in: replicas)))
            }
            homes = rules.isEmpty ? nil : rules
        }

        let ack = try fields["ack"]?.choice(AckMode.self) ?? (topology == .singleLeader ? .majority : .async)

        let levels = ConsistencyLevel.allCases.filter { topology == .singleLeader || $0 != .strong }
        var consistency = ConsistencyPolicy(default: topology == .singleLeader ? .strong : .session, allowed: levels)
        if let consistencyValue = fields["consistency"] {
            let consistencyFields = try consistencyValue.mapping(allowed: ["default", "allowed"])
            if let allowedValue = consistencyFields["allowed"] {
                var allowed: [ConsistencyLevel] = []
                for item in try allowedValue.sequence() {
                    let level = try item.choice(ConsistencyLevel.self)
                    if level == .strong && topology != .singleLeader {
                        throw ConfigProblem(path: item.path, message: "strong consistency needs one writer; a \(topology.rawValue) keyspace can offer bounded, session, prefix or eventual")
                    }
                    guard !allowed.contains(level) else { throw ConfigProblem(path: item.path, message: "'\(level.rawValue)' is listed twice") }
                    allowed.append(level)
                }
                guard !allowed.isEmpty else { throw ConfigProblem(path: allowedValue.path, message: "allow at least one consistency level") }
                consistency.allowed = ConsistencyLevel.allCases.filter(allowed.contains)
                if !consistency.allowed.contains(consistency.default) { consistency.default = consistency.allowed[0] }
            }
            if let defaultValue = consistencyFields["default"] {
                let level = try defaultValue.choice(ConsistencyLevel.self)
                guard consistency.allowed.contains(level) else {
                    throw ConfigProblem(path: defaultValue.path, message: "'\(level.rawValue)' is not among the allowed levels (\(consistency.allowed.map(\.rawValue).joined(separator: ", ")))")
                }
                consistency.default = level
            }
        }

        var cache = CachePolicy(ttlMs: 0)
        if let cacheValue = fields["cache"] {
            let cacheFields = try cacheValue.mapping(allowed: ["ttl_ms"])
            if let ttl = cacheFields["ttl_ms"] { cache.ttlMs = UInt64(try ttl.int(in: 0...86_400_000)) }
            if cache.ttlMs > 0 && residency.classification == .restricted {
                throw ConfigProblem(path: cacheValue.child("ttl_ms"), message: "a restricted keyspace's answers are never cached (they carry Cache-Control: no-store, also when a region outside the residency relays them): remove cache, or classify the keyspace global")
            }
        }

        var policy = KeyspacePolicy(
            name: name, topology: topology, leader: leader, replicas: replicas, ack: ack, conflict: conflict,
            priority: priority, home: home, homes: homes, consistency: consistency, residency: residency,
            failover: failover, cache: cache)
        if let idempotencyValue = fields["idempotency"] {
            guard topology == .multiLeader else {
                throw ConfigProblem(path: idempotencyValue.path, message: "idempotency applies to multi-leader keyspaces; the others take each key's writes in one region, where its retries meet")
            }
            policy.idempotency = try idempotencyValue.choice(IdempotencyScope.self)
        }
        return policy
    }
}
