/// Ships one origin's log to one peer over a stream: in order, in batches, with a bounded number of
/// entries in flight, resuming from the peer's acknowledged cursor after every reconnect.
///
/// Pure: the shell tells it what happened (stream opened or closed, log grew, ack arrived) and carries out
/// the effects it returns, in order. Unacknowledged entries are resent after a reconnect; the receiver
/// (``LogReceiver``) drops the duplicates, so an entry is applied exactly once.
public struct LogShipper: Sendable {
    /// Batch and window limits.
    public struct Limits: Sendable, Hashable {
        /// The most entries in one `send`.
        public var batchEntriesMax: Int
        /// The most entries sent but not yet acknowledged.
        public var inflightEntriesMax: Int

        /// Creates limits; both must be positive and the batch no larger than the window.
        public init(batchEntriesMax: Int = 256, inflightEntriesMax: Int = 4096) {
            precondition(batchEntriesMax > 0 && inflightEntriesMax >= batchEntriesMax, "invalid LogShipper limits")
            self.batchEntriesMax = batchEntriesMax
            self.inflightEntriesMax = inflightEntriesMax
        }
    }

    /// What the shell must do.
    public enum Effect: Sendable, Hashable {
        /// Read `count` entries of the log starting at `fromSequence` and send them on the stream, in order.
        case send(fromSequence: UInt64, count: Int)
    }

    /// The peer this shipper feeds.
    public let peer: RegionName
    /// Batch and window limits.
    public let limits: Limits
    /// The peer has durably applied every entry up to here.
    public private(set) var acknowledged: UInt64
    /// The highest entry sent on the current stream (equal to `acknowledged` right after a reconnect).
    public private(set) var sentUpTo: UInt64
    /// The highest entry in the local log.
    public private(set) var logHighWater: UInt64
    /// Whether a stream to the peer is open.
    public private(set) var streamOpen = false

    /// Creates a shipper.
    /// - Parameters:
    ///   - acknowledged: The peer's persisted cursor.
    ///   - logHighWater: The highest sequence in the local log.
    public init(peer: RegionName, acknowledged: UInt64, logHighWater: UInt64, limits: Limits = Limits()) {
        precondition(acknowledged <= logHighWater, "a peer cannot have applied entries the log does not hold")
        self.peer = peer
        self.limits = limits
        self.acknowledged = acknowledged
        self.sentUpTo = acknowledged
        self.logHighWater = logHighWater
    }

    /// Entries the peer has not acknowledged (the replication lag in entries).
    public var lagEntries: UInt64 { logHighWater - acknowledged }

    /// A stream to the peer opened: start from the acknowledged cursor.
    public mutating func streamOpened() -> [Effect] {
        streamOpen = true
        sentUpTo = acknowledged
        return pump()
    }

    /// The stream closed or failed: what was sent but not acknowledged is sent again on the next stream.
    public mutating func streamClosed() {
        streamOpen = false
        sentUpTo = acknowledged
    }

    /// The local log grew to `sequence`.
    public mutating func entriesAppended(upTo sequence: UInt64) -> [Effect] {
        precondition(sequence >= logHighWater, "the log only grows")
        logHighWater = sequence
        return pump()
    }

    /// The peer acknowledged applying the log up to `sequence`.
    ///
    /// An ack is the peer's durable state, whichever stream carried it, so a late ack from an earlier stream
    /// still moves the cursor (and skips resending what it covers).
    /// - Throws: `replication_protocol` when the peer acknowledges entries the log does not hold.
    public mutating func ackReceived(upTo sequence: UInt64) throws(MeridianError) -> [Effect] {
        guard sequence <= logHighWater else {
            throw MeridianError(.replicationProtocol, "\(peer) acknowledged entry \(sequence), but the log ends at \(logHighWater); the stream is closed and resumes from \(acknowledged).",
                                context: ["peer": peer.rawValue, "acked": String(sequence), "log": String(logHighWater)])
        }
        // An old or repeated ack moves nothing.
        guard sequence > acknowledged else { return [] }
        acknowledged = sequence
        sentUpTo = max(sentUpTo, sequence)
        return pump()
    }

    // Sends as much as the window allows, in batches.
    private mutating func pump() -> [Effect] {
        var effects: [Effect] = []
        while streamOpen && sentUpTo < logHighWater {
            let inflight = Int(sentUpTo - acknowledged)
            let room = limits.inflightEntriesMax - inflight
            guard room > 0 else { break }
            let count = min(limits.batchEntriesMax, room, Int(min(logHighWater - sentUpTo, UInt64(Int.max))))
            effects.append(.send(fromSequence: sentUpTo + 1, count: count))
            sentUpTo += UInt64(count)
        }
        return effects
    }
}

