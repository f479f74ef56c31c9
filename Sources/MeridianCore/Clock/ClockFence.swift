/// Decides whether this region's wall clock is too far from its peers' to issue timestamps.
///
/// Last-writer-wins orders writes by hybrid logical clock, whose physical part is the issuing region's wall
/// clock. A region whose clock leads the others by more than the maximum offset would win every conflict it
/// takes part in for as long as it leads; one that trails would lose writes made after the ones it beats.
/// Rather than corrupt that order, a region whose clock is out of tolerance with at least half of the
/// cluster fences itself: it neither leads nor accepts writes until its clock comes back.
///
/// Each sample is a bracket, as NTP takes one: this region sent a message at its time `sentMs`, the peer read
/// its own clock (`peerMs`) after that message arrived, and this region read the peer's answer at its time
/// `receivedMs`. The peer's reading happened between the two local readings, so the peer's offset (peer minus
/// this region) lies in `[peerMs - receivedMs, peerMs - sentMs]` whatever the delays, queues or pauses on
/// the way: a delay widens the bracket, never moves it. Only a bracket lying wholly outside
/// `±maxOffsetMs` counts as evidence.
///
/// Evidence does not expire: a peer's latest bracket stands until a newer one replaces it, so a region cut
/// off after it was found out stays fenced, and one cut off after it was found in tolerance keeps writing.
/// Until a peer's first bracket arrives the peer counts for neither side. A region starts unproven: it
/// writes only once peers whose brackets allow it to be in tolerance make, with itself, a majority of the
/// cluster. Otherwise a node restarted with a clock far off would issue timestamps in the moments before
/// its peers' first heartbeats fence it, and those timestamps would outrank every honest write for as long
/// as the clock is off.
public struct ClockFence: Sendable, Hashable {
    /// One peer's offset, as bracketed by its latest sample.
    public struct Offset: Sendable, Hashable {
        /// The least and greatest offset of the peer's clock from this region's, in ms (peer minus this region).
        public let lowMs: Int64
        public let highMs: Int64

        public init(lowMs: Int64, highMs: Int64) {
            self.lowMs = lowMs
            self.highMs = highMs
        }

        /// The smallest offset the bracket allows, as a magnitude (0 when the bracket spans zero).
        public var leastMagnitudeMs: UInt64 {
            if lowMs > 0 { return UInt64(lowMs) }
            if highMs < 0 { return UInt64(-highMs) }
            return 0
        }

        /// How wide the bracket is: the exchange's round trip, as this region's clock measured it.
        public var widthMs: UInt64 { UInt64(highMs - lowMs) }

        /// The middle of the bracket, as the best single estimate.
        public var estimateMs: Int64 { lowMs + (highMs - lowMs) / 2 }
    }

    /// Whether this region may issue timestamps, and why not.
    public enum Verdict: Sendable, Hashable {
        case withinTolerance
        /// Too few peers have bracketed this region's clock yet to show it is within tolerance (the listed ones have).
        case unproven(inTolerance: [RegionName])
        /// The listed peers' clocks are provably more than the maximum offset from this region's.
        case fenced(outOfTolerance: [RegionName])

        public var isFenced: Bool {
            if case .fenced = self { return true }
            return false
        }
    }

    public let region: RegionName
    public let maxOffsetMs: UInt64
    /// Every region of the cluster, this one included.
    public let clusterSize: Int
    public private(set) var offsets: [RegionName: Offset] = [:]

    /// - Parameters:
    ///   - region: This region.
    ///   - peers: The other regions of the cluster.
    ///   - maxOffsetMs: The largest offset between two regions' clocks that keeps LWW order.
    public init(region: RegionName, peers: [RegionName], maxOffsetMs: UInt64) {
        self.region = region
        self.maxOffsetMs = maxOffsetMs
        self.clusterSize = Set(peers).subtracting([region]).count + 1
    }

