import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MeridianAPI
import MeridianCore
import MeridianHTTP
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// The front door: one URL for the whole cluster. Each request goes to the region the core's ``RoutePlanner``
/// picks from what the gateway knows of the cluster (``ClusterView``), streamed both ways, with the region's
/// answer and its headers passed back unchanged plus `Meridian-Routed-To` and `Meridian-Route-Reason`.
///
/// The data path is NIO channels (``FrontConnection``, ``UpstreamPool``): a request is routed from its head and
/// relayed over a pooled connection on the client connection's own event loop. The gateway's own routes are
/// served by a Hummingbird app on an internal loopback port, reached the same way.
///
/// Reads that cannot reach their region (a refused connection, a 503) go to the next one; a read slower than its
/// region's usual (the hedge percentile) also goes to the next region, within a budget of extra load. Writes go
/// to exactly one region and are never retried by the gateway (whether a write that may have been applied is sent
/// again is the client's decision).
public final class Gateway: Sendable {
    public let configuration: GatewayConfiguration
    let view: ClusterView
    let client: HTTPClient
    let logger: Logger
    let metrics = GatewayMetrics()
    let homes: HomeLookups
    private let hedgeBudget: Mutex<Double>
    /// `routing.location_headers`, lower-cased once.
    let locationHeaders: [String]
    /// Each region's client API, as the data path reaches it.
    let targets: [RegionName: UpstreamTarget]
    /// The port of the internal server of the gateway's own routes (0 until it listens).
    private let internalPort = Atomic<Int>(0)
    let pools: UpstreamPools
    /// Client connections open now, and the most the gateway holds (more are closed at once).
    let openConnections = Atomic<Int>(0)
    static let connectionsMax = 10_000
    /// The largest request body relayed: a value at its limit plus room for a CRDT operation's JSON.
    let bodyBytesMax: Int64

