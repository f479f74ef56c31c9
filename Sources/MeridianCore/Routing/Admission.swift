/// Decides whether this region may take a request for a keyspace, from the keyspace's policy and what
/// this region can reach. Pure: the shell supplies the reachable regions and carries out the decision.
public struct Admission: Sendable {
    /// The region deciding.
    public let region: RegionName
    /// The regions this region can currently confirm writes with, itself included.
    public let reachable: Set<RegionName>
    /// Every region of the cluster.
    public let clusterRegions: Set<RegionName>

    /// Creates an admission check.
    public init(region: RegionName, reachable: Set<RegionName>, clusterRegions: Set<RegionName>? = nil) {
        precondition(reachable.contains(region), "a region always reaches itself")
        self.region = region
        self.reachable = reachable
        self.clusterRegions = clusterRegions ?? reachable
    }

    /// The verdict for a write.
    public enum WriteDecision: Sendable, Hashable {
        /// Accept locally as origin; answer once `ackRegionsRequired` replica regions applied it.
        case accept(ack: AckMode, ackRegionsRequired: Int, epoch: UInt64)
        /// Another region takes this write (the leader, the key's home, or a region allowed to hold the data):
        /// forward it there over the WAN and relay the answer.
        case forward(to: RegionName)
    }

    /// Decides whether a write to `key` may be accepted here, or where to forward it.
    /// - Parameters:
    ///   - policy: The keyspace's policy.
    ///   - key: The key written.
    ///   - ack: The ack mode the request asked for, if any.
    ///   - forwarded: The write was forwarded here by another region; it is never forwarded again.
    /// - Throws: `MeridianError` naming the region that takes the write or the regions missing for the ack mode.
    ///   - idempotencyKey: The write's `Idempotency-Key`: in a multi-leader keyspace with `idempotency: home`, it is
    ///     taken by the key's ``IdempotencyHome`` so that retries sent to different regions meet there.
    ///   - down: The regions the cluster agrees are down (an idempotency home is chosen among the others).
    public func admitWrite(_ policy: KeyspacePolicy, key: Key, ack requested: AckMode?, forwarded: Bool = false,
                           idempotencyKey: IdempotencyKey? = nil, down: Set<RegionName> = []) throws(MeridianError) -> WriteDecision {
        let writer = policy.writeRegion(for: key)
        // A forwarded write is taken where it arrives unless its leader or home moved: two regions that disagree
        // for a moment on which regions are down must not bounce a write between them. An idempotency home this
        // region cannot reach leaves the write here (``idempotencyHomeUnreachable``): multi-leader writes stay available.
        let taker = writer ?? (forwarded || policy.idempotency != .home ? nil : idempotencyKey.flatMap {
            IdempotencyHome.region(for: $0, keyspace: policy.name, replicas: policy.replicas, down: down)
        }.flatMap { reachable.contains($0) ? $0 : nil })
        if !policy.isReplica(region) {
            if policy.residency.access == .proxy && !forwarded {
                return .forward(to: taker ?? policy.replicas.first { reachable.contains($0) } ?? policy.replicas[0])
            }
            try checkResidency(policy)
        }
        if let taker, taker != writer, taker != region { return .forward(to: taker) }
        if let writer, writer != region {
            guard !forwarded else {
                throw MeridianError(
                    .leaderUnavailable,
                    "A write to '\(key)' in keyspace '\(policy.name)' was forwarded to \(region), but \(writer) takes it: the leader changed while the write was on its way (or the regions run different cluster files). Nothing was written; retry.",
                    context: ["keyspace": policy.name.rawValue, "leader": writer.rawValue, "region": region.rawValue])
            }
            return .forward(to: writer)
        }
        let ack = requested ?? policy.ack
        let required = ack.regionsRequired(replicaCount: policy.replicas.count)
        let confirming = policy.replicas.filter { reachable.contains($0) }
        guard confirming.count >= required else {
            let missing = policy.replicas.filter { !reachable.contains($0) }
            throw MeridianError(
                .ackUnavailable,
                "Ack '\(ack.rawValue)' needs \(required) of \(policy.replicas.count) replica regions, but only \(confirming.map(\.rawValue).joined(separator: ", ")) can confirm now; unreachable: \(missing.map(\.rawValue).joined(separator: ", ")). Nothing was written. Retry later or ask for a weaker ack with Meridian-Ack.",
                context: ["ack": ack.rawValue, "unreachable": missing.map(\.rawValue).joined(separator: ","), "required": String(required)])
        }
        // The node stamps a single-leader write with the term it holds (0 here: none).
        return .accept(ack: ack, ackRegionsRequired: required, epoch: 0)
    }