    /// Records a bracket of `peer`'s clock.
    /// - Parameters:
    ///   - sentMs: This region's wall clock when it sent what the peer answered (before the peer's reading).
    ///   - peerMs: The peer's wall clock when it answered.
    ///   - receivedMs: This region's wall clock when the answer arrived (after the peer's reading).
    /// - Returns: Whether the verdict changed.
    @discardableResult
    public mutating func sample(peer: RegionName, sentMs: UInt64, peerMs: UInt64, receivedMs: UInt64) -> Bool {
        guard peer != region, sentMs <= receivedMs else { return false }
        let before = verdict
        let low = Int64(clamping: peerMs) - Int64(clamping: receivedMs)
        let high = Int64(clamping: peerMs) - Int64(clamping: sentMs)
        offsets[peer] = Offset(lowMs: low, highMs: high)
        return verdict != before
    }

    /// A peer's stream connected anew: it may be a new process with a clock set differently, so its bracket no
    /// longer vouches for this region's clock. One that proves this region out of tolerance stands (a region
    /// found out stays fenced); one that allowed tolerance is dropped until the peer brackets this region again.
    /// - Returns: Whether the verdict changed.
    @discardableResult
    public mutating func peerReconnected(_ peer: RegionName) -> Bool {
        guard let offset = offsets[peer], offset.leastMagnitudeMs <= maxOffsetMs else { return false }
        let before = verdict
        offsets[peer] = nil
        return verdict != before
    }

    /// Fenced when the peers provably out of tolerance are at least half the cluster: with three regions, both
    /// peers; a region whose only fault is one skewed peer keeps going (that peer fences itself instead).
    /// Otherwise within tolerance once the peers whose brackets allow an offset within the maximum make, with
    /// this region, a majority (one peer of three, or of two; none in a one-region cluster); unproven before.
    /// A bracket wider than twice the maximum (a paused or stalled exchange) proves nothing either way.
    public var verdict: Verdict {
        let far = offsets.filter { $0.value.leastMagnitudeMs > maxOffsetMs }.map(\.key).sorted()
        if !far.isEmpty && far.count * 2 >= clusterSize { return .fenced(outOfTolerance: far) }
        let near = offsets.filter { $0.value.leastMagnitudeMs <= maxOffsetMs && $0.value.widthMs <= 2 * maxOffsetMs }.map(\.key).sorted()
        return (near.count + 1) * 2 > clusterSize ? .withinTolerance : .unproven(inTolerance: near)
    }

    /// Whether this region must not lead: its clock is provably out of tolerance (an unproven one may lead,
    /// as it must to start a cluster, but takes no write until proven).
    public var isFenced: Bool { verdict.isFenced }

    /// Whether this region may issue timestamps for writes.
    public var mayWrite: Bool { verdict == .withinTolerance }

    /// Peers needed, besides those that have bracketed this region in tolerance, before it may write.
    private var peersNeeded: Int { clusterSize / 2 }

    /// The error a write answers while fenced or unproven (nil when within tolerance), or an election while fenced.
    public var refusal: MeridianError? {
        if case .unproven(let near) = verdict {
            return MeridianError(
                .clockUnverified,
                "\(region) has not yet compared its clock with enough peers to know it is within \(maxOffsetMs) ms (max_clock_offset_ms) of theirs: \(near.count) of the \(peersNeeded) it needs have answered since it started. It takes writes once the replication streams to them are up (one heartbeat); retry shortly, or write through another region.",
                context: ["region": region.rawValue, "max_offset_ms": String(maxOffsetMs), "peers_needed": String(peersNeeded),
                          "peers_in_tolerance": near.map(\.rawValue).joined(separator: ",")])
        }
        guard case .fenced(let far) = verdict else { return nil }
        let detail = far.map { peer in "\(peer) \(offsets[peer].map { $0.estimateMs > 0 ? "+\($0.estimateMs)" : "\($0.estimateMs)" } ?? "?") ms" }
            .joined(separator: ", ")
        return MeridianError(
            .clockFenced,
            "\(region)'s clock is more than \(maxOffsetMs) ms (max_clock_offset_ms) from its peers' (\(detail), peer minus this region), so it accepts no writes and does not lead until the clock is corrected; fix time synchronisation (NTP) on this host, or write through another region.",
            context: ["region": region.rawValue, "max_offset_ms": String(maxOffsetMs), "out_of_tolerance": far.map(\.rawValue).joined(separator: ",")])
    }
}
