import ArgumentParser
import Foundation
import MeridianHarness

/// Prints a response: the body (and version) on success; the JSON error's code and message on failure, exiting 1.
func report(_ result: HTTPResult, verbose: Bool, printBody: Bool = true) throws {
    if verbose {
        FileHandle.standardError.write(Data("HTTP \(result.status)\n".utf8))
        for (name, value) in result.headers { FileHandle.standardError.write(Data("\(name): \(value)\n".utf8)) }
    }
    guard (200..<300).contains(result.status) else {
        if let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any],
           let error = object["error"] as? [String: Any] {
            let code = error["code"] as? String ?? "error"
            let message = error["message"] as? String ?? ""
            throw CLIFailure("\(result.status) \(code): \(message)")
        }
        throw CLIFailure("HTTP \(result.status): \(result.text)")
    }
    if printBody {
        FileHandle.standardOutput.write(Data(result.body))
        if result.body.last != UInt8(ascii: "\n") { print() }
    }
}

struct Put: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write a value: meridian put KEYSPACE KEY VALUE (VALUE '-' reads stdin).")

    @OptionGroup var target: TargetOptions
    @Argument var keyspace: String
    @Argument var key: String
    @Argument(help: "The value, or '-' to read it from standard input.") var value: String
    @Option(help: "The acknowledgement mode: async, majority or all.") var ack: String?
    @Option(name: .customLong("if-match"), help: "Write only if the current version is this ETag.") var ifMatch: String?
    @Option(name: .customLong("content-type")) var contentType: String = "text/plain; charset=utf-8"
    @Flag(name: .shortAndLong, help: "Print the response status and headers to stderr.") var verbose = false

    func run() async throws {
        let body = value == "-" ? Array(FileHandle.standardInput.readDataToEndOfFile()) : Array(value.utf8)
        var headers = [("Content-Type", contentType)]
        if let ack { headers.append(("Meridian-Ack", ack)) }
        if let ifMatch { headers.append(("If-Match", ifMatch.hasPrefix("\"") || ifMatch == "*" ? ifMatch : "\"\(ifMatch)\"")) }
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let result = try await connection.request("PUT", "/v1/kv/\(pathEncoded(keyspace))/\(pathEncoded(key))", headers: headers, body: body)
        try report(result, verbose: verbose)
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Read a value: meridian get KEYSPACE KEY.")

    @OptionGroup var target: TargetOptions
    @Argument var keyspace: String
    @Argument var key: String
    @Option(help: "strong, bounded, session, prefix or eventual.") var consistency: String?
    @Option(name: .customLong("max-staleness-ms")) var maxStalenessMs: String?
    @Option(help: "A session token from an earlier response.") var session: String?
    @Flag(name: .shortAndLong, help: "Print the response status and headers (version, session token) to stderr.") var verbose = false

    func run() async throws {
        var headers: [(String, String)] = []
        if let consistency { headers.append(("Meridian-Consistency", consistency)) }
        if let maxStalenessMs { headers.append(("Meridian-Max-Staleness-Ms", maxStalenessMs)) }
        if let session { headers.append(("Meridian-Session", session)) }
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let result = try await connection.request("GET", "/v1/kv/\(pathEncoded(keyspace))/\(pathEncoded(key))", headers: headers)
        try report(result, verbose: verbose)
        if !verbose, let etag = result.header("ETag") {
            FileHandle.standardError.write(Data("version \(etag) from \(result.header("Meridian-Region") ?? "?")\n".utf8))
        }
    }
}

struct Del: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a key: meridian del KEYSPACE KEY.")

    @OptionGroup var target: TargetOptions
    @Argument var keyspace: String
    @Argument var key: String
    @Option(help: "The acknowledgement mode: async, majority or all.") var ack: String?
    @Flag(name: .shortAndLong) var verbose = false

    func run() async throws {
        var headers: [(String, String)] = []
        if let ack { headers.append(("Meridian-Ack", ack)) }
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let result = try await connection.request("DELETE", "/v1/kv/\(pathEncoded(keyspace))/\(pathEncoded(key))", headers: headers)
        try report(result, verbose: verbose)
    }
}

