// GET /v1/topology over the router in memory, the bound on its streams, and the feed that pushes its changes.
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import MeridianAPI
import MeridianCore
@testable import MeridianNode
import NIOCore
import Testing

@Suite struct TopologyTests {
    let fixture = NodeFixture()

    @Test func theTopologyNamesRegionsVerdictsLeadersAndResidency() async throws {
        try await fixture.withApp { client in
            try await client.execute(uri: "/v1/topology", method: .get) { response throws in
                #expect(response.status == .ok)
                let answer = try JSONDecoder().decode(TopologyAnswer.self, from: Data(buffer: response.body))
                #expect(answer.cluster == "test" && answer.region == "us-east" && answer.version >= 1)
                #expect(answer.regions.map(\.name) == ["us-east", "eu-west"])
                #expect(answer.regions.map(\.url) == ["http://127.0.0.1:17101", "http://127.0.0.1:17102"])
                #expect(answer.regions.allSatisfy { $0.health == .up && $0.suspectedBy.isEmpty && $0.readmitProbesLeft == nil })
                let accounts = try #require(answer.keyspaces.first { $0.name == "accounts" })
                #expect(accounts.topology == .singleLeader && accounts.leader == "us-east" && accounts.consistency == .strong)
                let euUsers = try #require(answer.keyspaces.first { $0.name == "eu_users" })
                #expect(euUsers.home == "eu-west" && euUsers.leader == nil && euUsers.residency.regions == [RegionName(validated: "eu-west")])
                #expect(euUsers.residency.access == .proxy)
                #expect(answer.links.map(\.to) == ["eu-west"])
            }
        }
    }

    @Test func streamsBeyondTheLimitAreRefusedWithOverloaded() async throws {
        let yaml = NodeFixture.yaml.replacingOccurrences(of: "siblings_max: 3 }", with: "siblings_max: 3, topology_streams_max: 1 }")
        try await fixture.withNode(yaml: yaml) { node, client in
            let held = try #require(node.topology.subscribe())
            #expect(node.topology.subscribe() == nil)
            try await client.execute(uri: "/v1/topology", method: .get, headers: [.accept: "text/event-stream"]) { response throws in
                #expect(response.status == .serviceUnavailable)
                #expect(try errorCode(response) == "overloaded")
            }
            // A plain GET is not a stream: still served.
            try await client.execute(uri: "/v1/topology", method: .get) { response in #expect(response.status == .ok) }
            held.close()
            #expect(node.topology.openStreams == 0)
            #expect(node.topology.subscribe() != nil)
        }
    }

    @Test func theFeedPushesChangesAndKeepsQuietStreamsAlive() async throws {
        let us = try RegionName("us-east"), eu = try RegionName("eu-west"), ap = try RegionName("ap-southeast")
        let feed = TopologyFeed(region: us, regions: [us, eu, ap], readmitProbes: 2, streamsMax: 4, keepaliveProbes: 3)
        let (events, close) = try #require(feed.subscribe())
        var iterator = events.makeAsyncIterator()
        let keyspace = try KeyspaceName("accounts")
        // Quiet probes: a keepalive every third.
        for _ in 0..<3 { _ = feed.probe(ownSuspects: [], reports: [eu: [], ap: []], leaders: [keyspace: (us, 1)]) }
        // The first probe saw the leader for the first time: a change.
        #expect(await iterator.next() == .changed(2))
        for _ in 0..<3 { _ = feed.probe(ownSuspects: [], reports: [eu: [], ap: []], leaders: [keyspace: (us, 1)]) }
        #expect(await iterator.next() == .keepalive)
        // ap-southeast dies: suspect, then down once eu-west's vote agrees.
        #expect(feed.probe(ownSuspects: [ap], reports: [eu: []], leaders: [keyspace: (us, 1)]) == [.init(region: ap, from: .up, to: .suspect)])
        #expect(await iterator.next() == .changed(3))
        #expect(feed.probe(ownSuspects: [ap], reports: [eu: [ap]], leaders: [keyspace: (us, 1)]) == [.init(region: ap, from: .suspect, to: .down)])
        #expect(await iterator.next() == .changed(4))
        // A new term is a change too.
        _ = feed.probe(ownSuspects: [ap], reports: [eu: [ap]], leaders: [keyspace: (eu, 2)])
        #expect(await iterator.next() == .changed(5))
        #expect(feed.snapshot.verdicts.health[ap]?.verdict == .down)
        close()
        #expect(await iterator.next() == nil)
        #expect(feed.openStreams == 0)
    }
}
