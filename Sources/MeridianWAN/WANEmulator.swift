import Logging
import MeridianCore
import NIOCore
import NIOPosix
import Synchronization

/// The emulated WAN: a TCP proxy per directed link between regions that delays each direction's bytes by
/// the link's one-way latency, keeps their order, adds jitter, and holds them while the link is cut.
///
/// It proxies any TCP protocol, so the same WAN can sit between Meridian regions or replicas of another
/// database. Region A reaches region B through the proxy of link A→B, whose target is B's peer address.
public final class WANEmulator: Sendable {
    /// One directed link's proxy.
    public struct Proxy: Sendable, Hashable {
        /// The link it emulates.
        public let link: DirectedLink
        /// Where the proxy listens (region `link.from` connects here).
        public let listen: Endpoint
        /// Where it forwards (region `link.to`'s peer address).
        public let target: Endpoint
    }

    /// A listener for one destination region in source-address mode (see `init(cluster:gateways:sources:)`).
    public struct Gateway: Sendable, Hashable {
        /// The region connections arriving here go to.
        public let region: RegionName
        /// Where the gateway listens.
        public let listen: Endpoint
        /// Where it forwards (the region's peer address).
        public let target: Endpoint
    }

    /// Counters of one directed link.
    public struct LinkCounters: Sendable, Hashable {
        /// Connections accepted by the link's proxy.
        public var connections = 0
        /// Bytes delivered in this direction.
        public var bytes = 0
    }

    /// Every proxy, in link order (none in source-address mode).
    public let proxies: [Proxy]
    /// Every gateway, in region order (only in source-address mode).
    public let gateways: [Gateway]
    /// The region each source address belongs to (source-address mode).
    private let sources: [String: RegionName]
    private let table: Mutex<WANTable>
    private let counters: Mutex<[DirectedLink: LinkCounters]>
    private let listeners = Mutex<[any Channel]>([])
    private let connectionSeed = Atomic<UInt64>(0)
    private let seed: UInt64
    private let group: any EventLoopGroup
    private let logger: Logger

    /// Prepares the emulator for a cluster.
    /// - Parameters:
    ///   - latencyScale: Overrides the file's `wan.latency_scale`.
    ///   - listenOverrides: Proxy listen addresses by link, replacing `wan.base_port + index` (tests use free ports).
    ///   - targetOverrides: Forwarding targets by destination region, replacing the regions' peer addresses.
    ///   - seed: Seeds every connection's jitter.
    public init(cluster: ClusterConfig, latencyScale: Double? = nil, listenOverrides: [DirectedLink: Endpoint] = [:],
                targetOverrides: [RegionName: Endpoint] = [:], seed: UInt64 = 1,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger = Logger(label: "meridian.wan")) {
        let table = WANTable(cluster: cluster, latencyScale: latencyScale)
        proxies = table.links.map { link in
            Proxy(link: link,
                  listen: listenOverrides[link] ?? cluster.wanListenEndpoint(from: link.from, to: link.to)!,
                  target: targetOverrides[link.to] ?? cluster.region(link.to)!.peer)
        }
        gateways = []
        sources = [:]
        self.table = Mutex(table)
        self.counters = Mutex(Dictionary(uniqueKeysWithValues: table.links.map { ($0, LinkCounters()) }))
        self.seed = seed
        self.group = group
        self.logger = logger
    }

    /// Prepares the emulator in source-address mode, for systems whose members all dial one advertised address
    /// per member (etcd's peer URLs), so the dialled port cannot tell the link: one gateway per region forwards
    /// to that region's peer address, and the link is found from the address the connection comes from (each
    /// region's processes then need an address of their own, such as a network namespace). A connection from an
    /// address not in `sources`, or from the gateway's own region, is refused.
    /// - Throws: `invalidConfig` when a gateway or source names a region the cluster lacks.
    public init(cluster: ClusterConfig, latencyScale: Double? = nil, gateways: [RegionName: Endpoint], sources: [String: RegionName],
                seed: UInt64 = 1, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                logger: Logger = Logger(label: "meridian.wan")) throws(MeridianError) {
        for name in Array(gateways.keys) + Array(sources.values) where cluster.region(name) == nil {
            throw MeridianError(.invalidConfig, "The WAN gateway names region '\(name)', which the cluster file lacks. Use one of: \(cluster.regions.map(\.name.rawValue).joined(separator: ", ")).")
        }
        let table = WANTable(cluster: cluster, latencyScale: latencyScale)
        proxies = []
        self.gateways = gateways.keys.sorted().map { Gateway(region: $0, listen: gateways[$0]!, target: cluster.region($0)!.peer) }
        self.sources = sources
        self.table = Mutex(table)
        self.counters = Mutex(Dictionary(uniqueKeysWithValues: table.links.map { ($0, LinkCounters()) }))
        self.seed = seed
        self.group = group
        self.logger = logger
    }

