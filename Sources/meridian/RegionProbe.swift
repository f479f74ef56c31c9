import Foundation
import MeridianClient
import MeridianCore

/// What the drills (`gameday`, `nemesis`) ask a running region: one JSON answer, or whether the regions'
/// Merkle roots agree.
enum RegionProbe {
    /// GETs `path` from the region and decodes the JSON object; nil when it cannot be reached or does not answer 200.
    static func json(_ endpoint: Endpoint, _ path: String, timeoutSeconds: Int64 = 2) async -> [String: Any]? {
        guard let connection = try? await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: timeoutSeconds) else { return nil }
        defer { Task { await connection.close() } }
        guard let result = try? await connection.request("GET", path), result.status == 200 else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any]
    }

    /// Polls until every region answers the same Merkle root of `keyspace` (bounded by `seconds`).
    static func rootsAgree(_ regions: [Endpoint], keyspace: String, within seconds: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            var roots: Set<String> = []
            for region in regions {
                roots.insert(await json(region, "/v1/admin/merkle/\(keyspace)")?["root"] as? String ?? "unreachable")
            }
            if roots.count == 1 && !roots.contains("unreachable") { return true }
            try? await Task.sleep(for: .milliseconds(200))
        } while Date() < deadline
        return false
    }
}
