/// How a keyspace picks the visible value among concurrent writes to one key.
public enum ConflictRule: Sendable, Hashable {
    /// Highest HLC wins; region name breaks ties (the HLC order includes it).
    case lww
    /// Lowest HLC wins.
    case fww
    /// The write from the region listed first wins; regions not listed rank after every listed one, and
    /// two writes of equally ranked regions fall back to `lww`.
    case regionPriority([RegionName])
    /// Values are CRDT states; concurrent operations merge, so no operation loses (only a value created
    /// concurrently with another type, which the conflicts log records when a replicated delta settles it).
    case crdt
    /// Concurrent versions are all kept and returned; the client resolves them.
    case siblings

    /// The rule a keyspace's policy names. Keyspaces with a single writer per key resolve by `lww`, which
    /// only matters across a failover (two leaders' terms) and orders them by HLC like everything else.
    public init(policy: KeyspacePolicy) {
        switch policy.conflict {
        case .none, .lww: self = .lww
        case .fww: self = .fww
        case .regionPriority: self = .regionPriority(policy.priority ?? [])
        case .crdt: self = .crdt
        case .siblings: self = .siblings
        }
    }

    /// The rule's name as the cluster file and the conflicts log spell it.
    public var name: String {
        switch self {
        case .lww: ConflictPolicy.lww.rawValue
        case .fww: ConflictPolicy.fww.rawValue
        case .regionPriority: ConflictPolicy.regionPriority.rawValue
        case .crdt: ConflictPolicy.crdt.rawValue
        case .siblings: ConflictPolicy.siblings.rawValue
        }
    }

    /// Whether the rule picks one value and discards the others (each discarded value is a loss to log).
    public var discardsLosers: Bool {
        switch self {
        case .lww, .fww, .regionPriority: true
        case .crdt, .siblings: false
        }
    }

    /// Whether `a` beats `b`, a write concurrent with it. A strict total order over distinct writes, so
    /// every region picks the same winner from the same set, whatever order the writes arrived in.
    public func prefers(_ a: KeyVersion, over b: KeyVersion) -> Bool {
        switch self {
        case .siblings:
            // The version that stands for a set of siblings is a live one when there is one.
            if a.tombstone != b.tombstone { return !a.tombstone }
            return a.version.hlc > b.version.hlc
        case .lww, .crdt:
            return a.version.hlc > b.version.hlc
        case .fww:
            return a.version.hlc < b.version.hlc
        case .regionPriority(let order):
            let rankA = order.firstIndex(of: a.version.origin) ?? order.count
            let rankB = order.firstIndex(of: b.version.origin) ?? order.count
            if rankA != rankB { return rankA < rankB }
            return a.version.hlc > b.version.hlc
        }
    }
}

/// One write of a key as a region keeps it: its version, what it stored, and the session dependencies
/// it carries.
public struct KeyVersion: Sendable, Hashable {
    /// The write's version (origin, log sequence, HLC).
    public let version: Version
    /// Whether the write deleted the key.
    public let tombstone: Bool
    /// The media type of `value`.
    public let contentType: String
    /// The bytes stored (empty for a tombstone).
    public let value: [UInt8]
    /// What the writer's session had seen of other origins.
    public let dependencies: [RegionName: UInt64]

    /// Creates a version.
    public init(version: Version, tombstone: Bool, contentType: String, value: [UInt8], dependencies: [RegionName: UInt64] = [:]) {
        self.version = version
        self.tombstone = tombstone
        self.contentType = contentType
        self.value = value
        self.dependencies = dependencies
    }

    /// The version an entry writes.
    public init(entry: ReplicationEntry) {
        self.init(version: entry.version, tombstone: entry.operation == .delete, contentType: entry.contentType,
                  value: entry.value, dependencies: entry.dependencies)
    }

    /// The write as an event: its origin and its place in the origin's log. Sequences of one origin grow,
    /// and every region applies an origin's log in order, so a history that includes a write of an origin
    /// includes every earlier one: a version vector of log sequences describes a key's causal past exactly.
    public var dot: Dot { Dot(region: version.origin, counter: version.sequence) }
}

