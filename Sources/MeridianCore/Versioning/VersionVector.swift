/// How two version vectors relate causally.
public enum CausalOrder: Sendable, Hashable {
    /// The left vector happened before the right one.
    case before
    /// The left vector happened after the right one.
    case after
    /// Both vectors name the same history.
    case equal
    /// Neither saw the other: the histories diverged.
    case concurrent
}

/// A version vector: for each origin region, how many of its writes a history includes.
///
/// Entries are kept sorted by region so iteration, encoding and equality never depend on hash order.
public struct VersionVector: Hashable, Sendable, CustomStringConvertible {
    private var counters: [(region: RegionName, counter: UInt64)]

    /// Creates an empty vector.
    public init() { counters = [] }

    /// Creates a vector from counters; zero counters are dropped.
    public init(_ counters: [RegionName: UInt64]) {
        self.counters = counters.filter { $0.value > 0 }.map { (region: $0.key, counter: $0.value) }.sorted { $0.region < $1.region }
    }

    /// The counter of one region (0 when absent).
    public subscript(region: RegionName) -> UInt64 {
        counters.first(where: { $0.region == region })?.counter ?? 0
    }

    /// The regions with a non-zero counter, in name order.
    public var regions: [RegionName] { counters.map(\.region) }

    /// The non-zero counters by region (the form the codecs and session tokens take).
    public var byRegion: [RegionName: UInt64] {
        Dictionary(uniqueKeysWithValues: counters.map { ($0.region, $0.counter) })
    }

    /// Records one more write from `region`.
    public mutating func increment(_ region: RegionName) {
        set(region, self[region] + 1)
    }

    /// Sets the counter of `region`.
    public mutating func set(_ region: RegionName, _ counter: UInt64) {
        if let index = counters.firstIndex(where: { $0.region == region }) {
            if counter == 0 { counters.remove(at: index) } else { counters[index].counter = counter }
        } else if counter > 0 {
            counters.append((region: region, counter: counter))
            counters.sort { $0.region < $1.region }
        }
    }

    /// The least vector that dominates both (pointwise maximum).
    public func merged(with other: VersionVector) -> VersionVector {
        var result = self
        for entry in other.counters where entry.counter > result[entry.region] {
            result.set(entry.region, entry.counter)
        }
        return result
    }

    /// Compares two histories.
    public func compare(_ other: VersionVector) -> CausalOrder {
        var someLess = false
        var someGreater = false
        let regions = Set(counters.map(\.region)).union(other.counters.map(\.region))
        for region in regions {
            let mine = self[region]
            let theirs = other[region]
            if mine < theirs { someLess = true }
            if mine > theirs { someGreater = true }
        }
        switch (someLess, someGreater) {
        case (false, false): return .equal
        case (true, false): return .before
        case (false, true): return .after
        case (true, true): return .concurrent
        }
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.counters.elementsEqual(rhs.counters) { $0.region == $1.region && $0.counter == $1.counter }
    }

    public func hash(into hasher: inout Hasher) {
        for entry in counters {
            hasher.combine(entry.region)
            hasher.combine(entry.counter)
        }
    }

    public var description: String {
        "{" + counters.map { "\($0.region):\($0.counter)" }.joined(separator: ",") + "}"
    }
}
