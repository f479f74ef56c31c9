import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import NIOCore

extension VersionJSON {
    /// One version of a key as the API shows it.
    /// - Parameter showDeleted: Say whether it was a delete (the conflicts log does).
    init(_ version: KeyVersion, showDeleted: Bool = false) {
        self.init(version: version.version.description, region: version.version.origin.rawValue, contentType: version.contentType,
                  value: StoredBytes(bytes: version.value), deleted: showDeleted ? version.tombstone : nil)
    }
}

/// The JSON forms of CRDT operations and values (documented in the README).
enum CRDTJSON {
    /// The most elements or fields one operation names.
    static let namesPerOperationMax = 1000

    /// Parses an operation: `{"type": "pn-counter", "op": "increment", "by": 5}` and the like.
    static func parse(_ body: [UInt8]) throws(MeridianError) -> CRDTRequest {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(body)) } catch {
            throw invalid("The body is not JSON; send an operation such as {\"type\":\"pn-counter\",\"op\":\"increment\",\"by\":1}.")
        }
        return try parse(object, nested: false)
    }

    private static func invalid(_ message: String) -> MeridianError {
        MeridianError(.invalidRequest, message)
    }

    private static func parse(_ object: Any, nested: Bool) throws(MeridianError) -> CRDTRequest {
        guard let fields = object as? [String: Any] else { throw invalid("A CRDT operation is a JSON object with \"type\" and \"op\".") }
        guard let typeName = fields["type"] as? String, let type = CRDTType(rawValue: typeName) else {
            throw invalid("\"type\" must be one of \(CRDTType.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
        guard !(nested && type == .orMap) else { throw invalid("An or-map field cannot itself be an or-map; use one of the other types.") }
        guard let op = fields["op"] as? String else { throw invalid("\"op\" must name the operation, such as \"increment\".") }
        let allowed: Set<String>
        let operation: CRDTOperation
        switch (type, op) {
        case (.gCounter, "increment"), (.pnCounter, "increment"), (.pnCounter, "decrement"):
            allowed = ["type", "op", "by"]
            let by = try amount(fields["by"])
            operation = op == "increment" ? .increment(by) : .decrement(by)
        case (.orSet, "add"), (.orSet, "remove"):
            allowed = ["type", "op", "element", "elements"]
            let names = try strings(fields, single: "element", plural: "elements")
            operation = op == "add" ? .add(names) : .remove(names)
        case (.lwwRegister, "assign"), (.mvRegister, "assign"):
            allowed = ["type", "op", "value"]
            guard let value = fields["value"] as? String else { throw invalid("\"assign\" needs \"value\", a string.") }
            operation = .assign(value)
        case (.orMap, "update"):
            allowed = ["type", "op", "field", "value"]
            guard let field = fields["field"] as? String, !field.isEmpty else { throw invalid("\"update\" needs \"field\", a non-empty string.") }
            guard let inner = fields["value"] else { throw invalid("\"update\" needs \"value\": the operation on the field, such as {\"type\":\"pn-counter\",\"op\":\"increment\"}.") }
            let request = try parse(inner, nested: true)
            operation = .update(field: field, type: request.type, request.operation)
        case (.orMap, "remove"):
            allowed = ["type", "op", "field", "fields"]
            operation = .removeFields(try strings(fields, single: "field", plural: "fields"))
        default:
            throw invalid("A \(type.rawValue) has no operation '\(op.prefix(32))'; see the README's CRDT section for the operations of each type.")
        }
        if let unknown = fields.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw invalid("Field \"\(unknown.prefix(32))\" is not part of a \(type.rawValue) '\(op)' operation.")
        }
        return CRDTRequest(type: type, operation: operation)
    }

    private static func amount(_ value: Any?) throws(MeridianError) -> UInt64 {
        guard let value else { return 1 }
        // JSONSerialization's numbers all cast to Bool and true/false to Int; the number's type code tells them
        // apart ("c" is a boolean). 2.5 and 1e30 do not cast to Int64.
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c",
              let whole = value as? Int64, whole >= 1 else {
            throw invalid("\"by\" must be a whole number of at least 1 (omit it for 1).")
        }
        return UInt64(whole)
    }

    private static func strings(_ fields: [String: Any], single: String, plural: String) throws(MeridianError) -> [String] {
        var names: [String] = []
        if let one = fields[single] {
            guard let text = one as? String else { throw invalid("\"\(single)\" must be a string.") }
            names.append(text)
        }
        if let many = fields[plural] {
            guard let list = many as? [String] else { throw invalid("\"\(plural)\" must be a list of strings.") }
            names += list
        }
        guard !names.isEmpty, names.count <= namesPerOperationMax else {
            throw invalid("Name 1 to \(namesPerOperationMax) items with \"\(single)\" or \"\(plural)\".")
        }
        return names
    }

    /// A value as the API shows it.
    static func render(_ value: CRDTValue) -> JSONValue {
        switch value {
        case .gCounter(let counter): .unsigned(counter.value)
        case .pnCounter(let counter): .integer(counter.value)
        case .orSet(let set): .array(set.elements.map(JSONValue.string))
        case .lwwRegister(let register): register.value.map(JSONValue.string) ?? .null
        case .mvRegister(let register): .array(register.values.sorted().map(JSONValue.string))
        case .orMap(let map):
            .object(Dictionary(uniqueKeysWithValues: map.keys.compactMap { key in
                map[key].map { (key, JSONValue.object(["type": .string($0.type.rawValue), "value": render($0)])) }
            }))
        }
    }
}

