// Proves the history checkers object to histories that break their property and accept ones that keep it:
// hand-written bad histories for each way a register can fail linearizability and each session guarantee,
// plus large generated histories that are linearizable by construction (no false alarms), and the same
// histories with one read corrupted (caught).
import MeridianCore
import MeridianTestKit
import Testing

@Suite struct LinearizabilityCheckerTests {
    let checker = LinearizabilityChecker()

    func w(_ value: String?, _ call: UInt64, _ returned: UInt64?, key: String = "k") -> RegisterOperation {
        RegisterOperation(key: key, kind: .write(value), call: call, returned: returned)
    }

    func r(_ value: String?, _ call: UInt64, _ returned: UInt64?, key: String = "k") -> RegisterOperation {
        RegisterOperation(key: key, kind: .read(value), call: call, returned: returned)
    }

    func isViolation(_ verdict: LinearizabilityChecker.Verdict) -> Bool {
        if case .violation = verdict { return true }
        return false
    }

    @Test func acceptsSequentialAndConcurrentHistories() {
        #expect(checker.check([w("1", 0, 1), r("1", 2, 3)]) == .linearizable)
        // The read overlaps the write: it may see either value, but a later read must not go back.
        #expect(checker.check([w("1", 0, 10), r(nil, 1, 2), r("1", 3, 4)]) == .linearizable)
        #expect(checker.check([w("1", 0, 10), r("1", 1, 2), r("1", 3, 4), r("1", 11, 12)]) == .linearizable)
        // Two overlapping writes may take effect in either order.
        #expect(checker.check([w("1", 0, 10), w("2", 0, 10), r("1", 11, 12)]) == .linearizable)
        #expect(checker.check([w("1", 0, 10), w("2", 0, 10), r("2", 11, 12)]) == .linearizable)
        // A delete, and a read of the initial value.
        #expect(checker.check([r("init", 0, 1), w(nil, 2, 3), r(nil, 4, 5)], initial: "init") == .linearizable)
    }

    @Test func objectsToStaleAndTimeTravellingReads() {
        // A read after a completed write misses it.
        #expect(isViolation(checker.check([w("1", 0, 1), r(nil, 2, 3)])))
        // Once a read saw the write, a later read cannot miss it.
        #expect(isViolation(checker.check([w("1", 0, 10), r("1", 1, 2), r(nil, 3, 4)])))
        // Two writes took effect in one order for one reader and the other order for a later one.
        #expect(isViolation(checker.check([w("1", 0, 10), w("2", 0, 10), r("2", 11, 12), r("1", 13, 14)])))
        // A value nobody wrote.
        #expect(isViolation(checker.check([w("1", 0, 1), r("7", 2, 3)])))
        // A write that completed before another began cannot be the last one seen.
        #expect(isViolation(checker.check([w("1", 0, 1), w("2", 2, 3), r("1", 4, 5)])))
    }

    @Test func unknownOutcomesMayOrMayNotHaveHappened() {
        // A write that timed out may take effect late, or never: both reads are fine.
        #expect(checker.check([w("1", 0, nil), r(nil, 1, 2), r("1", 3, 4)]) == .linearizable)
        #expect(checker.check([w("1", 0, nil), r(nil, 1, 2), r(nil, 3, 4)]) == .linearizable)
        // But once seen, it happened.
        #expect(isViolation(checker.check([w("1", 0, nil), r("1", 3, 4), r(nil, 5, 6)])))
        // A read without an answer says nothing.
        #expect(checker.check([w("1", 0, 1), r("9", 2, nil)]) == .linearizable)
    }

    @Test func keysAreCheckedSeparatelyAndTheBadOneIsNamed() {
        let history = [w("1", 0, 1, key: "a"), r("1", 2, 3, key: "a"), w("1", 0, 1, key: "b"), r(nil, 2, 3, key: "b")]
        guard case .violation(let key, let operations) = checker.check(history) else {
            Issue.record("a stale read of b was accepted")
            return
        }
        #expect(key == "b" && operations.count == 2)
    }

    /// A history linearizable by construction: every operation takes effect at a point strictly inside its
    /// [call, return] window, on a register simulated in point order; windows overlap heavily.
    static func generated(seed: UInt64, keys: Int, operations: Int) -> [RegisterOperation] {
        var generator = SeededGenerator(seed: seed)
        var state: [String: String?] = [:]
        var history: [RegisterOperation] = []
        var point: UInt64 = 1_000
        for index in 0..<operations {
            point += UInt64.random(in: 1...5, using: &generator)
            let key = "k\(Int.random(in: 0..<keys, using: &generator))"
            let call = point - UInt64.random(in: 1...40, using: &generator)
            let returned: UInt64? = Int.random(in: 0..<50, using: &generator) == 0 ? nil : point + UInt64.random(in: 1...40, using: &generator)
            if Bool.random(using: &generator) {
                let value: String? = Int.random(in: 0..<10, using: &generator) == 0 ? nil : "v\(index)"
                state[key] = value
                history.append(RegisterOperation(key: key, kind: .write(value), call: call, returned: returned))
            } else {
                history.append(RegisterOperation(key: key, kind: .read(state[key] ?? nil), call: call, returned: returned ?? point + 1))
            }
        }
        return history
    }

