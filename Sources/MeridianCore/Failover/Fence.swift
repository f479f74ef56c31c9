/// Where a leader's term of a single-leader keyspace begins: the epoch, its leader, and how far the leader
/// had applied every origin's log when it took over. The writes of earlier terms that count are exactly
/// those the new leader held; the rest (async writes a deposed leader acknowledged but never shipped to it)
/// are diverted to the divergence log instead of being applied.
public struct EpochStart: Hashable, Sendable, CustomStringConvertible {
    public let epoch: UInt64
    public let leader: RegionName
    /// Per origin, the last sequence of its log the leader had applied when its term began.
    public let applied: [RegionName: UInt64]

    public init(epoch: UInt64, leader: RegionName, applied: [RegionName: UInt64]) {
        self.epoch = epoch
        self.leader = leader
        self.applied = applied
    }

    /// The first term of a keyspace: the configured leader, with nothing before it.
    public static func initial(leader: RegionName) -> EpochStart { EpochStart(epoch: 1, leader: leader, applied: [:]) }

    public var description: String {
        "epoch \(epoch) led by \(leader) from " + applied.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")
    }
}

/// What a region does with a replicated entry of a single-leader keyspace.
public enum FenceVerdict: Hashable, Sendable {
    /// The entry belongs to the keyspace's history: apply it.
    case apply
    /// A write of a deposed leader that its successor never held: keep it in the divergence log, unapplied.
    case divert
    /// This region cannot tell yet (it voted in an election whose winner has not spoken, or the entry is of
    /// an epoch it has not heard of): hold the stream until it can.
    case wait
}

/// Decides which replicated entries of a single-leader keyspace a region applies, from the epoch the region
/// follows and where that epoch's term began. Pure, shared by the node and the tests.
///
/// Followers refuse what a deposed leader wrote after its successor took over, so a returning leader cannot
/// overwrite the new term's writes, and what it wrote is kept aside rather than lost.
public enum Fence {
    /// - Parameters:
    ///   - epoch: The entry's epoch; `origin`/`sequence`: its place in its origin's log.
    ///   - following: The highest epoch this region knows for the keyspace.
    ///   - start: Where the term of `following` began, if its leader has said (nil: an election is running).
    public static func verdict(epoch: UInt64, origin: RegionName, sequence: UInt64, following: UInt64, start: EpochStart?) -> FenceVerdict {
        if epoch > following { return .wait }
        guard let start, start.epoch == following else { return .wait }
        if origin == start.leader && epoch == following { return .apply }
        return sequence <= start.applied[origin, default: 0] ? .apply : .divert
    }
}
