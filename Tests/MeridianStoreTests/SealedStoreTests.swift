// Proves sealed keyspaces in every backend: values are ciphertext in the log, the key states anti-entropy ships and
// the database file, and plaintext only where a read opens them; a replica opens them only with keys an allowed
// region granted it; CRDT merges stay sealed and digest alike in every region; an erasure makes every copy
// unreadable (the log's, the conflicts log's) while the bytes stay where they were; a node started with another
// root key than its data's is refused, naming the key's source.
import Foundation
import MeridianCore
import MeridianStorage
import MeridianStore
import Synchronization
import Testing

@Suite struct SealedStoreTests {
    static let us = RegionName(validated: "us-east")
    static let eu = RegionName(validated: "eu-west")
    static let health = try! KeyspaceName("health")

    static func sealer(_ region: RegionName, root byte: UInt8) -> ValueSealer {
        ValueSealer(region: region, root: try! RegionRootKey(bytes: Array(repeating: byte, count: 32), source: "test-\(region)"),
                    sealed: [health: .keyPrefix(separator: "/", depth: 1)])
    }

    static func put(_ key: String, _ value: String) -> WriteRequest {
        WriteRequest(keyspace: health, key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(value.utf8))
    }

    static func contains(_ haystack: [UInt8], _ needle: String) -> Bool {
        let bytes = Array(needle.utf8)
        guard haystack.count >= bytes.count else { return false }
        return (0...(haystack.count - bytes.count)).contains { Array(haystack[$0..<$0 + bytes.count]) == bytes }
    }

