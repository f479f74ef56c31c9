/// What one anti-entropy round with one peer found and did, for a keyspace.
///
/// The answer of `POST /v1/admin/repair`, one per keyspace and peer under `repairs`.
public struct RepairReport: Codable, Equatable, Sendable {
    public let keyspace: String
    public let region: String
    public let peer: String
    /// This region's Merkle root before and after, and the peer's.
    public let rootBefore: String
    public let rootAfter: String
    public let peerRoot: String
    public let keys: Int
    /// Buckets whose leaves differed.
    public let bucketsDiffering: Int
    /// Slots of those buckets whose leaves differed (0 when the keyspace is small enough to pull whole buckets).
    public let slotsDiffering: Int
    /// Key states the peer sent (every key of the differing buckets or slots) and how many of them changed a key here.
    public let keysReceived: Int
    public let keysChanged: Int
    /// Why the round stopped short (absent when it completed).
    public let error: String?

    public init(keyspace: String, region: String, peer: String, rootBefore: String, rootAfter: String, peerRoot: String, keys: Int,
                bucketsDiffering: Int, slotsDiffering: Int, keysReceived: Int, keysChanged: Int, error: String?) {
        self.keyspace = keyspace
        self.region = region
        self.peer = peer
        self.rootBefore = rootBefore
        self.rootAfter = rootAfter
        self.peerRoot = peerRoot
        self.keys = keys
        self.bucketsDiffering = bucketsDiffering
        self.slotsDiffering = slotsDiffering
        self.keysReceived = keysReceived
        self.keysChanged = keysChanged
        self.error = error
    }

    enum CodingKeys: String, CodingKey {
        case keyspace, region, peer, keys, error
        case rootBefore = "root_before"
        case rootAfter = "root_after"
        case peerRoot = "peer_root"
        case bucketsDiffering = "buckets_differing"
        case slotsDiffering = "slots_differing"
        case keysReceived = "keys_received"
        case keysChanged = "keys_changed"
    }
}

/// The answer of `GET /v1/admin/merkle/{keyspace}`: this region's Merkle root of a keyspace and how many keys it covers.
public struct MerkleAnswer: Codable, Equatable, Sendable {
    public let keyspace: String
    public let region: String
    public let root: String
    public let keys: Int

    public init(keyspace: String, region: String, root: String, keys: Int) {
        self.keyspace = keyspace
        self.region = region
        self.root = root
        self.keys = keys
    }
}
