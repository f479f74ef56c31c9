import Crypto
@testable import MeridianCore
import Testing

/// The audit trail's chain and its witnessed checkpoints catch a changed byte, deleted newest records and a
/// recomputed chain, and pass an untouched trail.
@Suite struct AuditTrailTests {
    static let eu = RegionName(validated: "eu-west")
    static let us = RegionName(validated: "us-east")

    /// A trail of `count` records and the checkpoints signed after every fifth record.
    static func trail(_ count: Int, key: Curve25519.Signing.PrivateKey) -> ([AuditRecord], [AuditCheckpoint]) {
        var chain = AuditChain(region: eu)
        var records: [AuditRecord] = []
        var checkpoints: [AuditCheckpoint] = []
        for index in 1...count {
            let kind: AuditRecord.Kind = index % 2 == 0 ? .replicationSent : .proxied
            records.append(chain.append(kind, fields: ["peer": "us-east", "keyspace": "eu_health", "first": "\(index * 10)", "last": "\(index * 10 + 9)"],
                                        timeMs: 1_000 + UInt64(index)))
            if index % 5 == 0 { checkpoints.append(AuditCheckpoint.sign(chain, with: key)) }
        }
        return (records, checkpoints)
    }

    @Test func anUntouchedTrailVerifiesWithItsWitnesses() {
        let key = Curve25519.Signing.PrivateKey()
        let (records, checkpoints) = Self.trail(23, key: key)
        #expect(AuditVerifier.verify(records, region: Self.eu, checkpoints: checkpoints, key: key.publicKey) == .intact(head: 23, checkpoints: 4))
        // A trail cut by retention verifies from its anchor (the last record it dropped).
        let kept = Array(records.dropFirst(10))
        #expect(AuditVerifier.verify(kept, region: Self.eu, anchor: (10, records[9].hash), checkpoints: checkpoints, key: key.publicKey)
                == .intact(head: 23, checkpoints: 3))
    }

    @Test func aChangedByteAnywhereBreaksTheChainWhereItWasChanged() {
        let key = Curve25519.Signing.PrivateKey()
        let (records, checkpoints) = Self.trail(12, key: key)
        for index in records.indices {
            let original = records[index]
            var fields = original.fields
            fields["last"] = (fields["last"] ?? "") + "0"
            var tampered = records
            tampered[index] = AuditRecord(sequence: original.sequence, timeMs: original.timeMs, region: original.region, kind: original.kind,
                                          fields: fields, previous: original.previous, hash: original.hash)
            guard case .broken(let at, let reason) = AuditVerifier.verify(tampered, region: Self.eu, checkpoints: checkpoints) else {
                Issue.record("a changed record \(index + 1) went unnoticed")
                continue
            }
            #expect(at == original.sequence && reason.contains("changed"), "\(at): \(reason)")
            // A flipped byte of the hash itself breaks the next record's link (or, for the newest, its seal).
            var flipped = records
            var hash = original.hash
            hash[0] ^= 1
            flipped[index] = AuditRecord(sequence: original.sequence, timeMs: original.timeMs, region: original.region, kind: original.kind,
                                         fields: original.fields, previous: original.previous, hash: hash)
            #expect(AuditVerifier.verify(flipped, region: Self.eu, checkpoints: checkpoints) != .intact(head: 12, checkpoints: 2))
        }
    }

    @Test func deletedNewestRecordsAreCaughtByAPeersCheckpoint() {
        let key = Curve25519.Signing.PrivateKey()
        let (records, checkpoints) = Self.trail(20, key: key)
        let cut = Array(records.prefix(17))
        // Alone, a shorter chain is still a chain: only the witnesses know it was longer.
        #expect(AuditVerifier.verify(cut, region: Self.eu) == .intact(head: 17, checkpoints: 0))
        guard case .broken(let at, let reason) = AuditVerifier.verify(cut, region: Self.eu, checkpoints: checkpoints, key: key.publicKey) else {
            Issue.record("deleting the newest records went unnoticed")
            return
        }
        #expect(at == 20 && reason.contains("deleted"), "\(at): \(reason)")
        // A record deleted from the middle breaks the sequence.
        var gap = records
        gap.remove(at: 7)
        guard case .broken(let missing, _) = AuditVerifier.verify(gap, region: Self.eu) else { Issue.record("a gap went unnoticed"); return }
        #expect(missing == 8)
    }

    @Test func aRestoredTrailResumesAfterTheWitnessedRecordsItLostAndNoOtherGapPasses() {
        let key = Curve25519.Signing.PrivateKey()
        let (records, checkpoints) = Self.trail(20, key: key)
        // The backup held records 1...12; peers witnessed up to 20 (checkpoints at 5, 10, 15, 20).
        var chain = AuditChain(region: Self.eu, sequence: 12, hash: records[11].hash)
        var catchUp = RestoreCatchUp(region: Self.eu, peers: [Self.eu, Self.us], backupLogEnd: 40)
        #expect(throws: MeridianError.self) { try catchUp.admitRequest() }
        catchUp.welcomed(by: Self.us, log: 55, audit: 20)
        #expect(!catchUp.isCaughtUp && catchUp.waitingFor == [Self.us])
        catchUp.repairEnded(with: Self.us)
        #expect(catchUp.isCaughtUp && catchUp.logEnd == 55)
        let restore = chain.append(.restore, fields: catchUp.auditFields(head: 12), timeMs: 5_000)
        #expect(restore.sequence == 21 && restore.previous == records[11].hash)
        let after = chain.append(.proxied, fields: ["keyspace": "eu_health"], timeMs: 5_001)
        let resumed = Array(records.prefix(12)) + [restore, after]
        let signed = checkpoints + [AuditCheckpoint.sign(chain, with: key)]
        // Checkpoints of the lost records (15 and 20) are set aside; 5, 10 and the new head's hold.
        #expect(AuditVerifier.verify(resumed, region: Self.eu, checkpoints: signed, key: key.publicKey) == .intact(head: 22, checkpoints: 3))
        // A restore record claiming other records lost than those skipped is a gap like any other.
        var forged = records.prefix(12).map { $0 }
        var other = AuditChain(region: Self.eu, sequence: 12, hash: records[11].hash)
        forged.append(other.append(.restore, fields: ["lost_from": "13", "lost_through": "17"], timeMs: 5_000))
        forged.append(AuditRecord(sequence: 25, timeMs: 5_001, region: Self.eu, kind: .proxied, fields: [:], previous: forged.last!.hash,
                                  hash: AuditRecord.hash(sequence: 25, timeMs: 5_001, region: Self.eu, kind: .proxied, fields: [:], previous: forged.last!.hash)))
        guard case .broken(let at, _) = AuditVerifier.verify(forged, region: Self.eu) else { Issue.record("an unexplained gap went unnoticed"); return }
        #expect(at == 19)
    }

    @Test func aRecomputedChainIsCaughtByTheCheckpointsItCannotResign() {
        let key = Curve25519.Signing.PrivateKey()
        let (records, checkpoints) = Self.trail(15, key: key)
        // Change record 4 and recompute every hash from there: the chain is whole again.
        var chain = AuditChain(region: Self.eu, sequence: 3, hash: records[2].hash)
        var rewritten = Array(records.prefix(3))
        for record in records.dropFirst(3) {
            var fields = record.fields
            if record.sequence == 4 { fields["peer"] = "ap-southeast" }
            rewritten.append(chain.append(record.kind, fields: fields, timeMs: record.timeMs))
        }
        #expect(AuditVerifier.verify(rewritten, region: Self.eu) == .intact(head: 15, checkpoints: 0))
        guard case .broken(let at, let reason) = AuditVerifier.verify(rewritten, region: Self.eu, checkpoints: checkpoints, key: key.publicKey) else {
            Issue.record("a recomputed chain went unnoticed")
            return
        }
        #expect(at == 5 && reason.contains("rewritten"), "\(at): \(reason)")
        // New checkpoints for the rewritten chain need the region's key: another key's are refused.
        let forged = [AuditCheckpoint.sign(chain, with: Curve25519.Signing.PrivateKey())]
        guard case .broken(_, let why) = AuditVerifier.verify(rewritten, region: Self.eu, checkpoints: forged, key: key.publicKey) else {
            Issue.record("a forged checkpoint was trusted")
            return
        }
        #expect(why.contains("not signed"))
        // A record copied from another region's trail is refused.
        var other = AuditChain(region: Self.us)
        let foreign = other.append(.proxied, fields: [:], timeMs: 1)
        guard case .broken = AuditVerifier.verify([foreign], region: Self.eu) else { Issue.record("a foreign record was accepted"); return }
    }
}