    @Test(arguments: Backend.allCases)
    func valuesAreCiphertextEverywhereButWhereAReadOpensThem(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open(region: Self.us, sealer: Self.sealer(Self.us, root: 1))
        let marker = "marker-\(UUID().uuidString)"
        let entry = try committed(try await store.write(Self.put("ada@example.eu/email", marker)))
        #expect(!Self.contains(entry.value, marker) && SealedValue.keyID(of: entry.value) != nil, "the committed entry holds plaintext")
        #expect(try await store.get(keyspace: Self.health, key: try Key("ada@example.eu/email"))?.value == Array(marker.utf8))
        let logged = try await store.logEntries(origin: Self.us, after: 0, limit: 10)
        #expect(logged.count == 1 && !Self.contains(logged[0].value, marker))
        let shipped = try await store.states(keyspace: Self.health, buckets: Set(0..<MerkleTree.bucketCount), after: nil, bytesMax: 1 << 20)
        #expect(shipped.states.count == 1 && shipped.states.allSatisfy { !Self.contains($0.state.versions[0].value, marker) })
        // A second value of the same subject takes the same data key; another subject gets its own.
        let sibling = try committed(try await store.write(Self.put("ada@example.eu/phone", "p")))
        let other = try committed(try await store.write(Self.put("bob@example.eu/email", "b")))
        #expect(SealedValue.keyID(of: sibling.value) == SealedValue.keyID(of: entry.value))
        #expect(SealedValue.keyID(of: other.value) != SealedValue.keyID(of: entry.value))
        store.close()
        if backend == .sqlite {
            for suffix in ["", "-wal"] {
                let bytes = Array((try? Data(contentsOf: URL(fileURLWithPath: fixture.path + suffix))) ?? Data())
                #expect(!Self.contains(bytes, marker), "the database file\(suffix) holds the plaintext")
            }
        }
        if backend == .postgres {
            for (table, column) in [("meridian_keys", "state"), ("meridian_log", "entry")] {
                #expect(try await fixture.postgresCount("SELECT count(*) FROM \(table) WHERE position(convert_to('\(marker)', 'UTF8') in \(column)) > 0") == 0,
                        "\(table) holds the plaintext")
            }
        }
    }

    @Test(arguments: Backend.allCases)
    func aReplicaOpensOnlyWithGrantedKeysAndAnErasureMakesEveryCopyUnreadable(_ backend: Backend) async throws {
        let usFixture = StoreFixture(backend), euFixture = StoreFixture(backend)
        defer { usFixture.remove(); euFixture.remove() }
        let us = try await usFixture.open(region: Self.us, sealer: Self.sealer(Self.us, root: 1))
        let eu = try await euFixture.open(region: Self.eu, sealer: Self.sealer(Self.eu, root: 2))
        let key = try Key("ada@example.eu/email")
        _ = try await us.write(Self.put("ada@example.eu/email", "first"))
        _ = try await us.write(Self.put("ada@example.eu/email", "second"))
        let entries = try await us.logEntries(origin: Self.us, after: 0, limit: 10)
        #expect(try await eu.applyReplicated(entries, origin: Self.us) == 2)
        // Applied as ciphertext; a read needs the key, which eu-west does not hold yet.
        #expect(await errorCode { _ = try await eu.get(keyspace: Self.health, key: key) } == .dataKeyUnavailable)
        let missing = try await eu.missingDataKeys(entries.map { ($0.keyspace, $0.value) })
        let id = try #require(SealedValue.keyID(of: entries[0].value))
        #expect(missing == [Self.health: [id]])
        let (granted, erased) = try await us.grantDataKeys(keyspace: Self.health, ids: [id])
        #expect(granted.map(\.id) == [id] && erased.isEmpty)
        try await eu.installDataKeys(keyspace: Self.health, granted, erased: [], nowMs: 1)
        #expect(try await eu.get(keyspace: Self.health, key: key)?.value == Array("second".utf8))
        #expect(try await eu.missingDataKeys(entries.map { ($0.keyspace, $0.value) }).isEmpty)

        // Erased in both regions: every read of the subject answers `erased`, in each; the log still holds the
        // bytes, and they open nowhere. A later grant of the key is refused by the region that erased it.
        let subject = try Subject("ada@example.eu")
        #expect(try await us.erase(keyspace: Self.health, subject: subject, nowMs: 2) == [id])
        #expect(try await eu.erase(keyspace: Self.health, subject: subject, nowMs: 2) == [id])
        for store in [us, eu] {
            #expect(await errorCode { _ = try await store.get(keyspace: Self.health, key: key) } == .erased)
            #expect(await errorCode { _ = try await store.state(keyspace: Self.health, key: key) } == .erased)
        }
        #expect(try await us.logEntries(origin: Self.us, after: 0, limit: 10).count == 2)
        let after = try await us.grantDataKeys(keyspace: Self.health, ids: [id])
        #expect(after.granted.isEmpty && after.erased == [id])
        // A new write of the subject takes a new key (not the one the writer had in memory), and reads again.
        let third = try committed(try await us.write(Self.put("ada@example.eu/email", "third")))
        #expect(SealedValue.keyID(of: third.value) != id)
        #expect(try await us.get(keyspace: Self.health, key: key)?.value == Array("third".utf8))
        us.close()
        eu.close()
    }

    @Test(arguments: Backend.allCases)
    func sealedCRDTMergesConvergeToTheSameBytesInEveryRegion(_ backend: Backend) async throws {
        let usFixture = StoreFixture(backend), euFixture = StoreFixture(backend)
        defer { usFixture.remove(); euFixture.remove() }
        let rules: [KeyspaceName: ConflictRule] = [Self.health: .crdt]
        let us = try await usFixture.open(region: Self.us, rules: rules, sealer: Self.sealer(Self.us, root: 1))
        let eu = try await euFixture.open(region: Self.eu, rules: rules, sealer: Self.sealer(Self.eu, root: 2))
        let key = try Key("ada@example.eu/steps")
        func increment(_ by: UInt64) -> WriteRequest {
            WriteRequest(keyspace: Self.health, key: key, operation: .merge, contentType: "", value: [], crdt: CRDTRequest(type: .pnCounter, operation: .increment(by)))
        }
        _ = try committed(try await us.write(increment(3)))
        let fromUS = try await us.logEntries(origin: Self.us, after: 0, limit: 10)
        // A sealed delta cannot be merged without its key: nothing is applied.
        #expect(await errorCode { _ = try await eu.applyReplicated(fromUS, origin: Self.us) } == .dataKeyUnavailable)
        try await eu.installDataKeys(keyspace: Self.health, try await us.grantDataKeys(keyspace: Self.health, ids: fromUS.compactMap { SealedValue.keyID(of: $0.value) }).granted,
                                     erased: [], nowMs: 1)
        #expect(try await eu.applyReplicated(fromUS, origin: Self.us) == 1)
        _ = try committed(try await eu.write(increment(4)))
        let fromEU = try await eu.logEntries(origin: Self.eu, after: 0, limit: 10)
        #expect(try await us.applyReplicated(fromEU, origin: Self.eu) == 1)
        let usValue = try CRDTCodec.decode(try #require(try await us.get(keyspace: Self.health, key: key)?.value))
        let euValue = try CRDTCodec.decode(try #require(try await eu.get(keyspace: Self.health, key: key)?.value))
        #expect(usValue == euValue)
        // The merged values were sealed by each region on its own, to the same bytes: the trees agree.
        #expect(try await us.merkleTree(keyspace: Self.health).tree.root == eu.merkleTree(keyspace: Self.health).tree.root)
        us.close()
        eu.close()
    }

    /// Keys held elsewhere (a KMS, Vault's transit engine): the sealer asks the service to wrap and unwrap, once
    /// per data key. A stand-in with a key the store never sees, counting its calls.
    final class ExternalWrapper: DataKeyWrapping, @unchecked Sendable {
        let ring = RegionKeyRing(single: try! RegionRootKey(bytes: Array(repeating: 9, count: 32), source: "kms"))
        private let calls = Mutex((wraps: 0, unwraps: 0))
        var counts: (wraps: Int, unwraps: Int) { calls.withLock { $0 } }
        var currentEpoch: UInt32 { 1 }
        var checkValues: [UInt32: String] { [1: "external"] }
        var source: String { "kms://test" }
        func wrap(_ dataKey: DataKey, region: RegionName, keyspace: KeyspaceName, subject: Subject,
                  using generator: inout some RandomNumberGenerator) throws(MeridianError) -> WrappedDataKey {
            calls.withLock { $0.wraps += 1 }
            return try ring.wrap(dataKey, region: region, keyspace: keyspace, subject: subject, using: &generator)
        }
        func unwrap(_ wrapped: WrappedDataKey, region: RegionName, keyspace: KeyspaceName, subject: Subject) throws(MeridianError) -> DataKey {
            calls.withLock { $0.unwraps += 1 }
            return try ring.unwrap(wrapped, region: region, keyspace: keyspace, subject: subject)
        }
    }

    @Test(arguments: Backend.allCases)
    func keysHeldByAnExternalServiceSealAndOpenAndAreAskedOncePerDataKey(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let wrapper = ExternalWrapper()
        let sealer = ValueSealer(region: Self.us, keys: wrapper, sealed: [Self.health: .keyPrefix(separator: "/", depth: 1)])
        let store = try await fixture.open(region: Self.us, sealer: sealer)
        for index in 0..<10 { _ = try await store.write(Self.put("ada/k\(index)", "v\(index)")) }
        for index in 0..<10 { #expect(try await store.get(keyspace: Self.health, key: try Key("ada/k\(index)"))?.value == Array("v\(index)".utf8)) }
        #expect(wrapper.counts.wraps == 1 && wrapper.counts.unwraps == 0, "\(wrapper.counts)")
        store.close()
        // Another process (a restart): the wrap is unwrapped once, then cached.
        let reopened = try await fixture.open(region: Self.us, sealer: ValueSealer(region: Self.us, keys: wrapper, sealed: [Self.health: .keyPrefix(separator: "/", depth: 1)]))
        for index in 0..<10 { #expect(try await reopened.get(keyspace: Self.health, key: try Key("ada/k\(index)"))?.value == Array("v\(index)".utf8)) }
        #expect(wrapper.counts.unwraps == 1, "\(wrapper.counts)")
        reopened.close()
    }

    @Test(arguments: [Backend.sqlite, .postgres])
    func aStoreRefusesARootKeyOtherThanTheOneItsKeysWereWrappedWith(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open(region: Self.us, sealer: Self.sealer(Self.us, root: 1))
        _ = try await store.write(Self.put("ada@example.eu/email", "v"))
        store.close()
        do {
            _ = try await fixture.open(region: Self.us, sealer: Self.sealer(Self.us, root: 9))
            Issue.record("a store opened with another root key")
        } catch let error as MeridianError {
            #expect(error.code == .invalidConfig && error.message.contains("test-us-east"), "\(error.message)")
        }
        let again = try await fixture.open(region: Self.us, sealer: Self.sealer(Self.us, root: 1))
        #expect(try await again.get(keyspace: Self.health, key: try Key("ada@example.eu/email"))?.value == Array("v".utf8))
        again.close()
    }

    @Test func aRotationWrapsEveryKeyAgainAndAnOldCopyOfTheKeyTableDiesWithTheOldEpoch() async throws {
        let fixture = StoreFixture(.sqlite)
        defer { fixture.remove() }
        let sealer = Self.sealer(Self.us, root: 1)
        let store = try await fixture.open(region: Self.us, sealer: sealer)
        for index in 0..<30 { _ = try await store.write(Self.put("s\(index % 10)/k\(index)", "v\(index)")) }
        #expect(try await store.dataKeyEpochs() == [1: 10])
        store.close()
        // An old backup: a copy of the file before the rotation.
        let backup = fixture.directory + "/backup.sqlite"
        for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: fixture.path + suffix) {
            try FileManager.default.copyItem(atPath: fixture.path + suffix, toPath: backup + suffix)
        }
        let reopened = try await fixture.open(region: Self.us, sealer: sealer)
        let next = try #require(sealer.keyRing).rotated(bytes: Array(repeating: 7, count: 32))
        sealer.adopt(next)
        var rewrapped = 0
        for _ in 0..<100 {
            let count = try await reopened.rewrapDataKeys(limit: 3)
            rewrapped += count
            if count == 0 { break }
        }
        let epochs = try await reopened.dataKeyEpochs()
        #expect(rewrapped == 10 && epochs == [2: 10])
        sealer.adopt(next.retiring(below: 2))
        #expect(try await reopened.get(keyspace: Self.health, key: try Key("s3/k13"))?.value == Array("v13".utf8), "values read after the rotation")
        _ = try await reopened.write(Self.put("s99/k", "new"))
        #expect(try await reopened.dataKeyEpochs() == [2: 11])
        reopened.close()
        // The old copy holds the values: with the keys of before (a new process, nothing cached), they read.
        let before = try RegionStore(path: backup, region: Self.us, limits: Limits(), physicalClockMs: { 20_000_000 }, sealer: Self.sealer(Self.us, root: 1))
        #expect(try await before.get(keyspace: Self.health, key: try Key("s3/k13"))?.value == Array("v13".utf8))
        before.close()
        // With the rotated keys, none of its data keys opens: their epoch is destroyed.
        let fresh = ValueSealer(region: Self.us, keys: try #require(sealer.keyRing), sealed: [Self.health: .keyPrefix(separator: "/", depth: 1)])
        let old = try RegionStore(path: backup, region: Self.us, limits: Limits(), physicalClockMs: { 20_000_000 }, sealer: fresh)
        #expect(await errorCode { _ = try await old.get(keyspace: Self.health, key: try Key("s3/k13")) } == .sealedValueUnreadable)
        old.close()
    }
}
