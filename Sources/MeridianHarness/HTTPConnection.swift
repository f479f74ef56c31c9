import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// HTTPS to a node: the cluster's CA bundle to verify it by, and optionally a client certificate.
public struct ClientTLS: Sendable {
    let context: NIOSSLContext

    /// Loads the trust bundle (and a client certificate and key, for a client API that asks for one).
    public init(caPath: String, certificatePath: String? = nil, keyPath: String? = nil) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv13
        tls.certificateVerification = .fullVerification
        do {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath))
        } catch {
            throw ConnectionError(description: "\(caPath): cannot read the CA bundle: \(error)")
        }
        if let certificatePath, let keyPath {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
            } catch {
                throw ConnectionError(description: "\(certificatePath) or \(keyPath): cannot read the client certificate: \(error)")
            }
        }
        do {
            context = try NIOSSLContext(configuration: tls)
        } catch {
            throw ConnectionError(description: "cannot use \(caPath) for TLS: \(error)")
        }
    }
}

/// What a client presents to a node: the bearer token its requests carry, and HTTPS.
public struct ClientCredentials: Sendable {
    /// The token sent as `Authorization: Bearer ...` (nil: none).
    public var token: String?
    /// HTTPS (nil: plain HTTP).
    public var tls: ClientTLS?

    public init(token: String? = nil, tls: ClientTLS? = nil) {
        self.token = token
        self.tls = tls
    }

    /// No credentials (the WAN emulator's admin API, or a cluster without authentication).
    public static let none = ClientCredentials()

    private static let processDefault = Mutex<ClientCredentials>(fromEnvironment())

    /// `MERIDIAN_TOKEN`, and HTTPS with `MERIDIAN_CACERT` (and a client certificate from `MERIDIAN_CERT` and
    /// `MERIDIAN_KEY`); a CA bundle that cannot be read leaves plain HTTP, and the connection's error says so.
    private static func fromEnvironment() -> ClientCredentials {
        let environment = ProcessInfo.processInfo.environment
        let token = environment["MERIDIAN_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        let tls = environment["MERIDIAN_CACERT"].flatMap { ca in
            try? ClientTLS(caPath: ca, certificatePath: environment["MERIDIAN_CERT"], keyPath: environment["MERIDIAN_KEY"])
        }
        return ClientCredentials(token: token, tls: tls)
    }

    /// What every connection of this process presents unless told otherwise: `MERIDIAN_TOKEN` and
    /// `MERIDIAN_CACERT` from the environment, or what the command line set (`--token`, the cluster file's CA).
    public static var process: ClientCredentials {
        get { processDefault.withLock { $0 } }
        set { processDefault.withLock { $0 = newValue } }
    }

    var headers: [(String, String)] {
        token.map { [("Authorization", "Bearer \($0)")] } ?? []
    }
}

/// A response read in full.
public struct HTTPResult: Sendable {
    /// The status code.
    public let status: Int
    /// The headers, in received order.
    public let headers: [(String, String)]
    /// The body bytes.
    public let body: [UInt8]

    /// The first header with this name, compared case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// A failure to talk to a node at all (as opposed to an error response).
public struct ConnectionError: Error, CustomStringConvertible {
    /// What went wrong.
    public let description: String
}

/// One keep-alive HTTP/1.1 connection to a node, carrying one request at a time.
///
/// Meridian's CLI, benchmarks and live tests use this instead of async-http-client: the request and
/// response codecs are SwiftNIO's, and keeping the client this small keeps the TLS stack (BoringSSL)
/// out of the release build and the load generator's per-request cost low.
public final class HTTPConnection: @unchecked Sendable {
    // Safety: `channel` is immutable; the handler's state is touched only on the channel's event loop.
    private let channel: any Channel
    private let handler: ResponseCollector
    private let host: String
    private let responseBytesMax: Int
    private let credentials: ClientCredentials

    private init(channel: any Channel, handler: ResponseCollector, host: String, responseBytesMax: Int, credentials: ClientCredentials) {
        self.credentials = credentials
        self.channel = channel
        self.handler = handler
        self.host = host
        self.responseBytesMax = responseBytesMax
    }

