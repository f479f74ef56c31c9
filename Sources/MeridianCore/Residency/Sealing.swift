import Crypto
import Foundation

// Sealed values (issue 21): a restricted keyspace's values are encrypted with AES-GCM under a data key per
// subject, bound to their keyspace, key and version; each region wraps the data keys under a key-encryption key
// derived from its own root key, which never leaves it. Destroying a subject's wrapped data keys everywhere
// makes every copy of its values unreadable at once (erasure). These are the primitives; the store seals at
// commit, when the version is known. Randomness (data keys, their ids, wrap nonces) comes from the caller's
// generator, so the core stays deterministic under the simulator's seeded one; shells pass
// `SystemRandomNumberGenerator`, which is cryptographically secure. A value's nonce is synthetic (see
// ``SealedValue``).

/// Who a sealed value belongs to: the unit of erasure (a user, a customer). 1 to 255 bytes of UTF-8, no control
/// characters.
public struct Subject: Hashable, Sendable, CustomStringConvertible {
    public static let utf8BytesMax = 255
    public let rawValue: String

    public init(_ rawValue: String) throws(MeridianError) {
        guard !rawValue.isEmpty, rawValue.utf8.count <= Self.utf8BytesMax,
              !rawValue.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw MeridianError(.invalidHeader, "A subject must have 1 to \(Self.utf8BytesMax) bytes of UTF-8 and no control characters.")
        }
        self.rawValue = rawValue
    }

    public var description: String { rawValue }
}

/// How a keyspace finds a key's subject: the key's first segments (`users/42/email`, split by `/` to depth 2, has
/// subject `users/42`), or the whole key. Encoded as `{"separator": "/", "segments": 2}` or `"key"`.
public enum SubjectRule: Hashable, Sendable, Codable {
    /// The first `depth` segments of the key split by `separator` (the whole key when it has fewer).
    case keyPrefix(separator: Character, depth: Int)
    /// The key itself.
    case wholeKey

    /// The subject of `key`.
    public func subject(of key: Key) throws(MeridianError) -> Subject {
        switch self {
        case .wholeKey:
            return try Subject(key.rawValue)
        case .keyPrefix(let separator, let depth):
            let segments = key.rawValue.split(separator: separator, maxSplits: depth, omittingEmptySubsequences: false)
            let prefix = segments.count > depth ? segments[..<depth].joined(separator: String(separator)) : key.rawValue
            return try Subject(prefix)
        }
    }

    private enum CodingKeys: String, CodingKey {
        case separator, segments
    }

    public init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self), text == "key" {
            self = .wholeKey
            return
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let separator = try container.decode(String.self, forKey: .separator)
        guard separator.count == 1, let character = separator.first else {
            throw DecodingError.dataCorruptedError(forKey: .separator, in: container, debugDescription: "a separator is one character")
        }
        self = .keyPrefix(separator: character, depth: try container.decode(Int.self, forKey: .segments))
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .wholeKey:
            var container = encoder.singleValueContainer()
            try container.encode("key")
        case .keyPrefix(let separator, let depth):
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(String(separator), forKey: .separator)
            try container.encode(depth, forKey: .segments)
        }
    }
}

/// A region's root key: 32 random bytes that never leave the region. Every key-encryption key of the region is
/// derived from it.
public struct RegionRootKey: Sendable {
    public static let byteCount = 32
    let key: SymmetricKey
    /// Where the key came from (a file's path, an environment variable's name).
    public let source: String

    /// - Throws: `invalid_config` unless `bytes` has exactly 32 bytes.
    public init(bytes: [UInt8], source: String) throws(MeridianError) {
        guard bytes.count == Self.byteCount else {
            throw MeridianError(.invalidConfig, "\(source): a region root key has \(Self.byteCount) bytes; this one has \(bytes.count). Make one with `head -c 32 /dev/urandom | base64`.")
        }
        key = SymmetricKey(data: bytes)
        self.source = source
    }

    /// The key in base64, for the root key file only.
    var base64: String { key.withUnsafeBytes { Data($0).base64EncodedString() } }

    /// Reads the base64 text of a root key (a file's content or an environment variable's value).
    /// - Throws: `invalid_config` naming `source` when it is not base64 of 32 bytes.
    public init(base64 text: String, source: String) throws(MeridianError) {
        guard let data = Data(base64Encoded: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw MeridianError(.invalidConfig, "\(source): a region root key is 32 random bytes in base64; this is not base64. Make one with `head -c 32 /dev/urandom | base64`.")
        }
        try self.init(bytes: Array(data), source: source)
    }

