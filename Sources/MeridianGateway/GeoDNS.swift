import Foundation
import HTTPTypes
import Hummingbird
import MeridianCore
import MeridianHTTP

/// GeoDNS: the gateway answers PowerDNS's remote backend (its HTTP connector, in its default RESTful form) for the
/// names of `routing.dns`, each with the address of the best healthy region for the client's subnet. PowerDNS does
/// the DNS; Meridian only decides the answer, in memory, from the same view the proxy routes by.
///
/// The client's subnet is what PowerDNS passes as `real-remote` (the EDNS Client Subnet, with
/// `edns-subnet-processing=yes`); the answer's `scopeMask` is the length of the prefix that decided it (at most
/// the subnet's own length), so resolvers keep it per subnet; 0 when no prefix matched (the answer is everyone's).
extension Gateway {
    /// The serial of the zone's SOA (answers change with health, not with a zone transfer).
    static let dnsSerial = 1

    func addDNSRoutes(to router: Router<GatewayRequestContext>) {
        guard let dns = configuration.cluster.routing.dns else { return }
        router.get("/dnsapi/lookup/:qname/:qtype") { request, context in
            let qname = Self.dnsName(context.parameters.get("qname") ?? "")
            let qtype = (context.parameters.get("qtype") ?? "").uppercased()
            let subnet = request.headers[HTTPField.Name("X-RemoteBackend-Real-Remote")!]
            return Self.dnsResult(self.lookup(qname: qname, qtype: qtype, subnet: subnet, dns: dns))
        }
        router.get("/dnsapi/getAllDomains") { _, _ in
            Self.dnsResult([["id": 1, "zone": dns.zone, "kind": "native", "serial": Self.dnsSerial] as [String: any Sendable]])
        }
        router.get("/dnsapi/getAllDomainMetadata/:zone") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"result":{}}"#)))
        }
        // Everything else the backend API has (DNSSEC, updates, transfers) is not served: `false` says so.
        router.get("/dnsapi/**") { _, _ in Self.dnsResult(nil) }
        router.post("/dnsapi/**") { _, _ in Self.dnsResult(nil) }
    }

    /// The records at `qname` (PowerDNS asks with qtype ANY and picks what it needs; SOA while finding the zone).
    func lookup(qname: String, qtype: String, subnet: String?, dns: RoutingConfig.DNS) -> [[String: any Sendable]]? {
        var records: [[String: any Sendable]] = []
        if qname == dns.zone && (qtype == "SOA" || qtype == "ANY") {
            records.append(["qtype": "SOA", "qname": dns.zone, "ttl": 60, "auth": true,
                            "content": "ns1.\(dns.zone) hostmaster.\(dns.zone) \(Self.dnsSerial) 3600 600 86400 \(dns.ttlSeconds)"])
        }
        if dns.names.contains(qname) && (qtype == "ANY" || qtype == "A" || qtype == "AAAA") {
            if let (region, scope) = bestRegion(subnet: subnet, dns: dns), let address = dns.addresses[region] {
                let type = PrefixTable.parseIPv4(address) != nil ? "A" : "AAAA"
                if qtype == "ANY" || qtype == type {
                    records.append(["qtype": type, "qname": qname, "content": address, "ttl": dns.ttlSeconds, "auth": true, "scopeMask": scope])
                }
                metrics.recordDNSAnswer(region: region.rawValue)
            }
        }
        return records.isEmpty ? nil : records
    }

    /// The best routable region with an address for a client subnet (`addr/len`), and the answer's scope.
    func bestRegion(subnet: String?, dns: RoutingConfig.DNS) -> (RegionName, Int)? {
        var country: String?
        var scope = 0
        if let subnet, let prefixes = configuration.prefixes {
            let parts = subnet.split(separator: "/")
            let address = parts.first.map(String.init) ?? subnet
            let length = parts.count == 2 ? Int(parts[1]) ?? 0 : (address.contains(":") ? 128 : 32)
            if length > 0, let match = prefixes.match(address) {
                country = match.country
                scope = min(match.prefixLength, length)
            }
        }
        var view = view.routeView()
        view.regions = view.regions.filter { dns.addresses[$0] != nil }
        let plan = RoutePlanner.plan(RoutePlanner.RouteRequest(keyspace: nil, key: nil, kind: .read, country: country, countrySource: "address"),
                                     view: view, config: configuration.cluster.routing)
        return plan.candidates.first.map { ($0.region, country == nil ? 0 : scope) }
    }

    /// A name from the backend's path: percent-decoded (PowerDNS encodes dots too), lower case, absolute.
    static func dnsName(_ raw: String) -> String {
        var name = (raw.removingPercentEncoding ?? raw).lowercased()
        if !name.hasSuffix(".") { name += "." }
        return name
    }

    /// `{"result": ...}`: the records, or `false` for none.
    static func dnsResult(_ result: (any Sendable)?) -> Response {
        let object: [String: Any] = ["result": result ?? false]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data(#"{"result":false}"#.utf8)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
