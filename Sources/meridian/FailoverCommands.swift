import ArgumentParser
import Foundation
import MeridianHarness
import MeridianCore

private func column(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }

private func parsedJSON(_ result: HTTPResult) -> [String: Any] {
    ((try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any]) ?? [:]
}

struct Failover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move a single-leader keyspace's leadership to another region (manual failover).",
        discussion: "The current leader stops taking writes, waits until the target holds its whole log, and hands over; the target leads a new epoch. Any region may be asked (POST /v1/admin/failover); a manual failover is not failed back.")

    @Argument(help: "The single-leader keyspace.") var keyspace: String
    @Option(help: "The region to lead it.") var to: String
    @OptionGroup var target: TargetOptions

    func run() async throws {
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let body = try JSONSerialization.data(withJSONObject: ["keyspace": keyspace, "to": to])
        let result = try await connection.request("POST", "/v1/admin/failover", headers: [("Content-Type", "application/json")], body: Array(body))
        try report(result, verbose: false, printBody: false)
        let answer = parsedJSON(result)
        print("\(answer["keyspace"] as? String ?? keyspace): \(answer["from"] as? String ?? "?") -> \(answer["to"] as? String ?? to), epoch \(answer["epoch"] as? String ?? "?")")
    }
}

struct Failovers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every failover the cluster's regions recorded, with detection, election and RTO times and the writes kept aside.",
        discussion: "Asks every region of the cluster file (GET /v1/failovers). RTO here is from the new leader's last word from the old one to its first write in the new epoch; `meridian gameday` measures it from the client's side.")

    @OptionGroup var cluster: ConfigOption
    @Flag(help: "Print every region's raw JSON.") var json = false

    func run() async throws {
        let config = try cluster.load()
        var rows: [(Int, String)] = []
        // The same write may be kept aside in several regions (the deposed leader, and followers it reached
        // late): count each once, by origin and sequence, per keyspace and fencing epoch.
        var diverted: [String: Set<String>] = [:]
        for region in config.regions {
            guard let connection = try? await HTTPConnection.connect(host: region.client.host, port: region.client.port, timeoutSeconds: 10) else {
                print("\(region.name): unreachable")
                continue
            }
            let result = try await connection.request("GET", "/v1/failovers")
            try report(result, verbose: false, printBody: json)
            let answer = parsedJSON(result)
            var after = 0
            for _ in 0..<1_000 {
                let page = try await connection.request("GET", "/v1/divergence?limit=1000&after=\(after)")
                try report(page, verbose: false, printBody: false)
                let listing = parsedJSON(page)
                for write in listing["writes"] as? [[String: Any]] ?? [] {
                    let key = "\(write["keyspace"] as? String ?? "")/\(write["successor_epoch"] as? Int ?? 0)"
                    diverted[key, default: []].insert("\(write["origin"] as? String ?? "").\(write["sequence"] as? Int ?? 0)")
                }
                guard let next = listing["next"] as? Int else { break }
                after = next
            }
            await connection.close()
            for event in answer["failovers"] as? [[String: Any]] ?? [] {
                let heard = event["last_heard_ms"] as? Int
                let suspected = event["suspected_ms"] as? Int ?? 0
                let elected = event["elected_ms"] as? Int ?? 0
                let first = event["first_write_ms"] as? Int
                let detection = heard.map { String(max(0, suspected - $0)) } ?? "-"
                let line = column(event["keyspace"] as? String ?? "", 16) + column(String(event["epoch"] as? Int ?? 0), 7)
                    + column("\(event["previous_leader"] as? String ?? "?") -> \(event["leader"] as? String ?? "?")", 30)
                    + column(event["reason"] as? String ?? "", 10) + column(detection, 11) + column(String(max(0, elected - suspected)), 10)
                    + column((event["rto_ms"] as? Int).map(String.init) ?? (first == nil ? "no write" : "-"), 10)
                rows.append((elected, line + "\u{1}\(event["keyspace"] as? String ?? "")/\(event["epoch"] as? Int ?? 0)"))
            }
        }
        guard !json else { return }
        print(column("KEYSPACE", 16) + column("EPOCH", 7) + column("LEADER", 30) + column("REASON", 10) + column("DETECT ms", 11)
              + column("ELECT ms", 10) + column("RTO ms", 10) + "KEPT ASIDE")
        for (_, row) in rows.sorted(by: { $0.0 < $1.0 }) {
            let parts = row.split(separator: "\u{1}", maxSplits: 1)
            print(String(parts[0]) + String(diverted[String(parts[1])]?.count ?? 0))
        }
    }
}

struct Divergence: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the writes kept aside after failovers: writes a deposed leader acknowledged that its successor never held.",
        discussion: "Asks every region (GET /v1/divergence). Re-apply one through the current leader with --reapply ID --region REGION (POST /v1/admin/divergence/ID/reapply).")

    @OptionGroup var target: TargetOptions
    @Option(help: "Only this keyspace.") var keyspace: String?
    @Option(help: "Re-apply the kept-aside write with this id (at --region) through the keyspace's current leader.") var reapply: Int64?

    func run() async throws {
        if let reapply {
            let connection = try await target.connect()
            defer { Task { await connection.close() } }
            let result = try await connection.request("POST", "/v1/admin/divergence/\(reapply)/reapply")
            try report(result, verbose: false, printBody: true)
            return
        }
        let config = try target.cluster.load()
        let regions = target.region == nil ? config.regions : config.regions.filter { $0.name.rawValue == target.region }
        print(column("REGION", 16) + column("ID", 7) + column("KEYSPACE", 16) + column("KEY", 24) + column("VERSION", 34) + column("EPOCH", 12) + "VALUE")
        for region in regions {
            guard let connection = try? await HTTPConnection.connect(host: region.client.host, port: region.client.port, timeoutSeconds: 10) else {
                print("\(region.name): unreachable")
                continue
            }
            var after = 0
            for _ in 0..<1_000 {
                let query = "?limit=1000&after=\(after)" + (keyspace.map { "&keyspace=\(pathEncoded($0))" } ?? "")
                let result = try await connection.request("GET", "/v1/divergence\(query)")
                try report(result, verbose: false, printBody: false)
                let answer = parsedJSON(result)
                for write in answer["writes"] as? [[String: Any]] ?? [] {
                    let value = (write["value"] as? String).map { String($0.prefix(40)) } ?? "(binary)"
                    let reapplied = write["reapplied_ms"] is Int ? " (re-applied)" : ""
                    print(column(region.name.rawValue, 16) + column(String(write["id"] as? Int ?? 0), 7) + column(write["keyspace"] as? String ?? "", 16)
                          + column(write["key"] as? String ?? "", 24) + column(write["version"] as? String ?? "", 34)
                          + column("\(write["epoch"] as? Int ?? 0) -> \(write["successor_epoch"] as? Int ?? 0)", 12) + value + reapplied)
                }
                guard let next = answer["next"] as? Int else { break }
                after = next
            }
            await connection.close()
        }
    }
}
