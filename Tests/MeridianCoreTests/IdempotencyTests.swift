// Proves the core's idempotency rules: what an Idempotency-Key may be, that a request's fingerprint changes with
// anything that makes it another request, how a retry is told from a reused key, where a multi-leader keyspace's
// idempotent writes are taken (where they arrive by default; with `idempotency: home` the same region from every
// region, moving only the keys of a region that goes down), and that the mark survives the entry codec and a
// corrupt one is refused.
@testable import MeridianCore
import Testing

@Suite struct IdempotencyTests {
    let config = try! ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
    let keyspace = try! KeyspaceName("profiles")

    func code(_ body: () throws -> Void) -> MeridianError.Code? {
        do { try body(); return nil } catch let error as MeridianError { return error.code } catch { return .internalError }
    }

    @Test func keysAreOneTo255VisibleASCIICharacters() throws {
        #expect(try IdempotencyKey("3f2b8c1e-9d4a-4b6e-8f00-1a2b3c4d5e6f").rawValue.count == 36)
        #expect(try IdempotencyKey(String(repeating: "k", count: 255)).rawValue.count == 255)
        for bad in ["", String(repeating: "k", count: 256), "has space", "tab\t", "é", "line\n"] {
            #expect(code { _ = try IdempotencyKey(bad) } == .invalidHeader, "\(bad.debugDescription)")
        }
    }

    func mark(_ key: String = "k", dataKey: String = "a", operation: Operation = .put, contentType: String = "text/plain", value: String = "one",
              precondition: WriteRequest.Precondition? = nil, keyspace: String = "profiles") -> IdempotencyMark {
        IdempotencyMark(key: try! IdempotencyKey(key), keyspace: try! KeyspaceName(keyspace), dataKey: try! Key(dataKey), operation: operation,
                        contentType: contentType, value: Array(value.utf8), precondition: precondition)
    }

