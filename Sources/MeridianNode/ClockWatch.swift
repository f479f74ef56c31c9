import Logging
import MeridianCore
import Synchronization

/// This region's view of its clock against its peers' (``ClockFence``), fed by the replication streams'
/// heartbeats, and the one place that says so in the log when the verdict changes.
final class ClockWatch: Sendable {
    /// The configured offset added to this host's clock (`meridian node --clock-offset-ms`), for status.
    let injectedOffsetMs: Int64
    private let fence: Mutex<ClockFence>
    /// Whether the verdict lets this region write, readable without the lock: every write asks.
    private let writable: Atomic<Bool>
    private let logger: Logger
    /// Told when the verdict changes, so elections stop (or resume) standing for this region.
    private let onChange: @Sendable (Bool) -> Void

    init(region: RegionName, cluster: ClusterConfig, injectedOffsetMs: Int64, logger: Logger, onChange: @escaping @Sendable (Bool) -> Void) {
        self.injectedOffsetMs = injectedOffsetMs
        let fence = ClockFence(region: region, peers: cluster.regions.map(\.name), maxOffsetMs: cluster.limits.clockOffsetMsMax)
        self.fence = Mutex(fence)
        self.writable = Atomic(fence.mayWrite)
        self.logger = logger
        self.onChange = onChange
    }

    /// A peer's clock reading, bracketed by two of this region's (see ``ClockFence/sample(peer:sentMs:peerMs:receivedMs:)``).
    func sample(peer: RegionName, sentMs: UInt64, peerMs: UInt64, receivedMs: UInt64) {
        update { $0.sample(peer: peer, sentMs: sentMs, peerMs: peerMs, receivedMs: receivedMs) }
    }

    /// A peer's stream connected anew (see ``ClockFence/peerReconnected(_:)``).
    func peerReconnected(_ peer: RegionName) {
        update { $0.peerReconnected(peer) }
    }

    private func update(_ change: (inout ClockFence) -> Bool) {
        let (before, now) = fence.withLock { fence in
            let before = fence.verdict
            _ = change(&fence)
            return (before, fence)
        }
        let after = now.verdict
        guard after != before else { return }
        writable.store(after == .withinTolerance, ordering: .releasing)
        switch after {
        case .fenced:
            logger.error("clock fenced: this region refuses writes and leadership", metadata: ["reason": "\(now.refusal?.message ?? "")"])
        case .withinTolerance:
            logger.notice(before.isFenced ? "clock back within tolerance: this region accepts writes and may lead again"
                                          : "clock within tolerance of a majority: this region accepts writes",
                          metadata: ["offsets_ms": "\(now.offsets.mapValues(\.estimateMs))"])
        case .unproven:
            if before.isFenced { logger.notice("clock no longer provably out of tolerance; waiting to be proven within it") }
        }
        if before.isFenced != after.isFenced { onChange(after.isFenced) }
    }

    /// Why this region may not issue a timestamp now, if it may not (the lock is taken only while it may not).
    var refusal: MeridianError? {
        guard !writable.load(ordering: .acquiring) else { return nil }
        return fence.withLock { $0.refusal }
    }

    var snapshot: ClockFence { fence.withLock { $0 } }
}
