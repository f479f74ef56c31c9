import Crypto

/// Configuration changes on the audit trail. A region's configuration is its cluster file, read when its node
/// starts, and its TLS files, reloaded while it runs. At each start the node compares the file it runs with the one
/// the trail last recorded, and records a `config_change` when they differ. The record names the keyspaces added,
/// removed or changed (keyspace names only; policies are not personal data) and carries a digest of each keyspace's
/// policy, so the next start can compare against it. A TLS reload is recorded as it happens.
public enum ConfigurationAudit {
    /// The prefix of the fields holding each keyspace policy's digest.
    static let keyspacePrefix = "keyspace."

    /// A keyspace policy's digest: SHA-256 of its full description (every field, in declaration order; policies
    /// hold arrays and values only, so the description is the same in every process), first 16 bytes in hex.
    public static func digest(_ policy: KeyspacePolicy) -> String {
        Hex.encode(Array(SHA256.hash(data: Array(String(reflecting: policy).utf8))).prefix(16))
    }

    /// Each keyspace policy's digest, as a record's fields.
    static func digests(_ config: ClusterConfig) -> [String: String] {
        var digests: [String: String] = [:]
        for policy in config.keyspaces { digests[keyspacePrefix + policy.name.rawValue] = digest(policy) }
        return digests
    }

    /// The fields of the `config_change` record of a TLS reload: what the new certificates are, and the
    /// configuration in force (so every `config_change` record describes it whole).
    public static func tlsReloadFields(_ config: ClusterConfig, notValidAfter: String, trusted: [String]) -> [String: String] {
        var fields = digests(config)
        fields["event"] = "tls_reloaded"
        fields["file_digest"] = config.sourceDigest
        fields["not_valid_after"] = notValidAfter
        fields["trusted"] = trusted.joined(separator: "; ")
        return fields
    }

    /// The `config_change` record's fields for a node starting with `config`, or nil when the trail's last such
    /// record (`previous`) already describes it.
    public static func startFields(_ config: ClusterConfig, previous: AuditRecord?) -> [String: String]? {
        let digests = digests(config)
        let before = previous?.fields ?? [:]
        let previousDigests = before.filter { $0.key.hasPrefix(keyspacePrefix) }
        if before["file_digest"] == config.sourceDigest && previousDigests == digests { return nil }
        let names = { (keys: [String]) in keys.map { String($0.dropFirst(keyspacePrefix.count)) }.sorted().joined(separator: ",") }
        var fields = digests
        fields["event"] = "started"
        fields["file_digest"] = config.sourceDigest
        fields["previous_file_digest"] = before["file_digest"] ?? ""
        fields["keyspaces_added"] = names(digests.keys.filter { previousDigests[$0] == nil })
        fields["keyspaces_removed"] = names(previousDigests.keys.filter { digests[$0] == nil })
        fields["keyspaces_changed"] = names(digests.keys.filter { previousDigests[$0] != nil && previousDigests[$0] != digests[$0] })
        fields["regions"] = config.regions.map(\.name.rawValue).joined(separator: ",")
        return fields
    }
}
