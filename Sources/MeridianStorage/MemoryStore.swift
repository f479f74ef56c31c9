import MeridianCore
import Synchronization

/// What an in-memory store keeps across a close and a reopen: its "disk". A store opened again on the same disk
/// finds everything committed before, as a SQLite file would; the simulator and tests crash a region by
/// dropping the store and keeping the disk.
public final class MemoryDisk: Sendable {
    fileprivate let contents = Mutex<MemoryStore.Contents?>(nil)

    public init() {}

    /// What the disk holds now (nil: no store was opened on it yet), for a simulator's checks: a region's logs,
    /// key states and logs of conflicts and divergence, readable while its store is closed or lost for good.
    /// Steps applied visibly and not yet synced are not on it (``MemoryStore/visibleContents`` has them).
    public var held: MemoryStore.Contents? { contents.withLock { $0 } }
}

/// A region's store held in memory, implementing every storage protocol with the same rules as the SQLite
/// backend (the conformance suite checks both): writes planned by the core's ``WritePlanner`` and applied by
/// ``KeyChange``, one log per origin, exactly-once applies, the conflicts and divergence logs with their
/// bounds. Every call runs under one lock, so commits are serial and sequences follow commit order.
///
/// Every method is synchronous (a synchronous method satisfies the protocols' `async` requirements): the
/// simulator calls them within its single-threaded simulated time, the node awaits them as any backend's.
public final class MemoryStore: RegionStorage {
    /// Everything the store holds; it lives on the ``MemoryDisk``.
    public struct Contents: Sendable {
        public let region: RegionName
        /// Per origin, the entries this region holds in log order: its own log, and what it applied of the others'
        /// (not the entries it kept aside on arrival).
        public internal(set) var log: [RegionName: [ReplicationEntry]] = [:]
        /// Per other origin, how far its log is applied here (entries left out by residency or kept aside included).
        public internal(set) var applied: [RegionName: UInt64] = [:]
        var logFloor: UInt64 = 0
        /// The backup's log end while a restored copy's region catches up (set by ``markRestored()``).
        var restorePending: UInt64?
        public internal(set) var nextSequence: UInt64 = 1
        public internal(set) var hlcHighWater: HLCTimestamp?
        public internal(set) var keys: [KeyspaceName: [Key: KeyState]] = [:]
        public internal(set) var conflicts: [ConflictRecord] = []
        var nextConflictID: Int64 = 1
        /// Per keyspace, per (origin, epoch): the last write of that term held.
        var terms: [KeyspaceName: [TermKey: UInt64]] = [:]
        var elections: [KeyspaceName: StoredElection] = [:]
        public internal(set) var divergence: [DivergedWrite] = []
        var nextDivergenceID: Int64 = 1
        var failovers: [FailoverEvent] = []
        var nextFailoverID: Int64 = 1
        /// Per keyspace, the outcomes of idempotent writes applied here.
        public internal(set) var idempotency: [KeyspaceName: [IdempotencyKey: IdempotencyRecord]] = [:]
        /// The key table of sealed keyspaces: wrapped data keys, and the ids of those erased.
        public internal(set) var dataKeys: [KeyspaceName: [DataKeyID: StoredDataKey]] = [:]
        public internal(set) var erasedKeys: [KeyspaceName: Set<DataKeyID>] = [:]
        /// The audit trail, its anchor, and the checkpoints of other regions' trails witnessed here.
        public internal(set) var audit: [AuditRecord] = []
        var auditAnchor = AuditAnchor()
        var witnessed: [RegionName: [AuditCheckpoint]] = [:]
        var auditKeys: [RegionName: [UInt8]] = [:]

        /// How far this region holds `origin`'s log: its own log's end, or the applied point of another's.
        public func appliedThrough(_ origin: RegionName) -> UInt64 {
            origin == region ? nextSequence - 1 : applied[origin] ?? 0
        }
    }

    struct TermKey: Hashable, Sendable {
        let origin: RegionName
        let epoch: UInt64
    }

    /// The open store's view: the disk's contents and the clock rebuilt from them.
    private struct Open: Sendable {
        var contents: Contents
        var clock: HybridLogicalClock
        var closed = false
    }

    public let region: RegionName
    public let writeFaults = WriteFaults()
    private let disk: MemoryDisk
    private let state: Mutex<Open>
    private let limits: Limits
    private let rules: [KeyspaceName: ConflictRule]
    private let physicalClockMs: @Sendable () -> UInt64
    private let observer: (any StoreObserver)?
    private let sealer: ValueSealer?

    /// Opens the store on `disk` (empty: a new store for `context.region`).
    /// - Throws: `storage_failure` when the disk belongs to another region.
    public init(disk: MemoryDisk, context: StoreContext) throws(MeridianError) {
        let contents = try disk.contents.withLock { stored throws(MeridianError) -> Contents in
            if let stored {
                guard stored.region == context.region else {
                    throw MeridianError(.storageFailure, "The in-memory store belongs to region '\(stored.region)', not '\(context.region)'. Use that region's store or an empty one.",
                                        context: ["data_region": stored.region.rawValue, "region": context.region.rawValue])
                }
                return stored
            }
            let fresh = Contents(region: context.region)
            stored = fresh
            return fresh
        }
        self.disk = disk
        region = context.region
        limits = context.limits
        rules = context.conflictRules
        physicalClockMs = context.physicalClockMs
        observer = context.observer
        sealer = context.sealer
        let clock = HybridLogicalClock(region: context.region, maxOffsetMs: context.limits.clockOffsetMsMax, floor: contents.hlcHighWater)
        state = Mutex(Open(contents: contents, clock: clock))
    }

    /// A factory opening every region's store on its own disk from `disks` (created on first use).
    public static func factory(_ disks: MemoryDisks) -> StoreFactory {
        { context throws(MeridianError) in try MemoryStore(disk: disks.disk(for: context.region), context: context) }
    }

