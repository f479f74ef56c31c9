import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage

extension RegionNode {
    /// Answers one step of a peer's anti-entropy round: this region's Merkle tree of a keyspace (with its log's
    /// end and the terms it holds, read before the tree), or a page of the states of some of its buckets. Only
    /// for a peer that holds a replica of the keyspace (residency).
    /// - Parameter peer: The peer, as its stream's hello named it.
    func serveRepair(_ keyspace: KeyspaceName, _ request: RepairRequest, from peer: RegionName) async -> RepairReply {
        func refused(_ error: MeridianError) -> RepairReply { .refused(code: error.code.description, message: error.message) }
        guard let policy = configuration.cluster.keyspace(keyspace), policy.isReplica(region), policy.isReplica(peer) else {
            return refused(MeridianError(.notReplicaRegion, "Anti-entropy of '\(keyspace)' runs only between regions that hold a replica of it."))
        }
        do throws(MeridianError) {
            switch request {
            case .tree:
                // Read before the tree: every write of this region's log up to here, and of every term as far as
                // it is held here, is in the states that follow.
                let highWater = store.appliedHighWater()[region] ?? 0
                let terms = policy.topology == .singleLeader ? try await store.terms(keyspace: policy.name) : []
                let (tree, keys) = try await store.merkleTree(keyspace: policy.name)
                return .tree(RepairTree(logHighWater: highWater, keys: UInt64(keys), terms: terms, tree: tree))
            case .states(let buckets, let after):
                let page = try await store.states(keyspace: policy.name, buckets: Set(buckets), after: after,
                                                  bytesMax: max(64 << 10, limits.replicationFrameBytesMax / 2))
                return .states(encoded: KeyStateCodec.encode(page.states), next: page.next)
            case .slots(let buckets):
                let most = RepairBounds.slotBuckets(frameBytesMax: limits.replicationFrameBytesMax)
                guard buckets.count <= most else {
                    return refused(MeridianError(.invalidRequest, "A slot leaves request may name \(most) buckets at this replication_frame_bytes_max; it named \(buckets.count)."))
                }
                return .slots(encoded: try await store.merkleSlots(keyspace: policy.name, buckets: buckets).encoded)
            case .slotStates(let slots, let after):
                let page = try await store.states(keyspace: policy.name, slots: slots.map { $0...$0 }, after: after,
                                                  bytesMax: max(64 << 10, limits.replicationFrameBytesMax / 2))
                return .states(encoded: KeyStateCodec.encode(page.states), next: page.next)
            case .slotItems(let slots, let after):
                let page = try await store.items(keyspace: policy.name, slots: slots.map { $0...$0 }, after: after,
                                                 bytesMax: max(64 << 10, limits.replicationFrameBytesMax / 2))
                return .items(encoded: KeyItemCodec.encode(page.items), next: page.next)
            case .keyStates(let keys):
                var page = KeyStatePage(bytesMax: max(64 << 10, limits.replicationFrameBytesMax / 2))
                for item in try await store.states(keyspace: policy.name, keys: Array(keys.prefix(RepairBounds.keysMax))) where !page.add(item.key, item.state) { break }
                return .states(encoded: KeyStateCodec.encode(page.states), next: page.next)
            case .dataKeys, .erase, .erasedKeys:
                return await serveDataKeys(policy, request, from: peer)
            }
        } catch {
            return refused(error)
        }
    }

    /// One anti-entropy round for a keyspace with one peer: compare trees, pull the states of the differing
    /// buckets, merge them here. The peer does the same with this region on its own schedule (or when
    /// `meridian repair` asks every region), so both end with everything either had.
    func repair(_ policy: KeyspacePolicy, with peer: RegionName) async -> RepairReport {
        await repairRound(policy, with: peer).report
    }

