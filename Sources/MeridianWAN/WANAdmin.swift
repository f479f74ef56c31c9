import Foundation
import HTTPTypes
import Hummingbird
import MeridianCore
import MeridianHTTP

/// The WAN emulator's admin API: status, partition, isolate, heal, latency.
extension WANEmulator {
    /// The JSON of `GET /v1/wan/status`.
    struct StatusAnswer: Encodable {
        struct Link: Encodable {
            let from: String
            let to: String
            let listen: String
            let target: String
            let rttMs: Double
            let oneWayMs: Double
            let jitterMs: Double
            let partitioned: Bool
            let connections: Int
            let bytes: Int

            enum CodingKeys: String, CodingKey {
                case from, to, listen, target, partitioned, connections, bytes
                case rttMs = "rtt_ms"
                case oneWayMs = "one_way_ms"
                case jitterMs = "jitter_ms"
            }
        }

        let latencyScale: Double
        let jitterPercent: Double
        let links: [Link]

        enum CodingKeys: String, CodingKey {
            case links
            case latencyScale = "latency_scale"
            case jitterPercent = "jitter_percent"
        }
    }

    /// The body of the POST routes; which fields are needed depends on the route.
    struct Command: Decodable {
        let a: String?
        let b: String?
        let region: String?
        let rttMs: Double?
        var percent: Double? = nil

        enum CodingKeys: String, CodingKey {
            case a, b, region, percent
            case rttMs = "rtt_ms"
        }
    }

    /// The admin API's routes.
    public func adminRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: AdminErrors())
        router.get("/health") { _, _ in JSON.response(["status": "ok"]) }
        router.get("/v1/wan/status") { _, _ in JSON.response(self.status()) }
        router.post("/v1/wan/partition") { request, _ in
            let command = try await Self.command(request)
            let (a, b) = try Self.pair(command)
            try self.withTable { table throws(MeridianError) in try table.partition(a, b) }
            return JSON.response(self.status())
        }
        router.post("/v1/wan/isolate") { request, _ in
            let command = try await Self.command(request)
            let region = try Self.region(command.region, "region")
            try self.withTable { table throws(MeridianError) in try table.isolate(region) }
            return JSON.response(self.status())
        }
        router.post("/v1/wan/heal") { request, _ in
            let command = try await Self.command(request)
            let a = try command.a.map { name throws(MeridianError) in try Self.region(name, "a") }
            let b = try command.b.map { name throws(MeridianError) in try Self.region(name, "b") }
            try self.withTable { table throws(MeridianError) in try table.heal(a, b) }
            return JSON.response(self.status())
        }
        router.post("/v1/wan/jitter") { request, _ in
            let command = try await Self.command(request)
            guard let percent = command.percent else {
                throw MeridianError(.invalidRequest, "Give the jitter as \"percent\" of each link's delay, e.g. {\"percent\": 50}.")
            }
            try self.withTable { table throws(MeridianError) in try table.setJitter(percent: percent) }
            return JSON.response(self.status())
        }
        router.post("/v1/wan/latency") { request, _ in
            let command = try await Self.command(request)
            let (a, b) = try Self.pair(command)
            guard let rtt = command.rttMs else {
                throw MeridianError(.invalidRequest, "Give the new round-trip time as \"rtt_ms\".")
            }
            try self.withTable { table throws(MeridianError) in try table.setLatency(a, b, rttMs: rtt) }
            return JSON.response(self.status())
        }
        return router
    }

    func status() -> StatusAnswer {
        let (table, counters) = snapshot()
        // A link is served by its own proxy, or in source-address mode by its destination's gateway.
        let endpoints = proxies.map { ($0.link, $0.listen, $0.target) } + gateways.flatMap { gateway in
            table.links.filter { $0.to == gateway.region }.map { ($0, gateway.listen, gateway.target) }
        }
        return StatusAnswer(latencyScale: table.latencyScale, jitterPercent: table.jitterPercent, links: endpoints.map { link, listen, target in
            let state = table.state(link)
            let counter = counters[link] ?? LinkCounters()
            return StatusAnswer.Link(
                from: link.from.rawValue, to: link.to.rawValue, listen: listen.description,
                target: target.description, rttMs: table.rttMs(link.from, link.to),
                oneWayMs: state.oneWayDelayMs, jitterMs: state.jitterMs, partitioned: state.partitioned,
                connections: counter.connections, bytes: counter.bytes)
        })
    }

    static let commandBytesMax = 4096

    static func command(_ request: Request) async throws -> Command {
        let body = try await request.body.collect(upTo: commandBytesMax)
        guard body.readableBytes > 0 else { return Command(a: nil, b: nil, region: nil, rttMs: nil) }
        do {
            return try JSONDecoder().decode(Command.self, from: Data(body.readableBytesView))
        } catch {
            throw MeridianError(.invalidRequest, "The body must be JSON such as {\"a\":\"us-east\",\"b\":\"eu-west\"}: \(error).")
        }
    }

    static func region(_ name: String?, _ field: String) throws(MeridianError) -> RegionName {
        guard let name else { throw MeridianError(.invalidRequest, "Name the region in \"\(field)\".", context: ["field": field]) }
        return try RegionName(name)
    }

    static func pair(_ command: Command) throws(MeridianError) -> (RegionName, RegionName) {
        (try region(command.a, "a"), try region(command.b, "b"))
    }
}

/// Renders every failure of the admin API in Meridian's JSON error format.
struct AdminErrors: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as MeridianError {
            return error.response(change: request.method.changes)
        } catch let error as HTTPError where error.status == .notFound {
            return MeridianError(.routeNotFound, "No route \(request.method) \(request.uri.path.prefix(200)) on the WAN admin API.").response(change: request.method.changes)
        } catch {
            return MeridianError(.invalidRequest, "The request could not be handled: \(error).").response(change: request.method.changes)
        }
    }
}