    public func close() {
        state.withLock { $0.closed = true }
    }

    // MARK: - Running under the lock

    /// Reads under the lock.
    private func reading<T>(_ body: (borrowing Open) throws(MeridianError) -> T) throws(MeridianError) -> T {
        try state.withLock { open throws(MeridianError) -> T in
            guard !open.closed else { throw Self.closedError }
            return try body(open)
        }
    }

    /// Changes under the lock, then makes the contents "durable" on the disk (with every change made visibly before).
    private func changing<T>(_ body: (inout Open) throws(MeridianError) -> T) throws(MeridianError) -> T {
        try change(durable: true, body)
    }

    /// Changes under the lock without making them durable: the disk gets them with the next durable change (as a
    /// write-ahead log synced later holds every commit before the sync); a close before then loses them.
    private func visibly<T>(_ body: (inout Open) throws(MeridianError) -> T) throws(MeridianError) -> T {
        try change(durable: false, body)
    }

    /// `rollingBack`: the change is computed and dropped, all but the clock's advance (a failed COMMIT).
    private func change<T>(durable: Bool, rollingBack: Bool = false, _ body: (inout Open) throws(MeridianError) -> T) throws(MeridianError) -> T {
        try state.withLock { open throws(MeridianError) -> T in
            guard !open.closed else { throw Self.closedError }
            var draft = open
            let result = try body(&draft)
            if rollingBack {
                open.clock = draft.clock
                return result
            }
            open = draft
            if durable {
                let contents = draft.contents
                disk.contents.withLock { $0 = contents }
            }
            return result
        }
    }

    private static let closedError = MeridianError(.storageFailure, "The store is closed.")

    private func rule(_ keyspace: KeyspaceName) -> ConflictRule { rules[keyspace] ?? .lww }

    // MARK: - Commits

    public func write(_ request: WriteRequest) throws(MeridianError) -> WriteOutcome {
        try write(request, durable: true)
    }

    /// A write committed as the node's group commit does (`durable`), or only visibly: a simulator's model of a
    /// commit whose fsync has not completed. Such a write is durable with the next durable step (``syncApplied()``,
    /// or any other), and lost if the store closes first.
    ///
    /// With `commitFails`, the write's statements run and their outcome is returned, then the transaction rolls back
    /// as one whose COMMIT failed: nothing of it stays but the clock's advance (the node's clock lives in memory), so
    /// the next write takes the same sequence number.
    public func write(_ request: WriteRequest, durable: Bool, commitFails: Bool = false) throws(MeridianError) -> WriteOutcome {
        let limits = self.limits
        let rule = rule(request.keyspace)
        let region = self.region
        let physicalMs = physicalClockMs()
        let (outcome, recorded) = try change(durable: durable, rollingBack: commitFails) { open throws(MeridianError) -> (WriteOutcome, Recorded) in
            guard open.contents.restorePending == nil else {
                throw MeridianError(.restorePending, "This region's store was restored and takes no write until the region has caught up from its peers.")
            }
            if let mark = request.idempotency {
                switch IdempotencyCheck.check(mark, against: open.contents.liveRecord(request.keyspace, mark.key, nowMs: physicalMs, limits: limits)) {
                case .apply: break
                case .replay(let record): return (.replayed(record), Recorded())
                case .reused(let error): return (.refused(error), Recorded())
                }
            }
            let current = open.contents.keys[request.keyspace]?[request.key]
            let sequence = open.contents.nextSequence
            let sealed = sealer?.isSealed(request.keyspace) == true ? sealer : nil
            // A CRDT operation plans on the opened value; the entry is sealed before it is logged or applied.
            var plan: WritePlan
            do throws(MeridianError) {
                var planned = current
                if let sealed, rule == .crdt, let current {
                    let contents = open.contents
                    planned = try sealerStep("Opening a value") { try sealed.opened(current, keyspace: request.keyspace, key: request.key, in: contents) }
                }
                plan = WritePlanner.plan(request, state: planned, rule: rule, origin: region, sequence: sequence, clock: &open.clock,
                                         physicalMs: physicalMs, limits: limits)
                if let sealed, case .append(let entry) = plan {
                    let subject = try sealed.subject(of: request.key, in: request.keyspace, given: request.subject)
                    plan = .append(try sealerStep("Sealing a value") { try sealed.sealing(entry, subject: subject, in: &open.contents) })
                }
            } catch {
                return (.refused(error), Recorded())
            }
            switch plan {
            case .refused(let error):
                return (.refused(error), Recorded())
            case .preconditionFailed(let version):
                return (.preconditionFailed(current: version), Recorded())
            case .append(let entry):
                open.contents.log[region, default: []].append(entry)
                open.contents.nextSequence = sequence + 1
                var recorded = try Self.apply(entry, rule: rule, to: &open.contents, nowMs: physicalMs, limits: limits, sealer: sealed)
                open.contents.hlcHighWater = open.clock.last
                recorded.evicted = open.contents.remember(entry, nowMs: physicalMs, limits: limits)
                return (.committed(entry), recorded)
            }
        }
        if commitFails {
            // As the node's group committer: a data key the rolled-back write created is gone with it.
            sealer?.forgetCurrentKeys()
            return outcome
        }
        if case .committed = outcome { observer?.commitCompleted(writes: 1, commitSeconds: 0) }
        report(request.keyspace, recorded)
        return outcome
    }

    public func idempotencyRecord(keyspace: KeyspaceName, key: IdempotencyKey) throws(MeridianError) -> IdempotencyRecord? {
        let (limits, nowMs) = (self.limits, physicalClockMs())
        return try reading { open in open.contents.liveRecord(keyspace, key, nowMs: nowMs, limits: limits) }
    }

    /// Conflict records added, and old ones dropped past the bound; idempotency keys forgotten early.
    struct Recorded: Sendable {
        var added = 0, dropped = 0, evicted = 0
        mutating func add(_ other: Recorded) {
            added += other.added
            dropped += other.dropped
            evicted += other.evicted
        }
    }

