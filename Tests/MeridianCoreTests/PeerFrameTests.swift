// Proves the replication stream's frame codec: every frame type round-trips, a stream decodes frame by
// frame however its bytes are split, and truncated, oversized, out-of-range or random bytes give typed
// errors, never a crash. Also the receiving side's range rule: batches may leave out entries of keyspaces
// kept elsewhere, and a range that skips past the applied point is refused.
import MeridianCore
import PropertyBased
import Testing

@Suite struct PeerFrameTests {
    let codec = PeerFrameCodec(valueBytesMax: 4096, frameBytesMax: 1 << 16)
    let us = RegionName(validated: "us-east")
    let eu = RegionName(validated: "eu-west")

    func entry(_ sequence: UInt64, origin: RegionName? = nil) -> ReplicationEntry {
        EntryCodecTests.entry(region: origin == eu ? 1 : 0, sequence: sequence, physical: 100 + sequence, logical: 0, epoch: 0,
                              key: "k\(sequence)", delete: false, value: [UInt8(sequence % 256)])
    }

    func version(_ origin: RegionName, _ sequence: UInt64) -> Version {
        Version(hlc: HLCTimestamp(physicalMs: 1_795_000_000_000 + sequence, logical: UInt32(sequence), region: origin), sequence: sequence)
    }

    /// A key's state of two concurrent versions, one of them a tombstone.
    var siblings: KeyState {
        var context = VersionVector()
        context.set(us, 9)
        return KeyState(context: context, versions: [
            KeyVersion(version: version(us, 4), tombstone: false, contentType: "text/plain", value: Array("é".utf8), dependencies: [eu: 2]),
            KeyVersion(version: version(eu, 3), tombstone: true, contentType: "", value: []),
        ])
    }