/// A key's state in one region: every write to the key this region has seen (its causal context, as a
/// version vector of log sequences), and the writes no other seen write superseded (its frontier, as
/// dotted version vectors keep them). A write supersedes exactly the writes its own context names, so
/// concurrency is decided by causality, never guessed from timestamps.
public struct KeyState: Sendable, Hashable {
    /// Every write to the key this state has seen.
    public private(set) var context: VersionVector
    /// The writes not superseded, in dot order; never empty. More than one means concurrent writes.
    public private(set) var versions: [KeyVersion]

    /// A state holding the given versions and context. The context is widened to include every version.
    public init(context: VersionVector, versions: [KeyVersion]) {
        precondition(!versions.isEmpty, "a key's state holds at least one version")
        var context = context
        for version in versions where !context.contains(version.dot) { context.set(version.version.origin, version.version.sequence) }
        self.context = context
        self.versions = versions.sorted { $0.dot < $1.dot }
    }

    /// The version reads show under `rule`: the one it prefers over all others (for siblings, the one
    /// that stands for the set: its version is the key's ETag).
    public func winner(_ rule: ConflictRule) -> KeyVersion {
        versions.dropFirst().reduce(versions[0]) { best, candidate in rule.prefers(candidate, over: best) ? candidate : best }
    }

    /// The versions that lose to the winner under a rule that discards losers (empty otherwise).
    public func losers(_ rule: ConflictRule) -> [KeyVersion] {
        guard rule.discardsLosers, versions.count > 1 else { return [] }
        let best = winner(rule)
        return versions.filter { $0.dot != best.dot }
    }

    /// What applying a write did.
    public enum Outcome: Sendable, Hashable {
        /// The key's context already names the write: a later write that saw it superseded it first.
        case superseded
        /// The new state.
        case applied(KeyState)
    }

    /// Applies a write whose writer had seen `context` of this key (not including the write itself).
    /// The write supersedes every version `context` names; versions it did not see stay beside it.
    /// - Parameter state: The key's state before, nil when the key was never written here.
    public static func applying(_ write: KeyVersion, context: VersionVector, to state: KeyState?) -> Outcome {
        guard let state else { return .applied(KeyState(context: context, versions: [write])) }
        if state.context.contains(write.dot) { return .superseded }
        let kept = state.versions.filter { !context.contains($0.dot) }
        return .applied(KeyState(context: state.context.merged(with: context), versions: kept + [write]))
    }

    /// The state that has seen everything both states have (anti-entropy): a version survives when both
    /// hold it, or when the side without it never saw it. Commutative, associative and idempotent.
    public func merged(with other: KeyState) -> KeyState {
        let mine = Dictionary(uniqueKeysWithValues: versions.map { ($0.dot, $0) })
        let theirs = Dictionary(uniqueKeysWithValues: other.versions.map { ($0.dot, $0) })
        var kept: [Dot: KeyVersion] = [:]
        for (dot, version) in mine where theirs[dot] != nil || !other.context.contains(dot) { kept[dot] = version }
        for (dot, version) in theirs where mine[dot] != nil || !context.contains(dot) { kept[dot] = kept[dot] ?? version }
        // Consistent states always keep a version: a version superseded on one side was superseded by one
        // that side still holds or saw superseded in turn, ending in a version neither side saw superseded.
        // States from a peer are not trusted to be consistent, so an empty result keeps both sides' versions.
        if kept.isEmpty { kept = mine.merging(theirs) { first, _ in first } }
        return KeyState(context: context.merged(with: other.context), versions: Array(kept.values))
    }
}

extension KeyState {
    /// Anti-entropy's merge under a keyspace's rule: CRDT values merge by their type (one version, the
    /// newest version stamp, the contexts joined); every other rule keeps the versions neither side saw
    /// superseded (`merged(with:)`).
    public func merged(with other: KeyState, rule: ConflictRule) -> KeyState {
        guard rule == .crdt else { return merged(with: other) }
        let mine = winner(.crdt), theirs = other.winner(.crdt)
        let context = self.context.merged(with: other.context)
        guard let a = try? CRDTCodec.decode(mine.value) else { return KeyState(context: context, versions: [theirs]) }
        guard let b = try? CRDTCodec.decode(theirs.value) else { return KeyState(context: context, versions: [mine]) }
        let newest = mine.version.hlc > theirs.version.hlc ? mine.version : theirs.version
        let value = KeyVersion(version: newest, tombstone: false, contentType: CRDTCodec.contentType, value: CRDTCodec.encode(a.merged(b)),
                               dependencies: mine.dependencies.merging(theirs.dependencies) { max($0, $1) })
        return KeyState(context: context, versions: [value])
    }
}