    /// The region machine's catch-up: one round with the keyspace's leader, handing over the terms it holds
    /// (read before its tree) as soon as they arrive.
    /// - Throws: Why the round did not merge every state that differs (the machine tries again later).
    @Sendable func catchUp(_ keyspace: KeyspaceName, from leader: RegionName, epoch: UInt64, termsRead: @escaping @Sendable ([TermEnd]) -> Void) async throws(MeridianError) {
        guard let policy = configuration.cluster.keyspace(keyspace) else { return }
        let (report, highWater) = await repairRound(policy, with: leader, token: epoch, termsRead: termsRead)
        guard highWater != nil else {
            throw MeridianError(.regionUnavailable, "Catching up '\(keyspace)' from \(leader) did not complete: \(report.error ?? "the key states did not fit the page bound").",
                                context: ["region": leader.rawValue])
        }
    }

    /// One round, and the peer's own log high-water read before its tree (nil unless the round completed).
    /// A single-leader keyspace's merges go through the region machine's merge gate under `token` (default: the
    /// term followed now), so none lands unseen after the term changed.
    private func repairRound(_ policy: KeyspacePolicy, with peer: RegionName, token given: UInt64? = nil,
                             termsRead: (@Sendable ([TermEnd]) -> Void)? = nil) async -> (report: RepairReport, peerLogHighWater: UInt64?) {
        let gated = leadership.mergeToken(policy.name)
        let token = given ?? gated ?? 0
        // Merges one page of states: through the gate for a single-leader keyspace.
        func merge(_ states: [(key: Key, state: KeyState)], terms: [TermEnd]?) async throws(MeridianError) -> Int {
            // The keys of sealed values arrive first: a CRDT merge opens them, and reads will.
            try await replicator.bringDataKeys(for: states.flatMap { item in item.state.versions.map { (policy.name, $0.value) } }, from: [peer])
            guard gated != nil else {
                let changed = try await store.merge(keyspace: policy.name, states: states)
                if changed > 0 && policy.residency.classification == .restricted {
                    audit?.record(.repair, ["peer": peer.rawValue, "keyspace": policy.name.rawValue, "keys_changed": String(changed)])
                }
                // Revocations that arrive by repair (after a partition) take effect as those that arrive by replication.
                if changed > 0 && policy.name == AuthConfig.revocationKeyspace { await loadRevocations() }
                return changed
            }
            guard leadership.admitMerge(policy.name, token: token, from: peer) else {
                throw MeridianError(.leaderUnavailable, "The term of '\(policy.name)' changed during the repair; it is not merged.")
            }
            var changed = 0
            do {
                changed = try await store.merge(keyspace: policy.name, states: states)
            } catch {
                leadership.mergeCommitted(policy.name, token: token, keys: [], terms: nil)
                throw error
            }
            leadership.mergeCommitted(policy.name, token: token, keys: Set(states.map(\.key)), terms: terms)
            return changed
        }
        var peerLogHighWater: UInt64?
        var before = MerkleTree(states: []), keys = 0, peerTree: MerkleTree?
        var differing: [Int] = [], slotsDiffering: [Int] = [], received = 0, changed = 0
        var problem: String?
        do throws(MeridianError) {
            (before, keys) = try await store.merkleTree(keyspace: policy.name)
            guard case .tree(let theirs) = try Self.answer(try await replicator.requestRepair(from: peer, keyspace: policy.name, .tree), from: peer) else {
                throw MeridianError(.replicationProtocol, "\(peer) answered a tree request with states.")
            }
            guard theirs.terms.allSatisfy({ configuration.cluster.region($0.leader) != nil }) else {
                throw MeridianError(.replicationProtocol, "\(peer) named terms led by regions outside the cluster; check that every region runs the same cluster file.")
            }
            termsRead?(theirs.terms)
            peerTree = theirs.tree
            differing = before.differingBuckets(theirs.tree)
            let pulled: ([(key: Key, state: KeyState)]) async throws(MeridianError) -> Void = { states throws(MeridianError) in
                received += states.count
                changed += try await merge(states, terms: nil)
            }
            let complete: Bool
            if !differing.isEmpty && MerkleSlots.worthAsking(keys: keys, peerKeys: Int(clamping: theirs.keys), keysMin: limits.antiEntropySlotKeysMin) {
                // A large keyspace: the slots that differ within the differing buckets, then within those slots the
                // keys whose items differ, and the states of only those keys.
                let slots = try await differingSlots(policy, buckets: differing, with: peer)
                slotsDiffering = slots.map(\.slot)
                complete = try await pullDiffering(policy, slots: slots, from: peer, pulled)
            } else {
                complete = try await pullStates(policy, buckets: differing, from: peer, pulled)
            }
            if complete {
                // Every differing state is merged: the writes of the terms the peer held are held here now.
                if gated != nil { _ = try await merge([], terms: theirs.terms) }
                peerLogHighWater = theirs.logHighWater
            }
        } catch {
            problem = error.message
        }
        let rootAfter = changed == 0 ? before.root : ((try? await store.merkleTree(keyspace: policy.name).tree.root) ?? before.root)
        if changed > 0 {
            logger.info("anti-entropy repaired keys", metadata: ["keyspace": "\(policy.name)", "peer": "\(peer)", "changed": "\(changed)",
                                                                  "buckets": "\(differing.count)"])
        }
        let report = RepairReport(keyspace: policy.name.rawValue, region: region.rawValue, peer: peer.rawValue,
                                  rootBefore: MerkleTree.hex(before.root), rootAfter: MerkleTree.hex(rootAfter),
                                  peerRoot: peerTree.map { MerkleTree.hex($0.root) } ?? "", keys: keys,
                                  bucketsDiffering: differing.count, slotsDiffering: slotsDiffering.count, keysReceived: received, keysChanged: changed, error: problem)
        return (report, problem == nil ? peerLogHighWater : nil)
    }

