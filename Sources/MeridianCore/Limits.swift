/// Every size and count limit of a node, in one value, validated when the configuration is read.
///
/// Exceeding a limit gives back-pressure or a clear rejection, never unbounded memory. Its JSON (in
/// `GET /v1/status`) decodes as it encodes, without the range checks `ClusterConfig.parse` makes.
public struct Limits: Sendable, Hashable, Codable {
    /// The largest value a write may store, in bytes.
    public var valueBytesMax: Int = 1 << 20
    /// The most keys one list request returns.
    public var listLimitMax: Int = 1000
    /// The keys a list request returns when it names no limit.
    public var listLimitDefault: Int = 100
    /// The most writes that share one store transaction (and one fsync).
    public var commitBatchMax: Int = 512
    /// How long, in microseconds, a commit waits for more writes to join its batch (0: commit at once).
    public var commitWaitUs: Int = 0
    /// The most writes waiting for a commit; beyond it writes are refused with `overloaded`.
    public var commitQueueMax: Int = 8192
    /// The most value bytes waiting for a commit; beyond it writes are refused with `overloaded`.
    public var commitQueueBytesMax: Int = 64 << 20
    /// The largest lead of a peer's clock over ours that is accepted, in ms.
    public var clockOffsetMsMax: UInt64 = HybridLogicalClock.maxOffsetMsDefault
    /// How long a `majority` or `all` write waits for its confirmations before answering 504, in ms.
    public var ackTimeoutMs: Int = 5_000
    /// How often an idle replication stream sends a heartbeat, in ms.
    public var heartbeatIntervalMs: Int = 100
    /// Missed heartbeat intervals (beyond the link's round trip) after which a peer counts as unreachable.
    public var missedHeartbeatsMax: Int = 5
    /// The most log entries in one replication batch.
    public var replicationBatchEntriesMax: Int = 256
    /// The most log entries sent to a peer and not yet acknowledged.
    public var replicationInflightEntriesMax: Int = 4096
    /// The largest replication frame, in bytes (a batch is cut to fit; one entry of the largest value always fits).
    public var replicationFrameBytesMax: Int = 4 << 20
    /// The most entries of this region's log kept for peers that have not applied them; a peer further
    /// behind is marked as needing a full resync.
    public var logRetentionEntries: Int = 1_000_000
    /// The most writes forwarded to other regions and not yet answered.
    public var forwardsInflightMax: Int = 1024
    /// How long a session, bounded or strong read waits for this region to catch up (or for its confirmations)
    /// before it is forwarded or refused, in ms. A wait before forwarding is also capped by the RTT to the target.
    public var readWaitMs: Int = 1_000
    /// The most records each keyspace's conflicts log keeps in a region; the oldest are dropped beyond it
    /// (and counted in `meridian_conflicts_dropped_total`).
    public var conflictsLogMax: Int = 10_000
    /// How often, in ms, a region compares each keyspace's Merkle tree with every other replica's and
    /// repairs what differs (0: only on `meridian repair`).
    public var antiEntropyIntervalMs: Int = 30_000
    /// The fewest keys (in either region) at which an anti-entropy round compares the slot leaves of the differing
    /// buckets and pulls only the differing slots' keys, rather than whole buckets (``MerkleSlots/keysMin``).
    public var antiEntropySlotKeysMin: Int = MerkleSlots.keysMin
    /// The most versions a key of a `siblings` keyspace may hold; a write that would add one more (a blind
    /// write, or one whose context misses versions) is refused with `too_many_siblings`.
    public var siblingsMax: Int = 16
    /// How long, in ms, the first region of a keyspace's failover order must have been up and close behind
    /// before leadership fails back to it (a region that flaps does not take leadership back and forth).
    public var failbackSteadyMs: Int = 5_000
    /// Silences (missed heartbeats plus the round trip) a region waits after starting before it stands
    /// against a leader it has not heard, unless every stream is up sooner.
    public var electionGraceSilences: Int = 10
    /// The most open streams of `GET /v1/topology` (server-sent events) a node serves; more are refused with
    /// `overloaded`.
    public var topologyStreamsMax: Int = 256
    /// How long a region keeps an idempotent write's outcome for retries (`Idempotency-Key`): 24 hours.
    public var idempotencyTtlMs: Int = 86_400_000
    /// The most idempotency keys a region keeps; past it the oldest are forgotten before their time (and counted
    /// in `meridian_idempotency_keys_evicted_total`).
    public var idempotencyKeysMax: Int = 1_000_000
    /// The most records a region's audit trail keeps; the oldest go beyond it (the trail keeps the last one dropped
    /// as its anchor, so what remains still verifies).
    public var auditRecordsMax: Int = 1_000_000

