import Foundation

/// What a client has seen: for each origin region, the highest log sequence it has read or written.
///
/// Encoded as `v1.` followed by base64url of `u8 count` and, per origin in name order, `u8 nameLength,
/// name bytes, u64 sequence` (big-endian). Opaque to clients: they echo it back in `Meridian-Session`.
public struct SessionToken: Sendable, Hashable {
    /// The most origins a token names.
    public static let originsMax = 32
    /// The longest encoded token accepted, in characters.
    public static let encodedLengthMax = 4096

    /// Highest seen sequence per origin.
    public private(set) var seen: [RegionName: UInt64]

    /// Creates a token that has seen nothing.
    public init() { seen = [:] }

    /// Records that the client saw `version`.
    public mutating func observe(_ version: Version) {
        seen[version.origin] = max(seen[version.origin] ?? 0, version.sequence)
    }

    /// The encoded form.
    public var encoded: String {
        var bytes: [UInt8] = [UInt8(seen.count)]
        for (origin, sequence) in seen.sorted(by: { $0.key < $1.key }) {
            let name = Array(origin.rawValue.utf8)
            bytes.append(UInt8(name.count))
            bytes += name
            withUnsafeBytes(of: sequence.bigEndian) { bytes += $0 }
        }
        let base64 = Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return "v1." + base64
    }

    /// Decodes a token a client sent back.
    /// - Throws: `MeridianError` `invalid_header` when the token is malformed.
    public init(decoding text: String) throws(MeridianError) {
        func invalid(_ why: String) -> MeridianError {
            MeridianError(.invalidHeader, "The Meridian-Session token is not valid (\(why)). Send back the token a Meridian response gave you, or none.",
                          context: ["header": "Meridian-Session"])
        }
        guard text.utf8.count <= Self.encodedLengthMax else { throw invalid("too long") }
        guard text.hasPrefix("v1.") else { throw invalid("unknown version") }
        var base64 = String(text.dropFirst(3)).replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        guard let data = Data(base64Encoded: base64) else { throw invalid("not base64url") }
        var reader = ByteReader(Array(data)[...])
        guard let count = reader.readUInt8(), Int(count) <= Self.originsMax else { throw invalid("bad origin count") }
        var seen: [RegionName: UInt64] = [:]
        for _ in 0..<count {
            guard let length = reader.readUInt8(), let name = reader.take(Int(length)),
                  let text = String(validating: name, as: UTF8.self), let origin = try? RegionName(text),
                  let sequence = reader.readUInt64(), seen[origin] == nil
            else { throw invalid("bad origin entry") }
            seen[origin] = sequence
        }
        guard reader.remaining == 0 else { throw invalid("trailing bytes") }
        self.seen = seen
    }
}
