import Foundation
import MeridianCore
import MeridianStorage
@testable import MeridianStore
import Testing

/// The newest entries of a region's own log, served from memory for shipping: always what the log's rows hold.
@Suite struct RecentLogTests {
    /// Every read of the own log served from memory equals what the writes committed, and so does every read of
    /// the rows once the store is opened again (with nothing in memory), across concurrent commits, writes that
    /// take no sequence, and trimming.
    @Test func readsOfTheOwnLogAreWhatWasCommitted() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let writer = try fixture.openSQLite()
        var written: [ReplicationEntry] = []
        for round in 0..<6 {
            written += await withTaskGroup(of: ReplicationEntry?.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        // Every tenth write's precondition fails: it takes no sequence.
                        let precondition: WriteRequest.Precondition? = index % 10 == 9 ? .exists : nil
                        guard case .committed(let entry) = try? await writer.write(fixture.put("r\(round)-\(index)", "value \(index)", precondition: precondition)) else {
                            return nil
                        }
                        return entry
                    }
                }
                return await group.reduce(into: []) { if let entry = $1 { $0.append(entry) } }
            }
        }
        written.sort { $0.sequence < $1.sequence }
        #expect(written.map(\.sequence) == Array(1...270))
        let windows = [(0, 270), (0, 1), (150, 120), (269, 1), (269, 5), (270, 1), (17, 64)]
        func check(_ store: RegionStore, _ what: String) async throws {
            for (after, limit) in windows {
                let served = try await store.logEntries(origin: fixture.region, after: UInt64(after), limit: limit)
                #expect(served == Array(written.dropFirst(after).prefix(limit)), "\(what): after \(after), limit \(limit)")
            }
        }
        try await check(writer, "from memory")
        writer.close()
        let store = try fixture.openSQLite()
        try await check(store, "from the rows")
        // Trimmed entries are gone from both.
        for _ in 0..<5 { _ = try await store.write(fixture.put("after-reopen", "x")) }
        try await store.trimLog(origin: fixture.region, through: 272)
        #expect(try await store.logEntries(origin: fixture.region, after: 0, limit: 10).map(\.sequence) == Array(273...275))
        #expect(try await store.logEntries(origin: fixture.region, after: 272, limit: 3).map(\.sequence) == Array(273...275))
        store.close()
    }

    @Test func theMemoryIsBoundedAndFollowsOnlyAContiguousLog() {
        let origin = RegionName(validated: "us-east"), keyspace = try! KeyspaceName("k")
        func entry(_ sequence: UInt64, bytes: Int = 10) -> ReplicationEntry {
            ReplicationEntry(origin: origin, sequence: sequence, hlc: HLCTimestamp(physicalMs: sequence, logical: 0, region: origin), epoch: 0,
                             keyspace: keyspace, key: try! Key("k\(sequence)"), operation: .put, contentType: "", value: Array(repeating: 1, count: bytes))
        }
        let recent = RecentLog(entriesMax: 10, bytesMax: 1 << 20)
        recent.appended((1...25).map { entry($0) })
        #expect(recent.entries(after: 14, limit: 1) == nil, "beyond the entry bound the oldest go")
        #expect(recent.entries(after: 15, limit: 10)?.map(\.sequence) == Array(16...25))
        #expect(recent.entries(after: 15, limit: 11) == nil, "past the log's end: read from the rows")
        recent.appended([entry(40)])
        #expect(recent.entries(after: 20, limit: 1) == nil && recent.entries(after: 39, limit: 1)?.first?.sequence == 40, "a jump starts over")
        recent.trimmed(through: 40)
        #expect(recent.entries(after: 39, limit: 1) == nil)
        let small = RecentLog(entriesMax: 100, bytesMax: 3 * EntryCodec.encodedBytes(entry(10, bytes: 1_000)))
        small.appended((1...10).map { entry($0, bytes: 1_000) })
        #expect(small.entries(after: 7, limit: 3)?.map(\.sequence) == [8, 9, 10] && small.entries(after: 6, limit: 4) == nil)
    }
}
