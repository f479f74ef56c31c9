/// A region started from a restored backup, until it has caught up with its peers.
///
/// A backup ends where it was taken: the region's own log stops at the backup's last sequence, while its peers
/// applied writes it made afterwards; its erased keys are those of that moment; its audit trail stops at the
/// backup's head, while its peers witnessed a longer one. Writing again at once would reuse sequence numbers the
/// peers already hold for other writes (they would drop the new ones as duplicates), serve subjects erased since,
/// and fork the trail. So the region takes no client request until every peer has said how far it holds this
/// region's log and audit trail (its welcome), and a full anti-entropy round with each peer has ended (erasures
/// first): then its log continues after the highest sequence any peer holds, the writes it lost are back from
/// the peers, and its trail resumes after the highest record any peer witnessed, with a `restore` record naming
/// the records lost.
public struct RestoreCatchUp: Sendable, Hashable {
    public let region: RegionName
    /// The regions to hear from: every other region of the cluster.
    public let peers: Set<RegionName>
    /// The last sequence of this region's log in the backup.
    public let backupLogEnd: UInt64
    /// Per peer that welcomed this region's stream: how far it holds this region's log, and the newest record of
    /// this region's trail it witnessed.
    public private(set) var heard: [RegionName: (log: UInt64, audit: UInt64)] = [:]
    /// Peers a full anti-entropy round (erasures first) ended with.
    public private(set) var repaired: Set<RegionName> = []

    public init(region: RegionName, peers: Set<RegionName>, backupLogEnd: UInt64) {
        self.region = region
        self.peers = peers.subtracting([region])
        self.backupLogEnd = backupLogEnd
    }

    public static func == (a: RestoreCatchUp, b: RestoreCatchUp) -> Bool {
        a.region == b.region && a.peers == b.peers && a.backupLogEnd == b.backupLogEnd && a.repaired == b.repaired
            && a.heard.mapValues { [$0.log, $0.audit] } == b.heard.mapValues { [$0.log, $0.audit] }
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(region)
        hasher.combine(backupLogEnd)
        hasher.combine(repaired)
    }

    /// A peer welcomed this region's stream, holding its log up to `log` and having witnessed its trail up to `audit`.
    public mutating func welcomed(by peer: RegionName, log: UInt64, audit: UInt64) {
        guard peers.contains(peer) else { return }
        let before = heard[peer] ?? (0, 0)
        heard[peer] = (max(before.log, log), max(before.audit, audit))
    }

    /// A full anti-entropy round with `peer` ended, every shared keyspace merged and its erasures learned.
    public mutating func repairEnded(with peer: RegionName) {
        guard peers.contains(peer) else { return }
        repaired.insert(peer)
    }

    /// Every peer has been heard and repaired from.
    public var isCaughtUp: Bool { peers.allSatisfy { heard[$0] != nil } && repaired.isSuperset(of: peers) }

    /// Where this region's log continues: after the highest sequence any peer holds (or the backup's own).
    public var logEnd: UInt64 { heard.values.map(\.log).reduce(backupLogEnd, max) }

    /// The newest record of this region's trail any peer witnessed.
    public var auditWitnessed: UInt64 { heard.values.map(\.audit).reduce(0, max) }

    /// The peers still to hear from or repair with.
    public var waitingFor: [RegionName] { peers.filter { heard[$0] == nil || !repaired.contains($0) }.sorted() }

    /// Refuses a client request while the region catches up.
    /// - Throws: `restore_pending`, naming the peers it waits for.
    public func admitRequest() throws(MeridianError) {
        guard !isCaughtUp else { return }
        throw MeridianError(.restorePending, "\(region) was restored from a backup and is catching up from its peers (waiting for \(waitingFor.map(\.rawValue).joined(separator: ", "))); it takes requests once every peer has answered. Use another region meanwhile.",
                            context: ["region": region.rawValue, "waiting_for": waitingFor.map(\.rawValue).joined(separator: ",")])
    }

    /// The fields of the `restore` record that resumes the audit trail at `head` (the backup's head): the records
    /// after it that peers witnessed are lost, and the trail continues after the newest of them.
    public func auditFields(head: UInt64) -> [String: String] {
        let lostThrough = max(head, auditWitnessed)
        return ["backup_log_end": String(backupLogEnd), "log_end": String(logEnd), "backup_head": String(head),
                "lost_from": String(head + 1), "lost_through": String(lostThrough)]
    }
}