/// Applies one origin's entries as they arrive from a stream: in sequence order, each exactly once.
///
/// Entries at or below the applied point are duplicates from a resumed stream and are dropped; an entry
/// beyond the next expected one means the stream lost something, which the shell answers by closing
/// the stream (the shipper then resumes from the last acknowledged entry).
public struct LogReceiver: Sendable {
    /// The origin whose log this receiver applies.
    public let origin: RegionName
    /// Every entry up to here is durably applied.
    public private(set) var applied: UInt64
    /// Entries handed out for applying but not yet reported durable.
    public private(set) var pendingUpTo: UInt64

    /// Creates a receiver that has durably applied the origin's log up to `applied`.
    public init(origin: RegionName, applied: UInt64) {
        self.origin = origin
        self.applied = applied
        self.pendingUpTo = applied
    }

    /// What to do with a batch that arrived.
    public struct Delivery: Sendable, Hashable {
        /// The entries to apply, in order, duplicates removed. Persist them, then call `persisted(upTo:)` and ack.
        public let toApply: [ReplicationEntry]
        /// Acknowledge this sequence now: the batch held only entries already durable here. The origin resent
        /// them because an earlier ack was lost, and without a fresh ack it would wait for one forever.
        public let reacknowledge: UInt64?
    }

    /// Entries arrived on the stream.
    /// - Throws: `replication_protocol` for an entry of another origin or a gap in the sequence.
    public mutating func received(_ entries: [ReplicationEntry]) throws(MeridianError) -> Delivery {
        let toApply = try ReplicationEntry.continuation(of: entries, origin: origin, after: pendingUpTo)
        pendingUpTo += UInt64(toApply.count)
        let onlyDurableDuplicates = toApply.isEmpty && !entries.isEmpty && pendingUpTo == applied
        return Delivery(toApply: toApply, reacknowledge: onlyDurableDuplicates ? applied : nil)
    }

    /// A batch covering the origin's sequences `from...through` arrived; `entries` are the ones this region
    /// replicates, in order (the origin leaves out keyspaces kept elsewhere, so the range may hold fewer).
    /// - Returns: What to apply, and `covers`: persist the range up to there (even when nothing is left to
    ///   apply), then call `persisted(upTo:)` and ack.
    /// - Throws: `replication_protocol` for an entry of another origin, an entry outside the range or out of
    ///   order, or a range that starts after the next expected sequence (the stream lost a batch).
    public mutating func received(from: UInt64, through: UInt64, entries: [ReplicationEntry]) throws(MeridianError) -> RangeDelivery {
        guard from >= 1, from <= through else {
            throw MeridianError(.replicationProtocol, "A batch of \(origin)'s log covers \(from) through \(through), which is no range.",
                                context: ["origin": origin.rawValue])
        }
        guard from <= pendingUpTo + 1 else {
            throw MeridianError(.replicationProtocol, "\(origin)'s log skipped from \(pendingUpTo) to \(from); the stream must resume from \(applied).",
                                context: ["origin": origin.rawValue, "expected": String(pendingUpTo + 1), "received": String(from)])
        }
        var previous: UInt64 = 0
        for entry in entries {
            guard entry.origin == origin else {
                throw MeridianError(.replicationProtocol, "A batch of \(origin)'s log holds an entry of \(entry.origin).",
                                    context: ["origin": origin.rawValue, "entry_origin": entry.origin.rawValue])
            }
            guard (from...through).contains(entry.sequence), entry.sequence > previous else {
                throw MeridianError(.replicationProtocol, "A batch of \(origin)'s log covering \(from) through \(through) holds entry \(entry.sequence) out of range or order.",
                                    context: ["origin": origin.rawValue, "received": String(entry.sequence)])
            }
            previous = entry.sequence
        }
        guard through > pendingUpTo else {
            // Everything here was handed out before: a resend after a lost ack.
            return RangeDelivery(toApply: [], covers: nil, reacknowledge: pendingUpTo == applied ? applied : nil)
        }
        let fresh = entries.filter { $0.sequence > pendingUpTo }
        pendingUpTo = through
        return RangeDelivery(toApply: fresh, covers: through, reacknowledge: nil)
    }