    var everyKind: [PeerFrame] {
        [
            .hello(PeerHello(cluster: "demo", from: us, to: eu)),
            .welcome(applied: 0, auditWitnessed: 0), .welcome(applied: 42, auditWitnessed: 7), .durable(through: 0), .durable(through: 1 << 40),
            .batch(from: 1, through: 3, entries: [entry(1), entry(3)]),
            .batch(from: 5, through: 9, entries: []),
            .ack(applied: 7, visible: 9, echoMs: 1_795_000_000_123),
            .heartbeat(logHighWater: 9, physicalMs: 1_795_000_000_000, echoMs: 1_795_000_000_123),
            .heartbeat(logHighWater: 9, physicalMs: 1_795_000_000_000, echoMs: 1_795_000_000_123, unreachable: [eu, us]),
            .forward(ForwardedWrite(id: 3, keyspace: try! KeyspaceName("accounts"), key: try! Key("a/b"), operation: .put, contentType: "text/plain",
                                    value: Array("100".utf8), options: WriteOptions(ack: .majority, precondition: .versionIsOneOf([version(us, 4), version(eu, 9)]),
                                                                                    session: "token ✓", context: "context", principal: "checkout-service",
                                                                                    idempotencyKey: try! IdempotencyKey("8d0c2f4e-retry")))),
            .forward(ForwardedWrite(id: 4, keyspace: try! KeyspaceName("accounts"), key: try! Key("x"), operation: .delete, contentType: "", value: [],
                                    options: WriteOptions(precondition: .exists))),
            .forward(ForwardedWrite(id: 5, keyspace: try! KeyspaceName("likes"), key: try! Key("x"), operation: .merge, contentType: "application/json",
                                    value: Array("{}".utf8), options: WriteOptions())),
            .forwardReply(ForwardedReply(id: 3, answer: .written(ServedWrite(version: version(us, 4), ack: .majority, ackedBy: [us, eu], operation: "put",
                                                                             epoch: 2, session: "token", crdtValue: nil)))),
            .forwardReply(ForwardedReply(id: 4, answer: .written(ServedWrite(version: version(eu, 1), ack: .async, ackedBy: [eu], operation: "increment",
                                                                             epoch: nil, session: "", crdtValue: [1, 2, 3], replayed: true)))),
            .forwardReply(ForwardedReply(id: 5, answer: .read(ServedRead(level: .bounded, stalenessMs: 250, epoch: nil, state: siblings, session: "token")))),
            .forwardReply(ForwardedReply(id: 6, answer: .read(ServedRead(level: .strong, stalenessMs: nil, epoch: 7, state: nil, session: "")))),
            .forwardReply(ForwardedReply(id: 7, answer: .refused(Refusal(MeridianError(.ackTimeout, "not met ✓", context: ["ack": "majority", "missing": "eu-west"], applied: .maybe),
                                                                         session: "token", version: version(us, 4))))),
            .forwardReply(ForwardedReply(id: 8, answer: .refused(Refusal(MeridianError(.overloaded, "busy"))))),
            .refusal(code: "replication_protocol", message: "naïve peer ✓"),
            .forwardRead(ForwardedRead(id: 9, keyspace: try! KeyspaceName("accounts"), key: try! Key("a/b"), form: .value,
                                       options: ReadOptions(consistency: .strong, maxStalenessMs: 0, session: "token", principal: "reporting"))),
            .forwardRead(ForwardedRead(id: 10, keyspace: try! KeyspaceName("likes"), key: try! Key("a"), form: .crdt, options: ReadOptions())),
            .election(keyspace: try! KeyspaceName("accounts"), message: .heartbeat(epoch: 3, sentMs: 1_234),
                      start: EpochStart(epoch: 3, leader: eu, applied: [us: 40, eu: 7], terms: [TermEnd(epoch: 1, leader: us, last: 40)])),
            .election(keyspace: try! KeyspaceName("accounts"), message: .heartbeatAck(epoch: 3, sentMs: 1_234), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .voteRequest(epoch: 4, position: LogPosition(epoch: 3, sequence: 9)), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .vote(epoch: 4, granted: true), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .newerEpoch(epoch: 4, leader: nil), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .newerEpoch(epoch: 4, leader: us), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .preVoteRequest(epoch: 5, position: .zero), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .preVote(epoch: 5, granted: false), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .timeoutNow(epoch: 5), start: nil),
            .election(keyspace: try! KeyspaceName("accounts"), message: .transferVoteRequest(epoch: 6, position: LogPosition(epoch: 5, sequence: 2)), start: nil),
            .handOverRequest(id: 12, keyspace: try! KeyspaceName("accounts"), target: eu),
            .handOverReply(id: 12, outcome: .handedOver(to: eu)),
            .handOverReply(id: 13, outcome: .refused(code: "region_unavailable", message: "eu-west did not catch up in time ✓")),
            .repairRequest(id: 14, keyspace: try! KeyspaceName("accounts"), .tree),
            .repairRequest(id: 15, keyspace: try! KeyspaceName("accounts"), .states(buckets: [0, 17, 255], after: nil)),
            .repairRequest(id: 16, keyspace: try! KeyspaceName("accounts"), .states(buckets: [3], after: try! Key("a/é"))),
            .repairReply(id: 14, .tree(RepairTree(logHighWater: 40, keys: 3, terms: [TermEnd(epoch: 2, leader: eu, last: 7), TermEnd(epoch: 1, leader: us, last: 40)],
                                                  tree: MerkleTree(leaves: [3: MerkleTree.Leaf(lanes: [1, 2, 3, 4, 5, 6, 7, 8])])))),
            .repairRequest(id: 22, keyspace: try! KeyspaceName("accounts"), .slots(buckets: [0, 9, 255])),
            .repairRequest(id: 23, keyspace: try! KeyspaceName("accounts"), .slotStates(slots: [0, 2_310, 65_535], after: nil)),
            .repairRequest(id: 24, keyspace: try! KeyspaceName("accounts"), .slotStates(slots: [12], after: try! Key("a/é"))),
            .repairRequest(id: 25, keyspace: try! KeyspaceName("accounts"), .slotItems(slots: [1, 65_535], after: nil)),
            .repairRequest(id: 26, keyspace: try! KeyspaceName("accounts"), .slotItems(slots: [4], after: try! Key("k"))),
            .repairRequest(id: 27, keyspace: try! KeyspaceName("accounts"), .keyStates(keys: [try! Key("a/é"), try! Key("b")])),
            .repairReply(id: 25, .items(encoded: KeyItemCodec.encode([(try! Key("k1"), MerkleTree.Leaf(lanes: [1, 1, 1, 1, 2, 2, 2, 2]))]), next: try! Key("k1"))),
            .repairReply(id: 26, .items(encoded: KeyItemCodec.encode([]), next: nil)),
            .repairReply(id: 22, .slots(encoded: MerkleSlots(buckets: [9], slots: [2_310: MerkleTree.Leaf(lanes: [8, 7, 6, 5, 4, 3, 2, 1])]).encoded)),
            .repairReply(id: 15, .states(encoded: [0, 0, 0, 0], next: try! Key("k9"))),
            .repairReply(id: 16, .states(encoded: [], next: nil)),
            .repairReply(id: 17, .refused(code: "not_replica_region", message: "no replica here ✓")),
            .repairRequest(id: 18, keyspace: try! KeyspaceName("vault"), .dataKeys(ids: [try! DataKeyID(bytes: Array(repeating: 1, count: 16)), try! DataKeyID(bytes: Array(0..<16))])),
            .repairRequest(id: 19, keyspace: try! KeyspaceName("vault"), .erase(subject: try! Subject("ada@example.eu"))),
            .repairRequest(id: 20, keyspace: try! KeyspaceName("vault"), .erasedKeys(after: nil)),
            .repairRequest(id: 21, keyspace: try! KeyspaceName("vault"), .erasedKeys(after: try! DataKeyID(bytes: Array(repeating: 7, count: 16)))),
            .repairReply(id: 18, .dataKeys(granted: [DataKeyGrant(id: try! DataKeyID(bytes: Array(0..<16)), subject: try! Subject("ada"), key: Array(repeating: 9, count: 32))],
                                           erased: [try! DataKeyID(bytes: Array(repeating: 1, count: 16))])),
            .repairReply(id: 19, .erased(ids: [try! DataKeyID(bytes: Array(repeating: 2, count: 16))])),
            .auditCheckpoint(AuditCheckpoint(region: eu, sequence: 42, hash: Array(repeating: 3, count: 32), signature: Array(repeating: 4, count: 64)),
                             publicKey: Array(repeating: 5, count: 32)),
        ]
    }

