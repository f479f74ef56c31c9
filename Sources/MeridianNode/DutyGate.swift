import NIOCore

/// Closes a connection at its next message, in or out, once this process no longer holds its region's duties (a
/// node among several sharing a PostgreSQL store, whose lease ran out). A holder paused past its lease may wake and
/// read a request before its lease keeper notices; it then answers nothing, on the client API or to a peer, instead
/// of acting on leadership it no longer has.
final class DutyGate<InboundIn, OutboundIn>: ChannelDuplexHandler, RemovableChannelHandler {
    typealias OutboundOut = OutboundIn
    typealias InboundOut = InboundIn

    private let holdsDuties: @Sendable () -> Bool

    init(_ holdsDuties: @escaping @Sendable () -> Bool) {
        self.holdsDuties = holdsDuties
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard holdsDuties() else {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard holdsDuties() else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            context.close(promise: nil)
            return
        }
        context.write(data, promise: promise)
    }
}
