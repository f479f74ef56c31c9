// Proves the CRDT types' laws with seeded property tests: on states reached by random operations and
// random merges among three replicas, merge is commutative, associative and idempotent, and merging all
// replicas in any order gives one state. Plus each type's intended semantics: exact counter totals,
// add-wins sets, concurrent values kept by the multi-value register, last-writer-wins by HLC, and map
// fields that merge.
import MeridianCore
import PropertyBased
import Testing

/// A CRDT the law tests can drive: `op` picks an operation deterministically.
protocol Scripted: ConvergentType {
    init()
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64)
}

extension GCounter: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) { increment(op % 5 + 1, at: region) }
}

extension PNCounter: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) { add(Int64(op % 11) - 5, at: region) }
}

extension ORSet: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) {
        if op % 3 == 0 { remove("e\(op / 3 % 4)") } else { add("e\(op / 3 % 4)", at: region) }
    }
}

extension LWWRegister: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) {
        assign("v\(op % 100)", at: HLCTimestamp(physicalMs: clock / 2, logical: UInt32(op % 2), region: region))
    }
}

extension MVRegister: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) { assign("v\(op % 100)", at: region) }
}

extension ORMap: Scripted {
    mutating func apply(op: UInt64, at region: RegionName, clock: UInt64) {
        let key = "f\(op % 3)"
        switch op / 3 % 4 {
        case 0: remove(key)
        case 1: update(key, at: region, initial: .pnCounter(PNCounter())) { field in
            if case .pnCounter(var counter) = field { counter.add(Int64(op % 7) - 3, at: region); field = .pnCounter(counter) }
        }
        case 2: update("s\(op % 2)", at: region, initial: .orSet(ORSet())) { field in
            if case .orSet(var set) = field { set.add("x\(op % 5)", at: region); field = .orSet(set) }
        }
        default: update("r", at: region, initial: .mvRegister(MVRegister())) { field in
            if case .mvRegister(var register) = field { register.assign("m\(op % 9)", at: region); field = .mvRegister(register) }
        }
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
                replicas[i].apply(op: word / 36, at: regions[i], clock: UInt64(step + 1))
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

    @Test func orMapFieldsMergeAndAConcurrentUpdateRevivesARemovedKey() {
        var a = ORMap()
        a.update("likes", at: us, initial: .pnCounter(PNCounter())) { field in
            if case .pnCounter(var counter) = field { counter.add(2, at: us); field = .pnCounter(counter) }
        }
        var b = a
        b.update("likes", at: eu, initial: .pnCounter(PNCounter())) { field in
            if case .pnCounter(var counter) = field { counter.add(3, at: eu); field = .pnCounter(counter) }
        }
        a.remove("likes")
        let merged = a.merged(b)
        guard case .pnCounter(let counter)? = merged["likes"] else {
            Issue.record("the concurrently updated key was lost")
            return
        }
        #expect(counter.value == 5 && merged == b.merged(a))
    }
}
