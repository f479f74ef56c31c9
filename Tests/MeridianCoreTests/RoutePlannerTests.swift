// The gateway's routing decisions: writes and strong reads to the one region that takes them, other reads to the
// nearest region by session, home, location and latency, health first, residency never crossed.
import MeridianCore
import PropertyBased
import Testing

@Suite struct RoutePlannerTests {
    static let yaml = """
        cluster: routing
        regions:
          - { name: us-east, client: 127.0.0.1:17101, peer: 127.0.0.1:17201 }
          - { name: eu-west, client: 127.0.0.1:17102, peer: 127.0.0.1:17202 }
          - { name: ap-southeast, client: 127.0.0.1:17103, peer: 127.0.0.1:17203 }
        keyspaces:
          - { name: accounts, topology: single-leader, leader: us-east }
          - { name: profiles, topology: multi-leader, conflict: lww }
          - { name: users, topology: geo-partitioned, home: us-east, homes: [{ prefix: "eu/", region: eu-west }] }
          - { name: eu_health, topology: multi-leader, replicas: [eu-west], residency: { regions: [eu-west], access: proxy, classification: restricted } }
          - { name: homes, topology: multi-leader }
        routing:
          country_regions: { DE: [eu-west, us-east], JP: [ap-southeast], US: [us-east], "*": [us-east] }
          home_lookup: { keyspace: homes, header: X-User }
          keyspaces: { homes: { reads: [latency] } }
        """

    let config = try! ClusterConfig.parse(yaml: Self.yaml, file: "routing.yaml")
    var us: RegionName { RegionName(validated: "us-east") }
    var eu: RegionName { RegionName(validated: "eu-west") }
    var ap: RegionName { RegionName(validated: "ap-southeast") }

    func view(down: Set<RegionName> = [], leaders: [String: RegionName] = [:], latency: [RegionName: Double] = [:]) -> RoutePlanner.RouteView {
        let regions = config.regions.map(\.name)
        return RoutePlanner.RouteView(regions: regions, routable: Set(regions).subtracting(down),
                                      leaders: Dictionary(uniqueKeysWithValues: leaders.map { (try! KeyspaceName($0.key), $0.value) }), latencyMs: latency)
    }

    func request(_ keyspace: String?, _ key: String? = "k", kind: RoutePlanner.Kind = .read, consistency: ConsistencyLevel? = nil,
                 country: String? = nil, session: RegionName? = nil, home: RegionName? = nil) -> RoutePlanner.RouteRequest {
        RoutePlanner.RouteRequest(keyspace: keyspace.flatMap { config.keyspace(try! KeyspaceName($0)) }, key: key.map { try! Key($0) },
                                  kind: kind, consistency: consistency, country: country, countrySource: country == nil ? nil : "location",
                                  sessionRegion: session, userHome: home)
    }

    func plan(_ request: RoutePlanner.RouteRequest, _ view: RoutePlanner.RouteView) -> RoutePlanner.Plan {
        RoutePlanner.plan(request, view: view, config: config.routing)
    }

    @Test func writesAndStrongReadsGoToTheLeaderInTheHighestTermOnly() {
        let write = plan(request("accounts", kind: .write, country: "JP"), view())
        #expect(write.candidates == [.init(region: us, reason: "leader")])
        // After a failover the view names the new leader.
        let moved = plan(request("accounts", kind: .write, country: "JP"), view(down: [us], leaders: ["accounts": eu]))
        #expect(moved.candidates == [.init(region: eu, reason: "leader")])
        // The leader down and no new one yet: nothing is sent, and the refusal says why.
        let refused = plan(request("accounts", kind: .write), view(down: [us]))
        #expect(refused.candidates.isEmpty && refused.refusal?.code == .leaderUnavailable)
        // A strong read (the default of single-leader keyspaces) too; a bounded one goes to the nearest.
        #expect(plan(request("accounts", country: "DE"), view()).candidates == [.init(region: us, reason: "leader")])
        let bounded = plan(request("accounts", consistency: .bounded, country: "DE"), view())
        #expect(bounded.candidates.first == .init(region: eu, reason: "location:DE"))
    }

    @Test func geoPartitionedWritesGoToTheKeysHome() {
        #expect(plan(request("users", "eu/42", kind: .write, country: "JP"), view()).candidates == [.init(region: eu, reason: "home")])
        #expect(plan(request("users", "us/7", kind: .write, country: "DE"), view()).candidates == [.init(region: us, reason: "home")])
        let down = plan(request("users", "eu/42", kind: .write), view(down: [eu]))
        #expect(down.candidates.isEmpty && down.refusal?.code == .regionUnavailable)
        // Reads of a geo-partitioned key are served by the nearest replica.
        #expect(plan(request("users", "eu/42", country: "JP"), view()).candidates.first?.region == ap)
    }

    @Test func readsGoToTheClientsCountryThenFallBackWhenItIsDown() {
        let de = plan(request("profiles", country: "DE"), view())
        #expect(de.candidates.map(\.region) == [eu, us, ap] && de.candidates[0].reason == "location:DE")
        #expect(plan(request("profiles", country: "JP"), view()).candidates.first == .init(region: ap, reason: "location:JP"))
        #expect(plan(request("profiles", country: "US"), view()).candidates.first == .init(region: us, reason: "location:US"))
        // An unmapped country uses `*`.
        #expect(plan(request("profiles", country: "BR"), view()).candidates.first == .init(region: us, reason: "location:BR"))
        // eu-west down: the next region of DE's list, and the plan says eu-west was skipped.
        let fallback = plan(request("profiles", country: "DE"), view(down: [eu]))
        #expect(fallback.candidates.map(\.region) == [us, ap] && fallback.skipped == [eu])
        // A multi-leader write goes to one region: the nearest.
        #expect(plan(request("profiles", kind: .write, country: "JP"), view()).candidates == [.init(region: ap, reason: "location:JP")])
    }

