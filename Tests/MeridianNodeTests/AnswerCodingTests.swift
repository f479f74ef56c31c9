// Proves that the answers of the v1 API in MeridianAPI decode as the node encodes them: each round-trips through
// the node's JSON settings to an equal value and the same bytes, and real bodies a node served decode and
// re-encode byte for byte.
import Foundation
import HTTPTypes
import HummingbirdTesting
import MeridianAPI
import MeridianCore
import NIOCore
import Testing

/// Encodes as the node renders (`JSON.encode` in MeridianHTTP): sorted keys, slashes unescaped.
private func nodeJSON(_ value: some Encodable) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(value)
}

/// Encodes `value`, decodes it back and checks it is equal and encodes to the same bytes; returns the JSON.
@discardableResult
private func roundTrip<T: Codable & Equatable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
    let bytes = try nodeJSON(value)
    let decoded = try JSONDecoder().decode(T.self, from: bytes)
    #expect(decoded == value, sourceLocation: sourceLocation)
    #expect(try nodeJSON(decoded) == bytes, "\(String(decoding: bytes, as: UTF8.self))", sourceLocation: sourceLocation)
    return String(decoding: bytes, as: UTF8.self)
}

@Suite struct AnswerCodingTests {
    let fixture = NodeFixture()

    @Test func jsonValueDecodesWhatTheNodeRenders() throws {
        let value = JSONValue.object([
            "apples": .object(["type": .string("g-counter"), "value": .unsigned(3)]),
            "debt": .integer(-2), "huge": .unsigned(.max), "tags": .array([.string("a"), .string("b")]), "none": .null,
        ])
        let json = try roundTrip(value)
        #expect(json == #"{"apples":{"type":"g-counter","value":3},"debt":-2,"huge":18446744073709551615,"none":null,"tags":["a","b"]}"#)
        // A whole number is the same JSON whichever case holds it.
        #expect(JSONValue.integer(3) == .unsigned(3) && JSONValue.unsigned(3) == .integer(3))
        #expect(JSONValue.integer(-1) != .unsigned(UInt64.max))
        #expect(try JSONDecoder().decode(JSONValue.self, from: Data("18446744073709551615".utf8)) == .unsigned(.max))
        // No answer carries booleans or fractions: they are refused, not rounded.
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(JSONValue.self, from: Data("true".utf8)) }
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(JSONValue.self, from: Data("1.5".utf8)) }
    }

    @Test func keyValueAnswersRoundTrip() throws {
        var write = WriteAnswer(keyspace: "likes", key: "n", version: "v1", region: "us-east", ack: "async", ackedBy: ["us-east"], operation: "merge")
        try roundTrip(write)
        write.type = "pn-counter"
        write.value = .integer(-2)
        try roundTrip(write)
        let list = ListAnswer(keyspace: "profiles", keys: [.init(key: "users/42", version: "v1", bytes: 14, contentType: "application/json")], nextAfter: nil)
        #expect(try roundTrip(list).contains(#""next_after":null"#))
        try roundTrip(ListAnswer(keyspace: "profiles", keys: [], nextAfter: "users/42"))
    }

    @Test func conflictAnswersRoundTrip() throws {
        let text = VersionJSON(version: "v1", region: "us-east", contentType: "text/plain", value: StoredBytes(bytes: Array("one/two".utf8)))
        #expect(try roundTrip(text) == #"{"content_type":"text/plain","region":"us-east","value":"one/two","version":"v1"}"#)
        let binary = VersionJSON(version: "v2", region: "eu-west", contentType: "application/octet-stream",
                                 value: StoredBytes(bytes: [0xff, 0x00, 0xfe]), deleted: true)
        #expect(try roundTrip(binary) == #"{"content_type":"application/octet-stream","deleted":true,"region":"eu-west","value_base64":"/wD+","version":"v2"}"#)
        try roundTrip(StoredBytes(bytes: []))
        try roundTrip(SiblingsAnswer(keyspace: "carts", key: "c", siblings: [text, binary], context: "ctx"))
        let record = ConflictsAnswer.Record(id: 7, key: "users/42", rule: "lww", recordedMs: 1_700_000_000_000, loser: binary,
                                            winner: .init(version: "v3", region: "us-east"))
        #expect(try roundTrip(ConflictsAnswer(keyspace: "profiles", region: "us-east", conflicts: [record], nextAfter: nil)).contains(#""next_after":null"#))
        try roundTrip(ConflictsAnswer(keyspace: "profiles", region: "us-east", conflicts: [record, record], nextAfter: 7))
        try roundTrip(CRDTAnswer(keyspace: "likes", key: "m", type: "or-map",
                                 value: .object(["apples": .object(["type": .string("g-counter"), "value": .integer(3)])]), version: "v4"))
        try roundTrip(CRDTAnswer(keyspace: "likes", key: "l", type: "lww-register", value: .null, version: "v5"))
    }

    @Test func failoverAndRepairAnswersRoundTrip() throws {
        let won = FailoverAnswer(keyspace: "accounts", epoch: 3, leader: "eu-west", previousLeader: "us-east", reason: "leader_silent",
                                 lastHeardMs: 1_000, suspectedMs: 1_500, electedMs: 1_700, firstWriteMs: 1_800, rtoMs: 800,
                                 electionMs: 200, divertedHere: 2)
        let first = FailoverAnswer(keyspace: "ledger", epoch: 1, leader: "eu-west", previousLeader: nil, reason: "startup",
                                   lastHeardMs: nil, suspectedMs: 0, electedMs: 10, firstWriteMs: nil, rtoMs: nil, electionMs: 10, divertedHere: 0)
        // Absent, not null, as before.
        #expect(!(try roundTrip(first)).contains("previous_leader"))
        try roundTrip(FailoversAnswer(region: "eu-west", failovers: [won, first], diverted: ["accounts/3": 2]))
        let kept = DivergedWriteAnswer(id: 1, keyspace: "accounts", key: "a/1", origin: "us-east", sequence: 9, epoch: 2, successorEpoch: 3,
                                       version: "v9", operation: "put", contentType: "text/plain", value: StoredBytes(bytes: Array("100".utf8)),
                                       recordedMs: 2_000, reappliedMs: nil)
        let reapplied = DivergedWriteAnswer(id: 2, keyspace: "accounts", key: "a/2", origin: "us-east", sequence: 10, epoch: 2, successorEpoch: 3,
                                            version: "v10", operation: "put", contentType: "application/octet-stream",
                                            value: StoredBytes(bytes: [0xc3, 0x28]), recordedMs: 2_001, reappliedMs: 3_000)
        #expect(try roundTrip(kept).contains(#""value":"100""#))
        #expect(try roundTrip(reapplied).contains(#""value_base64":"wyg=""#))
        try roundTrip(DivergenceAnswer(region: "eu-west", writes: [kept, reapplied], next: 2))
        try roundTrip(DivergenceAnswer(region: "eu-west", writes: [], next: nil))
        let report = RepairReport(keyspace: "profiles", region: "us-east", peer: "eu-west", rootBefore: "aa", rootAfter: "bb", peerRoot: "bb",
                                  keys: 10, bucketsDiffering: 1, slotsDiffering: 0, keysReceived: 3, keysChanged: 2, error: nil)
        try roundTrip(report)
        try roundTrip(RepairReport(keyspace: "profiles", region: "us-east", peer: "eu-west", rootBefore: "aa", rootAfter: "aa", peerRoot: "",
                                   keys: 10, bucketsDiffering: 0, slotsDiffering: 0, keysReceived: 0, keysChanged: 0, error: "eu-west is unreachable"))
        try roundTrip(["repairs": [report]])
        try roundTrip(MerkleAnswer(keyspace: "profiles", region: "us-east", root: "cafe", keys: 10))
    }

    @Test func statusAnswerRoundTrips() throws {
        var limits = Limits()
        limits.valueBytesMax = 1024
        let inbound = StatusAnswer.InboundStatus(
            link: "up", applied: 41, originLog: 42, lagEntries: 1,
            applyLagMs: .init(samples: 5, p50: 80, p99: 120, max: 130,
                              distribution: StatusAnswer.LagSummary.percentiles.map { [$0, 80.5] } + [[100, 130]]),
            stalenessMs: 95)
        let status = StatusAnswer(
            region: "us-east", cluster: "test", pid: 4242, uptimeMs: 60_000,
            keyspaces: [
                .init(name: "accounts", topology: "single-leader", role: "leader", epoch: 2, leader: "us-east", lease: true, keys: 3),
                .init(name: "profiles", topology: "multi-leader", role: "leader", epoch: nil, leader: nil, lease: nil, keys: 0),
            ],
            peers: [
                .init(region: "eu-west", client: "127.0.0.1:17102", peer: "127.0.0.1:17202", rttMs: 80.5, link: "up", lagMs: 0,
                      lagEntries: 0, cursor: 12, lastError: nil, inbound: inbound),
                .init(region: "ap-south", client: "127.0.0.1:17103", peer: "127.0.0.1:17203", rttMs: nil, link: "down", lagMs: nil,
                      lagEntries: 7, cursor: 5, lastError: "connection refused",
                      inbound: .init(link: "down", applied: 0, originLog: 0, lagEntries: 0,
                                     applyLagMs: .init(samples: 0, p50: 0, p99: 0, max: 0, distribution: []), stalenessMs: nil)),
            ],
            log: ["us-east": 12, "eu-west": 42],
            clock: .init(state: "fenced", maxOffsetMs: 250, injectedOffsetMs: -3_000,
                         peers: ["eu-west": .init(lowMs: 2_900, highMs: 3_100)], reason: "The clock is 3 s off."),
            storage: .init(state: "full", reason: "The disk is full."),
            limits: limits)
        let json = try roundTrip(status)
        // Nulls the node writes out stay written out.
        #expect(json.contains(#""rtt_ms":null"#) && json.contains(#""staleness_ms":null"#) && json.contains(#""last_error":null"#))
        try roundTrip(StatusAnswer(region: "us-east", cluster: "test", pid: 1, uptimeMs: 0, keyspaces: [], peers: [], log: [:],
                                   clock: .init(state: "ok", maxOffsetMs: 250, injectedOffsetMs: 0, peers: [:], reason: nil),
                                   storage: .init(state: "ok", reason: nil), limits: Limits()))
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func aNodesStatusDecodes(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            try await client.execute(uri: "/v1/kv/profiles/users/42", method: .put, body: ByteBuffer(string: "Ada")) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/status", method: .get) { response throws in
                #expect(response.status == .ok)
                let body = Data(buffer: response.body)
                let status = try JSONDecoder().decode(StatusAnswer.self, from: body)
                #expect(status.region == "us-east" && status.cluster == "test")
                #expect(status.pid == ProcessInfo.processInfo.processIdentifier)
                #expect(status.keyspaces.map(\.name) == ["accounts", "ledger", "profiles", "eu_users", "eu_secret", "likes", "carts"])
                #expect(status.keyspaces.first { $0.name == "profiles" }?.keys == 1)
                #expect(status.peers.map(\.region) == ["eu-west"])
                #expect(status.clock.state == "ok" && status.storage.state == "ok")
                let expected = try ClusterConfig.parse(yaml: NodeFixture.yaml, file: "test.yaml").limits
                #expect(status.limits == expected)
                #expect(status.limits.valueBytesMax == 1024)
                // Nothing is lost on the way: decoded and encoded again, it is the body the node sent.
                #expect(try nodeJSON(status) == body, "\(String(buffer: response.body))")
            }
        }
    }

    @Test func aNodesAnswersDecode() async throws {
        try await fixture.withApp { client in
            func check<T: Codable>(_ type: T.Type, _ response: TestResponse, sourceLocation: SourceLocation = #_sourceLocation) throws -> T {
                let body = Data(buffer: response.body)
                let answer = try JSONDecoder().decode(T.self, from: body)
                #expect(try nodeJSON(answer) == body, "\(String(buffer: response.body))", sourceLocation: sourceLocation)
                return answer
            }
            try await client.execute(uri: "/v1/kv/profiles/users/42", method: .put, body: ByteBuffer(string: "Ada")) { response throws in
                #expect(try check(WriteAnswer.self, response).key == "users/42")
            }
            try await client.execute(uri: "/v1/kv/profiles", method: .get) { response throws in
                #expect(try check(ListAnswer.self, response).keys.map(\.key) == ["users/42"])
            }
            try await client.execute(uri: "/v1/crdt/likes/m", method: .post,
                                     body: ByteBuffer(string: #"{"type":"or-map","op":"update","field":"apples","value":{"type":"g-counter","op":"increment","by":3}}"#)) {
                response throws in
                #expect(try check(WriteAnswer.self, response).value == .object(["apples": .object(["type": .string("g-counter"), "value": .unsigned(3)])]))
            }
            try await client.execute(uri: "/v1/crdt/likes/m", method: .get) { response throws in
                #expect(try check(CRDTAnswer.self, response).type == "or-map")
            }
            try await client.execute(uri: "/v1/kv/carts/c", method: .put, body: ByteBuffer(string: "one")) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/carts/c", method: .put, body: ByteBuffer(bytes: [0xff, 0x00])) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/carts/c", method: .get) { response throws in
                #expect(response.status == .multipleChoices)
                let siblings = try check(SiblingsAnswer.self, response)
                #expect(Set(siblings.siblings.map(\.value.bytes)) == [Array("one".utf8), [0xff, 0x00]])
            }
            try await client.execute(uri: "/v1/admin/merkle/profiles", method: .get) { response throws in
                #expect(try check(MerkleAnswer.self, response).keys == 1)
            }
            try await client.execute(uri: "/v1/failovers", method: .get) { response throws in
                #expect(try check(FailoversAnswer.self, response).region == "us-east")
            }
            try await client.execute(uri: "/v1/divergence", method: .get) { response throws in
                #expect(try check(DivergenceAnswer.self, response).writes.isEmpty)
            }
            try await client.execute(uri: "/v1/conflicts/profiles", method: .get) { response throws in
                #expect(try check(ConflictsAnswer.self, response).conflicts.isEmpty)
            }
        }
    }
}
