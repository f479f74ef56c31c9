import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes
import Synchronization

/// The connections a listener accepted that no task has taken up yet.
///
/// NIO hands each accepted connection to the serving task through a buffer. A serving task that stops (a node that
/// lost its region's lease, a peer listener that listens again) drops what the buffer still holds, and a
/// `NIOAsyncChannel` released without being closed traps the process ("Deinited NIOAsyncWriter without calling
/// finish()", apple/swift-nio#2813). Each accepted channel is held here from its set-up until a task takes it up;
/// those nobody will take up are closed.
final class AcceptedChannels: Sendable {
    private struct State {
        var waiting: [ObjectIdentifier: @Sendable () async -> Void] = [:]
        var closed = false
    }

    private let state = Mutex(State())

    /// Holds a channel just accepted until `takenUp`. Once `closeWaiting(forGood: true)` ran, closes it instead.
    func accepted<Inbound: Sendable, Outbound: Sendable>(_ channel: NIOAsyncChannel<Inbound, Outbound>) {
        let close: @Sendable () async -> Void = { try? await channel.executeThenClose { _, _ in } }
        let late = state.withLock { state in
            if !state.closed { state.waiting[ObjectIdentifier(channel.channel)] = close }
            return state.closed
        }
        if late { Task { await close() } }
    }

    /// A task serves this channel now: it closes it.
    func takenUp(_ channel: any Channel) {
        _ = state.withLock { $0.waiting.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// How many accepted channels wait for a task.
    var waitingCount: Int { state.withLock { $0.waiting.count } }

    /// Runs a listener until it stops, then closes what it accepted and nobody took up, and what it accepts later.
    func closingWaiting(after listener: () async throws -> Void) async throws {
        do {
            try await listener()
        } catch {
            await closeWaiting(forGood: true)
            throw error
        }
        await closeWaiting(forGood: true)
    }

    /// Closes every channel accepted and not taken up; `forGood` also closes every one accepted from now on (the
    /// listener stopped, nothing will take them up).
    func closeWaiting(forGood: Bool) async {
        let waiting = state.withLock { state in
            state.closed = state.closed || forGood
            defer { state.waiting = [:] }
            return Array(state.waiting.values)
        }
        for close in waiting { await close() }
    }
}

/// An HTTP child channel whose accepted connections `AcceptedChannels` holds until the server takes them up.
struct HeldUntilTakenUp<Base: ServerChildChannel>: ServerChildChannel where Base.Value == NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart> {
    typealias Value = Base.Value
    let base: Base
    let accepted: AcceptedChannels

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        base.setup(channel: channel, logger: logger).map { [accepted] value in
            accepted.accepted(value)
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        accepted.takenUp(value.channel)
        await base.handle(value: value, logger: logger)
    }
}

extension HeldUntilTakenUp: HTTPChannelHandler where Base: HTTPChannelHandler {
    var responder: HTTPChannelHandler.Responder { base.responder }
}
