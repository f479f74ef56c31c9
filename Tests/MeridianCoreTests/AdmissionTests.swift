// Proves the core's admission rules: which region takes a write, what ack modes can be met, which
// consistency levels a keyspace allows, and how residency refuses or redirects — each with its error code.
@testable import MeridianCore
import Testing

@Suite struct AdmissionTests {
    let config = try! ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
    let usEast = RegionName(validated: "us-east")
    let euWest = RegionName(validated: "eu-west")

    var everyRegion: Set<RegionName> { Set(config.regions.map(\.name)) }

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
        #expect(try pair.admitWrite(policy("accounts"), key: Key("k"), ack: nil) == .accept(ack: .majority, ackRegionsRequired: 2, epoch: 0))
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

    func read(_ admission: Admission, _ keyspace: String, key: String? = "k", _ level: ConsistencyLevel?, bound: UInt64? = nil,
              session: SessionToken? = nil, view: Admission.ReadView = .init(), forwarded: Bool = false) throws -> Admission.ReadDecision {
        try admission.admitRead(policy(keyspace), key: key.map { try Key($0) }, level: level, maxStalenessMs: bound, session: session,
                                view: view, forwarded: forwarded)
    }

    /// The error a `behind` verdict answers with when nowhere else can serve, and where it would forward first.
    func behind(_ decision: Admission.ReadDecision) -> (MeridianError.Code, RegionName?)? {
        if case .behind(_, let error, let forwardTo) = decision { return (error.code, forwardTo) }
        return nil
    }

    @Test func strongReadsGoToTheLeaderWhichNeedsAMajority() throws {
        let withMajority = Admission.ReadView(reachable: [usEast, euWest])
        let leader = Admission(region: usEast, reachable: [usEast])
        #expect(try read(leader, "accounts", nil, view: withMajority) == .serve(level: .strong, stalenessMs: nil))
        // Cut off from a majority, the leader may have been replaced: it does not answer strong reads.
        let cutOff = try read(leader, "accounts", nil, view: .init(reachable: []))
        #expect(behind(cutOff)?.0 == .consistencyUnavailable && behind(cutOff)?.1 == nil)
        #expect(code { _ = try self.read(leader, "profiles", .strong) } == .consistencyNotAllowed)
        #expect(try read(leader, "profiles", .eventual) == .serve(level: .eventual, stalenessMs: nil))
        // A follower forwards strong reads to the leader, once.
        let follower = Admission(region: euWest, reachable: [euWest])
        #expect(try read(follower, "accounts", .strong) == .forward(to: usEast, level: .strong))
        #expect(code { _ = try self.read(follower, "accounts", .strong, forwarded: true) } == .consistencyUnavailable)
        #expect(code { _ = try self.read(follower, "accounts", key: nil, .strong) } == .consistencyNotAllowed, "listings are not forwarded: list at the leader")
        #expect(try read(follower, "accounts", .session) == .serve(level: .session, stalenessMs: nil))
    }

    @Test func anElectedLeaderServesStrongReadsOnlyWithinItsLease() throws {
        // eu-west leads accounts after a failover (configured: us-east). Its machine's view decides, not the file.
        let elected = Admission.ReadView(reachable: [usEast, euWest], leadership: .init(leader: euWest, holdsLease: true))
        let leader = Admission(region: euWest, reachable: [euWest, usEast])
        #expect(try read(leader, "accounts", nil, view: elected) == .serve(level: .strong, stalenessMs: nil))
        // Streams up to a majority are not enough: without the lease (a majority's confirmation of its term) it
        // may have been deposed already.
        let lapsed = try read(leader, "accounts", nil, view: .init(reachable: [usEast, euWest], leadership: .init(leader: euWest, holdsLease: false)))
        #expect(behind(lapsed)?.0 == .consistencyUnavailable)
        // us-east, the configured leader, forwards to the elected one; during an election nobody serves.
        let follower = Admission(region: usEast, reachable: [usEast, euWest])
        #expect(try read(follower, "accounts", .strong, view: .init(leadership: .init(leader: euWest, holdsLease: false))) == .forward(to: euWest, level: .strong))
        #expect(code { _ = try self.read(follower, "accounts", .strong, view: .init(leadership: .init(leader: nil, holdsLease: false))) } == .leaderUnavailable)
    }

