// The network prefix table: GeoIP CSV files parsed with clear errors, longest-prefix matches for IPv4 and IPv6.
import MeridianCore
import Testing

@Suite struct PrefixTableTests {
    static let csv = """
        network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider,country_iso_code
        203.0.113.0/24,1,1,,0,0,DE
        203.0.0.0/16,2,2,,0,0,US
        198.51.100.0/24,3,3,,0,0,JP
        10.0.0.0/8,4,4,,1,0,
        0.0.0.0/0,5,5,,0,0,BR
        2001:db8::/32,6,6,,0,0,FR
        2001:db8:ab00::/40,7,7,,0,0,SG
        """

    @Test func longestPrefixWins() throws {
        let table = try PrefixTable(csv: Self.csv, file: "geo.csv")
        #expect(table.count == 6, "the row without a country is left out")
        #expect(table.match("203.0.113.7") == .init(country: "DE", prefixLength: 24))
        #expect(table.match("203.0.7.1") == .init(country: "US", prefixLength: 16))
        #expect(table.match("198.51.100.255") == .init(country: "JP", prefixLength: 24))
        #expect(table.match("10.1.2.3") == .init(country: "BR", prefixLength: 0))
        #expect(table.match("2001:db8:ab12::1") == .init(country: "SG", prefixLength: 40))
        #expect(table.match("2001:db8:1::1") == .init(country: "FR", prefixLength: 32))
        #expect(table.match("2001:db9::1") == nil)
        #expect(table.match("::ffff:203.0.113.9") == .init(country: "DE", prefixLength: 24), "IPv4-mapped IPv6 is its IPv4 address")
        #expect(table.match("not an address") == nil)
        #expect(table.match("1.2.3.4.5") == nil)
    }

    @Test func theShortFormWithACountryColumnWorksToo() throws {
        let table = try PrefixTable(csv: "network,country\n192.0.2.0/24,jp\n", file: "short.csv")
        #expect(table.match("192.0.2.1")?.country == "JP")
    }

    @Test func badFilesAreRefusedWithTheLine() {
        func problem(_ text: String) -> String? {
            do {
                _ = try PrefixTable(csv: text, file: "geo.csv")
                return nil
            } catch {
                return error.message
            }
        }
        #expect(problem("ip,cc\n1.2.3.0/24,DE")?.contains("network") == true)
        #expect(problem("network,country\n1.2.3.0/33,DE")?.contains("geo.csv:2") == true)
        #expect(problem("network,country\n1.2.3.0/24,DE\n999.1.1.1/8,US")?.contains("geo.csv:3") == true)
        #expect(problem("network,country\n1.2.3.0/24,Germany")?.contains("country code") == true)
        #expect(problem("network,country\n1.2.3.0")?.contains("columns") == true)
        #expect(problem("network,country\n2001:db8::/129,FR")?.contains("CIDR") == true)
    }

    @Test func addressesParse() {
        #expect(PrefixTable.parseIPv4("192.0.2.1") == 0xC000_0201)
        #expect(PrefixTable.parseIPv4("256.0.0.1") == nil)
        #expect(PrefixTable.parseIPv4("01.2.3") == nil)
        #expect(PrefixTable.parseIPv6("::1").map { [$0.0, $0.1] } == [0, 1])
        #expect(PrefixTable.parseIPv6("2001:db8::").map { [$0.0, $0.1] } == [0x2001_0DB8_0000_0000, 0])
        #expect(PrefixTable.parseIPv6("1:2:3:4:5:6:7:8:9") == nil)
        #expect(PrefixTable.parseIPv6("1::2::3") == nil)
    }
}
