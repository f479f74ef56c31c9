import Foundation
import HTTPTypes
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianSecurity
import MeridianStorage

// The node's side of sealed keyspaces: data keys move between the regions of a keyspace's residency over the
// authenticated peer streams (a region that applies or reads a value sealed under a key it lacks asks the region
// that sent it), and an erasure destroys a subject's keys in every region of the residency.

extension Replicator {
    /// Brings in the data keys `values` need from `peers`, tried in order, and keeps them wrapped under this
    /// region's key. Keys a peer erased are recorded as erased here.
    /// - Throws: `data_key_unavailable` when a key is still missing after every peer was asked.
    func bringDataKeys(for values: [(keyspace: KeyspaceName, value: [UInt8])], from peers: [RegionName]) async throws(MeridianError) {
        let missing = try await store.missingDataKeys(values)
        for (keyspace, ids) in missing {
            var wanted = Array(ids.sorted().prefix(DataKeyRequestBounds.idsMax))
            var lastError: MeridianError?
            for peer in peers where peer != region && !wanted.isEmpty {
                do throws(MeridianError) {
                    switch try await requestRepair(from: peer, keyspace: keyspace, .dataKeys(ids: wanted)) {
                    case .dataKeys(let granted, let erased):
                        try await store.installDataKeys(keyspace: keyspace, granted.filter { wanted.contains($0.id) },
                                                        erased: erased.filter { wanted.contains($0) }, nowMs: wallClockMs())
                        audit?.record(.keyWrap, ["keyspace": keyspace.rawValue, "from": peer.rawValue, "wrapped": String(granted.count),
                                                 "learned_erased": String(erased.count)])
                        let answered = Set(granted.map(\.id)).union(erased)
                        wanted.removeAll { answered.contains($0) }
                    case .refused(let code, let message):
                        lastError = MeridianError(MeridianError.Code(code) ?? .dataKeyUnavailable, "\(peer): \(message)")
                    case .tree, .states, .slots, .items, .erased:
                        lastError = MeridianError(.replicationProtocol, "\(peer) answered a data key request with another kind of reply.")
                    }
                } catch {
                    lastError = error
                }
            }
            if let first = wanted.first {
                throw MeridianError(.dataKeyUnavailable, "Region \(region) lacks data key \(first) of '\(keyspace)', and no region of its residency granted it (\(lastError?.message ?? "none was asked")); retry shortly.",
                                    context: ["keyspace": keyspace.rawValue, "data_key": first.description])
            }
        }
    }
}

extension RegionNode {
    /// The regions a sealed keyspace's data keys may be asked of: the other replicas of its residency.
    func keyHolders(_ keyspace: KeyspaceName) -> [RegionName] {
        (configuration.cluster.keyspace(keyspace)?.replicas ?? []).filter { $0 != region }
    }

    /// Runs a read, and once more after bringing in a data key the first attempt found missing (a value that
    /// arrived by a path that did not bring its key along).
    func openingSealed<T>(_ keyspace: KeyspaceName, _ body: () async throws(MeridianError) -> T) async throws(MeridianError) -> T {
        do {
            return try await body()
        } catch where error.code == .dataKeyUnavailable {
            guard let text = error.context["data_key"], let id = DataKeyID(hex: text) else { throw error }
            try await replicator.bringDataKeys(for: [(keyspace, Self.placeholder(sealedWith: id))], from: keyHolders(keyspace))
            return try await body()
        }
    }

    /// A stand-in sealed value naming `id`, for asking which keys are missing.
    private static func placeholder(sealedWith id: DataKeyID) -> [UInt8] {
        [SealedValue.format] + id.bytes + [UInt8](repeating: 0, count: SealedValue.overheadBytes - 1 - DataKeyID.byteCount)
    }

