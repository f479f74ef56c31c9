import Foundation
import MeridianCore

/// A throwaway PostgreSQL server from Debian's packages, for tests and the demo: a new cluster (`initdb`) in a
/// directory of its own, listening on loopback on a free port, trusting local connections.
///
/// As root (CI), the server runs as the `postgres` user the package creates (PostgreSQL refuses to run as root). A
/// watchdog shell stops the server when the process that started it exits, however it exits, so no server outlives
/// its test run; ``stop()`` stops it at once.
public final class PostgresServer: @unchecked Sendable {
    public let port: Int
    public let directory: String
    public let user = "postgres"
    private let binaries: String
    private let asRoot: Bool
    /// Whether the cluster's directory outlives the server (one given to ``init(directory:durable:timeoutSeconds:)``).
    private let keeps: Bool
    private var watchdog: Process?

    /// The binaries of the newest PostgreSQL installed (`/usr/lib/postgresql/N/bin`).
    public static func binaries() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        guard let newest = versions.compactMap(Int.init).max(), FileManager.default.isExecutableFile(atPath: "\(root)/\(newest)/bin/postgres") else {
            throw PostgresServerFailure("PostgreSQL's server is not installed (no \(root)/N/bin/postgres): apt-get install -y postgresql")
        }
        return "\(root)/\(newest)/bin"
    }

    /// Creates a cluster under a new temporary directory (or, given `directory`, uses the one there, creating it
    /// the first time, and keeps it) and starts it; waits (bounded) until it takes connections. It syncs its commits
    /// (fsync on) as a production server does: the PostgreSQL store refuses one that does not.
    /// - Parameter inMemory: Put a new cluster in memory (``scratchBase``): for a test that copies or promotes whole
    ///   clusters, whose syncs would otherwise stall every other test's commits on the shared disk.
    public init(directory given: String? = nil, inMemory: Bool = false, timeoutSeconds: Double = 60) async throws {
        binaries = try Self.binaries()
        asRoot = getuid() == 0
        keeps = given != nil
        directory = given.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
            ?? (inMemory ? Self.scratchBase : FileManager.default.temporaryDirectory.path) + "/meridian-pg-\(UUID().uuidString)"
        port = try LocalProcesses.freePort()
        let data = directory + "/data"
        let fresh = !FileManager.default.fileExists(atPath: data + "/PG_VERSION")
        do {
            if fresh {
                try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
                let (binaries, asRoot, user, directory, keeps) = (binaries, asRoot, user, directory, keeps)
                try await Self.offPool {
                    if asRoot { try Self.run("/bin/chown", ["-R", "postgres:postgres", directory], binaries: binaries, asRoot: asRoot, user: user) }
                    try Self.run(binaries + "/initdb", ["-D", data, "-A", "trust", "-U", user, "-E", "UTF8"] + (keeps ? [] : ["--no-sync"]),
                                 binaries: binaries, asRoot: asRoot, user: user)
                }
            }
        } catch {
            if !keeps { try? FileManager.default.removeItem(atPath: directory) }
            throw error
        }
        // The server, on loopback and on a socket in its own directory. Room for many clients: a whole test run's stores
        // and nodes share one server, each with a connection pool of its own.
        let server = [binaries + "/postgres", "-D", data, "-p", String(port), "-k", directory, "-c", "listen_addresses=127.0.0.1",
                      "-c", "max_connections=1000"]
        let command = server.map(Self.quoted).joined(separator: " ")
        // A shell that stops it (fast shutdown, then immediate after 10 s) once this process is gone, and then removes
        // its directory.
        let script = """
            \(command) >\(Self.quoted(directory + "/server.log")) 2>&1 &
            server=$!
            while [ -d /proc/\(getpid()) ] && kill -0 $server 2>/dev/null; do sleep 0.5; done
            kill -INT $server 2>/dev/null
            for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do kill -0 $server 2>/dev/null || break; sleep 0.5; done
            kill -QUIT $server 2>/dev/null; wait $server
            \(keeps ? "" : "rm -rf " + Self.quoted(directory))
            """
        let watchdog = try Self.shell(script, asRoot: asRoot, user: user)
        self.watchdog = watchdog
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        // Asked on its own socket: another server on the port would not answer for it.
        while (try? await Self.offPool({ [binaries, directory, port, user, asRoot] in
            try Self.run(binaries + "/pg_isready", ["-h", directory, "-p", String(port), "-U", user, "-t", "1"], binaries: binaries, asRoot: asRoot, user: user)
        })) == nil {
            guard Date() < deadline, watchdog.isRunning else {
                let log = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
                await stop()
                throw PostgresServerFailure("PostgreSQL did not start on port \(port) within \(Int(timeoutSeconds)) s: \(log.suffix(600))")
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// One server for the whole process (a test run), started on first use; its watchdog stops it when the process
    /// exits. Tests take a database of their own on it (``newDatabase()``).
    public static let shared = Task { try await PostgresServer() }

    /// Creates a database of its own for one test.
    public func createDatabase(_ name: String) throws {
        try run(binaries + "/createdb", ["-h", "127.0.0.1", "-p", String(port), "-U", user, name])
    }

    /// Creates a database with a new name, on a thread of its own (the tool blocks while the server copies and
    /// syncs the template; tests running side by side must not lose their threads to it). - Returns: its name.
    public func newDatabase() async throws -> String {
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await Self.offPool { try self.createDatabase(name) }
        return name
    }

    /// Starts `script` in a shell of its own, as `user` when this process runs as root (PostgreSQL and Patroni refuse
    /// to run as root), its output discarded.
    static func shell(_ script: String, asRoot: Bool, user: String) throws -> Process {
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: asRoot ? "/usr/sbin/runuser" : "/bin/sh")
        shell.arguments = asRoot ? ["-u", user, "--", "/bin/sh", "-c", script] : ["-c", script]
        shell.standardInput = FileHandle.nullDevice
        shell.standardOutput = FileHandle.nullDevice
        shell.standardError = FileHandle.nullDevice
        try shell.run()
        return shell
    }

    /// Runs blocking work (a child process to completion) on a dispatch thread, not the concurrency pool's.
    static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try work() }) }
        }
    }

    /// Where clusters that tests copy and promote live: `/dev/shm` when it has room (a few GB), so their syncs (a
    /// base backup's, a standby's start, a promotion's checkpoint) cost no disk time; else the temporary directory.
    public static var scratchBase: String {
        var stats = statvfs()
        if statvfs("/dev/shm", &stats) == 0, UInt64(stats.f_bavail) * UInt64(stats.f_frsize) >= 2 << 30 { return "/dev/shm" }
        return FileManager.default.temporaryDirectory.path
    }

    /// Starts a streaming standby of this server (asynchronous replication, as PostgreSQL's default): a base backup
    /// into a new directory (under ``scratchBase``), then a server on it that follows this one. The caller stops it
    /// and removes its directory.
    public func startStandby(timeoutSeconds: Double = 60) async throws -> PostgresServer {
        let directory = Self.scratchBase + "/meridian-pg-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let (binaries, asRoot, user, port) = (binaries, asRoot, user, port)
        do {
            try await Self.offPool {
                if asRoot { try Self.run("/bin/chown", ["-R", "postgres:postgres", directory], binaries: binaries, asRoot: asRoot, user: user) }
                try Self.run(binaries + "/pg_basebackup", ["-h", "127.0.0.1", "-p", String(port), "-U", user, "-D", directory + "/data", "-R", "-X", "stream", "-c", "fast", "--no-sync"],
                             binaries: binaries, asRoot: asRoot, user: user)
            }
            return try await PostgresServer(directory: directory, timeoutSeconds: timeoutSeconds)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// Stops the server at once, as a crash would (immediate shutdown: no checkpoint, standbys get nothing more).
    public func crash() async {
        if let pid = Self.postmasterPID(directory + "/data") { kill(pid, SIGQUIT) }
        await stop()
    }

    /// Stops the server (fast shutdown: open sessions are ended) and removes its directory.
    public func stop() async {
        if let pid = Self.postmasterPID(directory + "/data") { kill(pid, SIGINT) }
        if let watchdog, !(await LocalProcesses.waitExited(watchdog, timeoutSeconds: 15)) {
            if let pid = Self.postmasterPID(directory + "/data") { kill(pid, SIGQUIT) }
            await LocalProcesses.stop(watchdog, graceSeconds: 5)
        }
        watchdog = nil
        if !keeps { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Starts a throwaway server and gives each region of the cluster file `yaml` a database of its own on it.
    /// - Returns: The server (the caller stops it) and the cluster file with each region's `store` section.
    public static func withRegionDatabases(_ yaml: String) async throws -> (server: PostgresServer, yaml: String) {
        let server = try await PostgresServer()
        do {
            var urls: [RegionName: String] = [:]
            for region in try ClusterConfig.parse(yaml: yaml, file: "cluster").regions {
                let name = "meridian_" + region.name.rawValue.replacingOccurrences(of: "-", with: "_")
                try await offPool { try server.ensureDatabase(name) }
                urls[region.name] = "postgres://\(server.user)@127.0.0.1:\(server.port)/\(name)?sslmode=disable"
            }
            return (server, DemoCluster.withPostgresStores(yaml, urls))
        } catch {
            await server.stop()
            throw error
        }
    }

    /// Creates the database unless it exists.
    public func ensureDatabase(_ name: String) throws {
        do {
            try createDatabase(name)
        } catch let failure as PostgresServerFailure where failure.description.contains("already exists") {
            return
        }
    }

    private static func postmasterPID(_ data: String) -> pid_t? {
        guard let text = try? String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first.flatMap { pid_t($0.trimmingCharacters(in: .whitespaces)) }
    }

    static func quoted(_ word: String) -> String { "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// Runs a PostgreSQL tool to completion (as `postgres` when this process is root).
    private func run(_ executable: String, _ arguments: [String]) throws {
        try Self.run(executable, arguments, binaries: binaries, asRoot: asRoot, user: user)
    }

    private static func run(_ executable: String, _ arguments: [String], binaries: String, asRoot: Bool, user: String) throws {
        let process = Process()
        if asRoot && executable.hasPrefix(binaries) {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
            process.arguments = ["-u", user, "--", executable] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw PostgresServerFailure("\((executable as NSString).lastPathComponent) failed (exit \(process.terminationStatus)): \(text.suffix(600))")
        }
    }
}

public struct PostgresServerFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