    /// The slots of some buckets whose leaves differ between this region and a peer, and whether this region holds
    /// no key of each, asking for the peer's slot leaves as many buckets at a time as half a frame holds (every
    /// bucket, at the default frame size).
    func differingSlots(_ policy: KeyspacePolicy, buckets: [Int], with peer: RegionName) async throws(MeridianError) -> [(slot: Int, emptyHere: Bool)] {
        var differing: [(slot: Int, emptyHere: Bool)] = []
        let perRequest = RepairBounds.slotBuckets(frameBytesMax: limits.replicationFrameBytesMax)
        for start in stride(from: 0, to: buckets.count, by: perRequest) {
            let chunk = Array(buckets[start..<min(start + perRequest, buckets.count)])
            guard case .slots(let encoded) = try Self.answer(try await replicator.requestRepair(from: peer, keyspace: policy.name, .slots(buckets: chunk)),
                                                             from: peer) else {
                throw MeridianError(.replicationProtocol, "\(peer) answered a slot leaves request with something else.")
            }
            let theirs = try MerkleSlots(buckets: chunk, encoded: encoded)
            let mine = try await store.merkleSlots(keyspace: policy.name, buckets: chunk)
            differing += mine.differingSlots(theirs).map { ($0, mine.leaf(ofSlot: $0) == .empty) }
        }
        return differing
    }

    /// Pulls what differs in some slots, `RepairBounds.slotsMax` at a time: the whole slot where this region
    /// holds none of its keys (a region catching up from nothing pulls states, not items first); elsewhere the
    /// peer's keys whose items differ here.
    /// - Returns: Whether everything was pulled (false only past a page bound).
    func pullDiffering(_ policy: KeyspacePolicy, slots: [(slot: Int, emptyHere: Bool)], from peer: RegionName,
                       _ page: ([(key: Key, state: KeyState)]) async throws(MeridianError) -> Void) async throws(MeridianError) -> Bool {
        for start in stride(from: 0, to: slots.count, by: RepairBounds.slotsMax) {
            let chunk = slots[start..<min(start + RepairBounds.slotsMax, slots.count)]
            let empty = chunk.filter(\.emptyHere).map(\.slot), shared = chunk.filter { !$0.emptyHere }.map(\.slot)
            guard try await pullStates(policy, slots: empty, from: peer, page) else { return false }
            guard !shared.isEmpty else { continue }
            guard try await pullStates(policy, keys: try await keysToPull(policy, slots: shared, from: peer), from: peer, page) else { return false }
        }
        return true
    }