    /// Applies one entry to its key, records the losers, and notes the term it belongs to.
    private static func apply(_ entry: ReplicationEntry, rule: ConflictRule, to contents: inout Contents, nowMs: UInt64,
                              limits: Limits, sealer: ValueSealer?) throws(MeridianError) -> Recorded {
        let old = contents.keys[entry.keyspace]?[entry.key]
        let table = contents
        let change: KeyChange?
        if let sealer {
            change = try sealerStep("Applying a sealed entry") { try sealer.change(applying: entry, rule: rule, to: old, in: table) }
        } else {
            change = try KeyChange.applying(entry, rule: rule, to: old)
        }
        if entry.epoch > 0 {
            let term = TermKey(origin: entry.origin, epoch: entry.epoch)
            contents.terms[entry.keyspace, default: [:]][term] = max(contents.terms[entry.keyspace]?[term] ?? 0, entry.sequence)
        }
        guard let change else { return Recorded() }
        contents.keys[entry.keyspace, default: [:]][entry.key] = change.state
        return record(change, keyspace: entry.keyspace, key: entry.key, in: &contents, nowMs: nowMs, limits: limits)
    }

    /// Brings the conflicts log in line with a key's change, as the SQLite backend does: each loser recorded once
    /// (naming its latest winner), a restored version's record removed, the oldest dropped past the bound.
    private static func record(_ change: KeyChange, keyspace: KeyspaceName, key: Key, in contents: inout Contents, nowMs: UInt64, limits: Limits) -> Recorded {
        if let restored = change.restored {
            contents.conflicts.removeAll { $0.keyspace == keyspace && $0.key == key && $0.loser.dot == restored }
        }
        var recorded = Recorded()
        for loss in change.losses {
            if let index = contents.conflicts.firstIndex(where: { $0.keyspace == keyspace && $0.key == key && $0.loser.dot == loss.loser.dot }) {
                let held = contents.conflicts[index]
                contents.conflicts[index] = ConflictRecord(id: held.id, keyspace: keyspace, key: key, rule: held.rule, recordedMs: held.recordedMs,
                                                           loser: held.loser, winner: loss.winner.version)
                continue
            }
            contents.conflicts.append(ConflictRecord(id: contents.nextConflictID, keyspace: keyspace, key: key, rule: loss.rule, recordedMs: nowMs,
                                                     loser: KeyVersion(version: loss.loser.version, tombstone: loss.loser.tombstone,
                                                                       contentType: loss.loser.contentType, value: loss.loser.value),
                                                     winner: loss.winner.version))
            contents.nextConflictID += 1
            recorded.added += 1
            let held = contents.conflicts.filter { $0.keyspace == keyspace }
            if held.count > limits.conflictsLogMax {
                let dropped = Set(held.prefix(held.count - limits.conflictsLogMax).map(\.id))
                contents.conflicts.removeAll { dropped.contains($0.id) }
                recorded.dropped += dropped.count
            }
        }
        return recorded
    }

    private func report(_ keyspace: KeyspaceName, _ recorded: Recorded) {
        if recorded.evicted > 0 { observer?.idempotencyKeysEvicted(recorded.evicted) }
        guard recorded.added > 0 || recorded.dropped > 0 else { return }
        observer?.conflictsRecorded(keyspace: keyspace, recorded: recorded.added, dropped: recorded.dropped)
    }

    // MARK: - Keys

    public func get(keyspace: KeyspaceName, key: Key) throws(MeridianError) -> StoredValue? {
        let rule = rule(keyspace)
        let sealer = self.sealer
        return try reading { open throws(MeridianError) in
            guard let state = open.contents.keys[keyspace]?[key] else { return nil }
            var winner = state.winner(rule)
            if let sealer {
                let contents = open.contents
                winner = try sealerStep("Opening a value") { try sealer.opened(winner, keyspace: keyspace, key: key, in: contents) }
            }
            var value = StoredValue(keyspace: keyspace, key: key, winner: winner)
            value.concurrent = state.versions.count - 1
            return value
        }
    }

    public func state(keyspace: KeyspaceName, key: Key) throws(MeridianError) -> KeyState? {
        let sealer = self.sealer
        return try reading { open throws(MeridianError) in
            guard let state = open.contents.keys[keyspace]?[key] else { return nil }
            guard let sealer else { return state }
            let contents = open.contents
            return try sealerStep("Opening a value") { try sealer.opened(state, keyspace: keyspace, key: key, in: contents) }
        }
    }

    /// A keyspace's keys in ascending byte order, as SQLite compares text.
    private static func sortedKeys(_ keys: [Key: KeyState]?) -> [Key] {
        (keys.map { Array($0.keys) } ?? []).sorted { Array($0.rawValue.utf8).lexicographicallyPrecedes(Array($1.rawValue.utf8)) }
    }

    public func list(keyspace: KeyspaceName, prefix: String, after: String?, limit: Int) throws(MeridianError) -> [ListedKey] {
        precondition(limit > 0)
        let rule = rule(keyspace)
        let prefixBytes = Array(prefix.utf8)
        let afterBytes = after.map { Array($0.utf8) }
        return try reading { open in
            let keys = open.contents.keys[keyspace] ?? [:]
            var listed: [ListedKey] = []
            for key in Self.sortedKeys(keys) {
                let bytes = Array(key.rawValue.utf8)
                guard bytes.starts(with: prefixBytes) else { continue }
                if let afterBytes, !afterBytes.lexicographicallyPrecedes(bytes) { continue }
                let winner = keys[key]!.winner(rule)
                guard !winner.tombstone else { continue }
                listed.append(ListedKey(key: key, version: winner.version, valueBytes: winner.value.count, contentType: winner.contentType,
                                        dependencies: winner.dependencies))
                if listed.count == limit { break }
            }
            return listed
        }
    }

