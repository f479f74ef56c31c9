// Proves the v1 HTTP API over the router in memory: the happy paths (write, read, list, delete,
// ETag/If-Match, headers, status, keyspaces, metrics) and every error code with one bad input each,
// each answered in the JSON error format with its documented status.
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import MeridianCore
@testable import MeridianNode
import MeridianStorage
import MeridianStore
import NIOCore
import Testing

struct NodeFixture {
    static let yaml = """
        cluster: test
        regions:
          - { name: us-east, client: 127.0.0.1:17101, peer: 127.0.0.1:17201 }
          - { name: eu-west, client: 127.0.0.1:17102, peer: 127.0.0.1:17202 }
        limits: { value_bytes_max: 1024, list_limit_max: 50, list_limit_default: 10, read_wait_ms: 100, siblings_max: 3 }
        keyspaces:
          - { name: accounts, topology: single-leader, leader: us-east, ack: majority }
          - { name: ledger, topology: single-leader, leader: eu-west, ack: async }
          - { name: profiles, topology: multi-leader, conflict: lww, ack: async, cache: { ttl_ms: 30000 }, idempotency: home }
          - { name: eu_users, topology: geo-partitioned, home: eu-west, residency: { regions: [eu-west], access: proxy } }
          - { name: eu_secret, topology: multi-leader, residency: { regions: [eu-west], access: deny } }
          - { name: likes, topology: multi-leader, conflict: crdt, ack: async }
          - { name: carts, topology: multi-leader, conflict: siblings, ack: async }
        """

    /// A session token signed as this cluster's regions sign them (the cluster sets no secret: its name is the key).
    static func token(_ seen: [String: UInt64], key: SessionKey = SessionKey(clusterName: "test")) -> String {
        var token = SessionToken()
        for (origin, sequence) in seen {
            token.observe(Version(hlc: HLCTimestamp(physicalMs: 1, logical: 0, region: RegionName(validated: origin)), sequence: sequence))
        }
        return token.encoded(with: key)
    }

    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-node-\(UUID().uuidString)").path

    /// The node on each storage backend: its HTTP behaviour does not depend on the engine.
    enum Store: String, CaseIterable, Sendable {
        case sqlite, memory
    }

    func withApp(proveClock: Bool = true, store: Store = .sqlite, yaml: String = Self.yaml,
                 _ test: @escaping @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        try await withNode(proveClock: proveClock, store: store, yaml: yaml) { _, client in try await test(client) }
    }

    func withNode(proveClock: Bool = true, store: Store = .sqlite, yaml: String = Self.yaml,
                  _ test: @escaping @Sendable (RegionNode, any TestClientProtocol) async throws -> Void) async throws {
        let config = try ClusterConfig.parse(yaml: yaml, file: "test.yaml")
        let factory = store == .sqlite ? RegionStore.factory(directory: directory) : MemoryStore.factory(MemoryDisks())
        let node = try await RegionNode(configuration: NodeConfiguration(cluster: config, region: RegionName(validated: "us-east")).withTestRootKey(), store: factory)
        defer {
            node.store.close()
            try? FileManager.default.removeItem(atPath: directory)
        }
        if proveClock { Self.proveClock(node) }
        let app = Application(router: node.router())
        try await app.test(.router) { client in try await test(node, client) }
    }

    /// Feeds the node the bracket a heartbeat from eu-west would (clocks in step), as its replication streams
    /// would a moment after start; until then a region of two takes no write.
    static func proveClock(_ node: RegionNode) {
        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        node.clock.sample(peer: RegionName(validated: "eu-west"), sentMs: now, peerMs: now, receivedMs: now)
    }
}

/// The decoded JSON error of a response, checked against the contract's shape.
func errorCode(_ response: TestResponse) throws -> String {
    #expect(response.headers[.contentType] == "application/json")
    #expect(response.headers[HTTPField.Name("Meridian-Region")!] == "us-east")
    let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
    let error = try #require(object["error"] as? [String: Any])
    let message = try #require(error["message"] as? String)
    #expect(message.count > 10, "the message is a sentence a user can act on")
    return try #require(error["code"] as? String)
}

/// The JSON error's `applied` field (nil when absent: it is there on the refusal of every request but a GET).
func errorApplied(_ response: TestResponse) throws -> String? {
    let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
    let error = try #require(object["error"] as? [String: Any])
    return error["applied"] as? String
}

