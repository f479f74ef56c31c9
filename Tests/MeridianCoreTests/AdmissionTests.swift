// Proves the core's admission rules: which region takes a write, what ack modes can be met, which
// consistency levels a keyspace allows, and how residency refuses or redirects — each with its error code.
@testable import MeridianCore
import Testing

@Suite struct AdmissionTests {
    let config = try! ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
    let usEast = RegionName(validated: "us-east")
    let euWest = RegionName(validated: "eu-west")

    func policy(_ name: String) -> KeyspacePolicy { config.keyspace(try! KeyspaceName(name))! }

    func code(_ body: () throws -> Void) -> MeridianError.Code? {
        do { try body(); return nil } catch let error as MeridianError { return error.code } catch { return .internalError }
    }

    @Test func asyncWritesAreAcceptedLocallyInMultiLeaderKeyspaces() throws {
        let alone = Admission(region: euWest, reachable: [euWest])
        #expect(try alone.admitWrite(policy("profiles"), key: Key("k"), ack: nil) == .accept(ack: .async, ackRegionsRequired: 1, epoch: 0))
    }

    @Test func ackModesNeedEnoughReachableReplicas() throws {
        let alone = Admission(region: usEast, reachable: [usEast])
        #expect(code { _ = try alone.admitWrite(policy("accounts"), key: Key("k"), ack: nil) } == .ackUnavailable)
        #expect(code { _ = try alone.admitWrite(policy("profiles"), key: Key("k"), ack: .all) } == .ackUnavailable)
        let pair = Admission(region: usEast, reachable: [usEast, euWest])
        #expect(try pair.admitWrite(policy("accounts"), key: Key("k"), ack: nil) == .accept(ack: .majority, ackRegionsRequired: 2, epoch: 1))
        #expect(code { _ = try pair.admitWrite(policy("accounts"), key: Key("k"), ack: .all) } == .ackUnavailable)
    }

    @Test func followersForwardSingleLeaderWritesOnce() throws {
        let follower = Admission(region: euWest, reachable: [euWest])
        #expect(try follower.admitWrite(policy("accounts"), key: Key("k"), ack: .async) == .forward(to: usEast))
        // A write that was already forwarded is never forwarded again (no loops between disagreeing regions).
        do {
            _ = try follower.admitWrite(policy("accounts"), key: Key("k"), ack: .async, forwarded: true)
            Issue.record("a follower accepted a forwarded write")
        } catch {
            #expect(error.code == .leaderUnavailable)
            #expect(error.context["leader"] == "us-east")
        }
    }

    @Test func strongReadsNeedASingleLeader() throws {
        let leader = Admission(region: usEast, reachable: [usEast])
        #expect(try leader.admitRead(policy("accounts"), level: nil).level == .strong)
        #expect(code { _ = try leader.admitRead(policy("profiles"), level: .strong) } == .consistencyNotAllowed)
        #expect(try leader.admitRead(policy("profiles"), level: .eventual).level == .eventual)
        let follower = Admission(region: euWest, reachable: [euWest])
        #expect(code { _ = try follower.admitRead(policy("accounts"), level: .strong) } == .consistencyUnavailable)
        #expect(try follower.admitRead(policy("accounts"), level: .session).level == .session)
    }

    var everyRegion: Set<RegionName> { Set(config.regions.map(\.name)) }

