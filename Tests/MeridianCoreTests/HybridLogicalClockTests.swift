// Proves the HLC properties the replication layer relies on — strictly increasing, never behind a
// received timestamp, bounded drift from physical time, refusal of remote clocks past the maximum
// offset — by driving random event sequences (seeded; PropertyBased prints the seed on failure).
import MeridianCore
import PropertyBased
import Testing

@Suite struct HybridLogicalClockTests {
    let here = RegionName(validated: "us-east")
    let there = RegionName(validated: "eu-west")

    @Test func issuesIncreasingTimestampsWithinOneMillisecond() {
        var clock = HybridLogicalClock(region: here)
        let first = clock.now(physicalMs: 1000)
        let second = clock.now(physicalMs: 1000)
        let third = clock.now(physicalMs: 999)
        #expect(first < second && second < third)
        #expect(third.physicalMs == 1000 && third.logical == 2)
        #expect(clock.now(physicalMs: 1001) == HLCTimestamp(physicalMs: 1001, logical: 0, region: here))
    }

    @Test func receiveMovesPastTheRemoteTimestamp() throws {
        var clock = HybridLogicalClock(region: here)
        _ = clock.now(physicalMs: 1000)
        let remote = HLCTimestamp(physicalMs: 1200, logical: 7, region: there)
        let after = try clock.receive(remote, physicalMs: 1000)
        #expect(after > remote)
        #expect(after.physicalMs == 1200 && after.logical == 8)
        #expect(clock.now(physicalMs: 1000) > after)
    }

    @Test func refusesARemoteClockBeyondTheMaximumOffsetAndStaysUnchanged() {
        var clock = HybridLogicalClock(region: here, maxOffsetMs: 500)
        let before = clock.now(physicalMs: 10_000)
        do {
            _ = try clock.receive(HLCTimestamp(physicalMs: 10_501, logical: 0, region: there), physicalMs: 10_000)
            Issue.record("accepted a timestamp 501 ms ahead")
        } catch {
            #expect(error.code == .clockOffsetExceeded)
            #expect(error.context["lead_ms"] == "501")
        }
        #expect(clock.last == before)
        #expect((try? clock.receive(HLCTimestamp(physicalMs: 10_500, logical: 0, region: there), physicalMs: 10_000)) != nil)
    }

    @Test func restartsAboveItsPersistedFloor() {
        let floor = HLCTimestamp(physicalMs: 5000, logical: 3, region: here)
        var clock = HybridLogicalClock(region: here, floor: floor)
        #expect(clock.now(physicalMs: 4000) > floor)
    }

    @Test func joiningTwoCopiesKeepsTheLaterReading() {
        // A local commit and a replicated apply each advance their own copy of the clock; joining must never
        // move it back, or the next local write could reuse a timestamp already issued.
        var base = HybridLogicalClock(region: here)
        _ = base.now(physicalMs: 100)
        var committing = base, applying = base
        let issued = (0..<5).map { _ in committing.now(physicalMs: 100) }
        _ = try? applying.receive(HLCTimestamp(physicalMs: 99, logical: 0, region: there), physicalMs: 100)
        var joined = base
        joined.advance(past: committing.last)
        joined.advance(past: applying.last)
        #expect(joined.now(physicalMs: 100) > issued.last!)
        joined.advance(past: HLCTimestamp(physicalMs: 1, logical: 0, region: here))
        #expect(joined.last.physicalMs == 100, "advancing to an earlier reading changes nothing")
    }

    @Test func logicalCounterOverflowBorrowsAMillisecond() {
        var clock = HybridLogicalClock(region: here, floor: HLCTimestamp(physicalMs: 100, logical: .max, region: here))
        let next = clock.now(physicalMs: 50)
        #expect(next.physicalMs == 101 && next.logical == 0)
    }

    @Test func propertiesHoldOverRandomEventSequences() async {
        // Each event: (receive?, physical clock advance in ms, remote clock offset from ours in ms, remote logical).
        let events = zip(Gen.bool, Gen.int(in: -3...40), Gen.int(in: -2000...700), Gen.uint32(in: 0...1000)).array(of: 1...300)
        await propertyCheck(count: 300, input: events) { events in
            var clock = HybridLogicalClock(region: here, maxOffsetMs: 500)
            var physical: UInt64 = 1_000_000
            var previous: HLCTimestamp?
            var highestAcceptedRemoteMs: UInt64 = 0
            var highestPhysical: UInt64 = 0
            for (isReceive, advance, offset, logical) in events {
                // Physical clocks may step back a little (NTP); the HLC must not.
                physical = UInt64(Int(physical) + advance)
                highestPhysical = max(highestPhysical, physical)
                let issued: HLCTimestamp
                if isReceive {
                    let remote = HLCTimestamp(physicalMs: UInt64(Int(physical) + offset), logical: logical, region: there)
                    switch Result(catching: { () throws(MeridianError) in try clock.receive(remote, physicalMs: physical) }) {
                    case .success(let timestamp):
                        issued = timestamp
                        #expect(offset <= 500)
                        #expect(issued > remote, "never behind a received timestamp")
                        highestAcceptedRemoteMs = max(highestAcceptedRemoteMs, remote.physicalMs)
                    case .failure(let error):
                        #expect(offset > 500)
                        #expect(error.code == .clockOffsetExceeded)
                        continue
                    }
                } else {
                    issued = clock.now(physicalMs: physical)
                }
                if let previous { #expect(issued > previous, "strictly increasing") }
                #expect(issued.physicalMs >= physical, "never behind physical time")
                // Drift bound: ahead of the highest physical reading only by what accepted remotes led by
                // (each at most maxOffsetMs), plus 1 ms of possible logical-counter overflow.
                #expect(issued.physicalMs <= max(highestPhysical, highestAcceptedRemoteMs) + 1, "bounded drift")
                #expect(issued.physicalMs <= highestPhysical + 500 + 1)
                previous = issued
            }
        }
    }
}