    @Test func sessionHomeAndLatencyOrderTheRest() {
        // The session's region first (its own writes are there), unless it is down.
        let session = plan(request("profiles", country: "DE", session: ap), view())
        #expect(session.candidates.first == .init(region: ap, reason: "session"))
        #expect(plan(request("profiles", country: "DE", session: ap), view(down: [ap])).candidates.first?.region == eu)
        // An eventual read does not need its session's region.
        #expect(plan(request("profiles", consistency: .eventual, country: "DE", session: ap), view()).candidates.first?.region == eu)
        // The user's home before the location.
        #expect(plan(request("profiles", country: "DE", home: ap), view()).candidates.first == .init(region: ap, reason: "user-home"))
        // No country: measured latency.
        let measured = plan(request("profiles"), view(latency: [us: 80, eu: 3, ap: 150]))
        #expect(measured.candidates.map(\.region) == [eu, us, ap] && measured.candidates.allSatisfy { $0.reason == "latency" })
        // A keyspace whose routing names only latency ignores the country.
        #expect(plan(request("homes", country: "JP"), view(latency: [us: 1, eu: 2, ap: 3])).candidates.first == .init(region: us, reason: "latency"))
        // Routes that name no keyspace go to the nearest region too.
        #expect(plan(request(nil, nil, country: "JP"), view()).candidates.first?.region == ap)
    }

    @Test func aClientsPreferredRegionsComeBeforeItsCountry() {
        var request = request("profiles", country: "DE")
        request.preferredRegions = [ap, us]
        let plan = plan(request, view())
        #expect(plan.candidates.map(\.region) == [ap, us, eu] && plan.candidates[0].reason == "preferred")
        // Not for writes to a leader.
        var write = self.request("accounts", kind: .write)
        write.preferredRegions = [ap]
        #expect(self.plan(write, view()).candidates == [.init(region: us, reason: "leader")])
    }

    @Test func everyCandidateDownFailsOpenAndSaysSo() {
        let all = plan(request("profiles", country: "DE"), view(down: [us, eu, ap]))
        #expect(all.candidates.map(\.region) == [eu, us, ap] && all.candidates.allSatisfy { $0.reason == "unverified" })
    }

    /// Residency: whatever the client's country, session, home, latency and the regions' health, a restricted
    /// keyspace's request is only ever sent to its residency regions; a write goes to one region at most.
    @Test func restrictedKeyspacesNeverLeaveTheirResidency() async {
        let countries = ["DE", "JP", "US", "BR", "FR"]
        let regions = [us, eu, ap]
        let input = zip(Gen.int(in: 0...4), Gen.int(in: 0...7), Gen.int(in: 0...3), Gen.int(in: 0...3), Gen.bool, Gen.int(in: 0...5))
        await propertyCheck(count: 400, input: input) { country, downMask, session, home, write, level in
            let down = Set(regions.enumerated().filter { downMask & (1 << $0.offset) != 0 }.map(\.element))
            let consistency: ConsistencyLevel? = level < ConsistencyLevel.allCases.count ? ConsistencyLevel.allCases[level] : nil
            let request = request("eu_health", kind: write ? .write : .read, consistency: consistency, country: countries[country],
                                  session: session < 3 ? regions[session] : nil, home: home < 3 ? regions[home] : nil)
            let result = plan(request, view(down: down, latency: [us: 1, eu: 50, ap: 2]))
            #expect(result.candidates.allSatisfy { $0.region == eu }, "\(result.candidates) for \(request)")
            #expect(result.candidates.count <= 1)
            if write { #expect(result.candidates.count <= 1) }
        }
    }

    @Test func theRoutingSectionIsValidated() {
        func problem(_ routing: String) -> String? {
            let yaml = Self.yaml.replacingOccurrences(of: "routing:\n  country_regions: { DE: [eu-west, us-east], JP: [ap-southeast], US: [us-east], \"*\": [us-east] }\n  home_lookup: { keyspace: homes, header: X-User }\n  keyspaces: { homes: { reads: [latency] } }", with: "routing:\n" + routing)
            do {
                _ = try ClusterConfig.parse(yaml: yaml, file: "routing.yaml")
                return nil
            } catch {
                return error.message
            }
        }
        #expect(config.routing.countryRegions["DE"] == [eu, us] && config.routing.homeLookup?.header == "X-User")
        #expect(config.routing.keyspaces[try! KeyspaceName("homes")]?.reads == [.latency])
        #expect(problem("  country_regions: { de: [eu-west] }")?.contains("ISO 3166") == true)
        #expect(problem("  country_regions: { DE: [mars] }")?.contains("not a region") == true)
        #expect(problem("  home_lookup: { keyspace: nowhere }")?.contains("not defined") == true)
        #expect(problem("  keyspaces: { profiles: { reads: [nearest] } }")?.contains("use one of") == true)
        #expect(problem("  gateway: nowhere")?.contains("host:port") == true)
        #expect(problem("  location_headers: [\"Bad Header\"]")?.contains("header name") == true)
        #expect(problem("  hedge: { percentile: 100 }")?.contains("out of range") == true)
        #expect(problem("  readmit_probes: 3\n  gateway: 127.0.0.1:7100") == nil)
    }
}
