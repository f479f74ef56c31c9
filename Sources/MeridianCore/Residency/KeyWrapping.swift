/// Where a region's key-encryption keys live, as the sealer uses them: it wraps each new data key under the
/// current epoch's key and unwraps stored wraps of any epoch still held. ``RegionKeyRing`` (the root key file, or
/// `MERIDIAN_ROOT_KEY`) derives the keys in the node. An external KMS or Vault's transit engine wraps and unwraps
/// without handing its key out, and fits the same requirements; the sealer caches what it unwrapped, so such a
/// service is asked once per data key, not per value.
public protocol DataKeyWrapping: Sendable {
    /// The epoch new wraps use.
    var currentEpoch: UInt32 { get }
    /// Per epoch held, a check value the store keeps on first sight and compares on every open: a node started
    /// with other keys than those its data keys were wrapped under is refused.
    var checkValues: [UInt32: String] { get }
    /// Where the keys come from (a file's path, an environment variable's name, a service), for messages.
    var source: String { get }
    /// `dataKey` wrapped for `subject` under the current epoch's key of `keyspace` in `region`.
    func wrap(_ dataKey: DataKey, region: RegionName, keyspace: KeyspaceName, subject: Subject,
              using generator: inout some RandomNumberGenerator) throws(MeridianError) -> WrappedDataKey
    /// - Throws: `sealed_value_unreadable` when the wrap's epoch is no longer held (a rotation destroyed it) or the
    ///   wrap does not open.
    func unwrap(_ wrapped: WrappedDataKey, region: RegionName, keyspace: KeyspaceName, subject: Subject) throws(MeridianError) -> DataKey
}

extension RegionKeyRing: DataKeyWrapping {
    public var currentEpoch: UInt32 { current }

    public var checkValues: [UInt32: String] { roots.mapValues(\.fingerprint) }

    public func wrap(_ dataKey: DataKey, region: RegionName, keyspace: KeyspaceName, subject: Subject,
                     using generator: inout some RandomNumberGenerator) throws(MeridianError) -> WrappedDataKey {
        guard let root = roots[current] else {
            throw MeridianError(.invalidConfig, "\(source) holds no root key of epoch \(current).", context: ["file": source])
        }
        return root.keyEncryptionKey(region: region, keyspace: keyspace, epoch: current).wrap(dataKey, subject: subject, using: &generator)
    }

    public func unwrap(_ wrapped: WrappedDataKey, region: RegionName, keyspace: KeyspaceName, subject: Subject) throws(MeridianError) -> DataKey {
        guard let root = roots[wrapped.epoch] else {
            throw MeridianError(.sealedValueUnreadable, "The data key of a subject of '\(keyspace)' is wrapped in key epoch \(wrapped.epoch), whose root key a rotation destroyed: this copy of the key table (an old backup) can no longer be opened.",
                                context: ["keyspace": keyspace.rawValue, "epoch": String(wrapped.epoch)])
        }
        return try root.keyEncryptionKey(region: region, keyspace: keyspace, epoch: wrapped.epoch).unwrap(wrapped, subject: subject)
    }
}
