import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import NIOCore

/// Guards the gateway's own operator routes (`/gateway/status`, `/gateway/metrics`) when the cluster asks for tokens:
/// they show what `GET /v1/topology` shows, so they ask for what it asks for. The gateway holds no verification key
/// (token checks belong to the regions), so it asks a routable region whether the caller's token may read the
/// topology, and answers as that region did. `/health` stays open, and `/gateway/metrics` too when the cluster file
/// opens `metrics` (`auth.open`), as the regions do.
struct AdminAccessMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let gateway: Gateway

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path.hasPrefix("/gateway/"), let auth = gateway.configuration.cluster.auth else { return try await next(request, context) }
        if path == "/gateway/metrics" && auth.open.contains(.metrics) { return try await next(request, context) }
        guard let authorization = request.headers[.authorization], !authorization.isEmpty else {
            var response = MeridianError(.unauthenticated, "The cluster asks for tokens: send Authorization: Bearer <token> (one that may read GET /v1/topology).")
                .response(change: false)
            response.headers[.wwwAuthenticate] = "Bearer"
            return response
        }
        switch await gateway.checkTopologyAccess(authorization: authorization) {
        case .allowed:
            return try await next(request, context)
        case .refused(let status, let headers, let body):
            return Response(status: status, headers: headers, body: .init(byteBuffer: body))
        case .unknown(let why):
            return MeridianError(.regionUnavailable, "No region could check the token (\(why)); retry shortly.").response(change: false)
        }
    }
}

extension Gateway {
    enum AccessCheck {
        case allowed
        /// The region's refusal (401 or 403), passed on as it was.
        case refused(HTTPResponse.Status, HTTPFields, ByteBuffer)
        case unknown(String)
    }

    /// Asks the first routable region whether `authorization` may read the topology.
    func checkTopologyAccess(authorization: String) async -> AccessCheck {
        var problems: [String] = []
        for region in view.routeView().routable {
            guard let base = view.urls[region] else { continue }
            var request = HTTPClientRequest(url: base + "/v1/topology")
            request.headers.add(name: "Authorization", value: authorization)
            do {
                let response = try await client.execute(request, deadline: .now() + .seconds(5))
                let body = try await response.body.collect(upTo: 1 << 20)
                switch response.status.code {
                case 200:
                    return .allowed
                case 401, 403:
                    var headers: HTTPFields = [.contentType: "application/json"]
                    if let challenge = response.headers.first(name: "WWW-Authenticate") { headers[.wwwAuthenticate] = challenge }
                    return .refused(HTTPResponse.Status(code: Int(response.status.code)), headers, body)
                default:
                    problems.append("\(region) answered \(response.status.code)")
                }
            } catch {
                problems.append("\(region): \(Self.describe(error))")
            }
        }
        return .unknown(problems.isEmpty ? "no region is routable" : problems.joined(separator: "; "))
    }
}
