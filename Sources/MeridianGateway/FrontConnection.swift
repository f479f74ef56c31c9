import Foundation
import HTTPTypes
import MeridianAPI
import MeridianCore
import MeridianHTTP
import NIOCore
import NIOHTTP1

/// One client connection of the gateway's data path, on NIO channels: each request is routed from its head, sent
/// to its region over a pooled connection on the same event loop, and the region's answer streamed back with the
/// routing headers. The gateway's own routes (`/health`, `/gateway/...`, `/dnsapi/...`) go the same way to its
/// internal server on loopback.
///
/// Reads that cannot reach their region (a refused connection, a 503) go to the next candidate; a read slower than
/// its region's usual (the hedge percentile) is also sent to the next one, within the hedge budget, and the first
/// answer wins. Writes go to one region once, their bodies streamed as they arrive (client reads pause while the
/// region's connection cannot take more).
final class FrontConnection: ChannelDuplexHandler, UpstreamDelegate {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Bytes of a request body queued while its region's connection is being made (reads pause beyond it).
    static let queuedBytesMax = 256 * 1024

    /// One try at one upstream.
    final class Attempt {
        let target: UpstreamTarget
        let reason: String
        let index: Int
        let hedge: Bool
        var connection: UpstreamConnection?
        var sentAt = NIODeadline.now()
        var responded = false
        var abandoned = false
        /// The response said the connection may carry another request.
        var keepAlive = false

        init(target: UpstreamTarget, reason: String, index: Int, hedge: Bool) {
            self.target = target
            self.reason = reason
            self.index = index
            self.hedge = hedge
        }
    }

    /// One request and its answer.
    final class Exchange {
        let head: HTTPRequestHead
        let started = ContinuousClock.now
        /// One of the gateway's own routes (no routing, no routing headers).
        let own: Bool
        let read: Bool
        let keepAlive: Bool
        let streaming: Bool
        var candidates: [(target: UpstreamTarget, reason: String)] = []
        var next = 0
        var notes: [String] = []
        var skippedNote = ""
        var planned = false
        var queued: [ByteBuffer] = []
        var queuedBytes = 0
        var bodyBytes: Int64 = 0
        var requestEnded = false
        var attempts: [Attempt] = []
        var winner: Attempt?
        var deadline: Scheduled<Void>?
        var hedgeTimer: Scheduled<Void>?
        /// The request body is being dropped (the answer was given before it ended).
        var discarding = false
        /// The gateway's own answer, given once the request's body has arrived (and been dropped): answering before
        /// would close a connection the client means to keep.
        var pendingAnswer: (rendered: RenderedResponse, routedTo: String?, reason: String?)?

        init(head: HTTPRequestHead, own: Bool) {
            self.head = head
            self.own = own
            read = head.method == .GET || head.method == .HEAD
            keepAlive = head.isKeepAlive && head.version.major == 1 && head.version.minor >= 1
            streaming = head.headers[canonicalForm: "accept"].contains { $0.contains("text/event-stream") }
        }

        var change: Bool { !read }
    }

    private let gateway: Gateway
    private let pool: UpstreamPool
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    private var remoteAddress: String?
    /// Client reads are held (a body waits for its region's connection, or a home lookup runs).
    private var readsHeld = false
    private var readPending = false
    private var counted = false
    /// An answer was given before the request's body ended: the rest is dropped, and the connection closes at its end.
    private var draining = false

    init(gateway: Gateway, pool: UpstreamPool) {
        self.gateway = gateway
        self.pool = pool
    }

    // MARK: - The client's side

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        remoteAddress = context.channel.remoteAddress?.ipAddress
        counted = true
        guard gateway.openConnections.add(1, ordering: .relaxed).newValue <= Gateway.connectionsMax else {
            gateway.logger.warning("refused a connection: the gateway holds its limit of \(Gateway.connectionsMax) client connections")
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted { gateway.openConnections.subtract(1, ordering: .relaxed) }
        counted = false
        if let exchange { abandon(exchange) }
        exchange = nil
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if readsHeld {
            readPending = true
        } else {
            context.read()
        }
    }

