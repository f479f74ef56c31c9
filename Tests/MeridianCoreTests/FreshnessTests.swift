// Proves the two pieces of inbound-stream bookkeeping the node and the simulator share: freshness from
// echoed heartbeats (fresh only once the heartbeat's log end is applied; echoes from the future or of no
// ack vouch for nothing) and the apply queue (consecutive ranges merge; a re-acknowledgement waits; only what the
// origin said is durable is taken, the rest waits queued).
import MeridianCore
import Testing

@Suite struct FreshnessTrackerTests {
    @Test func freshOnlyOnceTheHeartbeatsLogEndIsApplied() {
        var tracker = FreshnessTracker()
        #expect(tracker.stalenessMs(now: 1_000) == nil, "no heartbeat yet: unknown")
        tracker.heard(logHighWater: 10, echo: 900, now: 1_000, applied: 8)
        #expect(tracker.stalenessMs(now: 1_000) == nil, "entries 9 and 10 are not applied yet")
        tracker.advance(applied: 10)
        #expect(tracker.stalenessMs(now: 1_000) == 100)
        // An echo of 0 (the origin has no ack yet) or from the future (a previous run's clock) vouches for nothing.
        tracker.heard(logHighWater: 10, echo: 0, now: 1_100, applied: 10)
        tracker.heard(logHighWater: 10, echo: 5_000, now: 1_100, applied: 10)
        #expect(tracker.stalenessMs(now: 1_100) == 200)
        tracker.heard(logHighWater: 12, echo: 1_050, now: 1_100, applied: 12)
        #expect(tracker.stalenessMs(now: 1_100) == 50)
    }
}

@Suite struct ApplyQueueTests {
    let us = RegionName(validated: "us-east")

    func entry(_ sequence: UInt64) -> ReplicationEntry {
        ReplicationEntry(origin: us, sequence: sequence, hlc: HLCTimestamp(physicalMs: sequence, logical: 0, region: us), epoch: 0,
                         keyspace: try! KeyspaceName("k"), key: try! Key("k\(sequence)"), operation: .put, contentType: "", value: [])
    }

    @Test func consecutiveRangesMergeAndAReacknowledgementWaits() throws {
        var receiver = LogReceiver(origin: us, applied: 0)
        var queue = ApplyQueue()
        queue.add(try receiver.received(from: 1, through: 2, entries: [entry(1), entry(2)]), from: 1)
        queue.add(try receiver.received(from: 3, through: 4, entries: [entry(4)]), from: 3)
        let taken = queue.takeBatch()
        let batch = try #require(taken)
        #expect(batch.from == 1 && batch.through == 4 && batch.entries.map(\.sequence) == [1, 2, 4])
        let second = queue.takeBatch()
        #expect(second == nil)
        _ = receiver.persisted(upTo: 4)
        queue.add(try receiver.received(from: 1, through: 4, entries: [entry(1)]), from: 1)
        let none = queue.takeBatch(), again = queue.takeReacknowledgement(), once = queue.takeReacknowledgement()
        #expect(none == nil && again == 4 && once == nil)
    }

    @Test func onlyWhatTheOriginMadeDurableIsTaken() throws {
        var receiver = LogReceiver(origin: us, applied: 0)
        var queue = ApplyQueue()
        // Entries 1-5 arrived (3 is of a keyspace kept elsewhere); the origin's fsync covered 2 so far.
        queue.add(try receiver.received(from: 1, through: 5, entries: [entry(1), entry(2), entry(4), entry(5)]), from: 1)
        let firstTaken = queue.takeBatch(through: 2)
        let first = try #require(firstTaken)
        #expect(first.from == 1 && first.through == 2 && first.entries.map(\.sequence) == [1, 2])
        let waiting = queue.takeBatch(through: 2)
        #expect(waiting == nil, "3-5 wait for the origin's next durable point")
        // The rest arrives in order and merges with what waits; a durable point inside a gap of entries cuts there.
        queue.add(try receiver.received(from: 6, through: 6, entries: [entry(6)]), from: 6)
        let secondTaken = queue.takeBatch(through: 3)
        let second = try #require(secondTaken)
        #expect(second.from == 3 && second.through == 3 && second.entries.isEmpty)
        let thirdTaken = queue.takeBatch(through: 9)
        let third = try #require(thirdTaken)
        #expect(third.from == 4 && third.through == 6 && third.entries.map(\.sequence) == [4, 5, 6])
        let drained = queue.takeBatch(through: 9)
        #expect(drained == nil)
    }
}
