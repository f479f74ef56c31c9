import MeridianCore
import NIOCore
import NIOPosix
import NIOSSL

/// Knocks on a region's peer port as a region would: optionally over TLS with a given certificate, says hello,
/// and reports whether the region welcomed the stream. For tests of who may join a cluster.
public enum PeerProbe {
    public enum Outcome: Sendable, Equatable {
        /// The region answered the hello with a welcome: it took the stream.
        case welcomed
        /// It closed the stream (or the handshake failed) without a welcome.
        case refused(String)
    }

    /// A client certificate to present, and the bundle to verify the region by.
    public struct Identity: Sendable {
        let context: NIOSSLContext

        public init(caPath: String, certificatePath: String, keyPath: String) throws {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.minimumTLSVersion = .tlsv13
            tls.certificateVerification = .noHostnameVerification
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath))
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificatePath).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
            context = try NIOSSLContext(configuration: tls)
        }
    }

    /// Connects to `endpoint`, says hello as `from` to `to` of `cluster`, and waits (bounded) for the answer.
    public static func knock(_ endpoint: Endpoint, identity: Identity?, cluster: String, from: RegionName, to: RegionName,
                             timeoutSeconds: Int64 = 5) async -> Outcome {
        let codec = PeerFrameCodec(valueBytesMax: 1 << 20, frameBytesMax: 16 << 20)
        // One loop for the channel and the answer, so every settle runs there and the first one wins.
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let answer = Answer(loop.makePromise(of: Outcome.self))
        do {
            let channel = try await ClientBootstrap(group: loop)
                .connectTimeout(.seconds(timeoutSeconds))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let identity {
                            try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: identity.context, serverHostname: nil))
                        }
                        try channel.pipeline.syncOperations.addHandler(FirstFrame(codec: codec, answer: answer))
                    }
                }
                .connect(host: endpoint.host, port: endpoint.port).get()
            var hello: [UInt8] = []
            codec.encode(.hello(PeerHello(cluster: cluster, from: from, to: to)), into: &hello)
            channel.writeAndFlush(channel.allocator.buffer(bytes: hello), promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(timeoutSeconds)) {
                settle(answer, .refused("no answer within \(timeoutSeconds) s"))
                channel.close(promise: nil)
            }
            let outcome = try await answer.promise.futureResult.get()
            try? await channel.close()
            return outcome
        } catch {
            loop.execute { settle(answer, .refused("\(error)")) }
            return .refused("\(error)")
        }
    }

    /// Completes the answer unless it already is (on its loop).
    static func settle(_ answer: Answer, _ outcome: Outcome) {
        guard !answer.done else { return }
        answer.done = true
        answer.promise.succeed(outcome)
    }

    /// The answer's promise and whether it is settled; touched only on its loop.
    final class Answer: @unchecked Sendable {
        let promise: EventLoopPromise<Outcome>
        var done = false
        init(_ promise: EventLoopPromise<Outcome>) { self.promise = promise }
    }

    /// Settles the answer with the first frame, or the close or error that came instead.
    private final class FirstFrame: ChannelInboundHandler, @unchecked Sendable {
        // Safety: touched only on the channel's event loop.
        typealias InboundIn = ByteBuffer
        let codec: PeerFrameCodec
        let answer: Answer
        var buffer: [UInt8] = []

        init(codec: PeerFrameCodec, answer: Answer) {
            self.codec = codec
            self.answer = answer
        }

        func settle(_ answer: Answer, _ outcome: Outcome) { PeerProbe.settle(answer, outcome) }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
            if let (frame, _) = try? codec.decodeFrame(buffer[...]) {
                if case .welcome = frame { settle(answer, .welcomed) } else { settle(answer, .refused("answered \(frame)")) }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            settle(answer, .refused("\(error)"))
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            settle(answer, .refused("closed"))
        }
    }
}
