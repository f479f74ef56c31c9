// A listener that stops while connections it accepted wait in NIO's buffer must close them, not drop them: a
// `NIOAsyncChannel` released unclosed traps the process (apple/swift-nio#2813). A node that lost its region's lease
// stops its listeners while clients and probes still connect, and crashed that way about one stop in six.
import Foundation
@testable import MeridianNode
import NIOCore
import NIOPosix
import Testing

@Suite struct AcceptedChannelsTests {
    typealias Accepted = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    /// Binds a loopback listener whose accepted channels `accepted` holds until taken up.
    static func listen(_ accepted: AcceptedChannels) async throws -> NIOAsyncChannel<Accepted, Never> {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let wrapped = try Accepted(wrappingChannelSynchronously: channel)
                    accepted.accepted(wrapped)
                    return wrapped
                }
            }
    }

    static func connect(_ port: Int) async throws -> any Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
    }

    /// Whether the other end closed `channel` within `seconds`.
    static func closedByServer(_ channel: any Channel, seconds: Double = 10) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if !channel.isActive { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    @Test(.timeLimit(.minutes(1)))
    func connectionsNobodyTookUpAreClosedAndTheOneTakenUpKeepsWorking() async throws {
        let accepted = AcceptedChannels()
        let listener = try await Self.listen(accepted)
        let port = try #require(listener.channel.localAddress?.port)

        // The first connection is taken up and echoes; two more wait in the buffer when the listener stops.
        let (echoed, echo) = AsyncStream<Void>.makeStream()
        let (stopRequests, stop) = AsyncStream<Void>.makeStream()
        let listening = Task {
            try await accepted.closingWaiting {
                try await listener.executeThenClose { inbound in
                    var connections = inbound.makeAsyncIterator()
                    if let connection = try await connections.next() {
                        accepted.takenUp(connection.channel)
                        Task {
                            try await connection.executeThenClose { input, output in
                                for try await bytes in input {
                                    try await output.write(bytes)
                                    echo.yield()
                                }
                            }
                        }
                    }
                    for await _ in stopRequests { return }
                }
            }
        }
        let served = try await Self.connect(port)
        defer { served.close(promise: nil) }
        var replies = echoed.makeAsyncIterator()
        try await served.writeAndFlush(ByteBuffer(string: "ping"))
        #expect(await replies.next() != nil)

        let waiting = [try await Self.connect(port), try await Self.connect(port)]
        let deadline = ContinuousClock.now + .seconds(10)
        while accepted.waitingCount < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(accepted.waitingCount == 2)
        stop.yield()
        try await listening.value
        for channel in waiting {
            #expect(await Self.closedByServer(channel), "a connection nobody took up was left open")
        }
        #expect(accepted.waitingCount == 0)

        // The connection taken up is its server's to close, not the listener's.
        try await served.writeAndFlush(ByteBuffer(string: "ping"))
        #expect(await replies.next() != nil)
        #expect(served.isActive)
    }

    @Test(.timeLimit(.minutes(1)))
    func aConnectionSetUpAfterTheListenerStoppedIsClosedAtOnce() async throws {
        let accepted = AcceptedChannels()
        try await accepted.closingWaiting {}
        // A set-up that completes after the stop: held by nobody, it would trap when released.
        let listener = try await Self.listen(accepted)
        let port = try #require(listener.channel.localAddress?.port)
        let late = try await Self.connect(port)
        #expect(await Self.closedByServer(late), "a connection accepted after the stop was left open")
        #expect(accepted.waitingCount == 0)
        try await listener.channel.close()
    }
}
