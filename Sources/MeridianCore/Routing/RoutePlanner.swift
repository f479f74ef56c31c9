/// Picks the regions a request is sent to, in order, and says why: the core of the gateway's (and the client
/// libraries') routing. Pure: the caller supplies what it knows of the cluster (``RouteView``) and of the client
/// (``RouteRequest``), and carries the plan out.
///
/// Rules (each has a test):
/// - Writes, and strong reads of single-leader keyspaces, go to the one region that takes them: the keyspace's
///   leader (the one in the highest term the caller has seen) or the key's home. Never elsewhere (that region
///   would only forward them: a double hop), and never to a fallback: when it is down, the plan is empty and
///   says why. Multi-leader writes go to the nearest routable replica.
/// - Other reads go to the nearest region by the keyspace's order of preferences: the region the client's
///   session last wrote at (its reads need not wait there), the user's home region, the client's location
///   (a country from a header or from the client's address, mapped to regions), then measured latency. The rest
///   of the routable replicas follow as fallbacks.
/// - Health always wins: a region the cluster marked down, or the caller ejected, is skipped. When every
///   candidate is down the plan still names them (fail open: the view may be what is wrong), and says so.
/// - Residency: a restricted keyspace's request only ever goes to its residency regions. Other keyspaces prefer
///   their replicas and fall back to any region (which proxies).
public enum RoutePlanner {
    /// What the request is.
    public enum Kind: Sendable, Hashable {
        case read
        case write
    }

    /// The client and its request, as the router decoded them.
    public struct RouteRequest: Sendable, Hashable {
        /// The keyspace's policy (nil: a route that names none, such as status).
        public var keyspace: KeyspacePolicy?
        /// The key (nil: a listing, or no keyspace route).
        public var key: Key?
        public var kind: Kind
        /// The consistency level asked for (nil: the keyspace's default).
        public var consistency: ConsistencyLevel?
        /// The client's country (ISO 3166 alpha-2, upper case) and where it came from (`header`, `address`).
        public var country: String?
        public var countrySource: String?
        /// The region the client's session last saw a write from (its session token's newest version).
        public var sessionRegion: RegionName?
        /// The user's home region, looked up by the caller (`routing.home_lookup`).
        public var userHome: RegionName?
        /// Regions the client named itself, nearest first (a client library's preferred regions): taken as the
        /// client's location, before any country.
        public var preferredRegions: [RegionName] = []

        public init(keyspace: KeyspacePolicy?, key: Key?, kind: Kind, consistency: ConsistencyLevel? = nil, country: String? = nil,
                    countrySource: String? = nil, sessionRegion: RegionName? = nil, userHome: RegionName? = nil) {
            self.keyspace = keyspace
            self.key = key
            self.kind = kind
            self.consistency = consistency
            self.country = country
            self.countrySource = countrySource
            self.sessionRegion = sessionRegion
            self.userHome = userHome
        }
    }

    /// What the caller knows of the cluster now.
    public struct RouteView: Sendable, Hashable {
        /// Every region, in the cluster file's order.
        public var regions: [RegionName]
        /// The regions requests may go to (the cluster's verdicts, less what the caller ejected).
        public var routable: Set<RegionName>
        /// Each single-leader keyspace's leader in the highest term seen.
        public var leaders: [KeyspaceName: RegionName]
        /// The caller's measured latency to each region, in ms (missing: not measured).
        public var latencyMs: [RegionName: Double]

        public init(regions: [RegionName], routable: Set<RegionName>, leaders: [KeyspaceName: RegionName] = [:], latencyMs: [RegionName: Double] = [:]) {
            self.regions = regions
            self.routable = routable
            self.leaders = leaders
            self.latencyMs = latencyMs
        }
    }

    /// One region to try, and why it was chosen.
    public struct Candidate: Sendable, Hashable {
        public let region: RegionName
        /// `leader`, `home`, `session`, `user-home`, `location:DE`, `address:DE`, `latency`, `fallback` or
        /// `unverified` (every candidate is down, tried anyway).
        public let reason: String

        public init(region: RegionName, reason: String) {
            self.region = region
            self.reason = reason
        }
    }

    /// The regions to try in order. Writes have at most one: a write is never sent to two regions.
    public struct Plan: Sendable, Hashable {
        public let candidates: [Candidate]
        /// Why nothing can be tried (the writer is down), when `candidates` is empty.
        public let refusal: MeridianError?
        /// Regions the preferences put first that are down: the first candidate stands in for them.
        public var skipped: [RegionName] = []
    }

