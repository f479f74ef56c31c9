/// A state-based convergent replicated data type: replicas change their copy locally and exchange
/// states; `merge` is commutative, associative and idempotent, so replicas that received the same updates,
/// in any order and any number of times, hold equal states (Shapiro et al., "Conflict-free Replicated Data
/// Types", 2011). Each type's property tests check those three laws and order-independence.
///
/// Every mutator also returns a delta: a small state that, merged into any replica, has the mutation's
/// effect (delta-state CRDTs, Almeida et al. 2018). Replication ships deltas, so an increment of a large
/// counter or an add to a large set costs a few bytes on the wire.
public protocol ConvergentType: Sendable, Hashable {
    /// Folds another replica's state (or a delta) into this one.
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
}

/// The events a replica has seen: a version vector for each region's gap-free prefix, plus the events
/// seen out of order (a delta names single events, not prefixes). Compacted on every change, so the
/// cloud holds only events past a gap.
public struct DotContext: Sendable, Hashable {
    public private(set) var vector = VersionVector()
    public private(set) var cloud: Set<Dot> = []

    public init() {}

    init(vector: VersionVector, cloud: Set<Dot>) {
        self.vector = vector
        self.cloud = cloud
        compact()
    }

    public func contains(_ dot: Dot) -> Bool { vector.contains(dot) || cloud.contains(dot) }

    /// Records one event.
    public mutating func insert(_ dot: Dot) {
        guard !contains(dot) else { return }
        cloud.insert(dot)
        compact()
    }

    /// A new event of `region` after every event of it seen here, recorded.
    public mutating func nextDot(_ region: RegionName) -> Dot {
        let highest = cloud.filter { $0.region == region }.map(\.counter).max() ?? 0
        let dot = Dot(region: region, counter: max(vector[region], highest) + 1)
        insert(dot)
        return dot
    }

    public mutating func merge(_ other: DotContext) {
        vector = vector.merged(with: other.vector)
        cloud.formUnion(other.cloud)
        compact()
    }

    /// One sorted sweep per region: drops dots the vector covers and folds runs that continue it.
    private mutating func compact() {
        guard !cloud.isEmpty else { return }
        var kept: Set<Dot> = []
        for (region, dots) in Dictionary(grouping: cloud, by: \.region) {
            var high = vector[region]
            for dot in dots.sorted() {
                if dot.counter <= high { continue }
                if dot.counter == high + 1 { high += 1 } else { kept.insert(dot) }
            }
            vector.set(region, high)
            kept = kept.filter { $0.region != region || $0.counter > high }
        }
        cloud = kept
    }
}

// MARK: - Counters

/// A grow-only counter: one monotone count per region; the value is their sum.
public struct GCounter: ConvergentType {
    public private(set) var counts: [RegionName: UInt64] = [:]

    public init() {}

    init(counts: [RegionName: UInt64]) { self.counts = counts.filter { $0.value > 0 } }

    public var value: UInt64 { counts.values.reduce(0, &+) }

