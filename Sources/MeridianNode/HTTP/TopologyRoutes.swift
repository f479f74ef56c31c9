import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import NIOCore
import ServiceLifecycle

extension RegionNode {
    /// Probes the cluster's health once per heartbeat interval until cancelled: this region's streams, its peers'
    /// votes and the leaders it knows go to the core's verdicts; changes are logged and pushed to the streams.
    func runHealthProbes() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(limits.heartbeatIntervalMs))
            var leaders: TopologyFeed.Leaders = [:]
            for policy in configuration.cluster.keyspaces where policy.topology == .singleLeader {
                if let term = leadership.snapshot(policy.name) { leaders[policy.name] = (term.leader, term.epoch) }
            }
            let changes = topology.probe(ownSuspects: Set(replicator.unreachable()), reports: replicator.healthReports(), leaders: leaders)
            for change in changes {
                let suspects = topology.snapshot.verdicts.health[change.region]?.suspectedBy.map(\.rawValue).joined(separator: ",") ?? ""
                logger.notice("region \(change.region) is now \(change.to.rawValue) (was \(change.from.rawValue))",
                              metadata: ["suspected_by": "\(suspects)"])
                metrics.recordHealthVerdict(region: change.region, verdict: change.to)
            }
        }
        topology.closeAll()
    }

    /// The topology as this region sees it now.
    func topologyAnswer() -> TopologyAnswer {
        let (verdicts, version) = topology.snapshot
        let cluster = configuration.cluster
        let scheme = (cluster.tls?.clientAPI ?? false) ? "https" : "http"
        let regions = cluster.regions.map { config in
            let health = verdicts.health[config.name] ?? HealthVerdicts.RegionHealth(verdict: .up)
            return TopologyAnswer.Region(
                name: config.name.rawValue, url: "\(scheme)://\(config.client)", health: health.verdict,
                suspectedBy: health.suspectedBy.map(\.rawValue),
                readmitProbesLeft: health.verdict == .down ? verdicts.settings.readmitProbes - health.goodProbes : nil)
        }
        let keyspaces = cluster.keyspaces.filter { !$0.name.rawValue.hasPrefix(AccessRule.systemKeyspacePrefix) }.map { policy in
            let term = policy.topology == .singleLeader ? leadership.snapshot(policy.name) : nil
            return TopologyAnswer.Keyspace(
                name: policy.name.rawValue, topology: policy.topology, replicas: policy.replicas.map(\.rawValue),
                leader: policy.topology == .singleLeader ? (term.map { $0.leader } ?? policy.leader)?.rawValue : nil,
                epoch: term?.epoch, home: policy.home?.rawValue, homes: policy.homes, residency: policy.residency,
                consistency: policy.consistency.default)
        }
        let states = replicator.peerStates()
        let staleness = replicator.readView().stalenessMs
        let ownHighWater = store.appliedHighWater()[region] ?? 0
        var links: [TopologyAnswer.Link] = []
        for peer in cluster.regions where peer.name != region {
            guard let (outbound, _) = states[peer.name] else { continue }
            links.append(TopologyAnswer.Link(
                to: peer.name.rawValue, state: outbound.health.rawValue, rttMs: cluster.wan.rttMs(region, peer.name),
                lagEntries: ownHighWater - min(outbound.acknowledged, ownHighWater), stalenessMs: staleness[peer.name]))
        }
        return TopologyAnswer(cluster: cluster.name, region: region.rawValue, version: version, quorate: verdicts.quorate,
                              regions: regions, keyspaces: keyspaces, links: links)
    }

    /// `GET /v1/topology`: the topology as JSON, or with `Accept: text/event-stream` a stream of it, one event per
    /// version (the first at once, unless `Last-Event-ID` names the current version), with a comment between
    /// changes so a client can tell a quiet stream from a dead one.
    func topologyRoute(_ request: Request) throws(MeridianError) -> Response {
        var lastSeen: UInt64?
        if let raw = request.headers[HTTPField.Name("Last-Event-ID")!] {
            let digits = raw.utf8
            guard (1...19).contains(digits.count), digits.allSatisfy({ (0x30...0x39).contains($0) }), digits.first != 0x30, let version = UInt64(raw) else {
                throw MeridianError(.invalidHeader, "Last-Event-ID must be the id of a topology event (a version: 1 to 19 digits, no leading zero); got '\(raw.prefix(40))'.",
                                    context: ["header": "Last-Event-ID"])
            }
            lastSeen = version
        }
        let accept = request.headers[.accept] ?? ""
        guard accept.contains("text/event-stream") else {
            return JSON.response(topologyAnswer())
        }
        guard let (events, close) = topology.subscribe() else {
            throw MeridianError(.overloaded, "This region already serves \(topology.streamsMax) topology streams (limits.topology_streams_max); poll GET /v1/topology or retry later.",
                                context: ["limit": "topology_streams_max"])
        }
        let retryMs = limits.heartbeatIntervalMs * limits.missedHeartbeatsMax
        let seenBefore = lastSeen
        let body = ResponseBody { writer in
            defer { close() }
            try await withGracefulShutdownHandler {
                try await writer.write(ByteBuffer(string: "retry: \(retryMs)\n\n"))
                var sent = seenBefore
                if sent != self.topology.snapshot.version {
                    sent = try await self.writeTopologyEvent(&writer)
                }
                for await event in events {
                    switch event {
                    case .changed(let version):
                        guard version != sent else { continue }
                        sent = try await self.writeTopologyEvent(&writer)
                    case .keepalive:
                        try await writer.write(ByteBuffer(string: ": keepalive\n\n"))
                    }
                }
            } onGracefulShutdown: {
                close()
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"], body: body)
    }

    /// Writes the current topology as one event; returns its version.
    private func writeTopologyEvent(_ writer: inout any ResponseBodyWriter) async throws -> UInt64 {
        let answer = topologyAnswer()
        var event = ByteBuffer(string: "id: \(answer.version)\nevent: topology\ndata: ")
        var json = JSON.encode(answer)
        event.writeBuffer(&json)
        event.writeString("\n\n")
        try await writer.write(event)
        return answer.version
    }
}