    /// Answers a peer's request for data keys, or to erase a subject: only for a region that holds a replica of
    /// the sealed keyspace.
    func serveDataKeys(_ policy: KeyspacePolicy, _ request: RepairRequest, from peer: RegionName) async -> RepairReply {
        guard policy.residency.encryption == .sealed else {
            return .refused(code: MeridianError.Code.invalidRequest.description, message: "Keyspace '\(policy.name)' is not sealed; it has no data keys.")
        }
        do throws(MeridianError) {
            switch request {
            case .dataKeys(let ids):
                let (granted, erased) = try await store.grantDataKeys(keyspace: policy.name, ids: ids)
                logger.info("granted data keys", metadata: ["keyspace": "\(policy.name)", "peer": "\(peer)", "granted": "\(granted.count)", "erased": "\(erased.count)"])
                audit?.record(.keyWrap, ["keyspace": policy.name.rawValue, "granted_to": peer.rawValue, "granted": String(granted.count), "erased": String(erased.count)])
                return .dataKeys(granted: granted, erased: erased)
            case .erasedKeys(let after):
                return .dataKeys(granted: [], erased: try await store.erasedDataKeys(keyspace: policy.name, after: after, limit: DataKeyRequestBounds.idsMax))
            case .erase(let subject):
                let ids = try await store.erase(keyspace: policy.name, subject: subject, nowMs: wallClockMs())
                noteErased(policy.name, ids)
                logger.notice("erased a subject's data keys", metadata: ["keyspace": "\(policy.name)", "asked_by": "\(peer)", "keys": "\(ids.count)"])
                audit?.record(.erasure, ["keyspace": policy.name.rawValue, "subject": subjectHash(policy.name, subject), "asked_by": peer.rawValue,
                                         "keys_destroyed": String(ids.count)])
                return .erased(ids: ids)
            case .tree, .states, .slots, .slotStates, .slotItems, .keyStates:
                return .refused(code: MeridianError.Code.internalError.description, message: "Not a data key request.")
            }
        } catch {
            return .refused(code: error.code.description, message: error.message)
        }
    }

    /// `POST /v1/admin/erase/{keyspace}` with `{"subject": "..."}`: destroys the subject's data keys here and in
    /// every other replica region of the keyspace, so each of its values, old versions, log entries, conflict and
    /// divergence records and backup copies becomes unreadable. Answers which regions confirmed; when one did not,
    /// 503 `region_unavailable` naming it (the erasure is idempotent: run it again).
    func erase(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let policy = try policy(context)
        guard policy.residency.encryption == .sealed else {
            throw MeridianError(.invalidRequest, "Keyspace '\(policy.name)' is not sealed (residency.encryption: sealed): its values have no data keys to destroy. Delete the keys instead.",
                                context: ["keyspace": policy.name.rawValue])
        }
        guard policy.isReplica(region) else {
            throw MeridianError(.notReplicaRegion, "Region \(region) holds no replica of '\(policy.name)'; send the erasure to one of \(policy.replicas.map(\.rawValue).joined(separator: ", ")).",
                                context: ["keyspace": policy.name.rawValue])
        }
        let body = try await readBody(request)
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any], Set(object.keys) == ["subject"],
              let text = object["subject"] as? String else {
            throw MeridianError(.invalidRequest, "The body must be a JSON object with \"subject\": the subject whose data is erased (see the keyspace's residency.subject rule).")
        }
        let subject = try Subject(text)
        let own = try await store.erase(keyspace: policy.name, subject: subject, nowMs: wallClockMs())
        noteErased(policy.name, own)
        var confirmed: [String] = [region.rawValue]
        var pending: [String] = []
        var reasons: [String] = []
        var destroyed = own.count
        // Every other replica at once: the erasure takes about the farthest round trip, not their sum.
        let replicator = self.replicator
        let answers = await withTaskGroup(of: (RegionName, Result<RepairReply, MeridianError>).self) { group in
            for peer in keyHolders(policy.name) {
                group.addTask { (peer, await replicator.repairResult(from: peer, keyspace: policy.name, .erase(subject: subject))) }
            }
            var answers: [(RegionName, Result<RepairReply, MeridianError>)] = []
            for await answer in group { answers.append(answer) }
            return answers
        }
        for (peer, answer) in answers.sorted(by: { $0.0 < $1.0 }) {
            switch answer {
            case .success(.erased(let ids)):
                confirmed.append(peer.rawValue)
                destroyed += ids.count
            case .success(.refused(_, let message)):
                pending.append(peer.rawValue)
                reasons.append("\(peer): \(message)")
            case .success:
                pending.append(peer.rawValue)
                reasons.append("\(peer) answered with another kind of reply")
            case .failure(let error):
                pending.append(peer.rawValue)
                reasons.append("\(peer): \(error.message)")
            }
        }
        // The receipt: which regions confirmed, on this region's trail (each of the others has its own record).
        audit?.record(.erasure, ["keyspace": policy.name.rawValue, "subject": subjectHash(policy.name, subject), "principal": RequestPrincipal.current?.name ?? "",
                                 "confirmed": confirmed.joined(separator: ","), "pending": pending.joined(separator: ","), "keys_destroyed": String(destroyed)])
        logger.notice("erasure", metadata: ["keyspace": "\(policy.name)", "confirmed": "\(confirmed.joined(separator: ","))",
                                            "pending": "\(pending.joined(separator: ","))", "keys": "\(destroyed)"])
        guard pending.isEmpty else {
            throw MeridianError(.regionUnavailable, "The subject's data keys were destroyed in \(confirmed.joined(separator: ", ")) but not yet in \(pending.joined(separator: ", ")) (\(reasons.joined(separator: "; "))). Run the erasure again: it is idempotent.",
                                context: ["keyspace": policy.name.rawValue, "confirmed": confirmed.joined(separator: ","), "pending": pending.joined(separator: ",")],
                                applied: .maybe)
        }
        return JSON.response(EraseAnswer(keyspace: policy.name.rawValue, confirmed: confirmed, keysDestroyed: destroyed), headers: [.cacheControl: "no-store"])
    }
}

