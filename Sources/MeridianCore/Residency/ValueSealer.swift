import Synchronization

// The store's side of sealed values: which keyspaces are sealed, which data key a value takes, and how entries,
// key states and CRDT merges stay sealed through every step. Values arrive sealed by their origin and travel as
// bytes: the log, the replication stream, anti-entropy states, the conflicts and divergence logs never hold
// plaintext. Only a CRDT merge opens values inside the store (a delta merges into the value it joins), and seals
// the result again. Reads open at the edge.

/// How a keyspace's values are kept at rest and between regions.
public enum ValueEncryption: String, Sendable, Hashable, CaseIterable, Codable {
    /// Encrypted under a data key per subject (the default for restricted keyspaces).
    case sealed
    /// Stored as written.
    case none
}

/// One subject's data key as a region's key table holds it: wrapped under that region's key-encryption key.
public struct StoredDataKey: Sendable, Hashable {
    public let keyspace: KeyspaceName
    public let id: DataKeyID
    public let subject: Subject
    public let wrapped: WrappedDataKey

    public init(keyspace: KeyspaceName, id: DataKeyID, subject: Subject, wrapped: WrappedDataKey) {
        self.keyspace = keyspace
        self.id = id
        self.subject = subject
        self.wrapped = wrapped
    }
}

/// A data key one allowed region hands another over the authenticated peer stream; the receiver wraps it under
/// its own key-encryption key and keeps only the wrap.
public struct DataKeyGrant: Sendable, Hashable {
    public let id: DataKeyID
    public let subject: Subject
    /// The raw key (32 bytes).
    public let key: [UInt8]

    public init(id: DataKeyID, subject: Subject, key: [UInt8]) {
        self.id = id
        self.subject = subject
        self.key = key
    }
}

/// A region's key table as its store keeps it, read and written inside the store's transaction.
public protocol DataKeyTable {
    func dataKey(keyspace: KeyspaceName, id: DataKeyID) throws -> StoredDataKey?
    /// The subject's keys in this region, by id.
    func dataKeys(keyspace: KeyspaceName, subject: Subject) throws -> [StoredDataKey]
    /// Whether the key was erased here (its values answer `erased`).
    func isErased(keyspace: KeyspaceName, id: DataKeyID) throws -> Bool
    mutating func insert(_ key: StoredDataKey) throws
}

/// Seals and opens one region's values of its sealed keyspaces.
public final class ValueSealer: Sendable {
    /// Unwrapped data keys kept in memory; beyond it, the oldest half is dropped (and unwrapped again on use).
    public static let cachedKeysMax = 65_536

    public let region: RegionName
    /// The region's key-encryption keys, by epoch (a rotation changes them while the node runs).
    private let ring: Mutex<any DataKeyWrapping>
    private let subjects: [KeyspaceName: SubjectRule]
    private let random: @Sendable (Int) -> [UInt8]
    private let cache = Mutex<KeyCache>(KeyCache())

    private struct KeyCache {
        var keys: [CacheKey: DataKey] = [:]
        /// Each subject's key new values are sealed with, so a write does not look it up in the key table. Used only
        /// while `keys` holds the key, which an erasure drops inside its transaction (and `destroyed` keeps out);
        /// dropped for a subject when another key of it is installed.
        var current: [SubjectKey: DataKeyID] = [:]
        /// Keys erased since this node started: a read that unwrapped one just before the erasure does not
        /// bring it back.
        var destroyed: Set<CacheKey> = []
    }

    private struct CacheKey: Hashable {
        let keyspace: KeyspaceName
        let id: DataKeyID
    }

    private struct SubjectKey: Hashable {
        let keyspace: KeyspaceName
        let subject: Subject
    }

