/// Decides whether this region may take a request for a keyspace, from the keyspace's policy and what
/// this region can reach. Pure: the shell supplies the reachable regions and carries out the decision.
public struct Admission: Sendable {
    /// The region deciding.
    public let region: RegionName
    /// The regions this region can currently confirm writes with, itself included.
    public let reachable: Set<RegionName>

    /// Creates an admission check.
    public init(region: RegionName, reachable: Set<RegionName>) {
        precondition(reachable.contains(region), "a region always reaches itself")
        self.region = region
        self.reachable = reachable
    }

    /// The verdict for a write.
    public enum WriteDecision: Sendable, Hashable {
        /// Accept locally as origin; answer once `ackRegionsRequired` replica regions applied it.
        case accept(ack: AckMode, ackRegionsRequired: Int, epoch: UInt64)
    }

    /// Decides whether a write to `key` may be accepted here.
    /// - Parameters:
    ///   - policy: The keyspace's policy.
    ///   - key: The key written.
    ///   - ack: The ack mode the request asked for, if any.
    /// - Throws: `MeridianError` naming the region that takes the write or the regions missing for the ack mode.
    public func admitWrite(_ policy: KeyspacePolicy, key: Key, ack requested: AckMode?) throws(MeridianError) -> WriteDecision {
        try checkResidency(policy)
        if let writer = policy.writeRegion(for: key), writer != region {
            // Forwarding to the writer region arrives with cross-region replication; until then say where to go.
            throw MeridianError(
                .leaderUnavailable,
                "Writes to '\(key)' in keyspace '\(policy.name)' are taken by \(writer), and this region (\(region)) cannot forward them yet. Send the write to \(writer).",
                context: ["keyspace": policy.name.rawValue, "leader": writer.rawValue, "region": region.rawValue])
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

    /// Decides whether a read at `level` (or the keyspace default) may be served here.
    /// - Returns: The level that will be served.
    /// - Throws: `MeridianError` `consistency_not_allowed` (409) when the policy forbids the level, or a 503 code
    ///   when the level needs a region this one cannot reach.
    public func admitRead(_ policy: KeyspacePolicy, level requested: ConsistencyLevel?) throws(MeridianError) -> ConsistencyLevel {
        let level = requested ?? policy.consistency.default
        guard policy.consistency.allowed.contains(level) else {
            let hint = level == .strong && policy.topology != .singleLeader
                ? "Strong reads need a single writer; keyspace '\(policy.name)' is \(policy.topology.rawValue). Use session for read-your-writes or bounded for a staleness limit."
                : "Keyspace '\(policy.name)' allows \(policy.consistency.allowed.map(\.rawValue).joined(separator: ", "))."
            throw MeridianError(.consistencyNotAllowed, "Consistency '\(level.rawValue)' is not allowed here. \(hint)",
                                context: ["keyspace": policy.name.rawValue, "consistency": level.rawValue])
        }
        try checkResidency(policy)
        if level == .strong, let leader = policy.leader, leader != region {
            throw MeridianError(
                .consistencyUnavailable,
                "Strong reads of keyspace '\(policy.name)' are served by its leader \(leader), and this region (\(region)) cannot forward them yet. Read from \(leader), or use session or bounded here.",
                context: ["keyspace": policy.name.rawValue, "leader": leader.rawValue])
        }
        return level
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
                "Keyspace '\(policy.name)' is kept only in \(holders); this region (\(region)) cannot proxy to them yet. Send the request to one of those regions.",
                context: ["keyspace": policy.name.rawValue, "replicas": holders])
        }
    }
}
