/// The versioned, length-prefixed binary form of a ``ReplicationEntry``, as sent between regions.
///
/// Frame layout (all integers big-endian):
///
///     u32 frameLength        bytes after this field
///     u8  codecVersion       4
///     u8  originLength, origin bytes
///     u64 sequence
///     u64 hlcPhysicalMs, u32 hlcLogical
///     u64 epoch
///     u8  keyspaceLength, keyspace bytes
///     u16 keyLength, key bytes
///     u8  operation          1 put, 2 delete, 3 merge (a CRDT delta)
///     u8  contentTypeLength, content type bytes
///     u32 valueLength, value bytes
///     u8  dependencyCount, per dependency: u8 originLength, origin bytes, u64 sequence
///     u8  contextCount, per origin: u8 originLength, origin bytes, u64 sequence
///     u8  idempotencyKeyLength (0: none), key bytes, then (if a key) 16 bytes of request fingerprint
///
/// Decoding validates every field and returns a typed error for truncated, oversized or garbage input;
/// it never traps.
public struct EntryCodec: Sendable {
    /// The codec version this build writes and reads.
    public static let version: UInt8 = 4
    /// Bytes before the frame body: the u32 length.
    public static let lengthPrefixBytes = 4
    /// The most bytes of a content type.
    public static let contentTypeBytesMax = 255

    /// The largest value accepted when decoding; frames claiming more are rejected before allocation.
    public let valueBytesMax: Int

    /// Creates a codec.
    /// - Parameter valueBytesMax: The largest value a decoded entry may carry.
    public init(valueBytesMax: Int) {
        precondition(valueBytesMax > 0 && valueBytesMax <= Int(UInt32.max))
        self.valueBytesMax = valueBytesMax
    }

    /// The largest frame this codec will decode, prefix included.
    public var frameBytesMax: Int {
        Self.lengthPrefixBytes + 1 + (1 + 64) + 8 + 12 + 8 + (1 + 64) + (2 + Key.utf8BytesMax) + 1
            + (1 + Self.contentTypeBytesMax) + (4 + valueBytesMax) + 2 * (1 + ReplicationEntry.dependenciesMax * (1 + 64 + 8))
            + 1 + IdempotencyKey.bytesMax + IdempotencyMark.fingerprintBytes
    }

    /// The bytes of an entry's idempotency mark on the wire, its length byte included.
    static func markBytes(_ mark: IdempotencyMark?) -> Int {
        mark.map { 1 + $0.key.rawValue.utf8.count + IdempotencyMark.fingerprintBytes } ?? 1
    }

    /// The bytes `encode` writes for an entry, length prefix included.
    public static func encodedBytes(_ entry: ReplicationEntry) -> Int {
        lengthPrefixBytes + 1 + 1 + entry.origin.rawValue.utf8.count + 8 + 12 + 8 + 1 + entry.keyspace.rawValue.utf8.count
            + 2 + entry.key.rawValue.utf8.count + 1 + 1 + min(entry.contentType.utf8.count, contentTypeBytesMax) + 4 + entry.value.count
            + DependencyCodec.encodedBytes(entry.dependencies) + DependencyCodec.encodedBytes(entry.context) + markBytes(entry.idempotency)
    }

    /// Appends one frame to `buffer`.
    public func encode(_ entry: ReplicationEntry, into buffer: inout [UInt8]) {
        let origin = Array(entry.origin.rawValue.utf8)
        let keyspace = Array(entry.keyspace.rawValue.utf8)
        let key = Array(entry.key.rawValue.utf8)
        let contentType = Array(entry.contentType.utf8.prefix(Self.contentTypeBytesMax))
        let bodyLength = 1 + 1 + origin.count + 8 + 12 + 8 + 1 + keyspace.count + 2 + key.count + 1
            + 1 + contentType.count + 4 + entry.value.count + DependencyCodec.encodedBytes(entry.dependencies)
            + DependencyCodec.encodedBytes(entry.context) + Self.markBytes(entry.idempotency)
        buffer.reserveCapacity(buffer.count + Self.lengthPrefixBytes + bodyLength)
        append(UInt32(bodyLength), to: &buffer)
        buffer.append(Self.version)
        buffer.append(UInt8(origin.count)); buffer += origin
        append(entry.sequence, to: &buffer)
        append(entry.hlc.physicalMs, to: &buffer)
        append(entry.hlc.logical, to: &buffer)
        append(entry.epoch, to: &buffer)
        buffer.append(UInt8(keyspace.count)); buffer += keyspace
        append(UInt16(key.count), to: &buffer); buffer += key
        buffer.append(entry.operation.rawValue)
        buffer.append(UInt8(contentType.count)); buffer += contentType
        append(UInt32(entry.value.count), to: &buffer); buffer += entry.value
        DependencyCodec.append(entry.dependencies, to: &buffer)
        DependencyCodec.append(entry.context, to: &buffer)
        if let mark = entry.idempotency {
            buffer.append(UInt8(mark.key.rawValue.utf8.count)); buffer += mark.key.rawValue.utf8
            buffer += mark.fingerprint
        } else {
            buffer.append(0)
        }
    }

