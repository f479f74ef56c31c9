import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import Histogram

/// The JSON of `GET /v1/status`.
struct StatusAnswer: Encodable {
    struct KeyspaceStatus: Encodable {
        let name: String
        let topology: String
        let role: String
        let epoch: UInt64?
        /// Single-leader: the leader this region knows (absent while an election runs), and whether this region,
        /// leading, holds its lease now.
        let leader: String?
        let lease: Bool?
        let keys: Int
    }

    struct PeerStatus: Encodable {
        /// This region's stream of its own log to the peer.
        let region: String
        let client: String
        let peer: String
        let rttMs: Double?
        /// `up`, `connecting`, `down` or `resync_required`.
        let link: String
        /// How long the oldest entry the peer has not confirmed has waited (0 when caught up).
        let lagMs: Double?
        let lagEntries: UInt64
        /// The peer has durably applied this region's log up to here.
        let cursor: UInt64
        let lastError: String?
        /// The peer's stream of its log into this region.
        let inbound: InboundStatus

        enum CodingKeys: String, CodingKey {
            case region, client, peer, link, cursor, inbound
            case rttMs = "rtt_ms"
            case lagMs = "lag_ms"
            case lagEntries = "lag_entries"
            case lastError = "last_error"
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
            try container.encode(lastError, forKey: .lastError)
            try container.encode(inbound, forKey: .inbound)
        }
    }

    struct InboundStatus: Encodable {
        /// `up` while the peer's stream is connected and heard from.
        let link: String
        /// This region has applied the peer's log up to here.
        let applied: UInt64
        /// The peer's log end, from its latest heartbeat.
        let originLog: UInt64
        let lagEntries: UInt64
        /// Time from an entry's commit at the peer to its apply here, since this node started.
        let applyLagMs: LagSummary
        /// An upper bound on how stale this region's copy of the peer's writes is now (what bounded reads
        /// are checked against); nil until the peer's heartbeats have echoed one of our acks.
        let stalenessMs: UInt64?

        enum CodingKeys: String, CodingKey {
            case link, applied
            case originLog = "origin_log"
            case lagEntries = "lag_entries"
            case applyLagMs = "apply_lag_ms"
            case stalenessMs = "staleness_ms"
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(link, forKey: .link)
            try container.encode(applied, forKey: .applied)
            try container.encode(originLog, forKey: .originLog)
            try container.encode(lagEntries, forKey: .lagEntries)
            try container.encode(applyLagMs, forKey: .applyLagMs)
            try container.encode(stalenessMs, forKey: .stalenessMs)
        }
    }

    struct LagSummary: Encodable {
        let samples: UInt64
        let p50: UInt64
        let p99: UInt64
        let max: UInt64
        /// [percentile, ms] points of the whole distribution (for benchmark plots).
        let distribution: [[Double]]

        static let percentiles: [Double] = [1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9]
    }

    /// This region's clock against its peers': beyond `max_offset_ms` from half the cluster it is fenced
    /// (no writes, no leading).
    struct ClockStatus: Encodable {
        struct PeerOffset: Encodable {
            /// The peer's clock minus this region's lies in [low_ms, high_ms] (from the latest heartbeat).
            let lowMs: Int64
            let highMs: Int64

            enum CodingKeys: String, CodingKey {
                case lowMs = "low_ms"
                case highMs = "high_ms"
            }
        }

        /// `ok` or `fenced`.
        let state: String
        let maxOffsetMs: UInt64
        /// Added to this host's clock by `--clock-offset-ms` (fault injection); 0 normally.
        let injectedOffsetMs: Int64
        let peers: [String: PeerOffset]
        /// Why the region is fenced, as writes are told (null when `ok`).
        let reason: String?

        enum CodingKeys: String, CodingKey {
            case state, peers, reason
            case maxOffsetMs = "max_offset_ms"
            case injectedOffsetMs = "injected_offset_ms"
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(state, forKey: .state)
            try container.encode(maxOffsetMs, forKey: .maxOffsetMs)
            try container.encode(injectedOffsetMs, forKey: .injectedOffsetMs)
            try container.encode(peers, forKey: .peers)
            try container.encode(reason, forKey: .reason)
        }
    }

    let region: String
    let cluster: String
    /// The node's process id (so a local game day can kill and restart it).
    let pid: Int32
    let uptimeMs: UInt64
    let keyspaces: [KeyspaceStatus]
    let peers: [PeerStatus]
    let log: [String: UInt64]
    let clock: ClockStatus
    let storage: StorageStatus
    let limits: Limits

    /// Whether this region's own writes commit: `ok`, or the latest commit's failure (`full`, `read_only`,
    /// `failing`) until one succeeds. Reads are served either way.
    struct StorageStatus: Encodable {
        let state: String
        let reason: String?

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(state, forKey: .state)
            try container.encode(reason, forKey: .reason)
        }

        enum CodingKeys: String, CodingKey { case state, reason }
    }

    enum CodingKeys: String, CodingKey {
        case region, cluster, keyspaces, peers, log, clock, storage, limits
        case pid
        case uptimeMs = "uptime_ms"
    }
}

extension RegionNode {
    func storageStatus() -> StatusAnswer.StorageStatus {
        guard let fault = store.writeFaults.current else { return StatusAnswer.StorageStatus(state: "ok", reason: nil) }
        let state = switch fault.code {
        case .storageFull: "full"
        case .storageReadOnly: "read_only"
        default: "failing"
        }
        return StatusAnswer.StorageStatus(state: state, reason: fault.message)
    }

