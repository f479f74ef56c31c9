import Crypto

/// A keyspace's contents in one region as a Merkle tree, so two regions find the keys they disagree on
/// without sending them: keys fall into 256 buckets by the first byte of their SHA-256; a bucket's leaf
/// sums its keys' item hashes; the root hashes the leaves. Regions compare roots, and on a difference
/// exchange the 256 leaves (8 KiB, one round trip at WAN latencies rather than one per tree level) and
/// repair only the differing buckets.
///
/// A large keyspace has a second level: each bucket splits into 256 slots by the second byte of the key's
/// SHA-256, and a slot's leaf sums its keys' items as a bucket's does (so a bucket's leaf is the sum of its
/// slots'). Regions that disagree on a few keys of a large keyspace exchange the slot leaves of the differing
/// buckets (``MerkleSlots``, 8 KiB per bucket), then list the keys of the differing slots with their item hashes
/// (``KeyItemCodec``, about `keys / 65,536` per differing key) and pull the states of only the keys that differ.
///
/// A leaf does not depend on the order its keys were added in, so a store keeps it up to date as keys change
/// (as Riak's active anti-entropy keeps its trees) instead of rebuilding it from every key: a key's item hash
/// (``item(_:digest:)``) is the SHA-256 of the key and its state's digest, read as eight 32-bit words, and lane
/// `i` of a leaf is the sum, modulo 2^32, of word `i` of its keys' items (``Leaf``). Changing one key subtracts
/// its old item and adds its new one. Two leaves of different key sets agree only if all eight lanes do.
public struct MerkleTree: Sendable, Hashable {
    /// Buckets, and so leaves.
    public static let bucketCount = 256
    static let digestBytes = 32

    /// One hash per bucket (all zeros for an empty bucket).
    public let leaves: [[UInt8]]

    /// Slots per bucket, and in all.
    public static let slotsPerBucket = 256
    public static let slotCount = bucketCount * slotsPerBucket

    /// The bucket a key belongs to.
    public static func bucket(of key: Key) -> Int {
        bucket(ofSlot: slot(of: key))
    }

    /// The slot a key belongs to: the first two bytes of its SHA-256 (the first is its bucket).
    public static func slot(of key: Key) -> Int {
        SHA256.hash(data: Array(key.rawValue.utf8)).withUnsafeBytes { Int($0[0]) << 8 | Int($0[1]) }
    }

    public static func bucket(ofSlot slot: Int) -> Int {
        slot / slotsPerBucket
    }

    /// A bucket's slots.
    public static func slots(ofBucket bucket: Int) -> ClosedRange<Int> {
        bucket * slotsPerBucket...bucket * slotsPerBucket + slotsPerBucket - 1
    }

