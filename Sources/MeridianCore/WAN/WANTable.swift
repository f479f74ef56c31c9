/// One direction of a link between two regions.
public struct DirectedLink: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Where the bytes come from.
    public let from: RegionName
    /// Where the bytes go.
    public let to: RegionName

    /// Creates a directed link between two different regions.
    public init(from: RegionName, to: RegionName) {
        precondition(from != to, "a link joins two different regions")
        self.from = from
        self.to = to
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.from, lhs.to) < (rhs.from, rhs.to) }
    public var description: String { "\(from)->\(to)" }
}

/// The emulated network's state: the one-way delay and jitter of every directed link and which links are cut.
///
/// Pure: the WAN emulator's shell and the simulator both ask it what a link does now.
public struct WANTable: Sendable {
    /// What one direction of a link does to bytes now.
    public struct LinkState: Sendable, Hashable {
        /// Delay added to every byte, in ms (already scaled).
        public var oneWayDelayMs: Double
        /// Largest random extra delay, in ms (already scaled).
        public var jitterMs: Double
        /// Whether the link is cut: bytes are held until it heals.
        public var partitioned: Bool

        /// Creates a link state.
        public init(oneWayDelayMs: Double, jitterMs: Double, partitioned: Bool) {
            self.oneWayDelayMs = oneWayDelayMs
            self.jitterMs = jitterMs
            self.partitioned = partitioned
        }
    }

    /// The regions joined by the network, in name order.
    public let regions: [RegionName]
    /// Multiplies every configured delay.
    public let latencyScale: Double
    private var rttMs: [RegionPair: Double]
    private var jitterMs: Double
    /// Latency jitter in percent of each link's one-way delay: a byte takes the delay ± this share.
    public private(set) var jitterPercent: Double = 0
    private var cut: Set<DirectedLink> = []

    /// Builds the table from the cluster's WAN section; pairs without a configured RTT get `defaultRttMs`.
    public init(cluster: ClusterConfig, latencyScale: Double? = nil, defaultRttMs: Double = 0) {
        precondition(defaultRttMs >= 0)
        regions = cluster.regions.map(\.name).sorted()
        self.latencyScale = latencyScale ?? cluster.wan.latencyScale
        jitterMs = cluster.wan.jitterMs
        var table: [RegionPair: Double] = [:]
        for a in regions {
            for b in regions where a < b {
                table[RegionPair(a, b)] = cluster.wan.rttMs(a, b) ?? defaultRttMs
            }
        }
        rttMs = table
    }

    /// Every directed link, in order.
    public var links: [DirectedLink] {
        regions.flatMap { a in regions.filter { $0 != a }.map { DirectedLink(from: a, to: $0) } }
    }

    /// What the link does now.
    public func state(_ link: DirectedLink) -> LinkState {
        let rtt = rttMs[RegionPair(link.from, link.to)] ?? 0
        let oneWay = rtt / 2 * latencyScale, share = jitterPercent / 100
        // ± a share of the delay: the fixed part drops by the share, the random part spans twice it.
        return LinkState(oneWayDelayMs: oneWay * (1 - share), jitterMs: jitterMs * latencyScale + 2 * share * oneWay, partitioned: cut.contains(link))
    }

    /// The configured round-trip time between two regions, unscaled.
    public func rttMs(_ a: RegionName, _ b: RegionName) -> Double { rttMs[RegionPair(a, b)] ?? 0 }

    /// Cuts both directions between `a` and `b`.
    public mutating func partition(_ a: RegionName, _ b: RegionName) throws(MeridianError) {
        try check(a, b)
        cut.insert(DirectedLink(from: a, to: b))
        cut.insert(DirectedLink(from: b, to: a))
    }

    /// Cuts every link into and out of `region`.
    public mutating func isolate(_ region: RegionName) throws(MeridianError) {
        try check(region)
        for other in regions where other != region {
            cut.insert(DirectedLink(from: region, to: other))
            cut.insert(DirectedLink(from: other, to: region))
        }
    }