    /// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
    static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
                                        "proxy-authenticate", "proxy-authorization", "host"]
    static let routedTo = HTTPField.Name("Meridian-Routed-To")!
    static let routeReason = HTTPField.Name("Meridian-Route-Reason")!

    /// Creates the gateway and its HTTP client (closed by ``run()``).
    public init(configuration: GatewayConfiguration, logger: Logger = Logger(label: "meridian.gateway")) throws(MeridianError) {
        self.configuration = configuration
        self.logger = logger
        view = ClusterView(cluster: configuration.cluster, logger: logger)
        var clientConfiguration = HTTPClient.Configuration()
        var sslContext: NIOSSLContext?
        if let caPath = configuration.caPath {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.minimumTLSVersion = .tlsv13
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath))
                sslContext = try NIOSSLContext(configuration: tls)
            } catch {
                throw MeridianError(.invalidConfig, "\(caPath): cannot read the CA bundle: \(error)")
            }
            clientConfiguration.tlsConfiguration = tls
        }
        pools = UpstreamPools(sslContext: sslContext)
        let tls = configuration.cluster.tls?.clientAPI ?? false
        targets = Dictionary(uniqueKeysWithValues: configuration.cluster.regions.map { region in
            (region.name, UpstreamTarget(name: region.name.rawValue, host: region.client.host, port: region.client.port, tls: tls, region: region.name))
        })
        bodyBytesMax = Int64(configuration.cluster.limits.valueBytesMax + 65_536)
        clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        clientConfiguration.timeout = .init(connect: .seconds(2), read: nil)
        clientConfiguration.decompression = .disabled
        clientConfiguration.redirectConfiguration = .disallow
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        hedgeBudget = Mutex(0)
        locationHeaders = configuration.cluster.routing.locationHeaders.map { $0.lowercased() }
        homes = HomeLookups(entriesMax: configuration.cluster.routing.homeLookup?.entriesMax ?? 0,
                            ttlMs: configuration.cluster.routing.homeLookup?.ttlMs ?? 0)
    }

    /// The gateway's own routes (`/health`, `/gateway/status`, `/gateway/metrics`, `/dnsapi/...`), served on the
    /// internal port; everything else never reaches them.
    func router() -> Router<GatewayRequestContext> {
        let router = Router(context: GatewayRequestContext.self)
        router.add(middleware: AdminAccessMiddleware(gateway: self))
        router.get("/health") { _, _ in JSON.response(["status": "ok", "role": "gateway"]) }
        router.get("/gateway/status") { _, _ in JSON.response(self.status()) }
        router.get("/gateway/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: self.metrics.registry.emitToBuffer())))
        }
        addDNSRoutes(to: router)
        return router
    }

    /// Where the data path sends the gateway's own routes.
    var internalTarget: UpstreamTarget {
        UpstreamTarget(name: "gateway", host: "127.0.0.1", port: internalPort.load(ordering: .relaxed), tls: false, region: nil)
    }

    /// Serves until SIGTERM or SIGINT, following the regions' topology meanwhile.
    /// - Parameter onServerRunning: Called with the bound port once the gateway listens.
    public func run(onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let listen = configuration.listen
        let (internalListening, listening) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "meridian-gateway"),
            onServerRunning: { channel in
                listening.yield(channel.localAddress?.port ?? 0)
                listening.finish()
            },
            logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            // Returns only once cancelled: every region's stream is followed again when it ends.
            tasks.addTask { await self.view.watch(client: self.client, token: self.configuration.token) }
            tasks.addTask { try await app.runService(gracefulShutdownSignals: [.sigterm, .sigint]) }
            defer { tasks.cancelAll() }
            var ports = internalListening.makeAsyncIterator()
            guard let port = await ports.next(), port > 0 else {
                try await tasks.next()
                throw GatewayFailure("the gateway's internal server did not start")
            }
            internalPort.store(port, ordering: .relaxed)
            let front = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Outbound headers are not validated again: those passed on were parsed by NIO on the way in, and
                        // the gateway's own values hold no control characters (``FrontConnection`` strips them).
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true, withOutboundHeaderValidation: false)
                        try channel.pipeline.syncOperations.addHandler(FrontConnection(gateway: self, pool: self.pools.pool(for: channel.eventLoop)))
                    }
                }
                .bind(host: listen.host, port: listen.port).get()
            defer { front.close(promise: nil) }
            logger.info("gateway serving on \(listen) for \(configuration.cluster.regions.count) regions")
            await onServerRunning(front.localAddress?.port ?? listen.port)
            // The internal app returns on SIGTERM or SIGINT; the front door closes with it.
            try await tasks.next()
        }
        try? await client.shutdown()
    }

    /// The gateway's view, for operators: each region's verdict as the gateway combines them, its stream, ejection
    /// and latency.
    func status() -> GatewayStatus {
        let routeView = view.routeView()
        let streams = view.streams
        let ejected = Set(view.ejected())
        return GatewayStatus(
            listen: configuration.listen.description,
            regions: view.regions.map { region in
                GatewayStatus.Region(
                    name: region.rawValue, url: view.urls[region] ?? "", routable: routeView.routable.contains(region),
                    stream: streams[region]?.live == true ? "live" : "down", ejected: ejected.contains(region),
                    latencyMs: routeView.latencyMs[region], p95Ms: view.latencyPercentileMs(region, 95))
            },
            leaders: Dictionary(uniqueKeysWithValues: routeView.leaders.map { ($0.key.rawValue, $0.value.rawValue) }))
    }

    // MARK: - Planning

    /// What routing needs from a request, and the user whose home must be looked up first (not cached).
    struct DecodedRequest {
        var request: RoutePlanner.RouteRequest
        var homeLookupUser: String?
    }

    /// Decodes what routing needs from a request head: keyspace, key, kind, consistency, country, session and
    /// user (the home region when it is cached).
    func routeRequest(method: NIOHTTP1.HTTPMethod, uri: String, headers: HTTPHeaders, remoteAddress: String?) -> DecodedRequest {
        let cluster = configuration.cluster
        let split = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = split.first.map(String.init) ?? uri
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        var keyspace: KeyspacePolicy?
        var key: Key?
        // Foundation's percent decoding is a measurable share of a routed GET: only names that hold a '%' take it.
        func decoded(_ text: String) -> String { text.utf8.contains(UInt8(ascii: "%")) ? (text.removingPercentEncoding ?? text) : text }
        if parts.count >= 4, parts[1] == "v1", ["kv", "crdt", "conflicts"].contains(parts[2]) {
            keyspace = (try? KeyspaceName(decoded(String(parts[3])))).flatMap { cluster.keyspace($0) }
            if parts.count >= 5 {
                key = try? Key(decoded(parts.count == 5 ? String(parts[4]) : parts[4...].joined(separator: "/")))
            }
        }
        let kind: RoutePlanner.Kind = method == .GET || method == .HEAD ? .read : .write
        var consistencyText = headers.first(name: MeridianHeader.consistency.rawName)
        if consistencyText == nil, split.count == 2 {
            for pair in split[1].split(separator: "&") where pair.hasPrefix("consistency=") {
                consistencyText = String(pair.dropFirst("consistency=".count))
            }
        }
        let consistency = consistencyText.flatMap { ConsistencyLevel(rawValue: $0.lowercased()) }
        var country: String?
        var source: String?
        for name in locationHeaders {
            if let value = headers.first(name: name)?.uppercased(), RoutingConfig.isCountry(value), value != "*" {
                country = value
                source = "location"
                break
            }
        }
        if country == nil, let prefixes = configuration.prefixes {
            var address = remoteAddress
            if cluster.routing.trustForwardedFor, let forwarded = headers.first(name: "x-forwarded-for") {
                address = forwarded.split(separator: ",").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? address
            }
            if let address, let match = prefixes.match(address) {
                country = match.country
                source = "address"
            }
        }
        let session = headers.first(name: MeridianHeader.session.rawName).flatMap { try? SessionToken(decoding: $0, key: cluster.sessionKey) }
        var decoded = DecodedRequest(request: RoutePlanner.RouteRequest(keyspace: keyspace, key: key, kind: kind, consistency: consistency, country: country,
                                                                        countrySource: source, sessionRegion: session?.clock?.region))
        if let lookup = cluster.routing.homeLookup, let user = headers.first(name: lookup.header), !user.isEmpty {
            if let cached = homes.get(user) {
                decoded.request.userHome = cached.region
            } else {
                decoded.homeLookupUser = user
            }
        }
        return decoded
    }

    /// ``routeRequest(method:uri:headers:remoteAddress:)`` with the home looked up when it is not cached.
    func routeRequest(_ head: HTTPRequestHead, remoteAddress: String?) async -> RoutePlanner.RouteRequest {
        var decoded = routeRequest(method: head.method, uri: head.uri, headers: head.headers, remoteAddress: remoteAddress)
        if let user = decoded.homeLookupUser, let lookup = configuration.cluster.routing.homeLookup {
            decoded.request.userHome = await home(of: user, lookup: lookup, authorization: head.headers.first(name: "authorization"))
        }
        return decoded.request
    }

    /// The user's home region from the lookup keyspace (cached): the value names a region, or a country mapped
    /// by `country_regions`. Nil when the user has none or it cannot be read now.
    func home(of user: String, lookup: RoutingConfig.HomeLookup, authorization: String?) async -> RegionName? {
        if let cached = homes.get(user) { return cached.region }
        guard let key = try? Key(user), let policy = configuration.cluster.keyspace(lookup.keyspace) else { return nil }
        let plan = RoutePlanner.plan(RoutePlanner.RouteRequest(keyspace: policy, key: key, kind: .read, consistency: .eventual),
                                     view: view.routeView(), config: configuration.cluster.routing)
        guard let region = plan.candidates.first?.region, let url = view.urls[region] else { return nil }
        var request = HTTPClientRequest(url: "\(url)/v1/kv/\(lookup.keyspace)/\(key.rawValue.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? "")")
        request.headers.add(name: "Meridian-Consistency", value: "eventual")
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        guard let response = try? await client.execute(request, timeout: .seconds(2)) else { return nil }
        if response.status == .notFound {
            homes.put(user, nil)
            return nil
        }
        guard response.status == .ok, let body = try? await response.body.collect(upTo: 4096) else { return nil }
        let text = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        let found = HomeLookups.region(from: text, regions: view.regions, countries: configuration.cluster.routing.countryRegions)
        homes.put(user, found)
        return found
    }

    /// Whether a hedge may be sent now: each read earns `extra_percent_max`/100 of one, a hedge spends one.
    func earnHedge() {
        let extra = configuration.cluster.routing.hedgeExtraPercentMax / 100
        hedgeBudget.withLock { $0 = min(10, $0 + extra) }
    }

    /// Whether a hedge could be spent now (checked before arming one; ``spendHedge()`` decides).
    var hedgeAvailable: Bool { hedgeBudget.withLock { $0 >= 1 } }

    func spendHedge() -> Bool {
        hedgeBudget.withLock { budget in
            guard budget >= 1 else { return false }
            budget -= 1
            return true
        }
    }
}

