import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import NIOCore

extension RegionNode {
    /// The policy with the leader this region knows now (single-leader keyspaces it takes part in); the
    /// leader is nil while an election runs.
    func routed(_ policy: KeyspacePolicy) -> KeyspacePolicy {
        guard policy.topology == .singleLeader, let snapshot = leadership.snapshot(policy.name) else { return policy }
        var routed = policy
        routed.leader = snapshot.leader
        return routed
    }

    /// The policy once the keyspace's leadership has settled: waits (up to `read_wait_ms`) while an election
    /// runs, or while this region, leading, has not yet heard a majority within its lease (a new leader hears
    /// one within a round trip). A client writing through a failover sees a short pause, not an error.
    func settledPolicy(_ policy: KeyspacePolicy) async -> KeyspacePolicy {
        guard policy.topology == .singleLeader, leadership.snapshot(policy.name) != nil else { return policy }
        let deadline = ContinuousClock.now + .milliseconds(limits.readWaitMs)
        while true {
            let routed = routed(policy)
            let settled = routed.leader != nil && (routed.leader != region || leadership.writableEpoch(policy.name) != nil)
            let now = ContinuousClock.now
            if settled || now >= deadline { return routed }
            // Woken by the machine's next event; a lease that a heartbeat's answer renews is such an event.
            await leadership.waitForChange(atMost: min(deadline - now, .milliseconds(50)))
        }
    }

    /// The answer while a single-leader keyspace has no leader this region knows.
    func electionRunning(_ policy: KeyspacePolicy) -> MeridianError {
        let epoch = leadership.snapshot(policy.name)?.epoch ?? 0
        return MeridianError(
            .leaderUnavailable,
            "Keyspace '\(policy.name)' is electing a new leader (epoch \(epoch)); nothing was written. Retry in a moment: a leader is normally elected within a few seconds.",
            context: ["keyspace": policy.name.rawValue, "epoch": String(epoch)])
    }

    /// The answer when this region leads a keyspace but cannot confirm with a majority that it still does.
    func leaseLost(_ policy: KeyspacePolicy) -> MeridianError {
        let epoch = leadership.snapshot(policy.name)?.epoch ?? 0
        return MeridianError(
            .leaderUnavailable,
            "\(region) led keyspace '\(policy.name)' in epoch \(epoch) but has not heard a majority of its replicas within its lease, so another region may lead it now; nothing was written. Retry shortly, at any region.",
            context: ["keyspace": policy.name.rawValue, "epoch": String(epoch), "region": region.rawValue])
    }

