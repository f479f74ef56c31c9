import Foundation
import MeridianCore
import Prometheus

extension Gateway {
    /// The hedge delay for a read to `region`: its recent latency at the hedge percentile, when hedging is on and
    /// there are enough samples.
    func hedgeDelay(_ region: RegionName) -> Double? {
        let percentile = configuration.cluster.routing.hedgePercentile
        guard percentile > 0, configuration.cluster.routing.hedgeExtraPercentMax > 0 else { return nil }
        return view.latencyPercentileMs(region, percentile).map { max($0, 1) }
    }

    static func describe(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("Connection refused") || text.contains("connectionRefused") { return "connection refused" }
        if text.contains("connectTimeout") { return "connect timeout" }
        return String(text.prefix(200))
    }
}

/// The gateway's Prometheus metrics, in a registry of its own.
final class GatewayMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    func recordRequest(region: String, status: Int, duration: Duration) {
        registry.makeCounter(name: "meridian_gateway_requests_total", labels: [("region", region), ("status", String(status))]).increment()
        registry.makeDurationHistogram(name: "meridian_gateway_request_duration_seconds", labels: [("region", region)],
                                       buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                                                 .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1)])
            .record(duration)
    }

    func recordDNSAnswer(region: String) {
        registry.makeCounter(name: "meridian_gateway_dns_answers_total", labels: [("region", region)]).increment()
    }

    func recordHedge() {
        registry.makeCounter(name: "meridian_gateway_hedged_reads_total").increment()
    }
}
