// Proves conflict handling in the core: concurrency is decided by causal contexts (a write that saw another
// is never a conflict, whatever its timestamp), each rule picks the same winner in every region whatever
// order writes arrive in, siblings keep exactly the versions a write did not see, anti-entropy's state merge
// agrees with log delivery, and the CRDT codec and context token reject what they must.
import MeridianCore
import PropertyBased
import Testing

@Suite struct ConflictRuleTests {
    let us = RegionName(validated: "us-east")
    let eu = RegionName(validated: "eu-west")
    let ap = RegionName(validated: "ap-southeast")

    func version(_ region: RegionName, _ sequence: UInt64, ms: UInt64, _ value: String, tombstone: Bool = false) -> KeyVersion {
        KeyVersion(version: Version(hlc: HLCTimestamp(physicalMs: ms, logical: 0, region: region), sequence: sequence),
                   tombstone: tombstone, contentType: "text/plain", value: Array(value.utf8))
    }

    func applied(_ outcome: KeyState.Outcome) throws -> KeyState {
        guard case .applied(let state) = outcome else {
            Issue.record("the write was dropped as superseded")
            throw CancellationError()
        }
        return state
    }

    @Test func aWriteThatSawAnotherIsNeverAConflict() throws {
        // eu-west's write has the lower timestamp (a slow clock) but saw us-east's: it replaces it under every rule.
        let first = version(us, 1, ms: 500, "first")
        let state = try applied(KeyState.applying(first, context: VersionVector(), to: nil))
        let second = version(eu, 1, ms: 100, "second")
        let after = try applied(KeyState.applying(second, context: state.context, to: state))
        #expect(after.versions == [second])
        for rule in [ConflictRule.lww, .fww, .regionPriority([us, eu]), .siblings] {
            #expect(after.winner(rule) == second && after.losers(rule).isEmpty)
        }
    }

    @Test func concurrentWritesResolveByEachRule() throws {
        let a = version(us, 1, ms: 200, "from-us")
        let b = version(eu, 1, ms: 100, "from-eu")
        let c = version(ap, 1, ms: 300, "from-ap")
        var state = try applied(KeyState.applying(a, context: VersionVector(), to: nil))
        state = try applied(KeyState.applying(b, context: VersionVector(), to: state))
        state = try applied(KeyState.applying(c, context: VersionVector(), to: state))
        #expect(state.versions.count == 3)
        #expect(state.winner(.lww) == c)
        #expect(state.winner(.fww) == b)
        #expect(state.winner(.regionPriority([eu, ap, us])) == b)
        #expect(state.winner(.regionPriority([ap])) == c, "an unlisted region ranks after every listed one")
        #expect(state.winner(.regionPriority([])) == c, "equal ranks fall back to lww")
        #expect(Set(state.losers(.fww)) == [a, c])
        #expect(state.losers(.siblings).isEmpty && state.losers(.crdt).isEmpty, "siblings and crdt discard nothing")
        // Equal timestamps: the region name decides, so the order stays total.
        let tie1 = version(us, 2, ms: 50, "x"), tie2 = version(eu, 2, ms: 50, "y")
        #expect(ConflictRule.lww.prefers(tie1, over: tie2) != ConflictRule.lww.prefers(tie2, over: tie1))
    }

    @Test func siblingsReplaceExactlyTheVersionsTheWriterSaw() throws {
        let a = version(us, 1, ms: 1, "a"), b = version(eu, 1, ms: 2, "b")
        var state = try applied(KeyState.applying(a, context: VersionVector(), to: nil))
        state = try applied(KeyState.applying(b, context: VersionVector(), to: state))
        // A client read both (context {us:1, eu:1}) and writes a resolution; meanwhile ap-southeast wrote blind.
        let seen = state.context
        let blind = version(ap, 1, ms: 3, "c")
        state = try applied(KeyState.applying(blind, context: VersionVector(), to: state))
        let resolved = version(us, 2, ms: 4, "a+b")
        state = try applied(KeyState.applying(resolved, context: seen, to: state))
        #expect(Set(state.versions) == [blind, resolved])
        // A live version stands for the set over a delete.
        let delete = version(eu, 2, ms: 9, "", tombstone: true)
        state = try applied(KeyState.applying(delete, context: VersionVector(), to: state))
        #expect(!state.winner(.siblings).tombstone)
        // A write arriving after one that saw it is dropped, not resurrected.
        #expect(KeyState.applying(a, context: VersionVector(), to: state) == .superseded)
    }