    /// Where a page of the keys of some slots starts, as ranges of slots read in order: keys come in slot order,
    /// and in key order within a slot (their UTF-8 bytes), so the page after key `after` goes on in `after`'s
    /// slot past it and then in the slots above. Ranges are clamped to the slots that exist and merged.
    public static func seeks(_ ranges: [ClosedRange<Int>], after: Key?) -> [(slots: ClosedRange<Int>, after: Key?)] {
        var merged: [ClosedRange<Int>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            let lower = max(range.lowerBound, 0), upper = min(range.upperBound, slotCount - 1)
            guard lower <= upper else { continue }
            if let last = merged.last, lower <= last.upperBound + 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, upper)
            } else {
                merged.append(lower...upper)
            }
        }
        guard let after else { return merged.map { ($0, nil) } }
        let start = slot(of: after)
        var seeks: [(slots: ClosedRange<Int>, after: Key?)] = []
        for range in merged where range.upperBound >= start {
            if range.contains(start) {
                seeks.append((start...start, after))
                if start < range.upperBound { seeks.append((start + 1...range.upperBound, nil)) }
            } else {
                seeks.append((range, nil))
            }
        }
        return seeks
    }

    /// A key's contribution to its bucket's leaf: the SHA-256 of its length-prefixed bytes and its state in
    /// ``KeyStateCodec``'s form (so equal states give equal items in every region), in one pass.
    public static func item(_ key: Key, state: KeyState) -> Leaf {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256)
        let keyBytes = key.rawValue.utf8
        bytes.append(UInt8(keyBytes.count >> 8))
        bytes.append(UInt8(keyBytes.count & 0xFF))
        bytes.append(contentsOf: keyBytes)
        KeyStateCodec.append(state, to: &bytes)
        return SHA256.hash(data: bytes).withUnsafeBytes { Leaf(digest: $0) }
    }

    /// A leaf, or an item hash: eight 32-bit lanes that add and subtract modulo 2^32 each.
    public struct Leaf: Sendable, Hashable {
        /// The eight lanes, each added modulo 2^32 (a vector: no allocation, one instruction per add).
        public private(set) var lanes: SIMD8<UInt32>

        /// The empty bucket's leaf (all zeros).
        public static let empty = Leaf(lanes: SIMD8<UInt32>())

        public init(lanes: SIMD8<UInt32>) {
            self.lanes = lanes
        }

        public init(lanes: [UInt32]) {
            self.init(lanes: SIMD8(lanes))
        }

        /// Eight big-endian words.
        public init(bytes: [UInt8]) {
            precondition(bytes.count == MerkleTree.digestBytes)
            self = bytes.withUnsafeBytes { Leaf(digest: $0) }
        }

        /// Eight big-endian words of a 32-byte digest.
        init(digest: UnsafeRawBufferPointer) {
            precondition(digest.count == MerkleTree.digestBytes)
            var lanes = SIMD8<UInt32>()
            for lane in 0..<8 { lanes[lane] = UInt32(bigEndian: digest.loadUnaligned(fromByteOffset: lane * 4, as: UInt32.self)) }
            self.lanes = lanes
        }

        public var bytes: [UInt8] {
            var bytes = [UInt8](repeating: 0, count: MerkleTree.digestBytes)
            bytes.withUnsafeMutableBytes { buffer in
                for lane in 0..<8 { buffer.storeBytes(of: lanes[lane].bigEndian, toByteOffset: lane * 4, as: UInt32.self) }
            }
            return bytes
        }

        public mutating func add(_ other: Leaf) {
            lanes &+= other.lanes
        }

        public mutating func subtract(_ other: Leaf) {
            lanes &-= other.lanes
        }
    }

    /// Builds the tree from every key's state, in any order.
    public init(states: [(key: Key, state: KeyState)]) {
        var builder = Builder()
        for item in states { builder.add(item.key, state: item.state) }
        self = builder.tree
    }

    /// The tree of leaves a store keeps up to date (a bucket left out is empty).
    public init(leaves: [Int: Leaf]) {
        self.leaves = (0..<Self.bucketCount).map { (leaves[$0] ?? .empty).bytes }
    }

    /// Builds a tree from keys added in any order, in constant memory.
    public struct Builder {
        private var sums = [Leaf](repeating: .empty, count: MerkleTree.bucketCount)
        /// Keys added.
        public private(set) var keys = 0

        public init() {}

        /// Adds a key's state.
        public mutating func add(_ key: Key, state: KeyState) {
            sums[MerkleTree.bucket(of: key)].add(MerkleTree.item(key, state: state))
            keys += 1
        }

        /// The tree of everything added.
        public var tree: MerkleTree {
            MerkleTree(leaves: sums.map(\.bytes))
        }
    }

    init(leaves: [[UInt8]]) { self.leaves = leaves }

    /// The root: the hash of every leaf in order.
    public var root: [UInt8] {
        var hasher = SHA256()
        for leaf in leaves { hasher.update(data: leaf) }
        return Array(hasher.finalize())
    }

    /// The buckets whose leaves differ from another region's tree.
    public func differingBuckets(_ other: MerkleTree) -> [Int] {
        (0..<Self.bucketCount).filter { leaves[$0] != other.leaves[$0] }
    }

    /// The leaves as bytes (256 × 32).
    public var encoded: [UInt8] { leaves.flatMap { $0 } }

    /// Reads leaves sent by a peer.
    /// - Throws: `codec_length_mismatch` unless exactly 256 × 32 bytes.
    public init(encoded bytes: [UInt8]) throws(MeridianError) {
        guard bytes.count == Self.bucketCount * Self.digestBytes else {
            throw MeridianError(.codecLengthMismatch, "A Merkle tree is \(Self.bucketCount * Self.digestBytes) bytes; \(bytes.count) arrived.")
        }
        leaves = (0..<Self.bucketCount).map { Array(bytes[$0 * Self.digestBytes..<($0 + 1) * Self.digestBytes]) }
    }

    /// A short hex form of a root, for reports.
    public static func hex(_ digest: [UInt8]) -> String {
        digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// The second level of a keyspace's tree for some of its buckets: each bucket's 256 slot leaves, in bucket order
/// (``MerkleTree`` explains slots). Two regions exchange them only for the buckets whose leaves differ.
public struct MerkleSlots: Sendable, Hashable {
    /// The buckets, ascending, each at most once.
    public let buckets: [Int]
    /// `buckets.count × 256` leaves: bucket by bucket, slot by slot.
    public let leaves: [MerkleTree.Leaf]

    static let bucketBytes = MerkleTree.slotsPerBucket * MerkleTree.digestBytes

    /// The fewest keys (in either region's tree) at which a round asks for the slot leaves of the differing
    /// buckets rather than pulling them whole: 128 keys a bucket on average, where a bucket's states outweigh
    /// its 8 KiB of slot leaves and the extra round trip.
    public static let keysMin = 32_768

    /// Whether a round over trees of these key counts goes down to slots.
    public static func worthAsking(keys: Int, peerKeys: Int, keysMin: Int = keysMin) -> Bool {
        max(keys, peerKeys) >= keysMin
    }

    /// The slot leaves of `buckets` computed from every key's state, in any order.
    public init(buckets: [Int], states: some Sequence<(key: Key, state: KeyState)>) {
        let wanted = Set(buckets)
        var slots: [Int: MerkleTree.Leaf] = [:]
        for item in states {
            let slot = MerkleTree.slot(of: item.key)
            guard wanted.contains(MerkleTree.bucket(ofSlot: slot)) else { continue }
            slots[slot, default: .empty].add(MerkleTree.item(item.key, state: item.state))
        }
        self.init(buckets: buckets, slots: slots)
    }

    /// The slot leaves of `buckets` from the leaves a store keeps per slot (a slot left out is empty).
    public init(buckets: [Int], slots: [Int: MerkleTree.Leaf]) {
        self.buckets = Array(Set(buckets)).sorted()
        leaves = self.buckets.flatMap { bucket in MerkleTree.slots(ofBucket: bucket).map { slots[$0] ?? .empty } }
    }

    /// The slots whose leaves differ from another region's, within the buckets both name.
    public func differingSlots(_ other: MerkleSlots) -> [Int] {
        let theirs = Dictionary(uniqueKeysWithValues: other.buckets.enumerated().map { ($1, $0) })
        var differing: [Int] = []
        for (index, bucket) in buckets.enumerated() {
            guard let their = theirs[bucket] else { continue }
            for offset in 0..<MerkleTree.slotsPerBucket
            where leaves[index * MerkleTree.slotsPerBucket + offset] != other.leaves[their * MerkleTree.slotsPerBucket + offset] {
                differing.append(MerkleTree.slots(ofBucket: bucket).lowerBound + offset)
            }
        }
        return differing
    }

    /// A slot's leaf, when its bucket is among these.
    public func leaf(ofSlot slot: Int) -> MerkleTree.Leaf? {
        guard let index = buckets.firstIndex(of: MerkleTree.bucket(ofSlot: slot)) else { return nil }
        return leaves[index * MerkleTree.slotsPerBucket + slot % MerkleTree.slotsPerBucket]
    }

    /// The leaves as bytes (8 KiB per bucket, in bucket order).
    public var encoded: [UInt8] { leaves.flatMap(\.bytes) }

    /// Reads the slot leaves a peer sent for the buckets asked for.
    /// - Throws: `codec_length_mismatch` unless exactly 8 KiB per bucket.
    public init(buckets: [Int], encoded bytes: [UInt8]) throws(MeridianError) {
        let sorted = Array(Set(buckets)).sorted()
        guard bytes.count == sorted.count * Self.bucketBytes else {
            throw MeridianError(.codecLengthMismatch, "The slot leaves of \(sorted.count) buckets are \(sorted.count * Self.bucketBytes) bytes; \(bytes.count) arrived.")
        }
        self.buckets = sorted
        leaves = (0..<sorted.count * MerkleTree.slotsPerBucket).map { index in
            MerkleTree.Leaf(bytes: Array(bytes[index * MerkleTree.digestBytes..<(index + 1) * MerkleTree.digestBytes]))
        }
    }
}

/// Keys with their item hashes (``MerkleTree/item(_:state:)``), as a region lists the keys of differing slots so
/// its peer pulls the states of only the keys that differ: `u32 count`, then per key `u16 keyLength, key,
/// 32-byte item`.
public enum KeyItemCodec {
    public static func encode(_ items: [(key: Key, item: MerkleTree.Leaf)]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(4 + items.count * 48)
        withUnsafeBytes(of: UInt32(items.count).bigEndian) { bytes += $0 }
        for entry in items {
            let key = Array(entry.key.rawValue.utf8)
            withUnsafeBytes(of: UInt16(key.count).bigEndian) { bytes += $0 }
            bytes += key
            bytes += entry.item.bytes
        }
        return bytes
    }

    /// - Throws: `codec_*` errors for anything malformed.
    public static func decode(_ bytes: [UInt8]) throws(MeridianError) -> [(key: Key, item: MerkleTree.Leaf)] {
        var reader = ByteReader(bytes[...])
        let count = Int(try reader.required(reader.readUInt32(), "item_count"))
        guard count <= reader.remaining / (2 + 1 + MerkleTree.digestBytes) else {
            throw MeridianError(.codecTruncated, "Key items claim \(count) keys, more than their bytes can hold.", context: ["field": "item_count"])
        }
        var items: [(key: Key, item: MerkleTree.Leaf)] = []
        items.reserveCapacity(count)
        for _ in 0..<count {
            let keyLength = Int(try reader.required(reader.readUInt16(), "key_length"))
            let key = try Key(try reader.utf8(keyLength, "key"))
            items.append((key, MerkleTree.Leaf(bytes: Array(try reader.required(reader.take(MerkleTree.digestBytes), "item")))))
        }
        guard reader.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "Key items are followed by \(reader.remaining) unexpected bytes.")
        }
        return items
    }

    /// The bytes one key's item takes.
    public static func bytes(_ key: Key) -> Int {
        2 + key.rawValue.utf8.count + MerkleTree.digestBytes
    }

    /// The keys a peer listed whose items differ here (held here differently, or not at all), in the peer's order:
    /// the states worth pulling. Keys held only here are left out; the peer has nothing to send for them.
    public static func keysToPull(mine: [(key: Key, item: MerkleTree.Leaf)], theirs: [(key: Key, item: MerkleTree.Leaf)]) -> [Key] {
        let held = Dictionary(mine.map { ($0.key, $0.item) }) { first, _ in first }
        return theirs.filter { held[$0.key] != $0.item }.map(\.key)
    }
}

