/// How far a region may trim its own log: the rule the node's maintenance and the simulator both apply.
///
/// A peer resumes from the point its welcome names, which is what it holds durably. So an entry every peer has
/// acknowledged as durable is needed by no stream again, and may go. A peer's visible point is not enough: a
/// replica applies async batches before their fsync, and a crash takes such a batch back, so its next welcome
/// asks for entries below what it once showed (the simulator plants counting the visible point, and sees the
/// origin asked for entries it no longer holds).
///
/// While a single-leader keyspace is unsettled here (``RegionMachine/mayTrimAcknowledged(nowMs:)``), the entries
/// stay whatever the peers acknowledged: a revert finds a deposed leader's writes in the log to keep them aside.
/// The retention bound trims in every case: a peer further behind than `retentionEntries` needs a full resync.
public enum LogTrim {
    /// The sequence to trim this region's log through now, or nil when it may go no further than `floor`.
    /// - Parameters:
    ///   - highWater: The end of this region's log.
    ///   - floor: How far the log is trimmed already.
    ///   - acknowledged: Each peer's durable point in this region's log, as far as this process has heard (a peer
    ///     not heard from since the start counts as 0: it holds nothing the trim may assume).
    ///   - settled: Whether the region's single-leader keyspaces let acknowledged entries go now.
    ///   - retentionEntries: The most entries kept for a peer that has not acknowledged them.
    public static func through(highWater: UInt64, floor: UInt64, acknowledged: some Sequence<UInt64>, settled: Bool,
                               retentionEntries: UInt64) -> UInt64? {
        let acknowledgedByAll = settled ? acknowledged.reduce(highWater) { min($0, $1) } : floor
        let retained = highWater > retentionEntries ? highWater - retentionEntries : 0
        let through = min(highWater, max(acknowledgedByAll, retained))
        return through > floor ? through : nil
    }
}
