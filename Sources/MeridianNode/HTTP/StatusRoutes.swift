import HTTPTypes
import Hummingbird
import MeridianCore
import MeridianHTTP
import MeridianStore

/// The JSON of `GET /v1/status`.
struct StatusAnswer: Encodable {
    struct KeyspaceStatus: Encodable {
        let name: String
        let topology: String
        let role: String
        let epoch: UInt64?
        let keys: Int
    }

    struct PeerStatus: Encodable {
        let region: String
        let client: String
        let peer: String
        let rttMs: Double?
        let link: String
        let lagMs: Double?
        let lagEntries: UInt64
        let cursor: UInt64

        enum CodingKeys: String, CodingKey {
            case region, client, peer, link, cursor
            case rttMs = "rtt_ms"
            case lagMs = "lag_ms"
            case lagEntries = "lag_entries"
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(region, forKey: .region)
            try container.encode(client, forKey: .client)
            try container.encode(peer, forKey: .peer)
            try container.encode(rttMs, forKey: .rttMs)
            try container.encode(link, forKey: .link)
            try container.encode(lagMs, forKey: .lagMs)
            try container.encode(lagEntries, forKey: .lagEntries)
            try container.encode(cursor, forKey: .cursor)
        }
    }

    let region: String
    let cluster: String
    let uptimeMs: UInt64
    let keyspaces: [KeyspaceStatus]
    let peers: [PeerStatus]
    let log: [String: UInt64]
    let limits: Limits

    enum CodingKeys: String, CodingKey {
        case region, cluster, keyspaces, peers, log, limits
        case uptimeMs = "uptime_ms"
    }
}

extension RegionNode {
    /// This region's role for a keyspace.
    func role(_ policy: KeyspacePolicy) -> String {
        guard policy.isReplica(region) else { return "not_replica" }
        switch policy.topology {
        case .singleLeader: return policy.leader == region ? "leader" : "follower"
        case .multiLeader: return "leader"
        case .geoPartitioned: return policy.home == region || (policy.homes ?? []).contains { $0.region == region } ? "home" : "replica"
        }
    }

    func status() async throws(MeridianError) -> Response {
        let counts = try await store.keyCounts()
        let highWater = try await store.logHighWater()
        let ownHighWater = highWater[region] ?? 0
        var peers: [StatusAnswer.PeerStatus] = []
        for peer in configuration.cluster.regions where peer.name != region {
            let cursor = try await store.cursor(peer: peer.name, origin: region)
            peers.append(StatusAnswer.PeerStatus(
                region: peer.name.rawValue, client: peer.client.description, peer: peer.peer.description,
                rttMs: configuration.cluster.wan.rttMs(region, peer.name),
                // Replication streams between regions are not built yet (roadmap step 2): no link is ever up.
                link: "not_connected", lagMs: nil, lagEntries: ownHighWater - min(cursor, ownHighWater), cursor: cursor))
        }
        let keyspaces = configuration.cluster.keyspaces.map { policy in
            StatusAnswer.KeyspaceStatus(
                name: policy.name.rawValue, topology: policy.topology.rawValue, role: role(policy),
                epoch: policy.topology == .singleLeader ? 1 : nil, keys: counts[policy.name.rawValue] ?? 0)
        }
        return JSON.response(StatusAnswer(
            region: region.rawValue, cluster: configuration.cluster.name, uptimeMs: UInt64((ContinuousClock.now - startedAt).components.seconds * 1000),
            keyspaces: keyspaces, peers: peers,
            log: Dictionary(uniqueKeysWithValues: highWater.map { ($0.key.rawValue, $0.value) }), limits: limits))
    }

    func keyspaces() -> Response {
        struct Answer: Encodable {
            let region: String
            let keyspaces: [KeyspacePolicy]
        }
        return JSON.response(Answer(region: region.rawValue, keyspaces: configuration.cluster.keyspaces))
    }
}
