import Foundation
import Hummingbird
import MeridianAPI
import MeridianCore
import MeridianHTTP
import MeridianStorage
import Synchronization

/// A restored region's catch-up (``RestoreCatchUp``) as the node shares it between the streams, the routes and the
/// task that ends it. Nil inside: not restored, or caught up.
final class RestoreState: Sendable {
    private let state: Mutex<RestoreCatchUp?>

    init(_ catchUp: RestoreCatchUp?) { state = Mutex(catchUp) }

    var pending: RestoreCatchUp? { state.withLock { $0 } }

    /// A peer's welcome. - Returns: true while the region restores: the stream must not ship yet (the log's end is
    /// not known until every peer has said how far it holds it).
    func welcomed(by peer: RegionName, log: UInt64, audit: UInt64) -> Bool {
        state.withLock { state in
            guard state != nil else { return false }
            state!.welcomed(by: peer, log: log, audit: audit)
            return true
        }
    }

    func repairEnded(with peer: RegionName) {
        state.withLock { $0?.repairEnded(with: peer) }
    }

    func repairedFromLeader(_ keyspace: KeyspaceName) {
        state.withLock { $0?.repairedFromLeader(keyspace) }
    }

    /// - Throws: `restore_pending` while the region catches up.
    func admitRequest() throws(MeridianError) {
        try state.withLock { (state: inout RestoreCatchUp?) throws(MeridianError) in try state?.admitRequest() }
    }

    func end() { state.withLock { $0 = nil } }
}

/// `POST /v1/admin/backup`'s answer.
struct BackupAnswer: Encodable {
    let region: String
    let path: String
    let summary: BackupSummary
}

extension RegionNode {
    /// Catches a restored region up with every peer, then ends the restore. With each peer that welcomed this
    /// region's streams: its erasures of every shared sealed keyspace, then a full anti-entropy round of the shared
    /// keyspaces that are not single-leader; each single-leader keyspace from its current leader. Once all have
    /// ended, the log continues after the highest sequence any peer holds, the trail resumes with a `restore`
    /// record, and the streams open anew. Returns once the restore ended or the task is cancelled.
    func runRestoreCatchUp() async {
        guard let started = restore.pending else { return }
        logger.notice("restored from a backup: catching up from every peer before taking requests",
                      metadata: ["backup_log_end": "\(started.backupLogEnd)", "peers": "\(started.peers.sorted())"])
        let cluster = configuration.cluster
        while !Task.isCancelled, let catchUp = restore.pending {
            if catchUp.isCaughtUp {
                do throws(MeridianError) {
                    try await endRestore(catchUp)
                    return
                } catch {
                    logger.warning("the restore could not end yet", metadata: ["reason": "\(error.message)"])
                }
            }
            for peer in catchUp.waitingFor where catchUp.heard[peer] != nil && !catchUp.repaired.contains(peer) {
                let round = catchUp.round(with: peer, in: cluster)
                var complete = true
                for policy in round.erasures where await learnErasures(policy, from: peer) == nil { complete = false }
                if complete && !round.states.isEmpty {
                    complete = await repair(with: peer, keyspaces: round.states).allSatisfy { $0.error == nil }
                }
                if complete {
                    restore.repairEnded(with: peer)
                    logger.info("restore: caught up with a peer", metadata: ["peer": "\(peer)", "keyspaces": "\(round.states.count)"])
                }
            }
            for keyspace in catchUp.ledKeyspaces.subtracting(catchUp.repairedFromLeader) {
                // Only from a leader this region follows and checked its copy against (the merge gate refuses
                // other merges); while an election runs or the leader is not known yet, the next pass tries again.
                guard let (policy, from) = antiEntropyPeers(keyspace).first, let leader = from.first,
                      catchUp.heard[leader] != nil else { continue }
                if await repair(with: leader, keyspaces: [policy]).allSatisfy({ $0.error == nil }) {
                    restore.repairedFromLeader(keyspace)
                }
            }
            try? await Task.sleep(for: .milliseconds(limits.heartbeatIntervalMs))
        }
    }

    /// Ends the restore, in an order a crash at any point leaves safe: the `restore` record and the election
    /// records with the votes forgone are durable before the store's mark goes (a node that restarts before that
    /// restores again, and the record it adds next is an ordinary one).
    private func endRestore(_ catchUp: RestoreCatchUp) async throws(MeridianError) {
        let head = try await store.auditHead().sequence
        try await audit?.resume(restoreFields: catchUp.auditFields(head: head))
        guard await leadership.restoreEnded() else {
            throw MeridianError(.storageFailure, "The election records could not be stored; the restore ends once they are.")
        }
        try await store.finishRestore(logEnd: catchUp.logEnd)
        // The links' log end first: a welcome arriving once the gate opens is checked against it.
        replicator.logGrew(to: catchUp.logEnd)
        restore.end()
        // Streams welcomed while restoring never shipped: open them again against the log's new end.
        replicator.reconnectAll()
        logger.notice("restore ended: caught up with every peer", metadata: ["log_end": "\(catchUp.logEnd)", "audit_lost_through": "\(catchUp.auditWitnessed)"])
    }

    /// `POST /v1/admin/backup` with `{"name": "file-name"}`: an online, consistent copy of the region's store, written
    /// as a new file in the node's backup directory (`<data>/backups`; values stay sealed, data keys wrapped), and a
    /// `backup` record on the trail.
    func backupRoute(_ request: Request, _ context: BasicRequestContext) async throws(MeridianError) -> Response {
        let body = try await readBody(request)
        guard let object = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any], Set(object.keys) == ["name"],
              let name = object["name"] as? String else {
            throw MeridianError(.invalidRequest, "The body must be a JSON object with \"name\": the new backup file's name in the node's backup directory.")
        }
        guard (1...128).contains(name.utf8.count), !name.hasPrefix("."),
              name.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) && $0.isASCII || "._-".unicodeScalars.contains($0) }) else {
            throw MeridianError(.invalidRequest, "A backup name has 1 to 128 ASCII letters, digits, '.', '_' or '-', and does not start with '.'.",
                                context: ["field": "name"])
        }
        guard let directory = configuration.backupDirectory else {
            throw MeridianError(.invalidRequest, "This node has no backup directory (it is started by meridian node with --data).")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw MeridianError(.storageFailure, "The backup directory \(directory) cannot be created (\(error)).")
        }
        let path = (directory as NSString).appendingPathComponent(name)
        let summary = try await store.backup(to: path)
        audit?.record(.backup, ["principal": RequestPrincipal.current?.name ?? "", "file": name,
                                "log_end": String(summary.logEnd), "audit_head": String(summary.auditHead), "bytes": String(summary.bytes)])
        logger.notice("backup written", metadata: ["file": "\(path)", "log_end": "\(summary.logEnd)", "bytes": "\(summary.bytes)"])
        return JSON.response(BackupAnswer(region: region.rawValue, path: path, summary: summary), headers: [.cacheControl: "no-store"])
    }
}
