import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import NIOCore

/// A read's or write's answer, and the region that gave it when it was not this one.
struct Answered {
    let answer: ServedAnswer
    /// The region the request was forwarded to; nil when this region served it.
    let by: RegionName?
    /// An idempotent write taken here because its idempotency home (this region) could not be reached.
    var idempotencyHomeUnreachable: RegionName?

    init(answer: ServedAnswer, by: RegionName?) {
        self.answer = answer
        self.by = by
    }
}

extension RegionNode {
    static let contentTypeDefault = "application/octet-stream"

    func get(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let options = try RequestOptions(request, sessionKey: sessionKey)
        let answered = try await read(options: options, policy: policy, key: key, forwarded: false, form: .value)
        return renderRead(answered, policy: policy, key: key, form: .value).response()
    }

    /// A read sent here by another region: serve it as if a client had sent it here, never forwarding it again.
    func serveForwardedRead(_ read: ForwardedRead, from peer: RegionName) async -> ForwardedReply {
        let answer: ServedAnswer
        do throws(MeridianError) {
            let policy = try forwardedPolicy(read.keyspace)
            let options = try RequestOptions(read.options, sessionKey: sessionKey)
            recordForwarded("read", keyspace: read.keyspace, principal: options.principal, from: peer)
            answer = try await self.read(options: options, policy: policy, key: read.key, forwarded: true, form: read.form).answer
        } catch {
            answer = .refused(Refusal(error))
        }
        return ForwardedReply(id: read.id, answer: answer)
    }