    /// - Parameters:
    ///   - sealed: Each sealed keyspace and how it finds a key's subject.
    ///   - random: Where data keys, their ids and wrap nonces come from (the system's secure generator in a node,
    ///     a seeded one in the simulator).
    public init(region: RegionName, keys: any DataKeyWrapping, sealed: [KeyspaceName: SubjectRule],
                random: @escaping @Sendable (Int) -> [UInt8] = ValueSealer.systemRandom) {
        self.region = region
        self.ring = Mutex(keys)
        self.subjects = sealed
        self.random = random
    }

    /// A sealer with one root key (epoch 1).
    public convenience init(region: RegionName, root: RegionRootKey, sealed: [KeyspaceName: SubjectRule],
                            random: @escaping @Sendable (Int) -> [UInt8] = ValueSealer.systemRandom) {
        self.init(region: region, keys: RegionKeyRing(single: root), sealed: sealed, random: random)
    }

    /// `count` bytes of the system's cryptographically secure generator.
    public static let systemRandom: @Sendable (Int) -> [UInt8] = { count in
        var generator = SystemRandomNumberGenerator()
        return SealedValue.randomBytes(count, using: &generator)
    }

    /// The key-encryption epoch new wraps use.
    public var epoch: UInt32 { ring.withLock { $0.currentEpoch } }

    /// The root keys as they stand, when they are the node's own (nil: another ``DataKeyWrapping`` holds them).
    public var keyRing: RegionKeyRing? { ring.withLock { $0 as? RegionKeyRing } }

    /// Takes new keys (a rotation's): new wraps use their current epoch, and epochs they lack no longer open.
    public func adopt(_ keys: any DataKeyWrapping) {
        ring.withLock { $0 = keys }
        cache.withLock {
            $0.keys = [:]
            $0.current = [:]
        }
    }

    /// A stored data key wrapped again under the current epoch (a rotation's re-wrap; the data key is unchanged).
    public func rewrapped(_ stored: StoredDataKey) throws -> StoredDataKey {
        try wrap(unwrapped(stored), id: stored.id, keyspace: stored.keyspace, subject: stored.subject)
    }

    /// Every keyspace of `config` whose values are sealed, with its subject rule.
    public static func sealedKeyspaces(_ config: ClusterConfig) -> [KeyspaceName: SubjectRule] {
        var sealed: [KeyspaceName: SubjectRule] = [:]
        for policy in config.keyspaces where policy.residency.encryption == .sealed {
            sealed[policy.name] = policy.residency.subject
        }
        return sealed
    }

    public func isSealed(_ keyspace: KeyspaceName) -> Bool { subjects[keyspace] != nil }

    /// Each epoch's root key's check value (``RegionRootKey/fingerprint``).
    public var rootChecks: [UInt32: String] { ring.withLock { $0.checkValues } }

    /// Where the root keys came from, for error messages.
    public var rootSource: String { ring.withLock { $0.source } }

    /// The subject a write to `key` belongs to: the one given (`Meridian-Subject`), else the keyspace's rule.
    public func subject(of key: Key, in keyspace: KeyspaceName, given: Subject?) throws(MeridianError) -> Subject {
        if let given { return given }
        return try (subjects[keyspace] ?? .wholeKey).subject(of: key)
    }

    // MARK: Sealing and opening

    /// `entry` with its value sealed under its subject's data key (made now when the subject has none here).
    public func sealing(_ entry: ReplicationEntry, subject: Subject, in table: inout some DataKeyTable) throws -> ReplicationEntry {
        guard isSealed(entry.keyspace), !entry.value.isEmpty else { return entry }
        let (id, dataKey) = try currentKey(keyspace: entry.keyspace, subject: subject, in: &table)
        let sealed = SealedValue.seal(entry.value, with: dataKey, id: id, keyspace: entry.keyspace, key: entry.key, version: entry.version)
        return entry.with(value: sealed)
    }

