import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore

/// The `Meridian-*` request headers (or their query-parameter forms), validated.
struct RequestOptions {
    var consistency: ConsistencyLevel?
    var maxStalenessMs: UInt64?
    var session: SessionToken?
    var ack: AckMode?
    /// Who the request was authorized for, where it entered the cluster (nil: authentication is off).
    var principal: String?
    /// A write's `Idempotency-Key` (header only: a key in a URL would end up in access logs and caches).
    var idempotencyKey: IdempotencyKey?
    /// A write's `Meridian-Subject` (header only, as it names a person).
    var subject: Subject?

    static let maxStalenessMsMax: UInt64 = 86_400_000

    /// No options: every one as the keyspace's default.
    init() {}

    /// Reads each option from its header, or else from the query parameter of the same name without the prefix.
    init(_ request: Request, sessionKey: SessionKey) throws(MeridianError) {
        let query = request.uri.queryParameters
        try self.init(headers: request.headers, query: { query.get($0) }, sessionKey: sessionKey)
    }

    /// Reads each option from `headers`, or else from `query` by the parameter name.
    init(headers: HTTPFields, query: (String) -> String?, sessionKey: SessionKey) throws(MeridianError) {
        principal = RequestPrincipal.current?.name
        consistency = try Self.option(headers, query, MeridianHeader.consistency).map { text throws(MeridianError) in
            guard let level = ConsistencyLevel(rawValue: text) else {
                throw Self.invalid("Meridian-Consistency", text, "use one of \(ConsistencyLevel.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return level
        }
        maxStalenessMs = try Self.option(headers, query, MeridianHeader.maxStalenessMs).map { text throws(MeridianError) in
            guard let value = UInt64(text), value <= Self.maxStalenessMsMax else {
                throw Self.invalid("Meridian-Max-Staleness-Ms", text, "use a whole number of milliseconds from 0 to \(Self.maxStalenessMsMax)")
            }
            return value
        }
        session = try Self.option(headers, query, MeridianHeader.session).map { text throws(MeridianError) in
            try SessionToken(decoding: text, key: sessionKey)
        }
        ack = try Self.option(headers, query, MeridianHeader.ack).map { text throws(MeridianError) in
            guard let mode = AckMode(rawValue: text) else {
                throw Self.invalid("Meridian-Ack", text, "use one of \(AckMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return mode
        }
        let idempotencyKeys = headers[values: MeridianHeader.idempotencyKey]
        guard idempotencyKeys.count <= 1 else {
            throw MeridianError(.invalidHeader, "Idempotency-Key is given \(idempotencyKeys.count) times; give it once.", context: ["header": "Idempotency-Key"])
        }
        idempotencyKey = try idempotencyKeys.first.map { text throws(MeridianError) in try IdempotencyKey(text) }
        let subjects = headers[values: MeridianHeader.subject]
        guard subjects.count <= 1 else {
            throw MeridianError(.invalidHeader, "Meridian-Subject is given \(subjects.count) times; give it once.", context: ["header": "Meridian-Subject"])
        }
        subject = try subjects.first.map { text throws(MeridianError) in
            do throws(MeridianError) { return try Subject(text) } catch {
                throw MeridianError(.invalidHeader, "Meridian-Subject: \(error.message)", context: ["header": "Meridian-Subject"])
            }
        }
    }

    private static func option(_ headers: HTTPFields, _ query: (String) -> String?, _ name: HTTPField.Name) throws(MeridianError) -> String? {
        let header = name.canonicalName
        let values = headers[values: name]
        guard values.count <= 1 else {
            throw MeridianError(.invalidHeader, "\(header) is given \(values.count) times; give it once.", context: ["header": header])
        }
        if let value = values.first { return value.trimmingCharacters(in: .whitespaces) }
        return query(MeridianHeader.queryName(name))
    }

    private static func invalid(_ header: String, _ value: String, _ hint: String) -> MeridianError {
        MeridianError(.invalidHeader, "\(header) '\(value.prefix(64))' is not valid: \(hint).", context: ["header": header, "value": String(value.prefix(64))])
    }

    /// The options a forwarded read carries; its session token is checked here.
    init(_ read: ReadOptions, sessionKey: SessionKey) throws(MeridianError) {
        consistency = read.consistency
        maxStalenessMs = try read.maxStalenessMs.map { value throws(MeridianError) in
            guard value <= Self.maxStalenessMsMax else {
                throw Self.invalid("Meridian-Max-Staleness-Ms", String(value), "use a whole number of milliseconds from 0 to \(Self.maxStalenessMsMax)")
            }
            return value
        }
        session = try read.session.map { text throws(MeridianError) in try SessionToken(decoding: text, key: sessionKey) }
        principal = read.principal
    }

    /// The options a forwarded write carries; its session token is checked here.
    init(_ write: WriteOptions, sessionKey: SessionKey) throws(MeridianError) {
        ack = write.ack
        session = try write.session.map { text throws(MeridianError) in try SessionToken(decoding: text, key: sessionKey) }
        principal = write.principal
        idempotencyKey = write.idempotencyKey
        subject = write.subject
    }

    /// Parses `If-Match`: `*` (the key exists), or one or more quoted versions (it is one of them).
    static func precondition(_ headers: HTTPFields) throws(MeridianError) -> WriteRequest.Precondition? {
        let values = headers[values: .ifMatch]
        guard !values.isEmpty else { return nil }
        var result: [IfMatch] = []
        for part in values.flatMap({ $0.split(separator: ",") }) {
            let tag = part.trimmingCharacters(in: .whitespaces)
            if tag == "*" {
                result.append(.any)
                continue
            }
            guard tag.count >= 2, tag.hasPrefix("\""), tag.hasSuffix("\""), let version = Version(parsing: tag.dropFirst().dropLast()) else {
                throw MeridianError(.invalidHeader, "If-Match '\(tag.prefix(80))' is not an ETag this API issued; use the quoted ETag from a read, or *.",
                                    context: ["header": "If-Match"])
            }
            result.append(.version(version))
        }
        guard !result.isEmpty else {
            throw MeridianError(.invalidHeader, "If-Match is empty; use the quoted ETag from a read, or *.", context: ["header": "If-Match"])
        }
        guard result.count <= WriteOptions.preconditionVersionsMax else {
            throw MeridianError(.invalidHeader, "If-Match names \(result.count) ETags; at most \(WriteOptions.preconditionVersionsMax) are accepted.",
                                context: ["header": "If-Match"])
        }
        return result.contains(.any) ? .exists : .versionIsOneOf(result.compactMap { if case .version(let version) = $0 { version } else { nil } })
    }

    enum IfMatch: Equatable {
        case any
        case version(Version)
    }
}
