import Foundation

/// A stored value in JSON: as text (`value`) when it is UTF-8, else as base64 (`value_base64`), in the fields
/// of the answer that holds it.
public struct StoredBytes: Codable, Equatable, Sendable {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    enum CodingKeys: String, CodingKey {
        case value
        case valueBase64 = "value_base64"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let text = try container.decodeIfPresent(String.self, forKey: .value) {
            bytes = Array(text.utf8)
        } else {
            let encoded = try container.decode(String.self, forKey: .valueBase64)
            guard let data = Data(base64Encoded: encoded) else {
                throw DecodingError.dataCorruptedError(forKey: .valueBase64, in: container, debugDescription: "value_base64 is not base64.")
            }
            bytes = Array(data)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        if let text = String(validating: bytes, as: UTF8.self) {
            try container.encode(text, forKey: .value)
        } else {
            try container.encode(Data(bytes).base64EncodedString(), forKey: .valueBase64)
        }
    }
}

/// One version of a key in JSON: its version, origin region, media type and value, and, in the conflicts log,
/// whether it was a delete; a sibling of `GET /v1/kv/{keyspace}/{key}` (300) or a loser of `GET /v1/conflicts/{keyspace}`.
public struct VersionJSON: Codable, Equatable, Sendable {
    public let version: String
    public let region: String
    public let contentType: String
    public let value: StoredBytes
    /// Only in the conflicts log.
    public var deleted: Bool?

    public init(version: String, region: String, contentType: String, value: StoredBytes, deleted: Bool? = nil) {
        self.version = version
        self.region = region
        self.contentType = contentType
        self.value = value
        self.deleted = deleted
    }

    enum CodingKeys: String, CodingKey {
        case version, region, deleted
        case contentType = "content_type"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decode(String.self, forKey: .version)
        region = try container.decode(String.self, forKey: .region)
        contentType = try container.decode(String.self, forKey: .contentType)
        deleted = try container.decodeIfPresent(Bool.self, forKey: .deleted)
        // The value's fields sit beside the others.
        value = try StoredBytes(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(region, forKey: .region)
        try container.encode(contentType, forKey: .contentType)
        try container.encodeIfPresent(deleted, forKey: .deleted)
        try value.encode(to: encoder)
    }
}

/// The 300 answer of `GET /v1/kv/{keyspace}/{key}` in a `siblings` keyspace when the key has concurrent versions.
public struct SiblingsAnswer: Codable, Equatable, Sendable {
    public let keyspace: String
    public let key: String
    public let siblings: [VersionJSON]
    /// The causal context the next write of the key sends back.
    public let context: String

    public init(keyspace: String, key: String, siblings: [VersionJSON], context: String) {
        self.keyspace = keyspace
        self.key = key
        self.siblings = siblings
        self.context = context
    }
}

/// The answer of `GET /v1/conflicts/{keyspace}`.
public struct ConflictsAnswer: Codable, Equatable, Sendable {
    /// The version that won a conflict.
    public struct Winner: Codable, Equatable, Sendable {
        public let version: String
        public let region: String

        public init(version: String, region: String) {
            self.version = version
            self.region = region
        }
    }

    /// One conflict the keyspace's rule resolved: the version that lost, and the one that won.
    public struct Record: Codable, Equatable, Sendable {
        public let id: Int64
        public let key: String
        public let rule: String
        public let recordedMs: UInt64
        public let loser: VersionJSON
        public let winner: Winner

        public init(id: Int64, key: String, rule: String, recordedMs: UInt64, loser: VersionJSON, winner: Winner) {
            self.id = id
            self.key = key
            self.rule = rule
            self.recordedMs = recordedMs
            self.loser = loser
            self.winner = winner
        }

        enum CodingKeys: String, CodingKey {
            case id, key, rule, loser, winner
            case recordedMs = "recorded_ms"
        }
    }

    public let keyspace: String
    public let region: String
    public let conflicts: [Record]
    /// The `after` of the next page (null on the last page).
    public let nextAfter: Int64?

    public init(keyspace: String, region: String, conflicts: [Record], nextAfter: Int64?) {
        self.keyspace = keyspace
        self.region = region
        self.conflicts = conflicts
        self.nextAfter = nextAfter
    }

    enum CodingKeys: String, CodingKey {
        case keyspace, region, conflicts
        case nextAfter = "next_after"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        keyspace = try container.decode(String.self, forKey: .keyspace)
        region = try container.decode(String.self, forKey: .region)
        conflicts = try container.decode([Record].self, forKey: .conflicts)
        nextAfter = try container.decodeIfPresent(Int64.self, forKey: .nextAfter)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(keyspace, forKey: .keyspace)
        try container.encode(region, forKey: .region)
        try container.encode(conflicts, forKey: .conflicts)
        // Always present, null on the last page.
        try container.encode(nextAfter, forKey: .nextAfter)
    }
}

/// The answer of `GET /v1/crdt/{keyspace}/{key}`: the key's CRDT type and value.
public struct CRDTAnswer: Codable, Equatable, Sendable {
    public let keyspace: String
    public let key: String
    public let type: String
    public let value: JSONValue
    public let version: String

    public init(keyspace: String, key: String, type: String, value: JSONValue, version: String) {
        self.keyspace = keyspace
        self.key = key
        self.type = type
        self.value = value
        self.version = version
    }
}
