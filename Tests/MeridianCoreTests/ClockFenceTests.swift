// Proves the clock fence (`ClockFence`): a bracket outside the maximum offset is evidence, one spanning it is
// not however far its middle lies (a delayed or paused exchange cannot fence a region); a region fences
// itself only when half the cluster or more is provably far from it, so with three regions the skewed one
// fences and the two others do not; evidence stands until newer evidence replaces it.
import MeridianCore
import Testing

@Suite struct ClockFenceTests {
    static let (us, eu, ap) = (RegionName(validated: "us-east"), RegionName(validated: "eu-west"), RegionName(validated: "ap-southeast"))

    @Test func theBracketBoundsThePeersOffsetWhateverTheDelay() {
        var fence = ClockFence(region: Self.us, peers: [Self.us, Self.eu, Self.ap], maxOffsetMs: 500)
        // Sent at 10,000, answered with the peer's 12,100, received at 10,080: the peer leads by 2,020 to 2,100 ms.
        fence.sample(peer: Self.eu, sentMs: 10_000, peerMs: 12_100, receivedMs: 10_080)
        #expect(fence.offsets[Self.eu] == ClockFence.Offset(lowMs: 2_020, highMs: 2_100))
        #expect(fence.offsets[Self.eu]?.leastMagnitudeMs == 2_020)
        // A peer behind.
        fence.sample(peer: Self.ap, sentMs: 10_000, peerMs: 9_000, receivedMs: 10_200)
        #expect(fence.offsets[Self.ap]?.leastMagnitudeMs == 1_000)
        // A paused exchange: 5 s between send and receipt. The bracket spans zero, so it proves nothing.
        fence.sample(peer: Self.ap, sentMs: 10_000, peerMs: 12_000, receivedMs: 15_000)
        #expect(fence.offsets[Self.ap]?.leastMagnitudeMs == 0)
        // An answer received before it was sent is not a sample.
        let backwards = fence.sample(peer: Self.ap, sentMs: 10_000, peerMs: 0, receivedMs: 9_000)
        #expect(!backwards)
        #expect(fence.offsets[Self.ap]?.leastMagnitudeMs == 0)
    }

    @Test func onlyTheRegionFarFromHalfTheClusterFencesItself() {
        let all = [Self.us, Self.eu, Self.ap]
        // us-east runs 3 s ahead; eu-west and ap-southeast agree within 100 ms. Exchanges take 40 ms.
        let skew: [RegionName: UInt64] = [Self.us: 3_000, Self.eu: 0, Self.ap: 100]
        var fences = Dictionary(uniqueKeysWithValues: all.map { ($0, ClockFence(region: $0, peers: all, maxOffsetMs: 500)) })
        let realMs: UInt64 = 1_000_000
        for region in all {
            for peer in all where peer != region {
                fences[region]!.sample(peer: peer, sentMs: realMs + skew[region]!, peerMs: realMs + 20 + skew[peer]!, receivedMs: realMs + 40 + skew[region]!)
            }
        }
        #expect(fences[Self.us]!.verdict == .fenced(outOfTolerance: [Self.ap, Self.eu]))
        #expect(fences[Self.eu]!.verdict == .withinTolerance, "one far peer of three is that peer's problem")
        #expect(fences[Self.ap]!.verdict == .withinTolerance)
        let refusal = fences[Self.us]!.refusal
        #expect(refusal?.code == .clockFenced)
        #expect(refusal?.message.contains("max_clock_offset_ms") == true)
        #expect(fences[Self.eu]!.refusal == nil)
    }

    @Test func evidenceStandsUntilNewerEvidenceReplacesIt() {
        var fence = ClockFence(region: Self.us, peers: [Self.us, Self.eu, Self.ap], maxOffsetMs: 500)
        #expect(!fence.isFenced, "a region that has heard nobody is not fenced")
        fence.sample(peer: Self.eu, sentMs: 0, peerMs: 5_000, receivedMs: 50)
        #expect(!fence.isFenced, "one far peer of three")
        let changed = fence.sample(peer: Self.ap, sentMs: 0, peerMs: 5_000, receivedMs: 50)
        #expect(changed, "the verdict changed")
        #expect(fence.isFenced)
        // Cut off: no sample arrives, and the region stays fenced.
        #expect(fence.isFenced)
        // The clock is corrected: fresh brackets within the limit lift the fence.
        let lifted = fence.sample(peer: Self.eu, sentMs: 100_000, peerMs: 100_030, receivedMs: 100_060)
        #expect(lifted, "one far peer of three left: within tolerance again")
        fence.sample(peer: Self.ap, sentMs: 100_000, peerMs: 100_030, receivedMs: 100_060)
        #expect(!fence.isFenced)
        // Exactly at the limit is within it.
        fence.sample(peer: Self.eu, sentMs: 0, peerMs: 500, receivedMs: 0)
        fence.sample(peer: Self.ap, sentMs: 0, peerMs: 500, receivedMs: 0)
        #expect(!fence.isFenced)
    }

