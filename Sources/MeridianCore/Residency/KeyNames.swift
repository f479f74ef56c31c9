import Crypto
import Foundation

/// Key names of restricted keyspaces are personal data (an e-mail address as a key): wherever a key would be
/// shown (an error's message or context, a log line), a keyed hash stands in for it, the same in every region,
/// so an operator can still match records about one key without reading it.
///
/// The hash is HMAC-SHA256 over the keyspace and key, under a key derived from the cluster's `session_secret`.
/// Without one (only clusters without auth may omit it) it is derived from the cluster's name, and anyone who
/// knows the name can confirm a guessed key.
public struct KeyNameHasher: Sendable {
    /// The prefix of a hashed key name, then 24 hex digits.
    public static let prefix = "key#"
    let key: SymmetricKey

    public init(sessionSecret: String?, clusterName: String) {
        let material = sessionSecret.map { "secret|\($0)" } ?? "name|\(clusterName)"
        key = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: Array(material.utf8)), info: Array("meridian/key-name/v1".utf8),
                                     outputByteCount: 32)
    }

    /// `key#` and the first 12 bytes of the HMAC, in hex.
    public func hash(_ keyspace: KeyspaceName, _ key: Key) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Array("\(keyspace.rawValue)\0\(key.rawValue)".utf8), using: self.key)
        return Self.prefix + Array(code).prefix(12).map { byte in
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]], as: UTF8.self)
        }.joined()
    }
}

extension KeyspacePolicy {
    /// Whether this keyspace's key names are kept out of messages and logs (`classification: restricted`).
    public var keyNamesArePrivate: Bool { residency.classification == .restricted }
}

extension ClusterConfig {
    /// The hasher of restricted keyspaces' key names.
    public var keyNameHasher: KeyNameHasher { KeyNameHasher(sessionSecret: sessionSecret, clusterName: name) }

    /// How a key is shown in an error or a log line: its hash in a restricted keyspace, else the key (at most 200
    /// characters).
    public func shownKey(_ key: Key, in policy: KeyspacePolicy) -> String {
        policy.keyNamesArePrivate ? keyNameHasher.hash(policy.name, key) : String(key.rawValue.prefix(200))
    }

    /// A request path as it may be shown: a restricted keyspace's key segment (`/v1/kv|crdt|conflicts/<keyspace>/<key>`)
    /// replaced by its hash; at most 200 characters.
    public func shownPath(_ path: String) -> String {
        guard let (policy, route, segment) = privateKeyPath(path) else { return String(path.prefix(200)) }
        let key = (try? Key(String(segment).removingPercentEncodingOrSelf)).map { keyNameHasher.hash(policy.name, $0) } ?? KeyNameHasher.prefix + "invalid"
        return "/v1/\(route)/\(policy.name.rawValue)/\(key)"
    }

    /// Whether `path` names a restricted keyspace's data (`/v1/kv|crdt|conflicts/<keyspace>...`): its answers are
    /// never cached.
    public func pathNamesRestrictedKeyspace(_ path: String) -> Bool {
        let parts = path.split(separator: "/", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[1] == "v1", ["kv", "crdt", "conflicts"].contains(parts[2]),
              let name = try? KeyspaceName(String(parts[3]).removingPercentEncodingOrSelf) else { return false }
        return keyspace(name)?.keyNamesArePrivate == true
    }

    /// The restricted keyspace, route and key segment (as sent) of a path that names a key of one.
    private func privateKeyPath(_ path: String) -> (KeyspacePolicy, Substring, Substring)? {
        let parts = path.split(separator: "/", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count == 5, parts[1] == "v1", ["kv", "crdt", "conflicts"].contains(parts[2]),
              let name = try? KeyspaceName(String(parts[3]).removingPercentEncodingOrSelf), let policy = keyspace(name),
              policy.keyNamesArePrivate else {
            return nil
        }
        return (policy, parts[2], parts[4])
    }
}

extension String {
    /// The percent-decoded string (Foundation's decoding), or the string itself when it is not valid
    /// percent-encoding.
    var removingPercentEncodingOrSelf: String {
        utf8.contains(UInt8(ascii: "%")) ? (removingPercentEncoding ?? self) : self
    }
}

extension ClusterConfig {
    /// `error` as it may be shown: `key` of a restricted keyspace replaced by its hash in the message and in every
    /// context value (unchanged for other keyspaces).
    public func hiding(_ key: Key, of policy: KeyspacePolicy, in error: MeridianError) -> MeridianError {
        guard policy.keyNamesArePrivate else { return error }
        let hash = keyNameHasher.hash(policy.name, key)
        // Messages quote the key ('…', whole or its first 200 characters) or end a path with it; a context value
        // is the key. Only those forms are replaced: a short key ("a") must not eat the rest of the sentence.
        let forms = Set([key.rawValue, String(key.rawValue.prefix(200))]).sorted { $0.count > $1.count }
        func hidden(_ text: String) -> String {
            var text = text
            for form in forms {
                if text == form { return hash }
                text = text.replacing("'\(form)'", with: "'\(hash)'")
                for end in [" ", ";", "?", ")", ","] { text = text.replacing("/\(form)\(end)", with: "/\(hash)\(end)") }
                if text.hasSuffix("/\(form)") { text = String(text.dropLast(form.count)) + hash }
            }
            return text
        }
        return MeridianError(error.code, hidden(error.message), context: error.context.mapValues(hidden), applied: error.applied)
    }

    /// `error` as it may be shown for a request on `path`: when the path names a key of a restricted keyspace, that
    /// key (decoded or as sent) is replaced by its hash.
    public func hidingKey(in error: MeridianError, path: String) -> MeridianError {
        guard let (policy, _, segment) = privateKeyPath(path) else { return error }
        var shown = error
        if let key = try? Key(String(segment).removingPercentEncodingOrSelf) { shown = hiding(key, of: policy, in: shown) }
        if let sent = try? Key(String(segment)) { shown = hiding(sent, of: policy, in: shown) }
        return shown
    }
}