    @Test func everyFrameRoundTripsAndAStreamDecodesIncrementally() throws {
        var stream: [UInt8] = []
        for frame in everyKind {
            let bytes = codec.encode(frame)
            #expect(try codec.decodeFrame(bytes[...])?.0 == frame)
            stream += bytes
        }
        var decoded: [PeerFrame] = []
        var offset = 0
        for end in 1...stream.count {
            while let (frame, used) = try codec.decodeFrame(stream[offset..<end]) {
                decoded.append(frame)
                offset += used
            }
        }
        #expect(decoded == everyKind)
    }

    @Test func badFramesAreTypedErrors() throws {
        func code(_ bytes: [UInt8]) -> MeridianError.Code? {
            do { _ = try codec.decodeFrame(bytes[...]); return nil } catch { return error.code }
        }
        // Longer than the limit: refused from the prefix alone, before buffering.
        #expect(code([0x7F, 0xFF, 0xFF, 0xFF]) == .codecLengthMismatch)
        #expect(code([0, 0, 0, 0]) == .codecLengthMismatch, "an empty frame")
        #expect(code([0, 0, 0, 1, 99]) == .codecInvalidField, "an unknown type")
        #expect(code([0, 0, 0, 2, 1, 12]) == .codecUnsupportedVersion, "the previous version (its peers apply batches on arrival)")
        #expect(code([0, 0, 0, 3, 16, 0, 0]) == .codecTruncated, "a durable point cut short")
        // A batch whose range is empty, whose entries leave the range, or that claims more entries than it covers.
        #expect(code(codec.encode(.batch(from: 5, through: 4, entries: []))) == .codecInvalidField)
        #expect(code(codec.encode(.batch(from: 1, through: 2, entries: [entry(3)]))) == .codecInvalidField)
        #expect(code(codec.encode(.batch(from: 1, through: 3, entries: [entry(2), entry(1)]))) == .codecInvalidField)
        var overclaimed = codec.encode(.batch(from: 1, through: 1, entries: [entry(1)]))
        overclaimed[5 + 16 + 3] = 2
        #expect(code(overclaimed) == .codecInvalidField)
        // Trailing bytes inside the announced length.
        // A forwarded read of a key no client could send.
        var badKey = codec.encode(.forwardRead(ForwardedRead(id: 1, keyspace: try KeyspaceName("k"), key: try Key("x"), form: .value, options: ReadOptions())))
        badKey[5 + 8 + 2 + 2] = 0x07
        #expect(code(badKey) == .invalidKey)
        // Forwarded requests and answers: an unknown read form, an empty precondition, an unknown answer kind,
        // a refusal code this node does not know, an ack mode no one has.
        var form = codec.encode(.forwardRead(ForwardedRead(id: 1, keyspace: try KeyspaceName("k"), key: try Key("x"), form: .value, options: ReadOptions())))
        form[5 + 8 + 2 + 3] = 3
        #expect(code(form) == .codecInvalidField)
        var empty = codec.encode(.forward(ForwardedWrite(id: 1, keyspace: try KeyspaceName("k"), key: try Key("x"), operation: .delete, contentType: "", value: [],
                                                         options: WriteOptions(precondition: .versionIsOneOf([version(us, 1)])))))
        empty[5 + 8 + 2 + 3 + 1 + 1 + 4 + 1 + 1] = 0
        #expect(code(empty) == .codecInvalidField)
        var answerKind = codec.encode(.forwardReply(ForwardedReply(id: 1, answer: .refused(Refusal(MeridianError(.overloaded, "busy"))))))
        answerKind[5 + 8] = 4
        #expect(code(answerKind) == .codecInvalidField)
        var unknownCode = codec.encode(.forwardReply(ForwardedReply(id: 1, answer: .refused(Refusal(MeridianError(.overloaded, "busy"))))))
        unknownCode[5 + 8 + 1 + 1] = UInt8(ascii: "O")
        #expect(code(unknownCode) == .codecInvalidField)
        var ack = codec.encode(.forwardReply(ForwardedReply(id: 1, answer: .written(ServedWrite(version: version(us, 1), ack: .all, ackedBy: [], operation: "put",
                                                                                             epoch: nil, session: "", crdtValue: nil)))))
        let ackAt = 5 + 8 + 1 + (1 + 7 + 8 + 8 + 4) + 1
        ack[ackAt] = UInt8(ascii: "x")
        #expect(code(ack) == .codecInvalidField)
        // Election messages: an unknown kind, a vote flag beyond 0/1, epoch 0, an origin named twice in a start.
        let ks = try KeyspaceName("k")
        var kind = codec.encode(.election(keyspace: ks, message: .vote(epoch: 2, granted: true), start: nil))
        kind[5 + 2] = 99
        #expect(code(kind) == .codecInvalidField)
        var flag = codec.encode(.election(keyspace: ks, message: .vote(epoch: 2, granted: true), start: nil))
        flag[5 + 2 + 1 + 8] = 2
        #expect(code(flag) == .codecInvalidField)
        #expect(code(codec.encode(.election(keyspace: ks, message: .vote(epoch: 0, granted: true), start: nil))) == .codecInvalidField)
        var twice = codec.encode(.election(keyspace: ks, message: .vote(epoch: 2, granted: true), start: EpochStart(epoch: 2, leader: us, applied: [us: 1, eu: 2])))
        // The second origin's name ("us-east" sorts after "eu-west") rewritten to the first's.
        let second = twice.lastIndex(of: UInt8(ascii: "u"))! // inside "us-east" of the second pair
        let firstName = Array("eu-west".utf8)
        twice.replaceSubrange((second)..<(second + 7), with: firstName)
        #expect(code(twice) == .codecInvalidField)
        // A start naming a term not before its own epoch.
        #expect(code(codec.encode(.election(keyspace: ks, message: .heartbeat(epoch: 2, sentMs: 0),
                                            start: EpochStart(epoch: 2, leader: us, applied: [:], terms: [TermEnd(epoch: 2, leader: us, last: 1)])))) == .codecInvalidField)
        // A hand-over reply with an unknown outcome, and a request naming no valid region.
        var outcome = codec.encode(.handOverReply(id: 1, outcome: .handedOver(to: eu)))
        outcome[5 + 8] = 3
        #expect(code(outcome) == .codecInvalidField)
        var target = codec.encode(.handOverRequest(id: 1, keyspace: ks, target: eu))
        target[target.count - 1] = UInt8(ascii: "!")
        #expect(code(target) == .invalidRegion)
        // Repair frames: a bucket past the tree, an unknown kind, a tree of the wrong size.
        var bucket = codec.encode(.repairRequest(id: 1, keyspace: ks, .states(buckets: [7], after: nil)))
        bucket[5 + 8 + 2 + 1 + 2] = 0x01
        #expect(code(bucket) == .codecInvalidField)
        // A slot-leaves request for a bucket past the tree, more slots or buckets than a request may name, slot
        // leaves too long.
        var slotBucket = codec.encode(.repairRequest(id: 1, keyspace: ks, .slots(buckets: [7])))
        slotBucket[5 + 8 + 2 + 1 + 2] = 0x01
        #expect(code(slotBucket) == .codecInvalidField)
        for (request, countMax) in [(RepairRequest.slotStates(slots: [1], after: nil), RepairBounds.slotsMax), (.slots(buckets: [1]), RepairBounds.slotBucketsMax)] {
            var many = codec.encode(.repairRequest(id: 1, keyspace: ks, request))
            many[5 + 8 + 2 + 1] = UInt8((countMax + 1) >> 8)
            many[5 + 8 + 2 + 1 + 1] = UInt8((countMax + 1) & 0xFF)
            #expect(code(many) == .codecInvalidField)
        }
        var keys = codec.encode(.repairRequest(id: 1, keyspace: ks, .keyStates(keys: [try Key("a")])))
        keys[5 + 8 + 2 + 1] = UInt8((RepairBounds.keysMax + 1) >> 8)
        keys[5 + 8 + 2 + 1 + 1] = UInt8((RepairBounds.keysMax + 1) & 0xFF)
        #expect(code(keys) == .codecInvalidField)
        let tooManyLeaves = codec.encode(.repairReply(id: 1, .slots(encoded: Array(repeating: 0, count: (RepairBounds.slotBucketsMax + 1) * 8_192))))
        #expect(code(tooManyLeaves) != nil)
        var repairKind = codec.encode(.repairRequest(id: 1, keyspace: ks, .tree))
        repairKind[repairKind.count - 1] = 10
        #expect(code(repairKind) == .codecInvalidField)
        var shortTree = codec.encode(.repairReply(id: 1, .tree(RepairTree(logHighWater: 0, keys: 0, terms: [], tree: MerkleTree(states: [])))))
        shortTree.removeLast(32)
        func rewrite(_ bytes: inout [UInt8], at offset: Int, minus: UInt32) {
            let value = bytes[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) } - minus
            for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(index))) }
        }
        rewrite(&shortTree, at: 0, minus: 32)
        rewrite(&shortTree, at: 5 + 8 + 1 + 8 + 8 + 1, minus: 32)
        #expect(code(shortTree) == .codecLengthMismatch)
        var padded = codec.encode(.ack(applied: 1, visible: 1, echoMs: 0))
        padded[3] += 1
        padded.append(0)
        #expect(code(padded) == .codecLengthMismatch)
        #expect(code(codec.encode(.ack(applied: 5, visible: 4, echoMs: 0))) == .codecInvalidField, "nothing is durable that is not visible")
        // Every truncation of every kind either waits for more bytes or is a typed error.
        for frame in everyKind {
            let bytes = codec.encode(frame)
            for length in 0..<bytes.count { #expect(try codec.decodeFrame(bytes.prefix(length)[...]) == nil) }
        }
    }

    @Test func randomBytesNeverCrash() async {
        let good = everyKind.flatMap { codec.encode($0) }
        let flips = zip(Gen.int(in: 0...(good.count - 1)), Gen.uint8(in: 0...255)).array(of: 1...8)
        await propertyCheck(count: 1000, input: flips) { flips in
            var bytes = good
            for (index, value) in flips { bytes[index] = value }
            var offset = 0
            while offset < bytes.count, let (_, used) = try? codec.decodeFrame(bytes[offset...]) { offset += used }
        }
        await propertyCheck(count: 1000, input: Gen.uint8(in: 0...255).array(of: 0...200)) { garbage in
            _ = try? codec.decodeFrame(garbage[...])
        }
    }

    @Test func receiverAcceptsRangesWithLeftOutEntriesAndRefusesSkips() throws {
        var receiver = LogReceiver(origin: us, applied: 2)
        // Entries 3 and 5 belong to keyspaces kept elsewhere: the range still covers them.
        let first = try receiver.received(from: 3, through: 6, entries: [entry(4), entry(6)])
        #expect(first.toApply.map(\.sequence) == [4, 6] && first.covers == 6)
        #expect(receiver.persisted(upTo: 6) == 6)
        // An all-left-out range still moves the applied point.
        let empty = try receiver.received(from: 7, through: 9, entries: [])
        #expect(empty.toApply.isEmpty && empty.covers == 9)
        #expect(receiver.persisted(upTo: 9) == 9)
        // A resend overlapping what is durable applies only the new part; a pure resend is acknowledged again.
        let overlap = try receiver.received(from: 8, through: 11, entries: [entry(8), entry(11)])
        #expect(overlap.toApply.map(\.sequence) == [11] && overlap.covers == 11)
        #expect(receiver.persisted(upTo: 11) == 11)
        #expect(try receiver.received(from: 10, through: 11, entries: []).reacknowledge == 11)
        // A range that starts past the next expected sequence lost a batch.
        #expect(throws: MeridianError.self) { try receiver.received(from: 13, through: 14, entries: []) }
        #expect(throws: MeridianError.self) { try receiver.received(from: 12, through: 13, entries: [entry(12, origin: eu)]) }
        #expect(throws: MeridianError.self) { try receiver.received(from: 12, through: 13, entries: [entry(14)]) }
    }
}