    /// The keyspace a forwarded request names, as this region's cluster file has it.
    private func forwardedPolicy(_ keyspace: KeyspaceName) throws(MeridianError) -> KeyspacePolicy {
        try restore.admitRequest()
        guard let policy = configuration.cluster.keyspace(keyspace) else {
            throw MeridianError(.unknownKeyspace, "Keyspace '\(keyspace)' does not exist in \(region)'s cluster file; check that every region runs the same one.",
                                context: ["keyspace": keyspace.rawValue])
        }
        return policy
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

    /// Serves a read here, or forwards it to a region that can serve it at the level asked.
    func read(options: RequestOptions, policy: KeyspacePolicy, key: Key, forwarded: Bool,
              form: ForwardedRead.Form) async throws(MeridianError) -> Answered {
        let rule = ConflictRule(policy: policy)
        guard (rule == .crdt) == (form == .crdt) else { throw policyMismatch(policy, crdtAPI: form == .crdt) }
        var level: ConsistencyLevel, stalenessMs: UInt64?, state: KeyState?
        // A strong read returns only a version a majority holds, so it may wait for this region's newest write
        // of the key to be confirmed (up to the ack timeout). It is admitted again, and the key read again, after
        // every wait: a leader that lost its lease meanwhile may have been succeeded by a term that keeps that
        // write aside (a peer that kept it aside still acknowledges its sequence), as the simulator reads.
        let confirmationDeadline = ContinuousClock.now + .milliseconds(limits.ackTimeoutMs)
        while true {
            switch try await route(policy, key: key, options: options, forwarded: forwarded) {
            case .forward(let target, let otherwise):
                do {
                    return try await forwardRead(to: target, options: options, policy: policy, key: key, form: form)
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
            // Siblings and CRDT reads need the key's whole state (every version, the causal context); the others
            // the version reads show, as `kv` holds it.
            if rule == .siblings || rule == .crdt {
                state = try await openingSealed(policy.name) { () async throws(MeridianError) in try await store.state(keyspace: policy.name, key: key) }
            } else {
                state = try await openingSealed(policy.name) { () async throws(MeridianError) in try await store.get(keyspace: policy.name, key: key) }.map { stored in
                    KeyState(context: VersionVector(), versions: [KeyVersion(version: stored.version, tombstone: stored.tombstone, contentType: stored.contentType,
                                                                             value: stored.value, dependencies: stored.dependencies)])
                }
            }
            guard level == .strong, let version = state?.winner(rule).version, !confirmedByMajority(version, policy: policy) else { break }
            try await waitForConfirmation(of: version, policy: policy, until: confirmationDeadline)
        }
        // What the writers had seen becomes part of what this reader has seen (writes-follow-reads for whoever
        // reads this value next with the token, in any region). A delete counts too: having seen it, the
        // session must never see the value again. A siblings read shows every version; a CRDT value holds
        // every delta merged here, not only the newest one.
        var session = options.session ?? SessionToken()
        if let state {
            let shown = rule == .siblings ? state.versions : [state.winner(rule)]
            for version in shown {
                session.observe(version.version)
                session.observe(dependencies: version.dependencies)
            }
            if rule == .crdt { session.observe(dependencies: state.context.byRegion) }
        }
        let epoch = policy.topology == .singleLeader ? leadership.snapshot(policy.name)?.epoch : nil
        return Answered(answer: .read(ServedRead(level: level, stalenessMs: stalenessMs, epoch: epoch, state: state,
                                                 session: session.encoded(with: sessionKey))), by: nil)
    }

    /// A read's answer as this region sends it to its HTTP client.
    func renderRead(_ answered: Answered, policy: KeyspacePolicy, key: Key, form: ForwardedRead.Form) -> RenderedResponse {
        var rendered: RenderedResponse
        switch answered.answer {
        case .read(let served):
            rendered = renderServedRead(served, policy: policy, key: key, form: form)
        case .refused(let refusal):
            rendered = render(refusal, change: false, policy: policy, key: key)
        case .written:
            rendered = MeridianError(.internalError, "\(answered.by?.rawValue ?? region.rawValue) answered a read with a write's answer; check that every region runs the same version.")
                .rendered(change: false)
        }
        if let by = answered.by { rendered.headers[MeridianHeader.forwardedTo] = by.rawValue }
        return rendered
    }

    private func renderServedRead(_ served: ServedRead, policy: KeyspacePolicy, key: Key, form: ForwardedRead.Form) -> RenderedResponse {
        let rule = ConflictRule(policy: policy)
        if rule == .siblings, let state = served.state {
            return renderSiblings(policy: policy, key: key, state: state, session: served.session, level: served.level, stalenessMs: served.stalenessMs)
        }
        guard let winner = served.state?.winner(rule), !winner.tombstone else {
            let shown = configuration.cluster.shownKey(key, in: policy)
            var notFound = MeridianError(.keyNotFound, "Key '\(shown)' is not in keyspace '\(policy.name)'.",
                                         context: ["keyspace": policy.name.rawValue, "key": shown]).rendered(change: false)
            notFound.headers[MeridianHeader.session] = served.session
            if let winner = served.state?.winner(rule) { notFound.headers[.eTag] = "\"\(winner.version)\"" }
            notFound.headers[.cacheControl] = "no-store"
            return notFound
        }
        var rendered: RenderedResponse
        if form == .crdt {
            do throws(MeridianError) {
                rendered = try renderCRDT(policy: policy, key: key, version: winner)
            } catch {
                return error.rendered(change: false)
            }
        } else {
            rendered = RenderedResponse(status: .ok, headers: [.contentType: winner.contentType, .eTag: "\"\(winner.version)\""], body: ByteBuffer(bytes: winner.value))
        }
        rendered.headers[MeridianHeader.session] = served.session
        if let epoch = served.epoch { rendered.headers[MeridianHeader.epoch] = String(epoch) }
        if let stalenessMs = served.stalenessMs { rendered.headers[MeridianHeader.stalenessMs] = String(stalenessMs) }
        rendered.headers[.cacheControl] = Self.cacheControl(policy, level: served.level)
        return rendered
    }

    /// A refusal as this region sends it to its HTTP client: the error (a restricted keyspace's key shown as its
    /// hash, wherever the refusal was made), and the session token and version it names.
    func render(_ refusal: Refusal, change: Bool, policy: KeyspacePolicy, key: Key) -> RenderedResponse {
        var rendered = configuration.cluster.hiding(key, of: policy, in: refusal.error).rendered(change: change)
        if let session = refusal.session { rendered.headers[MeridianHeader.session] = session }
        if let version = refusal.version { rendered.headers[.eTag] = "\"\(version)\"" }
        return rendered
    }

    /// Only eventual and prefix answers may be reused, and only by the client that got them (the answer carries
    /// its session token): a cached strong, bounded or session answer would outlive its promise.
    static func cacheControl(_ policy: KeyspacePolicy, level: ConsistencyLevel) -> String {
        guard policy.cache.ttlMs > 0, !policy.keyNamesArePrivate, level == .eventual || level == .prefix else { return "no-store" }
        return "private, max-age=\(policy.cache.ttlMs / 1000)"
    }

    /// Whether a majority of the keyspace's replicas holds `version` (a version another region wrote reached
    /// this region through its log, so a majority holds it already): after a failover the new leader is one of
    /// them, so no later read can miss what a strong read saw.
    private func confirmedByMajority(_ version: Version, policy: KeyspacePolicy) -> Bool {
        guard version.origin == region, policy.replicas.count > 1 else { return true }
        return replicator.isConfirmed(sequence: version.sequence, required: AckMode.majority.regionsRequired(replicaCount: policy.replicas.count),
                                      replicas: policy.replicas)
    }

    /// Waits a moment for this region's progress (an ack may confirm `version`), or refuses the read once
    /// `deadline` (the ack timeout) has passed.
    private func waitForConfirmation(of version: Version, policy: KeyspacePolicy, until deadline: ContinuousClock.Instant) async throws(MeridianError) {
        let now = ContinuousClock.now
        guard now < deadline else {
            throw MeridianError(.consistencyUnavailable,
                                "The latest version of this key (\(version)) is not yet held by a majority of keyspace '\(policy.name)''s replicas, so a strong read cannot return it. Retry shortly.",
                                context: ["keyspace": policy.name.rawValue, "version": version.description])
        }
        await replicator.progress.wait(atMost: min(deadline - now, .milliseconds(50)))
    }

    /// Sends a read to a region that can serve it, over the stream to that region, and returns its answer.
    private func forwardRead(to target: RegionName, options: RequestOptions, policy: KeyspacePolicy, key: Key,
                             form: ForwardedRead.Form) async throws(MeridianError) -> Answered {
        let carried = ReadOptions(consistency: options.consistency, maxStalenessMs: options.maxStalenessMs, session: options.session?.encoded(with: sessionKey),
                                  principal: options.principal)
        auditRelay(policy, key: key, operation: "read", to: target, principal: options.principal)
        let reply = try await replicator.forward(to: target) { id in
            .forwardRead(ForwardedRead(id: id, keyspace: policy.name, key: key, form: form, options: carried))
        }
        return Answered(answer: reply.answer, by: target)
    }

    /// A request for a restricted keyspace this region relays to another: on the audit trail, the key as its hash.
    private func auditRelay(_ policy: KeyspacePolicy, key: Key, operation: String, to target: RegionName, principal: String?) {
        guard policy.residency.classification == .restricted, let audit else { return }
        audit.record(policy.isReplica(region) ? .forwarded : .proxied,
                     ["keyspace": policy.name.rawValue, "key": configuration.cluster.keyNameHasher.hash(policy.name, key), "operation": operation,
                      "to": target.rawValue, "principal": principal ?? "", "decision": "allowed"])
    }

    func put(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        let contentType = try Self.validContentType(request.headers[.contentType] ?? Self.contentTypeDefault)
        let body = try await readBody(request)
        return try await httpWrite(request, policy: policy, key: key, operation: .put, contentType: contentType, value: body)
    }

    func delete(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let key = try key(request)
        return try await httpWrite(request, policy: policy, key: key, operation: .delete, contentType: "", value: [])
    }

    /// A write from an HTTP client: its options from the request's headers, its answer rendered for it.
    func httpWrite(_ request: Request, policy: KeyspacePolicy, key: Key, operation: MeridianCore.Operation, contentType: String,
                   value: [UInt8]) async throws(MeridianError) -> Response {
        let options = try RequestOptions(request, sessionKey: sessionKey)
        let precondition = try RequestOptions.precondition(request.headers)
        var contextToken: String?
        if ConflictRule(policy: policy) == .siblings {
            let values = request.headers[values: MeridianHeader.context]
            guard values.count <= 1 else {
                throw MeridianError(.invalidHeader, "Meridian-Context is given \(values.count) times; give it once.", context: ["header": "Meridian-Context"])
            }
            contextToken = values.first
        }
        let answered = try await write(options: options, precondition: precondition, contextToken: contextToken, policy: policy, key: key,
                                       operation: operation, contentType: contentType, value: value, forwarded: false)
        return renderWrite(answered, policy: policy, key: key).response()
    }

    static func validContentType(_ contentType: String) throws(MeridianError) -> String {
        guard contentType.utf8.count <= EntryCodec.contentTypeBytesMax,
              !contentType.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw MeridianError(.invalidHeader, "Content-Type is longer than \(EntryCodec.contentTypeBytesMax) bytes or holds control characters.",
                                context: ["header": "Content-Type"])
        }
        return contentType
    }

    /// A write sent here by another region (which found that this region takes it): run it as if a client
    /// had sent it here, never forwarding it again.
    func serveForwarded(_ write: ForwardedWrite) async -> ForwardedReply {
        let answer: ServedAnswer
        do throws(MeridianError) {
            let policy = try forwardedPolicy(write.keyspace)
            let contentType = write.operation == .delete ? "" : try Self.validContentType(write.contentType)
            guard write.value.count <= limits.valueBytesMax else {
                throw MeridianError(.valueTooLarge, "The value is larger than the limit of \(limits.valueBytesMax) bytes.")
            }
            let options = try RequestOptions(write.options, sessionKey: sessionKey)
            recordForwarded(write.operation.description, keyspace: write.keyspace, principal: options.principal, from: nil)
            answer = try await self.write(options: options, precondition: write.options.precondition, contextToken: write.options.context, policy: policy,
                                          key: write.key, operation: write.operation, contentType: contentType, value: write.value, forwarded: true).answer
        } catch {
            answer = .refused(Refusal(error))
        }
        return ForwardedReply(id: write.id, answer: answer)
    }

    /// A put, a delete, or (operation `merge`, the value being the JSON operation) a CRDT operation: taken
    /// here, or forwarded to the region that takes it.
    func write(options: RequestOptions, precondition: WriteRequest.Precondition?, contextToken: String?, policy: KeyspacePolicy, key: Key,
               operation: MeridianCore.Operation, contentType: String, value: [UInt8], forwarded: Bool) async throws(MeridianError) -> Answered {
        do {
            return try await attemptWrite(options: options, precondition: precondition, contextToken: contextToken, policy: policy, key: key,
                                          operation: operation, contentType: contentType, value: value, forwarded: forwarded)
        } catch where error.appliedOrImplied == .no {
            // `applied: no` speaks of this attempt. When this region holds an earlier attempt of the same request, the
            // write was applied: say `maybe`, so the client keeps retrying with its key rather than giving up on it.
            guard let idempotencyKey = options.idempotencyKey,
                  let record = try? await store.idempotencyRecord(keyspace: policy.name, key: idempotencyKey),
                  record.mark == IdempotencyMark(key: idempotencyKey, keyspace: policy.name, dataKey: key, operation: operation, contentType: contentType,
                                                 value: value, precondition: precondition) else { throw error }
            var context = error.context
            context["version"] = record.version.description
            throw MeridianError(error.code, error.message + " An earlier attempt with this Idempotency-Key was applied as version \(record.version); retry with the key.",
                                context: context, applied: .maybe)
        }
    }

    private func attemptWrite(options: RequestOptions, precondition: WriteRequest.Precondition?, contextToken: String?, policy: KeyspacePolicy, key: Key,
                              operation: MeridianCore.Operation, contentType: String, value: [UInt8], forwarded: Bool) async throws(MeridianError) -> Answered {
        let rule = ConflictRule(policy: policy)
        guard (rule == .crdt) == (operation == .merge) else { throw policyMismatch(policy, crdtAPI: operation == .merge) }
        let crdt = operation == .merge ? try CRDTJSON.parse(value) : nil
        var causalContext: VersionVector?
        if rule == .siblings, let contextToken {
            // Only what this region holds can be superseded here: a version the client saw that has not
            // arrived stays beside the write as a sibling rather than vanishing when it arrives.
            let claimed = try CausalContextToken.decode(contextToken, keyspace: policy.name, key: key, with: sessionKey)
            let applied = store.visibleHighWater()
            var held = VersionVector()
            for origin in claimed.regions where configuration.cluster.region(origin) != nil {
                held.set(origin, min(claimed[origin], applied[origin] ?? 0))
            }
            causalContext = held
        }
        if let session = options.session { try admission.checkSessionOrigins(session) }
        if options.subject != nil && policy.residency.encryption != .sealed {
            throw MeridianError(.invalidHeader, "Meridian-Subject names whose data a sealed keyspace's value is; '\(policy.name)' is not sealed. Leave the header out.",
                                context: ["header": "Meridian-Subject", "keyspace": policy.name.rawValue])
        }
        let routedPolicy = await settledPolicy(policy)
        if routedPolicy.topology == .singleLeader && routedPolicy.leader == nil && routedPolicy.isReplica(region) { throw electionRunning(policy) }
        let admission = self.admission
        // The regions agreed down matter only to an idempotent write of a keyspace that takes it at its idempotency home.
        let down = options.idempotencyKey != nil && routedPolicy.idempotency == .home ? topology.snapshot.verdicts.down : []
        let decision = try admission.admitWrite(routedPolicy, key: key, ack: options.ack, forwarded: forwarded, idempotencyKey: options.idempotencyKey,
                                                down: down)
        guard case .accept(let ack, let required, let epoch) = decision else {
            guard case .forward(let target) = decision else { preconditionFailure("admitWrite has two verdicts") }
            let carried = WriteOptions(ack: options.ack, precondition: precondition, session: options.session?.encoded(with: sessionKey), context: contextToken,
                                       principal: options.principal, idempotencyKey: options.idempotencyKey, subject: options.subject)
            return try await forwardWrite(to: target, options: carried, policy: policy, key: key, operation: operation, contentType: contentType, value: value)
        }
        var answered = try await take(options: options, precondition: precondition, contextToken: contextToken, policy: policy, key: key, operation: operation,
                                      contentType: contentType, value: value, causalContext: causalContext, crdt: crdt, ack: ack, required: required, epoch: epoch)
        answered.idempotencyHomeUnreachable = admission.idempotencyHomeUnreachable(
            routedPolicy, key: key, idempotencyKey: options.idempotencyKey, forwarded: forwarded, down: down)
        return answered
    }

    /// Takes a write here, as its origin: commits it under the keyspace's term (a single-leader one) and answers
    /// once the ack mode is met.
    private func take(options: RequestOptions, precondition: WriteRequest.Precondition?, contextToken: String?, policy: KeyspacePolicy, key: Key,
                      operation: MeridianCore.Operation, contentType: String, value: [UInt8], causalContext: VersionVector?, crdt: CRDTRequest?,
                      ack: AckMode, required: Int, epoch: UInt64) async throws(MeridianError) -> Answered {
        var epoch = epoch
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
        let outcome = try await store.write(WriteRequest(
            keyspace: policy.name, key: key, operation: operation, contentType: contentType, value: crdt == nil ? value : [],
            epoch: epoch, precondition: precondition, after: options.session?.clock, dependencies: options.session?.seen ?? [:],
            context: causalContext, crdt: crdt,
            idempotency: options.idempotencyKey.map {
                IdempotencyMark(key: $0, keyspace: policy.name, dataKey: key, operation: operation, contentType: contentType, value: value, precondition: precondition)
            }, subject: options.subject))
        switch outcome {
        case .refused(let error):
            throw error
        case .replayed(let record):
            // Only its origin tracks which regions confirmed a write: a multi-leader retry whose ack mode needs more than
            // this region and the origin asks the origin (which replays it there), unless it cannot be reached.
            if record.version.origin != region, required > 2, policy.topology == .multiLeader, policy.isReplica(record.version.origin) {
                let carried = WriteOptions(ack: options.ack, precondition: precondition, session: options.session?.encoded(with: sessionKey), context: contextToken,
                                           principal: options.principal, idempotencyKey: options.idempotencyKey, subject: options.subject)
                do {
                    return try await forwardWrite(to: record.version.origin, options: carried, policy: policy, key: key, operation: operation,
                                                  contentType: contentType, value: value)
                } catch where error.code == .regionUnavailable {
                    // Answered below: not claimed here.
                }
            }
            return try await replay(record, operation: crdt?.operation.name ?? operation.description, options: options, policy: policy, ack: ack,
                                    required: required)
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
                    return ackTimedOut(entry.version, what: "The write", confirmed: confirmed, missing: missing, ack: ack, session: session,
                                       advice: "It will still replicate; retry with the same Idempotency-Key, or read it back, or retry with If-Match: \"\(entry.version)\".")
                }
            }
            if policy.topology == .singleLeader {
                // Acknowledged only if this region still held its lease once the ack mode was met: otherwise a
                // successor may exist that never held the write, which then is kept aside, not lost.
                guard leadership.writableEpoch(policy.name) == epoch else {
                    let lost = MeridianError(
                        .leaderUnavailable,
                        "The write is durable in \(region) as version \(entry.version), but \(region) lost its lease on keyspace '\(policy.name)' (epoch \(epoch)) before it could acknowledge it: if another region took over without it, it is kept in the divergence log (GET /v1/divergence) rather than applied. Read the key at the new leader before retrying.",
                        context: ["keyspace": policy.name.rawValue, "epoch": String(epoch), "version": entry.version.description],
                        applied: .maybe)
                    return Answered(answer: .refused(Refusal(lost, version: entry.version)), by: nil)
                }
            }
            let crdtValue = crdt == nil ? nil : try await store.get(keyspace: policy.name, key: key)?.value
            return Answered(answer: .written(ServedWrite(
                version: entry.version, ack: ack, ackedBy: ackedBy, operation: crdt?.operation.name ?? operation.description,
                epoch: policy.topology == .singleLeader ? epoch : nil, session: session.encoded(with: sessionKey), crdtValue: crdtValue)), by: nil)
        }
    }