    public func keyCounts() throws(MeridianError) -> [String: Int] {
        try reading { open in
            var counts: [String: Int] = [:]
            for (keyspace, keys) in open.contents.keys {
                let rule = rule(keyspace)
                let live = keys.values.filter { !$0.winner(rule).tombstone }.count
                if live > 0 { counts[keyspace.rawValue] = live }
            }
            return counts
        }
    }

    // MARK: - Replication logs

    public func appliedHighWater() -> [RegionName: UInt64] {
        // What the disk holds: a step applied visibly is durable once any durable step followed it.
        disk.contents.withLock { contents in contents.map(Self.highWater) } ?? state.withLock { Self.highWater($0.contents) }
    }

    /// What the open store holds, visible steps not yet synced included (nil once closed), for a simulator's checks.
    public var visibleContents: Contents? {
        state.withLock { $0.closed ? nil : $0.contents }
    }

    public func visibleHighWater() -> [RegionName: UInt64] {
        state.withLock { Self.highWater($0.contents) }
    }

    private static func highWater(_ contents: Contents) -> [RegionName: UInt64] {
        var applied = contents.applied
        let own = contents.nextSequence - 1
        if own > 0 { applied[contents.region] = own }
        return applied
    }

    public func syncApplied() throws(MeridianError) -> [RegionName: UInt64] {
        try changing { _ in }
        return appliedHighWater()
    }

