import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore

/// A complete answer held in memory: what a route returns, and what a forwarded write carries back.
package struct RenderedResponse: Sendable {
    package var status: HTTPResponse.Status
    package var headers: HTTPFields
    package var body: ByteBuffer

    package init(status: HTTPResponse.Status, headers: HTTPFields, body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    package func response() -> Response {
        Response(status: status, headers: headers, body: .init(byteBuffer: body))
    }
}

extension MeridianError {
    /// The JSON error response: `{"error": {"code", "message", "applied", ...context}}`.
    /// - Parameter change: The request changes data or state: the answer says whether the change took effect.
    package func rendered(change: Bool) -> RenderedResponse {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retry = code.retryAfterSeconds { headers[.retryAfter] = String(retry) }
        return RenderedResponse(status: code.httpStatus, headers: headers, body: JSON.encode(["error": errorFields(change: change)]))
    }

    /// The JSON error response.
    /// - Parameter change: The request changes data or state: the answer says whether the change took effect.
    package func response(change: Bool) -> Response { rendered(change: change).response() }
}

extension HTTPRequest.Method {
    /// Whether a request of this method may change data or state (everything but GET and HEAD): its refusals
    /// say whether the change took effect.
    package var changes: Bool { self != .get && self != .head }
}

/// JSON rendering with sorted keys, so responses are byte-stable.
package enum JSON {
    package static func encode(_ value: some Encodable) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return ByteBuffer(bytes: try encoder.encode(value))
        } catch {
            preconditionFailure("JSON encoding of a response cannot fail: \(error)")
        }
    }

    package static func response(_ value: some Encodable, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        rendered(value, status: status, headers: headers).response()
    }

    package static func rendered(_ value: some Encodable, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> RenderedResponse {
        var headers = headers
        headers[.contentType] = "application/json"
        return RenderedResponse(status: status, headers: headers, body: encode(value))
    }
}