    @Test func aFingerprintChangesWithEverythingThatMakesTheRequest() {
        let base = mark()
        #expect(mark() == base, "the same request, the same mark")
        let version = Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: RegionName(validated: "us-east")), sequence: 1)
        let others = [mark(dataKey: "b"), mark(operation: .delete), mark(contentType: "application/json"), mark(value: "two"),
                      mark(precondition: .exists), mark(precondition: .versionIsOneOf([version])), mark(keyspace: "accounts"),
                      // Field boundaries count: "a"+"bone" is not "ab"+"one".
                      mark(dataKey: "ab", value: "ne")]
        for other in others { #expect(other.fingerprint != base.fingerprint) }
        #expect(mark("another").fingerprint == base.fingerprint, "the key names the request; it is not part of it")
    }

    @Test func aRetryIsReplayedAndAReusedKeyRefused() {
        let version = Version(hlc: HLCTimestamp(physicalMs: 9, logical: 0, region: RegionName(validated: "eu-west")), sequence: 4)
        let record = IdempotencyRecord(keyspace: keyspace, mark: mark(), key: try! Key("a"), version: version, operation: .put, epoch: 0, recordedMs: 100)
        #expect(IdempotencyCheck.check(mark(), against: nil) == .apply)
        #expect(IdempotencyCheck.check(mark(), against: record) == .replay(record))
        guard case .reused(let error) = IdempotencyCheck.check(mark(value: "two"), against: record) else {
            Issue.record("a reused key was not refused"); return
        }
        #expect(error.code == .idempotencyKeyReused && error.code.appliedUnlessStated == .no && error.context["version"] == version.description)
        #expect(record.isLive(nowMs: 100 + 59_999, ttlMs: 60_000) && !record.isLive(nowMs: 100 + 60_000, ttlMs: 60_000))
    }

    @Test func aMultiLeaderKeyspacesIdempotentWritesMeetInOneRegionWhenItAsks() throws {
        var policy = config.keyspace(keyspace)!
        #expect(policy.topology == .multiLeader && policy.replicas.count == 3 && policy.idempotency == .local)
        // By default (`idempotency: local`) every replica takes an idempotent write itself, as any other.
        for region in policy.replicas {
            let admission = Admission(region: region, reachable: Set(policy.replicas))
            #expect(try admission.admitWrite(policy, key: Key("a"), ack: nil, idempotencyKey: IdempotencyKey("k")) == .accept(ack: .async, ackRegionsRequired: 1, epoch: 0))
            #expect(admission.idempotencyHomeUnreachable(policy, key: try Key("a"), idempotencyKey: try IdempotencyKey("k"), forwarded: false, down: []) == nil)
        }
        policy.idempotency = .home
        var homes: [RegionName: Int] = [:]
        var moved = 0
        for index in 0..<600 {
            let key = try IdempotencyKey("retry-\(index)")
            let home = try #require(IdempotencyHome.region(for: key, keyspace: keyspace, replicas: policy.replicas, down: []))
            homes[home, default: 0] += 1
            // Every region forwards the write there; the home takes it.
            for region in policy.replicas {
                let admission = Admission(region: region, reachable: Set(policy.replicas))
                let decision = try admission.admitWrite(policy, key: Key("a"), ack: nil, idempotencyKey: key)
                #expect(decision == (region == home ? .accept(ack: .async, ackRegionsRequired: 1, epoch: 0) : .forward(to: home)))
                // Forwarded there, it is taken, even by a region that would choose another home.
                #expect(try admission.admitWrite(policy, key: Key("a"), ack: nil, forwarded: true, idempotencyKey: key)
                        == .accept(ack: .async, ackRegionsRequired: 1, epoch: 0))
            }
            // A region agreed down moves only its own keys.
            let down = policy.replicas[0]
            let after = try #require(IdempotencyHome.region(for: key, keyspace: keyspace, replicas: policy.replicas, down: [down]))
            #expect(after != down)
            if home != down { #expect(after == home) } else { moved += 1 }
        }
        #expect(homes.count == 3 && homes.values.allSatisfy { $0 > 120 }, "spread: \(homes)")
        #expect(moved == homes[policy.replicas[0]])
        #expect(IdempotencyHome.region(for: try IdempotencyKey("x"), keyspace: keyspace, replicas: policy.replicas, down: Set(policy.replicas)) == nil)
        // Without a key, any replica takes the write, as before.
        let admission = Admission(region: policy.replicas[1], reachable: Set(policy.replicas))
        #expect(try admission.admitWrite(policy, key: Key("a"), ack: nil) == .accept(ack: .async, ackRegionsRequired: 1, epoch: 0))
    }

    @Test func theScopeIsAMultiLeaderSetting() throws {
        func parse(_ keyspace: String) -> String? {
            let yaml = """
                cluster: c
                regions:
                  - { name: us-east, client: 127.0.0.1:1, peer: 127.0.0.1:2 }
                  - { name: eu-west, client: 127.0.0.1:3, peer: 127.0.0.1:4 }
                keyspaces:
                  - \(keyspace)
                """
            do { _ = try ClusterConfig.parse(yaml: yaml, file: "c.yaml"); return nil } catch { return "\(error)" }
        }
        #expect(parse("{ name: a, topology: multi-leader, idempotency: home }") == nil)
        #expect(parse("{ name: a, topology: multi-leader, idempotency: local }") == nil)
        #expect(parse("{ name: a, topology: multi-leader, idempotency: everywhere }")?.contains("use one of local, home") == true)
        #expect(parse("{ name: a, topology: single-leader, leader: us-east, idempotency: home }")?.contains("idempotency applies to multi-leader keyspaces") == true)
    }

    @Test func singleLeaderIdempotentWritesStillGoToTheLeader() throws {
        let accounts = config.keyspace(try KeyspaceName("accounts"))!
        let leader = try #require(accounts.leader)
        for region in accounts.replicas where region != leader {
            let admission = Admission(region: region, reachable: Set(accounts.replicas))
            #expect(try admission.admitWrite(accounts, key: Key("a"), ack: nil, idempotencyKey: IdempotencyKey("r")) == .forward(to: leader))
        }
    }

    @Test func theMarkTravelsInTheEntryAndACorruptOneIsRefused() throws {
        let codec = EntryCodec(valueBytesMax: 4096)
        let us = RegionName(validated: "us-east")
        let entry = ReplicationEntry(origin: us, sequence: 1, hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: us), epoch: 0, keyspace: keyspace,
                                     key: try Key("a"), operation: .put, contentType: "text/plain", value: [1], idempotency: mark("abc"))
        var bytes = codec.encode(entry)
        #expect(try codec.decode(bytes) == entry)
        #expect(bytes.count == EntryCodec.encodedBytes(entry))
        // The key's bytes sit before the fingerprint at the frame's end: a space is not visible ASCII.
        bytes[bytes.count - IdempotencyMark.fingerprintBytes - 2] = 0x20
        #expect(code { _ = try codec.decode(bytes) } == .codecInvalidField)
        var truncated = codec.encode(entry)
        truncated.removeLast()
        truncated[3] -= 1
        #expect(code { _ = try codec.decode(truncated) } == .codecTruncated)
    }
}