    /// The idempotency home of a write this region takes although the home is elsewhere: it could not reach it.
    /// A retry whose first attempt reached that home and has not replicated here yet applies again; the answer
    /// says so (`Meridian-Idempotency: local`). Nil when the write is taken where its retries meet.
    public func idempotencyHomeUnreachable(_ policy: KeyspacePolicy, key: Key, idempotencyKey: IdempotencyKey?, forwarded: Bool,
                                           down: Set<RegionName>) -> RegionName? {
        guard !forwarded, policy.writeRegion(for: key) == nil, policy.idempotency == .home, let idempotencyKey,
              let home = IdempotencyHome.region(for: idempotencyKey, keyspace: policy.name, replicas: policy.replicas, down: down),
              home != region, !reachable.contains(home) else { return nil }
        return home
    }

    /// What this region knows, at the moment of a read, about how current its copy is.
    public struct ReadView: Sendable, Hashable {
        /// How far this region has durably applied each origin's log (its own: its log's end).
        public var applied: [RegionName: UInt64]
        /// Per other origin: an upper bound, in ms, on how stale this region's copy of that origin's writes is
        /// (absent: unknown, e.g. no heartbeat yet).
        public var stalenessMs: [RegionName: UInt64]
        /// The regions whose streams this region has heard from within the silence limit.
        public var reachable: Set<RegionName>
        /// For a single-leader keyspace this region takes part in: its leader as this region's machine knows it,
        /// and whether this region, leading, holds its lease (nil: the keyspace's configured leader decides, and
        /// a leader serves strong reads while it reaches a majority).
        public var leadership: Leadership?

        /// A single-leader keyspace's leadership as the region machine knows it.
        public struct Leadership: Sendable, Hashable {
            /// The leader of the current epoch (nil while an election runs).
            public var leader: RegionName?
            /// This region leads and a majority confirmed it within its lease.
            public var holdsLease: Bool

            public init(leader: RegionName?, holdsLease: Bool) {
                self.leader = leader
                self.holdsLease = holdsLease
            }
        }

        public init(applied: [RegionName: UInt64] = [:], stalenessMs: [RegionName: UInt64] = [:], reachable: Set<RegionName> = [],
                    leadership: Leadership? = nil) {
            self.applied = applied
            self.stalenessMs = stalenessMs
            self.reachable = reachable
            self.leadership = leadership
        }
    }

    /// The verdict for a read.
    public enum ReadDecision: Sendable, Hashable {
        /// Serve the read here now. `stalenessMs` is the bound served, for `Meridian-Staleness-Ms`.
        case serve(level: ConsistencyLevel, stalenessMs: UInt64?)
        /// Another region serves it (strong reads go to the leader or the key's home; reads outside the
        /// residency are proxied).
        case forward(to: RegionName, level: ConsistencyLevel)
        /// Not servable here yet: this region is behind what the read needs. Wait for replication (bounded),
        /// then forward to `forwardTo` if set; if there is nowhere to go, answer `error`.
        case behind(level: ConsistencyLevel, error: MeridianError, forwardTo: RegionName?)
    }

