import MeridianCore
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

extension PeerChannel {
    /// Wraps a freshly connected or accepted channel with the frame codec.
    static func wrap(_ channel: any Channel, codec: PeerFrameCodec) -> EventLoopFuture<PeerChannel> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PeerFrameDecoder(codec: codec)))
            try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(PeerFrameEncoder(codec: codec)))
            return try PeerChannel(wrappingChannelSynchronously: channel)
        }
    }
}
