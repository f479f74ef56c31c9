// Proves the emulated network's pure rules: delays are half the configured RTT times the scale,
// partition/isolate/heal cut and restore exactly the named directions, bad commands are typed errors,
// and a delay line never reorders bytes and keeps jitter within its bound (seeded property test).
import MeridianCore
import PropertyBased
import Testing

@Suite struct WANTableTests {
    let config = try! ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
    let us = RegionName(validated: "us-east"), eu = RegionName(validated: "eu-west"), ap = RegionName(validated: "ap-southeast")

    @Test func delaysAreHalfTheScaledRTT() {
        let table = WANTable(cluster: config, latencyScale: 0.1)
        #expect(table.links.count == 6)
        #expect(abs(table.state(DirectedLink(from: us, to: eu)).oneWayDelayMs - 4.05) < 1e-9)
        #expect(abs(table.state(DirectedLink(from: ap, to: us)).oneWayDelayMs - 11.5) < 1e-9)
        #expect(WANTable(cluster: config).state(DirectedLink(from: eu, to: ap)).oneWayDelayMs == 85)
    }

    @Test func jitterInPercentSpansThatShareOfEachDelayEitherWay() throws {
        var table = WANTable(cluster: config)
        try table.setJitter(percent: 50)
        let link = table.state(DirectedLink(from: us, to: ap))
        // 115 ms one way ± 50%: from 57.5 to 172.5 ms.
        #expect(abs(link.oneWayDelayMs - 57.5) < 1e-9 && abs(link.jitterMs - 115) < 1e-9)
        var line = DelayLine(seed: 3)
        var lowest = UInt64.max, highest: UInt64 = 0
        for index in 0..<2_000 {
            let arrival = UInt64(index) * 1_000_000_000
            let delay = line.releaseTime(arrivalNs: arrival, link: link) - arrival
            lowest = min(lowest, delay)
            highest = max(highest, delay)
        }
        #expect(lowest >= 57_500_000 && highest <= 172_500_000 && highest - lowest > 100_000_000, "\(lowest) ... \(highest)")
        #expect(throws: MeridianError.self) { try table.setJitter(percent: 150) }
        try table.setJitter(percent: 0)
        #expect(table.state(DirectedLink(from: us, to: ap)).oneWayDelayMs == 115)
    }

    @Test func partitionIsolateAndHealCutExactlyWhatTheyName() throws {
        var table = WANTable(cluster: config)
        try table.partition(us, eu)
        #expect(table.partitioned == [DirectedLink(from: eu, to: us), DirectedLink(from: us, to: eu)])
        #expect(!table.state(DirectedLink(from: us, to: ap)).partitioned)
        try table.isolate(ap)
        #expect(table.partitioned.count == 6)
        try table.heal(ap)
        #expect(table.partitioned.count == 2)
        try table.heal(eu, us)
        #expect(table.partitioned.isEmpty)
        try table.isolate(us)
        try table.heal()
        #expect(table.partitioned.isEmpty)
        try table.setLatency(us, eu, rttMs: 10)
        #expect(table.state(DirectedLink(from: eu, to: us)).oneWayDelayMs == 5)
    }

    @Test func badCommandsAreTypedErrors() {
        var table = WANTable(cluster: config)
        let mars = RegionName(validated: "mars")
        #expect(throws: MeridianError.self) { try table.partition(us, mars) }
        #expect(throws: MeridianError.self) { try table.partition(us, us) }
        #expect(throws: MeridianError.self) { try table.isolate(mars) }
        #expect(throws: MeridianError.self) { try table.setLatency(us, eu, rttMs: -1) }
        #expect(throws: MeridianError.self) { try table.setLatency(us, eu, rttMs: .nan) }
        #expect(table.partitioned.isEmpty)
    }

    @Test func delayLinesKeepOrderAndBoundJitter() async {
        let arrivals = Gen.uint64(in: 0...5_000_000).array(of: 1...200)
        await propertyCheck(count: 200, input: arrivals, Gen.uint64(in: 0...UInt64.max)) { gaps, seed in
            var line = DelayLine(seed: seed)
            let link = WANTable.LinkState(oneWayDelayMs: 20, jitterMs: 5, partitioned: false)
            var arrival: UInt64 = 1_000_000_000
            var previous: UInt64 = 0
            for gap in gaps {
                arrival += gap
                let release = line.releaseTime(arrivalNs: arrival, link: link)
                #expect(release >= previous, "bytes keep their order")
                #expect(release >= arrival + 20_000_000, "never earlier than the one-way delay")
                #expect(release <= max(arrival + 25_000_000, previous), "jitter stays within its bound")
                previous = release
            }
        }
        // The same seed replays the same schedule.
        var a = DelayLine(seed: 7), b = DelayLine(seed: 7)
        let link = WANTable.LinkState(oneWayDelayMs: 1, jitterMs: 3, partitioned: false)
        var first: [UInt64] = [], second: [UInt64] = []
        for step in 0..<50 {
            let arrival = UInt64(step) * 1000
            first.append(a.releaseTime(arrivalNs: arrival, link: link))
            second.append(b.releaseTime(arrivalNs: arrival, link: link))
        }
        #expect(first == second)
    }
}