/// A page of keyed states within a byte bound, as ``KeyStateCodec/encode(_:)`` lays them out: at least one state,
/// and once one does not fit, the key to continue after.
public struct KeyStatePage {
    public let bytesMax: Int
    public private(set) var states: [(key: Key, state: KeyState)] = []
    /// Set once a state did not fit: the last key of the page.
    public private(set) var next: Key?
    private var bytes = 0

    public init(bytesMax: Int) {
        self.bytesMax = bytesMax
    }

    /// Adds a state if it fits (the first always does). - Returns: false when the page is full (nothing added).
    public mutating func add(_ key: Key, _ state: KeyState) -> Bool {
        guard next == nil else { return false }
        var encoded: [UInt8] = []
        KeyStateCodec.append(state, to: &encoded)
        let size = encoded.count + key.rawValue.utf8.count + 2
        if !states.isEmpty && bytes + size > bytesMax {
            next = states.last?.key
            return false
        }
        bytes += size
        states.append((key, state))
        return true
    }
}

/// The binary form of key states, as anti-entropy sends them between regions and digests them.
///
/// A state: the context (`DependencyCodec`), `u32 versionCount`, then per version in dot order: `u8 originLength,
/// origin, u64 sequence, u64 hlcPhysicalMs, u32 hlcLogical, u8 tombstone, u8 contentTypeLength, content type,
/// u32 valueLength, value`, dependencies (`DependencyCodec`). A list of keyed states: `u32 count`, then per
/// state `u16 keyLength, key`, the state.
public enum KeyStateCodec {
    public static func append(_ state: KeyState, to bytes: inout [UInt8]) {
        DependencyCodec.append(state.context.byRegion, to: &bytes)
        append(UInt32(state.versions.count), to: &bytes)
        for version in state.versions {
            let origin = Array(version.version.origin.rawValue.utf8)
            bytes.append(UInt8(origin.count))
            bytes += origin
            append(version.version.sequence, to: &bytes)
            append(version.version.hlc.physicalMs, to: &bytes)
            append(version.version.hlc.logical, to: &bytes)
            bytes.append(version.tombstone ? 1 : 0)
            let contentType = Array(version.contentType.utf8.prefix(EntryCodec.contentTypeBytesMax))
            bytes.append(UInt8(contentType.count))
            bytes += contentType
            append(UInt32(version.value.count), to: &bytes)
            bytes += version.value
            DependencyCodec.append(version.dependencies, to: &bytes)
        }
    }