    /// Heals both directions between `a` and `b`, or every link when both are nil.
    public mutating func heal(_ a: RegionName? = nil, _ b: RegionName? = nil) throws(MeridianError) {
        switch (a, b) {
        case (nil, nil):
            cut.removeAll()
        case (let a?, let b?):
            try check(a, b)
            cut.remove(DirectedLink(from: a, to: b))
            cut.remove(DirectedLink(from: b, to: a))
        case (let region?, nil), (nil, let region?):
            try check(region)
            cut = cut.filter { $0.from != region && $0.to != region }
        }
    }

    /// Sets the round-trip time between two regions, unscaled.
    public mutating func setLatency(_ a: RegionName, _ b: RegionName, rttMs value: Double) throws(MeridianError) {
        try check(a, b)
        guard value.isFinite, (0...60_000).contains(value) else {
            throw MeridianError(.invalidParameter, "A round-trip time must be from 0 to 60000 ms; got \(value).", context: ["rtt_ms": String(value)])
        }
        rttMs[RegionPair(a, b)] = value
    }

    /// Sets every link's latency jitter to ± `percent` of its one-way delay (0 turns it off).
    public mutating func setJitter(percent: Double) throws(MeridianError) {
        guard percent.isFinite, (0...100).contains(percent) else {
            throw MeridianError(.invalidParameter, "Jitter is a percentage of each link's delay from 0 to 100; got \(percent).", context: ["percent": String(percent)])
        }
        jitterPercent = percent
    }

    /// The cut directed links, in order.
    public var partitioned: [DirectedLink] { cut.sorted() }

    private func check(_ names: RegionName...) throws(MeridianError) {
        for name in names where !regions.contains(name) {
            throw MeridianError(.unknownRegion, "Region '\(name)' is not in the emulated network; its regions are \(regions.map(\.rawValue).joined(separator: ", ")).",
                                context: ["region": name.rawValue])
        }
        if names.count == 2 && names[0] == names[1] {
            throw MeridianError(.invalidParameter, "A link joins two different regions; both ends are '\(names[0])'.")
        }
    }
}

/// Schedules the bytes of one direction of one connection: each chunk is released after the link's delay
/// plus jitter, but never before an earlier chunk, so the byte stream keeps its order (as TCP does).
public struct DelayLine: Sendable {
    private var lastReleaseNs: UInt64 = 0
    private var generator: SeededGenerator

    /// Creates a delay line whose jitter comes from `seed`.
    public init(seed: UInt64) { generator = SeededGenerator(seed: seed) }

    /// When a chunk that arrived at `arrivalNs` leaves.
    public mutating func releaseTime(arrivalNs: UInt64, link: WANTable.LinkState) -> UInt64 {
        let jitterNs = link.jitterMs > 0 ? UInt64(Double.random(in: 0...link.jitterMs, using: &generator) * 1_000_000) : 0
        let release = max(arrivalNs + UInt64(link.oneWayDelayMs * 1_000_000) + jitterNs, lastReleaseNs)
        lastReleaseNs = release
        return release
    }
}

extension ClusterConfig {
    /// Where the emulated WAN listens for the directed link `from`→`to`: the admin host, at `wan.base_port`
    /// plus the link's index among all directed links in name order. Nodes connect to their peers here.
    public func wanListenEndpoint(from: RegionName, to: RegionName) -> Endpoint? {
        let names = regions.map(\.name).sorted()
        guard from != to, names.contains(from), names.contains(to) else { return nil }
        let links = names.flatMap { a in names.filter { $0 != a }.map { DirectedLink(from: a, to: $0) } }
        guard let index = links.firstIndex(of: DirectedLink(from: from, to: to)) else { return nil }
        return Endpoint(host: wan.admin.host, port: wan.basePort + index)
    }
}
