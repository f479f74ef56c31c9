// Proves the CRDT types' laws with seeded property tests: on states reached by random operations and
// random merges among three replicas, merge is commutative, associative and idempotent, and merging all
// replicas in any order gives one state. Plus each type's intended semantics: exact counter totals,
// add-wins sets, concurrent values kept by the multi-value register, last-writer-wins by HLC, and map
// fields that merge.
import MeridianCore
import PropertyBased
import Testing

/// A CRDT the law tests can drive: `op` picks an operation deterministically; it returns the delta.
protocol Scripted: ConvergentType {
    init()
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> Self
}

extension GCounter: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> GCounter { increment(op % 5 + 1, at: region) }
}

extension PNCounter: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> PNCounter { add(Int64(op % 11) - 5, at: region) }
}

extension ORSet: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> ORSet {
        if op % 3 == 0 { return remove("e\(op / 3 % 4)") }
        return add("e\(op / 3 % 4)", at: region)
    }
}

extension LWWRegister: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> LWWRegister {
        assign("v\(op % 100)", at: HLCTimestamp(physicalMs: clock / 2, logical: UInt32(op % 2), region: region))
    }
}

extension MVRegister: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> MVRegister { assign("v\(op % 100)", at: region) }
}

extension ORMap: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) -> ORMap {
        let key = "f\(op % 3)"
        let at = HLCTimestamp(physicalMs: clock, logical: 0, region: region)
        do {
            switch op / 3 % 4 {
            case 0: return remove(key)
            case 1: return try update(key, type: .pnCounter, .increment(op % 7 + 1), at: at)
            case 2: return try update("s\(op % 2)", type: .orSet, .add(["x\(op % 5)"]), at: at)
            default: return try update("r", type: .mvRegister, .assign("m\(op % 9)"), at: at)
            }
        } catch {
            preconditionFailure("the script only applies operations of each field's own type: \(error)")
        }
    }
}

@Suite struct CRDTLawTests {
    static let regions = ["us-east", "eu-west", "ap-southeast"].map { RegionName(validated: $0) }

    /// Three replicas after a random script of operations and merges.
    static func replicas<T: Scripted>(_ type: T.Type, _ script: [UInt64]) -> [T] {
        var replicas = [T(), T(), T()]
        for (step, word) in script.enumerated() {
            let i = Int(word % 3), j = Int(word / 3 % 3)
            if word / 9 % 4 == 0 && i != j {
                replicas[i].merge(replicas[j])
            } else {
                _ = replicas[i].apply(op: word / 36, at: regions[i], clock: UInt64(step + 1))
            }
        }
        return replicas
    }

    func checkLaws<T: Scripted>(_ type: T.Type) async {
        await propertyCheck(count: 300, input: Gen.uint64(in: 0...UInt64.max).array(of: 1...60)) { script in
            let replicas = Self.replicas(type, script)
            let (a, b, c) = (replicas[0], replicas[1], replicas[2])
            #expect(a.merged(b) == b.merged(a), "commutative")
            #expect(a.merged(b).merged(c) == a.merged(b.merged(c)), "associative")
            #expect(a.merged(a) == a && a.merged(b).merged(b) == a.merged(b), "idempotent")
            let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
            let finals = Set(orders.map { replicas[$0[0]].merged(replicas[$0[1]]).merged(replicas[$0[2]]) })
            #expect(finals.count == 1, "every merge order converges")
        }
    }

    /// Replicas that exchange only deltas, delivered in any order (even an origin's own deltas out of their
    /// order), end equal to each other and to the merge of full states.
    func checkDeltas<T: Scripted>(_ type: T.Type) async {
        await propertyCheck(count: 200, input: Gen.uint64(in: 0...UInt64.max).array(of: 1...50)) { script in
            var replicas = [T(), T(), T()]
            var deltas: [(from: Int, delta: T)] = []
            var delivered = [Set<Int>(), Set<Int>(), Set<Int>()]
            for (step, word) in script.enumerated() {
                let i = Int(word % 3)
                if word / 3 % 3 == 0, !deltas.isEmpty {
                    // Deliver a delta chosen by the script, not necessarily the next one.
                    let index = Int(word / 9 % UInt64(deltas.count))
                    if deltas[index].from != i && delivered[i].insert(index).inserted { replicas[i].merge(deltas[index].delta) }
                } else {
                    deltas.append((i, replicas[i].apply(op: word / 36, at: Self.regions[i], clock: UInt64(step + 1))))
                    delivered[i].insert(deltas.count - 1)
                }
            }
            for i in 0..<3 {
                for index in deltas.indices.reversed() where delivered[i].insert(index).inserted { replicas[i].merge(deltas[index].delta) }
            }
            #expect(replicas[0] == replicas[1] && replicas[1] == replicas[2], "deltas in any order converge")
            var fromDeltas = T()
            var generator = SplitMix(seed: script[0])
            for entry in deltas.shuffled(using: &generator) { fromDeltas.merge(entry.delta) }
            #expect(fromDeltas == replicas[0], "the deltas alone rebuild the state")
        }
    }

