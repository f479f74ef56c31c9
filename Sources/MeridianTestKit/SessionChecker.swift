import MeridianCore

/// One operation of a client session, with the version the store reported for it.
public struct SessionOperation: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// The session wrote the key; the answer named `version` (`deleted`: the write was a delete).
        case write(Version, deleted: Bool)
        /// The session read the key and got `version` (nil: absent).
        case read(Version?)
    }

    public let session: Int
    public let key: String
    public let kind: Kind

    public init(session: Int, key: String, kind: Kind) {
        self.session = session
        self.key = key
        self.kind = kind
    }
}

/// A broken session guarantee: which one, where, and the write the read should have reflected.
public struct SessionViolation: Sendable, Hashable, CustomStringConvertible {
    public enum Guarantee: String, Sendable {
        case readYourWrites = "read-your-writes"
        case monotonicReads = "monotonic-reads"
        /// A write the session's earlier reads or writes causally depended on (monotonic writes and
        /// writes-follow-reads, seen from the reader).
        case causal = "writes-follow-reads/monotonic-writes"
        /// A write the token's per-origin prefix covers but the session never touched (Meridian's token
        /// promises every write of an origin up to what the session saw).
        case originPrefix = "origin-prefix"
    }

    public let guarantee: Guarantee
    public let session: Int
    /// The position of the offending read in its session.
    public let index: Int
    public let key: String
    public let returned: Version?
    public let owed: Version

    public var description: String {
        "session \(session) op \(index): read of '\(key)' returned \(returned.map(\.description) ?? "nothing") but owed \(owed) (\(guarantee.rawValue))"
    }
}

/// Checks session guarantees over a history of sessions, each in its own order: read-your-writes,
/// monotonic reads, monotonic writes and writes-follow-reads, in the form Meridian's session token
/// promises them. A session has "seen", per origin, the highest sequence of any version it read or wrote,
/// plus everything the writers of those versions had seen when they wrote (their causal past, computed
/// from the history itself); a read must return a version at least as new (by HLC, last-writer-wins) as
/// every write of its key that the session has seen.
public struct SessionChecker: Sendable {
    public init() {}

    public func check(_ sessions: [[SessionOperation]]) -> [SessionViolation] {
        // Every write, by key, and each write's causal past (fixpoint: a past includes the pasts of what was read).
        var writes: [String: [(version: Version, deleted: Bool, session: Int)]] = [:]
        var pastOf: [Version: [RegionName: UInt64]] = [:]
        for (session, operations) in sessions.enumerated() {
            for operation in operations {
                if case .write(let version, let deleted) = operation.kind {
                    writes[operation.key, default: []].append((version, deleted, session))
                    pastOf[version] = [:]
                }
            }
        }
        var changed = true
        var rounds = 0
        while changed && rounds <= sessions.reduce(0, { $0 + $1.count }) + 1 {
            changed = false
            rounds += 1
            for operations in sessions {
                var seen: [RegionName: UInt64] = [:]
                for operation in operations {
                    switch operation.kind {
                    case .write(let version, _):
                        if pastOf[version] != seen {
                            pastOf[version] = seen
                            changed = true
                        }
                        Self.observe(version, pastOf[version] ?? [:], into: &seen)
                    case .read(let version?):
                        Self.observe(version, pastOf[version] ?? [:], into: &seen)
                    case .read(nil):
                        break
                    }
                }
            }
        }
        // Check every read against what its session had seen before it.
        var violations: [SessionViolation] = []
        for (session, operations) in sessions.enumerated() {
            var seen: [RegionName: UInt64] = [:]
            var own: Set<Version> = []
            var read: Set<Version> = []
            for (index, operation) in operations.enumerated() {
                switch operation.kind {
                case .write(let version, _):
                    Self.observe(version, pastOf[version] ?? [:], into: &seen)
                    own.insert(version)
                case .read(let returned):
                    let owed = (writes[operation.key] ?? []).filter { seen[$0.version.origin, default: 0] >= $0.version.sequence }
                    if let newest = owed.max(by: { $0.version.hlc < $1.version.hlc }) {
                        let stale: Bool
                        if let returned { stale = newest.version.hlc > returned.hlc } else { stale = !newest.deleted }
                        if stale {
                            let guarantee: SessionViolation.Guarantee =
                                own.contains(newest.version) ? .readYourWrites
                                : read.contains(newest.version) ? .monotonicReads
                                : Self.causallyOwed(newest.version, own: own, read: read, pastOf: pastOf) ? .causal : .originPrefix
                            violations.append(SessionViolation(guarantee: guarantee, session: session, index: index, key: operation.key,
                                                               returned: returned, owed: newest.version))
                        }
                    }
                    if let returned {
                        Self.observe(returned, pastOf[returned] ?? [:], into: &seen)
                        read.insert(returned)
                    }
                }
            }
        }
        return violations
    }

    private static func observe(_ version: Version, _ past: [RegionName: UInt64], into seen: inout [RegionName: UInt64]) {
        seen[version.origin] = max(seen[version.origin] ?? 0, version.sequence)
        for (origin, sequence) in past { seen[origin] = max(seen[origin] ?? 0, sequence) }
    }

    /// Whether `version` is in the causal past of something the session wrote or read.
    private static func causallyOwed(_ version: Version, own: Set<Version>, read: Set<Version>, pastOf: [Version: [RegionName: UInt64]]) -> Bool {
        own.union(read).contains { (pastOf[$0]?[version.origin] ?? 0) >= version.sequence }
    }
}

/// A bounded-staleness read, and the writes it is checked against.
public struct StalenessChecker: Sendable {
    /// A write whose acknowledgement the client received at `acknowledged` (client clock).
    public struct Write: Sendable, Hashable {
        public let key: String
        public let version: Version
        public let deleted: Bool
        public let acknowledged: UInt64

        public init(key: String, version: Version, deleted: Bool = false, acknowledged: UInt64) {
            self.key = key
            self.version = version
            self.deleted = deleted
            self.acknowledged = acknowledged
        }
    }

    /// A read sent at `call` with bound `maxStalenessMs` (client clock, ms) that returned `returned`.
    public struct Read: Sendable, Hashable {
        public let key: String
        public let call: UInt64
        public let maxStalenessMs: UInt64
        public let returned: Version?

        public init(key: String, call: UInt64, maxStalenessMs: UInt64, returned: Version?) {
            self.key = key
            self.call = call
            self.maxStalenessMs = maxStalenessMs
            self.returned = returned
        }
    }

    public init() {}

    /// The reads that missed a write acknowledged more than their bound before they were sent.
    public func check(writes: [Write], reads: [Read]) -> [(read: Read, owed: Write)] {
        let byKey = Dictionary(grouping: writes, by: \.key)
        var violations: [(read: Read, owed: Write)] = []
        for read in reads {
            let horizon = read.call >= read.maxStalenessMs ? read.call - read.maxStalenessMs : 0
            let owed = (byKey[read.key] ?? []).filter { $0.acknowledged < horizon }
            guard let newest = owed.max(by: { $0.version.hlc < $1.version.hlc }) else { continue }
            let stale = read.returned.map { newest.version.hlc > $0.hlc } ?? !newest.deleted
            if stale { violations.append((read, newest)) }
        }
        return violations
    }
}