    /// Plans a request.
    /// - Parameters:
    ///   - request: The request and its client.
    ///   - view: The cluster as the caller sees it.
    ///   - config: The cluster's routing section.
    public static func plan(_ request: RouteRequest, view: RouteView, config: RoutingConfig) -> Plan {
        let policy = request.keyspace
        let allowed: [RegionName]
        let preferred: Set<RegionName>
        if let policy {
            allowed = policy.residency.classification == .restricted ? view.regions.filter(policy.residency.regions.contains) : view.regions
            preferred = Set(policy.replicas)
        } else {
            allowed = view.regions
            preferred = Set(view.regions)
        }
        if let policy, let writer = writer(policy, request, view) {
            guard view.routable.contains(writer) else {
                let what = request.kind == .write ? "Writes to" : "Strong reads of"
                let code: MeridianError.Code = policy.topology == .singleLeader ? .leaderUnavailable : .regionUnavailable
                return Plan(candidates: [], refusal: MeridianError(
                    code, "\(what) keyspace '\(policy.name)' go to \(writer) (its \(policy.topology == .singleLeader ? "leader" : "home region")), which the cluster marks down; nothing was sent. Retry after the failover (GET /v1/topology shows the leader).",
                    context: ["keyspace": policy.name.rawValue, "region": writer.rawValue]))
            }
            return Plan(candidates: [Candidate(region: writer, reason: policy.topology == .singleLeader ? "leader" : "home")], refusal: nil)
        }
        let ordered = order(request, allowed: allowed, preferred: preferred, view: view, config: config)
        let live = ordered.filter { view.routable.contains($0.region) }
        guard !live.isEmpty else {
            return Plan(candidates: ordered.map { Candidate(region: $0.region, reason: "unverified") }, refusal: nil)
        }
        // A write goes to one region only; a read has the rest as fallbacks.
        let skipped = Array(ordered.prefix { !view.routable.contains($0.region) }.map(\.region))
        if request.kind == .write { return Plan(candidates: [live[0]], refusal: nil, skipped: skipped) }
        return Plan(candidates: live, refusal: nil, skipped: skipped)
    }

    /// The region that alone takes this request, if one does: the leader (writes and strong reads of single-leader
    /// keyspaces) or the key's home (writes to geo-partitioned keyspaces).
    static func writer(_ policy: KeyspacePolicy, _ request: RouteRequest, _ view: RouteView) -> RegionName? {
        switch policy.topology {
        case .singleLeader:
            let strong = (request.consistency ?? policy.consistency.default) == .strong
            guard request.kind == .write || strong else { return nil }
            return view.leaders[policy.name] ?? policy.leader
        case .geoPartitioned:
            guard request.kind == .write, let key = request.key else { return nil }
            return policy.writeRegion(for: key)
        case .multiLeader:
            return nil
        }
    }

    /// Every allowed region, nearest first by the preferences, replicas before the regions that would proxy; down
    /// regions keep their place (the plan skips them and says so).
    static func order(_ request: RouteRequest, allowed: [RegionName], preferred: Set<RegionName>, view: RouteView, config: RoutingConfig) -> [Candidate] {
        var result: [Candidate] = []
        var placed = Set<RegionName>()
        func add(_ region: RegionName, _ reason: String) {
            guard allowed.contains(region), preferred.contains(region), !placed.contains(region) else { return }
            placed.insert(region)
            result.append(Candidate(region: region, reason: reason))
        }
        let preferences = request.keyspace.flatMap { config.keyspaces[$0.name]?.reads } ?? RoutingConfig.ReadPreference.defaultOrder
        for preference in preferences {
            switch preference {
            case .session:
                let level = request.consistency ?? request.keyspace?.consistency.default
                if level == .session || level == .strong, let region = request.sessionRegion { add(region, "session") }
            case .userHome:
                if let region = request.userHome { add(region, "user-home") }
            case .location:
                for region in request.preferredRegions { add(region, "preferred") }
                if let country = request.country {
                    let regions = config.countryRegions[country] ?? config.countryRegions["*"] ?? []
                    let source = request.countrySource ?? "location"
                    for region in regions { add(region, "\(source):\(country)") }
                }
            case .latency:
                let measured = allowed.filter { view.latencyMs[$0] != nil }
                for region in measured.sorted(by: { (view.latencyMs[$0]!, $0) < (view.latencyMs[$1]!, $1) }) { add(region, "latency") }
            }
        }
        for region in allowed where preferred.contains(region) { add(region, "fallback") }
        // Regions without a replica proxy the request: last, and never for restricted keyspaces (not allowed).
        for region in allowed where !placed.contains(region) {
            placed.insert(region)
            result.append(Candidate(region: region, reason: "fallback"))
        }
        return result
    }
}
