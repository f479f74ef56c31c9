import MeridianCore
import MeridianSecurity
import NIOCore

/// Turns stream bytes into ``PeerFrame``s, refusing a frame longer than the codec's limit before buffering it.
struct PeerFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = PeerFrame
    let codec: PeerFrameCodec

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let prefix = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        let length = try codec.announcedLength(prefix)
        guard buffer.readableBytes >= 4 + length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let body = buffer.readBytes(length: length)!
        context.fireChannelRead(wrapInboundOut(try codec.decodeBody(body[...])))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial frame at the end of a stream is dropped: the stream resumes from the last ack.
        .needMoreData
    }
}

/// Writes ``PeerFrame``s as bytes.
struct PeerFrameEncoder: MessageToByteEncoder {
    typealias OutboundIn = PeerFrame
    let codec: PeerFrameCodec

    func encode(data: PeerFrame, out: inout ByteBuffer) throws {
        var bytes: [UInt8] = []
        codec.encode(data, into: &bytes)
        out.writeBytes(bytes)
    }
}

typealias PeerChannel = NIOAsyncChannel<PeerFrame, PeerFrame>

/// A peer stream, and (with TLS) the region its other end's certificate proves.
struct PeerConnection: Sendable {
    let channel: PeerChannel
    /// nil without TLS: then only the hello names the other end.
    let identity: EventLoopFuture<RegionName>?

    /// The region the certificate proves, once the handshake is done (nil without TLS).
    func certifiedRegion() async throws -> RegionName? {
        try await identity?.get()
    }
}

extension PeerChannel {
    /// Wraps a freshly connected or accepted channel: TLS first when configured (as the server of an accepted
    /// stream, or the client of a dial to `dialing`), then the frame codec.
    /// Every frame in or out first asks `holdsDuties`: a process that lost its region's duties closes the stream.
    static func wrap(_ channel: any Channel, codec: PeerFrameCodec, tls: NodeTLS?, dialing: RegionName?,
                     holdsDuties: @escaping @Sendable () -> Bool = { true }) -> EventLoopFuture<PeerConnection> {
        channel.eventLoop.makeCompletedFuture {
            let identity = try tls?.securePeerChannel(channel, dialing: dialing)
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PeerFrameDecoder(codec: codec)))
            try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(PeerFrameEncoder(codec: codec)))
            try channel.pipeline.syncOperations.addHandler(DutyGate<PeerFrame, PeerFrame>(holdsDuties))
            return PeerConnection(channel: try PeerChannel(wrappingChannelSynchronously: channel), identity: identity)
        }
    }
}