extension RegionNode {
    func crdtGet(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let options = try RequestOptions(request, sessionKey: sessionKey)
        let answered = try await read(options: options, policy: policy, key: key, forwarded: false, form: .crdt)
        return renderRead(answered, policy: policy, key: key, form: .crdt).response()
    }

    func crdtPost(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let body = try await readBody(request)
        return try await httpWrite(request, policy: policy, key: key, operation: .merge, contentType: "application/json", value: body)
    }

    /// Renders a read of a `siblings` keyspace: one live version as a value, several as a 300 list; either
    /// way with the causal context the next write sends back.
    func renderSiblings(policy: KeyspacePolicy, key: Key, state: KeyState, session: String, level: ConsistencyLevel,
                        stalenessMs: UInt64?) -> RenderedResponse {
        let live = state.versions.filter { !$0.tombstone }.sorted { $0.version.hlc > $1.version.hlc }
        let contextToken = CausalContextToken.encode(state.context, keyspace: policy.name, key: key, with: sessionKey)
        var headers: HTTPFields = [MeridianHeader.context: contextToken, MeridianHeader.session: session]
        headers[.eTag] = "\"\(state.winner(.siblings).version)\""
        if let stalenessMs { headers[MeridianHeader.stalenessMs] = String(stalenessMs) }
        headers[.cacheControl] = Self.cacheControl(policy, level: level)
        switch live.count {
        case 0:
            let shown = configuration.cluster.shownKey(key, in: policy)
            var notFound = MeridianError(.keyNotFound, "Key '\(shown)' is not in keyspace '\(policy.name)'.",
                                         context: ["keyspace": policy.name.rawValue, "key": shown]).rendered(change: false)
            for field in headers where field.name != .cacheControl { notFound.headers[field.name] = field.value }
            notFound.headers[.cacheControl] = "no-store"
            return notFound
        case 1:
            headers[.contentType] = live[0].contentType
            return RenderedResponse(status: .ok, headers: headers, body: ByteBuffer(bytes: live[0].value))
        default:
            let answer = SiblingsAnswer(
                keyspace: policy.name.rawValue, key: key.rawValue,
                siblings: live.map { VersionJSON($0) },
                context: contextToken)
            return JSON.rendered(answer, status: .multipleChoices, headers: headers)
        }
    }

    /// Renders a CRDT read.
    func renderCRDT(policy: KeyspacePolicy, key: Key, version stored: KeyVersion) throws(MeridianError) -> RenderedResponse {
        let value: CRDTValue
        do { value = try CRDTCodec.decode(stored.value) } catch {
            throw MeridianError(.storageFailure, "The stored value of '\(configuration.cluster.shownKey(key, in: policy))' is not a readable CRDT (\(error.message)).")
        }
        return JSON.rendered(CRDTAnswer(keyspace: policy.name.rawValue, key: key.rawValue, type: value.type.rawValue,
                                        value: CRDTJSON.render(value), version: stored.version.description),
                             headers: [.eTag: "\"\(stored.version)\""])
    }

    /// The refusal for a read or write through the wrong API for the keyspace's conflict policy.
    func policyMismatch(_ policy: KeyspacePolicy, crdtAPI: Bool) -> MeridianError {
        let name = policy.name
        return crdtAPI
            ? MeridianError(.conflictPolicyMismatch, "Keyspace '\(name)' resolves conflicts by \(ConflictRule(policy: policy).name), not crdt; use /v1/kv/\(name)/{key}.",
                            context: ["keyspace": name.rawValue])
            : MeridianError(.conflictPolicyMismatch, "Keyspace '\(name)' holds CRDT values; use GET or POST /v1/crdt/\(name)/{key}.",
                            context: ["keyspace": name.rawValue])
    }

    func conflicts(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let query = request.uri.queryParameters
        var after: Int64 = 0
        if let text = query.get("after") {
            guard let value = Int64(text), value >= 0 else {
                throw MeridianError(.invalidParameter, "after '\(text.prefix(32))' must be a record id (a whole number).", context: ["parameter": "after"])
            }
            after = value
        }
        let limit = try pageLimit(query.get("limit"))
        var key: Key?
        if let text = query.get("key") {
            do { key = try Key(text) } catch {
                throw MeridianError(.invalidParameter, "key must be a key: \(error.message)", context: ["parameter": "key"])
            }
        }
        let records = try await store.conflicts(keyspace: policy.name, key: key, after: after, limit: limit)
        let answer = ConflictsAnswer(
            keyspace: policy.name.rawValue, region: region.rawValue,
            conflicts: records.map { record in
                ConflictsAnswer.Record(
                    id: record.id, key: record.key.rawValue, rule: record.rule, recordedMs: record.recordedMs,
                    loser: VersionJSON(record.loser, showDeleted: true),
                    winner: .init(version: record.winner.description, region: record.winner.origin.rawValue))
            },
            nextAfter: records.count == limit ? records.last?.id : nil)
        return JSON.response(answer, headers: [.cacheControl: "no-store"])
    }
}