    /// Three regions write two keys concurrently and exchange their logs in random interleavings (each
    /// origin's log in order, as streams deliver it). After full delivery every region holds the same state,
    /// and every rule picks the same winner. Merging any regions' states (anti-entropy) gives that state too.
    @Test func everyDeliveryOrderConverges() async {
        let regions = [us, eu, ap]
        await propertyCheck(count: 400, input: Gen.uint64(in: 0...UInt64.max).array(of: 1...80)) { script in
            var logs: [[(key: Int, version: KeyVersion, context: VersionVector)]] = [[], [], []]
            var states: [[Int: KeyState]] = [[:], [:], [:]]
            var delivered = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]   // [region][origin]
            var clock: UInt64 = 0
            func deliver(_ region: Int, _ origin: Int) {
                let entry = logs[origin][delivered[region][origin]]
                delivered[region][origin] += 1
                if case .applied(let next) = KeyState.applying(entry.version, context: entry.context, to: states[region][entry.key]) {
                    states[region][entry.key] = next
                }
            }
            for word in script {
                let region = Int(word % 3), key = Int(word / 3 % 2)
                clock += word / 6 % 3   // clocks stall too: equal timestamps happen
                if word / 18 % 2 == 0 {
                    // A local write: it saw everything this region holds of the key (lww/fww/priority), or, one
                    // time in three, only what a client read earlier (siblings-style, an empty context).
                    let context = word / 36 % 3 == 0 ? VersionVector() : (states[region][key]?.context ?? VersionVector())
                    let sequence = UInt64(logs[region].count + 1)
                    let written = version(regions[region], sequence, ms: clock, "v\(word % 1000)", tombstone: word / 108 % 5 == 0)
                    logs[region].append((key, written, context))
                    delivered[region][region] += 1
                    if case .applied(let next) = KeyState.applying(written, context: context, to: states[region][key]) { states[region][key] = next }
                } else {
                    let origin = Int(word / 36 % 3)
                    if origin != region && delivered[region][origin] < logs[origin].count { deliver(region, origin) }
                }
            }
            let partial = states
            for region in 0..<3 {
                for origin in 0..<3 where origin != region {
                    while delivered[region][origin] < logs[origin].count { deliver(region, origin) }
                }
            }
            for key in 0..<2 {
                let finals = states.map { $0[key] }
                #expect(finals[0] == finals[1] && finals[1] == finals[2], "regions converge")
                guard let final = finals[0] else { continue }
                for rule in [ConflictRule.lww, .fww, .regionPriority([eu, us])] {
                    #expect(Set(states.map { $0[key]!.winner(rule) }).count == 1)
                }
                // Anti-entropy from the partial states (before full delivery) in either order: the state
                // holds every write some region held, so the merge must be the converged state whenever the
                // partial states together saw every write.
                let held = partial.compactMap { $0[key] }
                if let first = held.first {
                    let forward = held.dropFirst().reduce(first) { $0.merged(with: $1) }
                    let backward = held.reversed().dropFirst().reduce(held.last!) { $0.merged(with: $1) }
                    #expect(forward == backward, "state merge is order-independent")
                    let everyWrite = logs.flatMap { $0 }.filter { $0.key == key }.allSatisfy { forward.context.contains($0.version.dot) }
                    if everyWrite { #expect(forward == final, "anti-entropy agrees with log delivery") }
                }
            }
        }
    }
}

@Suite struct CRDTApplyTests {
    let us = RegionName(validated: "us-east")
    let ap = RegionName(validated: "ap-southeast")

    func increment(_ region: RegionName, _ sequence: UInt64, by amount: UInt64, on state: KeyState?) throws -> ReplicationEntry {
        var value = CRDTValue.empty(.gCounter)
        if let state, let held = try? CRDTCodec.decode(state.winner(.crdt).value) { value = held }
        let hlc = HLCTimestamp(physicalMs: sequence, logical: 0, region: region)
        let delta = try value.apply(.increment(amount), at: hlc)
        var context: [RegionName: UInt64] = [:]
        for origin in state?.context.regions ?? [] { context[origin] = state!.context[origin] }
        return ReplicationEntry(origin: region, sequence: sequence, hlc: hlc, epoch: 0, keyspace: try KeyspaceName("likes"),
                                key: try Key("post"), operation: .merge, contentType: CRDTCodec.contentType, value: CRDTCodec.encode(delta),
                                context: context)
    }

    /// Found by the simulator: a delta whose writer had seen another region's delta must not mark that delta
    /// as merged where it arrives first, or the earlier increment is skipped when it comes.
    @Test func aDeltaArrivingBeforeOneItsWriterSawStillCountsBoth() throws {
        let first = try increment(us, 1, by: 3, on: nil)
        let atAP = try #require(try KeyChange.applying(first, rule: .crdt, to: nil)).state
        let second = try increment(ap, 1, by: 4, on: atAP)
        #expect(!second.context.isEmpty, "ap-southeast's delta was written having seen us-east's")
        // eu-west receives ap-southeast's delta first, then us-east's.
        let afterSecond = try #require(try KeyChange.applying(second, rule: .crdt, to: nil)).state
        let afterBoth = try #require(try KeyChange.applying(first, rule: .crdt, to: afterSecond), "us-east's delta was skipped").state
        guard case .gCounter(let counter) = try CRDTCodec.decode(afterBoth.winner(.crdt).value) else { throw CancellationError() }
        #expect(counter.value == 7)
        // Delivered again, a delta changes nothing.
        #expect(try KeyChange.applying(first, rule: .crdt, to: afterBoth) == nil)
    }
}