    /// A sealed value's plaintext.
    /// - Throws: `erased` when its data key was destroyed, `data_key_unavailable` when this region does not hold
    ///   it yet (a peer that does can grant it), `sealed_value_unreadable` when it does not open.
    public func open(_ value: [UInt8], keyspace: KeyspaceName, key: Key, version: Version, in table: some DataKeyTable) throws -> [UInt8] {
        guard isSealed(keyspace), !value.isEmpty else { return value }
        guard let id = SealedValue.keyID(of: value) else {
            throw MeridianError(.sealedValueUnreadable, "A stored value of sealed keyspace '\(keyspace)' at version \(version) is not sealed; it was written before the keyspace was sealed, or corrupted.",
                                context: ["keyspace": keyspace.rawValue])
        }
        return try SealedValue.open(value, with: try dataKey(keyspace: keyspace, id: id, in: table).key, keyspace: keyspace, key: key, version: version)
    }

    /// A key version with its value opened.
    public func opened(_ version: KeyVersion, keyspace: KeyspaceName, key: Key, in table: some DataKeyTable) throws -> KeyVersion {
        guard isSealed(keyspace), !version.value.isEmpty else { return version }
        return KeyVersion(version: version.version, tombstone: version.tombstone, contentType: version.contentType,
                          value: try open(version.value, keyspace: keyspace, key: key, version: version.version, in: table),
                          dependencies: version.dependencies)
    }

    /// A key state with every version's value opened.
    public func opened(_ state: KeyState, keyspace: KeyspaceName, key: Key, in table: some DataKeyTable) throws -> KeyState {
        guard isSealed(keyspace) else { return state }
        return KeyState(context: state.context, versions: try state.versions.map { try opened($0, keyspace: keyspace, key: key, in: table) })
    }

    /// The change a sealed entry makes to a key's sealed state, sealed in turn. A put or delete moves bytes only;
    /// a CRDT delta opens, merges into the opened value, and the result is sealed under the key the newest of
    /// them was sealed with (every region picks the same one, so equal states digest alike).
    public func change(applying entry: ReplicationEntry, rule: ConflictRule, to state: KeyState?, in table: some DataKeyTable) throws -> KeyChange? {
        guard isSealed(entry.keyspace), entry.operation == .merge else { return try KeyChange.applying(entry, rule: rule, to: state) }
        if let state, state.context.contains(Dot(region: entry.origin, counter: entry.sequence)) { return nil }
        var keys = KeyChoice()
        // An erased delta merges as nothing: the key's value stays, and its context takes the entry in. An erased
        // value is gone: the delta starts the value afresh, within the context held.
        guard let delta = try Self.unlessErased({ try keys.open(entry.value, version: entry.version, keyspace: entry.keyspace, key: entry.key, sealer: self, table: table) }) else {
            guard let state else { return nil }
            var context = state.context
            context.set(entry.origin, max(context[entry.origin], entry.sequence))
            return KeyChange(state: KeyState(context: context, versions: state.versions), losses: [], restored: nil)
        }
        let openState: KeyState? = try state.flatMap { state in
            try Self.unlessErased { try keys.opened(state, keyspace: entry.keyspace, key: entry.key, sealer: self, table: table) }
                ?? KeyState(context: state.context, versions: [])
        }
        guard let change = try KeyChange.applying(entry.with(value: delta), rule: rule, to: openState?.versions.isEmpty == true ? nil : openState) else { return nil }
        if let openState, openState.versions.isEmpty {
            // The erased value's context still counts what it had merged.
            let context = openState.context.merged(with: change.state.context)
            let versions = try change.state.versions.map { try keys.sealed($0, keyspace: entry.keyspace, key: entry.key) }
            return KeyChange(state: KeyState(context: context, versions: versions), losses: [], restored: nil)
        }
        let seal = { (version: KeyVersion) throws -> KeyVersion in try keys.sealed(version, keyspace: entry.keyspace, key: entry.key) }
        return KeyChange(state: KeyState(context: change.state.context, versions: try change.state.versions.map(seal)),
                         losses: try change.losses.map { ConflictLoss(loser: try seal($0.loser), winner: try seal($0.winner), rule: $0.rule) },
                         restored: change.restored)
    }

