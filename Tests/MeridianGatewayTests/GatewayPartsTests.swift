// The gateway's parts that need no cluster: the event stream parser, the ejection cap, the latency window, home
// values, and how routing reads a request (country header, address table, session, keyspace and key).
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MeridianAPI
import MeridianCore
@testable import MeridianGateway
import NIOCore
import NIOHTTP1
import Testing

@Suite struct GatewayPartsTests {
    static let yaml = """
        cluster: parts
        regions:
          - { name: us-east, client: 127.0.0.1:17101, peer: 127.0.0.1:17201 }
          - { name: eu-west, client: 127.0.0.1:17102, peer: 127.0.0.1:17202 }
          - { name: ap-southeast, client: 127.0.0.1:17103, peer: 127.0.0.1:17203 }
        session_secret: 0123456789abcdef0123456789abcdef
        keyspaces:
          - { name: profiles, topology: multi-leader, conflict: lww }
        routing:
          location_headers: [X-Country]
          country_regions: { DE: [eu-west], "*": [us-east] }
        """

    @Test func eventsAreSplitAcrossChunksAndLineEndings() throws {
        var parser = EventStreamParser()
        #expect(try parser.consume(Array("retry: 500\n\n: keepalive\n\nid: 3\nevent: topo".utf8)).isEmpty)
        let first = try parser.consume(Array("logy\ndata: {\"a\":\ndata: 1}\n\nid: 4\r\nevent: topology\r\ndata: x\r\n\r\n".utf8))
        #expect(first == [.init(name: "topology", data: "{\"a\":\n1}", id: "3"), .init(name: "topology", data: "x", id: "4")])
        // An event that never ends is bounded.
        var endless = EventStreamParser()
        let chunk = Array(("data: " + String(repeating: "x", count: 300_000) + "\n").utf8)
        var failed = false
        for _ in 0..<5 where !failed {
            do { _ = try endless.consume(chunk) } catch { failed = true }
        }
        #expect(failed)
    }

    @Test func ejectionNeverLeavesOutMoreThanItsShareOfRegions() throws {
        let config = try ClusterConfig.parse(yaml: Self.yaml, file: "parts.yaml")
        let view = ClusterView(cluster: config, logger: Logger(label: "test"))
        let now = ContinuousClock.now
        #expect(view.eject(RegionName(validated: "eu-west"), reason: "refused", now: now))
        // A second region would be two of three: more than half.
        #expect(!view.eject(RegionName(validated: "us-east"), reason: "refused", now: now))
        #expect(view.ejected(now: now) == [RegionName(validated: "eu-west")])
        #expect(!view.routeView(now: now).routable.contains(RegionName(validated: "eu-west")))
        // It expires, and an answer ends it at once.
        #expect(view.ejected(now: now + .milliseconds(config.routing.ejectionMs + 1)).isEmpty)
        view.answered(RegionName(validated: "eu-west"))
        #expect(view.ejected(now: now).isEmpty)
        // With no topology streams yet, every region is routable (fail open).
        #expect(view.routeView(now: now).routable.count == 3)
    }

    @Test func latencyPercentilesNeedEnoughSamples() {
        var window = LatencyWindow()
        for value in 1...19 { window.record(Double(value)) }
        #expect(window.percentileMs(95) == nil)
        window.record(20)
        #expect(window.percentileMs(95) == 20)
        #expect(window.percentileMs(50) == 11)
        for _ in 0..<1000 { window.record(1) }
        #expect(window.percentileMs(99) == 1 && window.averageMs == 1, "the window keeps only the latest samples")
    }

    @Test func homeValuesNameARegionOrACountry() {
        let regions = [RegionName(validated: "us-east"), RegionName(validated: "eu-west")]
        let countries = ["DE": [RegionName(validated: "eu-west")], "*": [RegionName(validated: "us-east")]]
        #expect(HomeLookups.region(from: "eu-west", regions: regions, countries: countries) == RegionName(validated: "eu-west"))
        #expect(HomeLookups.region(from: "de", regions: regions, countries: countries) == RegionName(validated: "eu-west"))
        #expect(HomeLookups.region(from: "BR", regions: regions, countries: countries) == RegionName(validated: "us-east"))
        #expect(HomeLookups.region(from: #"{"country":"DE","name":"Ada"}"#, regions: regions, countries: countries) == RegionName(validated: "eu-west"))
        #expect(HomeLookups.region(from: "mars-1", regions: regions, countries: countries) == nil)
        let cache = HomeLookups(entriesMax: 2, ttlMs: 60_000)
        cache.put("a", regions[0])
        cache.put("b", nil)
        cache.put("c", regions[1])
        #expect(cache.get("c")?.region == regions[1] && [cache.get("a"), cache.get("b")].compactMap { $0 }.count == 1, "bounded: the oldest went")
    }

    @Test func routingReadsTheRequest() async throws {
        let config = try ClusterConfig.parse(yaml: Self.yaml, file: "parts.yaml")
        var table = PrefixTable()
        let inserted = table.insert("198.51.100.0/24", country: "DE")
        #expect(inserted)
        let gateway = try Gateway(configuration: GatewayConfiguration(cluster: config, prefixes: table))
        var token = SessionToken()
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 5, logical: 0, region: RegionName(validated: "ap-southeast")), sequence: 9))
        let request = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/kv/profiles/users%2F42?consistency=eventual",
                                      headers: ["X-Country": "de", "Meridian-Session": token.encoded(with: config.sessionKey)])
        let decoded = await gateway.routeRequest(request, remoteAddress: nil)
        #expect(decoded.keyspace?.name.rawValue == "profiles" && decoded.key?.rawValue == "users/42" && decoded.kind == .read)
        #expect(decoded.consistency == .eventual && decoded.country == "DE" && decoded.countrySource == "location")
        #expect(decoded.sessionRegion == RegionName(validated: "ap-southeast"))
        // No header: the client's address through the prefix table.
        let bare = HTTPRequestHead(version: .http1_1, method: .PUT, uri: "/v1/kv/profiles/x")
        let byAddress = await gateway.routeRequest(bare, remoteAddress: "198.51.100.7")
        #expect(byAddress.country == "DE" && byAddress.countrySource == "address" && byAddress.kind == .write)
        #expect(await gateway.routeRequest(bare, remoteAddress: "192.0.2.1").country == nil)
        try await gateway.client.shutdown()
    }
}