    public func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                                diverted: [UInt64: UInt64]) throws(MeridianError) -> UInt64 {
        try applyReplicated(origin: origin, from: from, through: through, entries: entries, diverted: diverted, durable: true)
    }

    public func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                                diverted: [UInt64: UInt64], durable: Bool) throws(MeridianError) -> UInt64 {
        try ReplicatedRange.check(origin: origin, from: from, through: through, entries: entries, region: region)
        let limits = self.limits
        let physicalMs = physicalClockMs()
        var recorded: [KeyspaceName: Recorded] = [:]
        let after = try (durable ? changing : visibly) { open throws(MeridianError) -> UInt64 in
            let applied = open.contents.applied[origin] ?? 0
            guard from <= applied + 1 else {
                throw MeridianError(.replicationProtocol, "\(origin)'s log skipped from \(applied) to \(from); the stream must resume from \(applied).",
                                    context: ["origin": origin.rawValue, "expected": String(applied + 1), "received": String(from)])
            }
            guard through > applied else { return applied }
            for entry in entries where entry.sequence > applied {
                if let successor = diverted[entry.sequence] {
                    Self.insertDiverted(entry, successorEpoch: successor, into: &open.contents, nowMs: physicalMs)
                    continue
                }
                open.contents.log[origin, default: []].append(entry)
                var step = try Self.apply(entry, rule: rule(entry.keyspace), to: &open.contents, nowMs: physicalMs, limits: limits, sealer: sealer)
                step.evicted = open.contents.remember(entry, nowMs: physicalMs, limits: limits)
                recorded[entry.keyspace, default: Recorded()].add(step)
                Self.receive(entry.hlc, clock: &open.clock, physicalMs: physicalMs)
            }
            open.contents.applied[origin] = through
            open.contents.hlcHighWater = open.clock.last
            return through
        }
        for (keyspace, counts) in recorded { report(keyspace, counts) }
        return after
    }

    /// Moves the clock past another region's timestamp unless it leads this region's wall clock by more than
    /// the maximum offset (as the SQLite backend's transaction clock).
    private static func receive(_ remote: HLCTimestamp, clock: inout HybridLogicalClock, physicalMs: UInt64) {
        guard remote.physicalMs <= physicalMs || remote.physicalMs - physicalMs <= clock.maxOffsetMs else { return }
        clock.advance(past: remote)
    }

    public func raiseApplied(origin: RegionName, to sequence: UInt64) throws(MeridianError) -> UInt64 {
        guard origin != region else { return appliedHighWater()[region] ?? 0 }
        return try changing { open in
            open.contents.applied[origin] = max(open.contents.applied[origin] ?? 0, sequence)
            return open.contents.applied[origin]!
        }
    }

    public func logEntries(origin: RegionName, after sequence: UInt64, limit: Int) throws(MeridianError) -> [ReplicationEntry] {
        try reading { open in Array((open.contents.log[origin] ?? []).lazy.filter { $0.sequence > sequence }.prefix(limit)) }
    }

    public func logFloor() -> UInt64 {
        state.withLock { $0.contents.logFloor }
    }

    public func trimLog(origin: RegionName, through sequence: UInt64) throws(MeridianError) {
        let own = origin == region
        try changing { open in
            guard !own || sequence > open.contents.logFloor else { return }
            open.contents.log[origin]?.removeAll { $0.sequence <= sequence }
            if own { open.contents.logFloor = sequence }
        }
    }

    // MARK: - Repair

    public func merkleTree(keyspace: KeyspaceName) throws(MeridianError) -> (tree: MerkleTree, keys: Int) {
        try reading { open in
            var builder = MerkleTree.Builder()
            let keys = open.contents.keys[keyspace] ?? [:]
            for key in Self.sortedKeys(keys) { builder.add(key, state: keys[key]!) }
            return (builder.tree, builder.keys)
        }
    }

    public func merkleSlots(keyspace: KeyspaceName, buckets: [Int]) throws(MeridianError) -> MerkleSlots {
        try reading { open in
            MerkleSlots(buckets: buckets, states: (open.contents.keys[keyspace] ?? [:]).map { (key: $0.key, state: $0.value) })
        }
    }

    /// The keys of some slots in slot order, and in key order (UTF-8 bytes) within a slot, as a SQLite store reads them.
    private static func keys(_ keys: [Key: KeyState], slots: [ClosedRange<Int>], after: Key?) -> [Key] {
        let placed = keys.keys.map { (slot: MerkleTree.slot(of: $0), bytes: Array($0.rawValue.utf8), key: $0) }
            .sorted { $0.slot != $1.slot ? $0.slot < $1.slot : $0.bytes.lexicographicallyPrecedes($1.bytes) }
        var wanted: [Key] = []
        for seek in MerkleTree.seeks(slots, after: after) {
            let afterBytes = seek.after.map { Array($0.rawValue.utf8) }
            for key in placed where seek.slots.contains(key.slot) && afterBytes.map({ $0.lexicographicallyPrecedes(key.bytes) }) ?? true {
                wanted.append(key.key)
            }
        }
        return wanted
    }

    public func items(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) throws(MeridianError) -> (items: [(key: Key, item: MerkleTree.Leaf)], next: Key?) {
        try reading { open in
            let keys = open.contents.keys[keyspace] ?? [:]
            var items: [(key: Key, item: MerkleTree.Leaf)] = []
            var bytes = 4
            for key in Self.keys(keys, slots: slots, after: after) {
                let size = KeyItemCodec.bytes(key)
                if !items.isEmpty && bytes + size > bytesMax { return (items, items.last?.key) }
                bytes += size
                items.append((key, MerkleTree.item(key, state: keys[key]!)))
            }
            return (items, nil)
        }
    }

    public func states(keyspace: KeyspaceName, keys: [Key]) throws(MeridianError) -> [(key: Key, state: KeyState)] {
        try reading { open in
            let held = open.contents.keys[keyspace] ?? [:]
            return keys.compactMap { key in held[key].map { (key, $0) } }
        }
    }

    public func states(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) throws(MeridianError) -> (states: [(key: Key, state: KeyState)], next: Key?) {
        try reading { open in
            let keys = open.contents.keys[keyspace] ?? [:]
            var page = KeyStatePage(bytesMax: bytesMax)
            for key in Self.keys(keys, slots: slots, after: after) where !page.add(key, keys[key]!) { break }
            return (page.states, page.next)
        }
    }

    public func merge(keyspace: KeyspaceName, states: [(key: Key, state: KeyState)]) throws(MeridianError) -> Int {
        guard !states.isEmpty else { return 0 }
        let rule = rule(keyspace)
        let limits = self.limits
        let physicalMs = physicalClockMs()
        let sealer = self.sealer
        let (changed, recorded) = try changing { open throws(MeridianError) in
            var changed = 0, recorded = Recorded()
            for item in states {
                let local = open.contents.keys[keyspace]?[item.key]
                let contents = open.contents
                var merged = item.state
                if let local, let sealer {
                    merged = try sealerStep("Merging a sealed state") { try sealer.merged(local, with: item.state, rule: rule, keyspace: keyspace, key: item.key, in: contents) }
                } else if let local {
                    merged = local.merged(with: item.state, rule: rule)
                }
                guard merged != local else { continue }
                for version in item.state.versions { Self.receive(version.version.hlc, clock: &open.clock, physicalMs: physicalMs) }
                open.contents.keys[keyspace, default: [:]][item.key] = merged
                recorded.add(Self.record(KeyChange.changes(old: local, new: merged, rule: rule), keyspace: keyspace, key: item.key,
                                        in: &open.contents, nowMs: physicalMs, limits: limits))
                changed += 1
            }
            open.contents.hlcHighWater = open.clock.last
            return (changed, recorded)
        }
        report(keyspace, recorded)
        return changed
    }

    public func replaceStates(keyspace: KeyspaceName, _ states: [(key: Key, state: KeyState?)]) throws(MeridianError) {
        try changing { open in
            for item in states { open.contents.keys[keyspace, default: [:]][item.key] = item.state }
        }
    }

    // MARK: - Conflicts log

    public func conflicts(keyspace: KeyspaceName, key: Key?, after: Int64, limit: Int) throws(MeridianError) -> [ConflictRecord] {
        precondition(limit > 0)
        let sealer = self.sealer
        return try reading { open throws(MeridianError) in
            let records = Array(open.contents.conflicts.lazy.filter { $0.keyspace == keyspace && $0.id > after && (key == nil || $0.key == key) }.prefix(limit))
            guard let sealer else { return records }
            let contents = open.contents
            // A record whose value was erased is left out, as the SQLite backend does.
            return try sealerStep("Opening a conflict record") {
                try records.compactMap { record in
                    try ValueSealer.unlessErased {
                        ConflictRecord(id: record.id, keyspace: keyspace, key: record.key, rule: record.rule, recordedMs: record.recordedMs,
                                       loser: try sealer.opened(record.loser, keyspace: keyspace, key: record.key, in: contents), winner: record.winner)
                    }
                }
            }
        }
    }

    public func conflictCounts() throws(MeridianError) -> [String: Int] {
        try reading { open in
            var counts: [String: Int] = [:]
            for record in open.contents.conflicts { counts[record.keyspace.rawValue, default: 0] += 1 }
            return counts
        }
    }

    // MARK: - Elections, terms, divergence, failovers

    public func terms(keyspace: KeyspaceName, limit: Int) throws(MeridianError) -> [TermEnd] {
        try reading { open in
            let held = (open.contents.terms[keyspace] ?? [:]).map { TermEnd(epoch: $0.key.epoch, leader: $0.key.origin, last: $0.value) }
            return Array(held.sorted { ($0.epoch, $0.leader.rawValue) > ($1.epoch, $1.leader.rawValue) }.prefix(limit))
        }
    }

    public func raiseTerms(keyspace: KeyspaceName, _ terms: [TermEnd]) throws(MeridianError) {
        try changing { open in
            for term in terms {
                let key = TermKey(origin: term.leader, epoch: term.epoch)
                open.contents.terms[keyspace, default: [:]][key] = max(open.contents.terms[keyspace]?[key] ?? 0, term.last)
            }
        }
    }

    public func elections() throws(MeridianError) -> [KeyspaceName: StoredElection] {
        try reading { open in open.contents.elections }
    }

    public func saveElection(_ keyspace: KeyspaceName, _ election: StoredElection) throws(MeridianError) {
        try changing { open in open.contents.elections[keyspace] = election }
    }

    public func newestEpoch(keyspace: KeyspaceName) throws(MeridianError) -> (epoch: UInt64, origin: RegionName)? {
        try reading { open in
            var newest: (epoch: UInt64, origin: RegionName)?
            for entries in open.contents.log.values {
                for entry in entries where entry.keyspace == keyspace && entry.epoch >= (newest?.epoch ?? 0) { newest = (entry.epoch, entry.origin) }
            }
            return newest
        }
    }

    public func divertHeld(keyspace: KeyspaceName, origin: RegionName, after: UInt64, epoch: UInt64?, successorEpoch: UInt64,
                           nowMs: UInt64) throws(MeridianError) -> Set<Key> {
        try changing { open in
            var keys: Set<Key> = []
            for entry in open.contents.log[origin] ?? [] where entry.sequence > after && entry.keyspace == keyspace && entry.epoch < successorEpoch
                && (epoch == nil || entry.epoch == epoch) {
                Self.insertDiverted(entry, successorEpoch: successorEpoch, into: &open.contents, nowMs: nowMs)
                keys.insert(entry.key)
                // A write kept aside is no longer applied here: a retry of it must apply again.
                if let mark = entry.idempotency, open.contents.idempotency[keyspace]?[mark.key]?.version == entry.version {
                    open.contents.idempotency[keyspace]![mark.key] = nil
                }
            }
            for (term, last) in open.contents.terms[keyspace] ?? [:] where term.origin == origin && term.epoch < successorEpoch
                && (epoch == nil || term.epoch == epoch) && last > after {
                open.contents.terms[keyspace]![term] = after
            }
            return keys
        }
    }

    public func loggedThrough(keyspace: KeyspaceName, origin: RegionName, epoch: UInt64) throws(MeridianError) -> UInt64 {
        try reading { open in
            (open.contents.log[origin] ?? []).last { $0.keyspace == keyspace && $0.epoch == epoch }?.sequence ?? 0
        }
    }

    private static func insertDiverted(_ entry: ReplicationEntry, successorEpoch: UInt64, into contents: inout Contents, nowMs: UInt64) {
        guard !contents.divergence.contains(where: { $0.origin == entry.origin && $0.sequence == entry.sequence }) else { return }
        contents.divergence.append(DivergedWrite(
            id: contents.nextDivergenceID, keyspace: entry.keyspace, key: entry.key, origin: entry.origin, sequence: entry.sequence, epoch: entry.epoch,
            successorEpoch: successorEpoch, hlc: entry.hlc, operation: entry.operation, contentType: entry.contentType, value: entry.value,
            recordedMs: nowMs, reappliedMs: nil))
        contents.nextDivergenceID += 1
    }

    public func divergence(keyspace: KeyspaceName?, after: Int64, limit: Int) throws(MeridianError) -> [DivergedWrite] {
        let sealer = self.sealer
        return try reading { open throws(MeridianError) in
            let writes = Array(open.contents.divergence.lazy.filter { ($0.keyspace == keyspace || keyspace == nil) && $0.id > after }.prefix(limit))
            let contents = open.contents
            // A write whose value was erased is left out, as the SQLite backend does.
            return try sealerStep("Opening a kept-aside write") {
                try writes.compactMap { write in try ValueSealer.unlessErased { try Self.opened(write, sealer: sealer, in: contents) } }
            }
        }
    }

    public func divergedWrite(id: Int64) throws(MeridianError) -> DivergedWrite? {
        let sealer = self.sealer
        return try reading { open throws(MeridianError) in
            let contents = open.contents
            return try open.contents.divergence.first { $0.id == id }.map { write throws(MeridianError) in
                try sealerStep("Opening a kept-aside write") { try Self.opened(write, sealer: sealer, in: contents) }
            }
        }
    }

    /// A kept-aside write with its value opened (a sealed keyspace's).
    private static func opened(_ write: DivergedWrite, sealer: ValueSealer?, in contents: Contents) throws -> DivergedWrite {
        guard let sealer, sealer.isSealed(write.keyspace) else { return write }
        let value = try sealer.open(write.value, keyspace: write.keyspace, key: write.key, version: Version(hlc: write.hlc, sequence: write.sequence), in: contents)
        return DivergedWrite(id: write.id, keyspace: write.keyspace, key: write.key, origin: write.origin, sequence: write.sequence, epoch: write.epoch,
                             successorEpoch: write.successorEpoch, hlc: write.hlc, operation: write.operation, contentType: write.contentType,
                             value: value, recordedMs: write.recordedMs, reappliedMs: write.reappliedMs)
    }

    // MARK: - Audit trail

    public func appendAudit(_ drafts: [AuditDraft]) throws(MeridianError) -> [AuditRecord] {
        let (region, recordsMax) = (self.region, limits.auditRecordsMax)
        return try changing { open in
            var chain = open.contents.audit.last.map { AuditChain(region: region, sequence: $0.sequence, hash: $0.hash) }
                ?? AuditChain(region: region, sequence: open.contents.auditAnchor.sequence, hash: open.contents.auditAnchor.hash)
            let records = chain.append(drafts)
            open.contents.audit += records
            if open.contents.audit.count > recordsMax {
                let dropped = open.contents.audit.count - recordsMax
                let last = open.contents.audit[dropped - 1]
                open.contents.auditAnchor = AuditAnchor(sequence: last.sequence, hash: last.hash)
                open.contents.audit.removeFirst(dropped)
            }
            return records
        }
    }

    public func auditRecords(after: UInt64, limit: Int) throws(MeridianError) -> (records: [AuditRecord], anchor: AuditAnchor) {
        try reading { open in (Array(open.contents.audit.lazy.filter { $0.sequence > after }.prefix(limit)), open.contents.auditAnchor) }
    }

    public func backup(to path: String) throws(MeridianError) -> BackupSummary {
        throw MeridianError(.invalidRequest, "Region \(region) keeps its data in memory: there is no file to back up. Run it with the SQLite store to take backups.")
    }

    /// Marks this store as a restored copy (tests of a restore's catch-up; the in-memory store has no file to restore).
    public func markRestored() {
        state.withLock { $0.contents.restorePending = $0.contents.nextSequence - 1 }
    }

    public func restorePending() throws(MeridianError) -> UInt64? {
        try reading { open in open.contents.restorePending }
    }

    public func finishRestore(logEnd: UInt64) throws(MeridianError) {
        try changing { open in
            if logEnd >= open.contents.nextSequence {
                open.contents.nextSequence = logEnd + 1
                open.contents.logFloor = max(open.contents.logFloor, logEnd)
            }
            open.contents.restorePending = nil
        }
    }

    public func lastAuditRecord(_ kind: AuditRecord.Kind) throws(MeridianError) -> AuditRecord? {
        try reading { open in open.contents.audit.last { $0.kind == kind } }
    }

    public func auditHead() throws(MeridianError) -> AuditChain {
        let region = self.region
        return try reading { open in
            open.contents.audit.last.map { AuditChain(region: region, sequence: $0.sequence, hash: $0.hash) }
                ?? AuditChain(region: region, sequence: open.contents.auditAnchor.sequence, hash: open.contents.auditAnchor.hash)
        }
    }

    public func witness(_ checkpoint: AuditCheckpoint, publicKey: [UInt8]) throws(MeridianError) {
        try changing { open throws(MeridianError) in
            try checkpoint.admit(publicKey: publicKey, pinned: open.contents.auditKeys[checkpoint.region])
            open.contents.auditKeys[checkpoint.region] = publicKey
            var held = open.contents.witnessed[checkpoint.region, default: []]
            guard !held.contains(where: { $0.sequence == checkpoint.sequence }) else { return }
            held.append(checkpoint)
            held.sort { $0.sequence < $1.sequence }
            open.contents.witnessed[checkpoint.region] = Array(held.suffix(AuditBounds.witnessedPerRegionMax))
        }
    }

    public func witnessed(region: RegionName, limit: Int) throws(MeridianError) -> (publicKey: [UInt8]?, checkpoints: [AuditCheckpoint]) {
        try reading { open in (open.contents.auditKeys[region], Array(open.contents.witnessed[region, default: []].suffix(limit))) }
    }

    // MARK: - Data keys

    public func missingDataKeys(_ values: [(keyspace: KeyspaceName, value: [UInt8])]) throws(MeridianError) -> [KeyspaceName: Set<DataKeyID>] {
        guard let sealer else { return [:] }
        return try reading { open throws(MeridianError) in
            let contents = open.contents
            return try sealerStep("Looking up data keys") { try sealer.missing(values, in: contents) }
        }
    }

    public func grantDataKeys(keyspace: KeyspaceName, ids: [DataKeyID]) throws(MeridianError) -> (granted: [DataKeyGrant], erased: [DataKeyID]) {
        guard let sealer else { return ([], []) }
        return try reading { open throws(MeridianError) in
            let contents = open.contents
            return try sealerStep("Granting data keys") { try sealer.grants(keyspace: keyspace, ids: ids, in: contents) }
        }
    }

    public func installDataKeys(keyspace: KeyspaceName, _ grants: [DataKeyGrant], erased: [DataKeyID], nowMs: UInt64) throws(MeridianError) {
        guard let sealer else { return }
        try changing { open throws(MeridianError) in
            for id in erased {
                open.contents.dataKeys[keyspace]?[id] = nil
                open.contents.erasedKeys[keyspace, default: []].insert(id)
            }
            sealer.forget(keyspace: keyspace, ids: erased)
            try sealerStep("Storing granted data keys") { try sealer.install(grants, keyspace: keyspace, in: &open.contents) }
        }
    }

    public func erasedDataKeys(keyspace: KeyspaceName, after: DataKeyID?, limit: Int) throws(MeridianError) -> [DataKeyID] {
        try reading { open in Array((open.contents.erasedKeys[keyspace] ?? []).filter { after == nil || after! < $0 }.sorted().prefix(limit)) }
    }

    public func rewrapDataKeys(limit: Int) throws(MeridianError) -> Int {
        guard let sealer else { return 0 }
        return try changing { open throws(MeridianError) -> Int in
            let epoch = sealer.epoch
            let stale = open.contents.dataKeys.values.flatMap(\.values).filter { $0.wrapped.epoch < epoch }.prefix(limit)
            for stored in stale {
                open.contents.dataKeys[stored.keyspace]?[stored.id] = try sealerStep("Wrapping a data key again") { try sealer.rewrapped(stored) }
            }
            return stale.count
        }
    }

    public func dataKeyEpochs() throws(MeridianError) -> [UInt32: Int] {
        try reading { open in
            var counts: [UInt32: Int] = [:]
            for stored in open.contents.dataKeys.values.flatMap(\.values) { counts[stored.wrapped.epoch, default: 0] += 1 }
            return counts
        }
    }

    public func erase(keyspace: KeyspaceName, subject: Subject, nowMs: UInt64) throws(MeridianError) -> [DataKeyID] {
        guard let sealer else { return [] }
        let ids = try changing { open throws(MeridianError) -> [DataKeyID] in
            let ids = (open.contents.dataKeys[keyspace] ?? [:]).values.filter { $0.subject == subject }.map(\.id).sorted()
            for id in ids {
                open.contents.dataKeys[keyspace]?[id] = nil
                open.contents.erasedKeys[keyspace, default: []].insert(id)
            }
            sealer.forget(keyspace: keyspace, ids: ids)
            return ids
        }
        return ids
    }

    public func markReapplied(id: Int64, nowMs: UInt64) throws(MeridianError) -> Bool {
        try changing { open in Self.setReapplied(id: id, to: nowMs, in: &open.contents, onlyIfUnset: true) }
    }

    public func unmarkReapplied(id: Int64) throws(MeridianError) {
        try changing { open in _ = Self.setReapplied(id: id, to: nil, in: &open.contents, onlyIfUnset: false) }
    }

    private static func setReapplied(id: Int64, to ms: UInt64?, in contents: inout Contents, onlyIfUnset: Bool) -> Bool {
        guard let index = contents.divergence.firstIndex(where: { $0.id == id }) else { return false }
        let held = contents.divergence[index]
        if onlyIfUnset && held.reappliedMs != nil { return false }
        contents.divergence[index] = DivergedWrite(
            id: held.id, keyspace: held.keyspace, key: held.key, origin: held.origin, sequence: held.sequence, epoch: held.epoch,
            successorEpoch: held.successorEpoch, hlc: held.hlc, operation: held.operation, contentType: held.contentType, value: held.value,
            recordedMs: held.recordedMs, reappliedMs: ms)
        return true
    }

    public func divergenceCounts() throws(MeridianError) -> [String: Int] {
        try reading { open in
            var counts: [String: Int] = [:]
            for write in open.contents.divergence { counts["\(write.keyspace)/\(write.successorEpoch)", default: 0] += 1 }
            return counts
        }
    }

    public func recordFailover(keyspace: KeyspaceName, epoch: UInt64, leader: RegionName, previousLeader: RegionName?,
                               lastHeardMs: UInt64?, suspectedMs: UInt64, electedMs: UInt64, reason: String) throws(MeridianError) {
        try changing { open in
            guard !open.contents.failovers.contains(where: { $0.keyspace == keyspace && $0.epoch == epoch }) else { return }
            open.contents.failovers.append(FailoverEvent(
                id: open.contents.nextFailoverID, keyspace: keyspace, epoch: epoch, leader: leader, previousLeader: previousLeader,
                lastHeardMs: lastHeardMs, suspectedMs: suspectedMs, electedMs: electedMs, firstWriteMs: nil, reason: reason))
            open.contents.nextFailoverID += 1
        }
    }

    public func recordFirstWrite(keyspace: KeyspaceName, epoch: UInt64, atMs: UInt64) throws(MeridianError) {
        try changing { open in
            guard let index = open.contents.failovers.firstIndex(where: { $0.keyspace == keyspace && $0.epoch == epoch }),
                  open.contents.failovers[index].firstWriteMs == nil else { return }
            let held = open.contents.failovers[index]
            open.contents.failovers[index] = FailoverEvent(
                id: held.id, keyspace: held.keyspace, epoch: held.epoch, leader: held.leader, previousLeader: held.previousLeader,
                lastHeardMs: held.lastHeardMs, suspectedMs: held.suspectedMs, electedMs: held.electedMs, firstWriteMs: atMs, reason: held.reason)
        }
    }

    public func failovers(limit: Int) throws(MeridianError) -> [FailoverEvent] {
        try reading { open in Array(open.contents.failovers.suffix(limit)) }
    }
}