/// A value a region discarded under its keyspace's rule: what its conflicts log records.
public struct ConflictLoss: Sendable, Hashable {
    public let loser: KeyVersion
    public let winner: KeyVersion
    /// `lww`, `fww`, `region-priority`, or `crdt-type` when two regions created a CRDT key with different types.
    public let rule: String
}

/// What applying one entry does to a key in a region: the one step the store and the simulator share.
public struct KeyChange: Sendable, Hashable {
    /// The key's state afterwards.
    public let state: KeyState
    /// Values this region now discards (record them, once each).
    public let losses: [ConflictLoss]
    /// A version recorded as lost earlier that wins again (remove its record): under first-writer-wins a
    /// write can supersede the version that beat a hidden one, which then shows.
    public let restored: Dot?

    /// Applies an entry to a key under `rule`.
    /// - Returns: nil when the key's context already names the entry (a write that saw it came first).
    /// - Throws: `codec_*` when a CRDT delta cannot be decoded.
    public static func applying(_ entry: ReplicationEntry, rule: ConflictRule, to old: KeyState?) throws(MeridianError) -> KeyChange? {
        if let old, old.context.contains(Dot(region: entry.origin, counter: entry.sequence)) { return nil }
        if entry.operation == .merge { return try merging(entry, into: old) }
        guard case .applied(let new) = KeyState.applying(KeyVersion(entry: entry), context: VersionVector(entry.context), to: old) else { return nil }
        return changes(old: old, new: new, rule: rule)
    }

    /// The conflicts-log changes of a key going from `old` to `new` (anti-entropy merges use it too).
    public static func changes(old: KeyState?, new: KeyState, rule: ConflictRule) -> KeyChange {
        guard rule.discardsLosers else { return KeyChange(state: new, losses: [], restored: nil) }
        let winner = new.winner(rule)
        let restored = (old?.versions.count ?? 1) > 1 ? winner.dot : nil
        return KeyChange(state: new, losses: new.losers(rule).map { ConflictLoss(loser: $0, winner: winner, rule: rule.name) }, restored: restored)
    }

    /// A CRDT delta merged into the key's value. Merges commute, so the order entries of different origins
    /// arrive in does not matter; the version stamp is the highest HLC merged, the same everywhere.
    private static func merging(_ entry: ReplicationEntry, into old: KeyState?) throws(MeridianError) -> KeyChange {
        let delta = try CRDTCodec.decode(entry.value)
        let current = old.map { $0.winner(.crdt) }
        var value = delta
        var losses: [ConflictLoss] = []
        if let current, !current.tombstone, let held = try? CRDTCodec.decode(current.value) {
            value = held.merged(delta)
            if held.type != delta.type {
                // Two regions created the key with different types at once; the type order picked one.
                let incoming = KeyVersion(entry: entry)
                let keptHeld = value.type == held.type
                losses.append(ConflictLoss(loser: keptHeld ? incoming : current, winner: keptHeld ? current : incoming, rule: "crdt-type"))
            }
        }
        let newest = current.map { $0.version.hlc > entry.hlc ? $0.version : entry.version } ?? entry.version
        let merged = KeyVersion(version: newest, tombstone: false, contentType: CRDTCodec.contentType, value: CRDTCodec.encode(value),
                                dependencies: (current?.dependencies ?? [:]).merging(entry.dependencies) { max($0, $1) })
        // Only the deltas merged here: a delta carries its own effect, not the effects its writer had seen, so
        // the writer's context must not mark those as merged (they would be skipped when they arrive).
        var context = old?.context ?? VersionVector()
        context.set(entry.origin, max(context[entry.origin], entry.sequence))
        return KeyChange(state: KeyState(context: context, versions: [merged]), losses: losses, restored: nil)
    }
}
