import MeridianCore
import NIOCore

/// Carries one direction of one proxied connection: bytes read from the source channel are written to the
/// destination when the link's delay (plus jitter) has passed, in order; a cut link holds them until it heals.
///
/// Event-loop confined: source, destination and every field are used only on the connection's event loop.
final class Relay: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    /// Above this many queued bytes the source stops being read (back-pressure), resumed below `lowWaterBytes`.
    static let highWaterBytes = 4 << 20
    static let lowWaterBytes = 1 << 20
    /// How often a cut link is checked for healing.
    static let partitionPollNs: Int64 = 10_000_000
    /// How often a destination that stopped accepting writes is checked again.
    static let writabilityPollNs: Int64 = 1_000_000

    let link: DirectedLink
    private let network: WANEmulator
    private var line: DelayLine
    private var queue = CircularBuffer<(bytes: ByteBuffer, releaseNs: UInt64?)>()
    private var queuedBytes = 0
    private var source: (any Channel)?
    private var destination: (any Channel)?
    private var readingPaused = false
    private var sourceClosed = false
    private var timer: Scheduled<Void>?
    private var timerDeadlineNs: UInt64?

    init(link: DirectedLink, network: WANEmulator, seed: UInt64) {
        self.link = link
        self.network = network
        self.line = DelayLine(seed: seed)
    }

    /// Connects the relay to where its bytes go; until then, bytes queue.
    func attach(destination: any Channel) {
        self.destination = destination
        pump()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        source = context.channel
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        let now = NIODeadline.now().uptimeNanoseconds
        let state = network.state(link)
        // Once a chunk is held by a cut, later chunks queue behind it so the stream keeps its order.
        let holding = state.partitioned || queue.contains { $0.releaseNs == nil }
        queue.append((bytes, holding ? nil : line.releaseTime(arrivalNs: now, link: state)))
        queuedBytes += bytes.readableBytes
        if queuedBytes > Self.highWaterBytes && !readingPaused {
            readingPaused = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        }
        pump()
    }

    func channelInactive(context: ChannelHandlerContext) {
        sourceClosed = true
        pump()
        context.fireChannelInactive()
    }

    /// The source failed (a reset, as a killed process's kernel sends when unread bytes remain). Bytes it sent
    /// before are already on the wire: they still arrive, after their delay, and then the close does.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        sourceClosed = true
        context.close(promise: nil)
        pump()
    }

    /// Writes every chunk whose time has come, then sleeps until the next one.
    private func pump() {
        guard let destination else { return }
        let now = NIODeadline.now().uptimeNanoseconds
        let state = network.state(link)
        if state.partitioned {
            // Keep polling while anything waits to cross, the close included.
            if !queue.isEmpty || sourceClosed { schedule(at: now + UInt64(Self.partitionPollNs), on: destination.eventLoop) }
            return
        }
        // The link is up: chunks held by a cut get their delay from now, as retransmissions after a heal would.
        for index in queue.indices where queue[index].releaseNs == nil {
            queue[index].releaseNs = line.releaseTime(arrivalNs: now, link: state)
        }
        var written = 0
        // A destination that cannot keep up stops the pump; the queue then fills and pauses reading the source,
        // so a slow receiver slows the sender as TCP flow control would.
        while destination.isWritable, let first = queue.first, let release = first.releaseNs, release <= now {
            queue.removeFirst()
            queuedBytes -= first.bytes.readableBytes
            written += first.bytes.readableBytes
            destination.write(first.bytes, promise: nil)
        }
        if written > 0 {
            destination.flush()
            network.count(link, bytes: written)
        }
        if readingPaused && queuedBytes < Self.lowWaterBytes, let source {
            readingPaused = false
            source.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            source.read()
        }
        if !destination.isWritable && !queue.isEmpty {
            schedule(at: now + UInt64(Self.writabilityPollNs), on: destination.eventLoop)
        } else if let next = queue.first?.releaseNs {
            schedule(at: next, on: destination.eventLoop)
        } else if sourceClosed {
            // Everything sent before the close has arrived; now the close reaches the other side.
            destination.close(promise: nil)
        }
    }

    private func schedule(at deadlineNs: UInt64, on eventLoop: any EventLoop) {
        if let current = timerDeadlineNs, current <= deadlineNs { return }
        timer?.cancel()
        timerDeadlineNs = deadlineNs
        timer = eventLoop.scheduleTask(deadline: .uptimeNanoseconds(deadlineNs)) { [self] in
            timer = nil
            timerDeadlineNs = nil
            pump()
        }
    }
}
