// Proves version-vector comparison classifies causal histories correctly and that merge is the
// least upper bound (commutative, associative, idempotent, dominating both inputs), on random vectors.
import MeridianCore
import PropertyBased
import Testing

@Suite struct VersionVectorTests {
    static let regions = ["a", "b", "c", "d"].map { RegionName(validated: $0) }

    static func vector(_ counters: [Int]) -> VersionVector {
        VersionVector(Dictionary(uniqueKeysWithValues: zip(regions, counters.map(UInt64.init))))
    }

    @Test func comparesHistories() {
        let base = Self.vector([1, 2, 0, 0])
        #expect(base.compare(Self.vector([1, 2, 0, 0])) == .equal)
        #expect(base.compare(Self.vector([1, 3, 0, 0])) == .before)
        #expect(Self.vector([2, 2, 0, 1]).compare(base) == .after)
        #expect(Self.vector([2, 1, 0, 0]).compare(base) == .concurrent)
        #expect(VersionVector().compare(base) == .before)
        #expect(VersionVector().compare(VersionVector()) == .equal)
    }

    @Test func incrementAndZeroCountersAreCanonical() {
        var vector = VersionVector()
        vector.increment(Self.regions[2])
        vector.increment(Self.regions[0])
        vector.increment(Self.regions[2])
        #expect(vector == Self.vector([1, 0, 2, 0]))
        #expect(vector.regions == [Self.regions[0], Self.regions[2]])
        vector.set(Self.regions[0], 0)
        #expect(vector == Self.vector([0, 0, 2, 0]))
        #expect(vector.description == "{c:2}")
    }

    @Test func mergeIsALeastUpperBound() async {
        let counters = Gen.int(in: 0...5).array(of: 4)
        await propertyCheck(count: 500, input: counters, counters, counters) { x, y, z in
            let a = Self.vector(x), b = Self.vector(y), c = Self.vector(z)
            let ab = a.merged(with: b)
            #expect(ab == b.merged(with: a))
            #expect(ab.merged(with: c) == a.merged(with: b.merged(with: c)))
            #expect(a.merged(with: a) == a)
            #expect([.after, .equal].contains(ab.compare(a)))
            #expect([.after, .equal].contains(ab.compare(b)))
            // compare is antisymmetric.
            switch a.compare(b) {
            case .before: #expect(b.compare(a) == .after)
            case .after: #expect(b.compare(a) == .before)
            case .equal: #expect(a == b)
            case .concurrent: #expect(b.compare(a) == .concurrent)
            }
        }
    }
}