    /// The answer to a retry of an idempotent write this region holds: the first write's version, once the ack
    /// mode asked for is met (a first attempt that timed out waiting for it may be confirmed by now).
    private func replay(_ record: IdempotencyRecord, operation: String, options: RequestOptions, policy: KeyspacePolicy, ack: AckMode,
                        required: Int) async throws(MeridianError) -> Answered {
        var session = options.session ?? SessionToken()
        session.observe(record.version)
        var ackedBy = [region]
        if record.version.origin == region {
            // This region's own write: the ack mode is checked on its log, as for the first attempt.
            if required > 1 {
                switch try await replicator.confirm(sequence: record.version.sequence, required: required, replicas: policy.replicas) {
                case .acknowledged(_, let confirmed):
                    ackedBy = confirmed
                case .timedOut(_, let confirmed, let missing):
                    return ackTimedOut(record.version, what: "This retry's first attempt", confirmed: confirmed, missing: missing, ack: ack, session: session,
                                       advice: "Retry again with the same Idempotency-Key.")
                }
            }
        } else {
            // Another region's write reached this one through its log: both hold it. Whether more do is known only at
            // its origin, so an ack mode that needs more is not claimed here.
            ackedBy.append(record.version.origin)
            let unknown = policy.replicas.filter { !ackedBy.contains($0) }
            if required > ackedBy.count {
                return ackTimedOut(record.version, what: "This retry's first attempt", confirmed: ackedBy, missing: unknown, ack: ack, session: session,
                                   unconfirmed: "\(region) cannot tell whether \(unknown.map(\.rawValue).joined(separator: ", ")) hold it and \(record.version.origin), its origin, which can, is unreachable",
                                   advice: "Retry with the same Idempotency-Key later.")
            }
        }
        let crdtValue = record.operation == .merge ? try await store.get(keyspace: policy.name, key: record.key)?.value : nil
        return Answered(answer: .written(ServedWrite(
            version: record.version, ack: ack, ackedBy: ackedBy, operation: operation,
            epoch: policy.topology == .singleLeader ? record.epoch : nil, session: session.encoded(with: sessionKey), crdtValue: crdtValue,
            replayed: true)), by: nil)
    }

