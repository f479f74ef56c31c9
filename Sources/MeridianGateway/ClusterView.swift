import AsyncHTTPClient
import Foundation
import Logging
import MeridianAPI
import MeridianCore
import NIOCore
import Synchronization

/// What the gateway knows of the cluster: every region's topology stream (the cluster's verdicts and leaders,
/// pushed), the regions it ejected itself after a refused connection, and its measured latency to each.
final class ClusterView: Sendable {
    /// One region's topology stream.
    struct Stream {
        var answer: TopologyAnswer?
        /// The stream is open and heard from within its silence limit.
        var live = false
    }

    private struct State {
        var streams: [RegionName: Stream] = [:]
        /// Regions left out until the instant, after a refused connection.
        var ejectedUntil: [RegionName: ContinuousClock.Instant] = [:]
        var latency: [RegionName: LatencyWindow] = [:]
        /// When each region's stream last delivered bytes.
        var heardAt: [RegionName: ContinuousClock.Instant] = [:]
        var agreed: Agreed
    }

    let regions: [RegionName]
    let urls: [RegionName: String]
    private let routing: RoutingConfig
    private let state: Mutex<State>
    private let logger: Logger
    /// A stream silent this long is dead (regions send a comment about once a second).
    let streamSilence: Duration = .seconds(3)

    init(cluster: ClusterConfig, logger: Logger) {
        regions = cluster.regions.map(\.name)
        let scheme = (cluster.tls?.clientAPI ?? false) ? "https" : "http"
        urls = Dictionary(uniqueKeysWithValues: cluster.regions.map { ($0.name, "\(scheme)://\($0.client)") })
        routing = cluster.routing
        self.logger = logger
        state = Mutex(State(agreed: Agreed(routable: Set(cluster.regions.map(\.name)))))
    }

    // MARK: - The view routing uses

    /// The regions requests may go to now, the leaders in the highest terms seen, and the measured latencies.
    func routeView(now: ContinuousClock.Instant = .now) -> RoutePlanner.RouteView {
        state.withLock { state in
            var routable = state.agreed.routable
            for (region, until) in state.ejectedUntil where until > now { routable.remove(region) }
            return RoutePlanner.RouteView(regions: regions, routable: routable, leaders: state.agreed.leaders,
                                          latencyMs: state.latency.compactMapValues(\.averageMs))
        }
    }

    /// What the streams agree on, worked out again whenever a stream changes (not on every request).
    struct Agreed {
        var routable: Set<RegionName>
        var leaders: [KeyspaceName: RegionName] = [:]
    }

    private func agree(_ streams: [RegionName: Stream]) -> Agreed {
        let answers = Self.voters(streams)
        var agreed = Agreed(routable: Set(regions))
        if !answers.isEmpty {
            for region in regions {
                let down = answers.filter { answer in answer.regions.first { $0.name == region.rawValue }?.health == .down }.count
                if down * 2 > answers.count { agreed.routable.remove(region) }
            }
        }
        var leaders: [KeyspaceName: (RegionName, UInt64)] = [:]
        for answer in answers {
            for keyspace in answer.keyspaces {
                guard let leader = keyspace.leader.flatMap({ try? RegionName($0) }), let name = try? KeyspaceName(keyspace.name) else { continue }
                let epoch = keyspace.epoch ?? 0
                if leaders[name].map({ epoch > $0.1 }) ?? true { leaders[name] = (leader, epoch) }
            }
        }
        agreed.leaders = leaders.mapValues(\.0)
        return agreed
    }

    /// Records a stream's new state and works the agreement out again.
    private func update(_ region: RegionName, _ change: (inout Stream) -> Void) {
        state.withLock { state in
            change(&state.streams[region, default: Stream()])
            state.agreed = agree(state.streams)
        }
    }

    /// The views that vote: the live streams' answers, those of quorate regions when there are any.
    private static func voters(_ streams: [RegionName: Stream]) -> [TopologyAnswer] {
        let live = streams.values.filter(\.live).compactMap(\.answer)
        let quorate = live.filter(\.quorate)
        return quorate.isEmpty ? live : quorate
    }

    /// The latency below which `percentile` of a region's recent requests were answered (nil: too few samples).
    func latencyPercentileMs(_ region: RegionName, _ percentile: Double) -> Double? {
        state.withLock { $0.latency[region]?.percentileMs(percentile) }
    }

    // MARK: - What the proxy reports

    /// A request to `region` took `milliseconds` to its response head.
    func recordLatency(_ region: RegionName, milliseconds: Double) {
        state.withLock { $0.latency[region, default: LatencyWindow()].record(milliseconds) }
    }

