import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import NIOCore

extension RegionNode {
    static let contentTypeDefault = "application/octet-stream"

    func get(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let query = request.uri.queryParameters
        return try await read(headers: request.headers, query: { query.get($0) }, policy: policy, key: key, forwarded: false).response()
    }

    /// The headers a forwarded read carries to the region that serves it.
    static let forwardedReadHeaderNames: [HTTPField.Name] = [MeridianHeader.consistency, MeridianHeader.maxStalenessMs, MeridianHeader.session, readAsHeader]

    /// How a read renders the value: as stored bytes (`/v1/kv`) or as a CRDT's JSON (`/v1/crdt`).
    enum ReadAs: String {
        case value
        case crdt
    }

    /// A read sent here by another region: serve it as if a client had sent it here, never forwarding it again.
    func serveForwardedRead(_ read: ForwardedRead, from peer: RegionName) async -> ForwardedReply {
        return await serveForwardedRequest(id: read.id, keyspace: read.keyspace, headers: read.headers, allowed: Self.forwardedReadHeaderNames, change: false) {
            policy, headers throws(MeridianError) in
            try await self.read(headers: headers, query: { _ in nil }, policy: policy, key: read.key, forwarded: true,
                                as: headers[Self.readAsHeader] == ReadAs.crdt.rawValue ? .crdt : .value)
        }
    }

    /// Runs a request another region forwarded here: resolves its keyspace, keeps only the headers that shape
    /// it, and renders the answer (or the error) for the stream.
    private func serveForwardedRequest(
        id: UInt64, keyspace: KeyspaceName, headers carried: [ForwardedHeader], allowed: [HTTPField.Name], change: Bool,
        _ serve: (KeyspacePolicy, HTTPFields) async throws(MeridianError) -> RenderedResponse
    ) async -> ForwardedReply {
        let rendered: RenderedResponse
        do throws(MeridianError) {
            guard let policy = configuration.cluster.keyspace(keyspace) else {
                throw MeridianError(.unknownKeyspace, "Keyspace '\(keyspace)' does not exist in \(region)'s cluster file; check that every region runs the same one.",
                                    context: ["keyspace": keyspace.rawValue])
            }
            var headers = HTTPFields()
            for header in carried {
                guard let name = HTTPField.Name(header.name), allowed.contains(name) else { continue }
                headers.append(HTTPField(name: name, value: header.value))
            }
            rendered = try await serve(policy, headers)
        } catch {
            rendered = error.rendered(change: change)
        }
        return ForwardedReply(id: id, rendered: rendered)
    }

    /// Where a read goes once this region knows enough.
    private enum ReadRoute {
        case serve(level: ConsistencyLevel, stalenessMs: UInt64?)
        /// Forward to `to`; if it cannot be reached, answer `otherwise` (nil: say it is unreachable).
        case forward(to: RegionName, otherwise: MeridianError?)
    }

    /// Asks the core where a read may be served, waiting (bounded) while this region catches up: a read this
    /// region is behind for waits up to `read_wait_ms`, and no longer than a round trip to the region it
    /// would otherwise be forwarded to (waiting longer would be slower than asking there).
    private func route(_ policy: KeyspacePolicy, key: Key?, options: RequestOptions, forwarded: Bool) async throws(MeridianError) -> ReadRoute {
        let started = ContinuousClock.now
        if (options.consistency ?? policy.consistency.default) == .strong { _ = await settledPolicy(policy) }
        while true {
            var view = replicator.readView()
            if policy.topology == .singleLeader, let term = leadership.snapshot(policy.name) {
                view.leadership = Admission.ReadView.Leadership(leader: term.leader, holdsLease: term.holdsLease)
            }
            let decision = try admission.admitRead(policy, key: key, level: options.consistency, maxStalenessMs: options.maxStalenessMs,
                                                   session: options.session, view: view, forwarded: forwarded)
            switch decision {
            case .serve(let level, let stalenessMs):
                return .serve(level: level, stalenessMs: stalenessMs)
            case .forward(let target, _):
                return .forward(to: target, otherwise: nil)
            case .behind(_, let error, let target):
                let target = key == nil ? nil : target
                var budget = Duration.milliseconds(limits.readWaitMs)
                if let target, let rtt = configuration.cluster.wan.rttMs(region, target) {
                    budget = min(budget, .milliseconds(max(10, Int((rtt * configuration.cluster.wan.latencyScale).rounded(.up)))))
                }
                let waited = ContinuousClock.now - started
                if waited < budget {
                    await replicator.progress.wait(atMost: min(budget - waited, .milliseconds(50)))
                    continue
                }
                if let target { return .forward(to: target, otherwise: error) }
                throw error
            }
        }
    }

