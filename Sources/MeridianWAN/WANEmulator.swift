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

    /// Counters of one directed link.
    public struct LinkCounters: Sendable, Hashable {
        /// Connections accepted by the link's proxy.
        public var connections = 0
        /// Bytes delivered in this direction.
        public var bytes = 0
    }

    /// Every proxy, in link order.
    public let proxies: [Proxy]
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
            do {
                let channel = try await ServerBootstrap(group: group)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelInitializer { [self] inbound in
                        accept(inbound, proxy: proxy)
                    }
                    .bind(host: proxy.listen.host, port: proxy.listen.port).get()
                listeners.withLock { $0.append(channel) }
            } catch {
                await stop()
                throw MeridianError(.invalidConfig, "The WAN proxy for \(proxy.link) cannot listen on \(proxy.listen): \(error). Choose another wan.base_port.",
                                    context: ["listen": proxy.listen.description])
            }
        }
        logger.info("WAN emulator proxying \(proxies.count) links")
    }

    /// Closes every proxy listener (established connections end when either side closes).
    public func stop() async {
        let channels = listeners.withLock { channels in
            defer { channels.removeAll() }
            return channels
        }
        for channel in channels { try? await channel.close() }
    }

    private func accept(_ inbound: any Channel, proxy: Proxy) -> EventLoopFuture<Void> {
        counters.withLock { $0[proxy.link, default: LinkCounters()].connections += 1 }
        let connection = connectionSeed.add(1, ordering: .relaxed).newValue
        let reverse = DirectedLink(from: proxy.link.to, to: proxy.link.from)
        let upstream = Relay(link: proxy.link, network: self, seed: seed &* 31 &+ connection &* 2)
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
            .connect(host: proxy.target.host, port: proxy.target.port)
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
