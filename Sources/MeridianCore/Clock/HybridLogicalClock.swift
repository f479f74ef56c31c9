/// One hybrid logical clock reading: physical milliseconds, a logical counter, and the region that made it.
///
/// Timestamps order by physical time, then the logical counter, then region name, so two regions never
/// produce equal timestamps and last-writer-wins has a total order (Kulkarni et al., "Logical Physical
/// Clocks", 2014).
public struct HLCTimestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Milliseconds since the Unix epoch, as the issuing region's clock saw it (or later).
    public let physicalMs: UInt64
    /// Orders events within the same physical millisecond.
    public let logical: UInt32
    /// The region that issued the timestamp; breaks ties.
    public let region: RegionName

    /// Creates a timestamp.
    public init(physicalMs: UInt64, logical: UInt32, region: RegionName) {
        self.physicalMs = physicalMs
        self.logical = logical
        self.region = region
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        if lhs.physicalMs != rhs.physicalMs { return lhs.physicalMs < rhs.physicalMs }
        if lhs.logical != rhs.logical { return lhs.logical < rhs.logical }
        return lhs.region < rhs.region
    }

    public var description: String { "\(physicalMs).\(logical)@\(region)" }
}

/// A hybrid logical clock for one region. It reads no clock itself: callers pass the physical time in.
///
/// Guarantees, each covered by a property test:
/// - every timestamp it issues is greater than every timestamp it issued or received before;
/// - `physicalMs` of an issued timestamp never trails the physical time passed in, and leads it by at
///   most the largest remote lead it accepted (bounded by `maxOffsetMs`).
public struct HybridLogicalClock: Sendable {
    /// The default largest lead of a remote clock over ours that is accepted.
    public static let maxOffsetMsDefault: UInt64 = 500

    /// The region whose events this clock orders.
    public let region: RegionName
    /// The largest lead, in ms, of a remote timestamp over our physical clock that `receive` accepts.
    public let maxOffsetMs: UInt64
    private var lastPhysicalMs: UInt64
    private var lastLogical: UInt32

    /// Creates a clock that has issued nothing yet.
    /// - Parameters:
    ///   - region: The issuing region.
    ///   - maxOffsetMs: The largest accepted lead of a remote clock.
    ///   - floor: A timestamp every future reading must exceed (the highest one persisted before a restart).
    public init(region: RegionName, maxOffsetMs: UInt64 = HybridLogicalClock.maxOffsetMsDefault, floor: HLCTimestamp? = nil) {
        self.region = region
        self.maxOffsetMs = maxOffsetMs
        self.lastPhysicalMs = floor?.physicalMs ?? 0
        self.lastLogical = floor?.logical ?? 0
    }

    /// The latest timestamp issued or observed, as this region's reading.
    public var last: HLCTimestamp { HLCTimestamp(physicalMs: lastPhysicalMs, logical: lastLogical, region: region) }

    /// Issues a timestamp for a local event.
    /// - Parameter physicalMs: The region's physical clock now.
    /// - Returns: A timestamp greater than any issued or received before.
    public mutating func now(physicalMs: UInt64) -> HLCTimestamp {
        if physicalMs > lastPhysicalMs {
            lastPhysicalMs = physicalMs
            lastLogical = 0
        } else {
            advanceLogical()
        }
        return last
    }

    /// Merges a timestamp received from another region and issues a timestamp for the receive event.
    /// - Parameters:
    ///   - remote: The timestamp carried by the message.
    ///   - physicalMs: The region's physical clock now.
    /// - Returns: A timestamp greater than both `remote` and anything issued before.
    /// - Throws: `MeridianError` with code `clock_offset_exceeded` when `remote` leads `physicalMs` by more
    ///   than `maxOffsetMs`; the clock is left unchanged.
    public mutating func receive(_ remote: HLCTimestamp, physicalMs: UInt64) throws(MeridianError) -> HLCTimestamp {
        if remote.physicalMs > physicalMs, remote.physicalMs - physicalMs > maxOffsetMs {
            throw MeridianError(
                .clockOffsetExceeded,
                "A timestamp from \(remote.region) is \(remote.physicalMs - physicalMs) ms ahead of this region's clock; the limit is \(maxOffsetMs) ms. Check clock synchronisation (NTP) on both regions.",
                context: ["remote_region": remote.region.rawValue, "lead_ms": String(remote.physicalMs - physicalMs), "max_offset_ms": String(maxOffsetMs)])
        }
        let physicalMax = max(lastPhysicalMs, remote.physicalMs, physicalMs)
        if physicalMax == lastPhysicalMs && physicalMax == remote.physicalMs {
            lastLogical = max(lastLogical, remote.logical)
            advanceLogical()
        } else if physicalMax == lastPhysicalMs {
            advanceLogical()
        } else if physicalMax == remote.physicalMs {
            lastPhysicalMs = physicalMax
            lastLogical = remote.logical
            advanceLogical()
        } else {
            lastPhysicalMs = physicalMax
            lastLogical = 0
        }
        return last
    }

    /// Moves this clock to at least `timestamp` (an earlier reading of this region's clock, or a remote timestamp
    /// already checked against the offset bound), without issuing anything and without reading the wall clock.
    public mutating func advance(past timestamp: HLCTimestamp) {
        if (timestamp.physicalMs, timestamp.logical) > (lastPhysicalMs, lastLogical) {
            lastPhysicalMs = timestamp.physicalMs
            lastLogical = timestamp.logical
        }
    }

    // The logical counter is bounded; at its limit the clock borrows one millisecond from the future,
    // which keeps timestamps strictly increasing at the cost of 1 ms of drift per 2^32 events.
    private mutating func advanceLogical() {
        if lastLogical == UInt32.max {
            lastPhysicalMs += 1
            lastLogical = 0
        } else {
            lastLogical += 1
        }
    }
}
