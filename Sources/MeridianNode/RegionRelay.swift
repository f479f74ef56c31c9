import Logging
import MeridianCore
import MeridianHTTP
import NIOCore
import NIOPosix
import Synchronization

/// Carries TCP connections, byte for byte, to the node that serves the region: what a standby of a region on
/// PostgreSQL runs on its client and peer addresses, so every node of the region answers (one hop more) and a load
/// balancer may send to any of them. TLS passes through untouched, so the serving node's certificate is the one a
/// client or peer checks.
///
/// A connection is relayed to the address `target` gives when it is accepted, and ends when either end closes it
/// (so connections relayed to a node that stopped end with it; clients reconnect through the relay to the next one).
/// With no node to relay to, the connection is answered `refusal` (when set) and closed.
public struct RegionRelay: Sendable {
    /// Connections relayed at once at most; one more is closed as soon as it is accepted.
    public static let connectionsMax = 4_096
    /// How long to try to reach the serving node before closing the connection.
    static let connectTimeoutMs: Int64 = 2_000

    /// What the relay carries ("client" or "peer"), for the log.
    public let name: String
    public let listen: Endpoint
    public let target: @Sendable () -> Endpoint?
    /// Sent, then the connection closed, when there is no node to relay to (nil: closed at once).
    public let refusal: [UInt8]?
    public let logger: Logger
    /// Where the relay's connections run (the process's shared loops unless given).
    let group: any EventLoopGroup

    public init(name: String, listen: Endpoint, target: @escaping @Sendable () -> Endpoint?, refusal: [UInt8]?, logger: Logger,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.group = group
        self.name = name
        self.listen = listen
        self.target = target
        self.refusal = refusal
        self.logger = logger
    }

    /// Where a relay listening on `listen` carries connections: to the holder's address, unless that is this node's
    /// own and the relay listens on its port (the lease row still naming this node's previous process, restarted on
    /// the same address, or this node about to serve): that would carry each connection back to the relay itself.
    public static func target(_ holder: Endpoint?, listen: Endpoint, own: Endpoint) -> Endpoint? {
        guard let holder else { return nil }
        return holder == own && listen.port == own.port ? nil : holder
    }

    /// An HTTP/1.1 `503 region_unavailable` answer (sent before the request is read: nothing was applied).
    public static func unavailableHTTPAnswer(region: RegionName) -> [UInt8] {
        let rendered = MeridianError(.regionUnavailable, "No node of region \(region) serves it right now (its lease is between holders); retry in a moment.",
                                     context: ["region": region.rawValue]).rendered(change: true)
        var head = "HTTP/1.1 \(rendered.status.code) \(rendered.status.reasonPhrase)\r\n"
        for field in rendered.headers { head += "\(field.name): \(field.value)\r\n" }
        head += "content-length: \(rendered.body.readableBytes)\r\nconnection: close\r\n\r\n"
        return Array(head.utf8) + Array(rendered.body.readableBytesView)
    }

    /// Listens and relays until the calling task is cancelled, then closes the listener and every relayed connection.
    /// - Throws: When the address cannot be bound.
    public func run(onListening: @Sendable (Int) -> Void = { _ in }) async throws {
        let open = OpenRelays()
        let (target, refusal, logger, name) = (target, refusal, logger, name)
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RelayAccepted(open: open, target: target, refusal: refusal, logger: logger, name: name))
                }
            }
            .bind(host: listen.host, port: listen.port).get()
        onListening(server.localAddress?.port ?? listen.port)
        logger.info("relaying \(name) connections to the node serving the region", metadata: ["listen": "\(listen)"])
        await withTaskCancellationHandler {
            try? await server.closeFuture.get()
        } onCancel: {
            server.close(promise: nil)
        }
        open.closeAll()
    }
}

/// The relayed connections open now, both ends each.
final class OpenRelays: Sendable {
    private let channels = Mutex<(open: [ObjectIdentifier: any Channel], closed: Bool)>(([:], false))
    private let lastRefusal = Mutex<String?>(nil)

    /// Counts a connection in; false when the relay is full or stopped.
    func admit(_ channel: any Channel) -> Bool {
        let admitted = channels.withLock { state in
            guard !state.closed, state.open.count < RegionRelay.connectionsMax * 2 else { return false }
            state.open[ObjectIdentifier(channel)] = channel
            return true
        }
        if admitted { channel.closeFuture.whenComplete { [weak self] _ in self?.remove(channel) } }
        return admitted
    }

