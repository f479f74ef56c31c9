import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore
import Synchronization

@main
struct PeersBenchmark: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "meridian-peers",
            abstract: "Meridian beside etcd, PostgreSQL and Redis on the same emulated WAN: write latency, async lag, one-node throughput.",
            discussion: """
                Run it through bench/peers, which starts the peer systems (three members each behind `meridian wan`, \
                plus a single node of etcd and Redis) and writes the targets file this command reads. It starts its own \
                Meridian cluster (the demo's regions and RTTs) and single node, and prints four tables:
                  1. majority-acknowledged write latency from a client in each region;
                  2. all-replica write latency from a client in each region;
                  3. async replication lag per link from us-east, at the same write rate for every system;
                  4. one-node throughput at the same client concurrency.
                Every latency is printed beside the emulated RTT (or one-way delay) it cannot beat and the fiber floor, \
                as ratios. --results writes every row, with its latency distribution, as JSON. Build with -c release.
                """)

        @Option(help: "The targets file bench/peers writes.") var targets: String
        @Option(help: "The meridian binary whose cluster is measured (build it with -c release).") var meridian: String = "../.build/release/meridian"
        @Option(help: "Where the JSON results go.") var results: String?
        @Option(help: "Writes per system, region and row in the latency tables.") var writes: Int = 200
        @Option(help: "Concurrent clients per region in the latency tables.") var clients: Int = 4
        @Option(help: "Writes per second in the lag table, the same for every system.") var rate: Double = 1000
        @Option(help: "Seconds of writing per system in the lag table.") var seconds: Double = 5
        @Option(help: "Concurrent connections in the throughput table.") var connections: Int = 32
        @Option(help: "Seconds per phase in the throughput table.") var throughputSeconds: Double = 5
        @Option(help: "Which tables to measure, comma-separated: lag, latency, throughput.") var tables: String = "lag,latency,throughput"

        var selected: Set<String> { Set(tables.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }

        func validate() throws {
            guard (10...100_000).contains(writes) else { throw ValidationError("--writes must be 10 to 100000.") }
            guard (1...64).contains(clients) else { throw ValidationError("--clients must be 1 to 64.") }
            guard rate >= 10 && rate <= 20_000 else { throw ValidationError("--rate must be 10 to 20000.") }
            guard seconds >= 1 && seconds <= 120 else { throw ValidationError("--seconds must be 1 to 120.") }
            guard (1...256).contains(connections) else { throw ValidationError("--connections must be 1 to 256.") }
            guard throughputSeconds >= 1 && throughputSeconds <= 120 else { throw ValidationError("--throughput-seconds must be 1 to 120.") }
            guard !selected.isEmpty, selected.isSubset(of: ["lag", "latency", "throughput"]) else {
                throw ValidationError("--tables takes lag, latency and throughput, comma-separated.")
            }
        }

        func run() async throws {
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let peers: PeerTargets
            do {
                peers = try decoder.decode(PeerTargets.self, from: Data(contentsOf: URL(fileURLWithPath: targets)))
            } catch {
                throw CLIFailure("cannot read the targets file \(targets): \(error). Run the benchmark through bench/peers, which writes it.")
            }
            var report = PeerReport(options: [
                "writes": "\(writes)", "clients": "\(clients)", "rate": "\(rate)", "seconds": "\(seconds)",
                "connections": "\(connections)", "throughput_seconds": "\(throughputSeconds)",
            ], versions: [
                "etcd": peers.etcd?.version ?? "-", "postgres": peers.postgres?.version ?? "-", "redis": peers.redis?.version ?? "-",
            ])
            say("meridian bench peers: \(writes) writes per row from \(clients) clients per region; lag at \(Int(rate)) writes/s for \(Int(seconds)) s; throughput with \(connections) connections for \(Int(throughputSeconds)) s")
            say("machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB; every system and the load generator share it")
            say("peers: etcd \(peers.etcd?.version ?? "absent"), PostgreSQL \(peers.postgres?.version ?? "absent"), Redis \(peers.redis?.version ?? "absent")")

            if !selected.isDisjoint(with: ["lag", "latency"]) {
                guard FileManager.default.isExecutableFile(atPath: meridian) else {
                    throw CLIFailure("no meridian binary at \(meridian); build it with swift build -c release, or pass --meridian PATH.")
                }
                try await BenchCluster.with(directory: nil, latencyScale: 1, executable: meridian) { cluster in
                    let runner = PeerRunner(options: self, peers: peers, cluster: cluster)
                    // Meridian's lag comes from its own apply-lag figures per origin, so its lag phase runs first,
                    // before any other write from us-east.
                    if selected.contains("lag") { try await runner.lagTable(&report) }
                    if selected.contains("latency") { try await runner.latencyTables(&report) }
                }
            }
            if selected.contains("throughput") { try await PeerRunner.throughputTable(options: self, peers: peers, report: &report) }
            report.printSummary()
            if let results {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                encoder.keyEncodingStrategy = .convertToSnakeCase
                try encoder.encode(report).write(to: URL(fileURLWithPath: results))
                say("\nresults: \(results)")
            }
        }
}

