/// One failover this region won, with its timings, as `GET /v1/failovers` lists it.
public struct FailoverAnswer: Codable, Equatable, Sendable {
    public let keyspace: String
    public let epoch: UInt64
    public let leader: String
    public let previousLeader: String?
    public let reason: String
    public let lastHeardMs: UInt64?
    public let suspectedMs: UInt64
    public let electedMs: UInt64
    public let firstWriteMs: UInt64?
    /// From the last word of the previous leader to the first write of the new term, as the new leader saw it.
    public let rtoMs: UInt64?
    public let electionMs: UInt64
    public let divertedHere: Int

    public init(keyspace: String, epoch: UInt64, leader: String, previousLeader: String?, reason: String, lastHeardMs: UInt64?,
                suspectedMs: UInt64, electedMs: UInt64, firstWriteMs: UInt64?, rtoMs: UInt64?, electionMs: UInt64, divertedHere: Int) {
        self.keyspace = keyspace
        self.epoch = epoch
        self.leader = leader
        self.previousLeader = previousLeader
        self.reason = reason
        self.lastHeardMs = lastHeardMs
        self.suspectedMs = suspectedMs
        self.electedMs = electedMs
        self.firstWriteMs = firstWriteMs
        self.rtoMs = rtoMs
        self.electionMs = electionMs
        self.divertedHere = divertedHere
    }

    enum CodingKeys: String, CodingKey {
        case keyspace, epoch, leader, reason
        case previousLeader = "previous_leader"
        case lastHeardMs = "last_heard_ms"
        case suspectedMs = "suspected_ms"
        case electedMs = "elected_ms"
        case firstWriteMs = "first_write_ms"
        case rtoMs = "rto_ms"
        case electionMs = "election_ms"
        case divertedHere = "diverted_here"
    }
}

/// The answer of `GET /v1/failovers`.
public struct FailoversAnswer: Codable, Equatable, Sendable {
    public let region: String
    public let failovers: [FailoverAnswer]
    /// Writes kept aside in this region, by "keyspace/epoch" of the term that fenced them.
    public let diverted: [String: Int]

    public init(region: String, failovers: [FailoverAnswer], diverted: [String: Int]) {
        self.region = region
        self.failovers = failovers
        self.diverted = diverted
    }
}

/// One write kept aside in the divergence log, as `GET /v1/divergence` lists it.
public struct DivergedWriteAnswer: Codable, Equatable, Sendable {
    public let id: Int64
    public let keyspace: String
    public let key: String
    public let origin: String
    public let sequence: UInt64
    public let epoch: UInt64
    public let successorEpoch: UInt64
    public let version: String
    public let operation: String
    public let contentType: String
    /// As text when it is UTF-8, else as `value_base64`, like every stored value the API shows.
    public let value: StoredBytes
    public let recordedMs: UInt64
    public let reappliedMs: UInt64?

    public init(id: Int64, keyspace: String, key: String, origin: String, sequence: UInt64, epoch: UInt64, successorEpoch: UInt64,
                version: String, operation: String, contentType: String, value: StoredBytes, recordedMs: UInt64, reappliedMs: UInt64?) {
        self.id = id
        self.keyspace = keyspace
        self.key = key
        self.origin = origin
        self.sequence = sequence
        self.epoch = epoch
        self.successorEpoch = successorEpoch
        self.version = version
        self.operation = operation
        self.contentType = contentType
        self.value = value
        self.recordedMs = recordedMs
        self.reappliedMs = reappliedMs
    }

    enum CodingKeys: String, CodingKey {
        case id, keyspace, key, origin, sequence, epoch, version, operation
        case successorEpoch = "successor_epoch"
        case contentType = "content_type"
        case recordedMs = "recorded_ms"
        case reappliedMs = "reapplied_ms"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(Int64.self, forKey: .id)
        keyspace = try container.decode(String.self, forKey: .keyspace)
        key = try container.decode(String.self, forKey: .key)
        origin = try container.decode(String.self, forKey: .origin)
        sequence = try container.decode(UInt64.self, forKey: .sequence)
        epoch = try container.decode(UInt64.self, forKey: .epoch)
        successorEpoch = try container.decode(UInt64.self, forKey: .successorEpoch)
        version = try container.decode(String.self, forKey: .version)
        operation = try container.decode(String.self, forKey: .operation)
        contentType = try container.decode(String.self, forKey: .contentType)
        recordedMs = try container.decode(UInt64.self, forKey: .recordedMs)
        reappliedMs = try container.decodeIfPresent(UInt64.self, forKey: .reappliedMs)
        // The value's fields sit beside the others.
        value = try StoredBytes(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(keyspace, forKey: .keyspace)
        try container.encode(key, forKey: .key)
        try container.encode(origin, forKey: .origin)
        try container.encode(sequence, forKey: .sequence)
        try container.encode(epoch, forKey: .epoch)
        try container.encode(successorEpoch, forKey: .successorEpoch)
        try container.encode(version, forKey: .version)
        try container.encode(operation, forKey: .operation)
        try container.encode(contentType, forKey: .contentType)
        try container.encode(recordedMs, forKey: .recordedMs)
        try container.encodeIfPresent(reappliedMs, forKey: .reappliedMs)
        try value.encode(to: encoder)
    }
}

/// The answer of `GET /v1/divergence`: a page of the writes kept aside in this region.
public struct DivergenceAnswer: Codable, Equatable, Sendable {
    public let region: String
    public let writes: [DivergedWriteAnswer]
    /// The `after` of the next page (absent on the last page).
    public let next: Int64?

    public init(region: String, writes: [DivergedWriteAnswer], next: Int64?) {
        self.region = region
        self.writes = writes
        self.next = next
    }
}
