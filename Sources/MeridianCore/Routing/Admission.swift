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
    public func admitWrite(_ policy: KeyspacePolicy, key: Key, ack requested: AckMode?, forwarded: Bool = false) throws(MeridianError) -> WriteDecision {
        let writer = policy.writeRegion(for: key)
        if !policy.isReplica(region) {
            if policy.residency.access == .proxy && !forwarded {
                return .forward(to: writer ?? policy.replicas.first { reachable.contains($0) } ?? policy.replicas[0])
            }
            try checkResidency(policy)
        }
        if let writer, writer != region {
            guard !forwarded else {
                throw MeridianError(
                    .leaderUnavailable,
                    "A write to '\(key)' in keyspace '\(policy.name)' was forwarded to \(region), but \(writer) takes it; the regions disagree about the cluster file. Check that every region runs the same one.",
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
        return .accept(ack: ack, ackRegionsRequired: required, epoch: policy.topology == .singleLeader ? 1 : 0)
    }

    /// The verdict for a read.
    public struct ReadDecision: Sendable, Hashable {
        /// The level served.
        public let level: ConsistencyLevel
        /// The staleness served, in ms, when the level promises a bound (`Meridian-Staleness-Ms`).
        public let stalenessMs: UInt64?
    }

    /// Decides whether a read may be served here, and at what level.
    /// - Parameters:
    ///   - level: The level the request named (nil: the keyspace default).
    ///   - maxStalenessMs: The bound of a bounded read.
    ///   - session: The client's session token, if it sent one.
    ///   - applied: How far this region has applied each origin's log (the highest sequence).
    /// - Throws: `MeridianError` `consistency_not_allowed` (409) when the policy forbids the level,
    ///   `invalid_header` for a missing or misplaced bound or a token that names unknown writes, or
    ///   `consistency_unavailable` (503) when this region cannot serve the level now.
    public func admitRead(_ policy: KeyspacePolicy, level requested: ConsistencyLevel?, maxStalenessMs: UInt64? = nil,
                          session: SessionToken? = nil, applied: [RegionName: UInt64] = [:]) throws(MeridianError) -> ReadDecision {
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
        try checkResidency(policy)
        if let session { try checkSessionOrigins(session) }
        switch level {
        case .strong:
            if let leader = policy.leader, leader != region {
                throw MeridianError(
                    .consistencyUnavailable,
                    "Strong reads of keyspace '\(policy.name)' are served by its leader \(leader), and this region (\(region)) cannot forward them yet. Read from \(leader), or use session or bounded here.",
                    context: ["keyspace": policy.name.rawValue, "leader": leader.rawValue])
            }
            return ReadDecision(level: level, stalenessMs: nil)
        case .bounded:
            // Staleness is known to be 0 only when every write of the keyspace originates here; bounding it
            // against other origins needs their heartbeats, which arrive with cross-region replication.
            let others = writerRegions(policy).filter { $0 != region }
            guard others.isEmpty else {
                throw MeridianError(
                    .consistencyUnavailable,
                    "This region (\(region)) cannot bound its staleness for keyspace '\(policy.name)': it has no heartbeat from \(others.map(\.rawValue).joined(separator: ", ")). Read from the writer region or use eventual.",
                    context: ["keyspace": policy.name.rawValue, "unreachable": others.map(\.rawValue).joined(separator: ",")])
            }
            return ReadDecision(level: level, stalenessMs: 0)
        case .session:
            guard let session else { return ReadDecision(level: level, stalenessMs: nil) }
            // Read-your-writes and monotonic reads: this region must have applied everything the session saw.
            let behind = session.seen.filter { applied[$0.key, default: 0] < $0.value }.keys.sorted()
            guard behind.isEmpty else {
                let detail = behind.map { "\($0) up to \(applied[$0, default: 0]) of \(session.seen[$0]!)" }.joined(separator: "; ")
                throw MeridianError(
                    .consistencyUnavailable,
                    "This region (\(region)) has not yet applied writes your session has seen (\(detail)). Retry shortly or read from \(behind.map(\.rawValue).joined(separator: ", ")).",
                    context: ["keyspace": policy.name.rawValue, "unreachable": behind.map(\.rawValue).joined(separator: ",")])
            }
            return ReadDecision(level: level, stalenessMs: nil)
        case .prefix, .eventual:
            return ReadDecision(level: level, stalenessMs: nil)
        }
    }

    /// The regions whose writes a keyspace receives.
    func writerRegions(_ policy: KeyspacePolicy) -> [RegionName] {
        switch policy.topology {
        case .singleLeader: return policy.leader.map { [$0] } ?? []
        case .multiLeader: return policy.replicas
        case .geoPartitioned: return Array(Set([policy.home].compactMap { $0 } + (policy.homes ?? []).map(\.region))).sorted()
        }
    }

    /// A token may only name regions of this cluster, and never more of this region's writes than it issued.
    private func checkSessionOrigins(_ session: SessionToken) throws(MeridianError) {
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
