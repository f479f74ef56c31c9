import Foundation
import MeridianCore

/// What the drills (`up`, `gameday`, `nemesis`, the benchmarks) ask running regions: one JSON answer, whether
/// their clocks are verified, or whether their Merkle roots agree.
public enum RegionProbe {
    /// GETs `path` from the region and decodes the JSON object; nil when it cannot be reached or does not answer 200.
    public static func json(_ endpoint: Endpoint, _ path: String, timeoutSeconds: Int64 = 2) async -> [String: Any]? {
        guard let (status, object) = await answer(endpoint, path, timeoutSeconds: timeoutSeconds), status == 200 else { return nil }
        return object
    }

    /// GETs `path` and returns the status with the decoded JSON object; nil when the region cannot be reached.
    public static func answer(_ endpoint: Endpoint, _ path: String, timeoutSeconds: Int64 = 2) async -> (status: Int, object: [String: Any]?)? {
        guard let connection = try? await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: timeoutSeconds) else { return nil }
        defer { Task { await connection.close() } }
        guard let result = try? await connection.request("GET", path) else { return nil }
        return (result.status, (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any])
    }

    /// Polls every region's status until none reports its clock `unverified` (a region takes no write before
    /// its peers have compared clocks with it), bounded by `seconds`; returns those that still do.
    public static func waitForVerifiedClocks(_ regions: [Endpoint], timeoutSeconds seconds: Double, stop: () -> Bool) async -> [Endpoint] {
        let deadline = Date().addingTimeInterval(seconds)
        var pending = regions
        while !pending.isEmpty && Date() < deadline && !stop() {
            var still: [Endpoint] = []
            for region in pending {
                let answered = await answer(region, "/v1/status")
                // Without a token for a cluster that asks for one, there is nothing to wait for: the caller says so.
                if answered?.status == 401 || answered?.status == 403 { continue }
                let state = (answered?.object?["clock"] as? [String: Any])?["state"] as? String
                if answered?.status != 200 || state == nil || state == "unverified" { still.append(region) }
            }
            pending = still
            if !pending.isEmpty { try? await Task.sleep(for: .milliseconds(100)) }
        }
        return pending
    }

    /// Polls until every region answers the same Merkle root of `keyspace` (bounded by `seconds`).
    public static func rootsAgree(_ regions: [Endpoint], keyspace: String, within seconds: Double) async -> Bool {
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
