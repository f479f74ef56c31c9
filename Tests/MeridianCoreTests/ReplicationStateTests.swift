// Proves the pure replication state machines: the shipper batches within its window and resumes from the
// acknowledged cursor after reconnects; the receiver applies each entry exactly once and in order, and
// refuses gaps; the ack tracker answers majority/all writes when enough peers applied them and reports
// the missing regions on timeout. A seeded property test runs shipper and receiver over a stream that
// drops in-flight messages and reconnects at random, and checks exactly-once, in-order apply.
import MeridianCore
import PropertyBased
import Testing

@Suite struct ReplicationStateTests {
    let us = RegionName(validated: "us-east"), eu = RegionName(validated: "eu-west"), ap = RegionName(validated: "ap-southeast")

    func entry(_ sequence: UInt64, origin: RegionName? = nil) -> ReplicationEntry {
        let origin = origin ?? us
        return ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: sequence, logical: 0, region: origin), epoch: 0,
                                keyspace: try! KeyspaceName("ks"), key: try! Key("k\(sequence)"), operation: .put, contentType: "", value: [])
    }

    @Test func shipsInBatchesWithinTheWindow() throws {
        var shipper = LogShipper(peer: eu, acknowledged: 0, logHighWater: 10, limits: .init(batchEntriesMax: 3, inflightEntriesMax: 7))
        #expect(shipper.entriesAppended(upTo: 10) == [], "nothing is sent before a stream opens")
        #expect(shipper.streamOpened() == [.send(fromSequence: 1, count: 3), .send(fromSequence: 4, count: 3), .send(fromSequence: 7, count: 1)])
        #expect(try shipper.ackReceived(upTo: 3) == [.send(fromSequence: 8, count: 3)])
        #expect(try shipper.ackReceived(upTo: 2) == [], "an old ack moves nothing")
        #expect(shipper.entriesAppended(upTo: 12) == [])
        #expect(try shipper.ackReceived(upTo: 10) == [.send(fromSequence: 11, count: 2)])
        #expect(shipper.lagEntries == 2)
        #expect(throws: MeridianError.self) { try shipper.ackReceived(upTo: 13) }
        // A late ack from a closed stream is the peer's durable state all the same.
        shipper.streamClosed()
        #expect(try shipper.ackReceived(upTo: 12).isEmpty)
        #expect(shipper.streamOpened() == [])
    }

    @Test func resumesFromTheAcknowledgedCursorAfterAReconnect() throws {
        var shipper = LogShipper(peer: eu, acknowledged: 4, logHighWater: 9)
        #expect(shipper.streamOpened() == [.send(fromSequence: 5, count: 5)])
        _ = try shipper.ackReceived(upTo: 6)
        shipper.streamClosed()
        #expect(shipper.entriesAppended(upTo: 11) == [])
        #expect(shipper.streamOpened() == [.send(fromSequence: 7, count: 5)], "unacknowledged entries are sent again")
    }

    @Test func receiverAppliesOnceInOrderAndRefusesGaps() throws {
        var receiver = LogReceiver(origin: us, applied: 2)
        #expect(try receiver.received([entry(1), entry(2), entry(3), entry(4)]).toApply.map(\.sequence) == [3, 4])
        #expect(receiver.persisted(upTo: 4) == 4)
        // A batch of nothing but durable duplicates is acknowledged again (the first ack may have been lost).
        let duplicates = try receiver.received([entry(3), entry(4)])
        #expect(duplicates.toApply.isEmpty && duplicates.reacknowledge == 4)
        #expect(try receiver.received([entry(4), entry(5)]).toApply.map(\.sequence) == [5])
        #expect(throws: MeridianError.self) { try receiver.received([entry(7)]) }
        #expect(throws: MeridianError.self) { try receiver.received([entry(6, origin: eu)]) }
        // The stream closes while entry 5 is being written; the write completes afterwards: no crash, no re-apply.
        receiver.streamClosed()
        #expect(receiver.persisted(upTo: 5) == 5)
        #expect(try receiver.received([entry(5), entry(6)]).toApply.map(\.sequence) == [6])
        // A failed write makes the entries acceptable again.
        receiver.persistFailed()
        #expect(receiver.applied == 5)
        #expect(try receiver.received([entry(6)]).toApply.map(\.sequence) == [6])
    }

    @Test func ackTrackerAnswersMajorityAndAllAndReportsTimeouts() throws {
        var tracker = AckTracker(origin: us, waitingMax: 2)
        let replicas = [us, eu, ap]
        #expect(try tracker.register(sequence: 1, required: 1, replicas: replicas, deadlineMs: 100) == .acknowledged(sequence: 1, ackedBy: [us]))
        #expect(try tracker.register(sequence: 2, required: 2, replicas: replicas, deadlineMs: 100) == nil)
        #expect(try tracker.register(sequence: 3, required: 3, replicas: replicas, deadlineMs: 100) == nil)
        #expect(throws: MeridianError.self) { try tracker.register(sequence: 4, required: 3, replicas: replicas, deadlineMs: 100) }
        #expect(tracker.peerApplied(eu, upTo: 2) == [.acknowledged(sequence: 2, ackedBy: [eu, us])])
        #expect(tracker.peerApplied(eu, upTo: 1) == [])
        #expect(tracker.tick(nowMs: 99) == [])
        #expect(tracker.tick(nowMs: 100) == [.timedOut(sequence: 3, ackedBy: [us], missing: [ap, eu])])
        #expect(tracker.waitingCount == 0)
        // A write already applied by enough peers is acknowledged at registration.
        #expect(try tracker.register(sequence: 2, required: 2, replicas: replicas, deadlineMs: 200) == .acknowledged(sequence: 2, ackedBy: [eu, us]))
    }

    /// One step of the lossy-stream run.
    enum Step: CaseIterable, Sendable { case append, deliverOne, deliverAck, disconnect, reconnect }

    @Test func aLossyReconnectingStreamAppliesEveryEntryExactlyOnceInOrder() async {
        let steps = Gen<Step>.case.array(of: 1...400)
        await propertyCheck(count: 200, input: steps) { steps in
            var shipper = LogShipper(peer: eu, acknowledged: 0, logHighWater: 0, limits: .init(batchEntriesMax: 4, inflightEntriesMax: 10))
            var receiver = LogReceiver(origin: us, applied: 0)
            var log: UInt64 = 0
            var toPeer: [[UInt64]] = []        // batches in flight on the current stream
            var toOrigin: [UInt64] = []       // acks in flight
            var appliedOrder: [UInt64] = []
            var open = false

            func carry(_ effects: [LogShipper.Effect]) {
                for effect in effects {
                    if case .send(let from, let count) = effect { toPeer.append(Array(from..<(from + UInt64(count)))) }
                }
            }
            func deliverBatch() {
                guard open, !toPeer.isEmpty else { return }
                let batch = toPeer.removeFirst().map { entry($0) }
                do {
                    let delivery = try receiver.received(batch)
                    appliedOrder += delivery.toApply.map(\.sequence)
                    if let last = delivery.toApply.last { toOrigin.append(receiver.persisted(upTo: last.sequence)) }
                    if let again = delivery.reacknowledge { toOrigin.append(again) }
                } catch {
                    Issue.record("receiver refused a batch: \(error)")
                }
            }
            func deliverAck() {
                guard open, !toOrigin.isEmpty else { return }
                do { carry(try shipper.ackReceived(upTo: toOrigin.removeFirst())) } catch { Issue.record("shipper refused an ack: \(error)") }
            }
            func reconnect() {
                guard !open else { return }
                open = true
                receiver.streamClosed()
                carry(shipper.streamOpened())
            }

            for step in steps {
                switch step {
                case .append:
                    log += 1
                    carry(shipper.entriesAppended(upTo: log))
                case .deliverOne: deliverBatch()
                case .deliverAck: deliverAck()
                case .disconnect:
                    // A failed stream loses everything in flight, both ways.
                    open = false
                    toPeer.removeAll()
                    toOrigin.removeAll()
                    shipper.streamClosed()
                case .reconnect: reconnect()
                }
            }
            // Liveness: heal and drain, bounded.
            reconnect()
            var rounds = 0
            while (!toPeer.isEmpty || !toOrigin.isEmpty) && rounds < 10_000 {
                deliverBatch()
                deliverAck()
                rounds += 1
            }
            #expect(appliedOrder == Array(stride(from: 1, through: log, by: 1)), "every entry applied once, in order")
            #expect(receiver.applied == log && shipper.acknowledged == log && shipper.lagEntries == 0)
        }
    }

    @Test func theLogIsTrimmedThroughWhatEveryPeerHoldsDurably() {
        // Up to the slowest peer's durable point, never past the log's end, and only forward.
        #expect(LogTrim.through(highWater: 100, floor: 0, acknowledged: [60, 80], settled: true, retentionEntries: 1_000) == 60)
        #expect(LogTrim.through(highWater: 100, floor: 60, acknowledged: [60, 80], settled: true, retentionEntries: 1_000) == nil)
        #expect(LogTrim.through(highWater: 100, floor: 0, acknowledged: [], settled: true, retentionEntries: 1_000) == 100, "a sole replica keeps nothing for peers")
        #expect(LogTrim.through(highWater: 100, floor: 0, acknowledged: [0, 100], settled: true, retentionEntries: 1_000) == nil,
                "a peer not heard from since the start holds nothing the trim may assume")
        // While a single-leader keyspace is unsettled, acknowledged entries stay; the retention bound still trims.
        #expect(LogTrim.through(highWater: 100, floor: 10, acknowledged: [60, 80], settled: false, retentionEntries: 1_000) == nil)
        #expect(LogTrim.through(highWater: 100, floor: 10, acknowledged: [60, 80], settled: false, retentionEntries: 30) == 70)
        #expect(LogTrim.through(highWater: 100, floor: 0, acknowledged: [5], settled: true, retentionEntries: 30) == 70,
                "a peer further behind than the retention needs a resync")
    }
}