    /// Encodes one entry as a standalone frame.
    public func encode(_ entry: ReplicationEntry) -> [UInt8] {
        var buffer: [UInt8] = []
        encode(entry, into: &buffer)
        return buffer
    }

    /// Decodes exactly one frame that fills `bytes`.
    /// - Throws: `MeridianError` with a `codec_*` code (or `invalid_*` for a bad identifier inside).
    public func decode(_ bytes: some Collection<UInt8>) throws(MeridianError) -> ReplicationEntry {
        let array = Array(bytes)
        guard let (entry, consumed) = try decodeFrame(array[...]) else {
            throw MeridianError(.codecTruncated, "The replication frame is truncated: \(array.count) bytes is less than its length prefix announces.",
                                context: ["bytes": String(array.count)])
        }
        guard consumed == array.count else {
            throw MeridianError(.codecLengthMismatch, "The replication frame is followed by \(array.count - consumed) unexpected bytes.",
                                context: ["trailing_bytes": String(array.count - consumed)])
        }
        return entry
    }

    /// Decodes the first frame of a stream buffer.
    /// - Returns: the entry and the bytes it used, or nil when the buffer does not yet hold a whole frame.
    /// - Throws: `MeridianError` when the bytes cannot be a valid frame, including a length beyond `frameBytesMax`.
    public func decodeFrame(_ bytes: ArraySlice<UInt8>) throws(MeridianError) -> (ReplicationEntry, Int)? {
        var reader = ByteReader(bytes)
        guard let bodyLength = reader.readUInt32() else { return nil }
        guard Int(bodyLength) + Self.lengthPrefixBytes <= frameBytesMax else {
            throw MeridianError(.codecLengthMismatch, "The replication frame announces \(bodyLength) bytes, more than the limit of \(frameBytesMax - Self.lengthPrefixBytes).",
                                context: ["frame_bytes": String(bodyLength)])
        }
        guard reader.remaining >= Int(bodyLength) else { return nil }
        var body = ByteReader(reader.take(Int(bodyLength))!)
        let entry = try decodeBody(&body)
        guard body.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "The replication frame's fields end \(body.remaining) bytes before its announced length.",
                                context: ["unused_bytes": String(body.remaining)])
        }
        return (entry, Self.lengthPrefixBytes + Int(bodyLength))
    }

    private func decodeBody(_ body: inout ByteReader) throws(MeridianError) -> ReplicationEntry {
        let version = try body.required(body.readUInt8(), "codec_version")
        guard version == Self.version else {
            throw MeridianError(.codecUnsupportedVersion, "The replication frame uses codec version \(version); this node speaks version \(Self.version). Upgrade the older region.",
                                context: ["codec_version": String(version)])
        }
        let originLength = Int(try body.required(body.readUInt8(), "origin_length"))
        let origin = try RegionName(try body.utf8(originLength, "origin"))
        let sequence = try body.required(body.readUInt64(), "sequence")
        guard sequence >= 1 else {
            throw MeridianError(.codecInvalidField, "The replication frame has sequence 0; sequences start at 1.", context: ["field": "sequence"])
        }
        let physicalMs = try body.required(body.readUInt64(), "hlc_physical_ms")
        let logical = try body.required(body.readUInt32(), "hlc_logical")
        let epoch = try body.required(body.readUInt64(), "epoch")
        // Stores keep these as signed 64-bit integers; larger values can only come from a corrupt or hostile peer.
        for (field, value) in [("sequence", sequence), ("hlc_physical_ms", physicalMs), ("epoch", epoch)] where value > UInt64(Int64.max) {
            throw MeridianError(.codecInvalidField, "The replication frame's \(field) \(value) exceeds \(Int64.max).",
                                context: ["field": field, "value": String(value)])
        }
        let keyspaceLength = Int(try body.required(body.readUInt8(), "keyspace_length"))
        let keyspace = try KeyspaceName(try body.utf8(keyspaceLength, "keyspace"))
        let keyLength = Int(try body.required(body.readUInt16(), "key_length"))
        let key = try Key(try body.utf8(keyLength, "key"))
        let operationByte = try body.required(body.readUInt8(), "operation")
        guard let operation = Operation(rawValue: operationByte) else {
            throw MeridianError(.codecInvalidField, "The replication frame has operation \(operationByte); known operations are 1 (put), 2 (delete) and 3 (merge).",
                                context: ["field": "operation", "value": String(operationByte)])
        }
        let contentTypeLength = Int(try body.required(body.readUInt8(), "content_type_length"))
        let contentType = try body.utf8(contentTypeLength, "content_type")
        let valueLength = Int(try body.required(body.readUInt32(), "value_length"))
        guard valueLength <= valueBytesMax else {
            throw MeridianError(.codecInvalidField, "The replication frame carries a \(valueLength)-byte value; the limit is \(valueBytesMax).",
                                context: ["field": "value_length", "value": String(valueLength)])
        }
        let value = Array(try body.required(body.take(valueLength), "value"))
        var dependencies = try DependencyCodec.read(&body)
        // An entry never depends on its own origin: its log order already says that.
        dependencies[origin] = nil
        let context = try DependencyCodec.read(&body)
        var idempotency: IdempotencyMark?
        let markLength = Int(try body.required(body.readUInt8(), "idempotency_key_length"))
        if markLength > 0 {
            let key = try body.utf8(markLength, "idempotency_key")
            do {
                idempotency = IdempotencyMark(key: try IdempotencyKey(key),
                                              fingerprint: Array(try body.required(body.take(IdempotencyMark.fingerprintBytes), "idempotency_fingerprint")))
            } catch where error.code == .invalidHeader {
                throw MeridianError(.codecInvalidField, "The replication frame's idempotency key is not visible ASCII.", context: ["field": "idempotency_key"])
            }
        }
        return ReplicationEntry(
            origin: origin, sequence: sequence,
            hlc: HLCTimestamp(physicalMs: physicalMs, logical: logical, region: origin),
            epoch: epoch, keyspace: keyspace, key: key, operation: operation,
            contentType: contentType, value: value, dependencies: dependencies, context: context, idempotency: idempotency)
    }

    private func append<I: FixedWidthInteger>(_ value: I, to buffer: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { buffer.append(contentsOf: $0) }
    }
}

