/// Every size and count limit of a node, in one value, validated when the configuration is read.
///
/// Exceeding a limit gives back-pressure or a clear rejection, never unbounded memory.
public struct Limits: Sendable, Hashable, Encodable {
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
    public var maxClockOffsetMs: UInt64 = HybridLogicalClock.maxOffsetMsDefault

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
    ]

    enum CodingKeys: String, CodingKey {
        case valueBytesMax = "value_bytes_max"
        case listLimitMax = "list_limit_max"
        case listLimitDefault = "list_limit_default"
        case commitBatchMax = "commit_batch_max"
        case commitWaitUs = "commit_wait_us"
        case commitQueueMax = "commit_queue_max"
        case commitQueueBytesMax = "commit_queue_bytes_max"
        case maxClockOffsetMs = "max_clock_offset_ms"
    }
}
