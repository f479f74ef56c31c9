import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianSecurity
import MeridianStorage
import NIOCore
import Synchronization
import UnixSignals

/// Everything a region node needs to start.
public struct NodeConfiguration: Sendable {
    /// The cluster this node belongs to.
    public let cluster: ClusterConfig
    /// The region this node serves.
    public let region: RegionName
    /// Overrides the client API address from the cluster file (tests bind port 0 this way).
    public var clientAddress: Endpoint?
    /// How the node reaches its peers: through the WAN emulator (the default) or directly.
    public let peerRoute: PeerRoute
    /// Added to this host's wall clock wherever the node reads it: a skewed clock, for fault injection.
    public var clockOffsetMs: Int64
    /// This region's entry in the cluster file (its client and peer addresses).
    public let own: RegionConfig
    /// Where this node reaches each peer: through the WAN emulator's listener for the link, or directly.
    public let peerEndpoints: [RegionName: Endpoint]
    /// Starts without authentication or TLS on an address other machines can reach (protected mode off).
    public var insecure = false
    /// The region's root keys, which seal the data keys of sealed keyspaces (required when the cluster has one) and
    /// sign its audit trail (nil: no trail is kept).
    public var rootKeys: RegionKeyRing?
    /// The file the root keys came from, which a rotation rewrites (nil: they came from the environment, and
    /// cannot be rotated by the node).
    public var rootKeyFile: String?
    /// Where `POST /v1/admin/backup` writes backups (nil: backups are refused).
    public var backupDirectory: String?
    /// Whether this process still holds its region's duties, asked at every message on the client API and the peer
    /// streams (a node among several sharing a PostgreSQL store: its lease has not run out). Always, for a node alone.
    public var holdsDuties: @Sendable () -> Bool = { true }

    /// Creates a configuration; the region must be one of the cluster's.
    public init(cluster: ClusterConfig, region: RegionName, clientAddress: Endpoint? = nil,
                peerRoute: PeerRoute = .wan, clockOffsetMs: Int64 = 0) throws(MeridianError) {
        guard let own = cluster.region(region) else {
            throw MeridianError(.unknownRegion, "Region '\(region)' is not in the cluster file; its regions are \(cluster.regions.map(\.name.rawValue).joined(separator: ", ")).",
                                context: ["region": region.rawValue])
        }
        var peerEndpoints: [RegionName: Endpoint] = [:]
        for peer in cluster.regions where peer.name != region {
            guard let endpoint = peerRoute == .wan ? cluster.wanListenEndpoint(from: region, to: peer.name) : peer.peer else {
                throw MeridianError(.invalidConfig, "The WAN emulator has no listener for the link \(region)→\(peer.name); check wan.base_port.",
                                    context: ["region": peer.name.rawValue])
            }
            peerEndpoints[peer.name] = endpoint
        }
        self.own = own
        self.peerEndpoints = peerEndpoints
        self.cluster = cluster
        self.region = region
        self.clientAddress = clientAddress
        self.peerRoute = peerRoute
        self.clockOffsetMs = clockOffsetMs
    }
}

/// One region's server: the v1 HTTP API over the region's store.
///
/// The node is a shell: it validates and decodes requests, asks the core (`Admission`) what may be done,
/// carries it out against the store, and renders the answer.
public final class RegionNode: Sendable {
    /// The node's configuration.
    public let configuration: NodeConfiguration
    /// The region's durable store (whichever engine the factory opened).
    public let store: any RegionStorage
    /// The node's metrics.
    public let metrics: NodeMetrics
    /// Streams to and from the other regions.
    let replicator: Replicator
    /// Who leads each single-leader keyspace, and this region's part in electing them.
    let leadership: Leadership
    let logger: Logger
    let startedAt: ContinuousClock.Instant
    /// Authenticates the session tokens this region issues and accepts.
    let sessionKey: SessionKey
    /// Verifies client tokens, when the cluster file turns authentication on (`auth`).
    let verifier: TokenVerifier?
    /// TLS on peer streams and the client API, when the cluster file configures it (`tls`).
    let tls: NodeTLS?

