// The cluster's agreement on region health: a cut link never marks a region down, a dead region is marked down
// within a probe of its silence, and a returning one is re-admitted only after its good probes.
import MeridianCore
import PropertyBased
import Testing

@Suite struct HealthVerdictsTests {
    /// A cluster of regions each working out verdicts, with links that can be cut (one way or both) and regions
    /// that can die. Reports travel on the links with a probe's delay, as they do on heartbeats.
    struct Cluster {
        let names: [RegionName]
        var boards: [RegionName: HealthVerdicts]
        var alive: Set<RegionName>
        /// Directed links that carry nothing (from, to).
        var cut: Set<[RegionName]> = []
        /// What each region suspected at the last probe: what its heartbeats carry now.
        var lastViews: [RegionName: Set<RegionName>] = [:]

        init(_ count: Int, readmitProbes: Int = 3) {
            let names = (0..<count).map { try! RegionName("r\($0)") }
            self.names = names
            boards = Dictionary(uniqueKeysWithValues: names.map {
                ($0, HealthVerdicts(region: $0, regions: names, settings: .init(readmitProbes: readmitProbes)))
            })
            alive = Set(names)
        }

        func carries(_ from: RegionName, _ to: RegionName) -> Bool {
            alive.contains(from) && alive.contains(to) && !cut.contains([from, to])
        }

        /// A stream is up only when both directions carry (the origin needs the peer's acks).
        func reaches(_ region: RegionName, _ peer: RegionName) -> Bool {
            carries(region, peer) && carries(peer, region)
        }

        mutating func probe() {
            var views: [RegionName: Set<RegionName>] = [:]
            for region in names where alive.contains(region) {
                views[region] = Set(names.filter { $0 != region && !reaches(region, $0) })
            }
            for region in names where alive.contains(region) {
                var reports: [RegionName: Set<RegionName>] = [:]
                for peer in names where peer != region && carries(peer, region) {
                    if let view = lastViews[peer] { reports[peer] = view }
                }
                _ = boards[region]!.evaluate(ownSuspects: views[region]!, reports: reports)
            }
            lastViews = views
        }

        func verdict(at region: RegionName, of target: RegionName) -> HealthVerdicts.Verdict {
            boards[region]!.health[target]!.verdict
        }
    }

    @Test func aDeadRegionIsDownEverywhereWithinTwoProbes() {
        var cluster = Cluster(3)
        for _ in 0..<3 { cluster.probe() }
        let dead = cluster.names[2]
        cluster.alive.remove(dead)
        cluster.probe()
        // One probe: each survivor suspects it, but has not yet heard the other's suspicion.
        #expect(cluster.verdict(at: cluster.names[0], of: dead) == .suspect)
        cluster.probe()
        for region in cluster.names.prefix(2) {
            #expect(cluster.verdict(at: region, of: dead) == .down)
            #expect(cluster.boards[region]!.routable == cluster.names.prefix(2).sorted())
            #expect(cluster.boards[region]!.quorate)
        }
    }

    @Test func aReturningRegionIsReadmittedOnlyAfterItsGoodProbes() {
        var cluster = Cluster(3, readmitProbes: 4)
        let flapping = cluster.names[1]
        cluster.alive.remove(flapping)
        for _ in 0..<3 { cluster.probe() }
        #expect(cluster.verdict(at: cluster.names[0], of: flapping) == .down)
        cluster.alive.insert(flapping)
        // It comes back, drops out again before its fourth good probe, and comes back: the count starts over.
        for _ in 0..<3 { cluster.probe() }
        #expect(cluster.verdict(at: cluster.names[0], of: flapping) == .down)
        cluster.alive.remove(flapping)
        cluster.probe()
        cluster.alive.insert(flapping)
        var probesUntilUp = 0
        while cluster.verdict(at: cluster.names[0], of: flapping) == .down && probesUntilUp < 20 {
            cluster.probe()
            probesUntilUp += 1
        }
        #expect(probesUntilUp >= 4)
        #expect(probesUntilUp <= 6)
        #expect(cluster.verdict(at: cluster.names[0], of: flapping) == .up)
    }

