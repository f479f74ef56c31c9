import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import Histogram

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
        // What reads here see of each origin (durable or about to be: a peer's batch is readable before its sync).
        let applied = store.visibleHighWater()
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
            log: Dictionary(uniqueKeysWithValues: applied.map { ($0.key.rawValue, $0.value) }), clock: clockStatus(), storage: storageStatus(), limits: limits))
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
