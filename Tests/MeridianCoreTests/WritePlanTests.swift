// Proves the core's write planning (`WritePlanner.plan`), which the store runs inside each write's transaction:
// If-Match is judged on the rule's winner, the timestamp is issued past the session's (or the write refused when
// that is beyond the clock bound), CRDT operations become deltas of the key's type within the value limit, a
// `siblings` write supersedes exactly the context it names and is bounded, and the entry records its session's
// dependencies on other origins only. Each case asserts on the plan, with explicit time.
import MeridianCore
import Testing

@Suite struct WritePlanTests {
    static let (us, eu) = (RegionName(validated: "us-east"), RegionName(validated: "eu-west"))
    static let keyspace = try! KeyspaceName("profiles")
    static let key = try! Key("k")

    static func put(_ value: String, precondition: WriteRequest.Precondition? = nil, after: HLCTimestamp? = nil, context: VersionVector? = nil,
                    dependencies: [RegionName: UInt64] = [:]) -> WriteRequest {
        WriteRequest(keyspace: keyspace, key: key, operation: .put, contentType: "text/plain", value: Array(value.utf8),
                     precondition: precondition, after: after, dependencies: dependencies, context: context)
    }

    /// The key's state after `entries` applied in order under `rule`.
    static func state(_ entries: [ReplicationEntry], rule: ConflictRule) throws -> KeyState? {
        var state: KeyState?
        for entry in entries { state = try KeyChange.applying(entry, rule: rule, to: state)?.state ?? state }
        return state
    }

    static func entry(_ plan: WritePlan) -> ReplicationEntry? {
        if case .append(let entry) = plan { entry } else { nil }
    }