/// A failure reported as one line on stderr, exiting with status 1.
struct CLIFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints a line straight to standard output, unbuffered.
func say(_ line: String = "") {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// What bench/peers started, as its targets file says.
struct PeerTargets: Decodable {
    struct Etcd: Decodable {
        let leader: String
        let clients: [String: String]
        let single: String
        let version: String
    }

    struct Postgres: Decodable {
        let primaryRegion: String
        let via: [String: String]
        let standbys: [String: String]
        let standbyNames: [String: String]
        let pgbench: String
        let version: String
    }

    struct Redis: Decodable {
        let primary: String
        let replicas: [String: String]
        let single: String
        let version: String
    }

    let etcd: Etcd?
    let postgres: Postgres?
    let redis: Redis?
    let regions: [String]
}

/// One measured figure set, as printed and as written to the results file.
struct PeerRow: Encodable {
    let table: String
    let system: String
    let place: String
    let samples: Int
    let p50Ms: Double
    let p99Ms: Double
    /// The emulated delay the row cannot beat (RTT, or one-way for lag); 0 where none applies.
    let boundMs: Double
    /// The fiber floor for the same path.
    let floorMs: Double
    /// Operations per second (throughput rows).
    let opsPerSecond: Double?
    /// [percentile, ms] points of the latency distribution, for plots.
    let distribution: [[Double]]
    /// Writes the system refused or failed (not in the distribution), and the first one's answer.
    var failures = 0
    var firstFailure: String?

    static let percentiles: [Double] = [0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.9, 100]

    /// A latency row from a histogram of microseconds.
    init(table: String, system: String, place: String, histogram: Histogram<UInt64>, boundMs: Double, floorMs: Double) {
        self.init(table: table, system: system, place: place, samples: Int(histogram.totalCount),
                  distribution: Self.percentiles.map { [$0, Double($0 == 100 ? histogram.max : histogram.valueAtPercentile($0)) / 1000] },
                  boundMs: boundMs, floorMs: floorMs)
    }

    /// A latency row from [percentile, ms] points that include the 50th and 99th.
    init(table: String, system: String, place: String, samples: Int, distribution: [[Double]], boundMs: Double, floorMs: Double) {
        self.table = table
        self.system = system
        self.place = place
        self.samples = samples
        p50Ms = distribution.first { $0[0] == 50 }?[1] ?? 0
        p99Ms = distribution.first { $0[0] == 99 }?[1] ?? 0
        self.boundMs = boundMs
        self.floorMs = floorMs
        opsPerSecond = nil
        self.distribution = distribution
    }

    init(throughput system: String, operation: String, opsPerSecond: Double, p50Ms: Double, p99Ms: Double, samples: Int) {
        table = "throughput"
        self.system = system
        place = operation
        self.samples = samples
        self.p50Ms = p50Ms
        self.p99Ms = p99Ms
        boundMs = 0
        floorMs = 0
        self.opsPerSecond = opsPerSecond
        distribution = []
    }
}

/// Every row of a run, with how it was made.
struct PeerReport: Encodable {
    let date = ISO8601DateFormatter().string(from: Date())
    let machine = "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB, \(ProcessInfo.processInfo.operatingSystemVersionString)"
    let options: [String: String]
    let versions: [String: String]
    var rows: [PeerRow] = []
    var findings: [String] = []

    mutating func add(_ row: PeerRow) { rows.append(row) }

    /// Prints one table's rows (latency tables), grouped by place.
    func printLatencyTable(_ table: String, title: String, boundName: String) {
        say("\n\(title)")
        say("PLACE                  SYSTEM                                       SAMPLES FAILED   p50 ms   p99 ms  \(boundName.padding(toLength: 8, withPad: " ", startingAt: 0))  FLOOR ms  p50/bound  p50/floor")
        for row in rows where row.table == table {
            say(row.place.padding(toLength: 23, withPad: " ", startingAt: 0) + row.system.padding(toLength: 44, withPad: " ", startingAt: 0)
                + String(format: " %7d %6d %8.2f %8.2f  %8.1f  %8.1f  %8.2fx  %8.2fx", row.samples, row.failures, row.p50Ms, row.p99Ms, row.boundMs, row.floorMs,
                         row.p50Ms / max(row.boundMs, 0.001), row.p50Ms / max(row.floorMs, 0.001)))
        }
        for row in rows where row.table == table {
            if let first = row.firstFailure { say("  \(row.system) from \(row.place): \(row.failures) failed; first: \(first.prefix(300))") }
        }
    }

    /// Where Meridian leads and where it does not, per table and place, against the issue's expectations.
    mutating func printSummary() {
        say("\nWHERE MERIDIAN STANDS")
        for table in ["majority", "all"] {
            for place in Set(rows.filter { $0.table == table }.map(\.place)).sorted() {
                let here = rows.filter { $0.table == table && $0.place == place }
                guard let best = here.filter({ $0.system.hasPrefix("Meridian") }).min(by: { $0.p50Ms < $1.p50Ms }) else { continue }
                let others = here.filter { !$0.system.hasPrefix("Meridian") }
                guard let peer = others.min(by: { $0.p50Ms < $1.p50Ms }) else { continue }
                let line = String(format: "%@ writes from %@: best Meridian (%@) p50 %.1f ms vs best peer (%@) %.1f ms: %@", table, place, best.system, best.p50Ms,
                                  peer.system, peer.p50Ms, best.p50Ms <= peer.p50Ms ? "at or below" : String(format: "%.1f ms ABOVE", best.p50Ms - peer.p50Ms))
                findings.append(line)
                say(line)
            }
        }
        for row in rows where row.table == "lag" && row.system.hasPrefix("Meridian") {
            let met = row.p50Ms <= row.boundMs + 2
            let line = String(format: "async lag %@: Meridian p50 %.1f ms, one-way %.1f ms: %@", row.place, row.p50Ms, row.boundMs,
                              met ? "within one-way + 2 ms" : "ABOVE one-way + 2 ms")
            findings.append(line)
            say(line)
        }
        for operation in ["write", "read"] {
            guard let meridian = rows.first(where: { $0.table == "throughput" && $0.place == operation && $0.system.hasPrefix("Meridian") }),
                  let redis = rows.first(where: { $0.table == "throughput" && $0.place == operation && $0.system == "Redis" }) else { continue }
            let ratio = (meridian.opsPerSecond ?? 0) / max(redis.opsPerSecond ?? 1, 1)
            let line = String(format: "one-node %@ throughput: Meridian %.0f/s is %.2fx Redis's %.0f/s: %@", operation, meridian.opsPerSecond ?? 0, ratio,
                              redis.opsPerSecond ?? 0, ratio >= 0.5 ? "at least half" : "BELOW half")
            findings.append(line)
            say(line)
        }
    }
}

/// Runs the phases against the peers and the Meridian cluster.
struct PeerRunner {
    let options: PeersBenchmark
    let peers: PeerTargets
    let cluster: BenchCluster

    var regions: [RegionName] { cluster.config.regions.map(\.name) }
    var primary: RegionName { RegionName(validated: "us-east") }

    func rtt(_ a: RegionName, _ b: RegionName) -> Double { cluster.rttMs(a, b) }
    func floor(_ a: RegionName, _ b: RegionName) -> Double { DemoCluster.fiberFloorMs(a, b) ?? 0 }

    /// The nearest and farthest other region from `region`, by emulated RTT.
    func nearest(_ region: RegionName) -> RegionName { regions.filter { $0 != region }.min { rtt(region, $0) < rtt(region, $1) }! }
    func farthest(_ region: RegionName) -> RegionName { regions.filter { $0 != region }.max { rtt(region, $0) < rtt(region, $1) }! }

    // MARK: Latency

    func latencyTables(_ report: inout PeerReport) async throws {
        let value = String(repeating: "b", count: 100)
        for table in ["majority", "all"] {
            if let postgres = peers.postgres {
                let (setting, state) = table == "majority"
                    ? ("ANY 1 (\(postgres.standbyNames.values.sorted().joined(separator: ", ")))", "quorum")
                    : ("FIRST 2 (\(postgres.standbyNames.values.sorted().joined(separator: ", ")))", "sync")
                try await Self.setSynchronousStandbys(postgres, setting, expect: state)
            }
            for region in regions {
                let other = table == "majority" ? nearest(region) : farthest(region)
                let bound = rtt(region, other), floorMs = floor(region, other)
                func add(_ system: String, _ histogram: Histogram<UInt64>) {
                    report.add(PeerRow(table: table, system: system, place: region.rawValue, histogram: histogram, boundMs: bound, floorMs: floorMs))
                }
                func add(_ system: String, _ result: PhaseResult) {
                    var row = PeerRow(table: table, system: system, place: region.rawValue, histogram: result.histogram, boundMs: bound, floorMs: floorMs)
                    row.failures = result.failures
                    row.firstFailure = result.firstFailure
                    report.add(row)
                }
                if table == "majority", let etcd = peers.etcd, let client = etcd.clients[region.rawValue].flatMap(Endpoint.init(parsing:)) {
                    add("etcd put (leader \(etcd.leader))", try await http(client, "etcd put from \(region)") { connection, index in
                        try await connection.request("POST", "/v3/kv/put", headers: [("Content-Type", "application/json")],
                                                     body: Array(Self.etcdPut(key: "bench/\(region)/\(index)", value: value).utf8))
                    })
                }
                if let postgres = peers.postgres, let via = postgres.via[region.rawValue].flatMap(Endpoint.init(parsing:)) {
                    let name = table == "majority" ? "PostgreSQL ANY 1 (primary us-east)" : "PostgreSQL FIRST 2 (primary us-east)"
                    add(name, try await pgbench(postgres, via, sql: "INSERT INTO bench (v) VALUES (repeat('b', 100));", label: "\(table)-\(region)"))
                }
                let ack = table == "majority" ? "majority" : "all"
                let client = cluster.config.region(region)!.client
                add("Meridian single-leader \(ack) (leader us-east)", try await http(client, "Meridian single-leader \(ack) from \(region)") { connection, index in
                    try await connection.request("PUT", "/v1/kv/ledger/\(region)-\(ack)-\(index)", headers: [("Meridian-Ack", ack)], body: Array(value.utf8))
                })
                add("Meridian multi-leader \(ack)", try await http(client, "Meridian multi-leader \(ack) from \(region)") { connection, index in
                    try await connection.request("PUT", "/v1/kv/bench/\(region)-\(ack)-\(index)", headers: [("Meridian-Ack", ack)], body: Array(value.utf8))
                })
            }
            report.printLatencyTable(table, title: table == "majority"
                ? "1. MAJORITY-ACKNOWLEDGED WRITE LATENCY (bound: RTT to the client region's nearest other region; \(options.writes) writes per row, \(options.clients) clients)"
                : "2. ALL-REPLICA WRITE LATENCY (bound: RTT to the client region's farthest other region; \(options.writes) writes per row, \(options.clients) clients)",
                boundName: "RTT ms")
        }
    }

    static func etcdPut(key: String, value: String) -> String {
        "{\"key\":\"\(Data(key.utf8).base64EncodedString())\",\"value\":\"\(Data(value.utf8).base64EncodedString())\"}"
    }

    /// `options.writes` requests from `options.clients` keep-alive connections, after a warm-up of one per connection.
    /// Refused or failed writes are counted in the result (the table shows them); a row where most fail stops the run.
    func http(_ endpoint: Endpoint, _ what: String, _ body: @escaping @Sendable (HTTPConnection, Int) async throws -> HTTPResult) async throws -> PhaseResult {
        let pool = try await ConnectionPool.open(endpoint, count: options.clients)
        defer { Task { await pool.close() } }
        let warmUp = try await pool.run(seconds: 60, requestsMax: options.clients) { try await body($0, 1_000_000 + $1) }
        try warmUp.requireSuccess("\(what) (warm-up)")
        let result = try await pool.run(seconds: 600, requestsMax: options.writes, body)
        if result.failures * 2 > options.writes { try result.requireSuccess(what) }
        return result
    }

    /// Runs pgbench (libpq, PostgreSQL's own benchmark client) from a region: `options.writes` transactions of
    /// `sql` from `options.clients` connections, and reads each transaction's latency from its log.
    func pgbench(_ postgres: PeerTargets.Postgres, _ via: Endpoint, sql: String, label: String) async throws -> Histogram<UInt64> {
        let perClient = max(1, options.writes / options.clients)
        let histogram = try await ToolScratch.with { scratch in
            let script = try scratch.write(sql, to: "write.sql")
            _ = try await scratch.run(postgres.pgbench, [
                "-n", "-h", via.host, "-p", String(via.port), "-U", "postgres", "-c", String(options.clients), "-j", "1",
                "-t", String(perClient), "-f", script, "-l", "--log-prefix", scratch.path("log"), "postgres",
            ], timeoutSeconds: 600)
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
            for file in try FileManager.default.contentsOfDirectory(atPath: scratch.directory) where file.hasPrefix("log") {
                // client_id transaction_no latency_us script_no epoch_s epoch_us
                for line in try String(contentsOfFile: scratch.path(file), encoding: .utf8).split(separator: "\n") {
                    let fields = line.split(separator: " ")
                    if fields.count >= 3, let latency = UInt64(fields[2]) { _ = histogram.record(max(1, latency)) }
                }
            }
            return histogram
        }
        guard histogram.totalCount >= UInt64(perClient * options.clients) else {
            throw CLIFailure("pgbench (\(label)) logged \(histogram.totalCount) of \(perClient * options.clients) transactions")
        }
        return histogram
    }

    /// Sets `synchronous_standby_names` on the primary and waits until both standbys report `state`.
    static func setSynchronousStandbys(_ postgres: PeerTargets.Postgres, _ setting: String, expect state: String) async throws {
        guard let primary = postgres.via[postgres.primaryRegion].flatMap(Endpoint.init(parsing:)) else {
            throw CLIFailure("the targets file lacks the PostgreSQL primary's address")
        }
        try await onThread {
            let connection = try PostgresConnection(host: primary.host, port: primary.port)
            _ = try connection.query("ALTER SYSTEM SET synchronous_standby_names = '\(setting)'")
            _ = try connection.query("SELECT pg_reload_conf()")
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                let rows = try connection.query("SELECT count(*) FROM pg_stat_replication WHERE sync_state = '\(state)'")
                if rows.first?.first == "2" { return }
                usleep(50_000)
            }
            throw CLIFailure("PostgreSQL standbys did not become '\(state)' within 20 s of synchronous_standby_names = '\(setting)'")
        }
    }

    // MARK: Async lag

    func lagTable(_ report: inout PeerReport) async throws {
        let count = Int(options.rate * options.seconds)
        let links = regions.filter { $0 != primary }

        // Meridian: async writes at the rate from us-east, then every replica's apply lag for that origin.
        let client = cluster.config.region(primary)!.client
        let pool = try await ConnectionPool.open(client, count: 16)
        let written = try await pool.run(seconds: options.seconds * 3, requestsMax: count, ratePerSecond: options.rate) { connection, index in
            try await connection.request("PUT", "/v1/kv/bench/lag-\(index)", headers: [("Meridian-Ack", "async")], body: Array(repeating: 0x61, count: 100))
        }
        await pool.close()
        try written.requireSuccess("Meridian async writes")
        try await cluster.waitCaughtUp(origin: primary, entries: UInt64(count))
        for replica in links {
            let (samples, distribution) = try await cluster.applyLagDistribution(at: replica, from: primary)
            report.add(PeerRow(table: "lag", system: "Meridian async", place: "\(primary)->\(replica)", samples: samples, distribution: distribution,
                               boundMs: rtt(primary, replica) / 2, floorMs: floor(primary, replica) / 2))
        }

        if let postgres = peers.postgres {
            try await Self.setSynchronousStandbys(postgres, "", expect: "async")
            for (replica, lag) in try await postgresLag(postgres, count: count) {
                report.add(PeerRow(table: "lag", system: "PostgreSQL async standby", place: "\(primary)->\(replica)", histogram: lag,
                                   boundMs: rtt(primary, replica) / 2, floorMs: floor(primary, replica) / 2))
            }
        }
        if let redis = peers.redis {
            for (replica, lag) in try await redisLag(redis, count: count) {
                report.add(PeerRow(table: "lag", system: "Redis replica", place: "\(primary)->\(replica)", histogram: lag,
                                   boundMs: rtt(primary, replica) / 2, floorMs: floor(primary, replica) / 2))
            }
        }
        report.printLatencyTable("lag", title: """
            3. ASYNC REPLICATION LAG (ms; bound: the link's one-way delay; \(Int(options.rate)) writes/s for \(Int(options.seconds)) s from us-east)
               Meridian: apply at the replica minus the write's HLC time at the origin (1 ms resolution); PostgreSQL: a standby \
            polled every ~1 ms for new rows, lag = poll time minus the row's clock_timestamp() at insert (so up to ~1 ms high); \
            Redis: keyspace notification at the replica minus the send time of the SET
            """, boundName: "1WAY ms")
    }

    /// pgbench inserts rows stamped with clock_timestamp() at the rate on the primary; a thread per standby polls for
    /// new rows and takes each row's lag as the poll's clock_timestamp() minus the row's.
    func postgresLag(_ postgres: PeerTargets.Postgres, count: Int) async throws -> [(RegionName, Histogram<UInt64>)] {
        guard let primary = postgres.via[postgres.primaryRegion].flatMap(Endpoint.init(parsing:)) else { return [] }
        let start = try await Self.lagHighWater(primary)
        let shared = LagShared(count: 0)
        var observers: [(RegionName, Task<Histogram<UInt64>, any Error>)] = []
        let deadline = Date().addingTimeInterval(options.seconds + 60)
        for (name, address) in postgres.standbys.sorted(by: { $0.key < $1.key }) {
            guard let endpoint = Endpoint(parsing: address) else { continue }
            let region = RegionName(validated: name)
            observers.append((region, Task {
                try await onThread {
                    let connection = try PostgresConnection(host: endpoint.host, port: endpoint.port)
                    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                    var seen = Set<Int>()
                    var contiguous = start
                    while Date() < deadline {
                        let total = shared.expected.load(ordering: .acquiring)
                        if total >= 0 && seen.count >= total { return histogram }
                        let rows = try connection.query(
                            "SELECT id, (extract(epoch FROM clock_timestamp() - t) * 1000000)::bigint FROM lag WHERE id > \(contiguous) ORDER BY id")
                        for row in rows {
                            guard row.count == 2, let id = Int(row[0] ?? ""), let micros = Int64(row[1] ?? ""), seen.insert(id).inserted else { continue }
                            _ = histogram.record(UInt64(max(1, micros)))
                        }
                        while seen.contains(contiguous + 1) { contiguous += 1 }
                        usleep(1000)
                    }
                    throw CLIFailure("the \(region) standby showed \(seen.count) of \(max(0, shared.expected.load(ordering: .acquiring))) rows before the deadline")
                }
            }))
        }
        do {
            try await ToolScratch.with { scratch in
                let script = try scratch.write("INSERT INTO lag (t) VALUES (clock_timestamp());", to: "lag.sql")
                // Open loop at the rate (-R), as many connections as Meridian's writer uses, for the same seconds.
                _ = try await scratch.run(postgres.pgbench, [
                    "-n", "-h", primary.host, "-p", String(primary.port), "-U", "postgres", "-c", "16", "-j", "2", "-R", String(Int(options.rate)),
                    "-T", String(Int(options.seconds)), "-f", script, "postgres",
                ], timeoutSeconds: options.seconds + 60)
            }
        } catch {
            for (_, observer) in observers { observer.cancel() }
            throw error
        }
        let end = try await Self.lagHighWater(primary)
        shared.expected.store(end - start, ordering: .releasing)
        var out: [(RegionName, Histogram<UInt64>)] = []
        for (region, observer) in observers { out.append((region, try await observer.value)) }
        return out
    }

    /// The newest row id of the lag table on the primary.
    static func lagHighWater(_ primary: Endpoint) async throws -> Int {
        try await onThread {
            Int(try PostgresConnection(host: primary.host, port: primary.port).scalar("SELECT coalesce(max(id), 0) FROM lag") ?? "") ?? 0
        }
    }

    /// One connection SETs keys named by their sequence number at the rate on the master; a thread per replica
    /// subscribes to the replica's keyspace notifications and takes each key's lag from the SET's send time.
    func redisLag(_ redis: PeerTargets.Redis, count: Int) async throws -> [(RegionName, Histogram<UInt64>)] {
        guard let master = Endpoint(parsing: redis.primary) else { return [] }
        let run = UUID().uuidString.prefix(8)
        let shared = LagShared(count: count)
        var observers: [(RegionName, Task<Histogram<UInt64>, any Error>)] = []
        for (name, address) in redis.replicas.sorted(by: { $0.key < $1.key }) {
            guard let endpoint = Endpoint(parsing: address) else { continue }
            let region = RegionName(validated: name)
            observers.append((region, Task {
                try await onThread {
                    let connection = try RESPConnection(host: endpoint.host, port: endpoint.port, timeoutSeconds: 30)
                    try connection.send(["PSUBSCRIBE", "__keyspace@0__:lag:\(run):*"])
                    _ = try connection.receive()
                    shared.subscribed.add(1, ordering: .releasing)
                    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                    var seen = Set<Int>()
                    while seen.count < count {
                        let message = try connection.receive()
                        let now = DispatchTime.now().uptimeNanoseconds
                        guard case .array(let parts?) = message, parts.count == 4, let channel = parts[2].text,
                              let index = channel.split(separator: ":").last.flatMap({ Int($0) }), (0..<count).contains(index),
                              seen.insert(index).inserted else { continue }
                        let sentAt = shared.sent.withLock { $0[index] }
                        guard sentAt > 0 else { continue }
                        _ = histogram.record(max(1, (now &- sentAt) / 1000))
                    }
                    return histogram
                }
            }))
        }
        let observersCount = observers.count
        let rate = options.rate
        try await onThread {
            let deadline = Date().addingTimeInterval(30)
            while shared.subscribed.load(ordering: .acquiring) < observersCount {
                guard Date() < deadline else { throw CLIFailure("the Redis replicas' subscriptions did not start") }
                usleep(1000)
            }
            let connection = try RESPConnection(host: master.host, port: master.port)
            let started = DispatchTime.now().uptimeNanoseconds
            for index in 0..<count {
                let due = started + UInt64(Double(index) / rate * 1e9)
                let now = DispatchTime.now().uptimeNanoseconds
                if due > now { usleep(UInt32((due - now) / 1000)) }
                let sendTime = DispatchTime.now().uptimeNanoseconds
                shared.sent.withLock { $0[index] = sendTime }
                try connection.call(["SET", "lag:\(run):\(index)", String(repeating: "a", count: 100)])
            }
        }
        var out: [(RegionName, Histogram<UInt64>)] = []
        for (region, observer) in observers { out.append((region, try await observer.value)) }
        return out
    }

    // MARK: Throughput

    static func throughputTable(options: PeersBenchmark, peers: PeerTargets, report: inout PeerReport) async throws {
        let connections = options.connections, seconds = options.throughputSeconds, keys = 10_000
        func add(_ system: String, _ operation: String, _ result: LoadResult) {
            report.add(PeerRow(throughput: system, operation: operation, opsPerSecond: result.opsPerSecond, p50Ms: result.p50Ms, p99Ms: result.p99Ms,
                               samples: result.requests))
        }
        // Meridian and etcd are driven by wrk, a C load generator like redis-benchmark, so no system's figure
        // carries a heavier client than another's on the shared cores. Keys are preloaded before any read.
        // Meridian: one region of its own, durable (group-committed fsync) PUT and local GET over HTTP/1.1.
        let node = try await SingleNode.start(keyspace: "bench", executable: options.meridian)
        do {
            let base = "http://\(node.endpoint.host):\(node.endpoint.port)"
            add("Meridian (fsync per group commit)", "write", try await wrk(base, connections: connections, seconds: seconds, keys: keys, script: """
                request = function()
                  n = (n or math.random(0, \(keys - 1))) + 1
                  return wrk.format("PUT", "/v1/kv/bench/k" .. (n % \(keys)), nil, string.rep("x", 100))
                end
                """))
            add("Meridian (fsync per group commit)", "read", try await wrk(base, connections: connections, seconds: seconds, keys: keys, script: """
                request = function()
                  n = (n or math.random(0, \(keys - 1))) + 7919
                  return wrk.format("GET", "/v1/kv/bench/k" .. (n % \(keys)))
                end
                """))
        } catch {
            await node.stop()
            throw error
        }
        await node.stop()

        // etcd: the single member, through its HTTP/JSON gateway; reads are serializable (served locally, like Meridian's).
        if let etcd = peers.etcd, let single = Endpoint(parsing: etcd.single) {
            let keyList = (0..<keys).map { "\"\(Data("k\($0)".utf8).base64EncodedString())\"" }.joined(separator: ",")
            let base = "http://\(single.host):\(single.port)"
            let value = Data(String(repeating: "x", count: 100).utf8).base64EncodedString()
            add("etcd (fsync per batch, JSON gateway)", "write", try await wrk(base, connections: connections, seconds: seconds, keys: keys, script: """
                keys = {\(keyList)}
                request = function()
                  n = (n or math.random(0, \(keys - 1))) + 1
                  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, '{"key":"' .. keys[(n % \(keys)) + 1] .. '","value":"\(value)"}')
                end
                """))
            add("etcd (fsync per batch, JSON gateway)", "read", try await wrk(base, connections: connections, seconds: seconds, keys: keys, script: """
                keys = {\(keyList)}
                request = function()
                  n = (n or math.random(0, \(keys - 1))) + 7919
                  return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"}, '{"key":"' .. keys[(n % \(keys)) + 1] .. '","serializable":true}')
                end
                """))
        }

        // Redis: the standalone server with redis-benchmark, as it ships (no persistence), then with every write
        // in the append-only file, fsynced before the reply (appendfsync always).
        if let redis = peers.redis, let single = Endpoint(parsing: redis.single) {
            let requests = max(10_000, Int(seconds * 50_000))
            for (operation, test) in [("write", "set"), ("read", "get")] {
                add("Redis", operation, try await redisBenchmark(single, test: test, requests: requests, connections: connections))
            }
            try await onThread {
                let connection = try RESPConnection(host: single.host, port: single.port)
                try connection.call(["CONFIG", "SET", "appendonly", "yes"])
                try connection.call(["CONFIG", "SET", "appendfsync", "always"])
                let deadline = Date().addingTimeInterval(30)
                while Date() < deadline, try connection.call(["INFO", "persistence"]).text?.contains("aof_rewrite_in_progress:1") ?? false { usleep(50_000) }
            }
            add("Redis (appendfsync always)", "write", try await redisBenchmark(single, test: "set", requests: max(5_000, Int(seconds * 5_000)), connections: connections))
        }

        say("\n4. ONE-NODE THROUGHPUT (\(connections) connections, closed loop, 100-byte values, \(keys) keys; wrk for Meridian and etcd, redis-benchmark for Redis, sharing the 2 cores)")
        say("SYSTEM                                   OPERATION   OPS/s     p50 ms   p99 ms   MERIDIAN/THIS")
        let rows = report.rows.filter { $0.table == "throughput" }
        for row in rows {
            let meridian = rows.first { $0.place == row.place && $0.system.hasPrefix("Meridian") }?.opsPerSecond ?? 0
            say(row.system.padding(toLength: 41, withPad: " ", startingAt: 0) + row.place.padding(toLength: 10, withPad: " ", startingAt: 0)
                + String(format: "%9.0f  %8.2f %8.2f   %8.2fx", row.opsPerSecond ?? 0, row.p50Ms, row.p99Ms, meridian / max(row.opsPerSecond ?? 1, 1)))
        }
    }

    /// Preloads `keys` keys when the script writes nothing (reads need them), then runs wrk with the Lua `script`
    /// for `seconds` and reads its request rate and latency percentiles. Non-2xx answers fail the phase.
    static func wrk(_ base: String, connections: Int, seconds: Double, keys: Int, script: String) async throws -> LoadResult {
        if !script.contains("\"PUT\"") && !script.contains("/v3/kv/put") {
            // Reads follow the write phase, which covers the keys only by chance: write each once.
            let put = script.contains("/v3/") ? "/v3/kv/put" : nil
            guard let endpoint = Endpoint(parsing: base.replacingOccurrences(of: "http://", with: "")) else { throw CLIFailure("bad target \(base)") }
            let pool = try await ConnectionPool.open(endpoint, count: 8)
            let preload = try await pool.run(seconds: 120, requestsMax: keys) { connection, index in
                if let put {
                    try await connection.request("POST", put, headers: [("Content-Type", "application/json")],
                                                 body: Array(etcdPut(key: "k\(index)", value: String(repeating: "x", count: 100)).utf8))
                } else {
                    try await connection.request("PUT", "/v1/kv/bench/k\(index)", body: Array(repeating: 0x78, count: 100))
                }
            }
            await pool.close()
            try preload.requireSuccess("preload of \(keys) keys")
        }
        let text = try await ToolScratch.with { scratch in
            try await scratch.run("/usr/bin/wrk", ["-t1", "-c\(connections)", "-d\(Int(seconds))s", "--latency", "-s", try scratch.write(script, to: "script.lua"), base],
                                  timeoutSeconds: seconds + 60)
        }
        if let line = text.split(separator: "\n").first(where: { $0.contains("Non-2xx") }) { throw CLIFailure("wrk against \(base): \(line)") }
        func ms(_ percentile: String) -> Double? {
            guard let line = text.split(separator: "\n").first(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix(percentile + " ") }),
                  let figure = line.split(separator: " ").last else { return nil }
            let units: [(String, Double)] = [("us", 0.001), ("ms", 1), ("s", 1000)]
            for (unit, scale) in units where figure.hasSuffix(unit) {
                return Double(figure.dropLast(unit.count)).map { $0 * scale }
            }
            return nil
        }
        guard let rateLine = text.split(separator: "\n").first(where: { $0.hasPrefix("Requests/sec:") }),
              let rate = Double(rateLine.split(separator: " ").last ?? ""), let p50 = ms("50%"), let p99 = ms("99%") else {
            throw CLIFailure("wrk printed no figures: \(text.prefix(400))")
        }
        return LoadResult(requests: Int(rate * seconds), opsPerSecond: rate, p50Ms: p50, p99Ms: p99)
    }

    /// Runs redis-benchmark for one test and reads its CSV line: rps, then latency percentiles (ms).
    /// What a C load generator (redis-benchmark or wrk) reported.
    struct LoadResult {
        let requests: Int
        let opsPerSecond: Double
        let p50Ms: Double
        let p99Ms: Double
    }

    static func redisBenchmark(_ endpoint: Endpoint, test: String, requests: Int, connections: Int) async throws -> LoadResult {
        let text = try await ToolScratch.with { scratch in
            try await scratch.run("/usr/bin/redis-benchmark", [
                "-h", endpoint.host, "-p", String(endpoint.port), "-c", String(connections), "-n", String(requests), "-d", "100",
                "-r", "10000", "-t", test, "--csv",
            ], timeoutSeconds: 600)
        }
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        guard let line = text.split(separator: "\n").first(where: { $0.uppercased().hasPrefix("\"\(test.uppercased())") }) else {
            throw CLIFailure("redis-benchmark -t \(test) printed no result: \(text.prefix(300))")
        }
        let fields = line.split(separator: ",").map { Double($0.trimmingCharacters(in: CharacterSet(charactersIn: "\""))) ?? 0 }
        guard fields.count >= 7, fields[1] > 0 else { throw CLIFailure("redis-benchmark printed an unexpected line: \(line)") }
        return LoadResult(requests: requests, opsPerSecond: fields[1], p50Ms: fields[4], p99Ms: fields[6])
    }
}

