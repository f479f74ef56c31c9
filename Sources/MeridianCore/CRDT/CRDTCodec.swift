/// The binary form of a ``CRDTValue``: what a `crdt` keyspace stores as a key's value and ships as an
/// entry's delta. Deterministic (every collection in sorted order), so two regions holding equal states
/// hold equal bytes, which is what anti-entropy compares.
///
/// Layout (integers big-endian): `u8 version (1)`, then a value: `u8 type tag`, then the type's body.
///
///     g-counter     u32 count, per region: u8 length, name, u64 count
///     pn-counter    g-counter increments, g-counter decrements
///     dot context   vector as a g-counter body, u32 cloud count, per dot: u8 length, name, u64 counter
///     or-set        u32 element count, per element: u32 length, bytes, u32 dot count, dots; dot context
///     lww-register  u8 present; if 1: u32 length, bytes, u64 physical ms, u32 logical, u8 length, region
///     mv-register   u32 entry count, per entry: dot, u32 length, bytes; dot context
///     or-map        or-set body (presence), u32 field count, per field: u32 length, name, value (not a map)
///
/// Decoding validates every count against the bytes that remain and returns a typed error; it never traps.
public enum CRDTCodec {
    static let formatVersion: UInt8 = 1
    /// The media type of a stored CRDT value.
    public static let contentType = "application/vnd.meridian.crdt"

    /// Encodes a value.
    public static func encode(_ value: CRDTValue) -> [UInt8] {
        var writer = Writer()
        writer.bytes.append(formatVersion)
        writer.value(value)
        return writer.bytes
    }

    /// Decodes a value.
    /// - Throws: `codec_*` errors for truncated, malformed or trailing bytes.
    public static func decode(_ bytes: [UInt8]) throws(MeridianError) -> CRDTValue {
        var reader = ByteReader(bytes[...])
        let version = try reader.required(reader.readUInt8(), "crdt_version")
        guard version == formatVersion else {
            throw MeridianError(.codecUnsupportedVersion, "CRDT format \(version) is not supported; this build reads format \(formatVersion).")
        }
        let value = try readValue(&reader, nested: false)
        guard reader.remaining == 0 else {
            throw MeridianError(.codecLengthMismatch, "A CRDT value is followed by \(reader.remaining) unexpected bytes.")
        }
        return value
    }

    private struct Writer {
        var bytes: [UInt8] = []

        mutating func integer<I: FixedWidthInteger>(_ value: I) {
            withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
        }

        mutating func region(_ region: RegionName) {
            let name = Array(region.rawValue.utf8)
            bytes.append(UInt8(name.count))
            bytes += name
        }

        mutating func string32(_ text: String) {
            let utf8 = Array(text.utf8)
            integer(UInt32(utf8.count))
            bytes += utf8
        }

        mutating func dot(_ dot: Dot) {
            region(dot.region)
            integer(dot.counter)
        }

        mutating func counts(_ counts: [RegionName: UInt64]) {
            integer(UInt32(counts.count))
            for (region, count) in counts.sorted(by: { $0.key < $1.key }) {
                self.region(region)
                integer(count)
            }
        }

        mutating func context(_ context: DotContext) {
            counts(context.vector.byRegion)
            integer(UInt32(context.cloud.count))
            for dot in context.cloud.sorted() { self.dot(dot) }
        }

        mutating func set(_ set: ORSet) {
            integer(UInt32(set.entries.count))
            for (element, dots) in set.entries.sorted(by: { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }) {
                string32(element)
                integer(UInt32(dots.count))
                for dot in dots.sorted() { self.dot(dot) }
            }
            context(set.context)
        }

        mutating func value(_ value: CRDTValue) {
            bytes.append(value.type.tag)
            switch value {
            case .gCounter(let counter):
                counts(counter.counts)
            case .pnCounter(let counter):
                counts(counter.increments.counts)
                counts(counter.decrements.counts)
            case .orSet(let set):
                self.set(set)
            case .lwwRegister(let register):
                if let value = register.value, let timestamp = register.timestamp {
                    bytes.append(1)
                    string32(value)
                    integer(timestamp.physicalMs)
                    integer(timestamp.logical)
                    region(timestamp.region)
                } else {
                    bytes.append(0)
                }
            case .mvRegister(let register):
                integer(UInt32(register.entries.count))
                for (dot, value) in register.entries.sorted(by: { $0.key < $1.key }) {
                    self.dot(dot)
                    string32(value)
                }
                context(register.context)
            case .orMap(let map):
                set(map.presence)
                integer(UInt32(map.fields.count))
                for (name, field) in map.fields.sorted(by: { Array($0.key.utf8).lexicographicallyPrecedes(Array($1.key.utf8)) }) {
                    string32(name)
                    self.value(field)
                }
            }
        }
    }

    private static func readRegion(_ reader: inout ByteReader, _ field: String) throws(MeridianError) -> RegionName {
        let length = Int(try reader.required(reader.readUInt8(), field))
        return try RegionName(try reader.utf8(length, field))
    }

    private static func readDot(_ reader: inout ByteReader) throws(MeridianError) -> Dot {
        let region = try readRegion(&reader, "dot_region")
        let counter = try reader.required(reader.readUInt64(), "dot_counter")
        guard (1...UInt64(Int64.max)).contains(counter) else {
            throw MeridianError(.codecInvalidField, "A CRDT dot counts from 1 to \(Int64.max); found \(counter).", context: ["field": "dot_counter"])
        }
        return Dot(region: region, counter: counter)
    }

