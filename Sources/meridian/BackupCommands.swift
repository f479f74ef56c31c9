import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness
import MeridianStore

struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take an online, consistent backup of one region's store.",
        discussion: """
            Asks the region's node (POST /v1/admin/backup) to copy its store with SQLite's backup API while it keeps \
            serving: one consistent snapshot, written as a new file named --name in the node's backup directory \
            (<data>/backups on the node's machine). \
            Values of sealed keyspaces stay sealed and data keys stay wrapped under the region's root key, so the file \
            opens only with that key, and an erasure or a key rotation after the backup makes the subjects concerned \
            unreadable in it as well. The backup goes on the region's audit trail.
            """)

    @Option(help: "The new backup file's name (letters, digits, '.', '_', '-').") var name: String
    @OptionGroup var target: TargetOptions

    func run() async throws {
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let body = try JSONSerialization.data(withJSONObject: ["name": name])
        let result = try await connection.request("POST", "/v1/admin/backup", headers: [("Content-Type", "application/json")], body: Array(body))
        try report(result, verbose: false, printBody: false)
        let answer = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any] ?? [:]
        let summary = answer["summary"] as? [String: Any] ?? [:]
        print("backup of \(answer["region"] as? String ?? "?") written to \(answer["path"] as? String ?? name): log end \(summary["log_end"] as? Int ?? 0), \(summary["keys"] as? Int ?? 0) keys, \(summary["bytes"] as? Int ?? 0) bytes")
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a region's backup into a fresh data directory of the same region.",
        discussion: """
            Run it with the region's node stopped, into a data directory that holds no store yet; then start the node \
            on that directory with the region's own root key file. A backup of another region is refused. \
            The restored node takes no request (503 restore_pending) until every peer has said how far it holds the \
            region's log and audit trail, and a full anti-entropy round with each peer has ended, erasures first. Its \
            log then continues after the highest sequence any peer holds, writes it lost come back from the peers, \
            subjects erased since the backup stay erased, and its audit trail resumes with a restore record naming the \
            records the backup lost.
            """)

    @Option(help: "The region the backup belongs to.") var region: String
    @Option(help: "The backup file (made by meridian backup).") var backup: String
    @Option(help: "The region's new data directory (the node's --data).") var data: String

    func run() async throws {
        let name = try RegionName(region)
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        let path = (data as NSString).appendingPathComponent("\(name).sqlite")
        let summary = try RegionStore.restore(backup: backup, to: path, region: name)
        print("restored \(backup) into \(path): region \(summary.region), log end \(summary.logEnd), audit head \(summary.auditHead), \(summary.keys) keys")
        print("start the node on \(data); it catches up from its peers before it takes requests")
    }
}
