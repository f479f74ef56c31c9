import Logging
import MeridianCore
import Synchronization

/// This region's view of its clock against its peers' (``ClockFence``), fed by the replication streams'
/// heartbeats, and the one place that says so in the log when the verdict changes.
final class ClockWatch: Sendable {
    /// The configured offset added to this host's clock (`meridian node --clock-offset-ms`), for status.
    let injectedOffsetMs: Int64
    private let fence: Mutex<ClockFence>
    /// The verdict, readable without the lock: every write asks.
    private let fenced = Atomic<Bool>(false)
    private let logger: Logger
    /// Told when the verdict changes, so elections stop (or resume) standing for this region.
    private let onChange: @Sendable (Bool) -> Void

    init(region: RegionName, cluster: ClusterConfig, injectedOffsetMs: Int64, logger: Logger, onChange: @escaping @Sendable (Bool) -> Void) {
        self.injectedOffsetMs = injectedOffsetMs
        self.fence = Mutex(ClockFence(region: region, peers: cluster.regions.map(\.name), maxOffsetMs: cluster.limits.maxClockOffsetMs))
        self.logger = logger
        self.onChange = onChange
    }

    /// A peer's clock reading, bracketed by two of this region's (see ``ClockFence/sample(peer:sentMs:peerMs:receivedMs:)``).
    func sample(peer: RegionName, sentMs: UInt64, peerMs: UInt64, receivedMs: UInt64) {
        let (changed, now) = fence.withLock { fence in
            (fence.sample(peer: peer, sentMs: sentMs, peerMs: peerMs, receivedMs: receivedMs), fence)
        }
        guard changed else { return }
        fenced.store(now.isFenced, ordering: .releasing)
        if let refusal = now.refusal {
            logger.error("clock fenced: this region refuses writes and leadership", metadata: ["reason": "\(refusal.message)"])
        } else {
            logger.notice("clock back within tolerance: this region accepts writes and may lead again",
                          metadata: ["offsets_ms": "\(now.offsets.mapValues(\.estimateMs))"])
        }
        onChange(now.isFenced)
    }

    /// Why this region may not issue a timestamp now, if it may not (the lock is taken only while fenced).
    var refusal: MeridianError? {
        guard fenced.load(ordering: .acquiring) else { return nil }
        return fence.withLock { $0.refusal }
    }

    var snapshot: ClockFence { fence.withLock { $0 } }
}