    /// The answer to a write durable here whose ack mode was not met within the ack timeout: it may take effect.
    /// `unconfirmed` says why the others do not count (default: they did not confirm within the ack timeout).
    private func ackTimedOut(_ version: Version, what: String, confirmed: [RegionName], missing: [RegionName], ack: AckMode, session: SessionToken,
                             unconfirmed: String? = nil, advice: String) -> Answered {
        let names = missing.map(\.rawValue).joined(separator: ", ")
        let timedOut = MeridianError(
            .ackTimeout,
            "\(what) is durable in \(region) as version \(version), but \(unconfirmed ?? "\(names) did not confirm it within \(limits.ackTimeoutMs) ms"), so ack '\(ack.rawValue)' is not met yet. \(advice)",
            context: ["version": version.description, "missing": missing.map(\.rawValue).joined(separator: ","),
                      "acked_by": confirmed.map(\.rawValue).joined(separator: ","), "ack": ack.rawValue],
            applied: .maybe)
        return Answered(answer: .refused(Refusal(timedOut, session: session.encoded(with: sessionKey), version: version)), by: nil)
    }

    /// A write's answer as this region sends it to its HTTP client.
    func renderWrite(_ answered: Answered, policy: KeyspacePolicy, key: Key) -> RenderedResponse {
        var rendered: RenderedResponse
        switch answered.answer {
        case .written(let written):
            var headers: HTTPFields = [.eTag: "\"\(written.version)\"", MeridianHeader.session: written.session]
            if let epoch = written.epoch { headers[MeridianHeader.epoch] = String(epoch) }
            if written.replayed { headers[MeridianHeader.idempotentReplayed] = "true" }
            var answer = WriteAnswer(keyspace: policy.name.rawValue, key: key.rawValue, version: written.version.description,
                                     region: (answered.by ?? region).rawValue, ack: written.ack.rawValue, ackedBy: written.ackedBy.map(\.rawValue),
                                     operation: written.operation)
            if let bytes = written.crdtValue, let current = try? CRDTCodec.decode(bytes) {
                answer.type = current.type.rawValue
                answer.value = CRDTJSON.render(current)
            }
            rendered = JSON.rendered(answer, headers: headers)
        case .refused(let refusal):
            rendered = render(refusal, change: true, policy: policy, key: key)
        case .read:
            rendered = MeridianError(.internalError, "\(answered.by?.rawValue ?? region.rawValue) answered a write with a read's answer; check that every region runs the same version.",
                                     applied: .maybe).rendered(change: true)
        }
        if let by = answered.by { rendered.headers[MeridianHeader.forwardedTo] = by.rawValue }
        if let home = answered.idempotencyHomeUnreachable { rendered.headers[MeridianHeader.idempotency] = "local; home=\(home)" }
        return rendered
    }