    /// The wall clock in ms since the Unix epoch, plus the configured offset; the one place the node reads it.
    let wallClockMs: @Sendable () -> UInt64
    /// This region's clock against its peers'; beyond the maximum offset the region fences itself.
    let clock: ClockWatch
    /// The cluster's health verdicts as this region works them out, and the topology's open streams.
    let topology: TopologyFeed
    /// The region's audit trail (nil when the node has no root key to sign its checkpoints with).
    let audit: AuditLog?
    /// Seals the values of sealed keyspaces (nil: the cluster has none); a rotation gives it new root keys.
    let sealer: ValueSealer?
    /// Whether a key rotation is running (one at a time).
    let rotation = Mutex(false)
    /// Client connections accepted and not yet taken up by the server: closed once it stops.
    let acceptedClients = AcceptedChannels()
    /// A restored region's catch-up with its peers (empty: not restored, or caught up).
    let restore: RestoreState
    /// The erased keys' ids beside the root key file, outside every backup (nil: the root key came from the
    /// environment, or nothing is sealed).
    let erasureLedger: ErasureLedger?

    /// Opens the region's store with `openStore` and prepares the API.
    /// - Throws: `MeridianError` when the store cannot be opened.
    public init(configuration: NodeConfiguration, store openStore: StoreFactory, logger: Logger = Logger(label: "meridian.node")) async throws(MeridianError) {
        var logger = logger
        logger[metadataKey: "region"] = "\(configuration.region)"
        if configuration.insecure {
            do throws(MeridianError) {
                try ProtectedMode.check(configuration.cluster, region: configuration.region, clientAddress: configuration.clientAddress)
            } catch {
                logger.critical("--insecure: \(configuration.region) serves anyone who can reach it, in plaintext or without tokens. \(error.message)")
            }
        } else {
            try ProtectedMode.check(configuration.cluster, region: configuration.region, clientAddress: configuration.clientAddress)
        }
        let metrics = NodeMetrics()
        let offsetMs = Double(configuration.clockOffsetMs)
        let wallClockMs: @Sendable () -> UInt64 = { UInt64(max(0, Date().timeIntervalSince1970 * 1000 + offsetMs)) }
        self.wallClockMs = wallClockMs
        let sealed = ValueSealer.sealedKeyspaces(configuration.cluster)
        var sealer: ValueSealer?
        if !sealed.isEmpty {
            guard let rootKeys = configuration.rootKeys else {
                throw MeridianError(.invalidConfig, "Keyspaces \(sealed.keys.map(\.rawValue).sorted().joined(separator: ", ")) are sealed, and region \(configuration.region) has no root key: start the node with --root-key-file, or set MERIDIAN_ROOT_KEY.")
            }
            sealer = ValueSealer(region: configuration.region, keys: rootKeys, sealed: sealed)
        }
        // Checked before the store opens, so a node that cannot start leaves no store open.
        let tls = try configuration.cluster.tls.map { config throws(MeridianError) in
            try NodeTLS(config: config, region: configuration.region, cluster: configuration.cluster.name)
        }
        self.tls = tls
        // This region's entries ship while their commit's fsync runs, once the replicator below is connected to it.
        let shipping = CommitShipping()
        let store = try await openStore(StoreContext(
            region: configuration.region, limits: configuration.cluster.limits,
            conflictRules: Dictionary(uniqueKeysWithValues: configuration.cluster.keyspaces.map { ($0.name, ConflictRule(policy: $0)) }),
            physicalClockMs: wallClockMs, observer: metrics, sealer: sealer, shipping: shipping))
        self.store = store
        let restoredLogEnd: UInt64?
        let leadership: Leadership
        do throws(MeridianError) {
            restoredLogEnd = try await store.restorePending()
            leadership = try await Leadership(region: configuration.region, cluster: configuration.cluster, store: store,
                                              wallClockMs: wallClockMs, logger: logger, restoring: restoredLogEnd != nil)
        } catch {
            store.close()
            throw error
        }
        let restore = RestoreState(restoredLogEnd.map { RestoreCatchUp(region: configuration.region, cluster: configuration.cluster, backupLogEnd: $0) })
        self.restore = restore
        self.leadership = leadership
        let clock = ClockWatch(region: configuration.region, cluster: configuration.cluster, injectedOffsetMs: configuration.clockOffsetMs,
                               logger: logger, onChange: { leadership.clockFenced($0) })
        self.clock = clock
        let verifier: TokenVerifier? = if let auth = configuration.cluster.auth {
            await TokenVerifier.make(auth: auth, cluster: configuration.cluster.name, nowMs: wallClockMs)
        } else {
            nil
        }
        self.verifier = verifier
        let opened = store
        let audit = configuration.rootKeys.map {
            AuditLog(region: configuration.region, store: opened, rootKey: $0.audit, wallClockMs: wallClockMs, held: restoredLogEnd != nil)
        }
        self.sealer = sealer
        self.erasureLedger = sealer == nil ? nil : configuration.rootKeyFile.map { ErasureLedger(rootKeyFile: $0) }
        self.audit = audit
        self.replicator = Replicator(own: configuration.own, cluster: configuration.cluster, store: store, peerEndpoints: configuration.peerEndpoints,
                                     wallClockMs: wallClockMs, logger: logger, fence: leadership, clock: clock,
                                     onApplied: { entries in verifier?.revocations.apply(entries) }, tls: tls, metrics: metrics, audit: audit,
                                     restore: restore, holdsDuties: configuration.holdsDuties)
        let replicator = self.replicator
        shipping.connect(CommitShipping.Handlers(written: { replicator.logWritten(to: $0) }, durable: { replicator.logGrew(to: $0) },
                                                 failed: { replicator.commitFailed(logEndsAt: $0) }))
        if configuration.clockOffsetMs != 0 {
            logger.warning("this node's clock is offset by \(configuration.clockOffsetMs) ms (--clock-offset-ms), for fault injection")
        }
        self.configuration = configuration
        self.metrics = metrics
        let limits = configuration.cluster.limits
        topology = TopologyFeed(region: configuration.region, regions: configuration.cluster.regions.map(\.name),
                                readmitProbes: configuration.cluster.routing.readmitProbes, streamsMax: limits.topologyStreamsMax,
                                keepaliveProbes: max(1, 1_000 / limits.heartbeatIntervalMs))
        self.logger = logger
        self.startedAt = ContinuousClock.now
        self.sessionKey = configuration.cluster.sessionKey
        if !sessionKey.isSecret {
            logger.warning("the cluster file sets no session_secret: session tokens are checked for corruption but a client could forge one; set the same session_secret in every region's cluster file")
        }
    }