    @Test func aRegionWritesOnlyOnceAMajorityHasBracketedItWithinTolerance() {
        var fence = ClockFence(region: Self.us, peers: [Self.us, Self.eu, Self.ap], maxOffsetMs: 500)
        // Just started: no evidence either way. It may lead (a cluster must start) but takes no write.
        #expect(fence.verdict == .unproven(inTolerance: []))
        #expect(!fence.isFenced && !fence.mayWrite)
        #expect(fence.refusal?.code == .clockUnverified)
        #expect(fence.refusal?.message.contains("max_clock_offset_ms") == true)
        // One far peer of three neither fences it nor proves it.
        fence.sample(peer: Self.eu, sentMs: 0, peerMs: 5_000, receivedMs: 50)
        #expect(fence.verdict == .unproven(inTolerance: []))
        // A paused exchange (a bracket wider than twice the maximum) proves nothing.
        fence.sample(peer: Self.ap, sentMs: 0, peerMs: 500, receivedMs: 3_000)
        #expect(fence.verdict == .unproven(inTolerance: []))
        // A tight bracket within the limit: with itself, two of three.
        let changed = fence.sample(peer: Self.ap, sentMs: 10_000, peerMs: 10_030, receivedMs: 10_060)
        #expect(changed)
        #expect(fence.verdict == .withinTolerance && fence.mayWrite && fence.refusal == nil)
        // Proof does not expire: cut off now, it keeps writing.
        #expect(fence.mayWrite)
        // A one-region cluster needs nobody.
        #expect(ClockFence(region: Self.us, peers: [], maxOffsetMs: 500).mayWrite)
        // Two regions: the one peer must answer.
        var pair = ClockFence(region: Self.us, peers: [Self.eu], maxOffsetMs: 500)
        #expect(!pair.mayWrite)
        pair.sample(peer: Self.eu, sentMs: 0, peerMs: 10, receivedMs: 20)
        #expect(pair.mayWrite)
    }

    @Test func aReconnectedPeerNoLongerVouchesForThisClockButStillFencesIt() {
        let (us, eu, ap) = (RegionName(validated: "us-east"), RegionName(validated: "eu-west"), RegionName(validated: "ap-southeast"))
        var fence = ClockFence(region: us, peers: [us, eu, ap], maxOffsetMs: 500)
        fence.sample(peer: eu, sentMs: 1_000, peerMs: 1_050, receivedMs: 1_100)
        #expect(fence.mayWrite)
        // eu-west's stream connects anew (it may have restarted with its clock set otherwise): unproven again.
        let changed = fence.peerReconnected(eu)
        #expect(changed && !fence.mayWrite && !fence.isFenced)
        fence.sample(peer: eu, sentMs: 2_000, peerMs: 2_050, receivedMs: 2_100)
        #expect(fence.mayWrite)
        // Evidence that this region is out of tolerance survives reconnects: a region found out stays fenced.
        fence.sample(peer: eu, sentMs: 3_000, peerMs: 5_000, receivedMs: 3_100)
        fence.sample(peer: ap, sentMs: 3_000, peerMs: 5_000, receivedMs: 3_100)
        #expect(fence.isFenced)
        let dropped = fence.peerReconnected(eu)
        #expect(!dropped && fence.isFenced)
    }

    @Test func aSkewedRegionStartingUpIsFencedBeforeItEverWrites() {
        // us-east restarts 2 s ahead. Whatever order its peers' brackets arrive in, it never passes through
        // a state that takes writes.
        for order in [[Self.eu, Self.ap], [Self.ap, Self.eu]] {
            var fence = ClockFence(region: Self.us, peers: [Self.us, Self.eu, Self.ap], maxOffsetMs: 500)
            for peer in order {
                #expect(!fence.mayWrite)
                fence.sample(peer: peer, sentMs: 12_000, peerMs: 10_040, receivedMs: 12_080)
            }
            #expect(fence.isFenced && !fence.mayWrite)
        }
    }

    @Test func twoRegionsThatDisagreeBothFence() {
        // Neither can tell whose clock is wrong, so neither writes.
        var fence = ClockFence(region: Self.us, peers: [Self.eu], maxOffsetMs: 500)
        fence.sample(peer: Self.eu, sentMs: 0, peerMs: 2_000, receivedMs: 10)
        #expect(fence.isFenced)
    }
}
