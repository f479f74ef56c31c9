/// The causal context a `siblings` read returns and the next write sends back (`Meridian-Context`): the
/// writes to the key the client has seen. The write replaces exactly the versions it names.
///
/// Encoded as `c1.` followed by base64url of the payload and a 16-byte HMAC-SHA256 tag (the session key,
/// over a domain byte, the keyspace, the key and the payload, so a session token never passes for a
/// context, nor one key's context for another's). Payload: `u8 count`, per origin in name order `u8
/// nameLength, name bytes, u64 sequence`. Authenticated, and clamped by the writing region to what it has
/// applied, because a context naming writes the region has not received would make them vanish on
/// arrival without ever being read or logged. Without a `session_secret` the tag only detects corruption.
public enum CausalContextToken {
    /// The header that carries it.
    public static let header = "Meridian-Context"
    static let domain: UInt8 = 0x43
    static let encodedLengthMax = 4096

    /// Encodes a context.
    public static func encode(_ context: VersionVector, keyspace: KeyspaceName, key: Key, with sessionKey: SessionKey) -> String {
        var payload: [UInt8] = []
        DependencyCodec.append(context.byRegion, to: &payload)
        return "c1." + Base64URL.encode(payload + sessionKey.tag(signed(payload, keyspace, key)))
    }

    private static func signed(_ payload: [UInt8], _ keyspace: KeyspaceName, _ key: Key) -> [UInt8] {
        [domain] + Array(keyspace.rawValue.utf8) + [0] + Array(key.rawValue.utf8) + [0] + payload
    }

    /// Decodes and authenticates a context a client sent back.
    /// - Throws: `invalid_header` when it is malformed, altered or from another cluster.
    public static func decode(_ text: String, keyspace: KeyspaceName, key: Key, with sessionKey: SessionKey) throws(MeridianError) -> VersionVector {
        func invalid(_ why: String) -> MeridianError {
            MeridianError(.invalidHeader, "The Meridian-Context value is not valid (\(why)). Send back the Meridian-Context of your last read of the key, or none.",
                          context: ["header": header])
        }
        guard text.utf8.count <= encodedLengthMax else { throw invalid("too long") }
        guard text.hasPrefix("c1.") else { throw invalid("unknown version") }
        guard let bytes = Base64URL.decode(text.utf8.dropFirst(3)), bytes.count > SessionToken.tagBytes else { throw invalid("not base64url") }
        let payload = Array(bytes.dropLast(SessionToken.tagBytes))
        guard sessionKey.matches(signed(payload, keyspace, key), tag: bytes.suffix(SessionToken.tagBytes)) else {
            throw invalid("its authentication tag does not match: it was altered, issued for another key, or by another cluster")
        }
        do {
            return VersionVector(try DependencyCodec.decode(payload))
        } catch {
            throw invalid(error.message)
        }
    }
}