func json(_ response: TestResponse) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
}

@Suite struct HTTPAPITests {
    let fixture = NodeFixture()

    @Test(arguments: NodeFixture.Store.allCases)
    func writeReadListDeleteWithVersions(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            var etag = ""
            try await client.execute(uri: "/v1/kv/profiles/users/42", method: .put, headers: [.contentType: "application/json"],
                                     body: ByteBuffer(string: #"{"name":"Ada"}"#)) { response throws in
                #expect(response.status == .ok)
                let body = try json(response)
                #expect(body["keyspace"] as? String == "profiles" && body["key"] as? String == "users/42")
                #expect(body["region"] as? String == "us-east" && body["ack"] as? String == "async")
                #expect(body["acked_by"] as? [String] == ["us-east"])
                etag = try #require(response.headers[.eTag])
                #expect(etag == "\"\(body["version"] as! String)\"")
                #expect(response.headers[HTTPField.Name("Meridian-Session")!]?.hasPrefix("v2.") == true)
            }
            try await client.execute(uri: "/v1/kv/profiles/users/42", method: .get) { response throws in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == #"{"name":"Ada"}"#)
                #expect(response.headers[.contentType] == "application/json")
                #expect(response.headers[.eTag] == etag)
                // A session read (the keyspace's default) is never cached; an eventual one may be, by this client only.
                #expect(response.headers[.cacheControl] == "no-store")
                #expect(response.headers[HTTPField.Name("Meridian-Region")!] == "us-east")
            }
            try await client.execute(uri: "/v1/kv/profiles/users/42?consistency=eventual", method: .get) { response throws in
                #expect(response.headers[.cacheControl] == "private, max-age=30")
            }
            // Percent-encoded keys decode to the same key.
            try await client.execute(uri: "/v1/kv/profiles/users%2F42", method: .get) { response throws in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/kv/profiles/users/7", method: .put, body: ByteBuffer(string: "x")) { response throws in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/kv/profiles?prefix=users/&limit=1", method: .get) { response throws in
                let body = try json(response)
                let keys = try #require(body["keys"] as? [[String: Any]])
                #expect(keys.map { $0["key"] as? String } == ["users/42"])
                #expect(body["next_after"] as? String == "users/42")
                // The listing's versions join the session: the token now names us-east's writes.
                let token = try #require(response.headers[HTTPField.Name("Meridian-Session")!])
                #expect(try SessionToken(decoding: token, key: SessionKey(clusterName: "test")).seen[RegionName(validated: "us-east")] != nil)
            }
            try await client.execute(uri: "/v1/kv/profiles?prefix=users/&after=users/42", method: .get) { response throws in
                let keys = try #require(try json(response)["keys"] as? [[String: Any]])
                #expect(keys.map { $0["key"] as? String } == ["users/7"])
                #expect(keys.first?["content_type"] as? String == "application/octet-stream")
            }
            let deleted = try await client.execute(uri: "/v1/kv/profiles/users/42", method: .delete) { response throws in
                #expect(response.status == .ok)
                #expect(try json(response)["operation"] as? String == "delete")
                let text = try #require(try json(response)["version"] as? String)
                return try #require(Version(parsing: text))
            }
            try await client.execute(uri: "/v1/kv/profiles/users/42", method: .get) { response throws in
                #expect(response.status == .notFound)
                #expect(try errorCode(response) == "key_not_found")
                // The delete was seen: the token names it, so no session read anywhere brings the value back.
                let token = try #require(response.headers[HTTPField.Name("Meridian-Session")!])
                #expect(try SessionToken(decoding: token, key: SessionKey(clusterName: "test")).seen[RegionName(validated: "us-east")] == deleted.sequence)
                #expect(response.headers[.eTag] == "\"\(deleted)\"")
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func aRegionTakesNoWriteUntilAPeerHasComparedClocksWithIt(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(proveClock: false, store: store) { client in
            try await client.execute(uri: "/v1/kv/profiles/k", method: .put, body: ByteBuffer(string: "early")) { response throws in
                #expect(response.status == .serviceUnavailable)
                #expect(try errorCode(response) == "clock_unverified")
                #expect(response.headers[.retryAfter] == "1")
            }
            try await client.execute(uri: "/v1/status", method: .get) { response throws in
                let clock = try #require(try json(response)["clock"] as? [String: Any])
                #expect(clock["state"] as? String == "unverified")
                #expect((clock["reason"] as? String)?.contains("max_clock_offset_ms") == true)
            }
            // Reads go on; nothing was written.
            try await client.execute(uri: "/v1/kv/profiles/k", method: .get) { response throws in
                #expect(response.status == .notFound)
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func aWriteIsNotOrderedBeforeATimestampItsSessionSawFarAhead(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            // A session that has seen a write stamped an hour ahead of this region's clock.
            var token = SessionToken()
            let ahead = UInt64(Date().timeIntervalSince1970 * 1000) + 3_600_000
            token.observe(Version(hlc: HLCTimestamp(physicalMs: ahead, logical: 0, region: RegionName(validated: "eu-west")), sequence: 1))
            let encoded = token.encoded(with: SessionKey(clusterName: "test"))
            try await client.execute(uri: "/v1/kv/profiles/k", method: .put, headers: [HTTPField.Name("Meridian-Session")!: encoded],
                                     body: ByteBuffer(string: "v")) { response throws in
                #expect(response.status == .serviceUnavailable, "\(String(buffer: response.body))")
                #expect(try errorCode(response) == "clock_offset_exceeded")
            }
            try await client.execute(uri: "/v1/kv/profiles/k", method: .get) { response throws in
                #expect(response.status == .notFound, "nothing was written")
            }
            // One within the maximum offset is followed: the write is stamped after it.
            var near = SessionToken()
            let soon = UInt64(Date().timeIntervalSince1970 * 1000) + 300
            near.observe(Version(hlc: HLCTimestamp(physicalMs: soon, logical: 0, region: RegionName(validated: "eu-west")), sequence: 1))
            try await client.execute(uri: "/v1/kv/profiles/k", method: .put,
                                     headers: [HTTPField.Name("Meridian-Session")!: near.encoded(with: SessionKey(clusterName: "test"))],
                                     body: ByteBuffer(string: "v")) { response throws in
                #expect(response.status == .ok)
                let text = try #require(try json(response)["version"] as? String)
                let version = try #require(Version(parsing: text))
                #expect(version.hlc.physicalMs >= soon)
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func sessionTokensGiveReadYourWrites(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            let token = try await client.execute(uri: "/v1/kv/profiles/mine", method: .put, body: ByteBuffer(string: "1")) { response throws in
                try #require(response.headers[HTTPField.Name("Meridian-Session")!])
            }
            try await client.execute(uri: "/v1/kv/profiles/mine", method: .get, headers: [HTTPField.Name("Meridian-Session")!: token]) { response throws in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == "1")
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func ifMatchMakesWritesConditional(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            let first = try await client.execute(uri: "/v1/kv/profiles/k", method: .put, body: ByteBuffer(string: "1")) { $0.headers[.eTag]! }
            try await client.execute(uri: "/v1/kv/profiles/k", method: .put, headers: [.ifMatch: first], body: ByteBuffer(string: "2")) { response throws in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/kv/profiles/k", method: .put, headers: [.ifMatch: first], body: ByteBuffer(string: "3")) { response throws in
                #expect(response.status == .preconditionFailed)
                #expect(try errorCode(response) == "precondition_failed")
                #expect(try (json(response)["error"] as? [String: Any])?["current_version"] is String)
            }
            try await client.execute(uri: "/v1/kv/profiles/new", method: .put, headers: [.ifMatch: "*"], body: ByteBuffer(string: "x")) { response throws in
                #expect(response.status == .preconditionFailed)
            }
            try await client.execute(uri: "/v1/kv/profiles/k", method: .put, headers: [.ifMatch: "*"], body: ByteBuffer(string: "4")) { response throws in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/v1/kv/profiles/k", method: .get) { response throws in
                #expect(String(buffer: response.body) == "4")
            }
        }
    }

    /// One bad request per error path: the method, URI, headers, body, expected status and code.
    static let badRequests: [(HTTPRequest.Method, String, HTTPFields, String, HTTPResponse.Status, String)] = [
        (.put, "/v1/kv/Bad!/k", [:], "v", .badRequest, "invalid_keyspace"),
        (.get, "/v1/kv/nope/k", [:], "", .notFound, "unknown_keyspace"),
        (.put, "/v1/kv/profiles/a%0Ab", [:], "v", .badRequest, "invalid_key"),
        (.put, "/v1/kv/profiles/" + String(repeating: "k", count: 1025), [:], "v", .badRequest, "invalid_key"),
        (.put, "/v1/kv/profiles/%FF", [:], "v", .badRequest, "invalid_key"),
        (.put, "/v1/kv/profiles/big", [:], String(repeating: "x", count: 1025), .contentTooLarge, "value_too_large"),
        (.put, "/v1/kv/profiles/k", [.ifMatch: "not-an-etag"], "v", .badRequest, "invalid_header"),
        (.put, "/v1/kv/profiles/k", [.ifMatch: "\"1.0.us-east.999\""], "v", .preconditionFailed, "precondition_failed"),
        (.put, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Ack")!: "mostly"], "v", .badRequest, "invalid_header"),
        (.put, "/v1/kv/profiles/k?ack=sometimes", [:], "v", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Consistency")!: "linearizable"], "", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Consistency")!: "bounded"], "", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Max-Staleness-Ms")!: "-5", HTTPField.Name("Meridian-Consistency")!: "bounded"], "", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Session")!: "forged"], "", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Consistency")!: "strong"], "", .conflict, "consistency_not_allowed"),
        (.get, "/v1/kv/profiles/k?consistency=strong", [:], "", .conflict, "consistency_not_allowed"),
        (.get, "/v1/kv/profiles?limit=0", [:], "", .badRequest, "invalid_parameter"),
        (.get, "/v1/kv/profiles?limit=51", [:], "", .badRequest, "invalid_parameter"),
        (.get, "/v1/kv/profiles?limit=ten", [:], "", .badRequest, "invalid_parameter"),
        (.get, "/v1/kv/profiles?after=a%0Ab", [:], "", .badRequest, "invalid_parameter"),
        (.get, "/v1/kv/profiles/absent", [:], "", .notFound, "key_not_found"),
        (.get, "/v1/nothing-here", [:], "", .notFound, "route_not_found"),
        (.put, "/v1/kv/accounts/k", [:], "v", .serviceUnavailable, "ack_unavailable"),
        (.put, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Ack")!: "all"], "v", .serviceUnavailable, "ack_unavailable"),
        (.put, "/v1/kv/ledger/k", [:], "v", .serviceUnavailable, "leader_unavailable"),
        // A follower forwards strong reads to the leader; with the leader unreachable it says so.
        (.get, "/v1/kv/ledger/k", [HTTPField.Name("Meridian-Consistency")!: "strong"], "", .serviceUnavailable, "leader_unavailable"),
        // A leader that cannot reach a majority of the replicas does not answer strong reads (its lease).
        (.get, "/v1/kv/accounts/k", [:], "", .serviceUnavailable, "consistency_unavailable"),
        (.put, "/v1/kv/eu_users/k", [:], "v", .serviceUnavailable, "region_unavailable"),
        (.get, "/v1/kv/eu_secret/k", [:], "", .conflict, "not_replica_region"),
        (.put, "/v1/kv/profiles/k", [.contentType: String(repeating: "t", count: 300)], "v", .badRequest, "invalid_header"),
        (.put, "/v1/kv/profiles/k", [.ifMatch: ","], "v", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Max-Staleness-Ms")!: "10"], "", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k?consistency=bounded&max-staleness-ms=10", [:], "", .serviceUnavailable, "consistency_unavailable"),
        // A token that saw eu-west's 5th write: this region (us-east) has applied none of eu-west's log.
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Session")!: NodeFixture.token(["eu-west": 5])], "", .serviceUnavailable, "consistency_unavailable"),
        // A correctly signed token naming a region outside the cluster, and tokens of the old format or another cluster.
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Session")!: NodeFixture.token(["mars": 1])], "", .badRequest, "invalid_header"),
        (.put, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Session")!: NodeFixture.token(["mars": 1])], "v", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Session")!: "v1.AQdldS13ZXN0AAAAAAAAAAU"], "", .badRequest, "invalid_header"),
        (.get, "/v1/kv/profiles/k", [HTTPField.Name("Meridian-Session")!: NodeFixture.token(["eu-west": 5], key: SessionKey(clusterName: "other"))], "",
         .badRequest, "invalid_header"),
        // CRDT operations: malformed, of an unknown type or operation, with a field that does not belong, with
        // amounts that are not whole positive numbers; and each API used on the other kind of keyspace.
        (.post, "/v1/crdt/likes/k", [:], "{not json", .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"counter","op":"increment"}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"g-counter","op":"decrement"}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"g-counter","op":"increment","by":true}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"g-counter","op":"increment","by":2.5}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"g-counter","op":"increment","by":0}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"g-counter","op":"increment","by":1e30}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"g-counter","op":"increment","amount":1}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"or-set","op":"add"}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"or-set","op":"add","elements":[1]}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"or-map","op":"update","field":"f","value":{"type":"or-map","op":"remove","field":"g"}}"#,
         .badRequest, "invalid_request"),
        (.post, "/v1/crdt/likes/k", [:], #"{"type":"lww-register","op":"assign","value":5}"#, .badRequest, "invalid_request"),
        (.post, "/v1/crdt/profiles/k", [:], #"{"type":"g-counter","op":"increment"}"#, .conflict, "conflict_policy_mismatch"),
        (.get, "/v1/crdt/profiles/k", [:], "", .conflict, "conflict_policy_mismatch"),
        (.put, "/v1/kv/likes/k", [:], "v", .conflict, "conflict_policy_mismatch"),
        (.get, "/v1/kv/likes/k", [:], "", .conflict, "conflict_policy_mismatch"),
        (.get, "/v1/crdt/likes/absent", [:], "", .notFound, "key_not_found"),
        (.put, "/v1/kv/carts/k", [HTTPField.Name("Meridian-Context")!: "c1.AAAAAAAAAAAAAAAAAAAAAAAA"], "v", .badRequest, "invalid_header"),
        (.put, "/v1/kv/carts/k", [HTTPField.Name("Meridian-Context")!: NodeFixture.token(["eu-west": 5])], "v", .badRequest, "invalid_header"),
        (.get, "/v1/conflicts/profiles?limit=0", [:], "", .badRequest, "invalid_parameter"),
        (.get, "/v1/conflicts/profiles?after=-1", [:], "", .badRequest, "invalid_parameter"),
        (.get, "/v1/conflicts/nope", [:], "", .notFound, "unknown_keyspace"),
        (.put, "/v1/kv/profiles/k", [HTTPField.Name("Idempotency-Key")!: "has space"], "v", .badRequest, "invalid_header"),
        (.put, "/v1/kv/profiles/k", [HTTPField.Name("Idempotency-Key")!: String(repeating: "k", count: 256)], "v", .badRequest, "invalid_header"),
    ]

    @Test(arguments: 0..<badRequests.count)
    func everyErrorHasItsStatusAndCode(_ index: Int) async throws {
        let (method, uri, headers, body, status, code) = Self.badRequests[index]
        try await fixture.withApp { client in
            try await client.execute(uri: uri, method: method, headers: headers, body: body.isEmpty ? nil : ByteBuffer(string: body)) { response throws in
                #expect(response.status == status, "\(method) \(uri)")
                #expect(try errorCode(response) == code, "\(method) \(uri)")
                if status == .serviceUnavailable { #expect(response.headers[.retryAfter] != nil, "503 carries Retry-After") }
                // Every refused change says it took no effect (each of these is refused before anything is
                // written or sent, a forward to an unreachable region included); a read's refusal says nothing.
                #expect(try errorApplied(response) == (method == .get ? nil : "no"), "\(method) \(uri)")
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func crdtOperationsAnswerTheNewValue(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            func post(_ key: String, _ body: String, _ check: @escaping @Sendable ([String: Any]) -> Void) async throws {
                try await client.execute(uri: "/v1/crdt/likes/\(key)", method: .post, body: ByteBuffer(string: body)) { response throws in
                    #expect(response.status == .ok, "\(String(buffer: response.body))")
                    check(try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]))
                }
            }
            try await post("n", #"{"type":"pn-counter","op":"increment","by":5}"#) { #expect($0["value"] as? Int == 5) }
            try await post("n", #"{"type":"pn-counter","op":"decrement","by":7}"#) { #expect($0["value"] as? Int == -2) }
            try await client.execute(uri: "/v1/crdt/likes/n", method: .post, body: ByteBuffer(string: #"{"type":"or-set","op":"add","element":"x"}"#)) {
                response throws in
                let code = try errorCode(response)
                #expect(response.status == .conflict && code == "crdt_type_mismatch")
            }
            try await post("s", #"{"type":"or-set","op":"add","elements":["b","a","b"]}"#) { #expect($0["value"] as? [String] == ["a", "b"]) }
            try await post("s", #"{"type":"or-set","op":"remove","element":"a"}"#) { #expect($0["value"] as? [String] == ["b"]) }
            try await post("r", #"{"type":"mv-register","op":"assign","value":"red"}"#) { #expect($0["value"] as? [String] == ["red"]) }
            try await post("l", #"{"type":"lww-register","op":"assign","value":"v1"}"#) { #expect($0["value"] as? String == "v1") }
            try await post("m", #"{"type":"or-map","op":"update","field":"apples","value":{"type":"g-counter","op":"increment","by":3}}"#) { object in
                let fields = object["value"] as? [String: [String: Any]]
                #expect(fields?["apples"]?["type"] as? String == "g-counter" && fields?["apples"]?["value"] as? Int == 3, "\(object)")
            }
            try await post("m", #"{"type":"or-map","op":"remove","field":"apples"}"#) { #expect(($0["value"] as? [String: Any])?.isEmpty == true) }
            try await client.execute(uri: "/v1/crdt/likes/n", method: .get) { response throws in
                let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
                #expect(object["type"] as? String == "pn-counter" && object["value"] as? Int == -2)
            }
            // Siblings: a blind write beside an existing value keeps both (300); the context resolves them.
            try await client.execute(uri: "/v1/kv/carts/c", method: .put, body: ByteBuffer(string: "one")) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/carts/c", method: .put, body: ByteBuffer(string: "two")) { #expect($0.status == .ok) }
            let context = try await client.execute(uri: "/v1/kv/carts/c", method: .get) { response throws -> String in
                #expect(response.status == .multipleChoices, "\(String(buffer: response.body))")
                return try #require(response.headers[HTTPField.Name("Meridian-Context")!])
            }
            try await client.execute(uri: "/v1/kv/carts/c", method: .put, headers: [HTTPField.Name("Meridian-Context")!: context],
                                     body: ByteBuffer(string: "one+two")) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/carts/c", method: .get) { response throws in
                #expect(response.status == .ok && String(buffer: response.body) == "one+two")
            }
            // One key's context does not pass for another's.
            try await client.execute(uri: "/v1/kv/carts/other", method: .put, headers: [HTTPField.Name("Meridian-Context")!: context],
                                     body: ByteBuffer(string: "x")) { response throws in
                let code = try errorCode(response)
                #expect(response.status == .badRequest && code == "invalid_header")
            }
            // Siblings are bounded (siblings_max 3 here): a fourth blind write is refused, nothing written.
            for value in ["b1", "b2"] {
                try await client.execute(uri: "/v1/kv/carts/c", method: .put, body: ByteBuffer(string: value)) { #expect($0.status == .ok) }
            }
            try await client.execute(uri: "/v1/kv/carts/c", method: .put, body: ByteBuffer(string: "b3")) { response throws in
                let code = try errorCode(response)
                #expect(response.status == .conflict && code == "too_many_siblings")
            }
            try await client.execute(uri: "/v1/kv/carts/c", method: .get) { response throws in
                let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
                #expect(response.status == .multipleChoices && (object["siblings"] as? [Any])?.count == 3)
            }
            // A delete without a context removes every version the region holds.
            try await client.execute(uri: "/v1/kv/carts/c", method: .delete) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/carts/c", method: .get) { #expect($0.status == .notFound) }
            // A counter that would overflow is refused, not wrapped.
            let most = #"{"type":"g-counter","op":"increment","by":9223372036854775807}"#
            try await client.execute(uri: "/v1/crdt/likes/big", method: .post, body: ByteBuffer(string: most)) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/crdt/likes/big", method: .post, body: ByteBuffer(string: most)) { response throws in
                let code = try errorCode(response)
                #expect(response.status == .badRequest && code == "invalid_request")
            }
            try await client.execute(uri: "/v1/crdt/likes/big", method: .get) { response throws in
                let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
                #expect(object["value"] as? Int64 == Int64.max)
            }
        }
    }

    /// Idempotency keys whose home, among the fixture's profiles replicas, is `home`.
    static func idempotencyKeys(homedIn home: String, count: Int) throws -> [String] {
        let replicas = [RegionName(validated: "us-east"), RegionName(validated: "eu-west")]
        return try (0..<400).map { "retry-\($0)" }.filter {
            IdempotencyHome.region(for: try IdempotencyKey($0), keyspace: try KeyspaceName("profiles"), replicas: replicas, down: []) == RegionName(validated: home)
        }.prefix(count).map { $0 }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func aRetriedIdempotentWriteGetsTheFirstOutcome(_ store: NodeFixture.Store) async throws {
        let idempotencyKey = HTTPField.Name("Idempotency-Key")!
        let here = try #require(try Self.idempotencyKeys(homedIn: "us-east", count: 1).first)
        let away = try #require(try Self.idempotencyKeys(homedIn: "eu-west", count: 1).first)
        try await fixture.withApp(store: store) { client in
            func put(_ key: String, _ value: String, _ idempotency: String) async throws -> (etag: String?, replayed: String?, local: String?, code: String?) {
                try await client.execute(uri: "/v1/kv/profiles/\(key)", method: .put, headers: [idempotencyKey: idempotency], body: ByteBuffer(string: value)) { response throws in
                    (response.headers[.eTag], response.headers[HTTPField.Name("Idempotent-Replayed")!], response.headers[HTTPField.Name("Meridian-Idempotency")!],
                     response.status == .ok ? nil : try errorCode(response))
                }
            }
            let first = try await put("a", "one", here)
            #expect(first.etag != nil && first.replayed == nil && first.local == nil)
            let retry = try await put("a", "one", here)
            #expect(retry.etag == first.etag && retry.replayed == "true")
            // Another write in between: a retry still answers the first version and changes nothing.
            _ = try await put("a", "two", "other-key")
            #expect(try await put("a", "one", here).etag == first.etag)
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get) { #expect(String(buffer: $0.body) == "two") }
            // The same key for another request: 422, nothing written.
            try await client.execute(uri: "/v1/kv/profiles/a", method: .put, headers: [idempotencyKey: here], body: ByteBuffer(string: "three")) { response throws in
                let (code, applied) = (try errorCode(response), try errorApplied(response))
                #expect(response.status.code == 422 && code == "idempotency_key_reused" && applied == "no")
            }
            try await client.execute(uri: "/v1/kv/profiles/a", method: .get) { #expect(String(buffer: $0.body) == "two") }
            // A key whose home (eu-west) cannot be reached: taken here. Until the cluster agrees eu-west is down the answer
            // says the home was skipped; once it does, the home is us-east. Its retry is replayed here either way.
            let downBefore = try await client.execute(uri: "/v1/topology", method: .get) { response throws in
                ((try json(response))["regions"] as? [[String: Any]])?.first { $0["name"] as? String == "eu-west" }?["health"] as? String == "down"
            }
            let local = try await put("b", "one", away)
            let downAfter = try await client.execute(uri: "/v1/topology", method: .get) { response throws in
                return ((try json(response))["regions"] as? [[String: Any]])?.first { $0["name"] as? String == "eu-west" }?["health"] as? String == "down"
            }
            #expect(local.etag != nil)
            if downBefore == downAfter { #expect(local.local == (downAfter ? nil : "local; home=eu-west"), "eu-west down: \(downAfter)") }
            #expect(try await put("b", "one", away).etag == local.etag)
            // A CRDT operation retried counts once.
            for _ in 0..<3 {
                try await client.execute(uri: "/v1/crdt/likes/post", method: .post, headers: [idempotencyKey: "like-1"],
                                         body: ByteBuffer(string: #"{"type":"pn-counter","op":"increment","by":2}"#)) { response throws in
                    let body = try json(response)
                    #expect(response.status == .ok && body["value"] as? Int == 2, "\(body)")
                }
            }
            try await client.execute(uri: "/v1/status", method: .get) { response throws in
                let body = try json(response)
                // Four writes applied: a=one, a=two, b=one, one increment; every retry added nothing to the log.
                #expect((body["log"] as? [String: Any])?["us-east"] as? Int == 4, "\(String(describing: body["log"]))")
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func nothingIsWrittenByARefusedRequest(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            try await client.execute(uri: "/v1/kv/accounts/k", method: .put, body: ByteBuffer(string: "v")) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/v1/kv/profiles/big", method: .put, body: ByteBuffer(string: String(repeating: "x", count: 5000))) {
                #expect($0.status == .contentTooLarge)
            }
            try await client.execute(uri: "/v1/kv/accounts/k?consistency=eventual", method: .get) { #expect($0.status == .notFound) }
            try await client.execute(uri: "/v1/kv/profiles/big", method: .get) { #expect($0.status == .notFound) }
            // Alone, the leader holds no lease (no majority heard it): a successor may already lead, so it takes no
            // write at all, not even an async one, and serves no strong read.
            try await client.execute(uri: "/v1/kv/accounts/k", method: .put, headers: [HTTPField.Name("Meridian-Ack")!: "async"],
                                     body: ByteBuffer(string: "v")) { response throws in
                let code = try errorCode(response)
                #expect(response.status == .serviceUnavailable && code == "leader_unavailable")
            }
            try await client.execute(uri: "/v1/kv/accounts/k?consistency=strong", method: .get) { #expect($0.status == .serviceUnavailable) }
            try await client.execute(uri: "/v1/kv/accounts/k?consistency=eventual", method: .get) { #expect($0.status == .notFound) }
            try await client.execute(uri: "/v1/kv/accounts/k?consistency=bounded&max-staleness-ms=50", method: .get) { response throws in
                #expect(response.status == .notFound, "nothing was written")
            }
        }
    }

    /// A node whose store stopped answering stays alive (`/health`) and says it is not ready (`/ready`), with the
    /// store's error.
    @Test func aNodeWhoseStoreFailsIsAliveButNotReady() async throws {
        try await fixture.withNode(store: .memory) { node, client in
            try await client.execute(uri: "/ready", method: .get) { #expect($0.status == .ok) }
            node.store.close()
            try await client.execute(uri: "/health", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/ready", method: .get) { response throws in
                #expect(response.status == .serviceUnavailable)
                #expect(try errorCode(response) == "storage_failure")
            }
        }
    }

    @Test(arguments: NodeFixture.Store.allCases)
    func healthStatusKeyspacesAndMetrics(_ store: NodeFixture.Store) async throws {
        try await fixture.withApp(store: store) { client in
            try await client.execute(uri: "/health", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/ready", method: .get) { #expect($0.status == .ok) }
            try await client.execute(uri: "/v1/kv/profiles/a", method: .put, body: ByteBuffer(string: "1")) { _ in }
            try await client.execute(uri: "/v1/status", method: .get) { response throws in
                let body = try json(response)
                #expect(body["region"] as? String == "us-east")
                let keyspaces = try #require(body["keyspaces"] as? [[String: Any]])
                let roles = Dictionary(uniqueKeysWithValues: keyspaces.map { ($0["name"] as! String, $0["role"] as! String) })
                #expect(roles == ["accounts": "leader", "ledger": "follower", "profiles": "leader", "eu_users": "not_replica", "eu_secret": "not_replica",
                                  "likes": "leader", "carts": "leader"])
                #expect(keyspaces.first { $0["name"] as? String == "profiles" }?["keys"] as? Int == 1)
                let peers = try #require(body["peers"] as? [[String: Any]])
                #expect(peers.count == 1 && peers[0]["region"] as? String == "eu-west")
                #expect(peers[0]["lag_entries"] as? Int == 1, "eu-west has applied none of us-east's one entry")
            }
            try await client.execute(uri: "/v1/keyspaces", method: .get) { response throws in
                let keyspaces = try #require(try json(response)["keyspaces"] as? [[String: Any]])
                let accounts = try #require(keyspaces.first { $0["name"] as? String == "accounts" })
                #expect(accounts["topology"] as? String == "single-leader" && accounts["leader"] as? String == "us-east")
                #expect(accounts["ack"] as? String == "majority")
                #expect((accounts["consistency"] as? [String: Any])?["default"] as? String == "strong")
                #expect((accounts["failover"] as? [String: Any])?["missed_heartbeats"] as? Int == 5)
                let eu = try #require(keyspaces.first { $0["name"] as? String == "eu_users" })
                #expect((eu["residency"] as? [String: Any])?["classification"] as? String == "restricted")
            }
            try await client.execute(uri: "/metrics", method: .get) { response throws in
                let text = String(buffer: response.body)
                #expect(text.contains(#"meridian_http_requests_total{route="/v1/kv/{keyspace}/**",method="PUT",status="200"} 1"#))
                #expect(text.contains("meridian_http_request_duration_seconds_bucket"))
                #expect(text.contains("meridian_store_commit_batch_writes_count 1"))
                #expect(text.contains("meridian_store_commit_duration_seconds_bucket"))
            }
        }
    }
}
