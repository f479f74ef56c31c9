// The erasure ledger beside a region's root key file: what is appended reads back by keyspace, the file is the
// owner's only, and a line changed by hand is refused with the file and line named.
import Foundation
import MeridianCore
import MeridianSecurity
import Testing

@Suite struct ErasureLedgerTests {
    @Test func appendedKeysReadBackAndAChangedLineIsRefusedByNumber() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ledger-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ledger = ErasureLedger(rootKeyFile: directory + "/us-east.root-key")
        #expect(try ledger.read().isEmpty)
        let vault = try KeyspaceName("vault"), solo = try KeyspaceName("solo")
        let ids = try (1...3).map { byte in try DataKeyID(bytes: [UInt8](repeating: UInt8(byte), count: DataKeyID.byteCount)) }
        try ledger.append(keyspace: vault, ids: Array(ids.prefix(2)))
        try ledger.append(keyspace: solo, ids: [ids[2]])
        #expect(try ledger.read() == [vault: Array(ids.prefix(2)), solo: [ids[2]]])
        let mode = (try FileManager.default.attributesOfItem(atPath: ledger.path)[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)
        try "vault 0102\n".write(toFile: ledger.path, atomically: false, encoding: .utf8)
        let refusal: MeridianError?
        do throws(MeridianError) {
            _ = try ledger.read()
            refusal = nil
        } catch {
            refusal = error
        }
        let message = refusal?.message ?? "accepted"
        #expect(refusal?.code == .invalidConfig && message.contains("line 1") && message.contains(ledger.path), "\(message)")
    }
}