    func read(headers: HTTPFields, query: (String) -> String?, policy: KeyspacePolicy, key: Key, forwarded: Bool,
              as mode: ReadAs = .value) async throws(MeridianError) -> RenderedResponse {
        let rule = ConflictRule(policy: policy)
        guard (rule == .crdt) == (mode == .crdt) else { throw policyMismatch(policy, crdtAPI: mode == .crdt) }
        let options = try RequestOptions(headers: headers, query: query, sessionKey: sessionKey)
        let (level, stalenessMs): (ConsistencyLevel, UInt64?)
        switch try await route(policy, key: key, options: options, forwarded: forwarded) {
        case .forward(let target, let otherwise):
            do {
                return try await forwardRead(to: target, options: options, policy: policy, key: key, as: mode)
            } catch where error.code == .regionUnavailable {
                // Nowhere to go: the reason this region could not serve the read is the answer.
                if let otherwise { throw otherwise }
                guard policy.topology == .singleLeader, target == routed(policy).leader else { throw error }
                var context = error.context
                context["leader"] = target.rawValue
                throw MeridianError(.leaderUnavailable, error.message, context: context, applied: error.appliedOrImplied)
            }
        case .serve(let servedLevel, let servedStaleness):
            (level, stalenessMs) = (servedLevel, servedStaleness)
        }
        // Siblings and CRDT reads need the key's whole state (every version, the causal context); one read
        // gives it, and the version shown is the rule's winner, as `kv` holds it.
        let wholeState = rule == .siblings || rule == .crdt
        let state = wholeState ? try await store.state(keyspace: policy.name, key: key) : nil
        let stored = wholeState
            ? state.map { StoredValue(keyspace: policy.name, key: key, winner: $0.winner(rule)) }
            : try await store.get(keyspace: policy.name, key: key)
        if level == .strong, let stored { try await awaitMajority(stored.version, policy: policy) }
        var session = options.session ?? SessionToken()
        if rule == .siblings, let state {
            return renderSiblings(policy: policy, key: key, state: state, session: &session, level: level, stalenessMs: stalenessMs)
        }
        if mode == .crdt, let state {
            // A CRDT value holds every delta merged here, not only the newest one: the session has seen them all.
            session.observe(dependencies: state.context.byRegion)
        }
        if let stored {
            // What the writer had seen becomes part of what this reader has seen (writes-follow-reads for whoever
            // reads this value next with the token, in any region). A delete counts too: having seen it, the
            // session must never see the value again.
            session.observe(stored.version)
            session.observe(dependencies: stored.dependencies)
        }
        guard let stored, !stored.tombstone else {
            var notFound = MeridianError(.keyNotFound, "Key '\(key.rawValue.prefix(200))' is not in keyspace '\(policy.name)'.",
                                         context: ["keyspace": policy.name.rawValue, "key": String(key.rawValue.prefix(200))]).rendered(change: false)
            notFound.headers[MeridianHeader.session] = session.encoded(with: sessionKey)
            if let stored { notFound.headers[.eTag] = "\"\(stored.version)\"" }
            notFound.headers[.cacheControl] = "no-store"
            return notFound
        }
        var rendered = mode == .crdt
            ? try renderCRDT(policy: policy, key: key, stored: stored)
            : RenderedResponse(status: .ok, headers: [.contentType: stored.contentType, .eTag: "\"\(stored.version)\""], body: ByteBuffer(bytes: stored.value))
        var answer = rendered.headers
        answer[MeridianHeader.session] = session.encoded(with: sessionKey)
        if policy.topology == .singleLeader, let term = leadership.snapshot(policy.name) { answer[MeridianHeader.epoch] = String(term.epoch) }
        if let stalenessMs { answer[MeridianHeader.stalenessMs] = String(stalenessMs) }
        answer[.cacheControl] = Self.cacheControl(policy, level: level)
        rendered.headers = answer
        return rendered
    }

    /// Only eventual and prefix answers may be reused, and only by the client that got them (the answer carries
    /// its session token): a cached strong, bounded or session answer would outlive its promise.
    static func cacheControl(_ policy: KeyspacePolicy, level: ConsistencyLevel) -> String {
        guard policy.cache.ttlMs > 0, level == .eventual || level == .prefix else { return "no-store" }
        return "private, max-age=\(policy.cache.ttlMs / 1000)"
    }