    /// A history as the nemesis's clients make one: `clients` clients each send one request at a time to a
    /// single register with unique values. A request times out one time in `unknownOneIn`: a read then
    /// tells nothing, a write took effect or not (a coin), and the client waits out `timeoutMs` before
    /// its next request. Linearizable by construction: each effect happens at a point inside its window.
    static func clientHistory(seed: UInt64, clients: Int, operations: Int, unknownOneIn: Int, timeoutMs: UInt64 = 200) -> [RegisterOperation] {
        var generator = SeededGenerator(seed: seed)
        var free = Array(repeating: UInt64(0), count: clients)
        // (call, effect point or nil when a timed-out write never took effect, return, is a write, value)
        var planned: [(call: UInt64, point: UInt64?, returned: UInt64?, write: Bool, value: String)] = []
        for index in 0..<operations {
            let client = Int.random(in: 0..<clients, using: &generator)
            let call = free[client] + UInt64.random(in: 0...5, using: &generator)
            let point = call + UInt64.random(in: 1...30, using: &generator)
            let timedOut = Int.random(in: 0..<unknownOneIn, using: &generator) == 0
            let write = Bool.random(using: &generator)
            let returned = point + UInt64.random(in: 1...30, using: &generator)
            planned.append((call, write && timedOut && Bool.random(using: &generator) ? nil : point, timedOut ? nil : returned, write, "v\(index)"))
            free[client] = timedOut ? call + timeoutMs : returned
        }
        var state: String?
        var history = Array(repeating: RegisterOperation(key: "k", kind: .read(nil), call: 0, returned: nil), count: planned.count)
        for index in planned.indices.sorted(by: { (planned[$0].point ?? .max, $0) < (planned[$1].point ?? .max, $1) }) {
            let plan = planned[index]
            if plan.write {
                if plan.point != nil { state = plan.value }
                history[index] = RegisterOperation(key: "k", kind: .write(plan.value), call: plan.call, returned: plan.returned)
            } else {
                history[index] = RegisterOperation(key: "k", kind: .read(state), call: plan.call, returned: plan.returned)
            }
        }
        return history
    }

    @Test func largeGeneratedHistoriesAreAcceptedAndACorruptedReadIsCaught() {
        for seed in UInt64(1)...20 {
            var history = Self.generated(seed: seed, keys: 3, operations: 300)
            #expect(checker.check(history) == .linearizable, "seed \(seed): a linearizable-by-construction history was refused")
            // Corrupt one completed read to a value no write ever stored.
            if let index = history.indices.last(where: { if case .read = history[$0].kind { return history[$0].returned != nil } else { return false } }) {
                let read = history[index]
                history[index] = RegisterOperation(key: read.key, kind: .read("never-written"), call: read.call, returned: read.returned)
                #expect(isViolation(checker.check(history)), "seed \(seed): a read of a value never written was accepted")
            }
        }
    }

    @Test func longHistoriesWithManyTimedOutWritesAreDecided() {
        // One register, thousands of requests from six clients, one in four answered by a timeout (as a
        // nemesis run of minutes produces): decided, and a corrupted read is still caught.
        for seed in UInt64(1)...5 {
            var history = Self.clientHistory(seed: seed, clients: 6, operations: 6_000, unknownOneIn: 4, timeoutMs: 40)
            #expect(checker.check(history) == .linearizable, "seed \(seed)")
            // The last completed read corrupted to return the first completed write's value, overwritten
            // by thousands of completed writes since.
            guard let first = history.first(where: { if case .write(_?) = $0.kind { return $0.returned != nil } else { return false } }),
                  case .write(let firstValue?) = first.kind,
                  let index = history.indices.last(where: { if case .read = history[$0].kind { return history[$0].returned != nil } else { return false } })
            else { continue }
            let read = history[index]
            history[index] = RegisterOperation(key: read.key, kind: .read(firstValue), call: read.call, returned: read.returned)
            #expect(isViolation(checker.check(history)), "seed \(seed): a read that went back in time was accepted")
        }
        // A timed-out write that was read is bounded by that read, not dropped: a later read cannot miss it.
        #expect(isViolation(checker.check([w("1", 0, nil), w("2", 1, 2), r("1", 3, 4), r("2", 5, 6)])))
        #expect(checker.check([w("1", 0, nil), w("2", 1, 2), r("2", 3, 4), r("1", 5, 6)]) == .linearizable)
        // A timed-out delete that nobody saw is dropped; one whose nil a read returned is kept open.
        #expect(checker.check([w("1", 0, 1), w(nil, 2, nil), r("1", 3, 4)]) == .linearizable)
        #expect(isViolation(checker.check([w("1", 0, 1), w(nil, 2, nil), r(nil, 3, 4), r("1", 5, 6)])))
    }
}