    private func remove(_ channel: any Channel) {
        _ = channels.withLock { $0.open.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Whether a refusal's reason differs from the last one logged (a takeover refuses every connection for seconds).
    func shouldLog(_ reason: String) -> Bool {
        lastRefusal.withLock { last in
            defer { last = reason }
            return last != reason
        }
    }

    func closeAll() {
        let open = channels.withLock { state in
            state.closed = true
            return Array(state.open.values)
        }
        for channel in open { channel.close(promise: nil) }
    }
}

/// On an accepted connection: dials the serving node, then glues the two. What the client sends meanwhile (and its
/// close) is kept and passed on once they are glued.
final class RelayAccepted: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    /// How long a refused client has to send its request before the connection is closed without an answer.
    static let refusalWaitMs: Int64 = 2_000

    private let open: OpenRelays
    private let target: @Sendable () -> Endpoint?
    private let refusal: [UInt8]?
    private let logger: Logger
    private let name: String
    private var context: ChannelHandlerContext?
    /// Read before the two are glued (with reading off, NIO still reads when the client closes).
    private var pending: [ByteBuffer] = []
    private var inputClosed = false
    /// Answering with `refusal` once the client's request arrives.
    private var refusing = false
    private var answered = false

    init(open: OpenRelays, target: @escaping @Sendable () -> Endpoint?, refusal: [UInt8]?, logger: Logger, name: String) {
        self.open = open
        self.target = target
        self.refusal = refusal
        self.logger = logger
        self.name = name
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pending.append(unwrapInboundIn(data))
        if refusing { answer() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            inputClosed = true
            if refusing { answer() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        let accepted = context.channel
        guard open.admit(accepted) else {
            accepted.close(promise: nil)
            return
        }
        guard let endpoint = target() else {
            refuse(because: "no node of the region holds its lease")
            return
        }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        ClientBootstrap(group: accepted.eventLoop)
            .connectTimeout(.milliseconds(RegionRelay.connectTimeoutMs))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: endpoint.host, port: endpoint.port)
            .whenComplete { result in
                let handler = handler.value
                switch result {
                case .success(let dialled):
                    guard accepted.isActive, handler.open.admit(dialled) else {
                        dialled.close(promise: nil)
                        accepted.close(promise: nil)
                        return
                    }
                    RelayGlue.join(accepted, dialled, removing: handler, replaying: handler.pending, inputClosed: handler.inputClosed)
                case .failure(let error):
                    handler.refuse(because: "cannot reach the node holding the region's lease at \(endpoint): \(error)")
                }
            }
    }

    /// Answers `refusal` once the client's request arrives (answering before would make the kernel reset the
    /// connection when it closes with the request unread), or closes the connection.
    private func refuse(because reason: String) {
        guard let context else { return }
        if open.shouldLog(reason) {
            logger.notice("relaying no \(name) connection: \(reason)", metadata: ["relay": "\(name)"])
        }
        guard refusal != nil else {
            context.close(promise: nil)
            return
        }
        refusing = true
        if !pending.isEmpty || inputClosed { return answer() }
        let channel = context.channel
        context.eventLoop.scheduleTask(in: .milliseconds(Self.refusalWaitMs)) { channel.close(promise: nil) }
        _ = channel.setOption(.autoRead, value: true)
    }

    private func answer() {
        guard !answered, let refusal, let context else { return }
        answered = true
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer(bytes: refusal)), promise: nil)
        context.close(mode: .output, promise: nil)
        // Its request read (HTTP/1.1 requests to a region come whole in one segment or a few): close for good shortly.
        context.eventLoop.scheduleTask(in: .milliseconds(200)) { channel.close(promise: nil) }
    }
}

/// One end of a relayed connection: what it reads is written to the other end, reading pauses while the other end
/// cannot take more, and a close or half-close passes on.
final class RelayGlue: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: RelayGlue?
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    /// Glues two connections of one event loop; `removing` leaves the accepted one's pipeline first, and what it read
    /// meanwhile (`replaying`, and its close) goes on to the dialled one.
    static func join(_ accepted: any Channel, _ dialled: any Channel, removing setup: RelayAccepted, replaying: [ByteBuffer], inputClosed: Bool) {
        accepted.eventLoop.assertInEventLoop()
        let (first, second) = (RelayGlue(), RelayGlue())
        first.partner = second
        second.partner = first
        do {
            try accepted.pipeline.syncOperations.addHandler(first)
            try dialled.pipeline.syncOperations.addHandler(second)
            accepted.pipeline.syncOperations.removeHandler(setup, promise: nil)
        } catch {
            accepted.close(promise: nil)
            dialled.close(promise: nil)
            return
        }
        for bytes in replaying { dialled.write(bytes, promise: nil) }
        dialled.flush()
        if inputClosed {
            dialled.close(mode: .output, promise: nil)
        } else {
            _ = accepted.setOption(.autoRead, value: true)
            accepted.read()
        }
        dialled.read()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.context?.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner?.closeAfterWrites()
        context.fireChannelInactive()
    }

    /// Closes once what was written to it went out (a close alone would drop the writes still queued).
    private func closeAfterWrites() {
        guard let context else { return }
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(ByteBuffer()), promise: promise)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { _ in bound.value.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            partner?.context?.close(mode: .output, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    /// Reads only while the partner can take what is read.
    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }

    private func resumeReading() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }
}
