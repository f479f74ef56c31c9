import ArgumentParser
import Foundation
import MeridianHarness
import MeridianCore
import MeridianTestKit
import MeridianDrills
import MeridianSecurity
import Synchronization

/// `meridian nemesis`: Jepsen-style fault injection against a cluster of real processes that it starts itself.
struct Nemesis: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the demo cluster, run clients in every region while injecting faults, then heal and check every guarantee.",
        discussion: """
            Clients in every region write unique values (majority and async) and a few shared registers to the \
            single-leader keyspace `accounts`, read the registers strongly, increment a CRDT counter in `likes`, \
            read `profiles` with a staleness bound, and move session clients between regions. A seeded schedule \
            injects one fault at a time: partitions and isolations through the WAN emulator, SIGKILL and restart, \
            SIGSTOP/SIGCONT pauses longer than the lease, clock skew within and beyond max_clock_offset_ms \
            (a restart with --clock-offset-ms), and slowed links. Then everything heals, the regions must agree \
            (Merkle roots), and the checkers run: acknowledged writes lost per ack mode, linearizability of the \
            strong operations, session guarantees, bounded staleness, counter bounds, a fenced region for every \
            skew beyond the maximum, and every lost async write in a divergence log. Exits non-zero on any \
            violation. The same seed gives the same schedule of faults.
            """)

    @Option(help: "Seconds of load and faults.") var duration: Double = 60
    @Option(help: "Seed of the fault schedule.") var seed: UInt64 = 1
    @Option(help: "Multiply every emulated WAN delay (0.1 to 1).") var latencyScale: Double = 0.1
    @Option(help: "Faults to draw from: partition, isolate, kill, pause, skew, slow, kill-region (every node of a region at once: with --standbys, its holder and its standby) (comma-separated).")
    var faults: String = "partition,isolate,kill,pause,skew,slow"
    @Option(help: "Seconds each fault lasts, at most (at least a third of it).") var faultSeconds: Double = 4
    @Option(help: "Seconds to wait for the regions to agree after healing.") var settleSeconds: Double = 90
    @Option(help: "Where the cluster keeps its data and logs (default: a new temporary directory, removed unless a check fails).")
    var data: String?
    @Flag(help: "Run the cluster with TLS on every stream and token authentication, as `meridian up --secure` does.")
    var secure = false
    @Option(help: ArgumentHelp("Where the regions keep their data: sqlite, or postgres (a database per region on a local PostgreSQL server that the faults leave alone).",
                               valueName: "kind"))
    var store: String = "sqlite"
    @Flag(help: "With --store postgres: two nodes per region, so a kill hits the node holding the region's lease and the other takes over (pause and skew are left out: on one machine a paused node keeps the region's ports, and a clock offset is one process's).")
    var standbys = false

    func validate() throws {
        if standbys {
            guard store == "postgres" else { throw ValidationError("--standbys needs --store postgres: standby nodes share a region's PostgreSQL database.") }
            let kinds = faults.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !kinds.contains("pause") && !kinds.contains("skew") else {
                throw ValidationError("--standbys runs without pause and skew faults (give --faults partition,isolate,kill,kill-region,slow): on one machine a paused holder keeps the region's ports, and a clock offset is one process's.")
            }
        }
        guard duration >= 5, duration <= 7_200 else { throw ValidationError("--duration is 5 to 7200 seconds.") }
        guard (0.1...1).contains(latencyScale) else { throw ValidationError("--latency-scale is 0.1 to 1.") }
        guard ["sqlite", "postgres"].contains(store) else { throw ValidationError("--store is sqlite or postgres.") }
        guard faultSeconds >= 1, faultSeconds <= 60, settleSeconds >= 5 else {
            throw ValidationError("--fault-seconds is 1 to 60 and --settle-seconds at least 5.")
        }
        let kinds = faults.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let unknown = kinds.filter { Fault.Kind(rawValue: $0) == nil }
        guard !kinds.isEmpty, unknown.isEmpty else {
            throw ValidationError("--faults: unknown \(unknown.joined(separator: ", ")); choose from \(Fault.Kind.allCases.map(\.rawValue).joined(separator: ", ")).")
        }
    }

    func run() async throws {
        let kinds = faults.split(separator: ",").compactMap { Fault.Kind(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
        let directory = data ?? (FileManager.default.temporaryDirectory.appendingPathComponent("meridian-nemesis-\(seed)-\(UUID().uuidString.prefix(8))").path)
        var yaml = try LocalCluster.demoYAML()
        var database: PostgresServer?
        if store == "postgres" { (database, yaml) = try await PostgresServer.withRegionDatabases(yaml) }
        defer { if let database { Task { await database.stop() } } }
        if secure {
            let setup: SecureSetup
            do throws(MeridianError) {
                setup = try await SecureSetup.prepare(directory: (directory as NSString).appendingPathComponent("secure"), yaml: yaml)
            } catch {
                throw CLIFailure(error.message)
            }
            yaml += setup.sections
            // Every client, probe and check of the run presents the admin token over HTTPS.
            ClientCredentials.process = ClientCredentials(token: setup.adminToken, tls: try ClientTLS(caPath: setup.caPath))
        }
        let cluster = try NemesisCluster(directory: directory, latencyScale: latencyScale, yaml: yaml,
                                         standbys: standbys ? Set(try ClusterConfig.parse(yaml: yaml, file: "nemesis").regions.map(\.name)) : [])
        print("nemesis: seed \(seed), \(Int(duration)) s, latency scale \(latencyScale), faults \(kinds.map(\.rawValue).joined(separator: ","))\(secure ? ", TLS and tokens on" : ""), regions on \(store)\(standbys ? " with a standby node each" : ""); data and logs in \(directory)")
        var passed = false
        do {
            try await cluster.start()
            let run = NemesisRun(cluster: cluster, seed: seed, kinds: kinds, faultSeconds: faultSeconds)
            let report = try await run.execute(durationSeconds: duration, settleSeconds: settleSeconds)
            print(report.text)
            passed = report.violations.isEmpty
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
        await database?.stop()
        if passed {
            if data == nil { try? FileManager.default.removeItem(atPath: directory) }
        } else {
            throw CLIFailure("nemesis found violations (seed \(seed)); the cluster's logs are in \(directory).")
        }
    }
}

