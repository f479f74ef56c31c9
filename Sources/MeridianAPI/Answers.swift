/// A JSON value for answers whose shape depends on data (CRDT values).
public enum JSONValue: Encodable, Equatable, Sendable {
    case null
    case integer(Int64)
    case unsigned(UInt64)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .integer(let value): try container.encode(value)
        case .unsigned(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}

/// The JSON answer to a write (`PUT`, `DELETE`, or a CRDT operation).
public struct WriteAnswer: Encodable, Sendable {
    public let keyspace: String
    public let key: String
    public let version: String
    public let region: String
    public let ack: String
    public let ackedBy: [String]
    public let operation: String
    /// For a CRDT operation: the key's type and value after it.
    public var type: String?
    public var value: JSONValue?

    public init(keyspace: String, key: String, version: String, region: String, ack: String, ackedBy: [String], operation: String) {
        self.keyspace = keyspace
        self.key = key
        self.version = version
        self.region = region
        self.ack = ack
        self.ackedBy = ackedBy
        self.operation = operation
    }

    enum CodingKeys: String, CodingKey {
        case keyspace, key, version, region, ack, operation, type, value
        case ackedBy = "acked_by"
    }
}

/// The JSON answer to a listing (`GET /v1/kv/{keyspace}`).
public struct ListAnswer: Encodable, Sendable {
    /// One listed key.
    public struct Item: Encodable, Sendable {
        public let key: String
        public let version: String
        public let bytes: Int
        public let contentType: String

        public init(key: String, version: String, bytes: Int, contentType: String) {
            self.key = key
            self.version = version
            self.bytes = bytes
            self.contentType = contentType
        }

        enum CodingKeys: String, CodingKey {
            case key, version, bytes
            case contentType = "content_type"
        }
    }

    public let keyspace: String
    public let keys: [Item]
    /// The `after` of the next page (null on the last page).
    public let nextAfter: String?

    public init(keyspace: String, keys: [Item], nextAfter: String?) {
        self.keyspace = keyspace
        self.keys = keys
        self.nextAfter = nextAfter
    }

    enum CodingKeys: String, CodingKey {
        case keyspace, keys
        case nextAfter = "next_after"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(keyspace, forKey: .keyspace)
        try container.encode(keys, forKey: .keys)
        // Always present, null on the last page.
        try container.encode(nextAfter, forKey: .nextAfter)
    }
}
