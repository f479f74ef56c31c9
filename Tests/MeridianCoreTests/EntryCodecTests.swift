// Proves the replication frame codec round-trips every entry and that truncated, corrupted or hostile
// bytes produce typed errors and never a crash: random entries, every truncation point, random byte
// flips and random garbage (seeded; PropertyBased prints the seed on failure).
import MeridianCore
import PropertyBased
import Testing

@Suite struct EntryCodecTests {
    let codec = EntryCodec(valueBytesMax: 4096)

    static let regionNames = ["us-east", "eu-west", "ap-southeast", "r"]

    static func entry(region: Int, sequence: UInt64, physical: UInt64, logical: UInt32, epoch: UInt64, key: String,
                      delete: Bool, value: [UInt8]) -> ReplicationEntry {
        let origin = RegionName(validated: regionNames[region])
        // Odd sequences carry session dependencies on the other regions' logs.
        let dependencies = sequence % 2 == 1
            ? Dictionary(uniqueKeysWithValues: regionNames.indices.filter { $0 != region }.map { (RegionName(validated: regionNames[$0]), sequence % 1000 + UInt64($0) + 1) })
            : [:]
        // Every third entry carries an idempotency key.
        let idempotency = sequence % 3 == 0
            ? IdempotencyMark(key: try! IdempotencyKey("retry-\(key)"), fingerprint: Array(value.prefix(16)) + Array(repeating: 7, count: max(0, 16 - value.count)))
            : nil
        return ReplicationEntry(
            origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: physical, logical: logical, region: origin), epoch: epoch,
            keyspace: try! KeyspaceName("ks_1"), key: try! Key(key), operation: delete ? .delete : .put,
            contentType: delete ? "" : "application/json", value: delete ? [] : value, dependencies: dependencies, idempotency: idempotency)
    }

    static let entries = zip(
        Gen.int(in: 0...3), Gen.uint64(in: 1...UInt64(Int64.max)), Gen.uint64(in: 0...UInt64(Int64.max)), Gen.uint32(in: 0...UInt32.max),
        Gen.uint64(in: 0...1000), Gen.letterOrNumber.string(of: 1...40), Gen.bool, Gen.uint8(in: 0...255).array(of: 0...300)
    ).map { entry(region: $0, sequence: $1, physical: $2, logical: $3, epoch: $4, key: $5, delete: $6, value: $7) }

    @Test func roundTripsRandomEntries() async {
        await propertyCheck(count: 300, input: Self.entries) { entry in
            let bytes = codec.encode(entry)
            #expect((try? codec.decode(bytes)) == entry)
        }
    }

    @Test func decodesAStreamOfFramesIncrementally() throws {
        let entries = (1...5).map { Self.entry(region: 0, sequence: UInt64($0), physical: 10, logical: 0, epoch: 1, key: "k\($0)", delete: $0 == 3, value: [UInt8($0)]) }
        var stream: [UInt8] = []
        for entry in entries { codec.encode(entry, into: &stream) }
        var decoded: [ReplicationEntry] = []
        var offset = 0
        // Feed the buffer one byte at a time, as a socket might.
        for end in 1...stream.count {
            while let (entry, used) = try codec.decodeFrame(stream[offset..<end]) {
                decoded.append(entry)
                offset += used
            }
        }
        #expect(decoded == entries)
    }

    @Test func everyTruncationIsATypedError() throws {
        let bytes = codec.encode(Self.entry(region: 1, sequence: 9, physical: 123, logical: 4, epoch: 2, key: "some/key", delete: false, value: Array("hello".utf8)))
        for length in 0..<bytes.count {
            do {
                _ = try codec.decode(bytes.prefix(length))
                Issue.record("accepted a frame truncated to \(length) bytes")
            } catch {
                #expect(error.code == .codecTruncated)
            }
            #expect(try codec.decodeFrame(bytes.prefix(length)[...]) == nil, "an incomplete frame waits for more bytes")
        }
    }

    @Test func namedCorruptionsAreRejected() throws {
        let good = codec.encode(Self.entry(region: 0, sequence: 1, physical: 1, logical: 0, epoch: 0, key: "k", delete: false, value: [1, 2]))
        func failure(_ mutate: (inout [UInt8]) -> Void) -> MeridianError.Code? {
            var bytes = good
            mutate(&bytes)
            do { _ = try codec.decode(bytes); return nil } catch { return error.code }
        }
        #expect(failure { $0[4] = 9 } == .codecUnsupportedVersion)
        #expect(failure { $0 += [0] } == .codecLengthMismatch)
        #expect(failure { $0[0] = 0xFF } == .codecLengthMismatch, "a length beyond the limit is refused before reading")
        let operationOffset = 4 + 1 + 1 + 7 + 8 + 12 + 8 + 1 + 4 + 2 + 1
        #expect(failure { $0[operationOffset] = 7 } == .codecInvalidField)
        #expect(failure { $0[6] = UInt8(ascii: "U") } == .invalidRegion)
        // Sequence 2^63 would not fit the store's signed integers.
        #expect(failure { $0[13] = 0x80 } == .codecInvalidField)
        // Sequence 0 is not a log position.
        #expect(failure { for i in 13..<21 { $0[i] = 0 } } == .codecInvalidField)
        // A value larger than the decoder's limit.
        let big = EntryCodec(valueBytesMax: 8192).encode(Self.entry(region: 0, sequence: 1, physical: 1, logical: 0, epoch: 0, key: "k", delete: false, value: Array(repeating: 1, count: 5000)))
        #expect(throws: MeridianError.self) { try codec.decode(big) }
    }

    @Test func randomCorruptionNeverCrashes() async {
        let good = codec.encode(Self.entry(region: 2, sequence: 77, physical: 5, logical: 1, epoch: 3, key: "abc", delete: false, value: Array("value".utf8)))
        let flips = zip(Gen.int(in: 0...(good.count - 1)), Gen.uint8(in: 0...255)).array(of: 1...6)
        await propertyCheck(count: 1000, input: flips) { flips in
            var bytes = good
            for (index, value) in flips { bytes[index] = value }
            // Either a valid entry or a typed error: both are fine; a trap fails the whole test run.
            _ = try? codec.decode(bytes)
        }
        await propertyCheck(count: 1000, input: Gen.uint8(in: 0...255).array(of: 0...200)) { garbage in
            _ = try? codec.decode(garbage)
            _ = try? codec.decodeFrame(garbage[...])
        }
    }
}
