import Foundation
import HTTPTypes
import Hummingbird
import MeridianCore

extension MeridianError.Code {
    /// The HTTP status of each error code, as the API contract in DESIGN.md lists them.
    package var httpStatus: HTTPResponse.Status {
        switch self {
        case .invalidRegion, .invalidKeyspace, .invalidKey, .invalidHeader, .invalidParameter, .invalidRequest, .invalidConfig,
             .codecTruncated, .codecUnsupportedVersion, .codecInvalidField, .codecLengthMismatch, .replicationProtocol:
            .badRequest
        case .unknownKeyspace, .unknownRegion, .keyNotFound, .routeNotFound: .notFound
        case .methodNotAllowed: .methodNotAllowed
        case .consistencyNotAllowed, .notReplicaRegion, .crdtTypeMismatch, .conflictPolicyMismatch, .tooManySiblings: .conflict
        case .preconditionFailed: .preconditionFailed
        case .valueTooLarge: .contentTooLarge
        case .ackTimeout: .gatewayTimeout
        case .ackUnavailable, .leaderUnavailable, .consistencyUnavailable, .regionUnavailable, .overloaded, .storageFailure, .clockFenced, .clockUnverified, .clockOffsetExceeded, .storageReadOnly:
            .serviceUnavailable
        case .storageFull: HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage")
        default: .internalServerError
        }
    }

    /// Seconds a client should wait before retrying, for the codes that answer 503.
    package var retryAfterSeconds: Int? {
        switch httpStatus {
        case .serviceUnavailable: self == .overloaded || self == .clockUnverified ? 1 : 5
        default: nil
        }
    }
}

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
    /// The JSON error response: `{"error": {"code", "message", ...context}}`.
    package func rendered() -> RenderedResponse {
        var fields = context
        fields["code"] = code.description
        fields["message"] = message
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retry = code.retryAfterSeconds { headers[.retryAfter] = String(retry) }
        return RenderedResponse(status: code.httpStatus, headers: headers, body: JSON.encode(["error": fields]))
    }

    /// The JSON error response.
    package func response() -> Response { rendered().response() }
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
