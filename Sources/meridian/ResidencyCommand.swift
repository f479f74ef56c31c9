import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness

struct ResidencyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "residency", abstract: "Prove where a restricted keyspace's data is.", subcommands: [ResidencyCheck.self])
}

/// `meridian residency check`: looks for marker values written into a restricted keyspace, and its key names, in
/// every region's data directory, logs, `/metrics`, `/v1/status` and `/v1/topology`, in each form they could take.
struct ResidencyCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Scan every region for a restricted keyspace's markers and key names where they must not be.",
        discussion: """
            Reports every hit outside the keyspace's residency (a marker or a key name), and every marker found in \
            plaintext inside it (a sealed keyspace holds values only as ciphertext). Forms looked for: raw, hex, \
            base64, JSON-escaped and percent-encoded. The cluster directory is laid out as `meridian up` makes it: \
            <dir>/<region>/ (data, WAL, backups), <dir>/<region>*.log. Exits 1 on any hit.
            """)

    @OptionGroup var cluster: ConfigOption
    @Option(help: "The restricted keyspace the markers were written into.") var keyspace: String
    @Option(help: "The cluster directory (as `meridian up --data` lays it out).") var data: String = "meridian-data"
    @Option(help: "A value written into the keyspace (repeat for several; at least 8 bytes).") var marker: [String] = []
    @Option(help: "A key name of the keyspace (repeat for several; at least 8 bytes).") var keyName: [String] = []
    @Flag(help: "Scan only files, not the regions' HTTP answers.") var filesOnly = false

    func run() async throws {
        let config = try cluster.load()
        let name: KeyspaceName
        do { name = try KeyspaceName(keyspace) } catch { throw ValidationError(error.message) }
        guard let policy = config.keyspace(name) else { throw ValidationError("Keyspace '\(keyspace)' is not in the cluster file.") }
        guard !marker.isEmpty || !keyName.isEmpty else { throw ValidationError("Give at least one --marker or --key-name to look for.") }
        for needle in marker + keyName where needle.utf8.count < ResidencyScan.needleBytesMin {
            throw ValidationError("'\(needle)' is shorter than \(ResidencyScan.needleBytesMin) bytes: it would be found by chance. Use longer markers.")
        }
        let sealed = policy.residency.encryption == .sealed
        var hits = 0, sources = 0
        for region in config.regions.map(\.name) {
            let inside = policy.residency.regions.contains(region)
            // Inside the residency, key names are stored as they are; values only when the keyspace is not sealed.
            let needles = inside ? (sealed ? marker.map { ($0, "marker") } : []) : marker.map { ($0, "marker") } + keyName.map { ($0, "key name") }
            guard !needles.isEmpty else { continue }
            for (source, contents) in try files(of: region) + (filesOnly ? [] : await answers(of: region, config: config)) {
                sources += 1
                for (needle, kind) in needles {
                    for hit in ResidencyScan.find(needle, in: contents) {
                        hits += 1
                        let verdict = inside ? "plaintext inside the residency" : "outside the residency"
                        print("HIT \(region) \(source): \(kind) '\(needle)' as \(hit) (\(verdict))")
                    }
                }
            }
        }
        print("residency check of \(name): \(hits) hit\(hits == 1 ? "" : "s") in \(sources) sources across \(config.regions.count) regions (residency: \(policy.residency.regions.map(\.rawValue).joined(separator: ", ")))")
        if hits > 0 { throw ExitCode(1) }
    }

    /// Every file of the region's data directory (recursively) and its logs.
    private func files(of region: RegionName) throws -> [(String, Data)] {
        var paths: [String] = []
        let directory = (data as NSString).appendingPathComponent(region.rawValue)
        if let walker = FileManager.default.enumerator(atPath: directory) {
            while let relative = walker.nextObject() as? String {
                let path = (directory as NSString).appendingPathComponent(relative)
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue { paths.append(path) }
            }
        }
        let logs = ((try? FileManager.default.contentsOfDirectory(atPath: data)) ?? [])
            .filter { $0.hasPrefix("\(region.rawValue).") && $0.hasSuffix(".log") }
            .map { (data as NSString).appendingPathComponent($0) }
        return paths.sorted().compactMap { path in (try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)).map { (path, $0) } } +
            logs.sorted().compactMap { path in (try? Data(contentsOf: URL(fileURLWithPath: path))).map { (path, $0) } }
    }

    /// The region's `/metrics`, `/v1/status` and `/v1/topology` answers (none when it cannot be reached).
    private func answers(of region: RegionName, config: ClusterConfig) async -> [(String, Data)] {
        guard let endpoint = config.region(region)?.client,
              let connection = try? await HTTPConnection.connect(host: endpoint.host, port: endpoint.port, timeoutSeconds: 10) else {
            FileHandle.standardError.write(Data("residency check: \(region) cannot be reached; its HTTP answers are not scanned\n".utf8))
            return []
        }
        var answers: [(String, Data)] = []
        for path in ["/metrics", "/v1/status", "/v1/topology"] {
            if let answer = try? await connection.request("GET", path) { answers.append(("GET \(path)", Data(answer.body))) }
        }
        await connection.close()
        return answers
    }
}