struct Ls: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List keys with their versions: meridian ls KEYSPACE [--prefix P].")

    @OptionGroup var target: TargetOptions
    @Argument var keyspace: String
    @Option var prefix: String?
    @Option var after: String?
    @Option var limit: Int?
    @Flag(help: "Print the raw JSON.") var json = false

    func run() async throws {
        var query: [String] = []
        if let prefix { query.append("prefix=\(queryEncoded(prefix))") }
        if let after { query.append("after=\(queryEncoded(after))") }
        if let limit { query.append("limit=\(limit)") }
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let result = try await connection.request("GET", "/v1/kv/\(pathEncoded(keyspace))" + (query.isEmpty ? "" : "?" + query.joined(separator: "&")))
        try report(result, verbose: false, printBody: json)
        guard !json, let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any],
              let keys = object["keys"] as? [[String: Any]] else { return }
        for item in keys {
            let key = item["key"] as? String ?? ""
            print("\(key)\t\(item["version"] as? String ?? "")\t\(item["bytes"] as? Int ?? 0) bytes\t\(item["content_type"] as? String ?? "")")
        }
        if let next = object["next_after"] as? String { print("… more: --after '\(next)'") }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a region's keyspaces, roles and peers.")

    @OptionGroup var target: TargetOptions
    @Flag(help: "Print the raw JSON.") var json = false

    func run() async throws {
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        let result = try await connection.request("GET", "/v1/status")
        try report(result, verbose: false, printBody: json)
        guard !json, let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any] else { return }
        print("region \(object["region"] as? String ?? "?") (cluster \(object["cluster"] as? String ?? "?")), up \((object["uptime_ms"] as? Int ?? 0) / 1000) s")
        print("\nKEYSPACE            TOPOLOGY          ROLE         EPOCH  KEYS")
        for keyspace in object["keyspaces"] as? [[String: Any]] ?? [] {
            let name = (keyspace["name"] as? String ?? "").padding(toLength: 20, withPad: " ", startingAt: 0)
            let topology = (keyspace["topology"] as? String ?? "").padding(toLength: 18, withPad: " ", startingAt: 0)
            let role = (keyspace["role"] as? String ?? "").padding(toLength: 13, withPad: " ", startingAt: 0)
            let epoch = (keyspace["epoch"] as? Int).map(String.init) ?? "-"
            print("\(name)\(topology)\(role)\(epoch.padding(toLength: 7, withPad: " ", startingAt: 0))\(keyspace["keys"] as? Int ?? 0)")
        }
        print("\nTO PEER         LINK            RTT ms   LAG ms   LAG entries  CURSOR")
        for peer in object["peers"] as? [[String: Any]] ?? [] {
            let name = (peer["region"] as? String ?? "").padding(toLength: 16, withPad: " ", startingAt: 0)
            let link = (peer["link"] as? String ?? "").padding(toLength: 16, withPad: " ", startingAt: 0)
            let rtt = ((peer["rtt_ms"] as? Double).map { String(format: "%.0f", $0) } ?? "-").padding(toLength: 9, withPad: " ", startingAt: 0)
            let lag = ((peer["lag_ms"] as? Double).map { String(format: "%.1f", $0) } ?? "-").padding(toLength: 9, withPad: " ", startingAt: 0)
            let entries = String(peer["lag_entries"] as? Int ?? 0).padding(toLength: 13, withPad: " ", startingAt: 0)
            print("\(name)\(link)\(rtt)\(lag)\(entries)\(peer["cursor"] as? Int ?? 0)")
            if let error = peer["last_error"] as? String { print("                \(error)") }
        }
        print("\nFROM PEER       LINK            APPLIED    LAG entries  STALENESS ms  APPLY LAG ms p50/p99/max")
        for peer in object["peers"] as? [[String: Any]] ?? [] {
            let inbound = peer["inbound"] as? [String: Any] ?? [:]
            let lag = inbound["apply_lag_ms"] as? [String: Any] ?? [:]
            let name = (peer["region"] as? String ?? "").padding(toLength: 16, withPad: " ", startingAt: 0)
            let link = (inbound["link"] as? String ?? "").padding(toLength: 16, withPad: " ", startingAt: 0)
            let applied = String(inbound["applied"] as? Int ?? 0).padding(toLength: 11, withPad: " ", startingAt: 0)
            let entries = String(inbound["lag_entries"] as? Int ?? 0).padding(toLength: 13, withPad: " ", startingAt: 0)
            let summary = (lag["samples"] as? Int ?? 0) == 0 ? "-" : "\(lag["p50"] as? Int ?? 0)/\(lag["p99"] as? Int ?? 0)/\(lag["max"] as? Int ?? 0)"
            let staleness = ((inbound["staleness_ms"] as? Int).map(String.init) ?? "-").padding(toLength: 14, withPad: " ", startingAt: 0)
            print("\(name)\(link)\(applied)\(entries)\(staleness)\(summary)")
        }
    }
}