    /// The limits a node starts with when the configuration names none.
    public init() {}

    /// The ranges each limit must fall in, with the YAML field names; checked by `ClusterConfig.parse`.
    static let ranges: [(field: String, range: ClosedRange<Int>)] = [
        ("value_bytes_max", 1...(64 << 20)),
        ("list_limit_max", 1...100_000),
        ("list_limit_default", 1...100_000),
        ("commit_batch_max", 1...10_000),
        ("commit_wait_us", 0...100_000),
        ("commit_queue_max", 1...1_000_000),
        ("commit_queue_bytes_max", 1...(4 << 30)),
        ("max_clock_offset_ms", 1...60_000),
        ("ack_timeout_ms", 1...600_000),
        ("heartbeat_interval_ms", 5...60_000),
        ("missed_heartbeats_max", 1...1000),
        ("replication_batch_entries_max", 1...100_000),
        ("replication_inflight_entries_max", 1...10_000_000),
        ("replication_frame_bytes_max", 4096...(256 << 20)),
        ("log_retention_entries", 1...1_000_000_000),
        ("forwards_inflight_max", 1...1_000_000),
        ("read_wait_ms", 0...600_000),
        ("conflicts_log_max", 1...10_000_000),
        ("anti_entropy_interval_ms", 0...86_400_000),
        ("anti_entropy_slot_keys_min", 0...1_000_000_000),
        ("siblings_max", 1...1000),
        ("failback_steady_ms", 0...3_600_000),
        ("election_grace_silences", 0...100),
        ("topology_streams_max", 1...100_000),
        ("idempotency_ttl_ms", 1_000...(30 * 86_400_000)),
        ("idempotency_keys_max", 1...100_000_000),
        ("audit_records_max", 1_000...100_000_000),
    ]

    enum CodingKeys: String, CodingKey {
        case valueBytesMax = "value_bytes_max"
        case listLimitMax = "list_limit_max"
        case listLimitDefault = "list_limit_default"
        case commitBatchMax = "commit_batch_max"
        case commitWaitUs = "commit_wait_us"
        case commitQueueMax = "commit_queue_max"
        case commitQueueBytesMax = "commit_queue_bytes_max"
        case clockOffsetMsMax = "max_clock_offset_ms"
        case ackTimeoutMs = "ack_timeout_ms"
        case heartbeatIntervalMs = "heartbeat_interval_ms"
        case missedHeartbeatsMax = "missed_heartbeats_max"
        case replicationBatchEntriesMax = "replication_batch_entries_max"
        case replicationInflightEntriesMax = "replication_inflight_entries_max"
        case replicationFrameBytesMax = "replication_frame_bytes_max"
        case logRetentionEntries = "log_retention_entries"
        case forwardsInflightMax = "forwards_inflight_max"
        case readWaitMs = "read_wait_ms"
        case conflictsLogMax = "conflicts_log_max"
        case antiEntropyIntervalMs = "anti_entropy_interval_ms"
        case antiEntropySlotKeysMin = "anti_entropy_slot_keys_min"
        case siblingsMax = "siblings_max"
        case failbackSteadyMs = "failback_steady_ms"
        case electionGraceSilences = "election_grace_silences"
        case topologyStreamsMax = "topology_streams_max"
        case idempotencyTtlMs = "idempotency_ttl_ms"
        case idempotencyKeysMax = "idempotency_keys_max"
        case auditRecordsMax = "audit_records_max"
    }
}
