/// A state-based convergent replicated data type: replicas change their copy locally and exchange
/// states; `merge` is commutative, associative and idempotent, so replicas that received the same updates,
/// in any order and any number of times, hold equal states (Shapiro et al., "Conflict-free Replicated Data
/// Types", 2011). Each type's property tests check those three laws and order-independence.
public protocol ConvergentType: Sendable, Hashable {
    /// Folds another replica's state into this one.
    mutating func merge(_ other: Self)
}

extension ConvergentType {
    /// This state merged with another.
    public func merged(_ other: Self) -> Self {
        var result = self
        result.merge(other)
        return result
    }
}

/// One event of one replica: the replica and its event counter. Every dot is unique in a cluster.
public struct Dot: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let region: RegionName
    public let counter: UInt64

    public init(region: RegionName, counter: UInt64) {
        precondition(counter >= 1, "dots count from 1")
        self.region = region
        self.counter = counter
    }

    public static func < (lhs: Dot, rhs: Dot) -> Bool { (lhs.region, lhs.counter) < (rhs.region, rhs.counter) }

    public var description: String { "\(region):\(counter)" }
}

extension VersionVector {
    /// Whether the history this vector names includes the event `dot`.
    public func contains(_ dot: Dot) -> Bool { self[dot.region] >= dot.counter }

    /// A new event of `region` after everything this vector names, recorded in it.
    public mutating func nextDot(_ region: RegionName) -> Dot {
        increment(region)
        return Dot(region: region, counter: self[region])
    }
}

// MARK: - Counters

/// A grow-only counter: one monotone count per region; the value is their sum.
public struct GCounter: ConvergentType {
    public private(set) var counts: [RegionName: UInt64] = [:]

    public init() {}

    public var value: UInt64 { counts.values.reduce(0, &+) }

    /// Adds `amount` as `region`.
    public mutating func increment(_ amount: UInt64 = 1, at region: RegionName) {
        counts[region, default: 0] &+= amount
    }

    public mutating func merge(_ other: GCounter) {
        counts.merge(other.counts) { max($0, $1) }
    }
}

/// A counter that goes both ways: two grow-only counters, increments and decrements.
public struct PNCounter: ConvergentType {
    public private(set) var increments = GCounter()
    public private(set) var decrements = GCounter()

    public init() {}

    public var value: Int64 { Int64(bitPattern: increments.value &- decrements.value) }

    /// Adds `amount` (negative: subtracts) as `region`.
    public mutating func add(_ amount: Int64, at region: RegionName) {
        if amount >= 0 { increments.increment(UInt64(amount), at: region) } else { decrements.increment(amount.magnitude, at: region) }
    }

    public mutating func merge(_ other: PNCounter) {
        increments.merge(other.increments)
        decrements.merge(other.decrements)
    }
}

// MARK: - Registers

/// A last-writer-wins register: the value with the highest hybrid logical clock timestamp (region names
/// break ties, so the order is total).
public struct LWWRegister: ConvergentType {
    public private(set) var value: String?
    public private(set) var timestamp: HLCTimestamp?

    public init() {}

    /// Sets the value at `timestamp` (ignored if an assignment with a later timestamp is already held).
    public mutating func assign(_ value: String, at timestamp: HLCTimestamp) {
        guard self.timestamp.map({ timestamp > $0 }) ?? true else { return }
        self.value = value
        self.timestamp = timestamp
    }

    public mutating func merge(_ other: LWWRegister) {
        if let timestamp = other.timestamp, let value = other.value { assign(value, at: timestamp) }
    }
}

/// A multi-value register: an assignment replaces every value its replica had seen; concurrent
/// assignments are all kept, and a reader sees them all until one assignment that saw them replaces them.
public struct MVRegister: ConvergentType {
    /// The values not superseded, each with the event that assigned it.
    public private(set) var entries: [Dot: String] = [:]
    /// Every event this state has seen (an entry whose dot is seen here but absent was superseded).
    public private(set) var context = VersionVector()

    public init() {}

    /// The concurrent values, in dot order.
    public var values: [String] { entries.sorted { $0.key < $1.key }.map(\.value) }

    /// Assigns `value` as `region`, superseding every value this replica holds.
    public mutating func assign(_ value: String, at region: RegionName) {
        let dot = context.nextDot(region)
        entries = [dot: value]
    }

