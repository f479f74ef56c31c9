import MeridianCore
import Testing

/// The second level of a keyspace's Merkle tree: slots, their leaves, and where a page of a slot's keys starts.
@Suite struct MerkleSlotTests {
    static func states(_ count: Int, prefix: String = "k") -> [(key: Key, state: KeyState)] {
        let origin = try! RegionName("us-east")
        return (0..<count).map { index in
            let version = KeyVersion(version: Version(hlc: HLCTimestamp(physicalMs: UInt64(1_000 + index), logical: 0, region: origin), sequence: UInt64(index + 1)),
                                     tombstone: false, contentType: "text/plain", value: Array("\(prefix)\(index)".utf8), dependencies: [:])
            return (try! Key("\(prefix)\(index)"), KeyState(context: VersionVector([origin: UInt64(index + 1)]), versions: [version]))
        }
    }

    @Test func aKeysSlotLiesInItsBucketAndABucketsLeafIsTheSumOfItsSlots() {
        let states = Self.states(2_000)
        for item in states.prefix(200) {
            #expect(MerkleTree.slots(ofBucket: MerkleTree.bucket(of: item.key)).contains(MerkleTree.slot(of: item.key)))
        }
        let tree = MerkleTree(states: states)
        let slots = MerkleSlots(buckets: Array(0..<MerkleTree.bucketCount), states: states)
        #expect(slots.buckets == Array(0..<MerkleTree.bucketCount) && slots.leaves.count == MerkleTree.slotCount)
        for bucket in 0..<MerkleTree.bucketCount {
            var sum = MerkleTree.Leaf.empty
            for leaf in slots.leaves[bucket * MerkleTree.slotsPerBucket..<(bucket + 1) * MerkleTree.slotsPerBucket] { sum.add(leaf) }
            #expect(sum.bytes == tree.leaves[bucket], "bucket \(bucket)")
        }
    }

    @Test func differingSlotsAreExactlyThoseOfTheChangedKeys() throws {
        let states = Self.states(3_000)
        var changed = states
        let touched = [5, 777, 2_999]
        for index in touched {
            let old = changed[index].state.versions[0]
            changed[index].state = KeyState(context: changed[index].state.context, versions: [
                KeyVersion(version: old.version, tombstone: false, contentType: old.contentType, value: old.value + [1], dependencies: [:]),
            ])
        }
        let buckets = MerkleTree(states: states).differingBuckets(MerkleTree(states: changed))
        #expect(Set(buckets) == Set(touched.map { MerkleTree.bucket(of: states[$0].key) }))
        let mine = MerkleSlots(buckets: buckets, states: states), theirs = MerkleSlots(buckets: buckets, states: changed)
        #expect(Set(mine.differingSlots(theirs)) == Set(touched.map { MerkleTree.slot(of: states[$0].key) }))
        // What travels is what arrived.
        #expect(try MerkleSlots(buckets: buckets.reversed(), encoded: theirs.encoded) == theirs)
        #expect(throws: MeridianError.self) { try MerkleSlots(buckets: buckets + [buckets.count < 256 ? 255 : 0], encoded: theirs.encoded) }
    }

    /// Pages through every key of some slots, as a store does with `seeks`: each key once, in slot then key order.
    @Test func seeksResumeAfterAKeyInItsSlotAndGoOnAbove() throws {
        let keys = Self.states(5_000).map(\.key)
        let placed = keys.map { (slot: MerkleTree.slot(of: $0), bytes: Array($0.rawValue.utf8), key: $0) }
            .sorted { $0.slot != $1.slot ? $0.slot < $1.slot : $0.bytes.lexicographicallyPrecedes($1.bytes) }
        let wanted: [ClosedRange<Int>] = [MerkleTree.slots(ofBucket: 3), 900...1_400, 1_000...1_100, 65_000...70_000, -5...2]
        let inRanges = placed.filter { key in wanted.contains { $0.contains(key.slot) } }.map(\.key)
        // A store's page of at most 7 keys after `after`, and whether more remain.
        func page(after: Key?) -> (keys: [Key], more: Bool) {
            var all: [Key] = []
            for seek in MerkleTree.seeks(wanted, after: after) {
                let afterBytes = seek.after.map { Array($0.rawValue.utf8) }
                all += placed.filter { key in seek.slots.contains(key.slot) && (afterBytes.map { $0.lexicographicallyPrecedes(key.bytes) } ?? true) }.map(\.key)
            }
            return (Array(all.prefix(7)), all.count > 7)
        }
        var read: [Key] = []
        var after: Key?
        for _ in 0..<inRanges.count + 1 {
            let next = page(after: after)
            read += next.keys
            guard next.more else { break }
            after = next.keys.last
        }
        #expect(read == inRanges)
        #expect(MerkleTree.seeks([70_000...80_000], after: nil).isEmpty)
        #expect(MerkleTree.seeks([0...10, 5...20, 21...30], after: nil).map(\.slots) == [0...30])
    }

    /// Key items travel as listed, and the keys that differ are those changed or held by one side only.
    @Test func keyItemsRoundTripAndNameTheKeysThatDiffer() throws {
        let states = Self.states(50)
        let mine = states.prefix(40).map { (key: $0.key, item: MerkleTree.item($0.key, state: $0.state)) }
        var theirs = states.suffix(45).map { (key: $0.key, item: MerkleTree.item($0.key, state: $0.state)) }
        theirs[0].item = MerkleTree.Leaf(lanes: [1, 2, 3, 4, 5, 6, 7, 8])
        let decoded = try KeyItemCodec.decode(KeyItemCodec.encode(theirs))
        #expect(decoded.map(\.key) == theirs.map(\.key) && decoded.map(\.item) == theirs.map(\.item))
        // Mine holds 0..<40, theirs 5..<50 with key 5 changed: 5 and 40..<50 are worth pulling (0..<5 only mine).
        #expect(KeyItemCodec.keysToPull(mine: Array(mine), theirs: theirs) == [states[5].key] + (40..<50).map { states[$0].key })
        #expect(KeyItemCodec.bytes(try Key("ab")) == 36 && KeyItemCodec.encode(theirs).count == 4 + theirs.map { KeyItemCodec.bytes($0.key) }.reduce(0, +))
        var truncated = KeyItemCodec.encode(theirs)
        truncated.removeLast()
        #expect(throws: MeridianError.self) { try KeyItemCodec.decode(truncated) }
        #expect(throws: MeridianError.self) { try KeyItemCodec.decode([0xFF, 0xFF, 0xFF, 0xFF]) }
    }

    @Test func aRoundGoesDownToSlotsOnlyForLargeKeyspaces() {
        #expect(!MerkleSlots.worthAsking(keys: 100, peerKeys: 10_000))
        #expect(MerkleSlots.worthAsking(keys: 100, peerKeys: MerkleSlots.keysMin))
        #expect(MerkleSlots.worthAsking(keys: 0, peerKeys: 0, keysMin: 0))
        // Slot leaves are asked for in replies of at most half a frame.
        #expect(RepairBounds.slotBuckets(frameBytesMax: 4096) == 1 && RepairBounds.slotBuckets(frameBytesMax: 1 << 20) == 64)
        #expect(RepairBounds.slotBuckets(frameBytesMax: 4 << 20) == MerkleTree.bucketCount)
    }
}
