// A standby's relay carries a connection byte for byte to the node holding the region's lease: what the client sends
// before the relay reached the holder arrives too, a half-close passes on both ways, and the holder's last bytes are
// not lost when it closes. With no holder to reach, a client is answered (after its request) and the connection
// closed; a relay never carries connections back to itself.
import Foundation
import MeridianCore
@testable import MeridianNode
import NIOCore
import NIOPosix
import Synchronization
import Testing

@Suite struct RegionRelayTests {
    /// Loops of the tests' own: megabytes through a debug build's pipelines would starve the process's shared loops,
    /// which every other test's clients use.
    static let loops = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// A loopback server that reads until the client half-closes, then answers everything it read and closes.
    /// (Bytes are kept in a ByteBuffer: a debug build handles an array of them one by one.)
    final class EchoAtEnd: ChannelInboundHandler, @unchecked Sendable {
        // Safety: touched only on its channel's event loop.
        typealias InboundIn = ByteBuffer
        var received = ByteBuffer()

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            received.writeBuffer(&bytes)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            guard case ChannelEvent.inputClosed = event else { return }
            let channel = context.channel
            context.writeAndFlush(NIOAny(received)).whenComplete { _ in channel.close(promise: nil) }
        }
    }

    static func echoServer() async throws -> any Channel {
        try await ServerBootstrap(group: loops)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoAtEnd()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    /// Starts a relay on a free port; returns it with its port and the task running it.
    static func relay(to target: @escaping @Sendable () -> Endpoint?, refusal: [UInt8]?) async throws -> (port: Int, task: Task<Void, any Error>) {
        let (ports, port) = AsyncStream<Int>.makeStream()
        let relay = RegionRelay(name: "client", listen: Endpoint(host: "127.0.0.1", port: 0), target: target, refusal: refusal, logger: .init(label: "relay-test"), group: loops)
        let task = Task { try await relay.run(onListening: { port.yield($0) }) }
        var iterator = ports.makeAsyncIterator()
        return (try #require(await iterator.next()), task)
    }

    /// Sends its bytes and half-closes as soon as the connection is up, on the event loop: a client task waiting for
    /// the cooperative pool (busy in a full test run) would otherwise send late, past the relay's wait for a request.
    final class SendOnActive: ChannelInboundHandler, @unchecked Sendable {
        // Safety: touched only on its channel's event loop.
        typealias InboundIn = ByteBuffer
        let bytes: [UInt8]

        init(_ bytes: [UInt8]) { self.bytes = bytes }

        func channelActive(context: ChannelHandlerContext) {
            context.fireChannelActive()
            context.write(NIOAny(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
            context.flush()
            context.close(mode: .output, promise: nil)
        }
    }

    /// Connects, sends `bytes`, half-closes, and returns everything received until the other end closed (reading
    /// from `readAfterMs` on).
    static func exchange(_ port: Int, _ bytes: [UInt8], readAfterMs: Int = 0) async throws -> [UInt8] {
        let channel = try await ClientBootstrap(group: loops)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SendOnActive(bytes))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, _ in
            try await Task.sleep(for: .milliseconds(readAfterMs))
            var received = ByteBuffer()
            for try await var chunk in inbound { received.writeBuffer(&chunk) }
            return Array(received.readableBytesView)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func bytesHalfClosesAndTheHoldersLastBytesPassThrough() async throws {
        let holder = try await Self.echoServer()
        let target = Endpoint(host: "127.0.0.1", port: try #require(holder.localAddress?.port))
        let (port, task) = try await Self.relay(to: { target }, refusal: nil)
        // Sent at once (before the relay reached the holder) and big enough to need several reads and writes.
        // A pattern whose period (65,521 bytes, a prime) no buffer size divides: a byte lost or moved shows.
        let pattern = (0..<65_521).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
        let payload = Array(pattern.prefix(300_000 % pattern.count)) + pattern + pattern + pattern + pattern
        #expect(try await Self.exchange(port, payload) == payload)
        // A client slow to read: the holder has answered and closed while the relay still holds some of its answer.
        let large = Array([[UInt8]](repeating: pattern, count: 40).joined())
        let received = try await Self.exchange(port, large, readAfterMs: 500)
        #expect(received.count == large.count && received == large, "\(received.count) of \(large.count) bytes")
        task.cancel()
        try? await task.value
        // A relay slow to start dialling: the client's bytes and its half-close come in before the holder is reached.
        let (slowPort, slow) = try await Self.relay(to: {
            usleep(300_000)
            return target
        }, refusal: nil)
        #expect(try await Self.exchange(slowPort, Array("short request".utf8)) == Array("short request".utf8))
        slow.cancel()
        try? await slow.value
        try await holder.close()
    }

    @Test(.timeLimit(.minutes(1)))
    func withNoHolderToReachAClientIsAnsweredAfterItsRequest() async throws {
        let refusal = RegionRelay.unavailableHTTPAnswer(region: RegionName(validated: "us-east"))
        let answer = String(decoding: refusal, as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 503 ") && answer.contains("\"code\":\"region_unavailable\"") && answer.contains("connection: close"))
        // Nobody holds the lease.
        let (port, task) = try await Self.relay(to: { nil }, refusal: refusal)
        #expect(try await Self.exchange(port, Array("GET /v1/kv/a/b HTTP/1.1\r\nhost: x\r\n\r\n".utf8)) == refusal)
        task.cancel()
        try? await task.value
        // The holder named is gone (its port closed).
        let gone = try await Self.echoServer()
        let goneTarget = Endpoint(host: "127.0.0.1", port: try #require(gone.localAddress?.port))
        try await gone.close()
        let (secondPort, second) = try await Self.relay(to: { goneTarget }, refusal: refusal)
        #expect(try await Self.exchange(secondPort, Array("GET /ready HTTP/1.1\r\n\r\n".utf8)) == refusal)
        second.cancel()
        try? await second.value
    }

    @Test func aRelayNeverCarriesConnectionsBackToItself() {
        let own = Endpoint(host: "10.0.0.5", port: 7300)
        let other = Endpoint(host: "10.0.0.6", port: 7300)
        let wildcard = Endpoint(host: "0.0.0.0", port: 7300)
        #expect(RegionRelay.target(other, listen: wildcard, own: own) == other)
        #expect(RegionRelay.target(nil, listen: wildcard, own: own) == nil)
        // The lease row still names this address (a restarted process), and the relay listens on its port.
        #expect(RegionRelay.target(own, listen: wildcard, own: own) == nil)
        // Nodes on one machine advertise the region's address and relay on ports of their own: no loop.
        #expect(RegionRelay.target(own, listen: Endpoint(host: "127.0.0.1", port: 17300), own: own) == own)
    }
}
