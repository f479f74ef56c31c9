/// Where a leader's term of a single-leader keyspace begins: the epoch, its leader, how far the leader had
/// applied every origin's log, and how far it held each earlier term's writes when it took over. The writes
/// of earlier terms that count are exactly those the new leader held; the rest (async writes a deposed
/// leader acknowledged but never shipped to it) are diverted to the divergence log instead of being applied.
public struct EpochStart: Hashable, Sendable, CustomStringConvertible {
    public let epoch: UInt64
    public let leader: RegionName
    /// Per origin, the last sequence of its log the leader had applied when its term began.
    public let applied: [RegionName: UInt64]
    /// The keyspace's history as the new leader held it: per earlier term, that term's leader and the last of
    /// its writes the new leader held (the newest `termsMax` terms). An earlier term's write counts only up to
    /// there, however late it arrives, even when its leader leads again later.
    public let terms: [TermEnd]

    /// The most earlier terms a start names; writes of older terms are judged as not held.
    public static let termsMax = 64

    public init(epoch: UInt64, leader: RegionName, applied: [RegionName: UInt64], terms: [TermEnd] = []) {
        self.epoch = epoch
        self.leader = leader
        self.applied = applied
        // One leader per term: a term named twice keeps its first mention.
        var seen: Set<UInt64> = []
        self.terms = Array(terms.sorted { $0.epoch > $1.epoch }.filter { seen.insert($0.epoch).inserted }.prefix(Self.termsMax))
    }

    /// How far the new leader held the writes of `epoch` by `origin` (nil: none).
    public func last(of origin: RegionName, in epoch: UInt64) -> UInt64? {
        terms.first { $0.epoch == epoch && $0.leader == origin }?.last
    }

    /// The first term of a keyspace: the configured leader, with nothing before it.
    public static func initial(leader: RegionName) -> EpochStart { EpochStart(epoch: 1, leader: leader, applied: [:]) }

    public var description: String {
        "epoch \(epoch) led by \(leader) from " + applied.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")
    }
}

/// The writes of one term of a single-leader keyspace that a region holds: its leader's, up to `last`.
public struct TermEnd: Hashable, Sendable {
    public let epoch: UInt64
    public let leader: RegionName
    public let last: UInt64

    public init(epoch: UInt64, leader: RegionName, last: UInt64) {
        self.epoch = epoch
        self.leader = leader
        self.last = last
    }
}

extension TermEnd {
    /// Terms as text, `epoch:leader=last` joined by commas: how stored starts and the leader's answer to a
    /// catch-up carry them.
    public static func encode(_ terms: [TermEnd]) -> String {
        terms.map { "\($0.epoch):\($0.leader)=\($0.last)" }.joined(separator: ",")
    }

    /// - Throws: `invalidRequest` naming the first item that is not `epoch:leader=last`.
    public static func decode(_ text: Substring) throws(MeridianError) -> [TermEnd] {
        var terms: [TermEnd] = []
        for item in text.split(separator: ",") {
            let fields = item.split(separator: "=")
            let head = fields.first?.split(separator: ":") ?? []
            guard fields.count == 2, head.count == 2, let epoch = UInt64(head[0]), let last = UInt64(fields[1]) else {
                throw MeridianError(.invalidRequest, "'\(item.prefix(100))' is not a term (epoch:leader=last).")
            }
            terms.append(TermEnd(epoch: epoch, leader: try RegionName(String(head[1])), last: last))
        }
        return terms
    }
}

/// What a region does with a replicated entry of a single-leader keyspace.
public enum FenceVerdict: Hashable, Sendable {
    /// The entry belongs to the keyspace's history: apply it.
    case apply
    /// A write of a deposed leader that its successor never held: keep it in the divergence log, unapplied.
    case divert
    /// This region cannot tell yet (it voted in an election whose winner has not spoken, or the entry is of
    /// an epoch it has not heard of): hold the stream until it can.
    case wait
    /// The entry counts, but this region lacks writes of an earlier term that the start counts (their origin's
    /// stream has not brought them): hold the stream until it holds them, pulling them from the leader if they
    /// do not come.
    case catchUp
}

/// Decides which replicated entries of a single-leader keyspace a region applies, from the epoch the region
/// follows and where that epoch's term began. Pure, shared by the node and the tests.
///
/// Followers refuse what a deposed leader wrote after its successor took over, so a returning leader cannot
/// overwrite the new term's writes, and what it wrote is kept aside rather than lost.
///
/// Log matching, as Raft's: a region applies a write of epoch `e` only once it holds every write of the terms
/// before `e` that the start counts. A keyspace's terms span several origins' logs, so without this rule a
/// region could hold a newer term's writes while missing an older term's majority-acknowledged write (its
/// origin's stream never reached it), stand with the newest position, win, and start a term that keeps that
/// write aside. With it, holding a write of epoch `e` implies holding everything counted before it.
public enum Fence {
    /// - Parameters:
    ///   - epoch: The entry's epoch; `origin`/`sequence`: its place in its origin's log.
    ///   - following: The highest epoch this region knows for the keyspace.
    ///   - start: Where the term of `following` began, if its leader has said (nil: an election is running).
    ///   - held: How far this region holds each earlier term's writes of the keyspace (epoch → its leader and
    ///     last write held).
    public static func verdict(epoch: UInt64, origin: RegionName, sequence: UInt64, following: UInt64, start: EpochStart?,
                               held: [UInt64: TermEnd]) -> FenceVerdict {
        if epoch > following { return .wait }
        guard let start, start.epoch == following else { return .wait }
        if !(origin == start.leader && epoch == following) {
            // An earlier term's write counts up to where the new leader held that term's writes; a term it held
            // nothing of counts nothing.
            guard let last = start.last(of: origin, in: epoch), sequence <= last else { return .divert }
        }
        return holdsEarlierTerms(before: epoch, origin: origin, start: start, held: held) ? .apply : .catchUp
    }

    /// Whether this region holds every write the start counts of the terms before `epoch`, the origin's own earlier
    /// terms included: they precede the entry in its log, but this region may have kept them aside under a term
    /// that excluded them, which a later start (the origin leading again) counts anew. The caller holds the entries
    /// a batch applies before the one judged (``RegionMachine``), so a batch spanning the origin's terms waits for
    /// nothing.
    public static func holdsEarlierTerms(before epoch: UInt64, origin: RegionName, start: EpochStart, held: [UInt64: TermEnd]) -> Bool {
        start.terms.allSatisfy { term in
            // A term the start counts nothing of (its writes all kept aside) asks for nothing.
            term.epoch >= epoch || term.last == 0 || held[term.epoch].map { $0.leader == term.leader && $0.last >= term.last } == true
        }
    }
}

/// What a region keeps on disk about one single-leader keyspace's elections: its election record (epoch,
/// leader, vote) and where the term it follows began.
public struct StoredElection: Sendable, Hashable {
    public var record: ElectionRecord
    public var start: EpochStart?

    public init(record: ElectionRecord, start: EpochStart?) {
        self.record = record
        self.start = start
    }
}