    /// Anti-entropy's merge of two sealed states under `rule`, sealed (CRDT values open, merge and seal again).
    public func merged(_ local: KeyState, with other: KeyState, rule: ConflictRule, keyspace: KeyspaceName, key: Key,
                       in table: some DataKeyTable) throws -> KeyState {
        guard isSealed(keyspace), rule == .crdt else { return local.merged(with: other, rule: rule) }
        var keys = KeyChoice()
        let context = local.context.merged(with: other.context)
        // A side whose value was erased contributes its context only.
        guard let mine = try Self.unlessErased({ try keys.opened(local, keyspace: keyspace, key: key, sealer: self, table: table) }) else {
            return KeyState(context: context, versions: try Self.unlessErased({ try keys.opened(other, keyspace: keyspace, key: key, sealer: self, table: table) }) != nil ? other.versions : local.versions)
        }
        guard let theirs = try Self.unlessErased({ try keys.opened(other, keyspace: keyspace, key: key, sealer: self, table: table) }) else {
            return KeyState(context: context, versions: local.versions)
        }
        let merged = mine.merged(with: theirs, rule: rule)
        return KeyState(context: merged.context, versions: try merged.versions.map { try keys.sealed($0, keyspace: keyspace, key: key) })
    }

    /// The data keys values of a CRDT step were sealed with, by version, so the result is sealed under the one
    /// its version came with.
    private struct KeyChoice {
        var byVersion: [Version: (DataKeyID, DataKey)] = [:]

        mutating func open(_ value: [UInt8], version: Version, keyspace: KeyspaceName, key: Key, sealer: ValueSealer, table: some DataKeyTable) throws -> [UInt8] {
            guard !value.isEmpty else { return value }
            guard let id = SealedValue.keyID(of: value) else {
                throw MeridianError(.sealedValueUnreadable, "A value of sealed keyspace '\(keyspace)' at version \(version) is not sealed.", context: ["keyspace": keyspace.rawValue])
            }
            let dataKey = try sealer.dataKey(keyspace: keyspace, id: id, in: table).key
            byVersion[version] = (id, dataKey)
            return try SealedValue.open(value, with: dataKey, keyspace: keyspace, key: key, version: version)
        }

        mutating func opened(_ state: KeyState, keyspace: KeyspaceName, key: Key, sealer: ValueSealer, table: some DataKeyTable) throws -> KeyState {
            KeyState(context: state.context, versions: try state.versions.map { version in
                KeyVersion(version: version.version, tombstone: version.tombstone, contentType: version.contentType,
                           value: try open(version.value, version: version.version, keyspace: keyspace, key: key, sealer: sealer, table: table),
                           dependencies: version.dependencies)
            })
        }

        func sealed(_ version: KeyVersion, keyspace: KeyspaceName, key: Key) throws -> KeyVersion {
            guard !version.value.isEmpty else { return version }
            guard let (id, dataKey) = byVersion[version.version] ?? byVersion.max(by: { $0.key.hlc < $1.key.hlc })?.value else {
                throw MeridianError(.internalError, "A merged value of '\(keyspace)' has no data key to be sealed with.")
            }
            return KeyVersion(version: version.version, tombstone: version.tombstone, contentType: version.contentType,
                              value: SealedValue.seal(version.value, with: dataKey, id: id, keyspace: keyspace, key: key, version: version.version),
                              dependencies: version.dependencies)
        }
    }

    // MARK: The key table