    /// A strong read returns only a version a majority of replicas holds: after a failover the new leader is
    /// one of them, so no later read can miss what this one saw. Waits (up to the ack timeout) for a write
    /// this region made that is not confirmed yet.
    private func awaitMajority(_ version: Version, policy: KeyspacePolicy) async throws(MeridianError) {
        guard version.origin == region, policy.replicas.count > 1 else { return }
        let required = AckMode.majority.regionsRequired(replicaCount: policy.replicas.count)
        let deadline = ContinuousClock.now + .milliseconds(limits.ackTimeoutMs)
        while !replicator.isConfirmed(sequence: version.sequence, required: required, replicas: policy.replicas) {
            let now = ContinuousClock.now
            guard now < deadline else {
                throw MeridianError(.consistencyUnavailable,
                                    "The latest version of this key (\(version)) is not yet held by a majority of keyspace '\(policy.name)''s replicas, so a strong read cannot return it. Retry shortly.",
                                    context: ["keyspace": policy.name.rawValue, "version": version.description])
            }
            await replicator.progress.wait(atMost: min(deadline - now, .milliseconds(50)))
        }
    }

    /// Sends a read to a region that can serve it, over the stream to that region, and relays its answer.
    private func forwardRead(to target: RegionName, options: RequestOptions, policy: KeyspacePolicy, key: Key, as mode: ReadAs) async throws(MeridianError) -> RenderedResponse {
        var carried: [ForwardedHeader] = [ForwardedHeader(name: Self.readAsHeader.canonicalName, value: mode.rawValue)]
        if let level = options.consistency { carried.append(ForwardedHeader(name: MeridianHeader.consistency.canonicalName, value: level.rawValue)) }
        if let bound = options.maxStalenessMs { carried.append(ForwardedHeader(name: MeridianHeader.maxStalenessMs.canonicalName, value: String(bound))) }
        if let session = options.session { carried.append(ForwardedHeader(name: MeridianHeader.session.canonicalName, value: session.encoded(with: sessionKey))) }
        let reply = try await replicator.forward(to: target) { id in
            .forwardRead(ForwardedRead(id: id, keyspace: policy.name, key: key, headers: carried))
        }
        return relay(reply, from: target)
    }

    /// A forwarded request's answer, as this region sends it to the client.
    func relay(_ reply: ForwardedReply, from target: RegionName) -> RenderedResponse {
        var answer = HTTPFields()
        for header in reply.headers {
            guard let name = HTTPField.Name(header.name), name != MeridianHeader.region else { continue }
            answer.append(HTTPField(name: name, value: header.value))
        }
        answer[MeridianHeader.forwardedTo] = target.rawValue
        return RenderedResponse(status: HTTPResponse.Status(code: Int(reply.status)), headers: answer, body: ByteBuffer(bytes: reply.body))
    }

    func put(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let contentType = try Self.validContentType(request.headers[.contentType] ?? Self.contentTypeDefault)
        let body = try await readBody(request)
        let query = request.uri.queryParameters
        return try await write(headers: request.headers, query: { query.get($0) }, policy: policy, key: key, operation: .put,
                               contentType: contentType, value: body, forwarded: false).response()
    }

    func delete(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let query = request.uri.queryParameters
        return try await write(headers: request.headers, query: { query.get($0) }, policy: policy, key: key, operation: .delete,
                               contentType: "", value: [], forwarded: false).response()
    }

