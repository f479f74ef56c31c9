/// The name of a region: one failure domain and location, such as `us-east`.
///
/// Region names follow the same rule as keyspace names (`[a-z0-9_-]{1,64}`) so they can appear in
/// paths, metric labels and version strings without escaping.
public struct RegionName: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    /// The validated name.
    public let rawValue: String

    /// Validates a region name.
    /// - Throws: `MeridianError` with code `invalid_region` when the name breaks the rule.
    public init(_ rawValue: String) throws(MeridianError) {
        guard NameRule.isValid(rawValue) else {
            throw MeridianError(
                .invalidRegion,
                "Region name '\(NameRule.printable(rawValue))' is invalid: use 1 to 64 characters from a-z, 0-9, '_' and '-'.",
                context: ["region": NameRule.printable(rawValue)])
        }
        self.rawValue = rawValue
    }

    /// Creates a region name from a literal the program itself owns; a bad literal is a programmer error.
    public init(validated rawValue: String) {
        precondition(NameRule.isValid(rawValue), "invalid region literal \(rawValue)")
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        do { try self.init(raw) } catch { throw error }
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// The name of a keyspace: a named collection of keys with one policy.
public struct KeyspaceName: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The validated name.
    public let rawValue: String

    /// Validates a keyspace name.
    /// - Throws: `MeridianError` with code `invalid_keyspace` when the name is not `[a-z0-9_-]{1,64}`.
    public init(_ rawValue: String) throws(MeridianError) {
        guard NameRule.isValid(rawValue) else {
            throw MeridianError(
                .invalidKeyspace,
                "Keyspace name '\(NameRule.printable(rawValue))' is invalid: use 1 to 64 characters from a-z, 0-9, '_' and '-'.",
                context: ["keyspace": NameRule.printable(rawValue)])
        }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A key inside a keyspace: valid UTF-8, 1 to 1024 bytes, no control characters.
///
/// Two keys are equal when their bytes are, and order by their bytes, as the stores keep them: Swift's `String`
/// would call canonically equivalent spellings equal ("é" as one scalar or as "e" and a combining accent), which
/// are two keys everywhere else.
public struct Key: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The most bytes a key may have in UTF-8.
    public static let utf8BytesMax = 1024

    /// The validated key.
    public let rawValue: String

    /// Validates a key.
    /// - Throws: `MeridianError` with code `invalid_key` when the key is empty, too long or holds a control character.
    public init(_ rawValue: String) throws(MeridianError) {
        let byteCount = rawValue.utf8.count
        guard byteCount >= 1 else {
            throw MeridianError(.invalidKey, "The key is empty: a key has 1 to \(Key.utf8BytesMax) bytes of UTF-8.")
        }
        guard byteCount <= Key.utf8BytesMax else {
            throw MeridianError(
                .invalidKey,
                "The key has \(byteCount) bytes; keys are at most \(Key.utf8BytesMax) bytes of UTF-8.",
                context: ["key_bytes": String(byteCount)])
        }
        if let bad = rawValue.unicodeScalars.first(where: { $0.properties.generalCategory == .control }) {
            throw MeridianError(
                .invalidKey,
                "The key holds the control character U+\(String(bad.value, radix: 16, uppercase: true)); keys may not contain control characters.",
                // Not the key itself: key names may be personal data, and this error can be made outside a
                // restricted keyspace's residency (the key is refused before its keyspace is known).
                context: ["key_bytes": String(byteCount), "character": "U+\(String(bad.value, radix: 16, uppercase: true))"])
        }
        self.rawValue = rawValue
    }

    /// Validates a key given as raw bytes, which must be valid UTF-8.
    /// - Throws: `MeridianError` with code `invalid_key`.
    public init(utf8 bytes: some Collection<UInt8>) throws(MeridianError) {
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw MeridianError(.invalidKey, "The key is not valid UTF-8.")
        }
        try self.init(string)
    }

    public var description: String { rawValue }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        let (left, right) = (lhs.rawValue.utf8, rhs.rawValue.utf8)
        guard left.count == right.count else { return false }
        return Self.bytes(left, right) { $0.elementsEqual($1) } ?? left.elementsEqual(right)
    }

    public func hash(into hasher: inout Hasher) {
        var copy = rawValue
        copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        let (left, right) = (lhs.rawValue.utf8, rhs.rawValue.utf8)
        return Self.bytes(left, right) { $0.lexicographicallyPrecedes($1) } ?? left.lexicographicallyPrecedes(right)
    }

    /// `body` over both keys' UTF-8 bytes in place, when both strings hold them contiguously (native strings do).
    private static func bytes(_ left: String.UTF8View, _ right: String.UTF8View, _ body: (UnsafeBufferPointer<UInt8>, UnsafeBufferPointer<UInt8>) -> Bool) -> Bool? {
        left.withContiguousStorageIfAvailable { left in right.withContiguousStorageIfAvailable { right in body(left, right) } } ?? nil
    }
}

/// The shared spelling rule of region and keyspace names.
enum NameRule {
    static let lengthMax = 64

    static func isValid(_ name: String) -> Bool {
        let bytes = name.utf8
        guard (1...lengthMax).contains(bytes.count) else { return false }
        return bytes.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }

    /// A bounded, control-free rendering of untrusted text for error messages.
    static func printable(_ text: String, limit: Int = 80) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(limit) {
            if scalar.properties.generalCategory == .control {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return text.unicodeScalars.count > limit ? out + "…" : out
    }
}