    /// Adds `amount` as `region`.
    /// - Returns: The delta: this region's new count.
    @discardableResult
    public mutating func increment(_ amount: UInt64 = 1, at region: RegionName) -> GCounter {
        guard amount > 0 else { return GCounter() }
        counts[region, default: 0] &+= amount
        return GCounter(counts: [region: counts[region]!])
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

    init(increments: GCounter, decrements: GCounter) {
        self.increments = increments
        self.decrements = decrements
    }

    public var value: Int64 { Int64(bitPattern: increments.value &- decrements.value) }

    /// Adds `amount` (negative: subtracts) as `region`.
    /// - Returns: The delta.
    @discardableResult
    public mutating func add(_ amount: Int64, at region: RegionName) -> PNCounter {
        if amount >= 0 {
            return PNCounter(increments: increments.increment(UInt64(amount), at: region), decrements: GCounter())
        }
        return PNCounter(increments: GCounter(), decrements: decrements.increment(amount.magnitude, at: region))
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
    /// - Returns: The delta: the register as it now stands.
    @discardableResult
    public mutating func assign(_ value: String, at timestamp: HLCTimestamp) -> LWWRegister {
        if self.timestamp.map({ timestamp > $0 }) ?? true {
            self.value = value
            self.timestamp = timestamp
        }
        return self
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
    public private(set) var context = DotContext()

    public init() {}

    init(entries: [Dot: String], context: DotContext) {
        self.entries = entries
        self.context = context
    }

    /// The concurrent values, in dot order.
    public var values: [String] { entries.sorted { $0.key < $1.key }.map(\.value) }

    /// Assigns `value` as `region`, superseding every value this replica holds.
    /// - Returns: The delta: the new value, with the events it supersedes.
    @discardableResult
    public mutating func assign(_ value: String, at region: RegionName) -> MVRegister {
        var deltaContext = DotContext()
        for dot in entries.keys { deltaContext.insert(dot) }
        let dot = context.nextDot(region)
        deltaContext.insert(dot)
        entries = [dot: value]
        return MVRegister(entries: [dot: value], context: deltaContext)
    }

    public mutating func merge(_ other: MVRegister) {
        var kept: [Dot: String] = [:]
        // An entry survives if the other side holds it too, or has never seen its event.
        for (dot, value) in entries where other.entries[dot] != nil || !other.context.contains(dot) { kept[dot] = value }
        for (dot, value) in other.entries where entries[dot] != nil || !context.contains(dot) { kept[dot] = value }
        entries = kept
        context.merge(other.context)
    }
}

// MARK: - Sets and maps

/// An observed-remove set with add-wins semantics, without tombstones (ORSWOT, Bieniusa et al. 2012): each
/// element carries the dots of the adds that put it there; a remove drops the dots it has seen, so an add
/// concurrent with the remove (a dot the remover never saw) keeps the element.
public struct ORSet: ConvergentType {
    public private(set) var entries: [String: Set<Dot>] = [:]
    public private(set) var context = DotContext()

    public init() {}

    init(entries: [String: Set<Dot>], context: DotContext) {
        self.entries = entries
        self.context = context
    }

    /// The elements, sorted.
    public var elements: [String] { entries.keys.sorted() }

    public func contains(_ element: String) -> Bool { entries[element] != nil }

    /// Adds `element` as `region`.
    /// - Returns: The delta: the element with its new dot, superseding the dots it had here.
    @discardableResult
    public mutating func add(_ element: String, at region: RegionName) -> ORSet {
        var deltaContext = DotContext()
        for dot in entries[element] ?? [] { deltaContext.insert(dot) }
        let dot = context.nextDot(region)
        deltaContext.insert(dot)
        entries[element] = [dot]
        return ORSet(entries: [element: [dot]], context: deltaContext)
    }

    /// Removes `element` (the adds this replica has seen).
    /// - Returns: The delta: the removed dots, with no element.
    @discardableResult
    public mutating func remove(_ element: String) -> ORSet {
        var deltaContext = DotContext()
        for dot in entries[element] ?? [] { deltaContext.insert(dot) }
        entries[element] = nil
        return ORSet(entries: [:], context: deltaContext)
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
        context.merge(other.context)
    }
}

/// An observed-remove map with add-wins keys: each key's presence is tracked like an ``ORSet`` element,
/// and its field is a CRDT that merges. Updating a field marks the key present; removing a key hides it
/// and its field (an update concurrent with the remove brings the key back, with the field merged).
/// Remove hides, it does not reset: an update after a remove continues from the field's earlier value
/// (a counter counts on from where it was). Resetting would need every field type to track its events
/// by dot, as Riak's embedded counters do. Fields are any type but a map.
public struct ORMap: ConvergentType {
    public private(set) var presence = ORSet()
    public private(set) var fields: [String: CRDTValue] = [:]

    public init() {}

    init(presence: ORSet, fields: [String: CRDTValue]) {
        self.presence = presence
        self.fields = fields
    }

    /// The present keys, sorted.
    public var keys: [String] { presence.elements }

    /// The field of a present key.
    public subscript(key: String) -> CRDTValue? { presence.contains(key) ? fields[key] : nil }

    /// Applies `operation` to the field at `key`, creating it as an empty `type` when absent, as `region`.
    /// - Returns: The delta.
    /// - Throws: `crdt_type_mismatch` when the field exists with another type or `type` is a map, or the
    ///   operation does not apply to the type.
    @discardableResult
    public mutating func update(_ key: String, type: CRDTType, _ operation: CRDTOperation, at timestamp: HLCTimestamp) throws(MeridianError) -> ORMap {
        guard type != .orMap else {
            throw MeridianError(.crdtTypeMismatch, "An or-map field cannot itself be an or-map; use one of the other types.", context: ["field": key])
        }
        var field = fields[key] ?? CRDTValue.empty(type)
        guard field.type == type else {
            throw MeridianError(.crdtTypeMismatch, "Field '\(key)' is \(field.type.withArticle), not \(type.withArticle).",
                                context: ["field": key, "type": field.type.rawValue])
        }
        let fieldDelta = try field.apply(operation, at: timestamp)
        fields[key] = field
        return ORMap(presence: presence.add(key, at: timestamp.region), fields: [key: fieldDelta])
    }

    /// Removes `key` as this replica sees it.
    /// - Returns: The delta.
    @discardableResult
    public mutating func remove(_ key: String) -> ORMap {
        ORMap(presence: presence.remove(key), fields: [:])
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

// MARK: - Any type

/// The CRDT types a `crdt` keyspace stores, by the names the API uses.
public enum CRDTType: String, Sendable, Hashable, CaseIterable {
    case gCounter = "g-counter"
    case pnCounter = "pn-counter"
    case orSet = "or-set"
    case lwwRegister = "lww-register"
    case mvRegister = "mv-register"
    case orMap = "or-map"

    /// The name with its indefinite article, for messages ("an or-set", "a g-counter").
    public var withArticle: String { (rawValue.hasPrefix("o") ? "an " : "a ") + rawValue }

    /// The codec's tag.
    var tag: UInt8 {
        switch self {
        case .gCounter: 1
        case .pnCounter: 2
        case .orSet: 3
        case .lwwRegister: 4
        case .mvRegister: 5
        case .orMap: 6
        }
    }
}

/// One operation on a CRDT value, as a client asks for it.
public indirect enum CRDTOperation: Sendable, Hashable {
    /// Add to a counter.
    case increment(UInt64)
    /// Subtract from a PN-counter.
    case decrement(UInt64)
    /// Add elements to an OR-set.
    case add([String])
    /// Remove elements from an OR-set (the adds this region has seen).
    case remove([String])
    /// Set a register.
    case assign(String)
    /// Apply an operation to one field of an OR-map, creating it with `type` if absent.
    case update(field: String, type: CRDTType, CRDTOperation)
    /// Remove fields from an OR-map.
    case removeFields([String])
}

/// A value of any CRDT type. Values of one type merge by that type's rule; if two regions created a key
/// with different types concurrently, the type later in `CRDTType.allCases` wins in every region, so
/// replicas still converge (the API refuses an operation of the wrong type on an existing key, which keeps
/// this rare, and the conflicts log records it).
public enum CRDTValue: ConvergentType {
    case gCounter(GCounter)
    case pnCounter(PNCounter)
    case orSet(ORSet)
    case lwwRegister(LWWRegister)
    case mvRegister(MVRegister)
    case orMap(ORMap)

    public var type: CRDTType {
        switch self {
        case .gCounter: .gCounter
        case .pnCounter: .pnCounter
        case .orSet: .orSet
        case .lwwRegister: .lwwRegister
        case .mvRegister: .mvRegister
        case .orMap: .orMap
        }
    }

    /// The empty value of a type.
    public static func empty(_ type: CRDTType) -> CRDTValue {
        switch type {
        case .gCounter: .gCounter(GCounter())
        case .pnCounter: .pnCounter(PNCounter())
        case .orSet: .orSet(ORSet())
        case .lwwRegister: .lwwRegister(LWWRegister())
        case .mvRegister: .mvRegister(MVRegister())
        case .orMap: .orMap(ORMap())
        }
    }

    /// Applies an operation as the region of `timestamp` (the write's HLC, which LWW registers order by).
    /// - Returns: The delta to replicate.
    /// - Throws: `crdt_type_mismatch` when the operation does not apply to this type.
    public mutating func apply(_ operation: CRDTOperation, at timestamp: HLCTimestamp) throws(MeridianError) -> CRDTValue {
        let region = timestamp.region
        switch (self, operation) {
        case (.gCounter(var counter), .increment(let amount)):
            guard !counter.counts[region, default: 0].addingReportingOverflow(amount).overflow,
                  !counter.value.addingReportingOverflow(amount).overflow, counter.value + amount <= UInt64(Int64.max) else {
                throw MeridianError(.invalidRequest, "The counter would pass \(Int64.max); it cannot count further.", context: ["by": String(amount)])
            }
            let delta = counter.increment(amount, at: region)
            self = .gCounter(counter)
            return .gCounter(delta)
        case (.pnCounter(var counter), .increment(let amount)), (.pnCounter(var counter), .decrement(let amount)):
            guard amount <= UInt64(Int64.max) else {
                throw MeridianError(.invalidRequest, "A counter changes by at most \(Int64.max) per operation.", context: ["by": String(amount)])
            }
            let signed = Int64(amount)
            let half = operationIsIncrement(operation) ? counter.increments : counter.decrements
            let result = operationIsIncrement(operation) ? counter.value.addingReportingOverflow(signed) : counter.value.subtractingReportingOverflow(signed)
            guard !half.counts[region, default: 0].addingReportingOverflow(amount).overflow, !result.overflow,
                  !half.value.addingReportingOverflow(amount).overflow else {
                throw MeridianError(.invalidRequest, "The counter would leave the range \(Int64.min) to \(Int64.max).", context: ["by": String(amount)])
            }
            let delta: PNCounter
            if case .increment = operation { delta = counter.add(signed, at: region) } else { delta = counter.add(-signed, at: region) }
            self = .pnCounter(counter)
            return .pnCounter(delta)
        case (.orSet(var set), .add(let elements)):
            var delta = ORSet()
            for element in elements { delta.merge(set.add(element, at: region)) }
            self = .orSet(set)
            return .orSet(delta)
        case (.orSet(var set), .remove(let elements)):
            var delta = ORSet()
            for element in elements { delta.merge(set.remove(element)) }
            self = .orSet(set)
            return .orSet(delta)
        case (.lwwRegister(var register), .assign(let value)):
            let delta = register.assign(value, at: timestamp)
            self = .lwwRegister(register)
            return .lwwRegister(delta)
        case (.mvRegister(var register), .assign(let value)):
            let delta = register.assign(value, at: region)
            self = .mvRegister(register)
            return .mvRegister(delta)
        case (.orMap(var map), .update(let field, let type, let inner)):
            let delta = try map.update(field, type: type, inner, at: timestamp)
            self = .orMap(map)
            return .orMap(delta)
        case (.orMap(var map), .removeFields(let fields)):
            var delta = ORMap()
            for field in fields { delta.merge(map.remove(field)) }
            self = .orMap(map)
            return .orMap(delta)
        default:
            throw MeridianError(.crdtTypeMismatch, "Operation '\(operation.name)' does not apply to \(type.withArticle).",
                                context: ["type": type.rawValue, "op": operation.name])
        }
    }

    public mutating func merge(_ other: CRDTValue) {
        switch (self, other) {
        case (.gCounter(var a), .gCounter(let b)): a.merge(b); self = .gCounter(a)
        case (.pnCounter(var a), .pnCounter(let b)): a.merge(b); self = .pnCounter(a)
        case (.orSet(var a), .orSet(let b)): a.merge(b); self = .orSet(a)
        case (.lwwRegister(var a), .lwwRegister(let b)): a.merge(b); self = .lwwRegister(a)
        case (.mvRegister(var a), .mvRegister(let b)): a.merge(b); self = .mvRegister(a)
        case (.orMap(var a), .orMap(let b)): a.merge(b); self = .orMap(a)
        default: if other.type.tag > type.tag { self = other }
        }
    }
}

private func operationIsIncrement(_ operation: CRDTOperation) -> Bool {
    if case .increment = operation { return true }
    return false
}

extension CRDTOperation {
    /// The operation's name in the API.
    public var name: String {
        switch self {
        case .increment: "increment"
        case .decrement: "decrement"
        case .add: "add"
        case .remove: "remove"
        case .assign: "assign"
        case .update: "update"
        case .removeFields: "remove"
        }
    }
}