    /// A connection to `region` was refused or failed before anything was sent: leave it out for a while, unless
    /// that would leave out more than the allowed share of the regions. Returns whether it was ejected.
    @discardableResult
    func eject(_ region: RegionName, reason: String, now: ContinuousClock.Instant = .now) -> Bool {
        let ejected = state.withLock { state -> Bool in
            let others = state.ejectedUntil.filter { $0.key != region && $0.value > now }.count
            guard (others + 1) * 100 <= regions.count * routing.ejectionRegionsPercentMax else { return false }
            let wasOut = (state.ejectedUntil[region] ?? now) > now
            state.ejectedUntil[region] = now + .milliseconds(routing.ejectionMs)
            return !wasOut
        }
        if ejected { logger.notice("ejected \(region) for \(routing.ejectionMs) ms", metadata: ["reason": "\(reason)"]) }
        return ejected
    }

    /// `region` answered: it is no longer left out.
    func answered(_ region: RegionName) {
        state.withLock { _ = $0.ejectedUntil.removeValue(forKey: region) }
    }

    /// The regions ejected now.
    func ejected(now: ContinuousClock.Instant = .now) -> [RegionName] {
        state.withLock { state in regions.filter { (state.ejectedUntil[$0] ?? now) > now } }
    }

    /// Each region's stream: open or not, and its latest answer.
    var streams: [RegionName: Stream] { state.withLock { $0.streams } }

    // MARK: - Watching the regions

    /// Follows every region's topology stream, reconnecting with backoff, until cancelled.
    func watch(client: HTTPClient, token: String?) async {
        await withDiscardingTaskGroup { tasks in
            for region in regions {
                tasks.addTask { await self.follow(region, client: client, token: token) }
            }
        }
    }

    private func follow(_ region: RegionName, client: HTTPClient, token: String?) async {
        var failures = 0
        var lastLogged: String?
        while !Task.isCancelled {
            do {
                try await readStream(region, client: client, token: token)
                failures = 0
            } catch {
                failures += 1
                let reason = "\(error)"
                if reason != lastLogged, !Task.isCancelled {
                    logger.warning("topology stream of \(region) ended", metadata: ["reason": "\(reason)"])
                    lastLogged = reason
                }
            }
            update(region) { $0.live = false }
            if !Task.isCancelled { eject(region, reason: "its topology stream ended") }
            try? await Task.sleep(for: .milliseconds(min(1_000, 25 << min(failures, 6))))
        }
    }

    /// Reads one region's stream until it ends, fails, or stays silent longer than ``streamSilence``.
    private func readStream(_ region: RegionName, client: HTTPClient, token: String?) async throws {
        guard let url = urls[region] else { return }
        var request = HTTPClientRequest(url: "\(url)/v1/topology")
        request.headers.add(name: "Accept", value: "text/event-stream")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        state.withLock { $0.heardAt[region] = .now }
        let prepared = request
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                let response = try await client.execute(prepared, deadline: .distantFuture)
                guard response.status == .ok else {
                    throw GatewayFailure("GET /v1/topology answered \(response.status.code)")
                }
                var parser = EventStreamParser()
                for try await buffer in response.body {
                    self.state.withLock { $0.heardAt[region] = .now }
                    for event in try parser.consume(buffer.readableBytesView) where event.name == "topology" {
                        let answer = try JSONDecoder().decode(TopologyAnswer.self, from: Data(event.data.utf8))
                        self.update(region) { $0 = Stream(answer: answer, live: true) }
                        self.answered(region)
                    }
                }
                throw GatewayFailure("the stream ended")
            }
            tasks.addTask {
                while !Task.isCancelled {
                    try await Task.sleep(for: .milliseconds(500))
                    let heard = self.state.withLock { $0.heardAt[region] ?? .now }
                    if ContinuousClock.now - heard > self.streamSilence {
                        throw GatewayFailure("silent for more than \(self.streamSilence)")
                    }
                }
            }
            defer { tasks.cancelAll() }
            try await tasks.next()
        }
    }
}

/// A region's recent response times: a ring of the latest samples, for percentiles, and their average. The sorted
/// copy percentiles read is made again only every ``resortEvery`` samples (a percentile is asked on many requests).
struct LatencyWindow: Sendable {
    static let size = 256
    /// Fewer samples than this give no percentile (no hedging on a guess).
    static let samplesMin = 20
    static let resortEvery = 32
    private var samples: [Double] = []
    private var next = 0
    private var total = 0.0
    private var sorted: [Double] = []
    private var sinceSort = 0

    mutating func record(_ milliseconds: Double) {
        if samples.count < Self.size {
            samples.append(milliseconds)
        } else {
            total -= samples[next]
            samples[next] = milliseconds
        }
        total += milliseconds
        next = (next + 1) % Self.size
        sinceSort += 1
        if sorted.isEmpty || sinceSort >= Self.resortEvery || samples.count <= Self.samplesMin {
            sorted = samples.sorted()
            sinceSort = 0
        }
    }

    func percentileMs(_ percentile: Double) -> Double? {
        guard sorted.count >= Self.samplesMin else { return nil }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * percentile / 100))]
    }

    var averageMs: Double? {
        samples.isEmpty ? nil : total / Double(samples.count)
    }
}

/// A failure of the gateway's own, for its logs.
struct GatewayFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