    /// The proxy region `from` uses to reach region `to`.
    public func proxy(from: RegionName, to: RegionName) -> Proxy? {
        proxies.first { $0.link.from == from && $0.link.to == to }
    }

    /// What a link does now.
    func state(_ link: DirectedLink) -> WANTable.LinkState {
        table.withLock { $0.state(link) }
    }

    func count(_ link: DirectedLink, bytes: Int) {
        counters.withLock { $0[link, default: LinkCounters()].bytes += bytes }
    }

    /// Reads or changes the network's state (partitions, latencies) atomically.
    public func withTable<T>(_ body: (inout WANTable) throws(MeridianError) -> T) throws(MeridianError) -> T {
        try table.withLock { (table: inout WANTable) throws(MeridianError) -> T in try body(&table) }
    }

    /// A snapshot of the network's state and per-link counters.
    public func snapshot() -> (table: WANTable, counters: [DirectedLink: LinkCounters]) {
        (table.withLock { $0 }, counters.withLock { $0 })
    }

    /// Binds every proxy.
    /// - Throws: When a listen address is taken; proxies already bound are closed again.
    public func start() async throws {
        for proxy in proxies {
            try await listen(proxy.listen, what: "proxy for \(proxy.link)") { [self] inbound in
                accept(inbound, link: proxy.link, target: proxy.target)
            }
        }
        for gateway in gateways {
            try await listen(gateway.listen, what: "gateway to \(gateway.region)") { [self] inbound in
                guard let address = inbound.remoteAddress?.ipAddress, let from = sources[address], from != gateway.region else {
                    logger.warning("WAN gateway to \(gateway.region) refused a connection from \(inbound.remoteAddress?.description ?? "?"): not a known source address of another region")
                    return inbound.close()
                }
                return accept(inbound, link: DirectedLink(from: from, to: gateway.region), target: gateway.target)
            }
        }
        logger.info("WAN emulator proxying \(proxies.count) links and \(gateways.count) gateways")
    }

    private func listen(_ endpoint: Endpoint, what: String, _ accept: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) async throws {
        do {
            let channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer(accept)
                .bind(host: endpoint.host, port: endpoint.port).get()
            listeners.withLock { $0.append(channel) }
        } catch {
            await stop()
            throw MeridianError(.invalidConfig, "The WAN \(what) cannot listen on \(endpoint): \(error). Choose another wan.base_port (or gateway address).",
                                context: ["listen": endpoint.description])
        }
    }

    /// Closes every proxy listener (established connections end when either side closes).
    public func stop() async {
        let channels = listeners.withLock { channels in
            defer { channels.removeAll() }
            return channels
        }
        for channel in channels { try? await channel.close() }
    }

    private func accept(_ inbound: any Channel, link: DirectedLink, target: Endpoint) -> EventLoopFuture<Void> {
        counters.withLock { $0[link, default: LinkCounters()].connections += 1 }
        let connection = connectionSeed.add(1, ordering: .relaxed).newValue
        let reverse = DirectedLink(from: link.to, to: link.from)
        let upstream = Relay(link: link, network: self, seed: seed &* 31 &+ connection &* 2)
        let downstream = Relay(link: reverse, network: self, seed: seed &* 31 &+ connection &* 2 &+ 1)
        do {
            try inbound.pipeline.syncOperations.addHandler(upstream)
        } catch {
            return inbound.eventLoop.makeFailedFuture(error)
        }
        ClientBootstrap(group: inbound.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { outbound in
                outbound.eventLoop.makeCompletedFuture { try outbound.pipeline.syncOperations.addHandler(downstream) }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .success(let outbound):
                    // Bytes the client sent meanwhile waited in the upstream relay (bounded by its high-water mark).
                    upstream.attach(destination: outbound)
                    downstream.attach(destination: inbound)
                case .failure:
                    // The target is down: refuse the way a closed port does.
                    inbound.close(promise: nil)
                }
            }
        return inbound.eventLoop.makeSucceededVoidFuture()
    }
}