/// A scratch directory for runs of an external tool (pgbench, wrk, redis-benchmark), removed afterwards.
struct ToolScratch {
    let directory: String

    static func with<T>(_ body: (ToolScratch) async throws -> T) async throws -> T {
        let scratch = ToolScratch(directory: FileManager.default.temporaryDirectory.appendingPathComponent("meridian-tool-\(UUID().uuidString)").path)
        try FileManager.default.createDirectory(atPath: scratch.directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch.directory) }
        return try await body(scratch)
    }

    func path(_ file: String) -> String { (directory as NSString).appendingPathComponent(file) }

    /// Writes `text` to `file` here and returns its path.
    func write(_ text: String, to file: String) throws -> String {
        try text.write(toFile: path(file), atomically: true, encoding: .utf8)
        return path(file)
    }

    /// Runs a tool to completion within `timeoutSeconds` and returns what it printed.
    /// - Throws: With the end of its output when it fails or overruns (it is stopped then).
    func run(_ executable: String, _ arguments: [String], timeoutSeconds: Double) async throws -> String {
        let output = path("\((executable as NSString).lastPathComponent).out")
        let process = try LocalProcesses.start(executable, arguments, logPath: output)
        let exited = await LocalProcesses.waitExited(process, timeoutSeconds: timeoutSeconds)
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        guard exited, process.terminationStatus == 0 else {
            await LocalProcesses.stop(process)
            throw CLIFailure("\((executable as NSString).lastPathComponent) \(exited ? "failed" : "ran past \(Int(timeoutSeconds)) s"): \(text.suffix(500))")
        }
        return text
    }
}

/// What a lag phase's writer and observer threads share.
final class LagShared: Sendable {
    /// How many rows the observers wait for; -1 until the writer is done.
    let expected = Atomic<Int>(-1)
    /// Observers whose subscription is in place.
    let subscribed = Atomic<Int>(0)
    /// Each write's send time (monotonic ns), by sequence number.
    let sent: Mutex<[UInt64]>

    init(count: Int) { sent = Mutex(Array(repeating: 0, count: count)) }
}

/// Runs blocking work on a thread of its own, off NIO's event loops (which run this program's tasks).
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}
