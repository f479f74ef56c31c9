// A backup of a live SQLite store restores into a fresh file of the same region only; the restored store takes no
// write of its own until its log's end is known, then numbers after it; an in-memory store has nothing to back up.
import Foundation
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

@Suite struct BackupStoreTests {
    static func put(_ fixture: StoreFixture, _ key: String) -> WriteRequest {
        WriteRequest(keyspace: fixture.keyspace, key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(key.utf8))
    }

    @Test func aRestoredStoreWritesOnlyOnceItsLogEndIsKnownAndThenAfterIt() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let store = try await fixture.open()
        for index in 0..<3 { _ = try await store.write(Self.put(fixture, "k\(index)")) }
        let backup = fixture.directory + "/nightly.db"
        let summary = try await store.backup(to: backup)
        #expect(summary.region == "us-east" && summary.logEnd == 3 && summary.keys == 3)
        let mode = (try FileManager.default.attributesOfItem(atPath: backup)[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600, "the backup is readable by others: \(String(mode ?? 0, radix: 8))")
        #expect(await errorCode { _ = try await store.backup(to: backup) } == .invalidRequest, "a backup overwrote a file")
        #expect(await errorCode { _ = try await store.backup(to: "relative.db") } == .invalidRequest)
        _ = try await store.write(Self.put(fixture, "after"))
        store.close()

        let restoredPath = fixture.directory + "/restored.sqlite"
        #expect(throws: MeridianError.self) { _ = try RegionStore.restore(backup: backup, to: restoredPath, region: RegionName(validated: "eu-west")) }
        #expect(!FileManager.default.fileExists(atPath: restoredPath), "a refused restore left a file")
        _ = try RegionStore.restore(backup: backup, to: restoredPath, region: fixture.region)
        #expect(throws: MeridianError.self) { _ = try RegionStore.restore(backup: backup, to: restoredPath, region: fixture.region) }
        let restored = try RegionStore(path: restoredPath, region: fixture.region, limits: Limits(), physicalClockMs: { fixture.clock.read() })
        defer { restored.close() }
        #expect(try await restored.restorePending() == 3)
        #expect(await errorCode { _ = try await restored.write(Self.put(fixture, "early")) } == .restorePending, "a restored store wrote before its log end was known")
        // The peers hold this region's log up to 9: the next write is 10.
        try await restored.finishRestore(logEnd: 9)
        #expect(try await restored.restorePending() == nil && restored.logFloor() == 9)
        guard case .committed(let entry) = try await restored.write(Self.put(fixture, "next")) else {
            Issue.record("the write after the restore was not committed")
            return
        }
        #expect(entry.sequence == 10)
    }

    @Test func anInMemoryStoreHasNothingToBackUp() async throws {
        let fixture = StoreFixture(.memory)
        defer { fixture.remove() }
        let store = try await fixture.open()
        #expect(await errorCode { _ = try await store.backup(to: fixture.directory + "/x.db") } == .invalidRequest)
        store.close()
    }
}
