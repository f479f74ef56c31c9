import ArgumentParser
import Foundation
import MeridianHarness

struct Erase: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Erase a subject's data in a sealed keyspace, in every region (right to erasure).",
        discussion: """
            Destroys the subject's data keys in every replica region of the keyspace (POST /v1/admin/erase/{keyspace}): \
            every value, old version, log entry, conflict record and backup copy of the subject becomes unreadable, and \
            reads answer 410 erased. Ask a region that holds a replica of the keyspace. Exits non-zero when a region did \
            not confirm; run it again (it is idempotent).
            """)

    @Option(help: "The sealed keyspace.") var keyspace: String
    @Option(help: "The subject whose data is erased (as the keyspace's subject rule finds it, or as Meridian-Subject gave it).") var subject: String
    @OptionGroup var target: TargetOptions

    func run() async throws {
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let body = try JSONSerialization.data(withJSONObject: ["subject": subject])
        let result = try await connection.request("POST", "/v1/admin/erase/\(pathEncoded(keyspace))", headers: [("Content-Type", "application/json")], body: Array(body))
        try report(result, verbose: false, printBody: false)
        let answer = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any] ?? [:]
        let confirmed = (answer["confirmed"] as? [String] ?? []).joined(separator: ", ")
        let destroyed = answer["keys_destroyed"] as? Int ?? 0
        print("erased in \(confirmed) (\(destroyed) data key\(destroyed == 1 ? "" : "s") destroyed)")
    }
}
