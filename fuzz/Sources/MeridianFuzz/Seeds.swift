// Writes the seed corpus of the chosen target: valid encodings made by the real encoders, which the fuzzer
// then mutates. `FUZZ_WRITE_SEEDS=DIR` makes the binary write them to DIR and exit (fuzz/run.sh --seeds).
import Foundation
import MeridianCore

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    guard let directory = ProcessInfo.processInfo.environment["FUZZ_WRITE_SEEDS"] else { return 0 }
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for (index, seed) in seeds(target).enumerated() {
        FileManager.default.createFile(atPath: "\(directory)/seed-\(index)", contents: Data(seed))
    }
    exit(0)
}

func seeds(_ target: Target) -> [[UInt8]] {
    let us = RegionName(validated: "us-east"), eu = RegionName(validated: "eu-west")
    let entries = [
        ReplicationEntry(origin: us, sequence: 1, hlc: HLCTimestamp(physicalMs: 1_700_000_000_000, logical: 0, region: us), epoch: 1,
                         keyspace: keyspace, key: key, operation: .put, contentType: "text/plain", value: Array("hello".utf8)),
        ReplicationEntry(origin: eu, sequence: 7, hlc: HLCTimestamp(physicalMs: 1_700_000_000_500, logical: 3, region: eu), epoch: 0,
                         keyspace: keyspace, key: key, operation: .delete, contentType: "", value: [],
                         dependencies: [us: 4], context: [us: 1, eu: 6]),
    ]
    var counter = CRDTValue.empty(.pnCounter)
    var map = CRDTValue.empty(.orMap)
    var set = CRDTValue.empty(.orSet)
    let at = HLCTimestamp(physicalMs: 5, logical: 0, region: us)
    _ = try? counter.apply(.increment(5), at: at)
    _ = try? map.apply(.update(field: "book", type: .mvRegister, .assign("red")), at: at)
    _ = try? set.apply(.add(["a", "b"]), at: at)
    let delta = (try? set.apply(.remove(["a"]), at: at)) ?? set
    var context = VersionVector()
    context.set(us, 3)
    context.set(eu, 9)
    let state = KeyState(context: context, versions: [KeyVersion(entry: entries[0]), KeyVersion(entry: entries[1])])
    switch target {
    case .peerFrame:
        return [
            peerCodec.encode(.hello(PeerHello(cluster: "demo", from: us, to: eu))),
            peerCodec.encode(.batch(from: 1, through: 7, entries: entries)),
            peerCodec.encode(.ack(applied: 5, visible: 7, echoMs: 1_795_000_000_123)),
            peerCodec.encode(.forwardRead(ForwardedRead(id: 3, keyspace: keyspace, key: key, form: .value,
                                                        options: ReadOptions(consistency: .bounded, maxStalenessMs: 500, session: "t")))),
            peerCodec.encode(.forward(ForwardedWrite(id: 5, keyspace: keyspace, key: key, operation: .put, contentType: "text/plain", value: [1],
                                                     options: WriteOptions(ack: .majority, precondition: .versionIsOneOf([entries[0].version]), session: "t", context: "c")))),
            peerCodec.encode(.forwardReply(ForwardedReply(id: 3, answer: .read(ServedRead(level: .session, stalenessMs: 9, epoch: 2, state: state, session: "t"))))),
            peerCodec.encode(.forwardReply(ForwardedReply(id: 5, answer: .written(ServedWrite(version: entries[0].version, ack: .majority, ackedBy: [us, eu],
                                                                                              operation: "put", epoch: 2, session: "t", crdtValue: CRDTCodec.encode(counter)))))),
            peerCodec.encode(.forwardReply(ForwardedReply(id: 6, answer: .refused(Refusal(MeridianError(.ackTimeout, "m", context: ["ack": "majority"], applied: .maybe),
                                                                                          session: "t", version: entries[0].version))))),
            peerCodec.encode(.election(keyspace: keyspace, message: .heartbeat(epoch: 2, sentMs: 99), start: EpochStart(epoch: 2, leader: eu, applied: [us: 7, eu: 3]))),
            peerCodec.encode(.election(keyspace: keyspace, message: .voteRequest(epoch: 3, position: LogPosition(epoch: 2, sequence: 7)), start: nil)),
            peerCodec.encode(.repairRequest(id: 4, keyspace: keyspace, .states(buckets: [1, 200], after: key))),
            peerCodec.encode(.repairRequest(id: 5, keyspace: keyspace, .slots(buckets: [1, 200]))),
            peerCodec.encode(.repairRequest(id: 6, keyspace: keyspace, .slotStates(slots: [300, 51_200], after: key))),
            peerCodec.encode(.repairRequest(id: 7, keyspace: keyspace, .slotItems(slots: [300], after: key))),
            peerCodec.encode(.repairRequest(id: 8, keyspace: keyspace, .keyStates(keys: [key]))),
            peerCodec.encode(.repairReply(id: 7, .items(encoded: KeyItemCodec.encode([(key, MerkleTree.Leaf(lanes: [1, 2, 3, 4, 5, 6, 7, 8]))]), next: key))),
            peerCodec.encode(.repairReply(id: 5, .slots(encoded: MerkleSlots(buckets: [1], slots: [300: MerkleTree.Leaf(lanes: [1, 2, 3, 4, 5, 6, 7, 8])]).encoded))),
            peerCodec.encode(.repairReply(id: 4, .tree(RepairTree(logHighWater: 7, keys: 1, terms: [TermEnd(epoch: 1, leader: us, last: 7)],
                                                                  tree: MerkleTree(leaves: [1: MerkleTree.Leaf(lanes: [9, 0, 0, 0, 0, 0, 0, 0])]))))),
        ]
    case .entry:
        return entries.map { entryCodec.encode($0) }
    case .sessionToken:
        var token = SessionToken()
        token.observe(entries[0].version)
        token.observe(dependencies: [eu: 9])
        return [Array(token.encoded(with: sessionKey).utf8), Array(SessionToken().encoded(with: sessionKey).utf8)]
    case .contextToken:
        return [Array(CausalContextToken.encode(context, keyspace: keyspace, key: key, with: sessionKey).utf8)]
    case .config:
        return [Array(DemoCluster.yaml.utf8)]
    case .crdt:
        return [counter, map, set, delta].map(CRDTCodec.encode)
    case .keyStates:
        return [KeyStateCodec.encode([(key, state)]), KeyStateCodec.encode([])]
    }
}