    /// Connects to `host:port`.
    /// - Parameters:
    ///   - timeoutSeconds: Bounds the connect and every later request.
    ///   - responseBytesMax: The largest response body accepted.
    ///   - credentials: What every request presents (default: ``ClientCredentials/process``).
    public static func connect(host: String, port: Int, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                               timeoutSeconds: Int64 = 10, responseBytesMax: Int = 64 << 20,
                               credentials: ClientCredentials = .process) async throws -> HTTPConnection {
        let handler = ResponseCollector(timeout: .seconds(timeoutSeconds), bodyBytesMax: responseBytesMax)
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(timeoutSeconds))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls = credentials.tls {
                            // An address is verified against the certificate's IP names; a name is sent as SNI too.
                            let literal = (try? SocketAddress(ipAddress: host, port: 0)) != nil
                            try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.context, serverHostname: literal ? nil : host))
                        }
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                }
                .connect(host: host, port: port).get()
            return HTTPConnection(channel: channel, handler: handler, host: "\(host):\(port)", responseBytesMax: responseBytesMax, credentials: credentials)
        } catch {
            throw ConnectionError(description: "cannot connect to \(host):\(port): \(error)")
        }
    }

    /// Sends one request and reads its whole response.
    public func request(_ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) async throws -> HTTPResult {
        var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: path)
        head.headers.add(name: "Host", value: host)
        if !headers.contains(where: { $0.0.lowercased() == "authorization" }) {
            for (name, value) in credentials.headers { head.headers.add(name: name, value: value) }
        }
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        if let body { head.headers.replaceOrAdd(name: "Content-Length", value: String(body.count)) }
        else if method == "PUT" || method == "POST" { head.headers.replaceOrAdd(name: "Content-Length", value: "0") }
        let promise = channel.eventLoop.makePromise(of: HTTPResult.self)
        let channel = self.channel
        let handler = self.handler
        let bodyBuffer = body.map { channel.allocator.buffer(bytes: $0) }
        channel.eventLoop.execute {
            handler.expect(promise, context: channel)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let bodyBuffer { channel.write(HTTPClientRequestPart.body(.byteBuffer(bodyBuffer)), promise: nil) }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        do {
            return try await promise.futureResult.get()
        } catch let error as ConnectionError {
            throw error
        } catch {
            throw ConnectionError(description: "request to \(host) failed: \(error)")
        }
    }

    /// Closes the connection.
    public func close() async {
        try? await channel.close()
    }
}

/// Collects response parts into whole responses, answering requests in order; fails them on close or timeout.
private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    // Safety: every member is touched only on the channel's event loop.
    typealias InboundIn = HTTPClientResponsePart

    private let timeout: TimeAmount
    private let bodyBytesMax: Int
    private var waiting: [EventLoopPromise<HTTPResult>] = []
    private var head: HTTPResponseHead?
    private var body: [UInt8] = []
    private var timer: Scheduled<Void>?
    private var closed = false

    init(timeout: TimeAmount, bodyBytesMax: Int) {
        self.timeout = timeout
        self.bodyBytesMax = bodyBytesMax
    }

    func expect(_ promise: EventLoopPromise<HTTPResult>, context channel: any Channel) {
        guard !closed else {
            promise.fail(ConnectionError(description: "the connection is closed"))
            return
        }
        waiting.append(promise)
        if waiting.count == 1 { armTimer(channel) }
    }

    private func armTimer(_ channel: any Channel) {
        timer?.cancel()
        let timeout = self.timeout
        timer = channel.eventLoop.scheduleTask(in: timeout) { [weak self] in
            self?.failAll(ConnectionError(description: "no response within \(timeout.nanoseconds / 1_000_000_000) s"))
            channel.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let responseHead):
            head = responseHead
            body.removeAll(keepingCapacity: true)
        case .body(var buffer):
            if body.count + buffer.readableBytes > bodyBytesMax {
                failAll(ConnectionError(description: "response body exceeds \(bodyBytesMax) bytes"))
                context.close(promise: nil)
                return
            }
            body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard let responseHead = head, !waiting.isEmpty else { return }
            let promise = waiting.removeFirst()
            let result = HTTPResult(status: Int(responseHead.status.code), headers: responseHead.headers.map { ($0.name, $0.value) }, body: body)
            head = nil
            body = []
            timer?.cancel()
            if !waiting.isEmpty { armTimer(context.channel) }
            promise.succeed(result)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        timer?.cancel()
        failAll(ConnectionError(description: "the node closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failAll(ConnectionError(description: "connection error: \(error)"))
        context.close(promise: nil)
    }

    private func failAll(_ error: ConnectionError) {
        let promises = waiting
        waiting.removeAll()
        for promise in promises { promise.fail(error) }
    }
}