extension RegionNode {
    /// A subject as the audit trail names it: a keyed hash (the subject is personal data), the same in every region.
    func subjectHash(_ keyspace: KeyspaceName, _ subject: Subject) -> String {
        guard let key = try? Key(subject.rawValue) else { return KeyNameHasher.prefix + "subject" }
        return configuration.cluster.keyNameHasher.hash(keyspace, key)
    }
}

extension RegionNode {
    /// Learns the erasures `peer` made of a sealed keyspace (a region that was down or cut off during an erasure
    /// destroys the subject's keys here too). Pages through the peer's erased ids; bounded.
    /// - Returns: How many erased ids were new here; nil when the peer could not be asked or the store refused
    ///   (some may have been learned).
    func learnErasures(_ policy: KeyspacePolicy, from peer: RegionName) async -> Int? {
        guard policy.residency.encryption == .sealed else { return 0 }
        var after: DataKeyID?
        var learned = 0
        for _ in 0..<1_000 {
            let page: [DataKeyID]
            do throws(MeridianError) {
                guard case .dataKeys(_, let erased) = try await replicator.requestRepair(from: peer, keyspace: policy.name, .erasedKeys(after: after)) else {
                    logger.warning("a peer answered a request for its erasures with another kind of reply", metadata: ["peer": "\(peer)", "keyspace": "\(policy.name)"])
                    return nil
                }
                page = erased
                // Only ids not already erased here are news.
                let known = Set(try await store.grantDataKeys(keyspace: policy.name, ids: page).erased)
                let news = page.filter { !known.contains($0) }
                if !news.isEmpty {
                    try await store.installDataKeys(keyspace: policy.name, [], erased: news, nowMs: wallClockMs())
                    noteErased(policy.name, news)
                    learned += news.count
                }
            } catch {
                logger.warning("could not learn a peer's erasures", metadata: ["peer": "\(peer)", "keyspace": "\(policy.name)", "error": "\(error.message)"])
                return nil
            }
            guard page.count == DataKeyRequestBounds.idsMax, let last = page.last else { break }
            after = last
        }
        if learned > 0 {
            audit?.record(.erasure, ["keyspace": policy.name.rawValue, "learned_from": peer.rawValue, "keys_destroyed": String(learned)])
            logger.notice("learned erasures from a peer", metadata: ["peer": "\(peer)", "keyspace": "\(policy.name)", "keys": "\(learned)"])
        }
        return learned
    }
}

extension RegionNode {
    /// Adds erased keys to the erasure ledger. A failure is logged: the next start adds every key the store holds
    /// as erased and the ledger lacks.
    func noteErased(_ keyspace: KeyspaceName, _ ids: [DataKeyID]) {
        do throws(MeridianError) {
            try erasureLedger?.append(keyspace: keyspace, ids: ids)
        } catch {
            logger.error("the erasure ledger could not be written; the next start adds the keys to it", metadata: ["reason": "\(error.message)"])
        }
    }