    /// The key new values of `subject` are sealed with: the lowest id among its keys here (every region that holds
    /// the same keys picks the same one), or a new key.
    /// Called only inside the store's writing transaction, which erasures and installs also run in, so the cached
    /// choice never outlives the keys it names.
    private func currentKey(keyspace: KeyspaceName, subject: Subject, in table: inout some DataKeyTable) throws -> (DataKeyID, DataKey) {
        let subjectKey = SubjectKey(keyspace: keyspace, subject: subject)
        let cached = cache.withLock { cache -> (DataKeyID, DataKey)? in
            guard let id = cache.current[subjectKey], let dataKey = cache.keys[CacheKey(keyspace: keyspace, id: id)] else { return nil }
            return (id, dataKey)
        }
        if let cached { return cached }
        let chosen: (DataKeyID, DataKey)
        if let stored = try table.dataKeys(keyspace: keyspace, subject: subject).min(by: { $0.id < $1.id }) {
            chosen = (stored.id, try unwrapped(stored))
        } else {
            let id = DataKeyID(unchecked: random(DataKeyID.byteCount))
            let dataKey = DataKey(key: .init(data: random(DataKey.byteCount)))
            try table.insert(wrap(dataKey, id: id, keyspace: keyspace, subject: subject))
            remember(dataKey, keyspace: keyspace, id: id)
            chosen = (id, dataKey)
        }
        cache.withLock { cache in
            guard !cache.destroyed.contains(CacheKey(keyspace: keyspace, id: chosen.0)) else { return }
            if cache.current.count >= Self.cachedKeysMax {
                for key in cache.current.keys.prefix(Self.cachedKeysMax / 2) { cache.current[key] = nil }
            }
            cache.current[subjectKey] = chosen.0
        }
        return chosen
    }

    /// A data key this region holds, with its subject.
    func dataKey(keyspace: KeyspaceName, id: DataKeyID, in table: some DataKeyTable) throws -> (subject: Subject?, key: DataKey) {
        if let cached = cache.withLock({ $0.keys[CacheKey(keyspace: keyspace, id: id)] }) { return (nil, cached) }
        guard let stored = try table.dataKey(keyspace: keyspace, id: id) else {
            if try table.isErased(keyspace: keyspace, id: id) {
                throw MeridianError(.erased, "This value of '\(keyspace)' belonged to a subject whose data was erased; it can no longer be read.",
                                    context: ["keyspace": keyspace.rawValue, "data_key": id.description])
            }
            throw MeridianError(.dataKeyUnavailable, "Region \(region) does not hold data key \(id) of '\(keyspace)' yet, and no region of its residency granted it; retry shortly.",
                                context: ["keyspace": keyspace.rawValue, "data_key": id.description])
        }
        return (stored.subject, try unwrapped(stored))
    }

    private func unwrapped(_ stored: StoredDataKey) throws -> DataKey {
        let cacheKey = CacheKey(keyspace: stored.keyspace, id: stored.id)
        if let cached = cache.withLock({ $0.keys[cacheKey] }) { return cached }
        let keys = ring.withLock { $0 }
        let dataKey = try keys.unwrap(stored.wrapped, region: region, keyspace: stored.keyspace, subject: stored.subject)
        remember(dataKey, keyspace: stored.keyspace, id: stored.id)
        return dataKey
    }

    private func wrap(_ dataKey: DataKey, id: DataKeyID, keyspace: KeyspaceName, subject: Subject) throws(MeridianError) -> StoredDataKey {
        var generator = ClosureRandom(random: random)
        let keys = ring.withLock { $0 }
        return StoredDataKey(keyspace: keyspace, id: id, subject: subject, wrapped: try keys.wrap(dataKey, region: region, keyspace: keyspace, subject: subject, using: &generator))
    }

    private func remember(_ dataKey: DataKey, keyspace: KeyspaceName, id: DataKeyID) {
        let cacheKey = CacheKey(keyspace: keyspace, id: id)
        cache.withLock { cache in
            guard !cache.destroyed.contains(cacheKey) else { return }
            if cache.keys.count >= Self.cachedKeysMax {
                for key in cache.keys.keys.prefix(Self.cachedKeysMax / 2) { cache.keys[key] = nil }
            }
            cache.keys[cacheKey] = dataKey
        }
    }