/// A node starting with another cluster file than the trail last recorded puts a `config_change` on it, naming the
/// keyspaces added, removed or changed; the same file again records nothing.
@Suite struct ConfigurationAuditTests {
    static func record(_ fields: [String: String]) -> AuditRecord {
        var chain = AuditChain(region: RegionName(validated: "us-east"))
        return chain.append(.configChange, fields: fields, timeMs: 1)
    }

    @Test func aChangedClusterFileIsRecordedWithTheKeyspacesItChanged() throws {
        let demo = try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
        let first = try #require(ConfigurationAudit.startFields(demo, previous: nil))
        #expect(first["event"] == "started" && first["keyspaces_added"]?.contains("accounts") == true && first["file_digest"]?.count == 64)
        // The same file again: nothing to record, in this process or another (the digests do not depend on it).
        let again = try ClusterConfig.parse(yaml: DemoCluster.yaml, file: "demo")
        #expect(ConfigurationAudit.startFields(again, previous: Self.record(first)) == nil)
        // The profiles keyspace's session default changed and accounts is gone.
        var yaml = DemoCluster.yaml.replacingOccurrences(of: "consistency: { default: session }", with: "consistency: { default: eventual }")
        let accounts = try #require(yaml.range(of: "  - name: accounts"))
        let next = try #require(yaml.range(of: "\n\n", range: accounts.upperBound..<yaml.endIndex))
        yaml.removeSubrange(accounts.lowerBound..<next.upperBound)
        let changed = try ClusterConfig.parse(yaml: yaml, file: "demo")
        let fields = try #require(ConfigurationAudit.startFields(changed, previous: Self.record(first)))
        #expect(fields["keyspaces_removed"] == "accounts" && fields["keyspaces_changed"]?.contains("profiles") == true && fields["keyspaces_added"] == "",
                "\(fields)")
        #expect(fields["previous_file_digest"] == first["file_digest"] && fields["file_digest"] != first["file_digest"])
    }
}
