/// Which regions the cluster agrees are up, as one region works it out from its own streams and the views its
/// peers report. Routing (the gateway, GeoDNS, the client libraries) follows these verdicts.
///
/// Pure and deterministic: each ``evaluate(ownSuspects:reports:)`` is one probe, with this region's view (the
/// peers whose streams are not up) and the latest fresh view each peer reported (on its heartbeats). It returns
/// the verdicts that changed.
///
/// Rules (each has a test that would catch its violation):
/// - A region is `down` only when a strict majority of the *other* regions suspect it. A cut link between two
///   regions of a cluster of three or more never marks either down: the third region still reaches both.
///   (With two regions the other one is the whole majority: one region's suspicion is enough.)
/// - A region no majority suspects but some region does is `suspect`: still routed to, and shown.
/// - A `down` region comes back only after ``Settings/readmitProbes`` consecutive probes in which a strict
///   majority of the other regions report it reachable (hysteresis: a region that flaps stays out).
/// - A peer this region has no fresh report from has no vote; this region's own view always counts. A region
///   that hears from less than a majority of the cluster (itself included) is not ``quorate``: its verdicts
///   about others cannot reach a majority, so a cut-off region never marks the rest of the cluster down.
public struct HealthVerdicts: Sendable {
    /// What the cluster agrees about one region.
    public enum Verdict: String, Sendable, Hashable, Codable, CaseIterable {
        /// No region suspects it.
        case up
        /// Some regions cannot reach it, but not a majority of the others: still routed to.
        case suspect
        /// A majority of the other regions cannot reach it (or it has not yet been re-admitted): not routed to.
        case down

        /// Whether requests may be routed to a region with this verdict.
        public var routable: Bool { self != .down }
    }

    /// How verdicts are reached.
    public struct Settings: Sendable, Hashable {
        /// Consecutive good probes a `down` region needs before it is routed to again.
        public var readmitProbes: Int

        public init(readmitProbes: Int = 10) {
            precondition(readmitProbes >= 1, "a region is re-admitted after at least one good probe")
            self.readmitProbes = readmitProbes
        }
    }

    /// One region's health as this region sees the cluster's agreement.
    public struct RegionHealth: Sendable, Hashable {
        public var verdict: Verdict
        /// The regions that cannot reach it now, sorted (this region's own view and fresh reports).
        public var suspectedBy: [RegionName]
        /// While `down`: consecutive good probes so far towards re-admission.
        public var goodProbes: Int

        public init(verdict: Verdict, suspectedBy: [RegionName] = [], goodProbes: Int = 0) {
            self.verdict = verdict
            self.suspectedBy = suspectedBy
            self.goodProbes = goodProbes
        }
    }

    /// A verdict that changed in a probe.
    public struct Change: Sendable, Hashable {
        public let region: RegionName
        public let from: Verdict
        public let to: Verdict

        public init(region: RegionName, from: Verdict, to: Verdict) {
            self.region = region
            self.from = from
            self.to = to
        }
    }

    /// The region working the verdicts out.
    public let region: RegionName
    /// Every region of the cluster, sorted.
    public let regions: [RegionName]
    public let settings: Settings
    /// Each region's health, this region's own among them.
    public private(set) var health: [RegionName: RegionHealth]
    /// This region hears from a majority of the cluster (itself included) in the latest probe.
    public private(set) var quorate: Bool
    /// Counts probes that changed some verdict or who suspects a region: the version of the verdicts.
    public private(set) var version: UInt64 = 1

    /// Starts with every region up: a region that is down is found within one silence, while starting with
    /// every region down would keep a fresh cluster unroutable for ``Settings/readmitProbes`` probes.
    public init(region: RegionName, regions: some Sequence<RegionName>, settings: Settings = Settings()) {
        let all = Set(regions).union([region]).sorted()
        self.region = region
        self.regions = all
        self.settings = settings
        health = Dictionary(uniqueKeysWithValues: all.map { ($0, RegionHealth(verdict: .up)) })
        quorate = true
    }

    /// The regions a strict majority of `voters` is.
    static func majority(of voters: Int) -> Int { voters / 2 + 1 }

    /// One probe.
    /// - Parameters:
    ///   - ownSuspects: The peers this region's streams cannot reach now.
    ///   - reports: For each peer this region heard from within its silence limit, the regions that peer
    ///     reported it cannot reach. A peer missing here has no vote in this probe.
    /// - Returns: The verdicts that changed, in region order.
    public mutating func evaluate(ownSuspects: Set<RegionName>, reports: [RegionName: Set<RegionName>]) -> [Change] {
        var views: [RegionName: Set<RegionName>] = [region: ownSuspects.subtracting([region])]
        for (peer, suspects) in reports where peer != region && health[peer] != nil {
            views[peer] = suspects.subtracting([peer])
        }
        quorate = views.count >= Self.majority(of: regions.count)
        var changes: [Change] = []
        var changedAny = false
        for target in regions {
            let voters = regions.count - 1
            guard voters > 0, var current = health[target] else { continue }
            var suspecting: [RegionName] = []
            var vouching = 0
            for voter in regions where voter != target {
                guard let view = views[voter] else { continue }
                if view.contains(target) { suspecting.append(voter) } else { vouching += 1 }
            }
            let needed = Self.majority(of: voters)
            let before = current.verdict
            let suspectedBefore = current.suspectedBy
            current.suspectedBy = suspecting
            if suspecting.count >= needed {
                current.verdict = .down
                current.goodProbes = 0
            } else if current.verdict == .down {
                current.goodProbes = vouching >= needed ? current.goodProbes + 1 : 0
                if current.goodProbes >= settings.readmitProbes {
                    current.verdict = suspecting.isEmpty ? .up : .suspect
                    current.goodProbes = 0
                }
            } else {
                current.verdict = suspecting.isEmpty ? .up : .suspect
            }
            health[target] = current
            if current.verdict != before { changes.append(Change(region: target, from: before, to: current.verdict)) }
            if current.verdict != before || current.suspectedBy != suspectedBefore { changedAny = true }
        }
        if changedAny { version += 1 }
        return changes
    }

    /// The regions requests may be routed to now, sorted.
    public var routable: [RegionName] {
        regions.filter { health[$0]?.verdict.routable ?? false }
    }

    /// The regions the cluster agrees are down now.
    public var down: Set<RegionName> {
        Set(regions.filter { health[$0]?.verdict == .down })
    }
}