    /// What to do with a batch that arrived as a range.
    public struct RangeDelivery: Sendable, Hashable {
        /// The entries to apply, in order, duplicates removed.
        public let toApply: [ReplicationEntry]
        /// Persist the origin's log as applied up to here (nil: nothing new).
        public let covers: UInt64?
        /// Acknowledge this sequence now: the batch held only entries already durable here.
        public let reacknowledge: UInt64?
    }

    /// The entries up to `sequence` are durable.
    /// - Returns: The sequence to acknowledge to the origin (on whichever stream is open now).
    public mutating func persisted(upTo sequence: UInt64) -> UInt64 {
        precondition(sequence <= pendingUpTo, "only entries handed out can be persisted")
        applied = max(applied, sequence)
        return applied
    }

    /// Persisting the entries handed out failed: they will be accepted again when resent.
    public mutating func persistFailed() {
        pendingUpTo = applied
    }

    /// The stream closed. Entries already handed out stay handed out: their write may still complete, and
    /// taking them again from the next stream would apply them twice. A resend of them counts as duplicates.
    public mutating func streamClosed() {}
}

/// Checked batches of one inbound stream waiting to be persisted: consecutive ranges merge, so everything
/// queued while a persist runs goes into the next one (one transaction, one fsync, one ack); a batch of
/// only durable duplicates asks for a re-acknowledgement, answered once nothing is left to persist.
public struct ApplyQueue: Sendable {
    /// A merged range to persist.
    public struct Batch: Sendable, Hashable {
        public let from: UInt64
        public let through: UInt64
        public let entries: [ReplicationEntry]

        public init(from: UInt64, through: UInt64, entries: [ReplicationEntry]) {
            self.from = from
            self.through = through
            self.entries = entries
        }
    }

    private var pending: Batch?
    private var reacknowledge: UInt64?

    public init() {}

    /// Queues what the receiver made of a batch that covered `from...`.
    public mutating func add(_ delivery: LogReceiver.RangeDelivery, from: UInt64) {
        if let covers = delivery.covers {
            pending = pending.map { Batch(from: $0.from, through: covers, entries: $0.entries + delivery.toApply) }
                ?? Batch(from: from, through: covers, entries: delivery.toApply)
        } else if let again = delivery.reacknowledge {
            reacknowledge = again
        }
    }

    /// The next range to persist, if any.
    public mutating func takeBatch() -> Batch? {
        defer { pending = nil }
        return pending
    }

    /// The part of the next range at or below `limit` (its origin's durable point: what lies beyond may still be lost
    /// with the origin's commit), if any; the rest stays queued.
    public mutating func takeBatch(through limit: UInt64) -> Batch? {
        guard let batch = pending, batch.from <= limit else { return nil }
        guard batch.through > limit else { return takeBatch() }
        pending = Batch(from: limit + 1, through: batch.through, entries: batch.entries.filter { $0.sequence > limit })
        return Batch(from: batch.from, through: limit, entries: batch.entries.filter { $0.sequence <= limit })
    }

    /// Puts a taken range back in front of what is queued (its apply did not happen). What was queued since starts at
    /// most one past it (the receiver refuses gaps); where a peer's ranges overlapped, the entries put back count.
    public mutating func putBack(_ batch: Batch) {
        guard let queued = pending else {
            pending = batch
            return
        }
        pending = Batch(from: batch.from, through: max(batch.through, queued.through),
                        entries: batch.entries + queued.entries.filter { $0.sequence > batch.through })
    }

    /// The re-acknowledgement owed, if any (take it once no batch is pending).
    public mutating func takeReacknowledgement() -> UInt64? {
        defer { reacknowledge = nil }
        return reacknowledge
    }
}

/// How a replica applies one batch of another origin's log: the rule the node's applier and the simulator share.
public enum ApplyDurability: Sendable, Hashable {
    /// One transaction with its fsync: the entries become visible once durable, and one acknowledgement follows.
    /// For a batch holding a write of a keyspace whose acknowledgement is `majority` or `all`: its origin waits
    /// for this region's durable point, and a second transaction (and a second ack frame through the WAN) would
    /// cost more than the fsync it spares readers: 22% less replica CPU per write, one at a time, than the two
    /// (BENCHMARKS.md). A write that asks for `majority` or `all` in an `async` keyspace (`Meridian-Ack`) takes the
    /// other path: entries do not carry their ack mode.
    case durable
    /// Visible at once, without an fsync; a sync follows, and one acknowledgement after it. For a batch of `async`
    /// keyspaces only: no origin waits for it by the keyspaces' own rules, and readers here see the writes an fsync
    /// sooner. A crash before the sync takes the batch back whole, applied point and all; the origin ships it
    /// again from the durable point.
    case visibleFirst