    func clockStatus() -> StatusAnswer.ClockStatus {
        let fence = clock.snapshot
        let state = switch fence.verdict {
        case .withinTolerance: "ok"
        case .unproven: "unverified"
        case .fenced: "fenced"
        }
        return StatusAnswer.ClockStatus(
            state: state, maxOffsetMs: fence.maxOffsetMs, injectedOffsetMs: clock.injectedOffsetMs,
            peers: Dictionary(uniqueKeysWithValues: fence.offsets.map { ($0.key.rawValue, StatusAnswer.ClockStatus.PeerOffset(lowMs: $0.value.lowMs, highMs: $0.value.highMs)) }),
            reason: fence.refusal?.message)
    }

    /// This region's role for a keyspace.
    func role(_ policy: KeyspacePolicy) -> String {
        guard policy.isReplica(region) else { return "not_replica" }
        switch policy.topology {
        case .singleLeader:
            guard let term = leadership.snapshot(policy.name) else { return policy.leader == region ? "leader" : "follower" }
            switch term.role {
            case .leader: return "leader"
            case .candidate: return "candidate"
            case .follower: return "follower"
            }
        case .multiLeader: return "leader"
        case .geoPartitioned: return policy.home == region || (policy.homes ?? []).contains { $0.region == region } ? "home" : "replica"
        }
    }

    func status() async throws(MeridianError) -> Response {
        let counts = try await store.keyCounts()
        let highWater = try await store.logHighWater()
        let applied = store.appliedHighWater()
        let ownHighWater = applied[region] ?? 0
        let states = replicator.peerStates()
        let staleness = replicator.readView().stalenessMs
        let nowMs = wallClockMs()
        var peers: [StatusAnswer.PeerStatus] = []
        for peer in configuration.cluster.regions where peer.name != region {
            guard let (outbound, inbound) = states[peer.name] else { continue }
            let cursor = min(outbound.acknowledged, ownHighWater)
            var lagMs: Double = 0
            if cursor < ownHighWater, let oldest = try await store.logEntries(origin: region, after: cursor, limit: 1).first {
                lagMs = Double(nowMs > oldest.hlc.physicalMs ? nowMs - oldest.hlc.physicalMs : 0)
            }
            let appliedHere = applied[peer.name] ?? 0
            let originLog = max(inbound?.originLogHighWater ?? 0, appliedHere)
            let heard = inbound?.lastHeard.map { ContinuousClock.now - $0 < outboundSilence(peer.name) } ?? false
            let histogram = inbound?.applyLagMs
            peers.append(StatusAnswer.PeerStatus(
                region: peer.name.rawValue, client: peer.client.description, peer: peer.peer.description,
                rttMs: configuration.cluster.wan.rttMs(region, peer.name),
                link: outbound.health.rawValue, lagMs: lagMs, lagEntries: ownHighWater - cursor, cursor: cursor,
                lastError: outbound.health == .up ? nil : outbound.lastError,
                inbound: StatusAnswer.InboundStatus(
                    link: (inbound?.connections ?? 0) > 0 && heard ? "up" : "down", applied: appliedHere, originLog: originLog,
                    lagEntries: originLog - appliedHere,
                    applyLagMs: StatusAnswer.LagSummary(
                        samples: histogram?.totalCount ?? 0, p50: histogram?.valueAtPercentile(50) ?? 0,
                        p99: histogram?.valueAtPercentile(99) ?? 0, max: histogram?.max ?? 0,
                        distribution: histogram.map { histogram in
                            StatusAnswer.LagSummary.percentiles.map { [$0, Double(histogram.valueAtPercentile($0))] } + [[100, Double(histogram.max)]]
                        } ?? []),
                    stalenessMs: staleness[peer.name])))
        }
        let keyspaces = configuration.cluster.keyspaces.map { policy in
            let term = leadership.snapshot(policy.name)
            return StatusAnswer.KeyspaceStatus(
                name: policy.name.rawValue, topology: policy.topology.rawValue, role: role(policy),
                epoch: term?.epoch, leader: term?.leader?.rawValue ?? (term == nil ? policy.leader?.rawValue : nil),
                lease: term.map { $0.role == .leader ? $0.holdsLease : false }, keys: counts[policy.name.rawValue] ?? 0)
        }
        return JSON.response(StatusAnswer(
            region: region.rawValue, cluster: configuration.cluster.name, pid: ProcessInfo.processInfo.processIdentifier, uptimeMs: UInt64((ContinuousClock.now - startedAt).components.seconds * 1000),
            keyspaces: keyspaces, peers: peers,
            log: Dictionary(uniqueKeysWithValues: highWater.map { ($0.key.rawValue, $0.value) }), clock: clockStatus(), storage: storageStatus(), limits: limits))
    }

    func keyspaces() -> Response {
        struct Answer: Encodable {
            let region: String
            let keyspaces: [KeyspacePolicy]
        }
        return JSON.response(Answer(region: region.rawValue, keyspaces: configuration.cluster.keyspaces))
    }
}

extension RegionNode {
    func outboundSilence(_ peer: RegionName) -> Duration {
        replicator.links[peer]?.silenceLimit ?? .seconds(1)
    }
}