@Suite struct CRDTCodecTests {
    let us = RegionName(validated: "us-east")
    let eu = RegionName(validated: "eu-west")

    @Test func everyTypeRoundTripsCanonically() throws {
        var values: [CRDTValue] = CRDTType.allCases.map(CRDTValue.empty)
        var map = CRDTValue.empty(.orMap)
        var set = CRDTValue.empty(.orSet)
        for step in 1...20 {
            let at = HLCTimestamp(physicalMs: UInt64(step), logical: 0, region: step % 2 == 0 ? us : eu)
            _ = try map.apply(.update(field: "f\(step % 4)", type: .pnCounter, .increment(UInt64(step))), at: at)
            _ = try map.apply(.update(field: "g\(step % 3)", type: .mvRegister, .assign("v\(step)")), at: at)
            _ = try set.apply(step % 3 == 0 ? .remove(["e\(step % 5)"]) : .add(["e\(step % 5)", "ü\(step)"]), at: at)
            if step % 7 == 0 { _ = try map.apply(.removeFields(["f1"]), at: at) }
        }
        values += [map, set]
        for value in values {
            let bytes = CRDTCodec.encode(value)
            #expect(try CRDTCodec.decode(bytes) == value)
            #expect(CRDTCodec.encode(try CRDTCodec.decode(bytes)) == bytes, "equal states encode to equal bytes")
        }
    }

    @Test func wrongOperationsAreRefused() {
        var counter = CRDTValue.empty(.gCounter)
        let at = HLCTimestamp(physicalMs: 1, logical: 0, region: us)
        #expect(throws: MeridianError.self) { try counter.apply(.add(["x"]), at: at) }
        #expect(throws: MeridianError.self) { try counter.apply(.decrement(1), at: at) }
        var map = CRDTValue.empty(.orMap)
        #expect(throws: MeridianError.self) { try map.apply(.update(field: "m", type: .orMap, .removeFields(["x"])), at: at) }
        _ = try? map.apply(.update(field: "n", type: .gCounter, .increment(1)), at: at)
        #expect(throws: MeridianError.self) { try map.apply(.update(field: "n", type: .orSet, .add(["x"])), at: at) }
    }

    /// Truncations and byte flips of valid encodings, and random bytes: decoding answers a value or a typed
    /// error, and never traps.
    @Test func garbageIsRejectedWithoutTrapping() async throws {
        var set = CRDTValue.empty(.orMap)
        _ = try set.apply(.update(field: "cart", type: .orSet, .add(["a", "b"])), at: HLCTimestamp(physicalMs: 3, logical: 1, region: us))
        let valid = CRDTCodec.encode(set)
        for length in 0..<valid.count { _ = try? CRDTCodec.decode(Array(valid.prefix(length))) }
        await propertyCheck(count: 500, input: Gen.uint64(in: 0...UInt64.max).array(of: 1...4)) { words in
            var bytes = valid
            for word in words { bytes[Int(word % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: word >> 32) }
            _ = try? CRDTCodec.decode(bytes)
            let random = words.flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> ($0 * 8)) } }
            _ = try? CRDTCodec.decode([1] + random)
        }
    }

    @Test func contextTokensAreAuthenticated() throws {
        let key = SessionKey(secret: "a-secret-of-sufficient-length")
        var context = VersionVector()
        context.set(us, 7)
        context.set(eu, 3)
        let (keyspace, item) = (try KeyspaceName("carts"), try Key("alice"))
        let token = CausalContextToken.encode(context, keyspace: keyspace, key: item, with: key)
        #expect(try CausalContextToken.decode(token, keyspace: keyspace, key: item, with: key) == context)
        #expect(throws: MeridianError.self) { try CausalContextToken.decode(token, keyspace: keyspace, key: item, with: SessionKey(secret: "another-secret-entirely")) }
        // One key's context is not another's: it would name writes that are not that key's.
        #expect(throws: MeridianError.self) { try CausalContextToken.decode(token, keyspace: keyspace, key: try Key("bob"), with: key) }
        #expect(throws: MeridianError.self) { try CausalContextToken.decode(token, keyspace: try KeyspaceName("carts2"), key: item, with: key) }
        var altered = Array(token.utf8)
        altered[5] = altered[5] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(throws: MeridianError.self) { try CausalContextToken.decode(String(decoding: altered, as: UTF8.self), keyspace: keyspace, key: item, with: key) }
        // A session token is not a context, even though the same key signs both.
        let session = SessionToken().encoded(with: key)
        #expect(throws: MeridianError.self) { try CausalContextToken.decode("c1." + session.dropFirst(3), keyspace: keyspace, key: item, with: key) }
    }
}