    /// Brings keys back to the new leader's state after a failover: writes of `keyspace` this region holds that
    /// the leader of `start` never held (a deposed leader's unshipped writes, its own or applied from it) go to
    /// the divergence log, and their keys take the leader's state. Retries until done or the node stops; the
    /// keyspace's replicated entries wait meanwhile.
    /// `merged`: keys merged here from a peer under a term that ended (writes the log does not show), also brought
    /// to the leader's state.
    @Sendable func bringBack(_ keyspace: KeyspaceName, _ start: EpochStart, _ merged: Set<Key>) async {
        guard let policy = configuration.cluster.keyspace(keyspace) else { return }
        // Keys whose writes an attempt kept aside: keeping aside commits before the leader's states are fetched, so
        // a retry finds nothing more to keep aside and must still bring these back.
        var kept = merged
        for attempt in 1...3_600 {
            // A newer term's check replaces this one (its leader is the one to follow).
            if Task.isCancelled || !leadership.follows(keyspace, epoch: start.epoch) {
                if !kept.isEmpty { leadership.reconcileLater(keyspace, keys: kept) }
                return
            }
            do throws(MeridianError) {
                // Every earlier term whose writes this region holds beyond where the new leader held them. Terms
                // older than those the start names (it names the newest `termsMax`) are settled.
                var keys = kept
                // Writes held beyond the start that the log does not show came in merged states: they cannot be
                // found one by one, so every key that differs from the leader's takes its state, and this region
                // holds the leader's terms afterwards (read before its states).
                var replaceAll = false
                let oldestNamed = start.terms.count >= EpochStart.termsMax ? (start.terms.map(\.epoch).min() ?? 0) : 0
                for term in try await store.terms(keyspace: keyspace, limit: 100_000) where term.epoch < start.epoch && term.epoch >= oldestNamed {
                    let held = start.last(of: term.leader, in: term.epoch) ?? 0
                    guard term.last > held else { continue }
                    if try await store.loggedThrough(keyspace: keyspace, origin: term.leader, epoch: term.epoch) < term.last { replaceAll = true }
                    keys.formUnion(try await store.divertHeld(keyspace: keyspace, origin: term.leader, after: held, epoch: term.epoch,
                                                              successorEpoch: start.epoch, nowMs: wallClockMs()))
                }
                kept = keys
                var leaderTerms: [TermEnd]?
                if replaceAll {
                    let (differing, terms) = try await differingKeys(policy, from: start.leader)
                    keys.formUnion(differing)
                    leaderTerms = terms
                }
                guard !keys.isEmpty || leaderTerms != nil else { return }
                let states = try await leaderStates(policy, keys: keys, from: start.leader)
                // Through the merge gate: a newer term's revert replaces this one rather than racing it (and takes
                // the keys merged from elsewhere this one was to bring back).
                guard leadership.admitMerge(keyspace, token: start.epoch, from: start.leader) else {
                    if !kept.isEmpty { leadership.reconcileLater(keyspace, keys: kept) }
                    return
                }
                do {
                    try await store.replaceStates(keyspace: keyspace, states)
                } catch {
                    leadership.mergeCommitted(keyspace, token: start.epoch, keys: [], terms: nil)
                    throw error
                }
                leadership.mergeCommitted(keyspace, token: start.epoch, keys: keys, terms: leaderTerms)
                logger.notice("writes of a deposed leader kept aside in the divergence log; their keys follow the new leader",
                              metadata: ["keyspace": "\(keyspace)", "epoch": "\(start.epoch)", "keys": "\(keys.count)"])
                return
            } catch {
                if attempt == 1 || attempt % 30 == 0 {
                    logger.warning("cannot yet bring keys back to the new leader's state; retrying", metadata: ["keyspace": "\(keyspace)", "reason": "\(error.message)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        logger.error("gave up bringing keys back to the new leader's state", metadata: ["keyspace": "\(keyspace)"])
        if !kept.isEmpty { leadership.reconcileLater(keyspace, keys: kept) }
    }

    /// The keys, here or at the leader, of the Merkle buckets whose leaves differ from the leader's, and the terms
    /// the leader held when it read its tree.
    private func differingKeys(_ policy: KeyspacePolicy, from leader: RegionName) async throws(MeridianError) -> (Set<Key>, [TermEnd]) {
        let (mine, _) = try await store.merkleTree(keyspace: policy.name)
        guard case .tree(let theirs) = try await replicator.requestRepair(from: leader, keyspace: policy.name, .tree) else {
            throw MeridianError(.regionUnavailable, "\(leader) did not send its Merkle tree of '\(policy.name)'.", context: ["region": leader.rawValue])
        }
        let buckets = mine.differingBuckets(theirs.tree)
        var keys = Set<Key>()
        guard !buckets.isEmpty else { return (keys, theirs.terms) }
        var after: Key?
        for _ in 0..<100_000 {
            let page = try await store.states(keyspace: policy.name, buckets: Set(buckets), after: after, bytesMax: 1 << 20)
            keys.formUnion(page.states.map(\.key))
            guard let next = page.next else { break }
            after = next
        }
        let complete = try await pullStates(policy, buckets: buckets, from: leader) { states in keys.formUnion(states.map(\.key)) }
        guard complete else {
            throw MeridianError(.regionUnavailable, "\(leader)'s key states of '\(policy.name)' did not fit the page bound.", context: ["region": leader.rawValue])
        }
        return (keys, theirs.terms)
    }

    /// The leader's states of `keys` (nil for a key it does not hold), pulled by Merkle bucket.
    private func leaderStates(_ policy: KeyspacePolicy, keys: Set<Key>, from leader: RegionName) async throws(MeridianError) -> [(key: Key, state: KeyState?)] {
        var found: [Key: KeyState] = [:]
        let complete = try await pullStates(policy, buckets: Set(keys.map { MerkleTree.bucket(of: $0) }).sorted(), from: leader) { states in
            for item in states where keys.contains(item.key) { found[item.key] = item.state }
        }
        guard complete else {
            throw MeridianError(.regionUnavailable, "\(leader)'s key states of '\(policy.name)' did not fit the page bound.", context: ["region": leader.rawValue])
        }
        return keys.sorted().map { ($0, found[$0]) }
    }

    // MARK: - Manual failover and failback


    /// `POST /v1/admin/failover` with `{"keyspace": K, "to": REGION}`: moves leadership of a single-leader
    /// keyspace to REGION once it has every write of the current leader, whichever region is asked.
    func failover(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let body = try await readBody(request)
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any],
              let keyspaceText = object["keyspace"] as? String, let toText = object["to"] as? String, object.count == 2 else {
            throw MeridianError(.invalidRequest, "The body must be a JSON object with exactly \"keyspace\" and \"to\", e.g. {\"keyspace\":\"accounts\",\"to\":\"eu-west\"}.")
        }
        let name = try KeyspaceName(keyspaceText)
        let target = try RegionName(toText)
        guard let policy = configuration.cluster.keyspace(name) else {
            throw MeridianError(.unknownKeyspace, "Keyspace '\(name)' does not exist; GET /v1/keyspaces lists them.", context: ["keyspace": name.rawValue])
        }
        guard policy.topology == .singleLeader, let order = policy.failover?.order else {
            throw MeridianError(.invalidRequest, "Keyspace '\(name)' is \(policy.topology.rawValue); only single-leader keyspaces have a leader to move.",
                                context: ["keyspace": name.rawValue])
        }
        guard order.contains(target) else {
            throw MeridianError(.invalidRequest, "\(target) is not in the failover order of '\(name)' (\(order.map(\.rawValue).joined(separator: ", "))).",
                                context: ["keyspace": name.rawValue, "region": target.rawValue])
        }
        let before = await settledPolicy(policy)
        guard let leader = before.leader else { throw electionRunning(policy) }
        let epochBefore = leadership.snapshot(name)?.epoch ?? 0
        if leader != target {
            if leader == region {
                try await handOver(policy, to: target)
            } else {
                switch try await replicator.requestHandOver(from: leader, keyspace: name, to: target) {
                case .handedOver: break
                case .refused(let code, let message):
                    // The leader's refusal, as it gave it; it handed nothing over.
                    throw MeridianError(MeridianError.Code(code) ?? .leaderUnavailable, message,
                                        context: ["keyspace": name.rawValue, "leader": leader.rawValue, "region": target.rawValue], applied: .no)
                }
            }
        }
        // Answer once this region sees the target lead (bounded).
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let term = leadership.snapshot(name), term.leader == target, leader == target || term.epoch > epochBefore {
                return JSON.response(["keyspace": name.rawValue, "from": leader.rawValue, "to": target.rawValue, "epoch": String(term.epoch)],
                                     headers: [.cacheControl: "no-store"])
            }
            await leadership.waitForChange(atMost: min(deadline - ContinuousClock.now, .milliseconds(100)))
        }
        throw MeridianError(.leaderUnavailable, "\(leader) handed keyspace '\(name)' over, but \(region) has not seen \(target) lead within 10 s; an election follows. Check GET /v1/status.",
                            context: ["keyspace": name.rawValue, "region": target.rawValue], applied: .maybe)
    }

    /// Hands a keyspace this region leads over to `target`, waiting up to the ack timeout for it to catch up.
    func handOver(_ policy: KeyspacePolicy, to target: RegionName) async throws(MeridianError) {
        try await leadership.handOver(policy.name, to: target, timeoutMs: UInt64(limits.ackTimeoutMs))
    }

    /// A peer asks this region, which leads the keyspace, to hand it over (`POST /v1/admin/failover` elsewhere).
    func serveHandOver(_ keyspace: KeyspaceName, to target: RegionName) async -> HandOverOutcome {
        do throws(MeridianError) {
            guard let policy = configuration.cluster.keyspace(keyspace), policy.topology == .singleLeader else {
                throw MeridianError(.invalidRequest, "Keyspace '\(keyspace)' is not a single-leader keyspace of \(region)'s cluster file; there is no leader to move.")
            }
            try await handOver(policy, to: target)
            return .handedOver(to: target)
        } catch {
            return .refused(code: error.code.description, message: error.message)
        }
    }

    // MARK: - Reports

    /// `GET /v1/failovers`: the failovers this region won, with their timings, and the writes this region kept
    /// aside per keyspace and fencing epoch.
    func failovers(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let events = try await store.failovers(limit: 1_000)
        let diverted = try await store.divergenceCounts()
        let rendered = events.map { event in
            FailoverAnswer(
                keyspace: event.keyspace.rawValue, epoch: event.epoch, leader: event.leader.rawValue, previousLeader: event.previousLeader?.rawValue,
                reason: event.reason, lastHeardMs: event.lastHeardMs, suspectedMs: event.suspectedMs, electedMs: event.electedMs,
                firstWriteMs: event.firstWriteMs,
                rtoMs: event.firstWriteMs.flatMap { first in event.lastHeardMs.map { first > $0 ? first - $0 : 0 } },
                electionMs: event.electedMs > event.suspectedMs ? event.electedMs - event.suspectedMs : 0,
                divertedHere: diverted["\(event.keyspace)/\(event.epoch)"] ?? 0)
        }
        return JSON.response(FailoversAnswer(region: region.rawValue, failovers: rendered, diverted: diverted), headers: [.cacheControl: "no-store"])
    }

    /// `GET /v1/divergence[?keyspace=K&after=ID&limit=N]`: writes kept aside in this region.
    func divergence(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let query = request.uri.queryParameters
        var keyspace: KeyspaceName?
        if let text = query.get("keyspace") {
            keyspace = try KeyspaceName(text)
            guard configuration.cluster.keyspace(keyspace!) != nil else {
                throw MeridianError(.unknownKeyspace, "Keyspace '\(keyspace!)' does not exist; GET /v1/keyspaces lists them.", context: ["keyspace": keyspace!.rawValue])
            }
        }
        let after = try query.get("after").map { text throws(MeridianError) -> Int64 in
            guard let value = Int64(text), value >= 0 else {
                throw MeridianError(.invalidRequest, "after must be a divergence id (a whole number at least 0); got '\(text.prefix(40))'.", context: ["parameter": "after"])
            }
            return value
        } ?? 0
        let limit = try pageLimit(query.get("limit"))
        let writes = try await store.divergence(keyspace: keyspace, after: after, limit: limit)
        return JSON.response(DivergenceAnswer(region: region.rawValue, writes: writes.map(DivergedWriteAnswer.init), next: writes.count == limit ? writes.last?.id : nil),
                             headers: [.cacheControl: "no-store"])
    }

    /// `POST /v1/admin/divergence/{id}/reapply`: writes a kept-aside write again, as a new write through the
    /// keyspace's current leader (once).
    func reapply(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        guard let text = context.parameters.get("id"), let id = Int64(text), id > 0 else {
            throw MeridianError(.invalidRequest, "The divergence id must be a whole number above 0; GET /v1/divergence lists them.", context: ["parameter": "id"])
        }
        guard let diverged = try await store.divergedWrite(id: id) else {
            throw MeridianError(.keyNotFound, "No write with divergence id \(id) is kept in \(region); GET /v1/divergence lists them.", context: ["id": text])
        }
        guard let policy = configuration.cluster.keyspace(diverged.keyspace) else {
            throw MeridianError(.unknownKeyspace, "Keyspace '\(diverged.keyspace)' is no longer in the cluster file.", context: ["keyspace": diverged.keyspace.rawValue])
        }
        // Claimed first, so two requests at once cannot both write it; released if the write is refused.
        guard try await store.markReapplied(id: id, nowMs: wallClockMs()) else {
            throw MeridianError(.preconditionFailed, "Divergence id \(id) was already re-applied.", context: ["id": text])
        }
        func release() async {
            do { try await store.unmarkReapplied(id: id) } catch {
                logger.warning("a refused re-apply stays marked as done", metadata: ["id": "\(id)", "reason": "\(error.message)"])
            }
        }
        let answered: Answered
        do {
            answered = try await write(options: RequestOptions(), precondition: nil, contextToken: nil, policy: policy, key: diverged.key,
                                       operation: diverged.operation, contentType: diverged.contentType, value: diverged.value, forwarded: false)
        } catch {
            await release()
            throw error
        }
        if case .written = answered.answer {} else { await release() }
        return renderWrite(answered, policy: policy, key: diverged.key).response()
    }
}

extension DivergedWriteAnswer {
    /// A kept-aside write as the API shows it.
    init(_ write: DivergedWrite) {
        self.init(
            id: write.id, keyspace: write.keyspace.rawValue, key: write.key.rawValue, origin: write.origin.rawValue,
            sequence: write.sequence, epoch: write.epoch, successorEpoch: write.successorEpoch,
            version: Version(hlc: write.hlc, sequence: write.sequence).description, operation: write.operation.description,
            contentType: write.contentType, value: StoredBytes(bytes: write.value), recordedMs: write.recordedMs,
            reappliedMs: write.reappliedMs)
    }
}