    /// A check value of the key (HKDF, 16 bytes in hex), stored beside the data: a node started with another root
    /// key than the one its data keys were wrapped with is told so at once, naming the file.
    public var fingerprint: String {
        let derived = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array("meridian/root-check/v1".utf8), outputByteCount: 16)
        return derived.withUnsafeBytes { Hex.encode($0) }
    }

    /// `count` bytes derived from the key for `info` (HKDF-SHA256): a key of the region's other than its
    /// key-encryption keys (its audit signing key).
    public func derivedBytes(info: String, count: Int) -> [UInt8] {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array(info.utf8), outputByteCount: count).withUnsafeBytes { Array($0) }
    }

    /// The key-encryption key of `keyspace` in `region` for `epoch` (HKDF-SHA256; a rotation starts a new epoch).
    public func keyEncryptionKey(region: RegionName, keyspace: KeyspaceName, epoch: UInt32) -> KeyEncryptionKey {
        let info = Array("meridian/kek/v1\0\(region.rawValue)\0\(keyspace.rawValue)\0\(epoch)".utf8)
        let derived = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: info, outputByteCount: 32)
        return KeyEncryptionKey(key: derived, region: region, keyspace: keyspace, epoch: epoch)
    }
}

/// A region's root keys, one per key-encryption epoch (the newest wraps new data keys; a rotation adds an epoch,
/// re-wraps every data key under it, then destroys the older ones), and the material its audit signing key comes
/// from, which rotations keep. Its text form, as the root key file holds it: `epoch N <base64>` lines and one
/// `audit <base64>` line; a file of one base64 line is epoch 1, and the audit material is derived from it.
public struct RegionKeyRing: Sendable {
    public private(set) var roots: [UInt32: RegionRootKey]
    /// What the region's audit signing key is derived from.
    public let audit: RegionRootKey
    /// Where the keys came from (a file's path, an environment variable's name).
    public let source: String

    /// The epoch new wraps use: the newest.
    public var current: UInt32 { roots.keys.max() ?? 1 }

    /// One root key, epoch 1; the audit material is derived from it (one-way, so keeping it after a rotation
    /// destroyed epoch 1 reveals nothing of that epoch's key).
    public init(single root: RegionRootKey) {
        roots = [1: root]
        audit = try! RegionRootKey(bytes: root.derivedBytes(info: "meridian/audit-material/v1", count: RegionRootKey.byteCount), source: root.source)
        source = root.source
    }

    init(roots: [UInt32: RegionRootKey], audit: RegionRootKey, source: String) {
        self.roots = roots
        self.audit = audit
        self.source = source
    }

    /// Reads the text form.
    /// - Throws: `invalid_config` naming `source` and the line at fault.
    public init(text: String, source: String) throws(MeridianError) {
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if lines.count == 1, !lines[0].contains(" ") {
            self.init(single: try RegionRootKey(base64: lines[0], source: source))
            return
        }
        var roots: [UInt32: RegionRootKey] = [:]
        var audit: RegionRootKey?
        for (index, line) in lines.enumerated() {
            let parts = line.split(separator: " ")
            if parts.count == 3, parts[0] == "epoch", let epoch = UInt32(parts[1]), epoch >= 1, roots[epoch] == nil {
                roots[epoch] = try RegionRootKey(base64: String(parts[2]), source: "\(source) line \(index + 1)")
            } else if parts.count == 2, parts[0] == "audit", audit == nil {
                audit = try RegionRootKey(base64: String(parts[1]), source: "\(source) line \(index + 1)")
            } else {
                throw MeridianError(.invalidConfig, "\(source) line \(index + 1): a root key file holds 'epoch N <base64>' lines and one 'audit <base64>' line (or a single base64 key); this line is neither.",
                                    context: ["file": source])
            }
        }
        guard let audit, !roots.isEmpty else {
            throw MeridianError(.invalidConfig, "\(source): a root key file with epochs needs at least one 'epoch N <base64>' line and one 'audit <base64>' line.", context: ["file": source])
        }
        self.init(roots: roots, audit: audit, source: source)
    }

    /// The text form (the file's content).
    public var text: String {
        roots.sorted { $0.key < $1.key }.map { "epoch \($0.key) \($0.value.base64)" }.joined(separator: "\n") + "\naudit \(audit.base64)\n"
    }

    /// The ring with a new epoch after the current one, its root key `bytes`.
    public func rotated(bytes: [UInt8]) throws(MeridianError) -> RegionKeyRing {
        var next = roots
        next[current + 1] = try RegionRootKey(bytes: bytes, source: source)
        return RegionKeyRing(roots: next, audit: audit, source: source)
    }

    /// The ring without the epochs before `epoch`: their root keys are destroyed.
    public func retiring(below epoch: UInt32) -> RegionKeyRing {
        RegionKeyRing(roots: roots.filter { $0.key >= epoch }, audit: audit, source: source)
    }
}

