import Crypto

/// The key that authenticates session tokens. Every region of a cluster derives the same one, from the
/// cluster file's `session_secret` (or, without one, from the cluster's name, which only detects corruption).
public struct SessionKey: Sendable {
    let key: SymmetricKey
    /// HMAC keyed once (its padded inner and outer keys hashed): each tag copies it and hashes only the payload.
    private let keyed: HMAC<SHA256>
    /// Whether the key comes from a secret (tokens cannot be forged) or from the cluster name (they can).
    public let isSecret: Bool

    /// A key from a shared secret.
    public init(secret: String) {
        key = SymmetricKey(data: SHA256.hash(data: Array("meridian-session-key|".utf8) + Array(secret.utf8)))
        keyed = HMAC(key: key)
        isSecret = true
    }

    /// A key anyone who knows the cluster's name can derive: tokens are checked for corruption only.
    public init(clusterName: String) {
        key = SymmetricKey(data: SHA256.hash(data: Array("meridian-session-name|".utf8) + Array(clusterName.utf8)))
        keyed = HMAC(key: key)
        isSecret = false
    }

    func tag(_ payload: [UInt8]) -> [UInt8] {
        var mac = keyed
        mac.update(data: payload)
        return mac.finalize().withUnsafeBytes { Array($0.prefix(SessionToken.tagBytes)) }
    }

    /// Compares in constant time, so response timing does not reveal how much of a forged tag was right.
    func matches(_ payload: [UInt8], tag: ArraySlice<UInt8>) -> Bool {
        let expected = self.tag(payload)
        guard tag.count == expected.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(expected, tag) { difference |= a ^ b }
        return difference == 0
    }
}

/// What a client has seen: for each origin region, the highest log sequence it has read or written, and
/// the highest timestamp among them (so the session's next write orders after everything it saw).
///
/// Encoded as `v2.` followed by base64url of the payload and a 16-byte HMAC-SHA256 tag over it. Payload:
/// `u8 count`, per origin in name order `u8 nameLength, name bytes, u64 sequence`, then `u8 hasClock` and,
/// when 1, `u64 physicalMs, u32 logical, u8 nameLength, name bytes` (integers big-endian). Opaque to
/// clients: they echo it back in `Meridian-Session`; a changed byte fails the tag.
public struct SessionToken: Sendable, Hashable {
    /// The most origins a token names.
    public static let originsMax = 32
    /// The longest encoded token accepted, in characters.
    public static let encodedLengthMax = 4096
    /// Bytes of the authentication tag.
    static let tagBytes = 16

    /// Highest seen sequence per origin.
    public private(set) var seen: [RegionName: UInt64]
    /// The highest timestamp of anything the session saw.
    public private(set) var clock: HLCTimestamp?

    /// Creates a token that has seen nothing.
    public init() { seen = [:] }

    /// Records that the client saw `version`.
    public mutating func observe(_ version: Version) {
        seen[version.origin] = max(seen[version.origin] ?? 0, version.sequence)
        clock = max(clock ?? version.hlc, version.hlc)
    }

    /// Records that the client saw everything in `dependencies` (what a value it read depended on).
    public mutating func observe(dependencies: [RegionName: UInt64]) {
        for (origin, sequence) in dependencies { seen[origin] = max(seen[origin] ?? 0, sequence) }
    }

    /// The encoded, authenticated form.
    public func encoded(with key: SessionKey) -> String {
        var bytes: [UInt8] = [UInt8(min(seen.count, Self.originsMax))]
        for (origin, sequence) in seen.sorted(by: { $0.key < $1.key }).prefix(Self.originsMax) {
            let name = Array(origin.rawValue.utf8)
            bytes.append(UInt8(name.count))
            bytes += name
            withUnsafeBytes(of: sequence.bigEndian) { bytes += $0 }
        }
        if let clock {
            bytes.append(1)
            withUnsafeBytes(of: clock.physicalMs.bigEndian) { bytes += $0 }
            withUnsafeBytes(of: clock.logical.bigEndian) { bytes += $0 }
            let name = Array(clock.region.rawValue.utf8)
            bytes.append(UInt8(name.count))
            bytes += name
        } else {
            bytes.append(0)
        }
        return "v2." + Base64URL.encode(bytes + key.tag(bytes))
    }