    static func validContentType(_ contentType: String) throws(MeridianError) -> String {
        guard contentType.utf8.count <= EntryCodec.contentTypeBytesMax,
              !contentType.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw MeridianError(.invalidHeader, "Content-Type is longer than \(EntryCodec.contentTypeBytesMax) bytes or holds control characters.",
                                context: ["header": "Content-Type"])
        }
        return contentType
    }

    /// The headers a forwarded write carries to the region that takes it.
    static let forwardedHeaderNames: [HTTPField.Name] = [MeridianHeader.ack, .ifMatch, MeridianHeader.session, MeridianHeader.context]

    /// A write sent here by another region (which found that this region takes it): run it as if a client
    /// had sent it here, never forwarding it again, and render the answer for the stream.
    func serveForwarded(_ write: ForwardedWrite) async -> ForwardedReply {
        await serveForwardedRequest(id: write.id, keyspace: write.keyspace, headers: write.headers, allowed: Self.forwardedHeaderNames, change: true) {
            policy, headers throws(MeridianError) in
            let contentType = write.operation == .delete ? "" : try Self.validContentType(write.contentType)
            guard write.value.count <= self.limits.valueBytesMax else {
                throw MeridianError(.valueTooLarge, "The value is larger than the limit of \(self.limits.valueBytesMax) bytes.")
            }
            return try await self.write(headers: headers, query: { _ in nil }, policy: policy, key: write.key, operation: write.operation,
                                        contentType: contentType, value: write.value, forwarded: true)
        }
    }

    /// A put, a delete, or (operation `merge`, the value being the JSON operation) a CRDT operation.
    func write(headers: HTTPFields, query: (String) -> String?, policy: KeyspacePolicy, key: Key, operation: MeridianCore.Operation,
               contentType: String, value: [UInt8], forwarded: Bool) async throws(MeridianError) -> RenderedResponse {
        let rule = ConflictRule(policy: policy)
        guard (rule == .crdt) == (operation == .merge) else { throw policyMismatch(policy, crdtAPI: operation == .merge) }
        let crdt = operation == .merge ? try CRDTJSON.parse(value) : nil
        var causalContext: VersionVector?
        if rule == .siblings {
            let values = headers[values: MeridianHeader.context]
            guard values.count <= 1 else {
                throw MeridianError(.invalidHeader, "Meridian-Context is given \(values.count) times; give it once.", context: ["header": "Meridian-Context"])
            }
            if let text = values.first {
                // Only what this region holds can be superseded here: a version the client saw that has not
                // arrived stays beside the write as a sibling rather than vanishing when it arrives.
                let claimed = try CausalContextToken.decode(text, keyspace: policy.name, key: key, with: sessionKey)
                let applied = store.appliedHighWater()
                var held = VersionVector()
                for origin in claimed.regions where configuration.cluster.region(origin) != nil {
                    held.set(origin, min(claimed[origin], applied[origin] ?? 0))
                }
                causalContext = held
            }
        }
        let options = try RequestOptions(headers: headers, query: query, sessionKey: sessionKey)
        if let session = options.session { try admission.checkSessionOrigins(session) }
        let ifMatch = try RequestOptions.precondition(headers)
        let routedPolicy = await settledPolicy(policy)
        if routedPolicy.topology == .singleLeader && routedPolicy.leader == nil && routedPolicy.isReplica(region) { throw electionRunning(policy) }
        let decision = try admission.admitWrite(routedPolicy, key: key, ack: options.ack, forwarded: forwarded)
        guard case .accept(let ack, let required, var epoch) = decision else {
            guard case .forward(let target) = decision else { preconditionFailure("admitWrite has two verdicts") }
            return try await forwardWrite(to: target, headers: headers, options: options, policy: policy, key: key, operation: operation,
                                          contentType: contentType, value: value)
        }
        // A timestamp from a clock out of tolerance would corrupt last-writer-wins order: refuse the write.
        if let refusal = clock.refusal { throw refusal }
        // The leader writes only while a majority confirms it still leads; the write carries its term, and stays
        // counted until it commits or is refused (a hand-over waits for it).
        var admittedUnderLease = false
        if policy.topology == .singleLeader {
            guard let term = leadership.admitWrite(policy.name) else { throw leaseLost(policy) }
            epoch = term
            admittedUnderLease = true
        }
        defer { if admittedUnderLease { leadership.writeAbandoned(policy.name) } }
        let precondition: WriteRequest.Precondition? = ifMatch.map { tags in
            tags.contains(.any) ? .exists : .versionIsOneOf(tags.compactMap { if case .version(let v) = $0 { v } else { nil } })
        }
        let outcome = try await store.write(WriteRequest(
            keyspace: policy.name, key: key, operation: operation, contentType: contentType, value: crdt == nil ? value : [],
            epoch: epoch, precondition: precondition, after: options.session?.clock, dependencies: options.session?.seen ?? [:],
            context: causalContext, crdt: crdt))
        switch outcome {
        case .refused(let error):
            throw error
        case .preconditionFailed(let current):
            var context = ["keyspace": policy.name.rawValue, "key": String(key.rawValue.prefix(200))]
            context["current_version"] = current?.description
            throw MeridianError(
                .preconditionFailed,
                current == nil
                    ? "If-Match did not hold: the key has no current value. Write without If-Match to create it."
                    : "If-Match did not hold: the key's current version is \(current!). Read it again and retry with its ETag.",
                context: context)
        case .committed(let entry):
            replicator.logGrew(to: entry.sequence)
            if admittedUnderLease {
                leadership.writeCommitted(policy.name, epoch: epoch, sequence: entry.sequence)
                admittedUnderLease = false
            }
            var ackedBy = [region]
            var session = options.session ?? SessionToken()
            session.observe(entry.version)
            if required > 1 {
                switch try await replicator.confirm(sequence: entry.sequence, required: required, replicas: policy.replicas) {
                case .acknowledged(_, let confirmed):
                    ackedBy = confirmed
                case .timedOut(_, let confirmed, let missing):
                    // The write is durable here: the token names it, so the client's next session read sees it.
                    var timedOut = MeridianError(
                        .ackTimeout,
                        "The write is durable in \(region) as version \(entry.version), but \(missing.map(\.rawValue).joined(separator: ", ")) did not confirm it within \(limits.ackTimeoutMs) ms, so ack '\(ack.rawValue)' is not met yet. It will still replicate; read it back, or retry with If-Match: \"\(entry.version)\".",
                        context: ["version": entry.version.description, "missing": missing.map(\.rawValue).joined(separator: ","),
                                  "acked_by": confirmed.map(\.rawValue).joined(separator: ","), "ack": ack.rawValue],
                        applied: .maybe).rendered(change: true)
                    timedOut.headers[MeridianHeader.session] = session.encoded(with: sessionKey)
                    timedOut.headers[.eTag] = "\"\(entry.version)\""
                    return timedOut
                }
            }
            var headers: HTTPFields = [.eTag: "\"\(entry.version)\"", MeridianHeader.session: session.encoded(with: sessionKey)]
            if policy.topology == .singleLeader {
                // Acknowledged only if this region still held its lease once the ack mode was met: otherwise a
                // successor may exist that never held the write, which then is kept aside, not lost.
                guard leadership.writableEpoch(policy.name) == epoch else {
                    var lost = MeridianError(
                        .leaderUnavailable,
                        "The write is durable in \(region) as version \(entry.version), but \(region) lost its lease on keyspace '\(policy.name)' (epoch \(epoch)) before it could acknowledge it: if another region took over without it, it is kept in the divergence log (GET /v1/divergence) rather than applied. Read the key at the new leader before retrying.",
                        context: ["keyspace": policy.name.rawValue, "epoch": String(epoch), "version": entry.version.description],
                        applied: .maybe).rendered(change: true)
                    lost.headers[.eTag] = "\"\(entry.version)\""
                    return lost
                }
                headers[MeridianHeader.epoch] = String(epoch)
            }
            var answer = WriteAnswer(keyspace: policy.name.rawValue, key: key.rawValue, version: entry.version.description, region: region.rawValue,
                                     ack: ack.rawValue, ackedBy: ackedBy.map(\.rawValue), operation: crdt?.operation.name ?? operation.description)
            if crdt != nil, let stored = try await store.get(keyspace: policy.name, key: key), let current = try? CRDTCodec.decode(stored.value) {
                answer.type = current.type.rawValue
                answer.value = CRDTJSON.render(current)
            }
            return JSON.rendered(answer, headers: headers)
        }
    }

    /// Sends the write to the region that takes it, over the stream to that region, and relays its answer.
    private func forwardWrite(to target: RegionName, headers: HTTPFields, options: RequestOptions, policy: KeyspacePolicy, key: Key,
                              operation: MeridianCore.Operation, contentType: String, value: [UInt8]) async throws(MeridianError) -> RenderedResponse {
        var carried: [ForwardedHeader] = []
        if let ack = options.ack { carried.append(ForwardedHeader(name: MeridianHeader.ack.canonicalName, value: ack.rawValue)) }
        for tag in headers[values: .ifMatch] { carried.append(ForwardedHeader(name: "If-Match", value: tag)) }
        if let session = options.session { carried.append(ForwardedHeader(name: MeridianHeader.session.canonicalName, value: session.encoded(with: sessionKey))) }
        if let context = headers[MeridianHeader.context] { carried.append(ForwardedHeader(name: MeridianHeader.context.canonicalName, value: context)) }
        let reply: ForwardedReply
        do {
            reply = try await replicator.forward(to: target) { id in
                .forward(ForwardedWrite(id: id, keyspace: policy.name, key: key, operation: operation, contentType: contentType, value: value, headers: carried))
            }
        } catch where error.code == .regionUnavailable && policy.topology == .singleLeader {
            // For a single-leader keyspace the unreachable region is the leader: say so in the code clients branch on.
            var context = error.context
            context["leader"] = target.rawValue
            throw MeridianError(.leaderUnavailable, error.message, context: context, applied: error.appliedOrImplied)
        }
        return relay(reply, from: target)
    }

    /// A page size from the `limit` query parameter: `list_limit_default` when absent, at most `list_limit_max`.
    func pageLimit(_ text: String?) throws(MeridianError) -> Int {
        guard let text else { return limits.listLimitDefault }
        guard let value = Int(text), (1...limits.listLimitMax).contains(value) else {
            throw MeridianError(.invalidParameter, "limit '\(text.prefix(32))' must be a whole number from 1 to \(limits.listLimitMax).",
                                context: ["parameter": "limit", "limit_max": String(limits.listLimitMax)])
        }
        return value
    }

    func list(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let query = request.uri.queryParameters
        let prefix = query.get("prefix") ?? ""
        guard prefix.utf8.count <= Key.utf8BytesMax, !prefix.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw MeridianError(.invalidParameter, "prefix is longer than \(Key.utf8BytesMax) bytes or holds control characters.",
                                context: ["parameter": "prefix"])
        }
        var after: String?
        if let text = query.get("after") {
            do { after = try Key(text).rawValue } catch {
                throw MeridianError(.invalidParameter, "after must be a key: \(error.message)", context: ["parameter": "after"])
            }
        }
        let limit = try pageLimit(query.get("limit"))
        let options = try RequestOptions(request, sessionKey: sessionKey)
        // A listing is served here or refused: it is never forwarded, so a route elsewhere means "not here".
        let level: ConsistencyLevel
        switch try await route(policy, key: nil, options: options, forwarded: false) {
        case .forward(let target, let otherwise):
            if let otherwise { throw otherwise }
            throw MeridianError(.consistencyUnavailable, "This listing of keyspace '\(policy.name)' can only be served at \(target); send it there.",
                                context: ["keyspace": policy.name.rawValue, "region": target.rawValue])
        case .serve(let servedLevel, _):
            level = servedLevel
        }
        let keys = try await store.list(keyspace: policy.name, prefix: prefix, after: after, limit: limit)
        // A strong listing shows only versions a majority holds; peers apply in log order, so confirming the
        // highest of this region's sequences listed confirms them all.
        if level == .strong, let newest = keys.map(\.version).filter({ $0.origin == region }).max(by: { $0.sequence < $1.sequence }) {
            try await awaitMajority(newest, policy: policy)
        }
        let items = keys.map { ListAnswer.Item(key: $0.key.rawValue, version: $0.version.description, bytes: $0.valueBytes, contentType: $0.contentType) }
        // The listing's versions join the session: later session reads, anywhere, reflect at least them.
        var session = options.session ?? SessionToken()
        for key in keys {
            session.observe(key.version)
            session.observe(dependencies: key.dependencies)
        }
        return JSON.response(ListAnswer(keyspace: policy.name.rawValue, keys: items, nextAfter: keys.count == limit ? keys.last?.key.rawValue : nil),
                             headers: [MeridianHeader.session: session.encoded(with: sessionKey), .cacheControl: Self.cacheControl(policy, level: level)])
    }

    /// Reads the request body, refusing more than `valueBytesMax` bytes with 413 before buffering them.
    func readBody(_ request: Request) async throws(MeridianError) -> [UInt8] {
        let limit = limits.valueBytesMax
        let tooLarge = MeridianError(.valueTooLarge, "The value is larger than the limit of \(limit) bytes. Split it, or raise limits.value_bytes_max.",
                                     context: ["value_bytes_max": String(limit)])
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit { throw tooLarge }
        do {
            var buffer = try await request.body.collect(upTo: limit)
            return buffer.readBytes(length: buffer.readableBytes) ?? []
        } catch is NIOTooManyBytesError {
            throw tooLarge
        } catch {
            throw MeridianError(.invalidRequest, "The request body could not be read: \(error).")
        }
    }
}

extension ForwardedReply {
    /// A rendered answer (or error) as it travels back to the region that forwarded the request.
    init(id: UInt64, rendered: RenderedResponse) {
        self.init(id: id, status: UInt16(rendered.status.code),
                  headers: rendered.headers.map { ForwardedHeader(name: $0.name.canonicalName, value: $0.value) },
                  body: Array(buffer: rendered.body))
    }
}
