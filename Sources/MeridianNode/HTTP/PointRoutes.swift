import DequeModule
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes
import Synchronization

/// Serves the point routes (one key's value or CRDT: ``serves(_:)``) on the connection's event loop,
/// without Hummingbird's per-connection async bridge; every other request continues down the pipeline to Hummingbird.
///
/// A point request runs through the same router and middleware as any other (authentication, the route, its errors,
/// metrics), called directly with the request's body already collected, and its response is written to the channel
/// from here. Requests of one connection are answered in the order they arrived (HTTP/1.1 pipelining): a request
/// waits while an earlier one is served here or by Hummingbird, and the connection stops reading once
/// ``pipelinedBytesMax`` bytes of requests wait.
final class PointRouteHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// What answers a point request: the router's responder, and the names the response carries.
    struct Service: Sendable {
        let responder: RouterResponder<BasicRequestContext>
        let logger: Logger
        let serverName: String
        /// The largest body a point request may carry; a larger one is cut here, and the route refuses it.
        let bodyBytesMax: Int
        let dates: HTTPDates
    }

    /// The most bytes of received requests waiting to be served on one connection before it stops reading.
    static let pipelinedBytesMax = 1 << 20

    private let service: Service
    /// Received parts not yet served, in order, and what they cost (bodies by their bytes, heads by their fields).
    private var waiting: Deque<Waiting> = []
    private var waitingBytes = 0

    /// A received part, what it counts toward ``pipelinedBytesMax``, and (a head) whether this handler serves it.
    private struct Waiting {
        let part: HTTPRequestPart
        let cost: Int
        let point: Bool
    }
    private var state: State = .idle
    /// The point request being answered was answered on its declared length: the rest of its body is dropped.
    private var droppingBody = false
    /// Requests passed on to Hummingbird whose response has not ended.
    private var passedUnanswered = 0
    /// The request being passed on asked to close the connection once answered.
    private var closeAfterPassed = false
    /// Whether later requests are taken: not after a request passed on with `Connection: close`, nor after a
    /// decoding error (HTTP/1.1 processes nothing after either).
    private var takingRequests = true
    /// A decoding error, handed to Hummingbird (which answers 400 and closes) once the point request ahead of it
    /// is answered.
    private var heldError: (any Error)?
    /// A graceful shutdown's quiesce and the client's half-close, held while requests received before them are
    /// still to be answered here: Hummingbird, below, would close the connection on either.
    private var heldEvents: [Any] = []
    /// A read asked for while too much waits.
    private var readHeld = false
    /// `drain` is running.
    private var draining = false
    /// Parts were passed on since the last read-complete.
    private var passedSinceReadComplete = false

    private enum State {
        case idle
        /// Collecting a point request's body (`cut`: it grew past the limit, the rest is dropped).
        case collecting(HTTPRequest, ByteBuffer?, cut: Bool)
        /// A point request is being answered.
        case serving
        /// A request's parts go on to Hummingbird until its end.
        case passing
    }

    init(service: Service) {
        self.service = service
    }

    /// Whether this handler serves the request: a point route, by method and path (`GET`, `PUT`, `DELETE` of
    /// `/v1/kv/{keyspace}/{key}`, `GET` and `POST` of `/v1/crdt/{keyspace}/{key}`).
    static func serves(_ head: HTTPRequest) -> Bool {
        guard let target = head.path?.utf8 else { return false }
        let rest: Substring.UTF8View
        switch head.method {
        case .get where target.starts(with: "/v1/kv/".utf8), .put where target.starts(with: "/v1/kv/".utf8),
             .delete where target.starts(with: "/v1/kv/".utf8):
            rest = target.dropFirst(7)
        case .get where target.starts(with: "/v1/crdt/".utf8), .post where target.starts(with: "/v1/crdt/".utf8):
            rest = target.dropFirst(9)
        default:
            return false
        }
        // {keyspace}/{key}: a slash after a keyspace, before any query (a listing has none).
        let path = rest.prefix { $0 != UInt8(ascii: "?") }
        guard let slash = path.firstIndex(of: UInt8(ascii: "/")) else { return false }
        return slash != path.startIndex
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard takingRequests else { return }
        let part = unwrapInboundIn(data)
        let point = if case .head(let head) = part { Self.serves(head) } else { false }
        let entry = Waiting(part: part, cost: Self.cost(part), point: point)
        waitingBytes += entry.cost
        waiting.append(entry)
        drain(context: context)
    }

    /// What a waiting part counts toward ``pipelinedBytesMax``: a body its bytes, a head its fields (and something
    /// for the part itself, so a flood of bare heads is bounded too).
    private static func cost(_ part: HTTPRequestPart) -> Int {
        switch part {
        case .head(let head):
            64 + (head.path?.utf8.count ?? 0) + head.headerFields.reduce(0) { $0 + $1.name.rawName.utf8.count + $1.value.utf8.count + 4 }
        case .body(let buffer):
            64 + buffer.readableBytes
        case .end:
            64
        }
    }

    func read(context: ChannelHandlerContext) {
        if waitingBytes > Self.pipelinedBytesMax {
            readHeld = true
        } else {
            context.read()
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Hummingbird's responses pass here on their way out; once the last one ends, waiting requests go on.
        let ended: Bool
        if case .end = unwrapOutboundIn(data) { ended = true } else { ended = false }
        context.write(data, promise: promise)
        if ended {
            passedUnanswered = max(0, passedUnanswered - 1)
            if passedUnanswered == 0 { drain(context: context) }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        let held = event is ChannelShouldQuiesceEvent || (event as? ChannelEvent) == .inputClosed
        guard held, busy else { return context.fireUserInboundEventTriggered(event) }
        heldEvents.append(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Nothing after a decoding error is taken; Hummingbird answers it once the answers before it are out.
        takingRequests = false
        heldError = heldError ?? error
        drain(context: context)
    }

    /// Requests not yet started when the connection goes are dropped: nobody would read their answers.
    func channelInactive(context: ChannelHandlerContext) {
        waiting.removeAll()
        waitingBytes = 0
        takingRequests = false
        context.fireChannelInactive()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        passedSinceReadComplete = false
        context.fireChannelReadComplete()
    }

    /// Whether a request received here is still to be answered here or to be passed on.
    private var busy: Bool {
        if case .idle = state, waiting.isEmpty, !droppingBody { return false }
        if case .passing = state, waiting.isEmpty { return false }
        return true
    }

    /// Serves or passes on what waits, in order, until a request must wait for an earlier one's answer. Each part
    /// leaves `waiting` before it is acted on, and a call made while the loop runs returns at once, so the loop never
    /// runs twice over the same parts. Parts passed on are followed by a read-complete, which Hummingbird's async
    /// channel waits for before it hands them over (parts released by an answer, outside a read, would otherwise sit
    /// there). Held events and errors go on once nothing received before them is left here.
    private func drain(context: ChannelHandlerContext) {
        guard !draining else { return }
        draining = true
        defer {
            draining = false
            if passedSinceReadComplete {
                passedSinceReadComplete = false
                context.fireChannelReadComplete()
            }
            if heldError != nil, waiting.isEmpty, case .collecting = state {
                // A request the error cut short: it is not answered.
                state = .idle
            }
            if let error = heldError, !busy {
                heldError = nil
                // Hummingbird answers it (400) and ends that answer: counted, so the count stays in step.
                passedUnanswered += 1
                context.fireErrorCaught(error)
            }
            if !busy, !heldEvents.isEmpty {
                let events = heldEvents
                heldEvents = []
                for event in events { context.fireUserInboundEventTriggered(event) }
            }
        }
        while let first = waiting.first {
            let part = first.part
            if droppingBody {
                // The rest of a body whose request was answered on its declared length.
                take(context: context)
                if case .end = part { droppingBody = false }
                continue
            }
            switch (state, part) {
            case (.serving, _):
                return
            case (.idle, .head) where first.point && passedUnanswered > 0:
                // Hummingbird answers earlier requests first.
                return
            default:
                break
            }
            take(context: context)
            switch (state, part) {
            case (.idle, .head(let head)):
                if first.point {
                    if let declared = head.headerFields[.contentLength].flatMap({ Int($0) }), declared > service.bodyBytesMax {
                        // The route refuses it on its declared length: answered now, its body dropped as it comes.
                        state = .serving
                        droppingBody = true
                        serve(head, body: ByteBuffer(), context: context)
                    } else {
                        state = .collecting(head, nil, cut: false)
                    }
                } else {
                    passedUnanswered += 1
                    state = .passing
                    closeAfterPassed = head.headerFields[.connection]?.lowercased() == "close"
                    pass(part, context: context)
                }
            case (.collecting(let head, var body, var cut), .body(var buffer)):
                state = .idle
                if !cut {
                    // One byte over the limit is kept, so the route's own check refuses the value; the rest is dropped.
                    let room = service.bodyBytesMax + 1 - (body?.readableBytes ?? 0)
                    if buffer.readableBytes > room {
                        buffer = buffer.getSlice(at: buffer.readerIndex, length: room) ?? ByteBuffer()
                        cut = true
                    }
                    body.setOrWriteImmutableBuffer(buffer)
                }
                state = .collecting(head, body, cut: cut)
            case (.collecting(let head, let body, _), .end):
                state = .serving
                serve(head, body: body ?? ByteBuffer(), context: context)
            case (.passing, .end):
                state = .idle
                pass(part, context: context)
                if closeAfterPassed {
                    // That request asked to close the connection: nothing after it is processed.
                    takingRequests = false
                    waiting.removeAll()
                    waitingBytes = 0
                    return
                }
            case (.passing, _):
                pass(part, context: context)
            case (.serving, _), (.idle, _), (.collecting, .head):
                // A body or end with no head, or a head before the previous end: not HTTP/1.1 as the decoder gives it.
                waiting.removeAll()
                waitingBytes = 0
                takingRequests = false
                context.close(promise: nil)
                return
            }
        }
    }

    /// Removes the first waiting part, and reads again once little enough waits.
    private func take(context: ChannelHandlerContext) {
        waitingBytes -= waiting.removeFirst().cost
        if readHeld && waitingBytes <= Self.pipelinedBytesMax {
            readHeld = false
            context.read()
        }
    }

    private func pass(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        passedSinceReadComplete = true
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// Answers one point request through the router, then writes the response and goes on with what waits.
    private func serve(_ head: HTTPRequest, body: ByteBuffer, context: ChannelHandlerContext) {
        let service = self.service
        let channel = context.channel
        let loop = context.eventLoop
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: loop)
        let closeAfter = head.headerFields[.connection]?.lowercased() == "close"
        Task {
            let request = Request(head: head, body: RequestBody(buffer: body))
            let requestContext = BasicRequestContext(source: ApplicationRequestContextSource(channel: channel, logger: service.logger))
            var response: Response
            do {
                response = try await service.responder.respond(to: request, context: requestContext)
            } catch {
                service.logger.debug("point route failed", metadata: ["error": "\(error)"])
                response = Response(status: .internalServerError, body: .init())
            }
            var collected = CollectedBody()
            do {
                try await response.body.write(collected)
            } catch {
                // The point routes' bodies are buffers, which cannot fail to be written; say so if one ever does.
                service.logger.error("a point route's response body failed", metadata: ["error": "\(error)"])
                response = Response(status: .internalServerError, body: .init())
                collected = CollectedBody()
            }
            response.headers[.date] = service.dates.now()
            response.headers[.server] = service.serverName
            if closeAfter { response.headers[.connection] = "close" }
            let bytes = collected.buffer
            var head = response.head
            if head.headerFields[.contentLength] == nil, head.status.code >= 200, head.status != .noContent, head.status != .notModified {
                head.headerFields[.contentLength] = String(bytes.readableBytes)
            }
            let answer = head
            if loop.inEventLoop {
                let (handler, context) = bound.value
                handler.answered(answer, body: bytes, close: closeAfter, context: context)
            } else {
                loop.execute {
                    let (handler, context) = bound.value
                    handler.answered(answer, body: bytes, close: closeAfter, context: context)
                }
            }
        }
    }

    private func answered(_ head: HTTPResponse, body: ByteBuffer, close: Bool, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if body.readableBytes > 0 { context.write(wrapOutboundOut(.body(body)), promise: nil) }
        if close {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            takingRequests = false
            waiting.removeAll()
            waitingBytes = 0
            return
        }
        state = .idle
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        drain(context: context)
    }
}

/// A response body gathered into one buffer (the point routes' bodies are single buffers).
private final class CollectedBody: ResponseBodyWriter {
    var buffer = ByteBuffer()
    func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        self.buffer.writeBuffer(&buffer)
    }
    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// The `Date` header's value, formatted once a second.
final class HTTPDates: Sendable {
    private let cached = Mutex<(second: Int, text: String)>((-1, ""))

    func now() -> String {
        let now = Date()
        let second = Int(now.timeIntervalSince1970)
        return cached.withLock { cached in
            if cached.second != second {
                cached = (second, Self.format(now))
            }
            return cached.text
        }
    }

    private static func format(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&time, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        return String(format: "%@, %02d %@ %04d %02d:%02d:%02d GMT", days[Int(parts.tm_wday)], Int(parts.tm_mday), months[Int(parts.tm_mon)],
                      Int(parts.tm_year) + 1900, Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }
}
