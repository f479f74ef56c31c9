import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// Sends every request that is not the gateway's own to a region.
struct ProxyMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let gateway: Gateway

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == "/health" || path.hasPrefix("/gateway/") || path.hasPrefix("/dnsapi/") {
            return try await next(request, context)
        }
        return await gateway.proxy(request, remoteAddress: context.remoteAddress?.ipAddress)
    }
}

extension Gateway {
    /// One attempt's outcome.
    enum Attempt {
        case answered(HTTPClientResponse, RegionName, elapsedMs: Double)
        /// Nothing reached the region (its connection was refused or timed out): safe to send elsewhere.
        case notSent(RegionName, String)
        /// The request may have reached the region and failed there or on the way.
        case failed(RegionName, String)
    }

    /// Routes and relays one request.
    func proxy(_ request: Request, remoteAddress: String?) async -> Response {
        let started = ContinuousClock.now
        let routeRequest = await self.routeRequest(request, remoteAddress: remoteAddress)
        let plan = RoutePlanner.plan(routeRequest, view: view.routeView(), config: configuration.cluster.routing)
        let change = request.method != .get && request.method != .head
        guard let first = plan.candidates.first else {
            let refusal = plan.refusal ?? MeridianError(.regionUnavailable, "No region can take this request now.")
            metrics.recordRequest(region: "none", status: Int(refusal.code.httpStatus.code), duration: ContinuousClock.now - started)
            var response = refusal.response(change: change)
            response.headers[Self.routeReason] = "refused"
            return response
        }
        let limits = configuration.cluster.limits
        let length = request.headers[.contentLength].flatMap { Int64($0) }
        let bodyMax = Int64(limits.valueBytesMax + 65_536)
        if let length, length > bodyMax {
            return MeridianError(.valueTooLarge, "The request body has \(length) bytes; a region takes at most \(limits.valueBytesMax) (limits.value_bytes_max).")
                .stating(applied: .no).response(change: change)
        }
        let skippedNote = plan.skipped.isEmpty ? "" : "; instead of \(plan.skipped.map(\.rawValue).joined(separator: ", ")) (down)"
        let streaming = (request.headers[.accept] ?? "").contains("text/event-stream")
        let deadline: NIODeadline = streaming ? .distantFuture : .now() + .milliseconds(Int64(limits.ackTimeoutMs + limits.readWaitMs + 10_000))

        if routeRequest.kind == .write {
            // One region, one attempt: the body streams through once.
            let body = HTTPClientRequest.Body.stream(LimitedBody(base: request.body, bytesMax: bodyMax), length: length.map { .known($0) } ?? .unknown)
            let outcome = await send(request, to: first.region, body: body, remoteAddress: remoteAddress, deadline: deadline)
            return relay(outcome, reason: first.reason + skippedNote, change: change, started: started)
        }
        earnHedge()
        var notes: [String] = []
        for (index, candidate) in plan.candidates.enumerated() {
            let last = index == plan.candidates.count - 1
            let outcome: Attempt
            // Hedging only while the budget has one to spend: most reads take the plain path (no timer, no second task).
            if index == 0, !last, !streaming, hedgeAvailable, let hedgeAfter = hedgeDelay(candidate.region) {
                outcome = await hedged(request, first: candidate.region, second: plan.candidates[1].region, afterMs: hedgeAfter,
                                       remoteAddress: remoteAddress, deadline: deadline)
            } else {
                outcome = await send(request, to: candidate.region, body: nil, remoteAddress: remoteAddress, deadline: deadline)
            }
            var reason = candidate.reason + skippedNote + (notes.isEmpty ? "" : "; after " + notes.joined(separator: ", "))
            if case .answered(_, let region, _) = outcome, region != candidate.region {
                let second = plan.candidates.first { $0.region == region }?.reason ?? "fallback"
                reason = "\(second); hedged: \(candidate.region) (\(candidate.reason)) did not answer within its p\(Int(configuration.cluster.routing.hedgePercentile))"
            }
            switch outcome {
            case .answered(let response, let region, _) where response.status == .serviceUnavailable && !last:
                notes.append("\(region) answered 503")
                continue
            case .notSent(let region, let why) where !last, .failed(let region, let why) where !last:
                notes.append("\(region): \(why)")
                continue
            default:
                return relay(outcome, reason: reason, change: change, started: started)
            }
        }
        preconditionFailure("the last candidate's outcome is always relayed")
    }

