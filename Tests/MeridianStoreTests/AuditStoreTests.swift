// Proves the audit trail's storage in both backends: records are chained onto the head across reopening, verify
// intact, retention keeps a bounded trail that still verifies from its anchor, and a witness keeps only checkpoints
// signed by the key it pinned for their region.
import Crypto
import Foundation
import MeridianCore
import MeridianStorage
import MeridianStore
import Testing

@Suite struct AuditStoreTests {
    static func drafts(_ count: Int, from start: Int = 0) -> [AuditDraft] {
        (start..<start + count).map { AuditDraft(.replicationSent, ["peer": "eu-west", "from": String($0)], timeMs: UInt64(1_000 + $0)) }
    }

    @Test(arguments: Backend.allCases)
    func recordsChainAcrossReopeningAndRetentionKeepsAVerifiableTail(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        var limits = Limits()
        limits.auditRecordsMax = 1_000
        var store = try await fixture.open(limits: limits)
        let first = try await store.appendAudit(Self.drafts(600))
        #expect(first.map(\.sequence) == Array(1...600))
        store.close()
        store = try await fixture.open(limits: limits)
        let second = try await store.appendAudit(Self.drafts(600, from: 600))
        #expect(second.first?.sequence == 601 && second.first?.previous == first.last?.hash, "the chain goes on after a reopen")
        // 1,200 written, 1,000 kept: the anchor is record 200, and what is kept verifies from it.
        var records: [AuditRecord] = []
        var anchor = AuditAnchor()
        while true {
            let page = try await store.auditRecords(after: records.last?.sequence ?? 0, limit: 300)
            anchor = page.anchor
            guard !page.records.isEmpty else { break }
            records += page.records
        }
        #expect(records.count == 1_000 && records.first?.sequence == 201 && anchor.sequence == 200)
        #expect(AuditVerifier.verify(records, region: fixture.region, anchor: (anchor.sequence, anchor.hash)) == .intact(head: 1_200, checkpoints: 0))
        #expect(try await store.auditHead().sequence == 1_200)
        store.close()
    }

    @Test(arguments: Backend.allCases)
    func aWitnessKeepsOnlyCheckpointsSignedByThePinnedKey(_ backend: Backend) async throws {
        let fixture = StoreFixture(backend)
        defer { fixture.remove() }
        let store = try await fixture.open()
        let eu = RegionName(validated: "eu-west")
        var chain = AuditChain(region: eu)
        _ = chain.append(.repair, fields: ["keyspace": "vault"], timeMs: 1)
        let key = Curve25519.Signing.PrivateKey(), other = Curve25519.Signing.PrivateKey()
        let checkpoint = AuditCheckpoint.sign(chain, with: key)
        try await store.witness(checkpoint, publicKey: Array(key.publicKey.rawRepresentation))
        // Another key, or a signature that does not hold: refused, and the pinned key stays.
        _ = chain.append(.repair, fields: ["keyspace": "vault"], timeMs: 2)
        await #expect(throws: MeridianError.self) { try await store.witness(AuditCheckpoint.sign(chain, with: other), publicKey: Array(other.publicKey.rawRepresentation)) }
        let forged = AuditCheckpoint(region: eu, sequence: 2, hash: chain.hash, signature: checkpoint.signature)
        await #expect(throws: MeridianError.self) { try await store.witness(forged, publicKey: Array(key.publicKey.rawRepresentation)) }
        try await store.witness(AuditCheckpoint.sign(chain, with: key), publicKey: Array(key.publicKey.rawRepresentation))
        let held = try await store.witnessed(region: eu, limit: 10)
        #expect(held.publicKey == Array(key.publicKey.rawRepresentation) && held.checkpoints.map(\.sequence) == [1, 2])
        store.close()
    }
}
