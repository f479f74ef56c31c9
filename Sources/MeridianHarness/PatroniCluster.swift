import Foundation
import MeridianCore

/// A PostgreSQL cluster managed by Patroni (Debian's package), with a one-member etcd (Debian's `etcd-server`) as
/// its configuration store, on loopback ports of its own: what a region's database runs on when it must survive the
/// loss of its primary. Synchronous mode is on: a commit returns once a standby holds it too, so a failover loses no
/// acknowledged commit.
///
/// As root (CI), etcd and Patroni run as the `postgres` user. Each runs under a watchdog shell that kills it when the
/// process that started it exits, so nothing outlives its test run; ``stop()`` stops everything at once and removes
/// the directory.
public final class PatroniCluster: @unchecked Sendable {
    public struct Member: Sendable {
        public let name: String
        /// PostgreSQL's port.
        public let port: Int
        /// Patroni's REST API.
        public let api: Endpoint
    }

    public let directory: String
    public let members: [Member]
    public let user = "postgres"
    /// The lock's time to live in the configuration store: a dead primary is replaced after about this long.
    public let ttlSeconds: Int
    private let asRoot = getuid() == 0
    private var watchdogs: [String: Process] = [:]

    /// Starts etcd and `count` Patroni members (the first bootstraps the cluster, the others clone it), and waits
    /// (bounded) until a leader and a synchronous standby run.
    public init(count: Int = 2, ttlSeconds: Int = 10, timeoutSeconds: Double = 120) async throws {
        for tool in ["/usr/bin/patroni", "/usr/bin/etcd"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw PostgresServerFailure("\(tool) is not installed: apt-get install -y patroni etcd-server python3-etcd")
        }
        let binaries = try PostgresServer.binaries()
        self.ttlSeconds = ttlSeconds
        // In memory when there is room: the members' syncs (bootstrap, clone, promotion) must not stall other tests.
        directory = PostgresServer.scratchBase + "/meridian-patroni-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var members: [Member] = []
        for index in 1...count {
            members.append(Member(name: "pg\(index)", port: try LocalProcesses.freePort(), api: Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort())))
        }
        self.members = members
        let (etcdClient, etcdPeer) = (try LocalProcesses.freePort(), try LocalProcesses.freePort())
        for member in members {
            try Self.configuration(member, scope: "meridian", etcd: etcdClient, binaries: binaries, directory: directory, ttlSeconds: ttlSeconds)
                .write(toFile: "\(directory)/\(member.name).yml", atomically: true, encoding: .utf8)
        }
        if asRoot { try Self.run("/bin/chown", ["-R", "postgres:postgres", directory]) }
        do {
            try start("etcd", ["/usr/bin/etcd", "--name", "e1", "--data-dir", "\(directory)/etcd",
                               "--listen-client-urls", "http://127.0.0.1:\(etcdClient)", "--advertise-client-urls", "http://127.0.0.1:\(etcdClient)",
                               "--listen-peer-urls", "http://127.0.0.1:\(etcdPeer)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(etcdPeer)",
                               "--initial-cluster", "e1=http://127.0.0.1:\(etcdPeer)", "--enable-v2=true"])
            let deadline = Date().addingTimeInterval(timeoutSeconds)
            for (index, member) in members.enumerated() {
                try start(member.name, ["/usr/bin/patroni", "\(directory)/\(member.name).yml"])
                // The first bootstraps alone; the others then clone it.
                if index == 0 {
                    while await leader() == nil {
                        guard Date() < deadline else { throw failure("no leader within \(Int(timeoutSeconds)) s") }
                        try await Task.sleep(for: .milliseconds(250))
                    }
                }
            }
            while await synchronousStandby() == nil {
                guard Date() < deadline else { throw failure("no synchronous standby within \(Int(timeoutSeconds)) s") }
                try await Task.sleep(for: .milliseconds(250))
            }
        } catch {
            await stop()
            throw error
        }
    }

    /// Patroni's configuration of one member: synchronous mode, local connections trusted, PostgreSQL on loopback.
    static func configuration(_ member: Member, scope: String, etcd: Int, binaries: String, directory: String, ttlSeconds: Int) -> String {
        """
        scope: \(scope)
        name: \(member.name)
        log: { level: WARNING }
        restapi: { listen: "\(member.api)", connect_address: "\(member.api)" }
        etcd3: { hosts: "127.0.0.1:\(etcd)" }
        bootstrap:
          dcs:
            ttl: \(ttlSeconds)
            loop_wait: 1
            retry_timeout: \(max(2, ttlSeconds / 3))
            synchronous_mode: true
            postgresql: { use_pg_rewind: false, parameters: { max_connections: 200 } }
          initdb: [ { encoding: UTF8 }, no-sync ]
          pg_hba:
            - host replication postgres 127.0.0.1/32 trust
            - host all all 127.0.0.1/32 trust
            - local all all trust
        postgresql:
          listen: "127.0.0.1:\(member.port)"
          connect_address: "127.0.0.1:\(member.port)"
          data_dir: "\(directory)/\(member.name)"
          bin_dir: "\(binaries)"
          pgpass: "\(directory)/\(member.name).pgpass"
          authentication: { replication: { username: postgres }, superuser: { username: postgres } }
          parameters: { unix_socket_directories: "\(directory)" }
          basebackup: [ { checkpoint: fast }, no-sync ]
        """
    }

    /// The member Patroni runs as the primary now (nil: none).
    public func leader() async -> Member? {
        for member in members where await Self.status(member.api, "/primary") == 200 { return member }
        return nil
    }

    /// A member running as a synchronous standby now (nil: none).
    public func synchronousStandby() async -> Member? {
        for member in members where await Self.status(member.api, "/sync") == 200 { return member }
        return nil
    }

    /// Kills a member's Patroni and its PostgreSQL at once (SIGKILL), as a machine lost would.
    public func crash(_ member: Member) async {
        if let pid = pid(member.name) { kill(pid, SIGKILL) }
        if let text = try? String(contentsOfFile: "\(directory)/\(member.name)/postmaster.pid", encoding: .utf8),
           let line = text.split(separator: "\n").first, let pid = Int32(line) {
            kill(pid, SIGKILL)
        }
        if let watchdog = watchdogs.removeValue(forKey: member.name) { _ = await LocalProcesses.waitExited(watchdog, timeoutSeconds: 10) }
    }

    /// Stops every member and etcd, and removes the directory.
    public func stop() async {
        for name in watchdogs.keys where name != "etcd" {
            if let pid = pid(name) { kill(pid, SIGTERM) }
        }
        for (name, watchdog) in watchdogs where name != "etcd" {
            // Patroni may take its time to leave (it tells the configuration store); then it is killed, not orphaned.
            if !(await LocalProcesses.waitExited(watchdog, timeoutSeconds: 10)) {
                if let pid = pid(name) { kill(pid, SIGKILL) }
                if !(await LocalProcesses.waitExited(watchdog, timeoutSeconds: 5)) { await LocalProcesses.stop(watchdog, graceSeconds: 1) }
            }
        }
        if let etcd = watchdogs["etcd"] {
            if let pid = pid("etcd") { kill(pid, SIGTERM) }
            if !(await LocalProcesses.waitExited(etcd, timeoutSeconds: 10)) {
                if let pid = pid("etcd") { kill(pid, SIGKILL) }
                await LocalProcesses.stop(etcd, graceSeconds: 1)
            }
        }
        watchdogs = [:]
        // A PostgreSQL whose Patroni was killed stops now; the directory goes once none runs.
        for member in members {
            guard let text = try? String(contentsOfFile: "\(directory)/\(member.name)/postmaster.pid", encoding: .utf8),
                  let line = text.split(separator: "\n").first, let pid = Int32(line), kill(pid, 0) == 0 else { continue }
            kill(pid, SIGQUIT)
            for _ in 0..<100 where kill(pid, 0) == 0 { try? await Task.sleep(for: .milliseconds(100)) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts `command` under a watchdog shell that kills it once this process is gone; it logs to NAME.log.
    private func start(_ name: String, _ command: [String]) throws {
        let script = """
            \(command.map(PostgresServer.quoted).joined(separator: " ")) >\(PostgresServer.quoted("\(directory)/\(name).log")) 2>&1 &
            child=$!
            echo $child >\(PostgresServer.quoted("\(directory)/\(name).pid"))
            while [ -d /proc/\(getpid()) ] && kill -0 $child 2>/dev/null; do sleep 0.5; done
            kill -TERM $child 2>/dev/null
            for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do kill -0 $child 2>/dev/null || break; sleep 0.5; done
            kill -KILL $child 2>/dev/null; wait $child
            """
        watchdogs[name] = try PostgresServer.shell(script, asRoot: asRoot, user: user)
    }

    private func failure(_ what: String) -> PostgresServerFailure {
        let logs = (["etcd"] + members.map(\.name)).map { name in
            "\(name): " + String(((try? String(contentsOfFile: "\(directory)/\(name).log", encoding: .utf8)) ?? "").suffix(500))
        }
        return PostgresServerFailure("Patroni: \(what). " + logs.joined(separator: "\n"))
    }

    /// The HTTP status of GET `path` on a Patroni REST API (nil: no answer within 2 s).
    static func status(_ api: Endpoint, _ path: String) async -> Int? {
        guard let connection = try? await HTTPConnection.connect(host: api.host, port: api.port) else { return nil }
        defer { Task { await connection.close() } }
        return try? await connection.request("GET", path).status
    }

    /// The process a watchdog started, from the file it wrote.
    private func pid(_ name: String) -> Int32? {
        (try? String(contentsOfFile: "\(directory)/\(name).pid", encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    private static func run(_ executable: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw PostgresServerFailure("\(executable) \(arguments.joined(separator: " ")) failed") }
    }

}