/// The request context of the gateway: the client's address, for the prefix table.
public struct GatewayRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: Source) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// The answer of `GET /gateway/status`.
struct GatewayStatus: Codable, Sendable {
    struct Region: Codable, Sendable {
        let name: String
        let url: String
        let routable: Bool
        let stream: String
        let ejected: Bool
        let latencyMs: Double?
        let p95Ms: Double?

        enum CodingKeys: String, CodingKey {
            case name, url, routable, stream, ejected
            case latencyMs = "latency_ms"
            case p95Ms = "p95_ms"
        }
    }

    let listen: String
    let regions: [Region]
    let leaders: [String: String]
}

/// Users' home regions, looked up once and kept for a while. Bounded: the oldest entries go first.
final class HomeLookups: Sendable {
    struct Entry: Sendable {
        let region: RegionName?
        let expires: ContinuousClock.Instant
    }

    private let entries = Mutex<[String: Entry]>([:])
    let entriesMax: Int
    let ttlMs: Int

    init(entriesMax: Int, ttlMs: Int) {
        self.entriesMax = entriesMax
        self.ttlMs = ttlMs
    }

    func get(_ user: String) -> Entry? {
        entries.withLock { entries in
            guard let entry = entries[user], entry.expires > .now else { return nil }
            return entry
        }
    }

    func put(_ user: String, _ region: RegionName?) {
        guard entriesMax > 0, ttlMs > 0 else { return }
        let now = ContinuousClock.now
        entries.withLock { entries in
            if entries.count >= entriesMax {
                entries = entries.filter { $0.value.expires > now }
                if entries.count >= entriesMax, let oldest = entries.min(by: { $0.value.expires < $1.value.expires })?.key {
                    entries.removeValue(forKey: oldest)
                }
            }
            entries[user] = Entry(region: region, expires: now + .milliseconds(ttlMs))
        }
    }

    /// A home value: a region's name, a country code, or JSON with a `region` or `country` field.
    static func region(from text: String, regions: [RegionName], countries: [String: [RegionName]]) -> RegionName? {
        var candidate = text
        if text.hasPrefix("{"), let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] {
            candidate = (object["region"] as? String) ?? (object["country"] as? String) ?? ""
        }
        if let region = try? RegionName(candidate), regions.contains(region) { return region }
        let country = candidate.uppercased()
        guard RoutingConfig.isCountry(country), country != "*" else { return nil }
        return (countries[country] ?? countries["*"])?.first
    }
}