    @Test func ifMatchIsJudgedOnTheCurrentVersionAndAPlanTakesNoSequenceWhenItFails() throws {
        var clock = HybridLogicalClock(region: Self.us)
        let first = try #require(Self.entry(WritePlanner.plan(Self.put("a"), state: nil, rule: .lww, origin: Self.us, sequence: 1,
                                                              clock: &clock, physicalMs: 1_000, limits: Limits())))
        let state = try Self.state([first], rule: .lww)
        let stale = Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: Self.us), sequence: 9)
        #expect(WritePlanner.plan(Self.put("b", precondition: .versionIsOneOf([stale])), state: state, rule: .lww, origin: Self.us, sequence: 2,
                                  clock: &clock, physicalMs: 1_001, limits: Limits()) == .preconditionFailed(current: first.version))
        #expect(WritePlanner.plan(Self.put("b", precondition: .exists), state: nil, rule: .lww, origin: Self.us, sequence: 2,
                                  clock: &clock, physicalMs: 1_001, limits: Limits()) == .preconditionFailed(current: nil))
        let second = try #require(Self.entry(WritePlanner.plan(Self.put("b", precondition: .versionIsOneOf([stale, first.version])), state: state, rule: .lww,
                                                               origin: Self.us, sequence: 2, clock: &clock, physicalMs: 1_001, limits: Limits())))
        #expect(second.sequence == 2 && second.hlc > first.hlc && second.context == [Self.us: 1], "it supersedes what the region holds")
    }

    @Test func theTimestampOrdersAfterTheSessionOrTheWriteIsRefused() throws {
        var clock = HybridLogicalClock(region: Self.us, maxOffsetMs: 500)
        // The session saw eu-west's write 300 ms ahead of this clock: within the bound, the write orders after it.
        let seen = HLCTimestamp(physicalMs: 10_300, logical: 4, region: Self.eu)
        let entry = try #require(Self.entry(WritePlanner.plan(Self.put("a", after: seen, dependencies: [Self.eu: 7, Self.us: 3]), state: nil, rule: .lww,
                                                              origin: Self.us, sequence: 1, clock: &clock, physicalMs: 10_000, limits: Limits())))
        #expect(entry.hlc > seen)
        #expect(entry.dependencies == [Self.eu: 7], "an origin's own log is not a dependency of its write")
        // 2 s ahead: beyond the bound, refused, and the clock does not adopt it.
        let runaway = HLCTimestamp(physicalMs: 12_000, logical: 0, region: Self.eu)
        let before = clock.last
        guard case .refused(let error) = WritePlanner.plan(Self.put("b", after: runaway), state: nil, rule: .lww, origin: Self.us, sequence: 2,
                                                           clock: &clock, physicalMs: 10_001, limits: Limits()) else {
            Issue.record("a write after a runaway timestamp was planned")
            return
        }
        #expect(error.code == .clockOffsetExceeded && error.appliedOrImplied == .no)
        #expect(clock.last == before)
    }

    @Test func aCRDTOperationBecomesADeltaOfTheKeysTypeWithinTheLimits() throws {
        var clock = HybridLogicalClock(region: Self.us)
        let increment = WriteRequest(keyspace: Self.keyspace, key: Self.key, operation: .merge, contentType: "", value: [],
                                     crdt: CRDTRequest(type: .pnCounter, operation: .increment(5)))
        let delta = try #require(Self.entry(WritePlanner.plan(increment, state: nil, rule: .crdt, origin: Self.us, sequence: 1,
                                                              clock: &clock, physicalMs: 1_000, limits: Limits())))
        #expect(delta.operation == .merge && delta.contentType == CRDTCodec.contentType)
        let counter = try Self.state([delta], rule: .crdt)
        let asSet = WriteRequest(keyspace: Self.keyspace, key: Self.key, operation: .merge, contentType: "", value: [],
                                 crdt: CRDTRequest(type: .orSet, operation: .add(["x"])))
        guard case .refused(let mismatch) = WritePlanner.plan(asSet, state: counter, rule: .crdt, origin: Self.us, sequence: 2,
                                                              clock: &clock, physicalMs: 1_001, limits: Limits()) else {
            Issue.record("an or-set operation on a counter was planned")
            return
        }
        #expect(mismatch.code == .crdtTypeMismatch)
        // A plain put in a crdt keyspace, and a CRDT operation in an lww one, are refused.
        guard case .refused(let put) = WritePlanner.plan(Self.put("a"), state: nil, rule: .crdt, origin: Self.us, sequence: 2,
                                                         clock: &clock, physicalMs: 1_002, limits: Limits()),
              case .refused(let merge) = WritePlanner.plan(increment, state: nil, rule: .lww, origin: Self.us, sequence: 2,
                                                           clock: &clock, physicalMs: 1_003, limits: Limits()) else {
            Issue.record("a write of the wrong API was planned")
            return
        }
        #expect(put.code == .conflictPolicyMismatch && merge.code == .conflictPolicyMismatch)
        // A set that would grow past the value limit is refused.
        var small = Limits()
        small.valueBytesMax = 64
        let grow = WriteRequest(keyspace: Self.keyspace, key: Self.key, operation: .merge, contentType: "", value: [],
                                crdt: CRDTRequest(type: .orSet, operation: .add((0..<20).map { "element-\($0)" })))
        guard case .refused(let large) = WritePlanner.plan(grow, state: nil, rule: .crdt, origin: Self.us, sequence: 2,
                                                           clock: &clock, physicalMs: 1_004, limits: small) else {
            Issue.record("an operation past the value limit was planned")
            return
        }
        #expect(large.code == .valueTooLarge)
    }

    @Test func aSiblingsWriteSupersedesExactlyWhatItsClientReadAndIsBounded() throws {
        var clock = HybridLogicalClock(region: Self.us)
        var limits = Limits()
        limits.siblingsMax = 2
        let first = try #require(Self.entry(WritePlanner.plan(Self.put("a"), state: nil, rule: .siblings, origin: Self.us, sequence: 1,
                                                              clock: &clock, physicalMs: 1_000, limits: limits)))
        #expect(first.context.isEmpty, "a blind siblings write supersedes nothing")
        let held = try Self.state([first], rule: .siblings)
        let blind = try #require(Self.entry(WritePlanner.plan(Self.put("b"), state: held, rule: .siblings, origin: Self.us, sequence: 2,
                                                              clock: &clock, physicalMs: 1_001, limits: limits)))
        #expect(blind.context.isEmpty)
        let two = try Self.state([first, blind], rule: .siblings)
        #expect(two?.versions.count == 2)
        // A third blind version would exceed siblings_max; a write naming what it read replaces both.
        guard case .refused(let tooMany) = WritePlanner.plan(Self.put("c"), state: two, rule: .siblings, origin: Self.us, sequence: 3,
                                                             clock: &clock, physicalMs: 1_002, limits: limits) else {
            Issue.record("a version past siblings_max was planned")
            return
        }
        #expect(tooMany.code == .tooManySiblings)
        let resolving = try #require(Self.entry(WritePlanner.plan(Self.put("c", context: VersionVector([Self.us: 2])), state: two, rule: .siblings,
                                                                  origin: Self.us, sequence: 3, clock: &clock, physicalMs: 1_003, limits: limits)))
        #expect(try Self.state([first, blind, resolving], rule: .siblings)?.versions.count == 1)
        // A delete without a context removes every version held here.
        let delete = WriteRequest(keyspace: Self.keyspace, key: Self.key, operation: .delete, contentType: "", value: [])
        let removal = try #require(Self.entry(WritePlanner.plan(delete, state: two, rule: .siblings, origin: Self.us, sequence: 3,
                                                                clock: &clock, physicalMs: 1_004, limits: limits)))
        #expect(removal.context == [Self.us: 2])
    }
}
