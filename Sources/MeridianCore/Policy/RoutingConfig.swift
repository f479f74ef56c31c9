/// How clients are routed to regions, as the cluster file's `routing` section sets it: the health verdicts'
/// hysteresis, and the gateway's policies (``RoutePlanner``).
public struct RoutingConfig: Sendable, Hashable {
    /// One way of finding the region nearest a client, for reads (and multi-leader writes).
    public enum ReadPreference: String, Sendable, Hashable, CaseIterable {
        /// The region the client's session token last saw a write from (its reads need not wait there).
        case session
        /// The user's home region, from `home_lookup`.
        case userHome = "user-home"
        /// The client's country (a location header, or its address in the `ip_prefixes` table), through
        /// `country_regions`.
        case location
        /// The gateway's measured latency to each region.
        case latency

        /// The order a keyspace uses unless `routing.keyspaces` names one.
        public static let defaultOrder: [ReadPreference] = [.session, .userHome, .location, .latency]
    }

    /// A keyspace's own routing.
    public struct KeyspaceRouting: Sendable, Hashable {
        /// The preferences for reads, in order.
        public var reads: [ReadPreference]

        public init(reads: [ReadPreference]) {
            self.reads = reads
        }
    }

    /// Where a user's home region is looked up (the documents' `UserHomeRegion`): the value of the key named by the
    /// request header `header` in `keyspace`, a region name or a country (mapped by `country_regions`).
    public struct HomeLookup: Sendable, Hashable {
        public var keyspace: KeyspaceName
        public var header: String
        /// How long the gateway keeps a looked-up home, in ms.
        public var ttlMs: Int
        /// The most homes the gateway keeps.
        public var entriesMax: Int
    }

    /// GeoDNS through PowerDNS's remote backend (`dns`): the names the gateway answers, each with the address of
    /// the best healthy region for the client's subnet.
    public struct DNS: Sendable, Hashable {
        /// The zone, absolute and lower case (`geo.example.com.`).
        public var zone: String
        /// The names answered, absolute and lower case (in the file, `api` is `api.` + the zone, `@` the apex, and a
        /// name ending in `.` is absolute).
        public var names: [String]
        /// The answers' TTL in seconds: how long resolvers keep an answer.
        public var ttlSeconds: Int
        /// Each region's public address (IPv4 or IPv6), answered as an A or AAAA record.
        public var addresses: [RegionName: String]
    }

    /// Consecutive good probes (one per heartbeat interval) a region marked down needs before it is routed to
    /// again (`readmit_probes`).
    public var readmitProbes: Int
    public var dns: DNS?
    /// The gateway's listen address (`gateway`), unless `meridian gateway --listen` names one.
    public var gateway: Endpoint?
    /// Request headers that carry the client's country, first present wins (`location_headers`).
    public var locationHeaders: [String]
    /// A CSV file of network prefixes and their countries (`ip_prefixes`), relative to the cluster file.
    public var ipPrefixes: String?
    /// Take the client's address from `X-Forwarded-For` (behind a proxy the gateway trusts), not the connection.
    public var trustForwardedFor: Bool
    /// Countries (ISO 3166 alpha-2, upper case; `*` for any other) to regions, nearest first (`country_regions`).
    public var countryRegions: [String: [RegionName]]
    public var homeLookup: HomeLookup?
    /// Per-keyspace routing (`keyspaces`).
    public var keyspaces: [KeyspaceName: KeyspaceRouting]
    /// A read not answered within this percentile of its region's latency is also sent to the next region
    /// (`hedge.percentile`; 0 turns hedging off).
    public var hedgePercentile: Double
    /// Hedged requests are at most this share of reads, in percent (`hedge.extra_percent_max`).
    public var hedgeExtraPercentMax: Double
    /// How long a region that refused a connection is left out, in ms (`ejection.duration_ms`).
    public var ejectionMs: Int
    /// The largest share of the regions the gateway ejects at once, in percent (`ejection.regions_percent_max`).
    public var ejectionRegionsPercentMax: Int

    public init(readmitProbes: Int = 10) {
        self.readmitProbes = readmitProbes
        dns = nil
        gateway = nil
        locationHeaders = ["CloudFront-Viewer-Country", "CF-IPCountry"]
        ipPrefixes = nil
        trustForwardedFor = false
        countryRegions = [:]
        homeLookup = nil
        keyspaces = [:]
        hedgePercentile = 95
        hedgeExtraPercentMax = 5
        ejectionMs = 2_000
        ejectionRegionsPercentMax = 50
    }

