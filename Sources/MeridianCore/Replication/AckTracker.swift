/// Tracks this region's writes that wait for acknowledgement by other replica regions (ack `majority` or
/// `all`) and says when each is confirmed or has timed out. Pure: time is an input.
public struct AckTracker: Sendable {
    /// How a waiting write ended.
    public enum Resolution: Sendable, Hashable {
        /// Enough replica regions applied the write; `ackedBy` lists them in name order, the origin included.
        case acknowledged(sequence: UInt64, ackedBy: [RegionName])
        /// The deadline passed first. The write is durable at its origin; `missing` did not confirm in time.
        case timedOut(sequence: UInt64, ackedBy: [RegionName], missing: [RegionName])
    }

    private struct Waiting: Sendable {
        let sequence: UInt64
        let required: Int
        let replicas: [RegionName]
        let deadlineMs: UInt64
    }

    /// This region (the origin of every tracked write).
    public let origin: RegionName
    /// The most writes that may wait at once.
    public let waitingMax: Int
    private var waiting: [Waiting] = []
    private var appliedByPeer: [RegionName: UInt64] = [:]

    /// Creates a tracker.
    public init(origin: RegionName, waitingMax: Int = 65_536) {
        precondition(waitingMax > 0)
        self.origin = origin
        self.waitingMax = waitingMax
    }

    /// How many writes are waiting.
    public var waitingCount: Int { waiting.count }

    /// Starts waiting for a committed write.
    /// - Parameters:
    ///   - required: Replica regions, the origin included, that must have applied it.
    ///   - replicas: The keyspace's replica regions.
    ///   - deadlineMs: When to give up waiting.
    /// - Returns: The resolution at once when the write is already confirmed (e.g. `async`, or peers ahead).
    /// - Throws: `overloaded` when `waitingMax` writes already wait.
    public mutating func register(sequence: UInt64, required: Int, replicas: [RegionName], deadlineMs: UInt64) throws(MeridianError) -> Resolution? {
        precondition(replicas.contains(origin) && (1...replicas.count).contains(required), "ack requirement out of range")
        let entry = Waiting(sequence: sequence, required: required, replicas: replicas.sorted(), deadlineMs: deadlineMs)
        if let done = resolve(entry) { return done }
        guard waiting.count < waitingMax else {
            throw MeridianError(.overloaded, "\(waitingMax) writes are already waiting for acknowledgement; retry shortly.",
                                context: ["waiting_max": String(waitingMax)])
        }
        waiting.append(entry)
        return nil
    }

    /// Whether `required` of `replicas` (the origin included) have applied this region's log up to `sequence`.
    public func isConfirmed(sequence: UInt64, required: Int, replicas: [RegionName]) -> Bool {
        replicas.filter { $0 == origin || appliedByPeer[$0, default: 0] >= sequence }.count >= required
    }

    /// A peer durably applied this region's log up to `sequence`.
    /// - Returns: The writes this confirmed, in sequence order.
    public mutating func peerApplied(_ peer: RegionName, upTo sequence: UInt64) -> [Resolution] {
        guard sequence > appliedByPeer[peer, default: 0] else { return [] }
        appliedByPeer[peer] = sequence
        var resolved: [Resolution] = []
        var still: [Waiting] = []
        for entry in waiting {
            if let done = resolve(entry) { resolved.append(done) } else { still.append(entry) }
        }
        waiting = still
        return resolved
    }

    /// Time passed.
    /// - Returns: The writes whose deadline passed, in sequence order.
    public mutating func tick(nowMs: UInt64) -> [Resolution] {
        var expired: [Resolution] = []
        var still: [Waiting] = []
        for entry in waiting {
            guard entry.deadlineMs <= nowMs else {
                still.append(entry)
                continue
            }
            let confirmed = confirmedBy(entry)
            expired.append(.timedOut(sequence: entry.sequence, ackedBy: confirmed, missing: entry.replicas.filter { !confirmed.contains($0) }))
        }
        waiting = still
        return expired
    }

    private func confirmedBy(_ entry: Waiting) -> [RegionName] {
        entry.replicas.filter { $0 == origin || appliedByPeer[$0, default: 0] >= entry.sequence }
    }

    private func resolve(_ entry: Waiting) -> Resolution? {
        let confirmed = confirmedBy(entry)
        return confirmed.count >= entry.required ? .acknowledged(sequence: entry.sequence, ackedBy: confirmed) : nil
    }
}