    private static func readCounts(_ reader: inout ByteReader) throws(MeridianError) -> [RegionName: UInt64] {
        let count = Int(try reader.required(reader.readUInt32(), "count"))
        guard count <= reader.remaining / 10 else { throw truncated("count") }
        var counts: [RegionName: UInt64] = [:]
        for _ in 0..<count {
            let region = try readRegion(&reader, "count_region")
            let value = try reader.required(reader.readUInt64(), "count_value")
            guard counts[region] == nil else {
                throw MeridianError(.codecInvalidField, "A CRDT counter names region \(region) twice.", context: ["field": "count_region"])
            }
            counts[region] = value
        }
        return counts
    }

    private static func readContext(_ reader: inout ByteReader) throws(MeridianError) -> DotContext {
        let counters = try readCounts(&reader)
        guard counters.values.allSatisfy({ $0 <= UInt64(Int64.max) }) else {
            throw MeridianError(.codecInvalidField, "A CRDT causal context counts beyond \(Int64.max).", context: ["field": "context"])
        }
        let vector = VersionVector(counters)
        let cloudCount = Int(try reader.required(reader.readUInt32(), "cloud_count"))
        guard cloudCount <= reader.remaining / 10 else { throw truncated("cloud_count") }
        var cloud: Set<Dot> = []
        for _ in 0..<cloudCount { cloud.insert(try readDot(&reader)) }
        return DotContext(vector: vector, cloud: cloud)
    }

    private static func readString32(_ reader: inout ByteReader, _ field: String) throws(MeridianError) -> String {
        let length = Int(try reader.required(reader.readUInt32(), field))
        guard length <= reader.remaining else { throw truncated(field) }
        return try reader.utf8(length, field)
    }

    private static func readSet(_ reader: inout ByteReader) throws(MeridianError) -> ORSet {
        let count = Int(try reader.required(reader.readUInt32(), "element_count"))
        guard count <= reader.remaining / 4 else { throw truncated("element_count") }
        var entries: [String: Set<Dot>] = [:]
        for _ in 0..<count {
            let element = try readString32(&reader, "element")
            let dotCount = Int(try reader.required(reader.readUInt32(), "element_dot_count"))
            guard dotCount >= 1, dotCount <= reader.remaining / 10, entries[element] == nil else {
                throw MeridianError(.codecInvalidField, "An OR-set element is repeated or has no valid dots.", context: ["field": "element_dot_count"])
            }
            var dots: Set<Dot> = []
            for _ in 0..<dotCount { dots.insert(try readDot(&reader)) }
            entries[element] = dots
        }
        return ORSet(entries: entries, context: try readContext(&reader))
    }

    private static func readValue(_ reader: inout ByteReader, nested: Bool) throws(MeridianError) -> CRDTValue {
        let tag = try reader.required(reader.readUInt8(), "crdt_type")
        guard let type = CRDTType.allCases.first(where: { $0.tag == tag }), !(nested && type == .orMap) else {
            throw MeridianError(.codecInvalidField, "CRDT type tag \(tag) is unknown\(nested ? " or not allowed in a map field" : "").", context: ["field": "crdt_type"])
        }
        switch type {
        case .gCounter:
            return .gCounter(GCounter(counts: try readCounts(&reader)))
        case .pnCounter:
            let increments = GCounter(counts: try readCounts(&reader))
            return .pnCounter(PNCounter(increments: increments, decrements: GCounter(counts: try readCounts(&reader))))
        case .orSet:
            return .orSet(try readSet(&reader))
        case .lwwRegister:
            var register = LWWRegister()
            let present = try reader.required(reader.readUInt8(), "register_present")
            guard present <= 1 else { throw MeridianError(.codecInvalidField, "An LWW register's presence flag is \(present).", context: ["field": "register_present"]) }
            if present == 1 {
                let value = try readString32(&reader, "register_value")
                let physicalMs = try reader.required(reader.readUInt64(), "register_physical_ms")
                let logical = try reader.required(reader.readUInt32(), "register_logical")
                let region = try readRegion(&reader, "register_region")
                register.assign(value, at: HLCTimestamp(physicalMs: physicalMs, logical: logical, region: region))
            }
            return .lwwRegister(register)
        case .mvRegister:
            let count = Int(try reader.required(reader.readUInt32(), "entry_count"))
            guard count <= reader.remaining / 14 else { throw truncated("entry_count") }
            var entries: [Dot: String] = [:]
            for _ in 0..<count {
                let dot = try readDot(&reader)
                entries[dot] = try readString32(&reader, "entry_value")
            }
            return .mvRegister(MVRegister(entries: entries, context: try readContext(&reader)))
        case .orMap:
            let presence = try readSet(&reader)
            let count = Int(try reader.required(reader.readUInt32(), "field_count"))
            guard count <= reader.remaining / 3 else { throw truncated("field_count") }
            var fields: [String: CRDTValue] = [:]
            for _ in 0..<count {
                let name = try readString32(&reader, "field_name")
                guard fields[name] == nil else {
                    throw MeridianError(.codecInvalidField, "An OR-map names field '\(name)' twice.", context: ["field": "field_name"])
                }
                fields[name] = try readValue(&reader, nested: true)
            }
            return .orMap(ORMap(presence: presence, fields: fields))
        }
    }

    private static func truncated(_ field: String) -> MeridianError {
        MeridianError(.codecTruncated, "A CRDT value claims more \(field) than it has bytes for.", context: ["field": field])
    }
}
