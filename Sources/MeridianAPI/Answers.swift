/// A JSON value for answers whose shape depends on data (CRDT values).
///
/// It holds what the node renders: null, whole numbers, strings, arrays and objects. Decoding reads a whole
/// number as `integer` when it fits an `Int64` and as `unsigned` above that, and refuses `true`, `false` and
/// numbers with a fraction (no answer carries them). Equality is the JSON's: `integer(5)` equals `unsigned(5)`.
public enum JSONValue: Codable, Equatable, Sendable {
    case null
    case integer(Int64)
    case unsigned(UInt64)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(UInt64.self) {
            self = .unsigned(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else if let value = try? container.decode([String: JSONValue].self) {
            self = .object(value)
        } else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "Expected null, a whole number, a string, an array or an object.")
        }
    }

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

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.integer(let a), .integer(let b)): a == b
        case (.unsigned(let a), .unsigned(let b)): a == b
        case (.integer(let a), .unsigned(let b)), (.unsigned(let b), .integer(let a)): a >= 0 && UInt64(a) == b
        case (.string(let a), .string(let b)): a == b
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)): a == b
        default: false
        }
    }
}

/// The JSON answer to a write (`PUT`, `DELETE`, or a CRDT operation).
public struct WriteAnswer: Codable, Equatable, Sendable {
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

    public init(keyspace: String, key: String, version: String, region: String, ack: String, ackedBy: [String], operation: String,
                type: String? = nil, value: JSONValue? = nil) {
        self.keyspace = keyspace
        self.key = key
        self.version = version
        self.region = region
        self.ack = ack
        self.ackedBy = ackedBy
        self.operation = operation
        self.type = type
        self.value = value
    }

    enum CodingKeys: String, CodingKey {
        case keyspace, key, version, region, ack, operation, type, value
        case ackedBy = "acked_by"
    }
}

/// The JSON answer to a listing (`GET /v1/kv/{keyspace}`).
public struct ListAnswer: Codable, Equatable, Sendable {
    /// One listed key.
    public struct Item: Codable, Equatable, Sendable {
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

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        keyspace = try container.decode(String.self, forKey: .keyspace)
        keys = try container.decode([Item].self, forKey: .keys)
        nextAfter = try container.decodeIfPresent(String.self, forKey: .nextAfter)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(keyspace, forKey: .keyspace)
        try container.encode(keys, forKey: .keys)
        // Always present, null on the last page.
        try container.encode(nextAfter, forKey: .nextAfter)
    }
}