    /// Decodes and authenticates a token a client sent back.
    /// - Throws: `MeridianError` `invalid_header` when the token is malformed, from another cluster, or altered.
    public init(decoding text: String, key: SessionKey) throws(MeridianError) {
        func invalid(_ why: String) -> MeridianError {
            MeridianError(.invalidHeader, "The Meridian-Session token is not valid (\(why)). Send back the token a Meridian response gave you, or none.",
                          context: ["header": "Meridian-Session"])
        }
        guard text.utf8.count <= Self.encodedLengthMax else { throw invalid("too long") }
        guard text.hasPrefix("v2.") else { throw invalid("unknown version") }
        guard let bytes = Base64URL.decode(text.utf8.dropFirst(3)), bytes.count > Self.tagBytes else { throw invalid("not base64url") }
        let payload = Array(bytes.dropLast(Self.tagBytes))
        guard key.matches(payload, tag: bytes.suffix(Self.tagBytes)) else {
            throw invalid("its authentication tag does not match: it was altered, or issued by another cluster")
        }
        var reader = ByteReader(payload[...])
        guard let count = reader.readUInt8(), Int(count) <= Self.originsMax else { throw invalid("bad origin count") }
        var seen: [RegionName: UInt64] = [:]
        for _ in 0..<count {
            guard let length = reader.readUInt8(), let name = reader.take(Int(length)),
                  let text = String(validating: name, as: UTF8.self), let origin = try? RegionName(text),
                  let sequence = reader.readUInt64(), seen[origin] == nil, (1...UInt64(Int64.max)).contains(sequence)
            else { throw invalid("bad origin entry") }
            seen[origin] = sequence
        }
        self.seen = seen
        switch reader.readUInt8() {
        case 0: clock = nil
        case 1:
            guard let physicalMs = reader.readUInt64(), let logical = reader.readUInt32(), let length = reader.readUInt8(),
                  let name = reader.take(Int(length)), let text = String(validating: name, as: UTF8.self), let region = try? RegionName(text),
                  physicalMs <= UInt64(Int64.max)
            else { throw invalid("bad clock") }
            clock = HLCTimestamp(physicalMs: physicalMs, logical: logical, region: region)
        default: throw invalid("bad clock flag")
        }
        guard reader.remaining == 0 else { throw invalid("trailing bytes") }
    }
}

/// Unpadded base64url (RFC 4648 §5). Written out because the token is built on every response, and going
/// through Foundation's base64 plus three string replacements measured at 5% of a GET's CPU time.
public enum Base64URL {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count * 4 + 2) / 3)
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value = UInt32(0)
            for (offset, byte) in chunk.enumerated() { value |= UInt32(byte) << (16 - 8 * offset) }
            for position in 0...chunk.count { out.append(alphabet[Int((value >> (18 - 6 * position)) & 0x3F)]) }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: some Collection<UInt8>) -> [UInt8]? {
        guard text.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(text.count * 3 / 4)
        var buffer = UInt32(0)
        var bits = 0
        for character in text {
            let digit: UInt8
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): digit = character - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): digit = character - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = character - UInt8(ascii: "0") + 52
            case UInt8(ascii: "-"): digit = 62
            case UInt8(ascii: "_"): digit = 63
            default: return nil
            }
            buffer = (buffer << 6) | UInt32(digit)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((buffer >> UInt32(bits)) & 0xFF))
            }
        }
        // Leftover bits must be zero, or two encodings would decode to the same bytes.
        guard buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return out
    }
}
