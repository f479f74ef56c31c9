import Foundation

/// Network prefixes and their countries, from the CSV files free GeoIP databases ship (a header row naming a
/// `network` column in CIDR notation and a country column: `country_iso_code`, `country_code` or `country`), and
/// the longest-prefix match of an address against them. IPv4 and IPv6.
public struct PrefixTable: Sendable {
    /// The most rows a table holds.
    public static let rowsMax = 5_000_000

    /// IPv4 networks by prefix length: network → country.
    private var v4: [Int: [UInt32: String]] = [:]
    /// IPv6 networks by prefix length: network (high, low) → country.
    private var v6: [Int: [IPv6Key: String]] = [:]
    private var v4Lengths: [Int] = []
    private var v6Lengths: [Int] = []
    public private(set) var count = 0

    struct IPv6Key: Hashable, Sendable {
        let high: UInt64
        let low: UInt64
    }

    public init() {}

    /// A match: the country and the length of the prefix that matched (the DNS answer's scope).
    public struct Match: Sendable, Hashable {
        public let country: String
        public let prefixLength: Int

        public init(country: String, prefixLength: Int) {
            self.country = country
            self.prefixLength = prefixLength
        }
    }

    /// Parses a CSV file's text.
    /// - Throws: `MeridianError` (`invalid_config`) naming the line and what is wrong.
    public init(csv text: String, file: String) throws(MeridianError) {
        var lines = text.split(omittingEmptySubsequences: true) { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }.makeIterator()
        guard let header = lines.next() else { return }
        let columns = header.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard let network = columns.firstIndex(of: "network"),
              let country = ["country_iso_code", "country_code", "country"].lazy.compactMap({ columns.firstIndex(of: $0) }).first else {
            throw MeridianError(.invalidConfig, "\(file): the first line must name the columns, among them `network` (CIDR) and a country column (country_iso_code, country_code or country); it is '\(header.prefix(200))'.")
        }
        var lineNumber = 1
        for line in lines {
            lineNumber += 1
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count > max(network, country) else {
                throw MeridianError(.invalidConfig, "\(file):\(lineNumber): expected \(columns.count) columns, found \(fields.count).")
            }
            let code = fields[country].trimmingCharacters(in: CharacterSet(charactersIn: " \"")).uppercased()
            // Rows without a country (anonymous proxies, satellite providers) are left out.
            guard !code.isEmpty else { continue }
            guard RoutingConfig.isCountry(code), code != "*" else {
                throw MeridianError(.invalidConfig, "\(file):\(lineNumber): '\(code.prefix(20))' is not a two-letter country code.")
            }
            let cidr = fields[network].trimmingCharacters(in: CharacterSet(charactersIn: " \""))
            guard insert(cidr, country: code) else {
                throw MeridianError(.invalidConfig, "\(file):\(lineNumber): '\(cidr.prefix(60))' is not a network in CIDR notation (203.0.113.0/24, 2001:db8::/32).")
            }
            guard count <= Self.rowsMax else {
                throw MeridianError(.invalidConfig, "\(file): more than \(Self.rowsMax) networks; use a country-level database.")
            }
        }
    }

    /// Adds one network. Returns false when `cidr` is not one.
    public mutating func insert(_ cidr: String, country: String) -> Bool {
        let parts = cidr.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let length = Int(parts[1]) else { return false }
        if let address = Self.parseIPv4(parts[0]) {
            guard (0...32).contains(length) else { return false }
            let network = length == 0 ? 0 : address & (UInt32.max << (32 - length))
            if v4[length] == nil { v4Lengths = (v4Lengths + [length]).sorted(by: >) }
            v4[length, default: [:]][network] = country
        } else if let (high, low) = Self.parseIPv6(parts[0]) {
            guard (0...128).contains(length) else { return false }
            let key = Self.mask(high, low, length)
            if v6[length] == nil { v6Lengths = (v6Lengths + [length]).sorted(by: >) }
            v6[length, default: [:]][key] = country
        } else {
            return false
        }
        count += 1
        return true
    }

    /// The longest prefix holding `address` (dotted IPv4 or IPv6 text), if any.
    public func match(_ address: some StringProtocol) -> Match? {
        if let ip = Self.parseIPv4(address) {
            for length in v4Lengths {
                let network = length == 0 ? 0 : ip & (UInt32.max << (32 - length))
                if let country = v4[length]?[network] { return Match(country: country, prefixLength: length) }
            }
            return nil
        }
        if let (high, low) = Self.parseIPv6(address) {
            // An IPv4-mapped address (::ffff:a.b.c.d) is its IPv4 address.
            if high == 0, low >> 32 == 0xFFFF { return match(Self.formatIPv4(UInt32(truncatingIfNeeded: low))) }
            for length in v6Lengths {
                if let country = v6[length]?[Self.mask(high, low, length)] { return Match(country: country, prefixLength: length) }
            }
        }
        return nil
    }

    static func mask(_ high: UInt64, _ low: UInt64, _ length: Int) -> IPv6Key {
        if length == 0 { return IPv6Key(high: 0, low: 0) }
        if length <= 64 { return IPv6Key(high: high & (UInt64.max << (64 - length)), low: 0) }
        return IPv6Key(high: high, low: length == 128 ? low : low & (UInt64.max << (128 - length)))
    }

    static func formatIPv4(_ value: UInt32) -> String {
        "\(value >> 24).\((value >> 16) & 0xFF).\((value >> 8) & 0xFF).\(value & 0xFF)"
    }

    /// Dotted-quad IPv4, or nil.
    public static func parseIPv4(_ text: some StringProtocol) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.utf8.count), part.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    /// IPv6 text (with `::` and an optional trailing dotted IPv4), or nil.
    public static func parseIPv6(_ text: some StringProtocol) -> (UInt64, UInt64)? {
        guard text.contains(":"), text.utf8.count <= 45 else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String) -> [UInt16]? {
            guard !part.isEmpty else { return [] }
            var result: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if index == pieces.count - 1, piece.contains("."), let v4 = parseIPv4(piece) {
                    result += [UInt16(v4 >> 16), UInt16(v4 & 0xFFFF)]
                } else {
                    guard (1...4).contains(piece.utf8.count), let group = UInt16(piece, radix: 16) else { return nil }
                    result.append(group)
                }
            }
            return result
        }
        guard let head = groups(halves[0]) else { return nil }
        var all: [UInt16]
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count <= 7 else { return nil }
            all = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard head.count == 8 else { return nil }
            all = head
        }
        let high = all[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = all[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return (high, low)
    }
}
