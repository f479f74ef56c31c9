import Foundation
import MeridianCore

/// What each route of the v1 API needs from its caller: the HTTP contract's half of authorization. The core's
/// ``AccessRule`` decides whether a token's scopes cover it.
public enum RouteAccess {
    /// The requirement of `method` on `path` (the raw, percent-encoded path), with `query` giving the query's parameters.
    /// Unknown paths need a valid token, so a caller without one cannot map the API.
    public static func requirement(method: String, path: String, query: (String) -> String?, open: Set<AuthConfig.OpenRoute>) -> AccessRequirement {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        let parts = Array(segments)
        switch parts.first.map(String.init) {
        case "health" where parts.count == 1, "ready" where parts.count == 1:
            return .open
        case "metrics" where parts.count == 1:
            return open.contains(.metrics) ? .open : .authenticated
        case "openapi.yaml" where parts.count == 1:
            return open.contains(.openapi) ? .open : .authenticated
        case "v1":
            break
        default:
            return .authenticated
        }
        guard parts.count >= 2 else { return .authenticated }
        let keyspace = parts.count >= 3 ? keyspaceName(parts[2]) : nil
        switch (String(parts[1]), method) {
        case ("kv", "GET") where parts.count == 3:
            return scoped(.read, keyspace, .listing(prefix: query("prefix") ?? ""))
        case ("kv", "GET"), ("crdt", "GET"):
            return scoped(.read, keyspace, key(parts))
        case ("kv", "PUT"), ("kv", "DELETE"), ("crdt", "POST"):
            return scoped(.write, keyspace, key(parts))
        case ("conflicts", "GET") where parts.count == 3:
            return scoped(.read, keyspace, query("key").map { .key($0) } ?? .keyspace)
        case ("admin", _) where parts.count == 4 && (parts[2] == "merkle" || parts[2] == "erase"):
            return scoped(.admin, keyspaceName(parts[3]), .keyspace)
        case ("admin", _), ("divergence", _), ("audit", _):
            return .operation(.admin, keyspace: nil, target: .keyspace)
        default:
            // status, keyspaces, failovers, and whatever is not a route (answered 404 once authenticated).
            return .authenticated
        }
    }

    private static func scoped(_ operation: AccessOperation, _ keyspace: KeyspaceName?, _ target: AccessRequirement.Target) -> AccessRequirement {
        // A path naming no valid keyspace is refused by the route itself, once the caller is known.
        guard let keyspace else { return .authenticated }
        return .operation(operation, keyspace: keyspace, target: target)
    }

    private static func keyspaceName(_ segment: Substring) -> KeyspaceName? {
        let text = String(segment)
        return try? KeyspaceName(text.contains("%") ? text.removingPercentEncoding ?? text : text)
    }

    /// The key is every segment after the keyspace, percent-decoded (keys may hold `/`).
    private static func key(_ parts: [Substring]) -> AccessRequirement.Target {
        guard parts.count >= 4 else { return .keyspace }
        let encoded = parts[3...].joined(separator: "/")
        return .key(encoded.contains("%") ? encoded.removingPercentEncoding ?? "" : encoded)
    }
}