/// Wraps and unwraps a region's data keys of one keyspace in one epoch.
public struct KeyEncryptionKey: Sendable {
    let key: SymmetricKey
    public let region: RegionName
    public let keyspace: KeyspaceName
    public let epoch: UInt32

    /// A data key wrapped for `subject`: bound to this region, keyspace, epoch and subject (a wrap cannot be
    /// moved to another subject or region).
    public func wrap(_ dataKey: DataKey, subject: Subject, using generator: inout some RandomNumberGenerator) -> WrappedDataKey {
        let raw = dataKey.key.withUnsafeBytes { Array($0) }
        do {
            let box = try AES.GCM.seal(raw, using: key, nonce: SealedValue.nonce(using: &generator), authenticating: associatedData(subject))
            return WrappedDataKey(epoch: epoch, bytes: Array(box.combined!))
        } catch {
            preconditionFailure("AES-GCM sealing with a 256-bit key and a random nonce cannot fail: \(error)")
        }
    }

    /// - Throws: `sealed_value_unreadable` when the wrap was not made by this key for `subject` (another region's
    ///   or epoch's, a wrong root key, or corrupted bytes).
    public func unwrap(_ wrapped: WrappedDataKey, subject: Subject) throws(MeridianError) -> DataKey {
        guard wrapped.epoch == epoch else {
            throw MeridianError(.sealedValueUnreadable, "The data key of subject '\(subject)' in '\(keyspace)' is wrapped in key epoch \(wrapped.epoch), not \(epoch).")
        }
        do {
            let box = try AES.GCM.SealedBox(combined: wrapped.bytes)
            let raw = try AES.GCM.open(box, using: key, authenticating: associatedData(subject))
            guard raw.count == DataKey.byteCount else { throw CryptoKitError.incorrectKeySize }
            return DataKey(key: SymmetricKey(data: raw))
        } catch {
            throw MeridianError(.sealedValueUnreadable, "The data key of subject '\(subject)' in '\(keyspace)' does not open with \(region)'s key of epoch \(epoch): the root key is not the one it was wrapped with, or the wrap is corrupted.")
        }
    }

    private func associatedData(_ subject: Subject) -> [UInt8] {
        Array("meridian/wrap/v1\0\(region.rawValue)\0\(keyspace.rawValue)\0\(epoch)\0\(subject.rawValue)".utf8)
    }
}

/// A subject's data key as one region keeps it: wrapped under that region's key-encryption key.
public struct WrappedDataKey: Hashable, Sendable {
    public let epoch: UInt32
    /// Nonce, ciphertext and tag (AES-GCM's combined form).
    public let bytes: [UInt8]

    public init(epoch: UInt32, bytes: [UInt8]) {
        self.epoch = epoch
        self.bytes = bytes
    }
}

/// The name of one data key: 16 random bytes, written in front of every value sealed with it, so a region can
/// tell which key a value needs (and fetch it from a peer, or know it was erased) without opening it.
public struct DataKeyID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let byteCount = 16
    public let bytes: [UInt8]

    /// - Throws: `codec_invalid_field` unless `bytes` has exactly 16 bytes.
    public init(bytes: [UInt8]) throws(MeridianError) {
        guard bytes.count == Self.byteCount else {
            throw MeridianError(.codecInvalidField, "A data key id has \(Self.byteCount) bytes; this one has \(bytes.count).")
        }
        self.bytes = bytes
    }

    /// Parses the hex form `description` writes.
    public init?(hex: some StringProtocol) {
        guard let bytes = Hex.decode(hex), bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    /// A new id of `generator`'s bytes.
    public static func generate(using generator: inout some RandomNumberGenerator) -> DataKeyID {
        DataKeyID(unchecked: SealedValue.randomBytes(byteCount, using: &generator))
    }

    init(unchecked bytes: [UInt8]) { self.bytes = bytes }

    public var description: String { Hex.encode(bytes) }

    public static func < (a: DataKeyID, b: DataKeyID) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
}

/// The key a subject's values are sealed with.
public struct DataKey: Sendable {
    public static let byteCount = 32
    let key: SymmetricKey
    /// The key synthetic nonces are computed under, derived once per data key (not per seal).
    let nonceKey: SymmetricKey

    /// A new data key of `generator`'s bytes.
    public static func generate(using generator: inout some RandomNumberGenerator) -> DataKey {
        DataKey(key: SymmetricKey(data: SealedValue.randomBytes(byteCount, using: &generator)))
    }

    /// A data key from its raw bytes (as a peer granted it over the authenticated stream).
    /// - Throws: `codec_invalid_field` unless `bytes` has exactly 32 bytes.
    public init(bytes: [UInt8]) throws(MeridianError) {
        guard bytes.count == Self.byteCount else {
            throw MeridianError(.codecInvalidField, "A data key has \(Self.byteCount) bytes; this one has \(bytes.count).")
        }
        self.init(key: SymmetricKey(data: bytes))
    }

