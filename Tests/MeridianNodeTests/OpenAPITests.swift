// Proves the OpenAPI document (`Sources/MeridianAPI/openapi.yaml`) describes the server that really runs:
// it is served at /openapi.yaml, it documents exactly the routes the router has (no route missing, none
// invented), every operation documents its error answers in the one JSON error shape, and a method a known
// path does not serve is answered 405 with `Allow`, as the document says.
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import MeridianAPI
import MeridianCore
import MeridianNode
import MeridianStore
import NIOCore
import Testing
import Yams

@Suite struct OpenAPITests {
    static func document() throws -> [String: Any] {
        try #require(try Yams.load(yaml: String(decoding: OpenAPIDocument.yaml, as: UTF8.self)) as? [String: Any])
    }

    /// `/v1/kv/{keyspace}/{key}` in the document's terms is the router's `/v1/kv/{keyspace}/**`: the key is the
    /// rest of the path (it may contain `/`).
    static func routerPath(_ documented: String) -> String {
        documented.replacingOccurrences(of: "{key}", with: "**")
    }

    @Test func theDocumentListsExactlyTheRoutesTheRouterServes() async throws {
        let document = try Self.document()
        #expect((document["openapi"] as? String)?.hasPrefix("3.") == true)
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        var documented: Set<String> = []
        for (path, item) in paths {
            for method in item.keys where ["get", "put", "post", "delete", "patch", "head", "options"].contains(method) {
                documented.insert("\(method.uppercased()) \(Self.routerPath(path))")
            }
        }
        let fixture = NodeFixture()
        let config = try ClusterConfig.parse(yaml: NodeFixture.yaml, file: "test.yaml")
        let node = try await RegionNode(configuration: NodeConfiguration(cluster: config, region: RegionName(validated: "us-east")).withTestRootKey(), store: RegionStore.factory(directory: fixture.directory))
        defer {
            node.store.close()
            try? FileManager.default.removeItem(atPath: fixture.directory)
        }
        let served = Set(node.router().routes.map { "\($0.method) \($0.path)" })
        #expect(served.subtracting(documented).isEmpty, "served but not documented: \(served.subtracting(documented).sorted())")
        #expect(documented.subtracting(served).isEmpty, "documented but not served: \(documented.subtracting(served).sorted())")
        #expect(served.count >= 18)
    }

    @Test func everyOperationDocumentsItsErrorsInTheOneErrorShape() throws {
        let document = try Self.document()
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        let components = try #require(document["components"] as? [String: Any])
        let schemas = try #require(components["schemas"] as? [String: Any])
        let error = try #require(schemas["Error"] as? [String: Any])
        #expect((error["required"] as? [String]) == ["error"], "\(error)")
        let responses = components["responses"] as? [String: [String: Any]] ?? [:]
        for (path, item) in paths {
            for (method, operation) in item {
                guard let operation = operation as? [String: Any], let answers = operation["responses"] as? [String: Any] else { continue }
                #expect(operation["operationId"] is String, "\(method) \(path) has no operationId")
                for (status, answer) in answers where status.hasPrefix("4") || status.hasPrefix("5") {
                    // Either a reference to a shared error response, or an inline one pointing at the Error schema.
                    let answer = answer as? [String: Any] ?? [:]
                    let resolved = (answer["$ref"] as? String).flatMap { responses[String($0.split(separator: "/").last ?? "")] } ?? answer
                    let content = resolved["content"] as? [String: Any]
                    let json = content?["application/json"] as? [String: Any]
                    let schema = json?["schema"] as? [String: Any]
                    #expect(schema?["$ref"] as? String == "#/components/schemas/Error", "\(method) \(path) \(status) is not the error shape: \(resolved)")
                }
            }
        }
    }

    @Test func theDocumentIsServedAndAnUnservedMethodIsAnswered405() async throws {
        try await NodeFixture().withApp { client in
            try await client.execute(uri: "/openapi.yaml", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "application/yaml")
                #expect(Array(buffer: response.body) == OpenAPIDocument.yaml)
            }
            try await client.execute(uri: "/v1/kv/profiles/some/key", method: .patch) { response throws in
                #expect(response.status == .methodNotAllowed)
                #expect(response.headers[.allow] == "DELETE, GET, PUT")
                #expect(try errorCode(response) == "method_not_allowed")
            }
            try await client.execute(uri: "/v1/status", method: .delete) { response in
                #expect(response.status == .methodNotAllowed)
                #expect(response.headers[.allow] == "GET")
            }
            try await client.execute(uri: "/v1/nothing-here", method: .get) { response throws in
                #expect(response.status == .notFound)
                #expect(try errorCode(response) == "route_not_found")
            }
        }
    }
}