    var region: RegionName { configuration.region }
    var limits: Limits { configuration.cluster.limits }

    @Sendable func sendElection(_ peer: RegionName, _ frame: PeerFrame) {
        replicator.send(to: peer, frame)
    }

    /// The replication streams' view of each peer, for the region machine's hand-overs and failback.
    @Sendable func peerLinks() -> [RegionName: RegionMachine.PeerLink] {
        replicator.links.mapValues { link in
            let snapshot = link.snapshot
            return RegionMachine.PeerLink(up: snapshot.health == .up, acknowledged: snapshot.acknowledged)
        }
    }

    /// What this region can do right now, given which peers' streams are up.
    var admission: Admission {
        Admission(region: region, reachable: replicator.reachable(), clusterRegions: Set(configuration.cluster.regions.map(\.name)))
    }

    /// Builds the router with every route of the v1 API.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        let index = RouteIndex()
        router.add(middleware: APIMiddleware(node: self, routes: index))
        router.get("/health") { _, _ in JSON.response(["status": "ok", "region": self.region.rawValue]) }
        // Readiness: the store answers a read (a PostgreSQL store's database may be gone while the node runs).
        router.get("/ready") { _, _ in
            _ = try await self.store.restorePending()
            return JSON.response(["status": "ready", "region": self.region.rawValue])
        }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: self.metrics.registry.emitToBuffer())))
        }
        router.get("/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(bytes: OpenAPIDocument.yaml)))
        }
        router.get("/v1/status") { _, _ in try await self.status() }
        router.get("/v1/keyspaces") { _, _ in self.keyspaces() }
        router.get("/v1/topology") { request, _ in try self.topologyRoute(request) }
        router.get("/v1/kv/:keyspace") { request, context in try await self.list(request, context) }
        router.get("/v1/kv/:keyspace/**") { request, context in try await self.get(request, context) }
        router.put("/v1/kv/:keyspace/**") { request, context in try await self.put(request, context) }
        router.delete("/v1/kv/:keyspace/**") { request, context in try await self.delete(request, context) }
        router.get("/v1/crdt/:keyspace/**") { request, context in try await self.crdtGet(request, context) }
        router.post("/v1/crdt/:keyspace/**") { request, context in try await self.crdtPost(request, context) }
        router.get("/v1/conflicts/:keyspace") { request, context in try await self.conflicts(request, context) }
        router.post("/v1/admin/repair") { request, context in try await self.repairNow(request, context) }
        router.get("/v1/admin/merkle/:keyspace") { request, context in try await self.merkleRoot(request, context) }
        router.get("/v1/failovers") { request, context in try await self.failovers(request, context) }
        router.post("/v1/admin/failover") { request, context in try await self.failover(request, context) }
        router.get("/v1/divergence") { request, context in try await self.divergence(request, context) }
        router.post("/v1/admin/divergence/:id/reapply") { request, context in try await self.reapply(request, context) }
        router.post("/v1/admin/tokens/revoke") { request, context in try await self.revokeToken(request, context) }
        router.post("/v1/admin/erase/:keyspace") { request, context in try await self.erase(request, context) }
        router.get("/v1/audit") { request, context in try await self.auditRoute(request, context) }
        router.post("/v1/admin/keys/rotate") { request, context in try await self.rotateKeys(request, context) }
        router.post("/v1/admin/backup") { request, context in try await self.backupRoute(request, context) }
        index.set(router.routes.map { ($0.method, $0.path.description) })
        return router
    }

    /// Serves the API and replicates until SIGTERM or SIGINT, then drains in-flight requests and closes the store.
    /// - Parameter onServerRunning: Called with the bound port once the server listens.
    public func run(onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let address = configuration.clientAddress ?? configuration.own.client
        let responder = router().buildResponder()
        let points = PointRouteHandler.Service(responder: responder, logger: logger, serverName: "meridian/\(region)",
                                               bodyBytesMax: limits.valueBytesMax, dates: HTTPDates())
        let app = Application(
            responder: responder,
            server: apiServer(points: points),
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "meridian/\(region)"),
            onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? address.port) },
            logger: logger)
        defer { store.close() }
        await loadRevocations()
        await recordConfiguration()
        try await syncErasureLedger()
        if verifier == nil {
            logger.warning("the cluster file has no auth section: the client API serves anyone who can reach it")
        }
        logger.info("region \(region) serving on \(address)")
        leadership.start(Leadership.Carriers(send: sendElection, revert: bringBack, peers: peerLinks, catchUp: { keyspace, leader, epoch, termsRead throws(MeridianError) in
            try await self.catchUp(keyspace, from: leader, epoch: epoch, termsRead: termsRead)
        }))
        // Trapped before the API answers: SIGHUP's default action would end the node.
        let hangups = tls == nil ? nil : await UnixSignalsSequence(trapping: .sighup)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                try await self.replicator.run(forward: { await self.serveForwarded($0) }, forwardRead: { await self.serveForwardedRead($0, from: $1) },
                                              election: { keyspace, message, start, peer in
                                                  self.leadership.received(message, start: start, keyspace: keyspace, from: peer)
                                              },
                                              handOver: { keyspace, target in await self.serveHandOver(keyspace, to: target) },
                                              repair: { keyspace, request, peer in await self.serveRepair(keyspace, request, from: peer) })
            }
            tasks.addTask {
                await self.leadership.run()
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            }
            tasks.addTask {
                try await self.acceptedClients.closingWaiting { try await app.runService(gracefulShutdownSignals: [.sigterm, .sigint]) }
            }
            if let hangups {
                // Returns only once cancelled (its timer ends with the task).
                tasks.addTask { await self.watchCertificates(hangups) }
            }
            // Returns only once cancelled (its timer ends with the task).
            tasks.addTask { await self.runHealthProbes() }
            if audit != nil {
                tasks.addTask { await self.runAuditTrail() }
            }

            tasks.addTask {
                // A restored region catches up first (returns at once otherwise); its rounds run here meanwhile.
                await self.runRestoreCatchUp()
                await self.runAntiEntropy()
                // Disabled (interval 0): wait for the others without ending the node.
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            }
            // Either ending ends the node: a stopped API stops replication, and a replication port that cannot
            // be bound stops the API (the error says why).
            defer { tasks.cancelAll() }
            try await tasks.next()
        }
        logger.info("region \(region) stopped")
    }

    // MARK: - Resolving path parameters

    func policy(_ context: BasicRequestContext) throws(MeridianError) -> KeyspacePolicy {
        // A region restored from a backup serves no keyspace until it caught up with its peers.
        try restore.admitRequest()
        let raw = context.parameters.get("keyspace") ?? ""
        let name = try KeyspaceName(Self.percentDecoded(raw) ?? raw)
        guard let policy = configuration.cluster.keyspace(name) else {
            throw MeridianError(.unknownKeyspace, "Keyspace '\(name)' does not exist; GET /v1/keyspaces lists the keyspaces of this cluster.",
                                context: ["keyspace": name.rawValue])
        }
        return policy
    }

    /// The key is everything after `/v1/kv/{keyspace}/`, percent-decoded, so keys may contain `/`.
    func key(_ request: Request) throws(MeridianError) -> Key {
        let path = request.uri.path
        let segments = path.split(separator: "/", maxSplits: 3, omittingEmptySubsequences: false)
        // "", "v1", "kv", "{keyspace}/{key...}" → drop the keyspace segment.
        guard segments.count == 4, let slash = segments[3].firstIndex(of: "/") else {
            throw MeridianError(.invalidKey, "The request names no key: use /v1/kv/{keyspace}/{key}.")
        }
        let encoded = String(segments[3][segments[3].index(after: slash)...])
        guard let decoded = Self.percentDecoded(encoded) else {
            throw MeridianError(.invalidKey, "The key is not valid percent-encoded UTF-8.")
        }
        return try Key(decoded)
    }

    static func percentDecoded(_ text: String) -> String? {
        text.contains("%") ? text.removingPercentEncoding : text
    }
}

