import MeridianCore
import MeridianStorage
import Prometheus
import Synchronization

/// The node's Prometheus metrics, in a registry of its own (no global bootstrap, so tests can run many nodes).
public final class NodeMetrics: StoreObserver, Sendable {
    /// The registry `/metrics` renders.
    public let registry = PrometheusCollectorRegistry()
    private let commitBatch: ValueHistogram
    private let commitDuration: DurationHistogram
    /// Handles per (route, method, status), so the hot path skips the registry's name lookup. Bounded: routes
    /// are patterns and statuses a small set, never raw paths.
    private let requestMetrics = Mutex<[RequestLabels: (Counter, DurationHistogram)]>([:])

    private struct RequestLabels: Hashable {
        let route: String
        let method: String
        let status: Int
    }

    private static let latencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2.5), .seconds(5),
    ]

    /// Creates the node's metrics.
    public init() {
        commitBatch = registry.makeValueHistogram(
            descriptor: MetricNameDescriptor(namespace: "meridian", subsystem: "store", metricName: "commit_batch", unitName: "writes",
                                             helpText: "Writes that shared one store transaction and fsync."),
            buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])
        commitDuration = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(namespace: "meridian", subsystem: "store", metricName: "commit_duration", unitName: "seconds",
                                             helpText: "Time to commit one store transaction, including the fsync of the write-ahead log."),
            buckets: Self.latencyBuckets)
    }

    /// Records one HTTP request.
    /// - Parameters:
    ///   - route: The matched route pattern (never the raw path, which would give unbounded label values).
    func recordRequest(route: String, method: String, status: Int, duration: Duration) {
        let labels = RequestLabels(route: route, method: method, status: status)
        let (counter, histogram) = requestMetrics.withLock { cache in
            if let cached = cache[labels] { return cached }
            let made = makeRequestMetrics(labels)
            cache[labels] = made
            return made
        }
        counter.increment()
        histogram.record(duration)
    }

    /// Counts a peer stream refused for its TLS identity (no or a bad certificate, or one of another region).
    func recordPeerRefusal(reason: String) {
        registry.makeCounter(name: "meridian_peer_refusals_total", labels: [("reason", reason)]).increment()
    }

    /// Counts a check of the TLS files that found them changed, by outcome (reloaded or failed).
    func recordTLSReload(outcome: String) {
        registry.makeCounter(name: "meridian_tls_reloads_total", labels: [("outcome", outcome)]).increment()
    }

    /// Counts a request refused by authentication (401) or authorization (403), by a reason from a fixed set.
    func recordAuthRefusal(code: String, reason: String) {
        registry.makeCounter(name: "meridian_auth_refusals_total", labels: [("code", code), ("reason", reason)]).increment()
    }

    /// Sets the cluster's verdict on a region (a state set: 1 for its verdict, 0 for the others) and counts the change.
    func recordHealthVerdict(region: RegionName, verdict: HealthVerdicts.Verdict) {
        for each in HealthVerdicts.Verdict.allCases {
            registry.makeGauge(name: "meridian_region_health", labels: [("region", region.rawValue), ("verdict", each.rawValue)])
                .set(Int64(each == verdict ? 1 : 0))
        }
        registry.makeCounter(name: "meridian_region_verdict_changes_total", labels: [("region", region.rawValue), ("verdict", verdict.rawValue)]).increment()
    }

    private func makeRequestMetrics(_ labels: RequestLabels) -> (Counter, DurationHistogram) {
        let route = labels.route, method = labels.method, status = labels.status
        let counter = registry.makeCounter(
            descriptor: MetricNameDescriptor(namespace: "meridian", subsystem: "http", metricName: "requests", unitName: "total",
                                             helpText: "HTTP requests served, by route, method and status."),
            labels: [("route", route), ("method", method), ("status", String(status))])
        let histogram = registry.makeDurationHistogram(
            descriptor: MetricNameDescriptor(namespace: "meridian", subsystem: "http", metricName: "request_duration", unitName: "seconds",
                                             helpText: "HTTP request latency, by route, method and status."),
            labels: [("route", route), ("method", method), ("status", String(status))],
            buckets: Self.latencyBuckets)
        return (counter, histogram)
    }

    public func commitCompleted(writes: Int, commitSeconds: Double) {
        commitBatch.record(Double(writes))
        commitDuration.record(.nanoseconds(Int64(commitSeconds * 1e9)))
    }

    /// Values discarded by a keyspace's conflict rule were logged; keyspaces are a configured, bounded set.
    public func conflictsRecorded(keyspace: KeyspaceName, recorded: Int, dropped: Int) {
        if recorded > 0 {
            registry.makeCounter(name: "meridian_conflicts_total", labels: [("keyspace", keyspace.rawValue)]).increment(by: Int64(recorded))
        }
        if dropped > 0 {
            registry.makeCounter(name: "meridian_conflicts_dropped_total", labels: [("keyspace", keyspace.rawValue)]).increment(by: Int64(dropped))
        }
    }

    /// Live idempotency keys were forgotten before `idempotency_ttl_ms` because `idempotency_keys_max` was reached.
    public func idempotencyKeysEvicted(_ count: Int) {
        registry.makeCounter(name: "meridian_idempotency_keys_evicted_total").increment(by: Int64(count))
    }
}
