import MeridianCore
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// Where the gateway sends requests: a region's client API, or its own routes' server on loopback.
struct UpstreamTarget: Hashable, Sendable {
    let name: String
    let host: String
    let port: Int
    let tls: Bool
    /// The region behind it (nil: the gateway's own routes).
    let region: RegionName?
}

/// What a front connection hears from the upstream connection it holds, on their shared event loop.
protocol UpstreamDelegate: AnyObject {
    func upstream(_ connection: UpstreamConnection, received part: HTTPClientResponsePart)
    func upstreamClosed(_ connection: UpstreamConnection, error: (any Error)?)
    func upstreamWritabilityChanged(_ connection: UpstreamConnection)
}

/// One HTTP/1.1 connection to an upstream, carrying one request at a time. It goes back to its pool only after a
/// complete response that keeps the connection alive; any error closes it.
final class UpstreamConnection: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    let target: UpstreamTarget
    private(set) var channel: (any Channel)?
    weak var delegate: (any UpstreamDelegate)?
    /// Completed once the connection can carry a request (after the TLS handshake when there is one).
    private var ready: EventLoopPromise<Void>?
    private var failure: (any Error)?
    private(set) var closed = false
    /// It carried a request before (a pooled connection the region may have closed meanwhile).
    var reused = false
    var idleSince = NIODeadline.now()

    init(target: UpstreamTarget, ready: EventLoopPromise<Void>) {
        self.target = target
        self.ready = ready
    }

    func handlerAdded(context: ChannelHandlerContext) {
        channel = context.channel
        if context.channel.isActive && !target.tls { markReady() }
    }

    func channelActive(context: ChannelHandlerContext) {
        if !target.tls { markReady() }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent { markReady() }
        context.fireUserInboundEventTriggered(event)
    }

    private func markReady() {
        ready?.succeed(())
        ready = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        delegate?.upstream(self, received: unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failure = failure ?? error
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        ready?.fail(failure ?? ChannelError.ioOnClosedChannel)
        ready = nil
        let delegate = self.delegate
        self.delegate = nil
        delegate?.upstreamClosed(self, error: failure)
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(self)
        context.fireChannelWritabilityChanged()
    }

    var isWritable: Bool { channel?.isWritable ?? false }

    func write(_ part: HTTPClientRequestPart) {
        channel?.write(part, promise: nil)
    }

    func flush() {
        channel?.flush()
    }

    /// Reads were paused (the client reads slower than the region answers).
    private var paused = false

    func setReading(_ reading: Bool) {
        guard let channel, !closed, paused == reading else { return }
        paused = !reading
        channel.setOption(ChannelOptions.autoRead, value: reading).whenFailure { _ in }
        if reading { channel.read() }
    }

    func close() {
        delegate = nil
        guard !closed else { return }
        channel?.close(promise: nil)
    }
}

/// Raised when the gateway holds as many connections to an upstream as it may: nothing was sent.
struct UpstreamLimitReached: Error, CustomStringConvertible {
    let target: String
    let limit: Int
    var description: String { "the gateway holds its limit of \(limit) connections to \(target) on this thread" }
}

/// The upstream connections of one event loop: idle keep-alive connections per target, bounded, and a bound on
/// the connections open to each target. Used only on its event loop.
final class UpstreamPool {
    /// Idle connections kept per target.
    static let idleMax = 64
    /// Connections open per target (in use or idle).
    static let openMax = 512
    /// An idle connection older than this is closed rather than reused (a region may close it first).
    static let idleTimeout = TimeAmount.seconds(20)
    static let connectTimeout = TimeAmount.seconds(2)

    let eventLoop: any EventLoop
    private let sslContext: NIOSSLContext?
    private var idle: [UpstreamTarget: [UpstreamConnection]] = [:]
    private var open: [UpstreamTarget: Int] = [:]

    init(eventLoop: any EventLoop, sslContext: NIOSSLContext?) {
        self.eventLoop = eventLoop
        self.sslContext = sslContext
    }

    /// Calls `done` on this loop with a connection to `target` ready for a request: an idle one (at once), else a
    /// new one.
    func acquire(_ target: UpstreamTarget, _ done: @escaping (Result<UpstreamConnection, any Error>) -> Void) {
        let now = NIODeadline.now()
        while let connection = idle[target]?.popLast() {
            if !connection.closed && connection.idleSince + Self.idleTimeout > now {
                connection.reused = true
                return done(.success(connection))
            }
            connection.close()
        }
        guard open[target, default: 0] < Self.openMax else {
            return done(.failure(UpstreamLimitReached(target: target.name, limit: Self.openMax)))
        }
        open[target, default: 0] += 1
        let ready = eventLoop.makePromise(of: Void.self)
        let sslContext = target.tls ? self.sslContext : nil
        // An IP address is checked against the certificate's IP names (no SNI); a host name is sent and checked.
        let serverName: String? = (try? SocketAddress(ipAddress: target.host, port: 0)) == nil ? target.host : nil
        let handler = NIOLoopBound(UpstreamConnection(target: target, ready: ready), eventLoop: eventLoop)
        let connected = ClientBootstrap(group: eventLoop)
            .connectTimeout(Self.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(handler.value)
                }
            }
            .connect(host: target.host, port: target.port)
        let pool = NIOLoopBound(self, eventLoop: eventLoop)
        connected.whenComplete { result in
            switch result {
            case .success(let channel):
                channel.closeFuture.whenComplete { _ in pool.value.forget(handler.value) }
            case .failure(let error):
                pool.value.open[target, default: 1] -= 1
                ready.fail(error)
            }
        }
        ready.futureResult.assumeIsolated().whenComplete { result in done(result.map { handler.value }) }
    }

    /// Takes back a connection whose response completed and that stays alive; closes it when the pool is full.
    func release(_ connection: UpstreamConnection) {
        connection.delegate = nil
        guard !connection.closed else { return }
        guard idle[connection.target, default: []].count < Self.idleMax else {
            connection.close()
            return
        }
        connection.idleSince = .now()
        connection.setReading(true)
        idle[connection.target, default: []].append(connection)
    }

    private func forget(_ connection: UpstreamConnection) {
        open[connection.target, default: 1] -= 1
        idle[connection.target]?.removeAll { $0 === connection }
    }
}

/// One ``UpstreamPool`` per event loop.
final class UpstreamPools: Sendable {
    private let pools = Mutex<[ObjectIdentifier: NIOLoopBound<UpstreamPool>]>([:])
    private let sslContext: NIOSSLContext?

    init(sslContext: NIOSSLContext?) {
        self.sslContext = sslContext
    }

    /// The pool of `eventLoop`; call on that loop.
    func pool(for eventLoop: any EventLoop) -> UpstreamPool {
        eventLoop.preconditionInEventLoop()
        let bound = pools.withLock { pools -> NIOLoopBound<UpstreamPool> in
            if let pool = pools[ObjectIdentifier(eventLoop)] { return pool }
            let pool = NIOLoopBound(UpstreamPool(eventLoop: eventLoop, sslContext: sslContext), eventLoop: eventLoop)
            pools[ObjectIdentifier(eventLoop)] = pool
            return pool
        }
        return bound.value
    }
}
