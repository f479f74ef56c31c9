// Proves the origin's side of a stream around a commit whose entries shipped before its COMMIT: the peer hears the
// durable point first on a new stream, then as commits complete; and once a commit fails, the stream announces no
// durable point again (not even one already queued) and ships nothing more, so the peer never applies the lost
// entries under numbers the next writes take, and a smaller next batch finds no shipper ahead of it.
import MeridianCore
@testable import MeridianNode
import Testing

@Suite struct OutboundLinkTests {
    static func link(logEnd: UInt64) -> OutboundLink {
        OutboundLink(peer: RegionName(validated: "eu-west"), endpoint: Endpoint(host: "127.0.0.1", port: 1), silenceLimit: .seconds(5),
                     acknowledged: 0, logHighWater: logEnd, shipperLimits: LogShipper.Limits(batchEntriesMax: 8, inflightEntriesMax: 64), forwardsMax: 4)
    }

    /// What the connection's writer sends for the next `count` commands (all of them when nil: the outbox is finished).
    static func send(_ link: OutboundLink, _ commands: inout AsyncStream<OutboundLink.Command>.AsyncIterator, count: Int? = nil) async -> [String] {
        var sent: [String] = []
        var taken = 0
        while count.map({ taken < $0 }) ?? true, let command = await commands.next() {
            taken += 1
            switch command {
            case .ship: if let range = link.takeShipment() { sent.append("ship \(range.lowerBound)-\(range.upperBound)") }
            case .durable: if let through = link.takeDurable() { sent.append("durable \(through)") }
            case .reset: sent.append("reset")
            case .heartbeat, .forward: break
            }
        }
        return sent
    }

    @Test func aFailedCommitEndsTheStreamWithoutAnotherDurablePoint() async throws {
        let link = Self.link(logEnd: 15)
        let (commands, outbox) = AsyncStream<OutboundLink.Command>.makeStream()
        link.connected(outbox: outbox)
        var writer = commands.makeAsyncIterator()
        try link.welcomed(applied: 10, logFloor: 0)
        var sent = await Self.send(link, &writer, count: 2)
        link.logGrew(to: 20)          // 16-20 written, their COMMIT running: they ship
        sent += await Self.send(link, &writer, count: 1)
        link.durable(through: 20)     // it completed: a durable point is queued, the writer is slow to send it
        link.logGrew(to: 30)          // 21-30 written
        link.commitFailed(logEndsAt: 20)
        link.logGrew(to: 25)          // the next commit reuses 21-25: nothing more ships here, and nothing traps
        link.durable(through: 25)
        outbox.finish()
        sent += await Self.send(link, &writer)
        #expect(sent == ["durable 15", "ship 11-15", "ship 16-20", "reset"],
                "the queued durable point would have said 25, under which the peer would apply the lost 21-25: \(sent)")
        #expect(link.snapshot.logHighWater == 25, "heartbeats name the durable end")
    }

    @Test func aNewStreamHearsTheDurablePointBeforeItsEntries() async throws {
        let link = Self.link(logEnd: 12)
        let (commands, outbox) = AsyncStream<OutboundLink.Command>.makeStream()
        link.connected(outbox: outbox)
        try link.welcomed(applied: 10, logFloor: 0)
        link.logGrew(to: 14)
        outbox.finish()
        var writer = commands.makeAsyncIterator()
        let sent = await Self.send(link, &writer)
        #expect(sent == ["durable 12", "ship 11-14"], "\(sent)")
    }
}