    /// At start, before serving: destroys every key the erasure ledger names that the store still holds (a backup
    /// restored from before the erasure), and adds to the ledger every key the store erased that it lacks.
    func syncErasureLedger() async throws(MeridianError) {
        guard let erasureLedger else { return }
        let ledger = try erasureLedger.read()
        for policy in configuration.cluster.keyspaces where policy.residency.encryption == .sealed && policy.isReplica(region) {
            let listed = Set(ledger[policy.name] ?? [])
            var erasedHere: Set<DataKeyID> = []
            var after: DataKeyID?
            for _ in 0..<100_000 {
                let page = try await store.erasedDataKeys(keyspace: policy.name, after: after, limit: DataKeyRequestBounds.idsMax)
                erasedHere.formUnion(page)
                guard page.count == DataKeyRequestBounds.idsMax, let last = page.last else { break }
                after = last
            }
            let destroy = listed.subtracting(erasedHere).sorted()
            if !destroy.isEmpty {
                try await store.installDataKeys(keyspace: policy.name, [], erased: destroy, nowMs: wallClockMs())
                audit?.record(.erasure, ["keyspace": policy.name.rawValue, "learned_from": "erasure_ledger", "keys_destroyed": String(destroy.count)])
                logger.notice("destroyed keys the erasure ledger names (this store is older than the erasures)",
                              metadata: ["keyspace": "\(policy.name)", "keys": "\(destroy.count)"])
            }
            try erasureLedger.append(keyspace: policy.name, ids: erasedHere.subtracting(listed).sorted())
        }
    }
}

/// The answer to an erasure: every replica region confirmed it.
struct EraseAnswer: Encodable {
    let keyspace: String
    let confirmed: [String]
    let keysDestroyed: Int

    enum CodingKeys: String, CodingKey {
        case keyspace, confirmed
        case keysDestroyed = "keys_destroyed"
    }
}

extension RegionNode {
    /// Data keys wrapped again per transaction during a rotation.
    static let rewrapBatch = 1_000

    /// `POST /v1/admin/keys/rotate`: starts a new key-encryption epoch in this region. The new root key is added to
    /// the root key file, every data key is wrapped again under it (values are not rewritten), and then the older
    /// epochs' root keys are destroyed: a copy of the key table taken before (an old backup) no longer opens.
    /// The node keeps serving throughout; a rotation cut short by a crash goes on when run again.
    func rotateKeys(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        guard let sealer else {
            throw MeridianError(.invalidRequest, "The cluster has no sealed keyspace: region \(region) has no data keys to wrap again.")
        }
        guard let path = configuration.rootKeyFile else {
            throw MeridianError(.invalidRequest, "Region \(region)'s root keys come from \(RootKeyFile.environmentVariable): the node cannot add an epoch to them. Rotate by hand, or start the node with --root-key-file.")
        }
        guard rotation.withLock({ running in
            defer { running = true }
            return !running
        }) else {
            throw MeridianError(.overloaded, "A rotation of region \(region)'s keys is already running; wait for it to answer.")
        }
        defer { rotation.withLock { $0 = false } }
        guard let before = sealer.keyRing else {
            throw MeridianError(.invalidRequest, "Region \(region)'s data keys are wrapped by \(sealer.rootSource), which rotates its own keys.")
        }
        let next = try before.rotated(bytes: ValueSealer.systemRandom(RegionRootKey.byteCount))
        // The file first: a crash after it leaves both epochs there, and every wrap opens.
        try RootKeyFile.save(next, to: path)
        sealer.adopt(next)
        var rewrapped = 0
        for _ in 0..<1_000_000 {
            let count = try await store.rewrapDataKeys(limit: Self.rewrapBatch)
            rewrapped += count
            if count == 0 { break }
        }
        let left = try await store.dataKeyEpochs().filter { $0.key < next.current }.values.reduce(0, +)
        guard left == 0 else {
            throw MeridianError(.storageFailure, "\(left) data keys of region \(region) are still wrapped under an older epoch; run the rotation again.")
        }
        let retired = next.retiring(below: next.current)
        try RootKeyFile.save(retired, to: path)
        sealer.adopt(retired)
        let destroyed = before.roots.keys.sorted().map(String.init).joined(separator: ",")
        audit?.record(.keyRotation, ["from_epoch": String(before.current), "to_epoch": String(next.current), "rewrapped": String(rewrapped),
                                     "destroyed_epochs": destroyed])
        logger.notice("key rotation", metadata: ["to_epoch": "\(next.current)", "rewrapped": "\(rewrapped)", "destroyed_epochs": "\(destroyed)"])
        return JSON.response(["region": region.rawValue, "epoch": String(next.current), "rewrapped": String(rewrapped), "destroyed_epochs": destroyed],
                             headers: [.cacheControl: "no-store"])
    }
}