    /// `body`'s result, or nil when it failed because a value was erased (a listing leaves such records out).
    public static func unlessErased<T>(_ body: () throws -> T) throws -> T? {
        do {
            return try body()
        } catch let error as MeridianError where error.code == .erased {
            return nil
        }
    }

    /// Forgets which key each subject's new values take (a transaction that made keys rolled back): the next
    /// write of each subject finds its key in the table again.
    public func forgetCurrentKeys() {
        cache.withLock { $0.current = [:] }
    }

    /// Drops erased keys from memory: nothing opens or seals with them afterwards. A store calls it inside the
    /// transaction that erases them, before any later write can pick them.
    public func forget(keyspace: KeyspaceName, ids: [DataKeyID]) {
        guard !ids.isEmpty else { return }
        cache.withLock { cache in
            for id in ids {
                cache.keys[CacheKey(keyspace: keyspace, id: id)] = nil
                cache.destroyed.insert(CacheKey(keyspace: keyspace, id: id))
            }
        }
    }

    /// The ids of the data keys these sealed values need that this region does not hold (and were not erased).
    public func missing(_ values: [(keyspace: KeyspaceName, value: [UInt8])], in table: some DataKeyTable) throws -> [KeyspaceName: Set<DataKeyID>] {
        var missing: [KeyspaceName: Set<DataKeyID>] = [:]
        for (keyspace, value) in values where isSealed(keyspace) {
            guard let id = SealedValue.keyID(of: value), missing[keyspace]?.contains(id) != true,
                  cache.withLock({ $0.keys[CacheKey(keyspace: keyspace, id: id)] }) == nil,
                  try table.dataKey(keyspace: keyspace, id: id) == nil, try !table.isErased(keyspace: keyspace, id: id) else { continue }
            missing[keyspace, default: []].insert(id)
        }
        return missing
    }

    /// What this region grants a peer asking for keys: those it holds (raw, for the authenticated stream), and
    /// those it erased.
    public func grants(keyspace: KeyspaceName, ids: [DataKeyID], in table: some DataKeyTable) throws -> (granted: [DataKeyGrant], erased: [DataKeyID]) {
        var granted: [DataKeyGrant] = [], erased: [DataKeyID] = []
        for id in ids {
            if let stored = try table.dataKey(keyspace: keyspace, id: id) {
                granted.append(DataKeyGrant(id: id, subject: stored.subject, key: try unwrapped(stored).bytes))
            } else if try table.isErased(keyspace: keyspace, id: id) {
                erased.append(id)
            }
        }
        return (granted, erased)
    }

    /// Keeps granted keys, wrapped under this region's own key-encryption key.
    public func install(_ grants: [DataKeyGrant], keyspace: KeyspaceName, in table: inout some DataKeyTable) throws {
        for grant in grants where try table.dataKey(keyspace: keyspace, id: grant.id) == nil && !table.isErased(keyspace: keyspace, id: grant.id) {
            let dataKey = try DataKey(bytes: grant.key)
            try table.insert(wrap(dataKey, id: grant.id, keyspace: keyspace, subject: grant.subject))
            // The subject's choice is the lowest id it holds, and this key may be lower.
            cache.withLock { _ = $0.current.removeValue(forKey: SubjectKey(keyspace: keyspace, subject: grant.subject)) }
        }
    }
}

/// A random number generator over a byte source.
struct ClosureRandom: RandomNumberGenerator {
    let random: @Sendable (Int) -> [UInt8]

    mutating func next() -> UInt64 {
        random(8).reduce(0) { $0 << 8 | UInt64($1) }
    }
}

extension ReplicationEntry {
    /// The same entry carrying `value` instead (sealed or opened).
    public func with(value: [UInt8]) -> ReplicationEntry {
        ReplicationEntry(origin: origin, sequence: sequence, hlc: hlc, epoch: epoch, keyspace: keyspace, key: key, operation: operation,
                         contentType: contentType, value: value, dependencies: dependencies, context: context, idempotency: idempotency)
    }
}
