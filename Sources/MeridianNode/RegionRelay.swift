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

    public init(name: String, listen: Endpoint, target: @escaping @Sendable () -> Endpoint?, refusal: [UInt8]?, logger: Logger) {
        self.name = name
        self.listen = listen
        self.target = target
        self.refusal = refusal
        self.logger = logger
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
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
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

    func closeAll() {
        let open = channels.withLock { state in
            state.closed = true
            return Array(state.open.values)
        }
        for channel in open { channel.close(promise: nil) }
    }
}

/// On an accepted connection: dials the serving node, then glues the two.
final class RelayAccepted: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let open: OpenRelays
    private let target: @Sendable () -> Endpoint?
    private let refusal: [UInt8]?
    private let logger: Logger
    private let name: String

    init(open: OpenRelays, target: @escaping @Sendable () -> Endpoint?, refusal: [UInt8]?, logger: Logger, name: String) {
        self.open = open
        self.target = target
        self.refusal = refusal
        self.logger = logger
        self.name = name
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        let accepted = context.channel
        guard open.admit(accepted) else {
            accepted.close(promise: nil)
            return
        }
        guard let endpoint = target() else {
            refuse(accepted)
            return
        }
        let (logger, name, refusal) = (logger, name, refusal)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        ClientBootstrap(group: accepted.eventLoop)
            .connectTimeout(.milliseconds(RegionRelay.connectTimeoutMs))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: endpoint.host, port: endpoint.port)
            .whenComplete { result in
                switch result {
                case .success(let dialled):
                    guard handler.value.open.admit(dialled) else {
                        dialled.close(promise: nil)
                        accepted.close(promise: nil)
                        return
                    }
                    RelayGlue.join(accepted, dialled, removing: handler.value)
                case .failure(let error):
                    logger.debug("could not reach the node serving the region", metadata: ["relay": "\(name)", "node": "\(endpoint)", "error": "\(error)"])
                    if refusal != nil { handler.value.refuse(accepted) } else { accepted.close(promise: nil) }
                }
            }
    }

    private func refuse(_ channel: any Channel) {
        guard let refusal else {
            channel.close(promise: nil)
            return
        }
        channel.writeAndFlush(ByteBuffer(bytes: refusal)).whenComplete { _ in channel.close(promise: nil) }
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

    /// Glues two connections of one event loop; `removing` leaves the accepted one's pipeline first.
    static func join(_ accepted: any Channel, _ dialled: any Channel, removing setup: RelayAccepted) {
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
        _ = accepted.setOption(.autoRead, value: true)
        accepted.read()
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
        partner?.context?.close(promise: nil)
        context.fireChannelInactive()
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