    /// Encodes keyed states.
    public static func encode(_ states: [(key: Key, state: KeyState)]) -> [UInt8] {
        var bytes: [UInt8] = []
        append(UInt32(states.count), to: &bytes)
        for item in states {
            let key = Array(item.key.rawValue.utf8)
            append(UInt16(key.count), to: &bytes)
            bytes += key
            append(item.state, to: &bytes)
        }
        return bytes
    }

    /// Decodes keyed states sent by a peer.
    /// - Parameter valueBytesMax: The largest value a version may hold.
    /// - Throws: `codec_*` errors for anything malformed.
    public static func decode(_ bytes: [UInt8], valueBytesMax: Int) throws(MeridianError) -> [(key: Key, state: KeyState)] {
        var reader = ByteReader(bytes[...])
        let count = Int(try reader.required(reader.readUInt32(), "state_count"))
        guard count <= reader.remaining / 8 else {
            throw MeridianError(.codecTruncated, "Anti-entropy states claim \(count) keys, more than their bytes can hold.", context: ["field": "state_count"])
        }
        var result: [(key: Key, state: KeyState)] = []
        for _ in 0..<count {
            let keyLength = Int(try reader.required(reader.readUInt16(), "key_length"))
            let key = try Key(try reader.utf8(keyLength, "key"))
            result.append((key, try read(&reader, valueBytesMax: valueBytesMax)))
        }
        guard reader.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "Anti-entropy states are followed by \(reader.remaining) unexpected bytes.")
        }
        return result
    }

    /// Encodes one state.
    public static func encode(_ state: KeyState) -> [UInt8] {
        var bytes: [UInt8] = []
        append(state, to: &bytes)
        return bytes
    }

    /// Decodes one state sent by a peer.
    /// - Throws: `codec_*` errors for anything malformed.
    public static func decodeState(_ bytes: [UInt8], valueBytesMax: Int) throws(MeridianError) -> KeyState {
        var reader = ByteReader(bytes[...])
        let state = try read(&reader, valueBytesMax: valueBytesMax)
        guard reader.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "A key state is followed by \(reader.remaining) unexpected bytes.")
        }
        return state
    }

    /// Reads one state: its context and its versions.
    static func read(_ reader: inout ByteReader, valueBytesMax: Int) throws(MeridianError) -> KeyState {
        let context = VersionVector(try DependencyCodec.read(&reader))
        let versionCount = Int(try reader.required(reader.readUInt32(), "version_count"))
        guard versionCount >= 1, versionCount <= reader.remaining / 27 else {
            throw MeridianError(.codecInvalidField, "A key state holds \(versionCount) versions; it must hold at least one that fits its bytes.",
                                context: ["field": "version_count"])
        }
        var versions: [KeyVersion] = []
        var dots: Set<Dot> = []
        for _ in 0..<versionCount {
            let originLength = Int(try reader.required(reader.readUInt8(), "origin_length"))
            let origin = try RegionName(try reader.utf8(originLength, "origin"))
            let sequence = try reader.required(reader.readUInt64(), "sequence")
            let physicalMs = try reader.required(reader.readUInt64(), "hlc_physical_ms")
            let logical = try reader.required(reader.readUInt32(), "hlc_logical")
            let tombstone = try reader.required(reader.readUInt8(), "tombstone")
            let contentTypeLength = Int(try reader.required(reader.readUInt8(), "content_type_length"))
            let contentType = try reader.utf8(contentTypeLength, "content_type")
            let valueLength = Int(try reader.required(reader.readUInt32(), "value_length"))
            guard (1...UInt64(Int64.max)).contains(sequence), physicalMs <= UInt64(Int64.max), tombstone <= 1, valueLength <= valueBytesMax else {
                throw MeridianError(.codecInvalidField, "A key state's version of \(origin) is out of range.", context: ["field": "version"])
            }
            let value = Array(try reader.required(reader.take(valueLength), "value"))
            let dependencies = try DependencyCodec.read(&reader)
            let version = KeyVersion(version: Version(hlc: HLCTimestamp(physicalMs: physicalMs, logical: logical, region: origin), sequence: sequence),
                                     tombstone: tombstone == 1, contentType: contentType, value: value, dependencies: dependencies)
            guard dots.insert(version.dot).inserted else {
                throw MeridianError(.codecInvalidField, "A key state names version \(version.dot) twice.", context: ["field": "version"])
            }
            versions.append(version)
        }
        return KeyState(context: context, versions: versions)
    }

    private static func append<I: FixedWidthInteger>(_ value: I, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
    }
}