    /// The hedge delay for a read to `region`: its recent latency at the hedge percentile, when hedging is on and
    /// there are enough samples.
    func hedgeDelay(_ region: RegionName) -> Double? {
        let percentile = configuration.cluster.routing.hedgePercentile
        guard percentile > 0, configuration.cluster.routing.hedgeExtraPercentMax > 0 else { return nil }
        return view.latencyPercentileMs(region, percentile).map { max($0, 1) }
    }

    /// Sends a read to `first`, and to `second` too if `first` has not answered within `afterMs` and the budget
    /// allows; the first answer wins and the other request is cancelled.
    func hedged(_ request: Request, first: RegionName, second: RegionName, afterMs: Double, remoteAddress: String?, deadline: NIODeadline) async -> Attempt {
        await withTaskGroup(of: Attempt?.self) { group in
            group.addTask { await self.send(request, to: first, body: nil, remoteAddress: remoteAddress, deadline: deadline) }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(afterMs))
                guard !Task.isCancelled, self.spendHedge() else { return nil }
                self.metrics.recordHedge()
                return await self.send(request, to: second, body: nil, remoteAddress: remoteAddress, deadline: deadline)
            }
            var fallback: Attempt?
            while let outcome = await group.next() {
                guard let outcome else { continue }
                if case .answered(let response, _, _) = outcome, response.status != .serviceUnavailable {
                    group.cancelAll()
                    return outcome
                }
                fallback = fallback ?? outcome
            }
            return fallback ?? .notSent(first, "no answer")
        }
    }

    /// Sends the request to one region.
    func send(_ request: Request, to region: RegionName, body: HTTPClientRequest.Body?, remoteAddress: String?, deadline: NIODeadline) async -> Attempt {
        guard let base = view.urls[region] else { return .notSent(region, "no address") }
        var upstream = HTTPClientRequest(url: base + (request.uri.string.hasPrefix("/") ? request.uri.string : "/" + request.uri.string))
        upstream.method = HTTPMethod(rawValue: request.method.rawValue)
        for field in request.headers where !Self.hopByHop.contains(field.name.canonicalName) {
            upstream.headers.add(name: field.name.rawName, value: field.value)
        }
        if let remoteAddress {
            let forwarded = request.headers[.init("X-Forwarded-For")!].map { "\($0), \(remoteAddress)" } ?? remoteAddress
            upstream.headers.replaceOrAdd(name: "X-Forwarded-For", value: forwarded)
        }
        upstream.body = body
        let started = ContinuousClock.now
        do {
            let response = try await client.execute(upstream, deadline: deadline)
            let elapsed = ContinuousClock.now - started
            let milliseconds = Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
            view.recordLatency(region, milliseconds: milliseconds)
            view.answered(region)
            return .answered(response, region, elapsedMs: milliseconds)
        } catch {
            if Self.nothingSent(error) {
                view.eject(region, reason: "\(error)")
                return .notSent(region, Self.describe(error))
            }
            return .failed(region, Self.describe(error))
        }
    }

    /// Whether an error means the request never reached the region (no connection was made).
    static func nothingSent(_ error: any Error) -> Bool {
        if let error = error as? HTTPClientError, error == .connectTimeout { return true }
        if error is NIOConnectionError { return true }
        if let error = error as? ChannelError, case .connectTimeout = error { return true }
        if let error = error as? IOError, [ECONNREFUSED, ENETUNREACH, EHOSTUNREACH].contains(error.errnoCode) { return true }
        let text = "\(error)"
        return text.contains("connectTimeout") || text.contains("Connection refused") || text.contains("connectionRefused")
    }

    static func describe(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("Connection refused") || text.contains("connectionRefused") { return "connection refused" }
        if text.contains("connectTimeout") { return "connect timeout" }
        return String(text.prefix(200))
    }

    /// The client's answer: the region's response streamed back with the routing headers, or the gateway's error.
    func relay(_ outcome: Attempt, reason: String, change: Bool, started: ContinuousClock.Instant) -> Response {
        switch outcome {
        case .answered(let upstream, let region, _):
            var headers = HTTPFields()
            for header in upstream.headers where !Self.hopByHop.contains(header.name.lowercased()) {
                if let name = HTTPField.Name(header.name) { headers.append(HTTPField(name: name, value: header.value)) }
            }
            headers[Self.routedTo] = region.rawValue
            headers[Self.routeReason] = reason
            metrics.recordRequest(region: region.rawValue, status: Int(upstream.status.code), duration: ContinuousClock.now - started)
            return Response(status: HTTPResponse.Status(code: Int(upstream.status.code), reasonPhrase: upstream.status.reasonPhrase),
                            headers: headers, body: ResponseBody(asyncSequence: upstream.body))
        case .notSent(let region, let why):
            return unreachable(region, MeridianError(
                .regionUnavailable, "The gateway could not reach \(region) (\(why)); nothing was sent. Retry: the gateway routes around it.",
                context: ["region": region.rawValue]).stating(applied: .no), reason: reason, change: change, started: started)
        case .failed(let region, let why):
            return unreachable(region, MeridianError(
                .regionUnavailable, "The connection to \(region) failed during the request (\(why)); a write may or may not have been applied: send it again with the same Idempotency-Key (or read the key first if it had none).",
                context: ["region": region.rawValue]).stating(applied: .maybe), reason: reason, change: change, started: started)
        }
    }

    /// The gateway's own 503 for a region it could not complete the request with, with the routing headers.
    private func unreachable(_ region: RegionName, _ error: MeridianError, reason: String, change: Bool, started: ContinuousClock.Instant) -> Response {
        metrics.recordRequest(region: region.rawValue, status: 503, duration: ContinuousClock.now - started)
        var response = error.response(change: change)
        response.headers[Self.routedTo] = region.rawValue
        response.headers[Self.routeReason] = reason
        return response
    }
}