/// A bounds-checked cursor over bytes; every read returns nil rather than reading past the end.
struct ByteReader {
    private var bytes: ArraySlice<UInt8>

    init(_ bytes: ArraySlice<UInt8>) { self.bytes = bytes }

    var remaining: Int { bytes.count }

    /// The bytes not yet read.
    func rest() -> ArraySlice<UInt8> { bytes }

    mutating func take(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, bytes.count >= count else { return nil }
        let slice = bytes.prefix(count)
        bytes = bytes.dropFirst(count)
        return slice
    }

    mutating func readUInt8() -> UInt8? { take(1)?.first }
    mutating func readUInt16() -> UInt16? { readInteger() }
    mutating func readUInt32() -> UInt32? { readInteger() }
    mutating func readUInt64() -> UInt64? { readInteger() }

    private mutating func readInteger<I: FixedWidthInteger>() -> I? {
        guard let slice = take(MemoryLayout<I>.size) else { return nil }
        return slice.reduce(I.zero) { ($0 << 8) | I($1) }
    }

    func required<T>(_ value: T?, _ field: String) throws(MeridianError) -> T {
        guard let value else {
            throw MeridianError(.codecTruncated, "The replication frame ends inside the field '\(field)'.", context: ["field": field])
        }
        return value
    }

    mutating func utf8(_ count: Int, _ field: String) throws(MeridianError) -> String {
        let slice = try required(take(count), field)
        guard let string = String(validating: slice, as: UTF8.self) else {
            throw MeridianError(.codecInvalidField, "The replication frame's field '\(field)' is not valid UTF-8.", context: ["field": field])
        }
        return string
    }
}
