import Foundation

/// What `meridian residency check` looks for, and how: a needle (a marker value written into a restricted keyspace,
/// or one of its key names) in each form it could take on its way into a file, a log line or an answer.
public enum ResidencyScan {
    /// One form of a needle.
    public struct Form: Sendable, Hashable {
        /// `raw`, `hex`, `HEX`, `base64`, `json` or `percent`.
        public let encoding: String
        public let bytes: [UInt8]
    }

    /// A needle found somewhere.
    public struct Hit: Sendable, Hashable, CustomStringConvertible {
        public let needle: String
        public let encoding: String
        /// The byte offset of the first occurrence.
        public let offset: Int

        public var description: String { "\(encoding) at byte \(offset)" }
    }

    /// The shortest needle worth looking for: shorter ones would be found by chance.
    public static let needleBytesMin = 8

    /// The forms `needle` can take: its UTF-8 bytes, hex (both cases), base64 at each of the three alignments it
    /// can start at inside a longer encoded run (the characters that depend on neighbouring bytes left off), JSON
    /// string escaping, and percent-encoding.
    public static func forms(of needle: String) -> [Form] {
        let raw = Array(needle.utf8)
        var forms = [Form(encoding: "raw", bytes: raw)]
        let hex = Hex.encode(raw)
        forms.append(Form(encoding: "hex", bytes: Array(hex.utf8)))
        forms.append(Form(encoding: "HEX", bytes: Array(hex.uppercased().utf8)))
        for shift in 0..<3 {
            // Encode behind `shift` filler bytes, then keep only the characters that the needle's bytes alone decide.
            let encoded = Array(Data([UInt8](repeating: 0, count: shift) + raw).base64EncodedString().utf8)
            let lead = shift == 0 ? 0 : (shift == 1 ? 2 : 3)
            let decided = (shift + raw.count) / 3 * 4
            if decided - lead >= needleBytesMin { forms.append(Form(encoding: "base64", bytes: Array(encoded[lead..<decided]))) }
        }
        var json = ""
        for scalar in needle.unicodeScalars {
            switch scalar {
            case "\"": json += "\\\""
            case "\\": json += "\\\\"
            case "/": json += "\\/"
            case _ where scalar.value < 0x20 || scalar.value > 0x7E:
                json += scalar.utf16.map { String(format: "\\u%04x", $0) }.joined()
            default: json.unicodeScalars.append(scalar)
            }
        }
        if json != needle { forms.append(Form(encoding: "json", bytes: Array(json.utf8))) }
        let percent = needle.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? needle
        if percent != needle { forms.append(Form(encoding: "percent", bytes: Array(percent.utf8))) }
        return forms
    }

    /// Every form of `needle` found in `haystack`.
    public static func find(_ needle: String, in haystack: Data) -> [Hit] {
        forms(of: needle).compactMap { form in
            haystack.range(of: Data(form.bytes)).map { Hit(needle: needle, encoding: form.encoding, offset: $0.lowerBound - haystack.startIndex) }
        }
    }
}