    /// Whether `text` is a country code as `country_regions` names them.
    public static func isCountry(_ text: String) -> Bool {
        text == "*" || (text.utf8.count == 2 && text.utf8.allSatisfy { (0x41...0x5A).contains($0) })
    }
}

extension ConfigParser {
    func parseRouting(_ value: YAMLValue, regions: [RegionName], keyspaces: [KeyspacePolicy]) throws(ConfigProblem) -> RoutingConfig {
        let fields = try value.mapping(allowed: ["readmit_probes", "gateway", "location_headers", "ip_prefixes", "trust_forwarded_for", "country_regions",
                                                 "home_lookup", "keyspaces", "hedge", "ejection", "dns"])
        var config = RoutingConfig()
        if let probes = fields["readmit_probes"] { config.readmitProbes = try probes.int(in: 1...1_000) }
        if let gateway = fields["gateway"] { config.gateway = try gateway.endpoint() }
        if let headers = fields["location_headers"] {
            var names: [String] = []
            for item in try headers.sequence() {
                let name = try item.string()
                guard (1...64).contains(name.utf8.count), name.utf8.allSatisfy({ $0 == 0x2D || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) }) else {
                    throw ConfigProblem(path: item.path, message: "a header name of 1 to 64 letters, digits and '-'")
                }
                names.append(name)
            }
            guard names.count <= 8 else { throw ConfigProblem(path: headers.path, message: "name at most 8 headers") }
            config.locationHeaders = names
        }
        if let prefixes = fields["ip_prefixes"] {
            let text = try prefixes.string()
            guard !text.isEmpty, text.utf8.count <= 4096, !text.contains("\0") else {
                throw ConfigProblem(path: prefixes.path, message: "a file path of 1 to 4096 bytes (a CSV of network,country rows)")
            }
            config.ipPrefixes = (directory.map { !text.hasPrefix("/") && !$0.isEmpty ? "\($0)/\(text)" : text }) ?? text
        }
        if let trust = fields["trust_forwarded_for"] { config.trustForwardedFor = try trust.bool() }
        if let countries = fields["country_regions"] {
            let entries = try countries.entries(what: "countries to regions")
            guard entries.count <= 300 else { throw ConfigProblem(path: countries.path, message: "map at most 300 countries") }
            for (country, list) in entries {
                guard RoutingConfig.isCountry(country) else {
                    throw ConfigProblem(path: countries.child(country), message: "'\(country)' is not a country code: use ISO 3166 alpha-2 in upper case (DE, JP, US) or * for every other country")
                }
                let named = try list.regionList(in: regions)
                guard !named.isEmpty else { throw ConfigProblem(path: list.path, message: "name at least one region") }
                config.countryRegions[country] = named
            }
        }
        if let lookup = fields["home_lookup"] {
            let lookupFields = try lookup.mapping(allowed: ["keyspace", "header", "ttl_ms", "entries_max"])
            guard let keyspaceValue = lookupFields["keyspace"] else {
                throw ConfigProblem(path: lookup.child("keyspace"), message: "name the keyspace that maps users to their home region or country")
            }
            let name = try keyspaceValue.string()
            guard let keyspace = keyspaces.first(where: { $0.name.rawValue == name }) else {
                throw ConfigProblem(path: keyspaceValue.path, message: "keyspace '\(name)' is not defined in this file")
            }
            var header = "Meridian-User"
            if let headerValue = lookupFields["header"] {
                header = try headerValue.string()
                guard (1...64).contains(header.utf8.count) else { throw ConfigProblem(path: headerValue.path, message: "a header name of 1 to 64 characters") }
            }
            config.homeLookup = RoutingConfig.HomeLookup(
                keyspace: keyspace.name, header: header,
                ttlMs: try lookupFields["ttl_ms"]?.int(in: 0...86_400_000) ?? 60_000,
                entriesMax: try lookupFields["entries_max"]?.int(in: 1...10_000_000) ?? 100_000)
        }
        if let perKeyspace = fields["keyspaces"] {
            for (name, item) in try perKeyspace.entries(what: "keyspaces to their routing") {
                guard let keyspace = keyspaces.first(where: { $0.name.rawValue == name }) else {
                    throw ConfigProblem(path: perKeyspace.child(name), message: "keyspace '\(name)' is not defined in this file")
                }
                let itemFields = try item.mapping(allowed: ["reads"])
                var reads: [RoutingConfig.ReadPreference] = []
                for preference in try itemFields["reads"]?.sequence() ?? [] {
                    let chosen = try preference.choice(RoutingConfig.ReadPreference.self)
                    guard !reads.contains(chosen) else { throw ConfigProblem(path: preference.path, message: "'\(chosen.rawValue)' is listed twice") }
                    reads.append(chosen)
                }
                config.keyspaces[keyspace.name] = RoutingConfig.KeyspaceRouting(reads: reads.isEmpty ? RoutingConfig.ReadPreference.defaultOrder : reads)
            }
        }
        if let hedge = fields["hedge"] {
            let hedgeFields = try hedge.mapping(allowed: ["percentile", "extra_percent_max"])
            if let percentile = hedgeFields["percentile"] { config.hedgePercentile = try percentile.double(in: 0...99.9) }
            if let extra = hedgeFields["extra_percent_max"] { config.hedgeExtraPercentMax = try extra.double(in: 0...100) }
        }
        if let ejection = fields["ejection"] {
            let ejectionFields = try ejection.mapping(allowed: ["duration_ms", "regions_percent_max"])
            if let duration = ejectionFields["duration_ms"] { config.ejectionMs = try duration.int(in: 100...600_000) }
            if let share = ejectionFields["regions_percent_max"] { config.ejectionRegionsPercentMax = try share.int(in: 0...100) }
        }
        if let dns = fields["dns"] { config.dns = try parseDNS(dns, regions: regions) }
        return config
    }

    private func parseDNS(_ value: YAMLValue, regions: [RegionName]) throws(ConfigProblem) -> RoutingConfig.DNS {
        let fields = try value.mapping(allowed: ["zone", "names", "ttl_s", "addresses"])
        /// A name ending in `.` is absolute; any other is relative to `origin` (as in a zone file).
        func hostname(_ item: YAMLValue, origin: String? = nil) throws(ConfigProblem) -> String {
            var text = try item.string().lowercased()
            if !text.hasSuffix(".") { text += origin.map { "." + $0 } ?? "." }
            let labels = text.dropLast().split(separator: ".", omittingEmptySubsequences: false)
            guard text.utf8.count <= 254, !labels.isEmpty, labels.allSatisfy({ label in
                (1...63).contains(label.utf8.count) && label.utf8.allSatisfy { $0 == 0x2D || (0x30...0x39).contains($0) || (0x61...0x7A).contains($0) }
            }) else {
                throw ConfigProblem(path: item.path, message: "'\(text)' is not a DNS name (labels of 1 to 63 letters, digits and '-')")
            }
            return text
        }
        guard let zoneValue = fields["zone"] else { throw ConfigProblem(path: value.child("zone"), message: "name the zone the gateway answers for (geo.example.com)") }
        let zone = try hostname(zoneValue)
        var names: [String] = []
        for item in try fields["names"]?.sequence() ?? [] {
            let name = try item.string() == "@" ? zone : try hostname(item, origin: zone)
            guard name == zone || name.hasSuffix("." + zone) else {
                throw ConfigProblem(path: item.path, message: "'\(name)' is outside the zone \(zone)")
            }
            guard !names.contains(name) else { throw ConfigProblem(path: item.path, message: "'\(name)' is listed twice") }
            names.append(name)
        }
        guard !names.isEmpty, names.count <= 100 else { throw ConfigProblem(path: value.child("names"), message: "name 1 to 100 names (use @ for the zone's apex)") }
        guard let addressesValue = fields["addresses"] else {
            throw ConfigProblem(path: value.child("addresses"), message: "give each region's public address (an IPv4 or IPv6 address)")
        }
        var addresses: [RegionName: String] = [:]
        for (name, item) in try addressesValue.entries(what: "regions to addresses") {
            let region = try YAMLValue(node: .scalar(.init(name)), path: addressesValue.child(name)).region(in: regions)
            let address = try item.string()
            guard PrefixTable.parseIPv4(address) != nil || PrefixTable.parseIPv6(address) != nil else {
                throw ConfigProblem(path: item.path, message: "'\(address)' is not an IPv4 or IPv6 address")
            }
            addresses[region] = address
        }
        guard !addresses.isEmpty else { throw ConfigProblem(path: addressesValue.path, message: "give at least one region's address") }
        return RoutingConfig.DNS(zone: zone, names: names, ttlSeconds: try fields["ttl_s"]?.int(in: 0...86_400) ?? 5, addresses: addresses)
    }
}
