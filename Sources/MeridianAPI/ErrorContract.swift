import HTTPTypes
import MeridianCore

extension MeridianError.Code.Kind {
    /// The HTTP status of each kind of failure, as the contract in DESIGN.md lists them.
    public var httpStatus: HTTPResponse.Status {
        switch self {
        case .badInput: .badRequest
        case .unauthenticated: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .methodNotAllowed: .methodNotAllowed
        case .notAllowedByPolicy: .conflict
        case .preconditionFailed: .preconditionFailed
        case .tooLarge: .contentTooLarge
        case .unavailable: .serviceUnavailable
        case .timedOut: .gatewayTimeout
        case .storageFull: HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage")
        case .internalFailure: .internalServerError
        case .unprocessable: .unprocessableContent
        case .gone: .gone
        }
    }
}

extension MeridianError.Code {
    /// The HTTP status the code answers with (every code has one by its ``MeridianError/Code/Kind``).
    public var httpStatus: HTTPResponse.Status { kind.httpStatus }

    /// Seconds a client should wait before retrying, for the codes that answer 503.
    public var retryAfterSeconds: Int? {
        guard kind == .unavailable else { return nil }
        return self == .overloaded || self == .clockUnverified ? 1 : 5
    }
}

extension MeridianError {
    /// The fields of the JSON error `{"error": {"code", "message", "applied", ...context}}`.
    /// - Parameter change: The request changes data or state (any method but GET): the answer says whether the
    ///   change took effect (`applied`: `no` or `maybe`), so a client knows whether it may retry.
    public func errorFields(change: Bool) -> [String: String] {
        var fields = context
        fields["code"] = code.description
        fields["message"] = message
        if change { fields["applied"] = appliedOrImplied.rawValue }
        return fields
    }

    /// The same error, stating whether the refused change took effect.
    public func stating(applied: Applied) -> MeridianError {
        MeridianError(code, message, context: context, applied: applied)
    }
}