    func token(_ seen: [(RegionName, UInt64)]) -> SessionToken {
        var token = SessionToken()
        for (origin, sequence) in seen { token.observe(Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: origin), sequence: sequence)) }
        return token
    }

    @Test func sessionReadsWaitForEverythingTheSessionSaw() throws {
        let here = Admission(region: euWest, reachable: [euWest], clusterRegions: everyRegion)
        // The session wrote in us-east; eu-west has applied none of it: serving would break read-your-writes.
        #expect(code { _ = try here.admitRead(policy("profiles"), level: .session, session: token([(usEast, 3)]), applied: [euWest: 10]) } == .consistencyUnavailable)
        #expect(try here.admitRead(policy("profiles"), level: .session, session: token([(usEast, 3)]), applied: [usEast: 3]).level == .session)
        #expect(try here.admitRead(policy("profiles"), level: .session, session: token([(euWest, 9)]), applied: [euWest: 10]).level == .session)
        // Eventual reads make no such promise.
        #expect(try here.admitRead(policy("profiles"), level: .eventual, session: token([(usEast, 3)]), applied: [:]).level == .eventual)
        // A token naming a region outside the cluster is not one this cluster issued.
        #expect(code { _ = try here.admitRead(policy("profiles"), level: .session, session: token([(RegionName(validated: "mars"), 1)])) } == .invalidHeader)
    }

    @Test func boundedReadsNeedABoundAndAKnownStaleness() throws {
        let leader = Admission(region: usEast, reachable: [usEast], clusterRegions: everyRegion)
        let decision = try leader.admitRead(policy("accounts"), level: .bounded, maxStalenessMs: 100)
        #expect(decision == Admission.ReadDecision(level: .bounded, stalenessMs: 0), "every write originates at the leader")
        #expect(code { _ = try leader.admitRead(policy("accounts"), level: .bounded) } == .invalidHeader)
        #expect(code { _ = try leader.admitRead(policy("accounts"), level: .session, maxStalenessMs: 5) } == .invalidHeader)
        // Other regions write profiles; without their heartbeats staleness cannot be bounded.
        #expect(code { _ = try leader.admitRead(policy("profiles"), level: .bounded, maxStalenessMs: 100) } == .consistencyUnavailable)
        let follower = Admission(region: euWest, reachable: [euWest], clusterRegions: everyRegion)
        #expect(code { _ = try follower.admitRead(policy("accounts"), level: .bounded, maxStalenessMs: 100_000) } == .consistencyUnavailable)
    }

    @Test func residencyKeepsDataInItsRegions() throws {
        let outside = Admission(region: usEast, reachable: [usEast])
        // Writes from outside the residency are proxied to the key's home; they are never written here.
        #expect(try outside.admitWrite(policy("eu_users"), key: Key("k"), ack: nil) == .forward(to: euWest))
        #expect(code { _ = try outside.admitWrite(policy("eu_users"), key: Key("k"), ack: nil, forwarded: true) } == .regionUnavailable)
        #expect(code { _ = try outside.admitRead(policy("eu_users"), level: nil) } == .regionUnavailable)
        let inside = Admission(region: euWest, reachable: [euWest])
        #expect(try inside.admitWrite(policy("eu_users"), key: Key("k"), ack: nil) == .accept(ack: .async, ackRegionsRequired: 1, epoch: 0))

        let denying = try ClusterConfig.parse(yaml: """
            regions:
              - { name: us-east, client: 127.0.0.1:1, peer: 127.0.0.1:2 }
              - { name: eu-west, client: 127.0.0.1:3, peer: 127.0.0.1:4 }
            keyspaces:
              - { name: k, topology: multi-leader, residency: { regions: [eu-west], access: deny } }
            """, file: "c").keyspaces[0]
        #expect(code { _ = try outside.admitRead(denying, level: nil) } == .notReplicaRegion)
        #expect(code { _ = try outside.admitWrite(denying, key: Key("k"), ack: nil) } == .notReplicaRegion)
    }
}

@Suite struct SessionTokenTests {
    @Test func roundTripsAndRejectsTampering() throws {
        var token = SessionToken()
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: RegionName(validated: "us-east")), sequence: 42))
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 2, logical: 0, region: RegionName(validated: "eu-west")), sequence: 7))
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 3, logical: 0, region: RegionName(validated: "us-east")), sequence: 40))
        let decoded = try SessionToken(decoding: token.encoded)
        #expect(decoded == token)
        #expect(decoded.seen[RegionName(validated: "us-east")] == 42)
        for bad in ["", "v2.AA", "v1.!!!", "v1." + String(repeating: "A", count: 5000), String(token.encoded.dropLast(3))] {
            #expect(throws: MeridianError.self) { try SessionToken(decoding: bad) }
        }
    }
}

@Suite struct Base64URLTests {
    @Test func matchesRFC4648Vectors() {
        // RFC 4648 §10 test vectors, unpadded, in the URL-safe alphabet.
        let vectors = ["": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64URL.encode(Array(plain.utf8)) == encoded)
            #expect(Base64URL.decode(Array(encoded.utf8)) == Array(plain.utf8))
        }
        #expect(Base64URL.encode([0xFB, 0xFF]) == "-_8")
        #expect(Base64URL.decode(Array("Zh".utf8)) == nil, "non-zero leftover bits")
        #expect(Base64URL.decode(Array("Z".utf8)) == nil)
        #expect(Base64URL.decode(Array("Zm9v+".utf8)) == nil)
    }
}