    @Test func deltasConverge() async {
        await checkDeltas(GCounter.self)
        await checkDeltas(PNCounter.self)
        await checkDeltas(ORSet.self)
        await checkDeltas(LWWRegister.self)
        await checkDeltas(MVRegister.self)
        await checkDeltas(ORMap.self)
    }

    @Test func gCounter() async { await checkLaws(GCounter.self) }
    @Test func pnCounter() async { await checkLaws(PNCounter.self) }
    @Test func orSet() async { await checkLaws(ORSet.self) }
    @Test func lwwRegister() async { await checkLaws(LWWRegister.self) }
    @Test func mvRegister() async { await checkLaws(MVRegister.self) }
    @Test func orMap() async { await checkLaws(ORMap.self) }
}

@Suite struct CRDTSemanticsTests {
    let us = RegionName(validated: "us-east")
    let eu = RegionName(validated: "eu-west")
    let ap = RegionName(validated: "ap-southeast")

    @Test func countersAddUpExactlyAcrossAPartition() {
        // A like counter incremented in three regions that cannot talk, then merged in any order.
        var replicas = [PNCounter(), PNCounter(), PNCounter()]
        for round in 0..<100 {
            replicas[round % 3].add(1, at: [us, eu, ap][round % 3])
        }
        replicas[1].add(-4, at: eu)
        let merged = replicas[2].merged(replicas[0]).merged(replicas[1])
        #expect(merged.value == 96)
        #expect(replicas[0].merged(replicas[1]).merged(replicas[2]) == merged)
        var likes = GCounter()
        likes.increment(3, at: us)
        likes.merge(likes)
        #expect(likes.value == 3, "a state delivered twice counts once")
    }

    @Test func orSetAddWinsOverAConcurrentRemove() {
        var cart = ORSet()
        cart.add("book", at: us)
        var euCopy = cart
        var usCopy = cart
        euCopy.remove("book")               // eu-west removes the book it saw...
        usCopy.add("book", at: us)          // ...while us-east adds it again, concurrently.
        #expect(euCopy.merged(usCopy).contains("book") && usCopy.merged(euCopy).contains("book"))
        // A remove that saw the add wins over it.
        var later = euCopy.merged(usCopy)
        later.remove("book")
        #expect(!later.merged(usCopy).contains("book") && later.merged(euCopy).elements.isEmpty)
    }

    @Test func mvRegisterKeepsConcurrentValuesUntilAWriteThatSawThem() {
        var a = MVRegister(), b = MVRegister()
        a.assign("red", at: us)
        b.assign("blue", at: eu)
        var both = a.merged(b)
        #expect(both.values.sorted() == ["blue", "red"])
        both.assign("purple", at: ap)
        #expect(both.merged(a).merged(b).values == ["purple"])
    }

    @Test func lwwRegisterKeepsTheHighestTimestamp() {
        var a = LWWRegister(), b = LWWRegister()
        a.assign("early", at: HLCTimestamp(physicalMs: 10, logical: 0, region: us))
        b.assign("late", at: HLCTimestamp(physicalMs: 11, logical: 0, region: eu))
        #expect(a.merged(b).value == "late" && b.merged(a).value == "late")
        // Equal physical time and counter: the region name decides, the same way everywhere.
        var c = LWWRegister(), d = LWWRegister()
        c.assign("from-ap", at: HLCTimestamp(physicalMs: 5, logical: 0, region: ap))
        d.assign("from-us", at: HLCTimestamp(physicalMs: 5, logical: 0, region: us))
        #expect(c.merged(d).value == d.merged(c).value)
    }

    @Test func orMapFieldsMergeAndAConcurrentUpdateRevivesARemovedKey() throws {
        var a = ORMap()
        try a.update("likes", type: .pnCounter, .increment(2), at: HLCTimestamp(physicalMs: 1, logical: 0, region: us))
        var b = a
        try b.update("likes", type: .pnCounter, .increment(3), at: HLCTimestamp(physicalMs: 2, logical: 0, region: eu))
        a.remove("likes")
        let merged = a.merged(b)
        guard case .pnCounter(let counter)? = merged["likes"] else {
            Issue.record("the concurrently updated key was lost")
            return
        }
        #expect(counter.value == 5 && merged == b.merged(a))
    }
}

/// A seeded generator, so a failing property run repeats exactly.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