    private func holdReads(_ held: Bool) {
        readsHeld = held
        if !held, readPending, let context {
            readPending = false
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard !draining else { return }
            begin(head)
        case .body(let buffer):
            guard let exchange, !exchange.discarding, !draining else { return }
            exchange.bodyBytes += Int64(buffer.readableBytes)
            guard exchange.bodyBytes <= gateway.bodyBytesMax else {
                return refuseBody(exchange)
            }
            guard !exchange.read, exchange.pendingAnswer == nil else { return }
            if let attempt = exchange.attempts.first, let connection = attempt.connection {
                connection.write(.body(.byteBuffer(buffer)))
                connection.flush()
                if !connection.isWritable { holdReads(true) }
            } else {
                exchange.queued.append(buffer)
                exchange.queuedBytes += buffer.readableBytes
                if exchange.queuedBytes >= Self.queuedBytesMax { holdReads(true) }
            }
        case .end:
            if draining { return context.close(promise: nil) }
            guard let exchange, !exchange.discarding else { return }
            exchange.requestEnded = true
            if let pending = exchange.pendingAnswer {
                return answer(exchange, pending.rendered, routedTo: pending.routedTo, reason: pending.reason)
            }
            for attempt in exchange.attempts {
                guard let connection = attempt.connection else { continue }
                connection.write(.end(nil))
                connection.flush()
                attempt.sentAt = .now()
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // The client reads slower than the region answers: pause the region's connection until it catches up.
        if let winner = exchange?.winner { winner.connection?.setReading(context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    // MARK: - Planning

    private func begin(_ head: HTTPRequestHead) {
        guard let context else { return }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        let own = path == "/health" || path.hasPrefix("/gateway/") || path.hasPrefix("/dnsapi/")
        let exchange = Exchange(head: head, own: own)
        self.exchange = exchange
        if !exchange.streaming {
            let waitMs = Int64(gateway.configuration.cluster.limits.ackTimeoutMs + gateway.configuration.cluster.limits.readWaitMs + 10_000)
            exchange.deadline = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(waitMs)) { [self] in
                self.expired(exchange)
            }
        }
        if let length = head.headers.first(name: "content-length").flatMap({ Int64($0) }), length > gateway.bodyBytesMax {
            return refuseBody(exchange)
        }
        // The gateway takes the body as it comes (queued while the region's connection is made), so it says go on
        // itself; the region gets no `Expect`.
        if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        if own {
            exchange.candidates = [(target: gateway.internalTarget, reason: "")]
            exchange.planned = true
            return start(exchange, index: 0, hedge: false)
        }
        let decoded = gateway.routeRequest(method: head.method, uri: head.uri, headers: head.headers, remoteAddress: remoteAddress)
        if let user = decoded.homeLookupUser, let lookup = gateway.configuration.cluster.routing.homeLookup {
            // The user's home is not cached: look it up off the event loop, holding the request's body meanwhile.
            holdReads(true)
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let boundExchange = NIOLoopBound(exchange, eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            let gateway = self.gateway
            let authorization = head.headers.first(name: "authorization")
            let decodedRequest = decoded.request
            Task {
                var found = decodedRequest
                found.userHome = await gateway.home(of: user, lookup: lookup, authorization: authorization)
                let request = found
                eventLoop.execute {
                    bound.value.holdReads(false)
                    bound.value.plan(boundExchange.value, request)
                }
            }
            return
        }
        plan(exchange, decoded.request)
    }

    private func plan(_ exchange: Exchange, _ request: RoutePlanner.RouteRequest) {
        guard exchange === self.exchange, !exchange.discarding else { return }
        let plan = RoutePlanner.plan(request, view: gateway.view.routeView(), config: gateway.configuration.cluster.routing)
        guard !plan.candidates.isEmpty else {
            let refusal = plan.refusal ?? MeridianError(.regionUnavailable, "No region can take this request now.")
            gateway.metrics.recordRequest(region: "none", status: Int(refusal.code.httpStatus.code), duration: ContinuousClock.now - exchange.started)
            return answer(exchange, refusal.rendered(change: exchange.change), routedTo: nil, reason: "refused")
        }
        exchange.candidates = plan.candidates.compactMap { candidate in gateway.targets[candidate.region].map { (target: $0, reason: candidate.reason) } }
        exchange.skippedNote = plan.skipped.isEmpty ? "" : "; instead of \(plan.skipped.map(\.rawValue).joined(separator: ", ")) (down)"
        exchange.planned = true
        if exchange.read { gateway.earnHedge() }
        start(exchange, index: 0, hedge: false)
    }

    // MARK: - Attempts

    private func start(_ exchange: Exchange, index: Int, hedge: Bool) {
        let candidate = exchange.candidates[index]
        let attempt = Attempt(target: candidate.target, reason: candidate.reason, index: index, hedge: hedge)
        exchange.next = max(exchange.next, index + 1)
        exchange.attempts.append(attempt)
        if index == 0, !hedge, exchange.hedgeTimer == nil, exchange.read, !exchange.own, !exchange.streaming, exchange.candidates.count > 1, gateway.hedgeAvailable,
           let region = candidate.target.region, let afterMs = gateway.hedgeDelay(region), let context {
            exchange.hedgeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .microseconds(Int64(afterMs * 1000))) { [self] in
                self.hedge(exchange)
            }
        }
        pool.acquire(candidate.target) { [self] result in
            guard exchange === self.exchange, !attempt.abandoned, exchange.winner == nil else {
                if case .success(let connection) = result { self.pool.release(connection) }
                return
            }
            switch result {
            case .success(let connection):
                attempt.connection = connection
                connection.delegate = self
                self.send(exchange, on: connection)
                attempt.sentAt = .now()
            case .failure(let error):
                let limit = error is UpstreamLimitReached
                if let region = attempt.target.region, !limit { self.gateway.view.eject(region, reason: "\(error)") }
                self.failed(exchange, attempt, nothingSent: true, why: limit ? "\(error)" : Gateway.describe(error))
            }
        }
    }

    /// Sends the request's head, what arrived of its body, and its end if it came.
    private func send(_ exchange: Exchange, on connection: UpstreamConnection) {
        let head = exchange.head
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 2)
        for (name, value) in head.headers {
            let lowered = name.lowercased()
            guard !Gateway.hopByHop.contains(lowered), lowered != "expect" else { continue }
            headers.add(name: name, value: value)
        }
        headers.add(name: "Host", value: "\(connection.target.host):\(connection.target.port)")
        if let remoteAddress, !exchange.own {
            let forwarded = head.headers.first(name: "x-forwarded-for").map { "\($0), \(remoteAddress)" } ?? remoteAddress
            headers.replaceOrAdd(name: "X-Forwarded-For", value: forwarded)
        }
        connection.write(.head(HTTPRequestHead(version: .http1_1, method: head.method, uri: head.uri, headers: headers)))
        if !exchange.read {
            for buffer in exchange.queued { connection.write(.body(.byteBuffer(buffer))) }
            exchange.queued = []
            exchange.queuedBytes = 0
        }
        if exchange.requestEnded { connection.write(.end(nil)) }
        connection.flush()
        holdReads(!connection.isWritable)
    }

    private func hedge(_ exchange: Exchange) {
        exchange.hedgeTimer = nil
        guard exchange === self.exchange, exchange.winner == nil, exchange.attempts.count == 1, exchange.next < exchange.candidates.count,
              gateway.spendHedge() else { return }
        gateway.metrics.recordHedge()
        start(exchange, index: exchange.next, hedge: true)
    }

    /// An attempt ended without an answer to pass on: the next candidate for a read, else the gateway's 503.
    private func failed(_ exchange: Exchange, _ attempt: Attempt, nothingSent: Bool, why: String) {
        attempt.abandoned = true
        exchange.attempts.removeAll { $0 === attempt }
        guard exchange === self.exchange, exchange.winner == nil else { return }
        let name = attempt.target.region?.rawValue ?? attempt.target.name
        if exchange.read && !exchange.own {
            exchange.notes.append("\(name): \(why)")
            if !exchange.attempts.isEmpty { return }
            if exchange.next < exchange.candidates.count { return start(exchange, index: exchange.next, hedge: false) }
        }
        exchange.hedgeTimer?.cancel()
        let error: MeridianError
        if nothingSent {
            error = MeridianError(.regionUnavailable, "The gateway could not reach \(name) (\(why)); nothing was sent. Retry: the gateway routes around it.",
                                  context: ["region": name]).stating(applied: .no)
        } else {
            error = MeridianError(.regionUnavailable, "The connection to \(name) failed during the request (\(why)); a write may or may not have been applied: send it again with the same Idempotency-Key (or read the key first if it had none).",
                                  context: ["region": name]).stating(applied: .maybe)
        }
        if !exchange.own { gateway.metrics.recordRequest(region: name, status: 503, duration: ContinuousClock.now - exchange.started) }
        answer(exchange, error.rendered(change: exchange.change), routedTo: exchange.own ? nil : name, reason: exchange.own ? nil : reason(exchange, attempt))
    }

    /// `Meridian-Route-Reason`: free of control characters (the notes quote errors; headers are not validated again).
    private func reason(_ exchange: Exchange, _ attempt: Attempt) -> String {
        if attempt.hedge, let first = exchange.candidates.first {
            return "\(attempt.reason); hedged: \(first.target.name) (\(first.reason)) did not answer within its p\(Int(gateway.configuration.cluster.routing.hedgePercentile))"
        }
        guard !exchange.notes.isEmpty || !exchange.skippedNote.isEmpty else { return attempt.reason }
        let text = attempt.reason + exchange.skippedNote + (exchange.notes.isEmpty ? "" : "; after " + exchange.notes.joined(separator: ", "))
        return String(String.UnicodeScalarView(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }))
    }

    private func expired(_ exchange: Exchange) {
        exchange.deadline = nil
        guard exchange === self.exchange else { return }
        if let pending = exchange.pendingAnswer {
            return answer(exchange, pending.rendered, routedTo: pending.routedTo, reason: pending.reason, now: true)
        }
        guard exchange.winner == nil else {
            // The answer began but did not end in time: nothing more can be said to the client.
            abandon(exchange)
            context?.close(promise: nil)
            return
        }
        let waited = gateway.configuration.cluster.limits.ackTimeoutMs + gateway.configuration.cluster.limits.readWaitMs + 10_000
        let last = exchange.attempts.last
        for attempt in exchange.attempts { attempt.abandoned = true; attempt.connection?.close() }
        exchange.attempts = []
        exchange.next = exchange.candidates.count
        let name = last?.target.region?.rawValue ?? last?.target.name ?? "the region"
        let error = MeridianError(.regionUnavailable, "\(name) did not answer within \(waited) ms; a write may or may not have been applied: send it again with the same Idempotency-Key (or read the key first if it had none).",
                                  context: ["region": name]).stating(applied: exchange.read ? .no : .maybe)
        if !exchange.own { gateway.metrics.recordRequest(region: name, status: 503, duration: ContinuousClock.now - exchange.started) }
        answer(exchange, error.rendered(change: exchange.change), routedTo: exchange.own ? nil : name, reason: last.map { reason(exchange, $0) }, now: true)
    }

    // MARK: - The upstream's side

    func upstream(_ connection: UpstreamConnection, received part: HTTPClientResponsePart) {
        guard let exchange, let attempt = exchange.attempts.first(where: { $0.connection === connection }) else {
            connection.close()
            return
        }
        switch part {
        case .head(let response):
            attempt.responded = true
            attempt.keepAlive = response.isKeepAlive
            if let region = attempt.target.region {
                let elapsed = NIODeadline.now() - attempt.sentAt
                gateway.view.recordLatency(region, milliseconds: Double(elapsed.nanoseconds) / 1e6)
                gateway.view.answered(region)
            }
            guard exchange.winner == nil else { return }
            let others = exchange.attempts.count > 1 || exchange.next < exchange.candidates.count
            if response.status == .serviceUnavailable, exchange.read, !exchange.own, others {
                connection.close()
                return failed(exchange, attempt, nothingSent: false, why: "answered 503")
            }
            exchange.winner = attempt
            exchange.hedgeTimer?.cancel()
            for other in exchange.attempts where other !== attempt {
                other.abandoned = true
                other.connection?.close()
            }
            exchange.attempts = [attempt]
            var headers = HTTPHeaders()
            headers.reserveCapacity(response.headers.count + 3)
            for (name, value) in response.headers where !Gateway.hopByHop.contains(name.lowercased()) {
                headers.add(name: name, value: value)
            }
            if !exchange.own, let region = attempt.target.region {
                headers.replaceOrAdd(name: "Meridian-Routed-To", value: region.rawValue)
                headers.replaceOrAdd(name: "Meridian-Route-Reason", value: reason(exchange, attempt))
                gateway.metrics.recordRequest(region: region.rawValue, status: Int(response.status.code), duration: ContinuousClock.now - exchange.started)
            }
            if !exchange.keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
            context?.write(wrapOutboundOut(.head(HTTPResponseHead(version: exchange.head.version, status: response.status, headers: headers))), promise: nil)
            if exchange.streaming { context?.flush() }
        case .body(let buffer):
            guard attempt === exchange.winner, let context else { return }
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            if exchange.streaming || !context.channel.isWritable { context.flush() }
            if !context.channel.isWritable { connection.setReading(false) }
        case .end:
            guard attempt === exchange.winner else { return }
            finish(exchange, releasing: attempt)
        }
    }

    func upstreamClosed(_ connection: UpstreamConnection, error: (any Error)?) {
        guard let exchange, let attempt = exchange.attempts.first(where: { $0.connection === connection }), !attempt.abandoned else { return }
        if attempt === exchange.winner {
            // The answer was cut off midway: the client's connection ends too, so it cannot take a part for a whole.
            abandon(exchange)
            self.exchange = nil
            context?.close(promise: nil)
            return
        }
        let why = error.map { Gateway.describe($0) } ?? "the connection closed"
        // A pooled connection the region closed while it was idle: the request never reached it.
        if connection.reused && !attempt.responded && exchange.read {
            attempt.abandoned = true
            exchange.attempts.removeAll { $0 === attempt }
            return start(exchange, index: attempt.index, hedge: attempt.hedge)
        }
        failed(exchange, attempt, nothingSent: false, why: why)
    }

    func upstreamWritabilityChanged(_ connection: UpstreamConnection) {
        guard let exchange, exchange.attempts.first?.connection === connection, exchange.winner == nil else { return }
        holdReads(!connection.isWritable)
    }

    // MARK: - Ending an exchange

    private func finish(_ exchange: Exchange, releasing attempt: Attempt) {
        exchange.deadline?.cancel()
        exchange.hedgeTimer?.cancel()
        if let connection = attempt.connection {
            if attempt.keepAlive && exchange.requestEnded {
                pool.release(connection)
            } else {
                connection.close()
            }
        }
        attempt.abandoned = true
        self.exchange = nil
        holdReads(false)
        guard let context else { return }
        if exchange.keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// The gateway's own answer (a refusal, or an upstream it could not complete the request with), once the
    /// request has ended unless `now` (a body over the limit is not read to its end).
    private func answer(_ exchange: Exchange, _ rendered: RenderedResponse, routedTo: String?, reason: String?, now: Bool = false) {
        exchange.hedgeTimer?.cancel()
        for attempt in exchange.attempts {
            attempt.abandoned = true
            attempt.connection?.close()
        }
        exchange.attempts = []
        if !exchange.requestEnded && !now {
            // The deadline still runs: a body that never ends gets the answer then, and the connection closes.
            exchange.pendingAnswer = (rendered, routedTo, reason)
            exchange.queued = []
            exchange.queuedBytes = 0
            holdReads(false)
            return
        }
        exchange.deadline?.cancel()
        let bodyLeft = !exchange.requestEnded
        if bodyLeft { exchange.discarding = true }
        self.exchange = nil
        holdReads(false)
        guard let context else { return }
        var headers = HTTPHeaders()
        for field in rendered.headers { headers.add(name: field.name.rawName, value: field.value) }
        if let routedTo { headers.replaceOrAdd(name: "Meridian-Routed-To", value: routedTo) }
        if let reason { headers.replaceOrAdd(name: "Meridian-Route-Reason", value: reason) }
        headers.replaceOrAdd(name: "Content-Length", value: String(rendered.body.readableBytes))
        // A body still on its way is not read: the connection closes after the answer.
        let close = !exchange.keepAlive || bodyLeft
        if close { headers.replaceOrAdd(name: "Connection", value: "close") }
        let status = HTTPResponseStatus(statusCode: rendered.status.code, reasonPhrase: rendered.status.reasonPhrase)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: exchange.head.version, status: status, headers: headers))), promise: nil)
        if exchange.head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(rendered.body))), promise: nil) }
        let written = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        guard close else { return }
        guard bodyLeft else {
            written.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        // The client may still be sending the body: closing now could reset the connection before it reads the
        // answer. The gateway stops writing, drops the rest of the body, and closes at its end (5 s at most).
        draining = true
        written.assumeIsolated().whenComplete { _ in context.close(mode: .output, promise: nil) }
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(5)) { context.close(promise: nil) }
    }

    private func refuseBody(_ exchange: Exchange) {
        let limit = gateway.configuration.cluster.limits.valueBytesMax
        let error = MeridianError(.valueTooLarge, "The request body has more than \(gateway.bodyBytesMax) bytes; a region takes at most \(limit) (limits.value_bytes_max).")
            .stating(applied: .no)
        if exchange.winner != nil {
            abandon(exchange)
            self.exchange = nil
            context?.close(promise: nil)
            return
        }
        answer(exchange, error.rendered(change: exchange.change), routedTo: nil, reason: nil, now: true)
    }

    /// Lets go of every attempt of `exchange` (their connections close: none has a complete answer to give back).
    private func abandon(_ exchange: Exchange) {
        exchange.deadline?.cancel()
        exchange.hedgeTimer?.cancel()
        for attempt in exchange.attempts {
            attempt.abandoned = true
            attempt.connection?.close()
        }
        exchange.attempts = []
    }
}
