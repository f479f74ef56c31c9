// Proves the node's inbound replication stream over a real socket: a batch that arrives just before its
// stream ends (the origin closed it, or died and its kernel reset the connection) is still applied, up to the
// durable point its origin sent. An origin that died never sends those entries again, and a region holding less of
// its log than another cannot take over from it (the game day saw the last region in the failover order win for
// that reason). Entries beyond the origin's last durable point are never applied: the origin may have lost them
// with its commit, and given their numbers to other writes, which a later stream brings.
import Foundation
import MeridianCore
import MeridianHarness
@testable import MeridianNode
import MeridianStorage
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite struct InboundStreamTests {
    static let rounds: UInt64 = 8
    static let entriesPerRound: UInt64 = 25

    /// us-east's node, running, with eu-west played by the test over a raw peer connection.
    static func withNode(holdsDuties: @escaping @Sendable () -> Bool = { true }, _ test: (RegionNode, Endpoint) async throws -> Void) async throws {
        let (client, peer, euClient, euPeer) = (try LocalProcesses.freePort(), try LocalProcesses.freePort(), try LocalProcesses.freePort(), try LocalProcesses.freePort())
        let config = try ClusterConfig.parse(yaml: """
            cluster: test
            regions:
              - { name: us-east, client: 127.0.0.1:\(client), peer: 127.0.0.1:\(peer) }
              - { name: eu-west, client: 127.0.0.1:\(euClient), peer: 127.0.0.1:\(euPeer) }
            keyspaces:
              - { name: profiles, topology: multi-leader, conflict: lww, ack: async }
            """, file: "inbound.yaml")
        var configuration = try NodeConfiguration(cluster: config, region: RegionName(validated: "us-east"), peerRoute: .direct).withTestRootKey()
        configuration.holdsDuties = holdsDuties
        let node = try await RegionNode(configuration: configuration, store: MemoryStore.factory(MemoryDisks()))
        let running = Task { try await node.run() }
        defer { running.cancel() }
        let endpoint = Endpoint(host: "127.0.0.1", port: peer)
        for _ in 0..<200 where !(await Self.accepts(endpoint)) { try await Task.sleep(for: .milliseconds(25)) }
        try await test(node, endpoint)
        running.cancel()
        _ = await running.result
    }

    static func accepts(_ endpoint: Endpoint) async -> Bool {
        guard let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: endpoint.host, port: endpoint.port).get() else { return false }
        try? await channel.close()
        return true
    }

    static func batch(from: UInt64, through: UInt64, value: String = "v") throws -> PeerFrame {
        let eu = RegionName(validated: "eu-west")
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        return .batch(from: from, through: through, entries: try (from...through).map { sequence in
            ReplicationEntry(origin: eu, sequence: sequence, hlc: HLCTimestamp(physicalMs: now, logical: UInt32(sequence), region: eu), epoch: 0,
                             keyspace: try KeyspaceName("profiles"), key: try Key("k\(sequence)"), operation: .put,
                             contentType: "text/plain", value: Array("\(value)\(sequence)".utf8))
        })
    }

    /// Opens a stream as eu-west, sends `frames` after the hello, and ends it.
    static func stream(to endpoint: Endpoint, codec: PeerFrameCodec, _ frames: [PeerFrame]) async throws {
        let eu = RegionName(validated: "eu-west")
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: endpoint.host, port: endpoint.port) { channel in PeerChannel.wrap(channel, codec: codec, tls: nil, dialing: nil).map(\.channel) }
        try await channel.executeThenClose { _, outbound in
            try await outbound.write(.hello(PeerHello(cluster: "test", from: eu, to: RegionName(validated: "us-east"))))
            for frame in frames { try await outbound.write(frame) }
        }
    }

    /// A node among several sharing a region's store whose lease ran out (a process paused past it, say) answers
    /// nothing from then on, before its lease keeper stops it: its client connections and peer streams close at their
    /// next message, so it neither serves a request nor applies a peer's entries.
    @Test(.timeLimit(.minutes(1)))
    func aNodeThatNoLongerHoldsItsRegionsDutiesAnswersNothing() async throws {
        let holding = Mutex(true)
        try await Self.withNode(holdsDuties: { holding.withLock { $0 } }) { node, endpoint in
            let limits = node.configuration.cluster.limits
            let codec = PeerFrameCodec(valueBytesMax: limits.valueBytesMax, frameBytesMax: limits.replicationFrameBytesMax)
            let eu = RegionName(validated: "eu-west")
            try await Self.stream(to: endpoint, codec: codec, [.durable(through: 5), try Self.batch(from: 1, through: 5)])
            for _ in 0..<200 where (node.store.appliedHighWater()[eu] ?? 0) < 5 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(node.store.appliedHighWater()[eu] == 5)
            let client = node.configuration.own.client
            let api = try await HTTPConnection.connect(host: client.host, port: client.port)
            #expect(try await api.request("GET", "/v1/kv/profiles/k1").status == 200)

            holding.withLock { $0 = false }
            let answer = try? await api.request("GET", "/v1/kv/profiles/k1")
            #expect(answer == nil, "answered \(answer?.status ?? 0) after its duties ended")
            await api.close()
            let fresh = try? await HTTPConnection.connect(host: client.host, port: client.port)
            let write = try? await fresh?.request("PUT", "/v1/kv/profiles/late", body: Array("x".utf8))
            #expect(write == nil, "a new connection's write was answered \(write?.status ?? 0)")
            await fresh?.close()
            try? await Self.stream(to: endpoint, codec: codec, [.durable(through: 10), try Self.batch(from: 6, through: 10)])
            try await Task.sleep(for: .milliseconds(300))
            #expect(node.store.appliedHighWater()[eu] == 5, "a peer's entries applied after its duties ended")
            #expect(try await node.store.get(keyspace: KeyspaceName("profiles"), key: Key("late")) == nil)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func entriesBeyondTheOriginsDurablePointAreNeverApplied() async throws {
        try await Self.withNode { node, endpoint in
            let limits = node.configuration.cluster.limits
            let codec = PeerFrameCodec(valueBytesMax: limits.valueBytesMax, frameBytesMax: limits.replicationFrameBytesMax)
            let eu = RegionName(validated: "eu-west")
            // 1-25 shipped while the commit's fsync ran, durable through 20 when the origin died.
            try await Self.stream(to: endpoint, codec: codec, [.durable(through: 0), try Self.batch(from: 1, through: 25), .durable(through: 20)])
            var applied: UInt64 = 0
            for _ in 0..<200 where applied < 20 {
                applied = node.store.appliedHighWater()[eu] ?? 0
                try await Task.sleep(for: .milliseconds(10))
            }
            try await Task.sleep(for: .milliseconds(300))
            applied = node.store.appliedHighWater()[eu] ?? 0
            #expect(applied == 20, "applied through \(applied): the origin said its log was durable through 20")
            #expect(try await node.store.get(keyspace: KeyspaceName("profiles"), key: Key("k21")) == nil, "entry 21 was lost with its origin's commit")
            // The restarted origin gives 21-25 to other writes: a new stream brings them, and they are what applies.
            try await Self.stream(to: endpoint, codec: codec, [.durable(through: 25), try Self.batch(from: 21, through: 25, value: "w")])
            for _ in 0..<200 where applied < 25 {
                applied = node.store.appliedHighWater()[eu] ?? 0
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(applied == 25)
            let value = try await node.store.get(keyspace: KeyspaceName("profiles"), key: Key("k21"))?.value
            #expect(value == Array("w21".utf8), "the write numbered 21 now: \(String(decoding: value ?? [], as: UTF8.self))")
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: [false, true])
    func aBatchThatArrivesWithItsStreamsEndIsApplied(reset: Bool) async throws {
        try await Self.withNode { node, endpoint in
            let limits = node.configuration.cluster.limits
            let codec = PeerFrameCodec(valueBytesMax: limits.valueBytesMax, frameBytesMax: limits.replicationFrameBytesMax)
            let eu = RegionName(validated: "eu-west")
            // Each round a new stream sends the next entries and ends at once; whether the node applied them
            // before it noticed the end is a race, so the rounds make losing it show.
            for round in 1...Self.rounds {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: endpoint.host, port: endpoint.port) { channel in PeerChannel.wrap(channel, codec: codec, tls: nil, dialing: nil).map(\.channel) }
                try await channel.executeThenClose { _, outbound in
                    try await outbound.write(.hello(PeerHello(cluster: "test", from: eu, to: RegionName(validated: "us-east"))))
                    try await outbound.write(try Self.batch(from: (round - 1) * Self.entriesPerRound + 1, through: round * Self.entriesPerRound))
                    try await outbound.write(.durable(through: round * Self.entriesPerRound))
                    if reset {
                        // What a killed process's kernel does to a connection with unread bytes (the node's welcome).
                        try await (channel.channel as! any SocketOptionProvider).setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
                    }
                }
                var applied: UInt64 = 0
                for _ in 0..<200 {
                    applied = node.store.appliedHighWater()[eu] ?? 0
                    if applied == round * Self.entriesPerRound { break }
                    try await Task.sleep(for: .milliseconds(10))
                }
                try #require(applied == round * Self.entriesPerRound,
                             "round \(round): applied through \(applied), sent through \(round * Self.entriesPerRound) before the stream \(reset ? "was reset" : "closed")")
            }
        }
    }
}
