import AsyncHTTPClient
import Foundation
import Logging
import MeridianAPI
import MeridianCore
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// A client of a whole Meridian cluster, for Swift programs.
///
/// It learns the cluster from any seed region's `GET /v1/topology` and keeps it current from that endpoint's event
/// stream (``run()``). Each request goes where the core's ``RoutePlanner`` says, from that view and the client's
/// own circuit breakers: writes and strong reads of single-leader keyspaces to the leader (or the key's home), other
/// reads to the first healthy region of ``Configuration/preferredRegions``; restricted keyspaces only into their
/// residency. Reads fail over to the next region at once. Every write carries an `Idempotency-Key` (the caller's,
/// or a fresh UUID), so a write whose fate is open (a lost answer, a 503 or 504 saying `applied: maybe`, a leader
/// that died) is sent again with the same key until a region answers: the cluster applies it once. Each answer's
/// session token is carried on the next request (read-your-writes in any region).
public final class MeridianClient: Sendable {
    public struct Configuration: Sendable {
        /// Client URLs of one or more regions (`http://127.0.0.1:7101`); the rest are discovered.
        public var seeds: [String]
        /// Regions to read from, nearest first.
        public var preferredRegions: [RegionName]
        /// A bearer token, when the cluster has authentication on.
        public var token: String?
        /// The cluster's CA bundle, when its regions speak HTTPS.
        public var caPath: String?
        /// Ask a second region when a read has no answer within this many ms (nil: never).
        public var hedgeAfterMs: Int?
        /// Consecutive failures after which a region is left out, and for how long.
        public var breakerThreshold = 2
        public var breakerCooldownMs = 2_000
        /// How long one attempt may take.
        public var timeoutMs = 10_000

        public init(seeds: [String], preferredRegions: [RegionName] = [], token: String? = nil, caPath: String? = nil, hedgeAfterMs: Int? = nil) {
            self.seeds = seeds.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
            self.preferredRegions = preferredRegions
            self.token = token
            self.caPath = caPath
            self.hedgeAfterMs = hedgeAfterMs
        }
    }