    @Test func anIsolatedRegionMarksNobodyDownAndKnowsItIsNotQuorate() {
        var cluster = Cluster(5)
        let isolated = cluster.names[0]
        for peer in cluster.names.dropFirst() {
            cluster.cut.insert([isolated, peer])
            cluster.cut.insert([peer, isolated])
        }
        for _ in 0..<5 { cluster.probe() }
        let board = cluster.boards[isolated]!
        #expect(!board.quorate)
        #expect(board.routable == cluster.names.sorted())
        #expect(board.health.values.allSatisfy { $0.verdict != .down })
        // The rest of the cluster agrees the isolated region is down.
        for region in cluster.names.dropFirst() {
            #expect(cluster.verdict(at: region, of: isolated) == .down)
            #expect(cluster.boards[region]!.quorate)
        }
    }

    @Test func twoRegionsHaveOnlyEachOtherToAsk() {
        var cluster = Cluster(2)
        cluster.cut.insert([cluster.names[0], cluster.names[1]])
        for _ in 0..<2 { cluster.probe() }
        #expect(cluster.verdict(at: cluster.names[0], of: cluster.names[1]) == .down)
        #expect(cluster.verdict(at: cluster.names[1], of: cluster.names[0]) == .down)
    }

    /// The property the issue asks for: a partition between two regions never flaps the map. Any one link cut,
    /// in one direction or both, for any number of probes, in clusters of 3 to 7 regions: no region is ever
    /// `down` anywhere, and both ends of the cut are `suspect` at the regions that see the cut.
    @Test func aCutLinkNeverMarksARegionDown() async {
        let input = zip(Gen.int(in: 3...7), Gen.int(in: 0...48), Gen.bool, Gen.int(in: 1...40))
        await propertyCheck(count: 300, input: input) { count, pick, bothWays, probes in
            var cluster = Cluster(count)
            let from = cluster.names[pick % count]
            let to = cluster.names[(pick / count + 1 + pick % count) % count]
            guard from != to else { return }
            cluster.cut.insert([from, to])
            if bothWays { cluster.cut.insert([to, from]) }
            for _ in 0..<probes {
                cluster.probe()
                for region in cluster.names {
                    for target in cluster.names where cluster.verdict(at: region, of: target) == .down {
                        Issue.record("\(region) marked \(target) down with only \(from)→\(to) cut (both ways: \(bothWays)), \(count) regions")
                    }
                }
            }
        }
    }

    /// Kills fewer than half the regions and cuts one more link: every live region that is quorate marks exactly
    /// the dead ones down within two probes, and no live region is down anywhere.
    @Test func deadRegionsAreDownAndLiveOnesAreNot() async {
        let input = zip(Gen.int(in: 3...7), Gen.int(in: 0...1000), Gen.int(in: 0...48))
        await propertyCheck(count: 300, input: input) { count, seed, pick in
            var cluster = Cluster(count)
            cluster.probe()
            let deadCount = (count - 1) / 2
            let dead = Set((0..<deadCount).map { cluster.names[(seed + $0 * 3) % count] })
            cluster.alive.subtract(dead)
            let live = cluster.names.filter { !dead.contains($0) }
            let from = live[pick % live.count], to = live[(pick / live.count + 1 + pick % live.count) % live.count]
            if from != to && live.count > 3 { cluster.cut.insert([from, to]) }
            cluster.probe()
            cluster.probe()
            for region in live where cluster.boards[region]!.quorate {
                for target in cluster.names {
                    let verdict = cluster.verdict(at: region, of: target)
                    #expect((verdict == .down) == dead.contains(target), "at \(region): \(target) is \(verdict); dead \(dead.sorted()), cut \(from)→\(to)")
                }
            }
        }
    }

    @Test func theVersionMovesWhenVerdictsOrSuspicionsChange() {
        var board = HealthVerdicts(region: try! RegionName("a"), regions: [try! RegionName("a"), try! RegionName("b"), try! RegionName("c")])
        let b = try! RegionName("b"), c = try! RegionName("c")
        let start = board.version
        #expect(board.evaluate(ownSuspects: [], reports: [b: [], c: []]).isEmpty)
        #expect(board.version == start)
        #expect(board.evaluate(ownSuspects: [c], reports: [b: []]) == [.init(region: c, from: .up, to: .suspect)])
        #expect(board.health[c]!.suspectedBy == [try! RegionName("a")])
        #expect(board.version == start + 1)
        #expect(board.evaluate(ownSuspects: [c], reports: [b: [c]]) == [.init(region: c, from: .suspect, to: .down)])
        #expect(board.version == start + 2)
    }
}
