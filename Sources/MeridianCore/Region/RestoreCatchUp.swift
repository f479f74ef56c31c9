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
    /// The single-leader keyspaces this region shares with another region: each repairs only from its current
    /// leader, which must be known (and not this region) before the restore can end.
    public let ledKeyspaces: Set<KeyspaceName>
    /// Those repaired from their leader.
    public private(set) var repairedFromLeader: Set<KeyspaceName> = []

    public init(region: RegionName, peers: Set<RegionName>, backupLogEnd: UInt64, ledKeyspaces: Set<KeyspaceName> = []) {
        self.region = region
        self.peers = peers.subtracting([region])
        self.backupLogEnd = backupLogEnd
        self.ledKeyspaces = ledKeyspaces
    }

    /// The catch-up of `region` in `cluster`, restored from a backup whose log ends at `backupLogEnd`.
    public init(region: RegionName, cluster: ClusterConfig, backupLogEnd: UInt64) {
        let led = cluster.keyspaces.filter { $0.topology == .singleLeader && $0.isReplica(region) && $0.replicas.contains { $0 != region } }
        self.init(region: region, peers: Set(cluster.regions.map(\.name)), backupLogEnd: backupLogEnd, ledKeyspaces: Set(led.map(\.name)))
    }

    /// What a round with `peer` covers in `cluster`: the sealed keyspaces whose erasures it learns (every shared
    /// one), and the keyspaces whose states it merges (every shared one but the single-leader keyspaces, which
    /// repair from their leader).
    public func round(with peer: RegionName, in cluster: ClusterConfig) -> (erasures: [KeyspacePolicy], states: [KeyspacePolicy]) {
        let shared = cluster.keyspaces.filter { $0.isReplica(region) && $0.isReplica(peer) }
        return (shared.filter { $0.residency.encryption == .sealed }, shared.filter { $0.topology != .singleLeader })
    }

    /// A single-leader keyspace was repaired from its current leader.
    public mutating func repairedFromLeader(_ keyspace: KeyspaceName) {
        guard ledKeyspaces.contains(keyspace) else { return }
        repairedFromLeader.insert(keyspace)
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
    public var isCaughtUp: Bool {
        peers.allSatisfy { heard[$0] != nil } && repaired.isSuperset(of: peers) && repairedFromLeader.isSuperset(of: ledKeyspaces)
    }

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
        let keyspaces = ledKeyspaces.subtracting(repairedFromLeader).map(\.rawValue).sorted()
        let waiting = waitingFor.map(\.rawValue) + keyspaces.map { "the leader of \($0)" }
        throw MeridianError(.restorePending, "\(region) was restored from a backup and is catching up from its peers (waiting for \(waiting.joined(separator: ", "))); it takes requests once every peer has answered. Use another region meanwhile.",
                            context: ["region": region.rawValue, "waiting_for": waiting.joined(separator: ",")])
    }

    /// The fields of the `restore` record that resumes the audit trail at `head` (the backup's head): the records
    /// after it that peers witnessed are lost, and the trail continues after the newest of them.
    public func auditFields(head: UInt64) -> [String: String] {
        let lostThrough = max(head, auditWitnessed)
        return ["backup_log_end": String(backupLogEnd), "log_end": String(logEnd), "backup_head": String(head),
                "lost_from": String(head + 1), "lost_through": String(lostThrough)]
    }
}