    /// Sends the write to the region that takes it, over the stream to that region, and returns its answer.
    private func forwardWrite(to target: RegionName, options: WriteOptions, policy: KeyspacePolicy, key: Key,
                              operation: MeridianCore.Operation, contentType: String, value: [UInt8]) async throws(MeridianError) -> Answered {
        let reply: ForwardedReply
        auditRelay(policy, key: key, operation: operation.description, to: target, principal: options.principal)
        do {
            reply = try await replicator.forward(to: target) { id in
                .forward(ForwardedWrite(id: id, keyspace: policy.name, key: key, operation: operation, contentType: contentType, value: value, options: options))
            }
        } catch where error.code == .regionUnavailable && policy.topology == .singleLeader {
            // For a single-leader keyspace the unreachable region is the leader: say so in the code clients branch on.
            var context = error.context
            context["leader"] = target.rawValue
            throw MeridianError(.leaderUnavailable, error.message, context: context, applied: error.appliedOrImplied)
        }
        return Answered(answer: reply.answer, by: target)
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
        var level: ConsistencyLevel, keys: [ListedKey]
        // A strong listing shows only versions a majority holds; peers apply in log order, so confirming the
        // highest of this region's sequences listed confirms them all. After a wait for it the listing is
        // admitted and read again, as a strong read is (a lease lost meanwhile may have ended the term).
        let confirmationDeadline = ContinuousClock.now + .milliseconds(limits.ackTimeoutMs)
        while true {
            switch try await route(policy, key: nil, options: options, forwarded: false) {
            case .forward(let target, let otherwise):
                if let otherwise { throw otherwise }
                throw MeridianError(.consistencyUnavailable, "This listing of keyspace '\(policy.name)' can only be served at \(target); send it there.",
                                    context: ["keyspace": policy.name.rawValue, "region": target.rawValue])
            case .serve(let servedLevel, _):
                level = servedLevel
            }
            keys = try await store.list(keyspace: policy.name, prefix: prefix, after: after, limit: limit)
            guard level == .strong, let newest = keys.map(\.version).filter({ $0.origin == region }).max(by: { $0.sequence < $1.sequence }),
                  !confirmedByMajority(newest, policy: policy) else { break }
            try await waitForConfirmation(of: newest, policy: policy, until: confirmationDeadline)
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