/// One ``MemoryDisk`` per region, for a whole simulated or test cluster.
public final class MemoryDisks: Sendable {
    private let disks = Mutex<[RegionName: MemoryDisk]>([:])

    public init() {}

    public func disk(for region: RegionName) -> MemoryDisk {
        disks.withLock { disks in
            if let disk = disks[region] { return disk }
            let disk = MemoryDisk()
            disks[region] = disk
            return disk
        }
    }
}

extension MemoryStore.Contents {
    /// The record of `key` in `keyspace` if it is still within `idempotency_ttl_ms`.
    func liveRecord(_ keyspace: KeyspaceName, _ key: IdempotencyKey, nowMs: UInt64, limits: Limits) -> IdempotencyRecord? {
        idempotency[keyspace]?[key].flatMap { $0.isLive(nowMs: nowMs, ttlMs: UInt64(limits.idempotencyTtlMs)) ? $0 : nil }
    }

    /// Records an applied entry's idempotency mark (a live record of the key is kept: the first outcome answers),
    /// forgets expired records, and the oldest past `idempotency_keys_max`. - Returns: live records forgotten early.
    mutating func remember(_ entry: ReplicationEntry, nowMs: UInt64, limits: Limits) -> Int {
        guard let record = IdempotencyRecord(entry, recordedMs: nowMs),
              liveRecord(entry.keyspace, record.mark.key, nowMs: nowMs, limits: limits) == nil else { return 0 }
        idempotency[entry.keyspace, default: [:]][record.mark.key] = record
        let held = idempotency.values.reduce(0) { $0 + $1.count }
        guard held > limits.idempotencyKeysMax else { return 0 }
        var all = idempotency.flatMap { keyspace, records in records.values.map { (keyspace, $0) } }
        all.sort { $0.1.recordedMs < $1.1.recordedMs }
        var evicted = 0
        for (keyspace, oldest) in all.prefix(held - limits.idempotencyKeysMax) {
            if oldest.isLive(nowMs: nowMs, ttlMs: UInt64(limits.idempotencyTtlMs)) { evicted += 1 }
            idempotency[keyspace]![oldest.mark.key] = nil
        }
        return evicted
    }
}

extension MemoryStore.Contents: DataKeyTable {
    public func dataKey(keyspace: KeyspaceName, id: DataKeyID) throws -> StoredDataKey? { dataKeys[keyspace]?[id] }

    public func dataKeys(keyspace: KeyspaceName, subject: Subject) throws -> [StoredDataKey] {
        (dataKeys[keyspace] ?? [:]).values.filter { $0.subject == subject }.sorted { $0.id < $1.id }
    }

    public func isErased(keyspace: KeyspaceName, id: DataKeyID) throws -> Bool { erasedKeys[keyspace]?.contains(id) ?? false }

    public mutating func insert(_ key: StoredDataKey) throws {
        guard dataKeys[key.keyspace]?[key.id] == nil else { return }
        dataKeys[key.keyspace, default: [:]][key.id] = key
    }
}