    /// The keys of some Merkle slots (at most `RepairBounds.slotsMax`) that a peer holds with items that differ
    /// here: the peer's listing, page by page, against this region's.
    func keysToPull(_ policy: KeyspacePolicy, slots: [Int], from peer: RegionName) async throws(MeridianError) -> [Key] {
        var theirs: [(key: Key, item: MerkleTree.Leaf)] = []
        var after: Key?
        for page in 0...100_000 {
            guard page < 100_000 else { throw MeridianError(.replicationProtocol, "\(peer) listed more pages of key items than a round takes.") }
            guard case .items(let encoded, let next) = try Self.answer(
                try await replicator.requestRepair(from: peer, keyspace: policy.name, .slotItems(slots: slots, after: after)), from: peer) else {
                throw MeridianError(.replicationProtocol, "\(peer) answered a key items request with something else.")
            }
            theirs += try KeyItemCodec.decode(encoded)
            guard let next else { break }
            guard next != after else { throw MeridianError(.replicationProtocol, "\(peer) sent the same page of key items twice.") }
            after = next
        }
        var mine: [(key: Key, item: MerkleTree.Leaf)] = []
        after = nil
        for page in 0...100_000 {
            guard page < 100_000 else { throw MeridianError(.storageFailure, "This region listed more pages of key items than a round takes.") }
            let listed = try await store.items(keyspace: policy.name, slots: slots.map { $0...$0 }, after: after, bytesMax: 4 << 20)
            mine += listed.items
            guard let next = listed.next else { break }
            after = next
        }
        return KeyItemCodec.keysToPull(mine: mine, theirs: theirs)
    }

    /// Pulls a peer's states of some keys: as many keys per request as half a frame holds (at most
    /// `RepairBounds.keysMax`), and as many pages as their states take.
    func pullStates(_ policy: KeyspacePolicy, keys: [Key], from peer: RegionName,
                    _ page: ([(key: Key, state: KeyState)]) async throws(MeridianError) -> Void) async throws(MeridianError) -> Bool {
        let requestBytesMax = max(4_096, limits.replicationFrameBytesMax / 2)
        var remaining = keys[...]
        for _ in 0..<1_000_000 {
            guard !remaining.isEmpty else { return true }
            var asked: [Key] = []
            var bytes = 0
            for key in remaining.prefix(RepairBounds.keysMax) {
                let size = 2 + key.rawValue.utf8.count
                if !asked.isEmpty && bytes + size > requestBytesMax { break }
                bytes += size
                asked.append(key)
            }
            guard case .states(let encoded, let next) = try Self.answer(
                try await replicator.requestRepair(from: peer, keyspace: policy.name, .keyStates(keys: asked)), from: peer) else {
                throw MeridianError(.replicationProtocol, "\(peer) answered a key states request with something else.")
            }
            try await page(try checkedStates(encoded, from: peer))
            if let next {
                guard let index = asked.firstIndex(of: next) else {
                    throw MeridianError(.replicationProtocol, "\(peer) answered a key states request naming a key it was not asked for.")
                }
                remaining = remaining.dropFirst(index + 1)
            } else {
                remaining = remaining.dropFirst(asked.count)
            }
        }
        return remaining.isEmpty
    }