    func token(_ seen: [(RegionName, UInt64)]) -> SessionToken {
        var token = SessionToken()
        for (origin, sequence) in seen { token.observe(Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: origin), sequence: sequence)) }
        return token
    }

    @Test func sessionReadsWaitForEverythingTheSessionSawThenForward() throws {
        let here = Admission(region: euWest, reachable: [euWest], clusterRegions: everyRegion)
        // The session wrote in us-east; eu-west has applied none of it: serving would break read-your-writes.
        let early = try read(here, "profiles", .session, session: token([(usEast, 3)]), view: .init(applied: [euWest: 10]))
        #expect(behind(early)?.0 == .consistencyUnavailable && behind(early)?.1 == usEast)
        let forwardedEarly = try read(here, "profiles", .session, session: token([(usEast, 3)]), view: .init(applied: [euWest: 10]), forwarded: true)
        #expect(behind(forwardedEarly)?.1 == nil, "a forwarded read is not forwarded again")
        #expect(try read(here, "profiles", .session, session: token([(usEast, 3)]), view: .init(applied: [usEast: 3])) == .serve(level: .session, stalenessMs: nil))
        #expect(try read(here, "profiles", .session, session: token([(euWest, 9)]), view: .init(applied: [euWest: 10])) == .serve(level: .session, stalenessMs: nil))
        // A region that does not hold the keyspace is never asked (residency), even if the session is behind on it.
        let kept = try read(here, "eu_users", .session, session: token([(usEast, 3)]), view: .init(applied: [euWest: 10]))
        #expect(behind(kept)?.0 == .consistencyUnavailable && behind(kept)?.1 == nil)
        // Eventual and prefix reads make no such promise.
        #expect(try read(here, "profiles", .eventual, session: token([(usEast, 3)])) == .serve(level: .eventual, stalenessMs: nil))
        #expect(try read(here, "profiles", .prefix, session: token([(usEast, 3)])) == .serve(level: .prefix, stalenessMs: nil))
        // A token naming a region outside the cluster is not one this cluster issued.
        #expect(code { _ = try self.read(here, "profiles", .session, session: self.token([(RegionName(validated: "mars"), 1)])) } == .invalidHeader)
    }

    @Test func boundedReadsServeWithinTheBoundElseWaitAndForward() throws {
        let apSoutheast = RegionName(validated: "ap-southeast")
        let leader = Admission(region: usEast, reachable: [usEast], clusterRegions: everyRegion)
        #expect(try read(leader, "accounts", .bounded, bound: 100) == .serve(level: .bounded, stalenessMs: 0), "every write originates at the leader")
        #expect(code { _ = try self.read(leader, "accounts", .bounded) } == .invalidHeader)
        #expect(code { _ = try self.read(leader, "accounts", .session, bound: 5) } == .invalidHeader)
        // Other regions write profiles: the bound holds only when each of them is known to be close enough.
        let fresh = Admission.ReadView(stalenessMs: [euWest: 120, apSoutheast: 300])
        #expect(try read(leader, "profiles", .bounded, bound: 300, view: fresh) == .serve(level: .bounded, stalenessMs: 300))
        let tooStale = try read(leader, "profiles", .bounded, bound: 200, view: fresh)
        #expect(behind(tooStale)?.0 == .consistencyUnavailable && behind(tooStale)?.1 == apSoutheast, "forward to the stalest origin")
        let unknown = try read(leader, "profiles", .bounded, bound: 100_000, view: .init(stalenessMs: [euWest: 1]))
        #expect(behind(unknown)?.1 == apSoutheast, "no heartbeat answered yet: unknown staleness is no bound")
        let follower = Admission(region: euWest, reachable: [euWest], clusterRegions: everyRegion)
        #expect(behind(try read(follower, "accounts", .bounded, bound: 50, view: .init(stalenessMs: [usEast: 90])))?.1 == usEast)
        #expect(try read(follower, "accounts", .bounded, bound: 100, view: .init(stalenessMs: [usEast: 90])) == .serve(level: .bounded, stalenessMs: 90))
    }

    @Test func residencyKeepsDataInItsRegions() throws {
        let outside = Admission(region: usEast, reachable: [usEast])
        // Writes from outside the residency are proxied to the key's home; they are never written here.
        #expect(try outside.admitWrite(policy("eu_users"), key: Key("k"), ack: nil) == .forward(to: euWest))
        #expect(code { _ = try outside.admitWrite(policy("eu_users"), key: Key("k"), ack: nil, forwarded: true) } == .regionUnavailable)
        // Reads of a key from outside are proxied the same way; listings are refused.
        #expect(try read(outside, "eu_users", nil) == .forward(to: euWest, level: policy("eu_users").consistency.default))
        #expect(code { _ = try self.read(outside, "eu_users", nil, forwarded: true) } == .regionUnavailable)
        #expect(code { _ = try self.read(outside, "eu_users", key: nil, nil) } == .regionUnavailable)
        let inside = Admission(region: euWest, reachable: [euWest])
        #expect(try inside.admitWrite(policy("eu_users"), key: Key("k"), ack: nil) == .accept(ack: .async, ackRegionsRequired: 1, epoch: 0))

        let denying = try ClusterConfig.parse(yaml: """
            regions:
              - { name: us-east, client: 127.0.0.1:1, peer: 127.0.0.1:2 }
              - { name: eu-west, client: 127.0.0.1:3, peer: 127.0.0.1:4 }
            keyspaces:
              - { name: k, topology: multi-leader, residency: { regions: [eu-west], access: deny } }
            """, file: "c").keyspaces[0]
        #expect(code { _ = try outside.admitRead(denying, key: Key("k"), level: nil, view: .init()) } == .notReplicaRegion)
        #expect(code { _ = try outside.admitWrite(denying, key: Key("k"), ack: nil) } == .notReplicaRegion)
    }
}