    public mutating func merge(_ other: MVRegister) {
        var kept: [Dot: String] = [:]
        // An entry survives if the other side holds it too, or has never seen its event.
        for (dot, value) in entries where other.entries[dot] != nil || !other.context.contains(dot) { kept[dot] = value }
        for (dot, value) in other.entries where entries[dot] != nil || !context.contains(dot) { kept[dot] = value }
        entries = kept
        context = context.merged(with: other.context)
    }
}

// MARK: - Sets and maps

/// An observed-remove set with add-wins semantics, without tombstones (ORSWOT, Bieniusa et al. 2012): each
/// element carries the dots of the adds that put it there; a remove drops the dots it has seen, so an add
/// concurrent with the remove (a dot the remover never saw) keeps the element.
public struct ORSet: ConvergentType {
    public private(set) var entries: [String: Set<Dot>] = [:]
    public private(set) var context = VersionVector()

    public init() {}

    /// The elements, sorted.
    public var elements: [String] { entries.keys.sorted() }

    public func contains(_ element: String) -> Bool { entries[element] != nil }

    /// Adds `element` as `region`.
    public mutating func add(_ element: String, at region: RegionName) {
        entries[element] = [context.nextDot(region)]
    }

    /// Removes `element` (the adds this replica has seen).
    public mutating func remove(_ element: String) {
        entries[element] = nil
    }

    public mutating func merge(_ other: ORSet) {
        var merged: [String: Set<Dot>] = [:]
        for element in Set(entries.keys).union(other.entries.keys) {
            let mine = entries[element] ?? [], theirs = other.entries[element] ?? []
            // A dot survives when both sides hold it, or the side without it never saw it.
            let dots = mine.intersection(theirs)
                .union(mine.filter { !other.context.contains($0) })
                .union(theirs.filter { !context.contains($0) })
            if !dots.isEmpty { merged[element] = dots }
        }
        entries = merged
        context = context.merged(with: other.context)
    }
}

/// The value of one field of an ``ORMap``.
public enum CRDTField: ConvergentType {
    case gCounter(GCounter)
    case pnCounter(PNCounter)
    case orSet(ORSet)
    case lwwRegister(LWWRegister)
    case mvRegister(MVRegister)

    var typeRank: Int {
        switch self {
        case .gCounter: 0
        case .pnCounter: 1
        case .orSet: 2
        case .lwwRegister: 3
        case .mvRegister: 4
        }
    }

    /// Fields of the same type merge; if two replicas created a field with different types concurrently,
    /// the type with the higher rank wins on both, so replicas still converge (the API refuses an operation
    /// of the wrong type on an existing field, which keeps this rare).
    public mutating func merge(_ other: CRDTField) {
        switch (self, other) {
        case (.gCounter(var a), .gCounter(let b)): a.merge(b); self = .gCounter(a)
        case (.pnCounter(var a), .pnCounter(let b)): a.merge(b); self = .pnCounter(a)
        case (.orSet(var a), .orSet(let b)): a.merge(b); self = .orSet(a)
        case (.lwwRegister(var a), .lwwRegister(let b)): a.merge(b); self = .lwwRegister(a)
        case (.mvRegister(var a), .mvRegister(let b)): a.merge(b); self = .mvRegister(a)
        default: if other.typeRank > typeRank { self = other }
        }
    }
}

/// An observed-remove map with add-wins keys: each key's presence is tracked like an ``ORSet`` element,
/// and its field is a CRDT that merges. Updating a field marks the key present; removing a key hides it
/// and its field (an update concurrent with the remove brings the key back, with the field merged).
public struct ORMap: ConvergentType {
    public private(set) var presence = ORSet()
    public private(set) var fields: [String: CRDTField] = [:]

    public init() {}

    /// The present keys, sorted.
    public var keys: [String] { presence.elements }

    /// The field of a present key.
    public subscript(key: String) -> CRDTField? { presence.contains(key) ? fields[key] : nil }

    /// Applies `change` to the field at `key` (created as `initial` when absent) as `region`.
    public mutating func update(_ key: String, at region: RegionName, initial: CRDTField, _ change: (inout CRDTField) -> Void) {
        var field = fields[key] ?? initial
        change(&field)
        fields[key] = field
        presence.add(key, at: region)
    }

    /// Removes `key` as this replica sees it.
    public mutating func remove(_ key: String) {
        presence.remove(key)
    }

    public mutating func merge(_ other: ORMap) {
        presence.merge(other.presence)
        for (key, field) in other.fields {
            if var mine = fields[key] {
                mine.merge(field)
                fields[key] = mine
            } else {
                fields[key] = field
            }
        }
    }
}