/// The router's routes, to tell a path served with other methods (405, with `Allow`) from an unknown one (404).
final class RouteIndex: Sendable {
    private let routes = Mutex<[(method: HTTPRequest.Method, segments: [Substring])]>([])

    func set(_ routes: [(HTTPRequest.Method, String)]) {
        self.routes.withLock { $0 = routes.map { ($0.0, $0.1.split(separator: "/")) } }
    }

    /// The methods served on `path`, sorted.
    func methods(_ path: String) -> [String] {
        let segments = path.split(separator: "/")
        return routes.withLock { routes in
            Set(routes.filter { Self.matches($0.segments, segments) }.map(\.method.rawValue)).sorted()
        }
    }

    /// A parameter (`{name}` as the router describes it) matches one segment, `**` the rest (one segment or
    /// more), anything else itself.
    static func matches(_ pattern: [Substring], _ segments: [Substring]) -> Bool {
        for (index, part) in pattern.enumerated() {
            if part == "**" { return segments.count > index }
            guard index < segments.count, part.hasPrefix("{") || part.hasPrefix(":") || part == segments[index] else { return false }
        }
        return pattern.count == segments.count
    }
}

/// Records metrics, stamps `Meridian-Region`, and turns every error into the JSON error format.
struct APIMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let node: RegionNode
    let routes: RouteIndex

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        var response: Response
        do {
            response = try await node.authorized(request) { try await next(request, context) }
        } catch let raw as MeridianError {
            // A restricted keyspace's key name is shown only as its hash, wherever the error was made.
            let error = node.configuration.cluster.hidingKey(in: raw, path: request.uri.path)
            response = error.response(change: request.method.changes)
            switch error.code {
            case .unauthenticated:
                // RFC 6750: a missing token gets the bare challenge, a bad one says why.
                response.headers[.wwwAuthenticate] = error.context["reason"] == "missing"
                    ? "Bearer realm=\"meridian\"" : "Bearer realm=\"meridian\", error=\"invalid_token\""
            case .forbidden:
                response.headers[.wwwAuthenticate] = "Bearer realm=\"meridian\", error=\"insufficient_scope\""
            default:
                break
            }
        } catch let error as HTTPError {
            // Hummingbird answers an unserved method on a known path as not found: say which methods it has.
            let allowed = error.status == .notFound ? routes.methods(request.uri.path) : []
            if !allowed.isEmpty {
                response = MeridianError(.methodNotAllowed, "\(request.method) is not served on \(node.configuration.cluster.shownPath(request.uri.path)); it answers \(allowed.joined(separator: ", ")).",
                                         context: ["allow": allowed.joined(separator: ", ")]).response(change: request.method.changes)
                response.headers[.allow] = allowed.joined(separator: ", ")
            } else {
                response = Self.translate(error, request, cluster: node.configuration.cluster).response(change: request.method.changes)
            }
        } catch {
            // The route, not the path: a restricted keyspace's key names stay out of the logs.
            node.logger.error("request failed", metadata: ["route": "\(context.endpointPath ?? "unmatched")", "error": "\(error)"])
            response = MeridianError(.internalError, "The node failed to answer; the error is logged. Retry, and report it if it persists.")
                .response(change: request.method.changes)
        }
        response.headers[MeridianHeader.region] = node.region.rawValue
        // Errors are never cached; nor is anything about a restricted keyspace, here or where it is relayed.
        if response.status.code >= 400 && response.headers[.cacheControl] == nil || node.configuration.cluster.pathNamesRestrictedKeyspace(request.uri.path) {
            response.headers[.cacheControl] = "no-store"
        }
        let route = context.endpointPath ?? "unmatched"
        node.metrics.recordRequest(route: route == "NotFound" ? "unmatched" : route, method: request.method.rawValue,
                                   status: Int(response.status.code), duration: ContinuousClock.now - started)
        return response
    }

    static func translate(_ error: HTTPError, _ request: Request, cluster: ClusterConfig) -> MeridianError {
        let path = cluster.shownPath(request.uri.path)
        return switch error.status {
        case .notFound:
            MeridianError(.routeNotFound, "No route \(request.method) \(path); GET /openapi.yaml describes the API.",
                          context: ["path": path])
        case .methodNotAllowed:
            MeridianError(.methodNotAllowed, "\(request.method) is not supported on \(path).")
        case .contentTooLarge:
            MeridianError(.valueTooLarge, "The request body is too large.")
        default:
            MeridianError(.invalidRequest, "The request could not be handled: \(error.body ?? error.status.reasonPhrase).")
        }
    }
}