struct Repair: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run anti-entropy now: every region compares each keyspace's Merkle tree with every other replica and repairs what differs.",
        discussion: "Asks each region of the cluster file in turn (POST /v1/admin/repair), then prints what differed and each region's Merkle root afterwards.")

    @OptionGroup var cluster: ConfigOption
    @Option(help: "Only this keyspace.") var keyspace: String?
    @Flag(help: "Print the raw JSON of every region's answer.") var json = false

    func run() async throws {
        let config = try cluster.load()
        let query = keyspace.map { "?keyspace=\(pathEncoded($0))" } ?? ""
        print("REGION          KEYSPACE            PEER            KEYS     BUCKETS  SLOTS    RECEIVED  CHANGED  ROOT AFTER")
        var failures = 0
        // A second pass: after the first, a region may hold keys it pulled that its peers have not pulled yet.
        // A region that could not reach a peer (a stream still reconnecting, perhaps because this very repair
        // let it resume) is retried in later passes; only the last pass's failures count.
        for pass in 1...4 {
            if pass > 2 && failures == 0 { break }
            if pass > 1 && failures > 0 { try await Task.sleep(for: .seconds(2)) }
            failures = 0
            for region in config.regions {
                let connection: HTTPConnection
                do {
                    connection = try await HTTPConnection.connect(host: region.client.host, port: region.client.port, timeoutSeconds: 120)
                } catch {
                    print("\(region.name): unreachable (\(error))")
                    failures += 1
                    continue
                }
                defer { Task { await connection.close() } }
                let result = try await connection.request("POST", "/v1/admin/repair\(query)")
                try report(result, verbose: false, printBody: json)
                guard !json, let object = try? JSONSerialization.jsonObject(with: Data(result.body)) as? [String: Any] else { continue }
                for repair in object["repairs"] as? [[String: Any]] ?? [] where pass == 1 || (repair["keys_changed"] as? Int ?? 0) > 0 || repair["error"] != nil {
                    func column(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
                    let root = String((repair["root_after"] as? String ?? "").prefix(16))
                    print(column(region.name.rawValue, 16) + column(repair["keyspace"] as? String ?? "", 20) + column(repair["peer"] as? String ?? "", 16)
                          + column(String(repair["keys"] as? Int ?? 0), 9) + column(String(repair["buckets_differing"] as? Int ?? 0), 9)
                          + column(String(repair["slots_differing"] as? Int ?? 0), 9)
                          + column(String(repair["keys_received"] as? Int ?? 0), 10) + column(String(repair["keys_changed"] as? Int ?? 0), 9) + root)
                    if let error = repair["error"] as? String {
                        print("                \(error)")
                        failures += 1
                    }
                }
            }
        }
        if failures > 0 { throw CLIFailure("\(failures) repairs did not complete; see above.") }
    }
}