@Suite struct SessionTokenTests {
    let key = SessionKey(secret: "a-secret-shared-by-every-region")

    @Test func roundTripsAndRejectsTampering() throws {
        var token = SessionToken()
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: RegionName(validated: "us-east")), sequence: 42))
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 2, logical: 0, region: RegionName(validated: "eu-west")), sequence: 7))
        token.observe(Version(hlc: HLCTimestamp(physicalMs: 3, logical: 0, region: RegionName(validated: "us-east")), sequence: 40))
        let encoded = token.encoded(with: key)
        let decoded = try SessionToken(decoding: encoded, key: key)
        #expect(decoded == token)
        #expect(decoded.seen[RegionName(validated: "us-east")] == 42)
        #expect(decoded.clock == HLCTimestamp(physicalMs: 3, logical: 0, region: RegionName(validated: "us-east")), "the highest timestamp seen")
        #expect(try SessionToken(decoding: SessionToken().encoded(with: key), key: key) == SessionToken())
        for bad in ["", "v2.AA", "v1.!!!", "v2." + String(repeating: "A", count: 5000), String(encoded.dropLast(3))] {
            #expect(throws: MeridianError.self) { try SessionToken(decoding: bad, key: self.key) }
        }
        // Any changed character fails the tag, and a token of another cluster (another key) is refused.
        let characters = Array(encoded)
        for index in 3..<characters.count {
            var altered = characters
            altered[index] = altered[index] == "A" ? "B" : "A"
            #expect(throws: MeridianError.self) { try SessionToken(decoding: String(altered), key: self.key) }
        }
        #expect(throws: MeridianError.self) { try SessionToken(decoding: encoded, key: SessionKey(secret: "another-cluster-secret-value")) }
        #expect(throws: MeridianError.self) { try SessionToken(decoding: encoded, key: SessionKey(clusterName: "demo")) }
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