    /// Pulls a peer's key states of some Merkle buckets, page by page, handing each page (checked to name only
    /// regions of the cluster) to `page`.
    /// - Returns: Whether every page was pulled (false only past the page bound).
    func pullStates(_ policy: KeyspacePolicy, buckets: [Int], from peer: RegionName,
                    _ page: ([(key: Key, state: KeyState)]) async throws(MeridianError) -> Void) async throws(MeridianError) -> Bool {
        guard !buckets.isEmpty else { return true }
        return try await pullPages(policy, from: peer, { .states(buckets: buckets, after: $0) }, page)
    }

    /// The same for some Merkle slots, `RepairBounds.slotsMax` slots per request.
    func pullStates(_ policy: KeyspacePolicy, slots: [Int], from peer: RegionName,
                    _ page: ([(key: Key, state: KeyState)]) async throws(MeridianError) -> Void) async throws(MeridianError) -> Bool {
        for start in stride(from: 0, to: slots.count, by: RepairBounds.slotsMax) {
            let chunk = Array(slots[start..<min(start + RepairBounds.slotsMax, slots.count)])
            guard try await pullPages(policy, from: peer, { .slotStates(slots: chunk, after: $0) }, page) else { return false }
        }
        return true
    }

    /// Pulls the pages of one request, continuing after the last key of each.
    private func pullPages(_ policy: KeyspacePolicy, from peer: RegionName, _ request: (Key?) -> RepairRequest,
                           _ page: ([(key: Key, state: KeyState)]) async throws(MeridianError) -> Void) async throws(MeridianError) -> Bool {
        var after: Key?
        for _ in 0..<100_000 {
            guard case .states(let encoded, let next) = try Self.answer(
                try await replicator.requestRepair(from: peer, keyspace: policy.name, request(after)), from: peer) else {
                throw MeridianError(.replicationProtocol, "\(peer) answered a states request with something else.")
            }
            try await page(try checkedStates(encoded, from: peer))
            guard let next else { return true }
            guard next != after else {
                throw MeridianError(.replicationProtocol, "\(peer) sent the same page of key states twice.")
            }
            after = next
        }
        return false
    }

    /// A page of states a peer sent, checked to name only regions of the cluster.
    private func checkedStates(_ encoded: [UInt8], from peer: RegionName) throws(MeridianError) -> [(key: Key, state: KeyState)] {
        // A merged CRDT value or a version kept beside others may exceed value_bytes_max; a frame bounds it.
        let states = try KeyStateCodec.decode(encoded, valueBytesMax: limits.replicationFrameBytesMax)
        guard states.allSatisfy({ item in
            item.state.context.regions.allSatisfy { configuration.cluster.region($0) != nil }
                && item.state.versions.allSatisfy { configuration.cluster.region($0.version.origin) != nil }
        }) else {
            throw MeridianError(.replicationProtocol, "\(peer) sent key states naming regions outside the cluster; check that every region runs the same cluster file.")
        }
        return states
    }

    /// A reply's content, or the peer's refusal as an error.
    private static func answer(_ reply: RepairReply, from peer: RegionName) throws(MeridianError) -> RepairReply {
        guard case .refused(let code, let message) = reply else { return reply }
        throw MeridianError(.regionUnavailable, "\(peer) refused the anti-entropy request (\(code)): \(message.prefix(300))",
                            context: ["region": peer.rawValue])
    }