@Suite struct SessionCheckerTests {
    let checker = SessionChecker()
    let us = RegionName(validated: "us-east")
    let eu = RegionName(validated: "eu-west")

    func version(_ origin: RegionName, _ sequence: UInt64, _ ms: UInt64) -> Version {
        Version(hlc: HLCTimestamp(physicalMs: ms, logical: 0, region: origin), sequence: sequence)
    }

    func write(_ session: Int, _ key: String, _ version: Version) -> SessionOperation {
        SessionOperation(session: session, key: key, kind: .write(version, deleted: false))
    }

    func read(_ session: Int, _ key: String, _ version: Version?) -> SessionOperation {
        SessionOperation(session: session, key: key, kind: .read(version))
    }

    @Test func acceptsAHistoryThatKeepsEveryGuarantee() {
        let a = version(eu, 1, 10), b = version(us, 1, 20)
        let sessions = [
            [write(0, "a", a), write(0, "b", b), read(0, "a", a)],
            [read(1, "b", b), read(1, "a", a), read(1, "b", b)],
            [read(2, "a", nil), read(2, "b", nil)],  // saw nothing yet: owed nothing
        ]
        #expect(checker.check(sessions).isEmpty)
    }

    @Test func objectsToEachBrokenGuarantee() {
        let a1 = version(eu, 1, 10), a2 = version(eu, 2, 30), b = version(us, 1, 20)
        // Read-your-writes: the session wrote a, then read nothing there.
        let ryw = checker.check([[write(0, "a", a1), read(0, "a", nil)]])
        #expect(ryw.map(\.guarantee) == [.readYourWrites])
        // Monotonic reads: the newer version, then the older one.
        let mr = checker.check([[write(0, "a", a1)], [write(1, "a", a2)], [read(2, "a", a2), read(2, "a", a1)]])
        #expect(mr.map(\.guarantee) == [.monotonicReads])
        // Writes-follow-reads seen by another client: session 0 wrote a, then b; a reader of b misses a.
        let wfr = checker.check([[write(0, "a", a1), write(0, "b", b)], [read(1, "b", b), read(1, "a", nil)]])
        #expect(wfr.map(\.guarantee) == [.causal])
        // The same through a read: session 0 read a (written by 2), then wrote b; a reader of b misses a.
        let throughRead = checker.check([[write(2, "a", a1)], [read(0, "a", a1), write(0, "b", b)], [read(1, "b", b), read(1, "a", nil)]])
        #expect(throughRead.map(\.guarantee) == [.causal])
        // The token's origin prefix: having seen eu-west's 2nd write, eu-west's 1st is owed too.
        let prefix = checker.check([[write(0, "a", a1)], [write(1, "c", a2)], [read(2, "c", a2), read(2, "a", nil)]])
        #expect(prefix.map(\.guarantee) == [.originPrefix])
        // A delete the session saw makes absence correct.
        let deleted = Version(hlc: HLCTimestamp(physicalMs: 40, logical: 0, region: eu), sequence: 3)
        #expect(checker.check([[write(0, "a", a1), SessionOperation(session: 0, key: "a", kind: .write(deleted, deleted: true)), read(0, "a", nil)]]).isEmpty)
    }
}

@Suite struct StalenessCheckerTests {
    @Test func aReadMustReflectWritesAcknowledgedBeforeItsBound() {
        let us = RegionName(validated: "us-east")
        let write = StalenessChecker.Write(key: "k", version: Version(hlc: HLCTimestamp(physicalMs: 100, logical: 0, region: us), sequence: 1), acknowledged: 100)
        let checker = StalenessChecker()
        // Sent 1,050 ms later with a 1,000 ms bound: the write may still be missing.
        #expect(checker.check(writes: [write], reads: [.init(key: "k", call: 1_050, maxStalenessMs: 1_000, returned: nil)]).isEmpty)
        // Sent 1,200 ms later: it must be there.
        #expect(checker.check(writes: [write], reads: [.init(key: "k", call: 1_200, maxStalenessMs: 1_000, returned: nil)]).count == 1)
        #expect(checker.check(writes: [write], reads: [.init(key: "k", call: 1_200, maxStalenessMs: 1_000, returned: write.version)]).isEmpty)
    }
}