    /// A successful answer.
    public struct Answer: Sendable {
        public let status: Int
        public let body: [UInt8]
        public let headers: [String: String]
        /// The region that served it.
        public let region: String
        public var text: String { String(decoding: body, as: UTF8.self) }
        /// The version (the ETag, unquoted).
        public var version: String? { headers["etag"].map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\"")) } }
    }

    /// What went wrong: the contract's error code and sentence, the status, whether a write was applied (`no` or
    /// `maybe`), and the region; `unreachable` when no region answered.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let code: String
        public let message: String
        public let status: Int
        public let applied: String?
        public let region: String?
        public var description: String { "\(code): \(message)" }
    }

    private struct Breaker {
        var failures = 0
        var openUntil: ContinuousClock.Instant?
    }

    private struct State {
        var topology: TopologyAnswer?
        var breakers: [RegionName: Breaker] = [:]
        var session: String?
        var shutDown = false
    }

    public let configuration: Configuration
    private let client: HTTPClient
    private let state = Mutex(State())
    private let logger: Logger

    /// Creates the client; call ``refresh()`` (or ``run()``) before the first request.
    public init(configuration: Configuration, logger: Logger = Logger(label: "meridian.client")) throws(Failure) {
        guard !configuration.seeds.isEmpty else { throw Failure(code: "invalid_configuration", message: "Give at least one seed URL.", status: 0, applied: nil, region: nil) }
        self.configuration = configuration
        self.logger = logger
        var http = HTTPClient.Configuration()
        if let caPath = configuration.caPath {
            var tls = TLSConfiguration.makeClientConfiguration()
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath))
            } catch {
                throw Failure(code: "invalid_configuration", message: "\(caPath): cannot read the CA bundle: \(error)", status: 0, applied: nil, region: nil)
            }
            http.tlsConfiguration = tls
        }
        http.timeout = .init(connect: .seconds(2), read: nil)
        http.redirectConfiguration = .disallow
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
    }

    /// Closes the client's connections.
    public func shutdown() async throws {
        state.withLock { $0.shutDown = true }
        try await client.shutdown()
    }

    /// A client dropped without ``shutdown()`` (an error thrown past it, say) closes its connections in the background
    /// instead of trapping.
    deinit {
        if !state.withLock({ $0.shutDown }) { client.shutdown { _ in } }
    }

    /// The topology as last heard.
    public var topology: TopologyAnswer? { state.withLock { $0.topology } }

    /// The session token carried on every request.
    public var session: String? { state.withLock { $0.session } }

    /// Reads the topology from the first region (known or seed) that answers.
    public func refresh() async throws(Failure) {
        var problems: [String] = []
        for url in knownURLs() {
            var request = HTTPClientRequest(url: "\(url)/v1/topology")
            addCredentials(&request)
            do {
                let response = try await client.execute(request, timeout: .seconds(5))
                let body = try await response.body.collect(upTo: 4 << 20)
                guard response.status == .ok else {
                    problems.append("\(url): \(response.status.code)")
                    continue
                }
                let answer = try JSONDecoder().decode(TopologyAnswer.self, from: Data(body.readableBytesView))
                state.withLock { $0.topology = answer }
                return
            } catch {
                problems.append("\(url): \(error)")
            }
        }
        throw Failure(code: "unreachable", message: "No seed region answered GET /v1/topology: \(problems.joined(separator: "; "))", status: 0, applied: nil, region: nil)
    }

    /// Follows a region's topology stream, moving to another region when it ends, until cancelled.
    public func run() async {
        var attempt = 0
        while !Task.isCancelled {
            let urls = knownURLs()
            let url = urls[attempt % urls.count]
            attempt += 1
            do {
                var request = HTTPClientRequest(url: "\(url)/v1/topology")
                request.headers.add(name: "Accept", value: "text/event-stream")
                addCredentials(&request)
                let response = try await client.execute(request, deadline: .distantFuture)
                guard response.status == .ok else { throw Failure(code: "http_\(response.status.code)", message: "topology stream refused", status: Int(response.status.code), applied: nil, region: nil) }
                var parser = EventStreamParser()
                for try await buffer in response.body {
                    for event in try parser.consume(buffer.readableBytesView) where event.name == "topology" {
                        let answer = try JSONDecoder().decode(TopologyAnswer.self, from: Data(event.data.utf8))
                        state.withLock { $0.topology = answer }
                        attempt = 0
                    }
                }
            } catch {
                logger.debug("topology stream of \(url) ended: \(error)")
            }
            try? await Task.sleep(for: .milliseconds(min(1_000, 50 * attempt)))
        }
    }

    // MARK: - Requests

    public func get(_ keyspace: String, _ key: String, consistency: ConsistencyLevel? = nil) async throws(Failure) -> Answer {
        var headers: [(String, String)] = []
        if let consistency { headers.append(("Meridian-Consistency", consistency.rawValue)) }
        return try await read(keyspace, key, path: "/v1/kv/\(Self.escape(keyspace))/\(Self.escape(key))", headers: headers, consistency: consistency)
    }

    /// Writes a value. `idempotencyKey` names the write for its retries (default: a fresh UUID); give your own to
    /// make a retry of the whole call, from your code, safe too.
    public func put(_ keyspace: String, _ key: String, _ value: [UInt8], contentType: String = "application/octet-stream",
                    ack: AckMode? = nil, idempotencyKey: String? = nil) async throws(Failure) -> Answer {
        var headers = [("Content-Type", contentType)]
        if let ack { headers.append(("Meridian-Ack", ack.rawValue)) }
        return try await write(keyspace, key, method: .PUT, path: "/v1/kv/\(Self.escape(keyspace))/\(Self.escape(key))", body: value, headers: headers,
                               idempotencyKey: idempotencyKey)
    }

    public func delete(_ keyspace: String, _ key: String, idempotencyKey: String? = nil) async throws(Failure) -> Answer {
        try await write(keyspace, key, method: .DELETE, path: "/v1/kv/\(Self.escape(keyspace))/\(Self.escape(key))", body: nil, headers: [],
                        idempotencyKey: idempotencyKey)
    }

    /// A CRDT operation as JSON, e.g. `{"type": "pn-counter", "op": "increment", "by": 1}`.
    public func crdt(_ keyspace: String, _ key: String, operation json: String, idempotencyKey: String? = nil) async throws(Failure) -> Answer {
        try await write(keyspace, key, method: .POST, path: "/v1/crdt/\(Self.escape(keyspace))/\(Self.escape(key))", body: Array(json.utf8),
                        headers: [("Content-Type", "application/json")], idempotencyKey: idempotencyKey)
    }

    // MARK: - Routing

    /// The regions to try, from the core's planner: the writer alone, or the nearest healthy regions in order.
    func plan(_ keyspace: String, _ key: String, kind: RoutePlanner.Kind, consistency: ConsistencyLevel?) throws(Failure) -> [RegionName] {
        guard let topology = topology else {
            throw Failure(code: "unreachable", message: "The client has no topology yet: call refresh().", status: 0, applied: nil, region: nil)
        }
        let regions = topology.regions.compactMap { try? RegionName($0.name) }
        let now = ContinuousClock.now
        let breakers = state.withLock { $0.breakers }
        let routable = Set(topology.regions.filter { $0.health.routable }.compactMap { try? RegionName($0.name) })
            .filter { region in breakers[region]?.openUntil.map { $0 <= now } ?? true }
        var leaders: [KeyspaceName: RegionName] = [:]
        var policy: KeyspacePolicy?
        if let entry = topology.keyspaces.first(where: { $0.name == keyspace }), let name = try? KeyspaceName(entry.name) {
            if let leader = entry.leader.flatMap({ try? RegionName($0) }) { leaders[name] = leader }
            policy = KeyspacePolicy(name: name, topology: entry.topology, leader: entry.leader.flatMap { try? RegionName($0) },
                                    replicas: entry.replicas.compactMap { try? RegionName($0) }, ack: .async, conflict: nil, priority: nil,
                                    home: entry.home.flatMap { try? RegionName($0) }, homes: entry.homes,
                                    consistency: ConsistencyPolicy(default: entry.consistency, allowed: ConsistencyLevel.allCases),
                                    residency: entry.residency, failover: nil, cache: CachePolicy(ttlMs: 0))
        }
        var request = RoutePlanner.RouteRequest(keyspace: policy, key: try? Key(key), kind: kind, consistency: consistency)
        request.preferredRegions = configuration.preferredRegions
        let plan = RoutePlanner.plan(request, view: RoutePlanner.RouteView(regions: regions, routable: routable, leaders: leaders),
                                     config: RoutingConfig())
        if let refusal = plan.refusal {
            throw Failure(code: refusal.code.description, message: refusal.message, status: Int(refusal.code.httpStatus.code), applied: "no", region: nil)
        }
        return plan.candidates.map(\.region)
    }

    private func read(_ keyspace: String, _ key: String, path: String, headers: [(String, String)], consistency: ConsistencyLevel?) async throws(Failure) -> Answer {
        let candidates = try plan(keyspace, key, kind: .read, consistency: consistency)
        if let hedgeAfter = configuration.hedgeAfterMs, candidates.count >= 2,
           let answer = await hedged(candidates[0], candidates[1], afterMs: hedgeAfter, path: path, headers: headers) {
            return answer
        }
        var last: Failure?
        for region in candidates {
            do {
                return try await attempt(region, method: .GET, path: path, body: nil, headers: headers)
            } catch {
                last = error
                // Answers about the request itself are final; only unreachable or unavailable regions are passed.
                guard error.status == 0 || [502, 503, 504].contains(error.status) else { throw error }
            }
        }
        throw last ?? Failure(code: "unreachable", message: "No region could serve the read.", status: 0, applied: nil, region: nil)
    }

    /// Sends a read to `first`, and to `second` too when `first` has not answered within `afterMs`; the first
    /// success wins and the other is cancelled. Nil when neither succeeded (the caller then tries in order).
    private func hedged(_ first: RegionName, _ second: RegionName, afterMs: Int, path: String, headers: [(String, String)]) async -> Answer? {
        await withTaskGroup(of: Answer?.self) { group in
            group.addTask { try? await self.attempt(first, method: .GET, path: path, body: nil, headers: headers) }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(afterMs))
                guard !Task.isCancelled else { return nil }
                return try? await self.attempt(second, method: .GET, path: path, body: nil, headers: headers)
            }
            while let answer = await group.next() {
                if let answer {
                    group.cancelAll()
                    return answer
                }
            }
            return nil
        }
    }

    private func write(_ keyspace: String, _ key: String, method: HTTPMethod, path: String, body: [UInt8]?, headers: [(String, String)],
                       idempotencyKey: String?) async throws(Failure) -> Answer {
        let deadline = ContinuousClock.now + .milliseconds(max(configuration.timeoutMs, 10_000))
        var last: Failure?
        let headers = headers + [("Idempotency-Key", idempotencyKey ?? UUID().uuidString)]
        // Bounded: rounds while a leader is elected or a region is routed around.
        for round in 0..<50 {
            do throws(Failure) {
                for region in try plan(keyspace, key, kind: .write, consistency: nil) {
                    do {
                        return try await attempt(region, method: method, path: path, body: body, headers: headers)
                    } catch {
                        last = error
                        // With its idempotency key a write whose fate is open is sent again: the cluster applies it
                        // once. Answers about the request itself (4xx) are final.
                        guard Self.mayRetry(error) else { throw error }
                    }
                }
            } catch {
                last = error
                guard Self.mayRetry(error) else { throw error }
            }
            guard ContinuousClock.now < deadline else { break }
            try? await Task.sleep(for: .milliseconds(min(500, 50 * (round + 1))))
            try? await refresh()
        }
        throw last ?? Failure(code: "unreachable", message: "No region took the write.", status: 0, applied: "no", region: nil)
    }

    /// Whether an idempotent write that failed this way may be sent again: unreachable regions and 5xx answers.
    static func mayRetry(_ error: Failure) -> Bool {
        error.status == 0 || [500, 502, 503, 504].contains(error.status)
    }

    private func attempt(_ region: RegionName, method: HTTPMethod, path: String, body: [UInt8]?, headers: [(String, String)]) async throws(Failure) -> Answer {
        guard let url = topology?.regions.first(where: { $0.name == region.rawValue })?.url else {
            throw Failure(code: "unknown_region", message: "The topology names no region \(region).", status: 0, applied: "no", region: region.rawValue)
        }
        var request = HTTPClientRequest(url: url + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        addCredentials(&request)
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let response: HTTPClientResponse
        let data: ByteBuffer
        do {
            response = try await client.execute(request, timeout: .milliseconds(Int64(configuration.timeoutMs)))
            data = try await response.body.collect(upTo: 64 << 20)
        } catch {
            failed(region)
            // A connection that could not be made sent nothing.
            let text = "\(error)"
            let notSent = text.contains("NIOConnectionError") || text.contains("Connection refused") || text.contains("connectTimeout")
            throw Failure(code: "unreachable", message: "\(region) (\(url)): \(error)", status: 0, applied: notSent ? "no" : (method == .GET ? nil : "maybe"),
                          region: region.rawValue)
        }
        var fields: [String: String] = [:]
        for header in response.headers { fields[header.name.lowercased()] = header.value }
        if let session = fields["meridian-session"] { state.withLock { $0.session = session } }
        let status = Int(response.status.code)
        if status >= 500 { failed(region) } else { succeeded(region) }
        if (200..<300).contains(status) || status == 300 {
            return Answer(status: status, body: Array(buffer: data), headers: fields, region: fields["meridian-region"] ?? region.rawValue)
        }
        let error = (try? JSONSerialization.jsonObject(with: Data(data.readableBytesView)) as? [String: Any])?["error"] as? [String: Any] ?? [:]
        throw Failure(code: error["code"] as? String ?? "http_\(status)", message: error["message"] as? String ?? String(buffer: data).prefix(200).description,
                      status: status, applied: error["applied"] as? String, region: region.rawValue)
    }

    private func failed(_ region: RegionName) {
        let threshold = configuration.breakerThreshold, cooldown = configuration.breakerCooldownMs
        state.withLock { state in
            var breaker = state.breakers[region, default: Breaker()]
            breaker.failures += 1
            if breaker.failures >= threshold { breaker.openUntil = .now + .milliseconds(cooldown) }
            state.breakers[region] = breaker
        }
    }

    private func succeeded(_ region: RegionName) {
        state.withLock { $0.breakers[region] = Breaker() }
    }

    private func addCredentials(_ request: inout HTTPClientRequest) {
        if let token = configuration.token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let session = session { request.headers.add(name: "Meridian-Session", value: session) }
    }

    private func knownURLs() -> [String] {
        let known = topology?.regions.map(\.url) ?? []
        return known + configuration.seeds.filter { !known.contains($0) }
    }

    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}