    init(key: SymmetricKey) {
        self.key = key
        nonceKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array("meridian/nonce/v1".utf8), outputByteCount: 32)
    }

    /// The raw bytes, for granting the key to another allowed region over the authenticated peer stream only.
    public var bytes: [UInt8] { key.withUnsafeBytes { Array($0) } }
}

/// A sealed value's bytes: a format byte, the data key's id, then AES-GCM's nonce, ciphertext and tag, bound to
/// the value's keyspace, key and version (a sealed value moved to another key or version does not open).
///
/// The nonce is synthetic: an HMAC, under a key derived from the data key, of the bound fields and the plaintext.
/// Two regions sealing the same value of the same version with the same data key write the same bytes (a CRDT's
/// merged value, which every region computes on its own, digests alike for anti-entropy), and two different
/// plaintexts get different nonces, so a nonce never repeats under one key for two messages.
public enum SealedValue {
    /// The first byte of every sealed value (format 2).
    public static let format: UInt8 = 0xA2
    /// Bytes a sealed value adds to its plaintext: the format byte, the 16-byte key id, a 12-byte nonce and a
    /// 16-byte tag.
    public static let overheadBytes = 1 + DataKeyID.byteCount + 12 + 16

    public static func seal(_ plaintext: [UInt8], with dataKey: DataKey, id: DataKeyID, keyspace: KeyspaceName, key: Key, version: Version) -> [UInt8] {
        let bound = associatedData(keyspace, key, version, id)
        var mac = HMAC<SHA256>(key: dataKey.nonceKey)
        mac.update(data: bound)
        mac.update(data: plaintext)
        do {
            let nonce = try AES.GCM.Nonce(data: Array(mac.finalize()).prefix(12))
            let box = try AES.GCM.seal(plaintext, using: dataKey.key, nonce: nonce, authenticating: bound)
            return [format] + id.bytes + Array(box.combined!)
        } catch {
            preconditionFailure("AES-GCM sealing with a 256-bit key and a 12-byte nonce cannot fail: \(error)")
        }
    }

    /// The id of the data key a sealed value needs (nil: the bytes are not a sealed value).
    public static func keyID(of sealed: [UInt8]) -> DataKeyID? {
        guard sealed.count >= overheadBytes, sealed[0] == format else { return nil }
        return DataKeyID(unchecked: Array(sealed[1...DataKeyID.byteCount]))
    }

    /// - Throws: `sealed_value_unreadable` when the bytes are not a sealed value of this keyspace, key and version
    ///   under `dataKey`.
    public static func open(_ sealed: [UInt8], with dataKey: DataKey, keyspace: KeyspaceName, key: Key, version: Version) throws(MeridianError) -> [UInt8] {
        guard let id = keyID(of: sealed) else {
            throw MeridianError(.sealedValueUnreadable, "The stored value of \(keyspace) at version \(version) is not a sealed value (format \(sealed.first.map { String($0) } ?? "none")).")
        }
        do {
            let box = try AES.GCM.SealedBox(combined: sealed[(1 + DataKeyID.byteCount)...])
            return Array(try AES.GCM.open(box, using: dataKey.key, authenticating: associatedData(keyspace, key, version, id)))
        } catch {
            throw MeridianError(.sealedValueUnreadable, "The stored value of \(keyspace) at version \(version) does not open with its subject's data key: it was moved from another key or version, or corrupted.")
        }
    }

    /// `count` bytes of `generator`'s.
    public static func randomBytes(_ count: Int, using generator: inout some RandomNumberGenerator) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    static func nonce(using generator: inout some RandomNumberGenerator) -> AES.GCM.Nonce {
        do {
            return try AES.GCM.Nonce(data: randomBytes(12, using: &generator))
        } catch {
            preconditionFailure("a 12-byte AES-GCM nonce is always valid: \(error)")
        }
    }

    /// What a sealed value is bound to: its keyspace, key, version, and the id of its data key.
    private static func associatedData(_ keyspace: KeyspaceName, _ key: Key, _ version: Version, _ id: DataKeyID) -> [UInt8] {
        var bytes = Array("meridian/value/v2\0\(keyspace.rawValue)\0".utf8) + id.bytes
        bytes += withUnsafeBytes(of: UInt32(key.rawValue.utf8.count).bigEndian, Array.init)
        bytes += Array(key.rawValue.utf8)
        bytes += withUnsafeBytes(of: version.hlc.physicalMs.bigEndian, Array.init)
        bytes += withUnsafeBytes(of: version.hlc.logical.bigEndian, Array.init)
        bytes += Array("\0\(version.hlc.region.rawValue)\0".utf8)
        bytes += withUnsafeBytes(of: version.sequence.bigEndian, Array.init)
        return bytes
    }
}