/// A request body passed through as it arrives, refused beyond `bytesMax` (a body without a length).
struct LimitedBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let base: RequestBody
    let bytesMax: Int64

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: RequestBody.AsyncIterator
        let bytesMax: Int64
        var seen: Int64 = 0

        mutating func next() async throws -> ByteBuffer? {
            guard let buffer = try await base.next() else { return nil }
            seen += Int64(buffer.readableBytes)
            guard seen <= bytesMax else { throw GatewayFailure("the request body is larger than \(bytesMax) bytes") }
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), bytesMax: bytesMax)
    }
}

/// The gateway's Prometheus metrics, in a registry of its own.
final class GatewayMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    func recordRequest(region: String, status: Int, duration: Duration) {
        registry.makeCounter(name: "meridian_gateway_requests_total", labels: [("region", region), ("status", String(status))]).increment()
        registry.makeDurationHistogram(name: "meridian_gateway_request_duration_seconds", labels: [("region", region)],
                                       buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                                                 .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1)])
            .record(duration)
    }

    func recordDNSAnswer(region: String) {
        registry.makeCounter(name: "meridian_gateway_dns_answers_total", labels: [("region", region)]).increment()
    }

    func recordHedge() {
        registry.makeCounter(name: "meridian_gateway_hedged_reads_total").increment()
    }
}