    /// Decides whether a read may be served here, at which level, or where else.
    /// - Parameters:
    ///   - key: The key read (nil: a listing of the keyspace).
    ///   - level: The level the request named (nil: the keyspace default).
    ///   - maxStalenessMs: The bound of a bounded read.
    ///   - session: The client's session token, if it sent one.
    ///   - view: How current this region is.
    ///   - forwarded: Another region forwarded this read here; it is never forwarded again.
    /// - Throws: `consistency_not_allowed` (409) when the policy forbids the level, `invalid_header` for a
    ///   missing or misplaced bound or a token that names regions outside the cluster, residency errors, or
    ///   `consistency_unavailable` (503) when no region can serve the level now.
    public func admitRead(_ configured: KeyspacePolicy, key: Key?, level requested: ConsistencyLevel?, maxStalenessMs: UInt64? = nil,
                          session: SessionToken? = nil, view: ReadView, forwarded: Bool = false) throws(MeridianError) -> ReadDecision {
        // The elected leader takes the configured one's place.
        var policy = configured
        if configured.topology == .singleLeader, let leadership = view.leadership { policy.leader = leadership.leader }
        let level = requested ?? policy.consistency.default
        guard policy.consistency.allowed.contains(level) else {
            let hint = level == .strong && policy.topology != .singleLeader
                ? "Strong reads need a single writer; keyspace '\(policy.name)' is \(policy.topology.rawValue). Use session for read-your-writes or bounded for a staleness limit."
                : "Keyspace '\(policy.name)' allows \(policy.consistency.allowed.map(\.rawValue).joined(separator: ", "))."
            throw MeridianError(.consistencyNotAllowed, "Consistency '\(level.rawValue)' is not allowed here. \(hint)",
                                context: ["keyspace": policy.name.rawValue, "consistency": level.rawValue])
        }
        if level == .bounded && maxStalenessMs == nil {
            throw MeridianError(.invalidHeader, "A bounded read needs Meridian-Max-Staleness-Ms, the staleness it accepts in milliseconds.",
                                context: ["header": "Meridian-Max-Staleness-Ms"])
        }
        if level != .bounded && maxStalenessMs != nil {
            throw MeridianError(.invalidHeader, "Meridian-Max-Staleness-Ms applies only to bounded reads; this read is \(level.rawValue). Add Meridian-Consistency: bounded or drop it.",
                                context: ["header": "Meridian-Max-Staleness-Ms"])
        }
        if let session { try checkSessionOrigins(session) }
        if !policy.isReplica(region) {
            // The data is not kept here: proxy a single-key read to a region that holds it, or refuse.
            if policy.residency.access == .proxy && !forwarded, let key {
                let holder = policy.writeRegion(for: key).flatMap { policy.isReplica($0) ? $0 : nil }
                    ?? policy.replicas.first { reachable.contains($0) } ?? policy.replicas[0]
                return .forward(to: holder, level: level)
            }
            try checkResidency(policy)
        }
        switch level {
        case .strong:
            if policy.topology == .singleLeader, let leadership = view.leadership, leadership.leader == nil {
                throw MeridianError(.leaderUnavailable,
                                    "Keyspace '\(policy.name)' is electing a new leader, and a strong read needs one. Retry in a moment (a leader is normally elected within a few seconds), or read with session or bounded.",
                                    context: ["keyspace": policy.name.rawValue])
            }
            guard let writer = key.flatMap({ policy.writeRegion(for: $0) }) ?? policy.leader else {
                // The request asks for what this keyspace cannot give anywhere: not a passing unavailability.
                throw MeridianError(.consistencyNotAllowed,
                                    "A strong listing of keyspace '\(policy.name)' has no single region that takes every write (each key has its home). Read keys one at a time, or list with session or bounded.",
                                    context: ["keyspace": policy.name.rawValue])
            }
            if writer != region {
                guard !forwarded, key != nil else {
                    let why = forwarded
                        ? "was forwarded to \(region), but \(writer) takes its writes now: the leader changed while the read was on its way (or the regions run different cluster files). Retry."
                        : "is served by \(writer), which takes its writes; listings are not forwarded. List at \(writer), or use session or bounded here."
                    // A listing sent to the wrong region is the request's to fix (409); a forwarded read the
                    // regions disagree about is the cluster's (503).
                    throw MeridianError(forwarded ? .consistencyUnavailable : .consistencyNotAllowed, "A strong read of keyspace '\(policy.name)' \(why)",
                                        context: ["keyspace": policy.name.rawValue, "leader": writer.rawValue])
                }
                return .forward(to: writer, level: level)
            }
            // The lease: a writer cut off from a majority of the replicas may already have been replaced, so it
            // does not answer strong reads until a majority confirms it again (an elected leader: within its
            // lease; otherwise: a majority's streams heard from).
            let majority = AckMode.majority.regionsRequired(replicaCount: policy.replicas.count)
            let heard = policy.replicas.filter { $0 == region || view.reachable.contains($0) }
            guard view.leadership.map(\.holdsLease) ?? (heard.count >= majority) else {
                let missing = policy.replicas.filter { !heard.contains($0) }
                return .behind(level: level, error: MeridianError(
                    .consistencyUnavailable,
                    "\(region) takes the writes of keyspace '\(policy.name)' but cannot reach a majority of its replicas (\(missing.map(\.rawValue).joined(separator: ", ")) unreachable), so it cannot promise it still does. Retry shortly, or use bounded or session.",
                    context: ["keyspace": policy.name.rawValue, "unreachable": missing.map(\.rawValue).joined(separator: ",")]), forwardTo: nil)
            }
            return .serve(level: level, stalenessMs: nil)
        case .bounded:
            let bound = maxStalenessMs!
            var worst: (origin: RegionName, ms: UInt64?)?
            for origin in writerRegions(policy, key: key) where origin != region {
                let staleness = view.stalenessMs[origin]
                if worst == nil || (staleness ?? .max) > (worst!.ms ?? .max) { worst = (origin, staleness) }
            }
            guard let worst else { return .serve(level: level, stalenessMs: 0) }
            if let ms = worst.ms, ms <= bound { return .serve(level: level, stalenessMs: ms) }
            let known = worst.ms.map { "up to \($0) ms behind" } ?? "of unknown staleness (no heartbeat answered yet)"
            return .behind(level: level, error: MeridianError(
                .consistencyUnavailable,
                "This region (\(region)) is \(known) on \(worst.origin)'s writes to keyspace '\(policy.name)', beyond the \(bound) ms asked, and no region could serve the read within the bound. Retry, raise Meridian-Max-Staleness-Ms, or read at \(worst.origin).",
                context: ["keyspace": policy.name.rawValue, "unreachable": worst.origin.rawValue, "max_staleness_ms": String(bound)]),
                forwardTo: forwarded || !policy.isReplica(worst.origin) ? nil : worst.origin)
        case .session:
            guard let session else { return .serve(level: level, stalenessMs: nil) }
            // Read-your-writes and monotonic reads: this region must have applied everything the session saw.
            let behind = session.seen.filter { view.applied[$0.key, default: 0] < $0.value }.keys.sorted()
            guard !behind.isEmpty else { return .serve(level: level, stalenessMs: nil) }
            let detail = behind.map { "\($0) up to \(view.applied[$0, default: 0]) of \(session.seen[$0]!)" }.joined(separator: "; ")
            return .behind(level: level, error: MeridianError(
                .consistencyUnavailable,
                "This region (\(region)) has not yet applied writes your session has seen (\(detail)), and no region could serve the read in time. Retry shortly or read at \(behind.map(\.rawValue).joined(separator: ", ")).",
                context: ["keyspace": policy.name.rawValue, "unreachable": behind.map(\.rawValue).joined(separator: ",")]),
                // Only a region that holds the keyspace may be asked (residency), preferably one the session is behind on.
                forwardTo: forwarded || behind.contains(region) ? nil : behind.first(where: policy.isReplica))
        case .prefix, .eventual:
            // Each origin's log is applied here as a gap-free prefix, in one transaction per batch, so any local
            // read already sees a prefix of every origin's writes.
            return .serve(level: level, stalenessMs: nil)
        }
    }