    /// How to apply `entries` (one batch, of any keyspaces), by their keyspaces' acknowledgement rules. An entry of a
    /// keyspace the cluster does not name counts as awaited.
    public static func of(_ entries: [ReplicationEntry], in cluster: ClusterConfig) -> ApplyDurability {
        var seen: Set<KeyspaceName> = []
        for entry in entries where seen.insert(entry.keyspace).inserted {
            guard let policy = cluster.keyspace(entry.keyspace), policy.ack == .async else { return .durable }
        }
        return .visibleFirst
    }
}

/// How fresh a region's copy of one origin's writes is, from heartbeats that echo the region's own clock.
///
/// The region stamps each ack with its own clock; the origin returns the latest stamp in its next heartbeat,
/// with its log end at that moment. Every write the origin accepted before it received the stamp is at or
/// below that log end, so once the region has applied up to there it holds all of them: it is fresh as of
/// the stamp, on its own clock, whatever the offset between the two regions' clocks.
public struct FreshnessTracker: Sendable, Hashable {
    /// The region holds every write the origin accepted before this time of its own clock.
    public private(set) var freshAsOf: UInt64?
    /// Heartbeats heard but not yet covered by what is applied, oldest first.
    private var pending: [Heard] = []

    private struct Heard: Sendable, Hashable {
        let logHighWater: UInt64
        let echo: UInt64
    }

    /// The most heartbeats remembered; beyond it the oldest is dropped (a newer one vouches for more).
    public static let pendingMax = 64

    public init() {}

    /// A heartbeat arrived: the origin's log end when sent, and the stamp it echoes.
    /// - Parameters:
    ///   - now: This region's clock now; an echo from the future (a previous run's clock) vouches for nothing.
    ///   - applied: How far this region has durably applied the origin's log.
    public mutating func heard(logHighWater: UInt64, echo: UInt64, now: UInt64, applied: UInt64) {
        // Echo 0: the origin has no ack of ours yet, so it vouches for no time.
        guard echo > 0, echo <= now else { return }
        if pending.count == Self.pendingMax { pending.removeFirst() }
        pending.append(Heard(logHighWater: logHighWater, echo: echo))
        advance(applied: applied)
    }

    /// The origin's log is durably applied up to `applied`.
    public mutating func advance(applied: UInt64) {
        while let first = pending.first, first.logHighWater <= applied {
            freshAsOf = max(freshAsOf ?? 0, first.echo)
            pending.removeFirst()
        }
    }

    /// An upper bound on the staleness now, on this region's clock (nil: unknown).
    public func stalenessMs(now: UInt64) -> UInt64? {
        freshAsOf.map { now > $0 ? now - $0 : 0 }
    }
}

/// Cuts a range of an origin's log into the batches one peer receives: only entries of keyspaces the peer holds a
/// replica of travel (residency: a restricted keyspace's writes never leave its regions), and no batch's entries
/// exceed `bytesMax` encoded. The batches cover the whole range, so the peer tells left-out entries from lost ones.
public enum Shipment {
    /// - Parameters:
    ///   - entries: The log's entries `from...through`, in order.
    ///   - peer: The region the batches go to.
    ///   - bytesMax: The most encoded entry bytes one batch holds (at least one entry always fits).
    public static func batches(_ entries: [ReplicationEntry], from: UInt64, through: UInt64, for peer: RegionName, cluster: ClusterConfig,
                               bytesMax: Int) -> [PeerFrame] {
        var frames: [PeerFrame] = []
        var start = from
        var current: [ReplicationEntry] = []
        var bytes = 0
        for entry in entries {
            guard cluster.keyspace(entry.keyspace)?.isReplica(peer) == true else { continue }
            let size = EntryCodec.encodedBytes(entry)
            if !current.isEmpty && bytes + size > bytesMax {
                frames.append(.batch(from: start, through: entry.sequence - 1, entries: current))
                start = entry.sequence
                current = []
                bytes = 0
            }
            current.append(entry)
            bytes += size
        }
        frames.append(.batch(from: start, through: through, entries: current))
        return frames
    }
}
