// Proves the leadership shell's ordering with a store whose election saves are held until the test releases
// them: the region machine's effects are carried in order, so no election frame leaves while the persist
// before it is in flight; events arriving meanwhile wait their turn; and once the save is durable the frames
// follow. The machine is never held across the store call (queries answer while the save waits).
import Foundation
import Logging
import MeridianCore
@testable import MeridianNode
import MeridianStorage
import Synchronization
import Testing

/// The in-memory store, with every `saveElection` held until released.
final class HeldElectionStore: RegionStorage {
    let inner: MemoryStore
    private let held = Mutex<(saving: Int, saved: Int, release: [CheckedContinuation<Void, Never>], open: Bool)>((0, 0, [], false))

    init(_ inner: MemoryStore) { self.inner = inner }

    /// Saves started and not finished, and saves finished.
    var saving: Int { held.withLock { $0.saving } }
    var saved: Int { held.withLock { $0.saved } }

    /// Lets every held save (and every later one) through.
    func releaseAll() {
        let waiting = held.withLock { state in
            state.open = true
            defer { state.release = [] }
            return state.release
        }
        for continuation in waiting { continuation.resume() }
    }

    func saveElection(_ keyspace: KeyspaceName, _ election: StoredElection) async throws(MeridianError) {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let open = held.withLock { state in
                state.saving += 1
                if !state.open { state.release.append(continuation) }
                return state.open
            }
            if open { continuation.resume() }
        }
        try inner.saveElection(keyspace, election)
        held.withLock { state in
            state.saving -= 1
            state.saved += 1
        }
    }

    var region: RegionName { inner.region }
    var writeFaults: WriteFaults { inner.writeFaults }
    func close() { inner.close() }
    func write(_ request: WriteRequest) async throws(MeridianError) -> WriteOutcome { try inner.write(request) }
    func idempotencyRecord(keyspace: KeyspaceName, key: IdempotencyKey) async throws(MeridianError) -> IdempotencyRecord? {
        try inner.idempotencyRecord(keyspace: keyspace, key: key)
    }
    func get(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> StoredValue? { try inner.get(keyspace: keyspace, key: key) }
    func state(keyspace: KeyspaceName, key: Key) async throws(MeridianError) -> KeyState? { try inner.state(keyspace: keyspace, key: key) }
    func list(keyspace: KeyspaceName, prefix: String, after: String?, limit: Int) async throws(MeridianError) -> [ListedKey] {
        try inner.list(keyspace: keyspace, prefix: prefix, after: after, limit: limit)
    }
    func keyCounts() async throws(MeridianError) -> [String: Int] { try inner.keyCounts() }
    func appliedHighWater() -> [RegionName: UInt64] { inner.appliedHighWater() }
    func visibleHighWater() -> [RegionName: UInt64] { inner.visibleHighWater() }
    func applyReplicated(origin: RegionName, from: UInt64, through: UInt64, entries: [ReplicationEntry],
                         diverted: [UInt64: UInt64], durable: Bool) async throws(MeridianError) -> UInt64 {
        try inner.applyReplicated(origin: origin, from: from, through: through, entries: entries, diverted: diverted, durable: durable)
    }
    func syncApplied() async throws(MeridianError) -> [RegionName: UInt64] { try inner.syncApplied() }
    func raiseApplied(origin: RegionName, to sequence: UInt64) async throws(MeridianError) -> UInt64 { try inner.raiseApplied(origin: origin, to: sequence) }
    func logEntries(origin: RegionName, after sequence: UInt64, limit: Int) async throws(MeridianError) -> [ReplicationEntry] {
        try inner.logEntries(origin: origin, after: sequence, limit: limit)
    }
    func logFloor() -> UInt64 { inner.logFloor() }
    func trimLog(origin: RegionName, through sequence: UInt64) async throws(MeridianError) { try inner.trimLog(origin: origin, through: sequence) }
    func merkleTree(keyspace: KeyspaceName) async throws(MeridianError) -> (tree: MerkleTree, keys: Int) { try inner.merkleTree(keyspace: keyspace) }
    func merkleSlots(keyspace: KeyspaceName, buckets: [Int]) async throws(MeridianError) -> MerkleSlots { try inner.merkleSlots(keyspace: keyspace, buckets: buckets) }
    func items(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (items: [(key: Key, item: MerkleTree.Leaf)], next: Key?) {
        try inner.items(keyspace: keyspace, slots: slots, after: after, bytesMax: bytesMax)
    }
    func states(keyspace: KeyspaceName, keys: [Key]) async throws(MeridianError) -> [(key: Key, state: KeyState)] { try inner.states(keyspace: keyspace, keys: keys) }
    func states(keyspace: KeyspaceName, slots: [ClosedRange<Int>], after: Key?, bytesMax: Int) async throws(MeridianError) -> (states: [(key: Key, state: KeyState)], next: Key?) {
        try inner.states(keyspace: keyspace, slots: slots, after: after, bytesMax: bytesMax)
    }
    func merge(keyspace: KeyspaceName, states: [(key: Key, state: KeyState)]) async throws(MeridianError) -> Int { try inner.merge(keyspace: keyspace, states: states) }
    func replaceStates(keyspace: KeyspaceName, _ states: [(key: Key, state: KeyState?)]) async throws(MeridianError) { try inner.replaceStates(keyspace: keyspace, states) }
    func conflicts(keyspace: KeyspaceName, key: Key?, after: Int64, limit: Int) async throws(MeridianError) -> [ConflictRecord] {
        try inner.conflicts(keyspace: keyspace, key: key, after: after, limit: limit)
    }
    func conflictCounts() async throws(MeridianError) -> [String: Int] { try inner.conflictCounts() }
    func terms(keyspace: KeyspaceName, limit: Int) async throws(MeridianError) -> [TermEnd] { try inner.terms(keyspace: keyspace, limit: limit) }
    func raiseTerms(keyspace: KeyspaceName, _ terms: [TermEnd]) async throws(MeridianError) { try inner.raiseTerms(keyspace: keyspace, terms) }
    func elections() async throws(MeridianError) -> [KeyspaceName: StoredElection] { try inner.elections() }
    func newestEpoch(keyspace: KeyspaceName) async throws(MeridianError) -> (epoch: UInt64, origin: RegionName)? { try inner.newestEpoch(keyspace: keyspace) }
    func divertHeld(keyspace: KeyspaceName, origin: RegionName, after: UInt64, epoch: UInt64?, successorEpoch: UInt64,
                    nowMs: UInt64) async throws(MeridianError) -> Set<Key> {
        try inner.divertHeld(keyspace: keyspace, origin: origin, after: after, epoch: epoch, successorEpoch: successorEpoch, nowMs: nowMs)
    }
    func loggedThrough(keyspace: KeyspaceName, origin: RegionName, epoch: UInt64) async throws(MeridianError) -> UInt64 {
        try inner.loggedThrough(keyspace: keyspace, origin: origin, epoch: epoch)
    }
    func divergence(keyspace: KeyspaceName?, after: Int64, limit: Int) async throws(MeridianError) -> [DivergedWrite] {
        try inner.divergence(keyspace: keyspace, after: after, limit: limit)
    }
    func divergedWrite(id: Int64) async throws(MeridianError) -> DivergedWrite? { try inner.divergedWrite(id: id) }
    func markReapplied(id: Int64, nowMs: UInt64) async throws(MeridianError) -> Bool { try inner.markReapplied(id: id, nowMs: nowMs) }
    func unmarkReapplied(id: Int64) async throws(MeridianError) { try inner.unmarkReapplied(id: id) }
    func divergenceCounts() async throws(MeridianError) -> [String: Int] { try inner.divergenceCounts() }
    func recordFailover(keyspace: KeyspaceName, epoch: UInt64, leader: RegionName, previousLeader: RegionName?,
                        lastHeardMs: UInt64?, suspectedMs: UInt64, electedMs: UInt64, reason: String) async throws(MeridianError) {
        try inner.recordFailover(keyspace: keyspace, epoch: epoch, leader: leader, previousLeader: previousLeader, lastHeardMs: lastHeardMs,
                                 suspectedMs: suspectedMs, electedMs: electedMs, reason: reason)
    }
    func recordFirstWrite(keyspace: KeyspaceName, epoch: UInt64, atMs: UInt64) async throws(MeridianError) {
        try inner.recordFirstWrite(keyspace: keyspace, epoch: epoch, atMs: atMs)
    }
    func failovers(limit: Int) async throws(MeridianError) -> [FailoverEvent] { try inner.failovers(limit: limit) }
    func missingDataKeys(_ values: [(keyspace: KeyspaceName, value: [UInt8])]) async throws(MeridianError) -> [KeyspaceName: Set<DataKeyID>] {
        try inner.missingDataKeys(values)
    }
    func grantDataKeys(keyspace: KeyspaceName, ids: [DataKeyID]) async throws(MeridianError) -> (granted: [DataKeyGrant], erased: [DataKeyID]) {
        try inner.grantDataKeys(keyspace: keyspace, ids: ids)
    }
    func installDataKeys(keyspace: KeyspaceName, _ grants: [DataKeyGrant], erased: [DataKeyID], nowMs: UInt64) async throws(MeridianError) {
        try inner.installDataKeys(keyspace: keyspace, grants, erased: erased, nowMs: nowMs)
    }
    func erase(keyspace: KeyspaceName, subject: Subject, nowMs: UInt64) async throws(MeridianError) -> [DataKeyID] {
        try inner.erase(keyspace: keyspace, subject: subject, nowMs: nowMs)
    }
    func appendAudit(_ drafts: [AuditDraft]) async throws(MeridianError) -> [AuditRecord] { try inner.appendAudit(drafts) }
    func rewrapDataKeys(limit: Int) async throws(MeridianError) -> Int { try inner.rewrapDataKeys(limit: limit) }
    func erasedDataKeys(keyspace: KeyspaceName, after: DataKeyID?, limit: Int) async throws(MeridianError) -> [DataKeyID] {
        try inner.erasedDataKeys(keyspace: keyspace, after: after, limit: limit)
    }
    func dataKeyEpochs() async throws(MeridianError) -> [UInt32: Int] { try inner.dataKeyEpochs() }
    func auditRecords(after: UInt64, limit: Int) async throws(MeridianError) -> (records: [AuditRecord], anchor: AuditAnchor) {
        try inner.auditRecords(after: after, limit: limit)
    }
    func auditHead() async throws(MeridianError) -> AuditChain { try inner.auditHead() }
    func lastAuditRecord(_ kind: AuditRecord.Kind) async throws(MeridianError) -> AuditRecord? { try inner.lastAuditRecord(kind) }
    func backup(to path: String) async throws(MeridianError) -> BackupSummary { try inner.backup(to: path) }
    func restorePending() async throws(MeridianError) -> UInt64? { try inner.restorePending() }
    func finishRestore(logEnd: UInt64) async throws(MeridianError) { try inner.finishRestore(logEnd: logEnd) }
    func witness(_ checkpoint: AuditCheckpoint, publicKey: [UInt8]) async throws(MeridianError) { try inner.witness(checkpoint, publicKey: publicKey) }
    func witnessed(region: RegionName, limit: Int) async throws(MeridianError) -> (publicKey: [UInt8]?, checkpoints: [AuditCheckpoint]) {
        try inner.witnessed(region: region, limit: limit)
    }
}

@Suite struct LeadershipShellTests {
    @Test(.timeLimit(.minutes(1)))
    func noElectionFrameLeavesWhileThePersistBeforeItIsInFlight() async throws {
        let config = try ClusterConfig.parse(yaml: NodeFixture.yaml, file: "test.yaml")
        let us = RegionName(validated: "us-east"), eu = RegionName(validated: "eu-west")
        let memory = try MemoryStore(disk: MemoryDisk(), context: StoreContext(region: us, limits: config.limits, conflictRules: [:],
                                                                                physicalClockMs: { UInt64(Date().timeIntervalSince1970 * 1000) }, observer: nil))
        let store = HeldElectionStore(memory)
        let leadership = try await Leadership(region: us, cluster: config, store: store, wallClockMs: { UInt64(Date().timeIntervalSince1970 * 1000) },
                                              logger: Logger(label: "test"))
        // Every frame the shell sends, with how many saves were in flight and done when it left.
        let sent = Mutex<[(frame: PeerFrame, saving: Int, saved: Int)]>([])
        leadership.start(Leadership.Carriers(
            send: { _, frame in sent.withLock { $0.append((frame, store.saving, store.saved)) } },
            revert: { _, _, _ in }, peers: { [eu: RegionMachine.PeerLink(up: true, acknowledged: 0)] },
            catchUp: { _, _, _, _ throws(MeridianError) in }))
        let running = Task { await leadership.run() }
        defer { running.cancel() }
        // A region starting with no election state stores its first terms (accounts, led here from epoch 1; ledger,
        // led by eu-west) before it sends anything: the first save is held, and nothing leaves meanwhile, ticks and
        // a peer's message queued behind it included.
        let firstSave = try await eventually(timeoutSeconds: 10) { store.saving > 0 }
        #expect(firstSave)
        leadership.received(.heartbeat(epoch: 1, sentMs: 1), start: nil, keyspace: try KeyspaceName("ledger"), from: eu)
        try await Task.sleep(for: .milliseconds(300))
        #expect(sent.withLock { $0.isEmpty }, "frames left while a persist was in flight: \(sent.withLock { $0.map(\.frame) })")
        // Queries answer while the save waits: the machine is not held across the store call.
        #expect(leadership.snapshot(try KeyspaceName("accounts")) != nil)
        #expect(leadership.writableEpoch(try KeyspaceName("accounts")) == nil)
        store.releaseAll()
        let heartbeats = try await eventually(timeoutSeconds: 10) { sent.withLock { $0.contains { if case .election(_, .heartbeat, _) = $0.frame { true } else { false } } } }
        #expect(heartbeats, "the leader's heartbeats follow once its state is durable")
        #expect(sent.withLock { $0.allSatisfy { $0.saving == 0 && $0.saved > 0 } }, "every frame left after a save completed and while none was in flight")
        #expect(try await memory.elections()[try KeyspaceName("accounts")]?.record.epoch == 1)
    }
}

/// Polls `condition` every 20 ms until it holds or `timeoutSeconds` pass.
private func eventually(timeoutSeconds: Double, _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(timeoutSeconds * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}