    /// The regions whose writes a read of `key` (nil: of the whole keyspace) may need.
    func writerRegions(_ policy: KeyspacePolicy, key: Key? = nil) -> [RegionName] {
        if let key, let writer = policy.writeRegion(for: key) { return [writer] }
        switch policy.topology {
        case .singleLeader: return policy.leader.map { [$0] } ?? []
        case .multiLeader: return policy.replicas
        case .geoPartitioned: return Array(Set([policy.home].compactMap { $0 } + (policy.homes ?? []).map(\.region))).sorted()
        }
    }

    /// A token may only name regions of this cluster.
    public func checkSessionOrigins(_ session: SessionToken) throws(MeridianError) {
        for origin in session.seen.keys.sorted() where !clusterRegions.contains(origin) {
            throw MeridianError(.invalidHeader, "The Meridian-Session token names region '\(origin)', which is not in this cluster. Send back a token this cluster issued, or none.",
                                context: ["header": "Meridian-Session"])
        }
    }

    private func checkResidency(_ policy: KeyspacePolicy) throws(MeridianError) {
        guard !policy.isReplica(region) else { return }
        let holders = policy.replicas.map(\.rawValue).joined(separator: ", ")
        switch policy.residency.access {
        case .deny:
            throw MeridianError(
                .notReplicaRegion,
                "Keyspace '\(policy.name)' is kept only in \(holders), and its policy refuses access from \(region). Send the request to one of those regions.",
                context: ["keyspace": policy.name.rawValue, "replicas": holders])
        case .proxy:
            throw MeridianError(
                .regionUnavailable,
                "Keyspace '\(policy.name)' is kept only in \(holders); this region (\(region)) does not proxy this request to them. Send it to one of those regions.",
                context: ["keyspace": policy.name.rawValue, "replicas": holders])
        }
    }
}