    /// Repairs every keyspace this region shares with `peer`. When all of them completed, this region holds
    /// every write of the peer's log up to the high-water the peer read before its first tree, so the applied
    /// point of that log moves there: a region behind the peer's log retention resumes streaming.
    func repair(with peer: RegionName, keyspaces: [KeyspacePolicy]) async -> [RepairReport] {
        var reports: [RepairReport] = []
        var floor: UInt64?
        var complete = true
        for policy in keyspaces {
            // Erasures first: a region that missed one destroys the keys before it serves or merges anything more.
            _ = await learnErasures(policy, from: peer)
            let (report, highWater) = await repairRound(policy, with: peer)
            reports.append(report)
            if let highWater { floor = min(floor ?? highWater, highWater) } else { complete = false }
        }
        // Every keyspace both regions hold must have been pulled (not only those repaired from this peer).
        let shared = configuration.cluster.keyspaces.filter { $0.isReplica(region) && $0.isReplica(peer) }.map(\.name)
        if complete, let floor, Set(shared).isSubset(of: keyspaces.map(\.name)) {
            let before = store.appliedHighWater()[peer] ?? 0
            if floor > before {
                do throws(MeridianError) {
                    _ = try await store.raiseApplied(origin: peer, to: floor)
                    logger.info("anti-entropy brought this region up to the peer's log", metadata: ["peer": "\(peer)", "from": "\(before)", "to": "\(floor)"])
                } catch {
                    // Not raised is safe (the stream re-sends from the old point); say so rather than hide it.
                    logger.warning("anti-entropy could not raise the applied point; the stream resumes from the old one",
                                   metadata: ["peer": "\(peer)", "reason": "\(error.message)"])
                }
            }
        }
        return reports
    }

    /// The keyspaces this region repairs, with their other replicas.
    /// A single-leader keyspace repairs only from its leader: the leader's copy is the keyspace's history, and
    /// a follower's may hold a deposed leader's writes that were kept aside (merging those would revive them).
    func antiEntropyPeers(_ only: KeyspaceName? = nil) -> [(KeyspacePolicy, [RegionName])] {
        configuration.cluster.keyspaces.filter { ($0.name == only || only == nil) && $0.isReplica(region) }
            .map { policy in
                guard policy.topology == .singleLeader, leadership.snapshot(policy.name) != nil else {
                    return (policy, policy.replicas.filter { $0 != region })
                }
                let leader = leadership.leader(policy.name)
                return (policy, leader.map { $0 == region ? [] : [$0] } ?? [])
            }
            .filter { !$0.1.isEmpty }
    }

    /// Runs anti-entropy for every keyspace with every peer, every `anti_entropy_interval_ms`, until cancelled.
    func runAntiEntropy() async {
        let interval = limits.antiEntropyIntervalMs
        guard interval > 0 else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(interval))
            for peer in configuration.cluster.regions.map(\.name) where peer != region && replicator.readView().reachable.contains(peer) {
                guard !Task.isCancelled else { return }
                let shared = antiEntropyPeers().filter { $0.1.contains(peer) }.map(\.0)
                if !shared.isEmpty { _ = await repair(with: peer, keyspaces: shared) }
            }
        }
    }

    /// `POST /v1/admin/repair[?keyspace=K]`: one anti-entropy round now with every peer, and what it found.
    func repairNow(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        var only: KeyspaceName?
        if let text = request.uri.queryParameters.get("keyspace") {
            only = try KeyspaceName(text)
            guard configuration.cluster.keyspace(only!) != nil else {
                throw MeridianError(.unknownKeyspace, "Keyspace '\(only!)' does not exist; GET /v1/keyspaces lists them.", context: ["keyspace": only!.rawValue])
            }
        }
        var reports: [RepairReport] = []
        for peer in configuration.cluster.regions.map(\.name) where peer != region {
            let shared = antiEntropyPeers(only).filter { $0.1.contains(peer) }.map(\.0)
            if !shared.isEmpty { reports += await repair(with: peer, keyspaces: shared) }
        }
        return JSON.response(["repairs": reports], headers: [.cacheControl: "no-store"])
    }

    /// `GET /v1/admin/merkle/{keyspace}`: this region's Merkle root of a keyspace and how many keys it covers.
    func merkleRoot(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        let (tree, keys) = try await store.merkleTree(keyspace: policy.name)
        return JSON.response(MerkleAnswer(keyspace: policy.name.rawValue, region: region.rawValue, root: MerkleTree.hex(tree.root), keys: keys),
                             headers: [.cacheControl: "no-store"])
    }
}
