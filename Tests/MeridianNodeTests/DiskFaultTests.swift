// Proves what a region does when its data directory's disk fills up or turns read-only, on a real file
// system: a small ext4 on a loop device, filled with a file, then turned read-only by the kernel (as ext4's
// errors=remount-ro does after a disk error) under the running node. Writes fail with 507 storage_full or
// 503 storage_read_only (nothing written, the status says which), reads go on serving everything stored
// before, writes resume by themselves once space is freed, and afterwards the file system checks clean and
// the database passes SQLite's integrity check with every acknowledged write in it.
//
// The same for a region on PostgreSQL whose database's disk fills up: a tablespace on such a small disk.
//
// Loop devices need root (CAP_SYS_ADMIN), which CI has; without it the test fails saying so.
import Foundation
import GRDB
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MeridianCore
import MeridianHarness
import MeridianNode
import MeridianPostgres
import MeridianStorage
import MeridianStore
import NIOCore
import PostgresNIO
import Synchronization
import Testing

/// A small ext4 file system on a loop device, mounted with `errors=remount-ro` on a fresh directory: it can be
/// filled, and the kernel can be made to turn it read-only under open files as it does after a disk error.
struct SmallDisk {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-disk-\(UUID().uuidString)").path
    var image: String { path + ".img" }

    static func run(_ arguments: [String]) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { return (-1, "\(error)") }
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
    }

    func create(megabytes: Int) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let made = Self.run(["sh", "-c", "truncate -s \(megabytes)M '\(image)' && mkfs.ext4 -q -F '\(image)'"])
        try #require(made.status == 0, "making an ext4 image needs e2fsprogs: \(made.output)")
        try mount()
    }

    func mount() throws {
        let mounted = Self.run(["mount", "-o", "loop,errors=remount-ro", image, path])
        try #require(mounted.status == 0, "mounting a loop device needs root (CAP_SYS_ADMIN): \(mounted.output)")
    }

    /// Reports a file system error to ext4, which remounts it read-only at once, open files and all.
    func breakToReadOnly() throws {
        let device = Self.run(["sh", "-c", "basename \"$(losetup -j '\(image)' | cut -d: -f1)\""]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(!device.isEmpty, "no loop device backs \(image)")
        try Data("meridian disk-fault test".utf8).write(to: URL(fileURLWithPath: "/sys/fs/ext4/\(device)/trigger_fs_error"))
    }

    /// Writes zeros into `name` until the disk refuses (bounded by `maxBytes`).
    func fill(_ name: String, maxBytes: Int) -> Int {
        let file = (path as NSString).appendingPathComponent(name)
        guard FileManager.default.createFile(atPath: file, contents: nil), let handle = FileHandle(forWritingAtPath: file) else { return 0 }
        defer { try? handle.close() }
        let chunk = Data(count: 16 * 1024)
        var written = 0
        while written < maxBytes {
            do { try handle.write(contentsOf: chunk) } catch { break }
            written += chunk.count
        }
        return written
    }

    func unmount() {
        _ = Self.run(["umount", path])
    }

    func remove() {
        _ = Self.run(["umount", "-l", path])
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.removeItem(atPath: image)
    }
}

@Suite(.serialized) struct DiskFaultTests {
    static let yaml = """
        cluster: disk
        regions:
          - { name: us-east, client: 127.0.0.1:17301, peer: 127.0.0.1:17401 }
        keyspaces:
          - { name: profiles, topology: multi-leader, conflict: lww, ack: async }

        """

    static func put(_ client: some TestClientProtocol, _ key: String, _ value: String) async throws -> (status: Int, code: String?) {
        try await client.execute(uri: "/v1/kv/profiles/\(key)", method: .put, body: ByteBuffer(string: value)) { response in
            let code = ((try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any]).flatMap { ($0["error"] as? [String: Any])?["code"] as? String }
            return (Int(response.status.code), code)
        }
    }

    static func get(_ client: some TestClientProtocol, _ key: String) async throws -> String? {
        try await client.execute(uri: "/v1/kv/profiles/\(key)", method: .get) { response in
            response.status == .ok ? String(buffer: response.body) : nil
        }
    }

    static func storage(_ client: some TestClientProtocol) async throws -> [String: Any] {
        try await client.execute(uri: "/v1/status", method: .get) { response in
            ((try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any])?["storage"] as? [String: Any] ?? [:]
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func aFullOrReadOnlyDiskRefusesWritesClearlyWhileReadsGoOnAndNothingIsDamaged() async throws {
        let disk = SmallDisk()
        defer { disk.remove() }
        try disk.create(megabytes: 16)
        let directory = (disk.path as NSString).appendingPathComponent("us-east")
        let config = try ClusterConfig.parse(yaml: Self.yaml, file: "disk.yaml")
        let node = try await RegionNode(configuration: NodeConfiguration(cluster: config, region: RegionName(validated: "us-east")).withTestRootKey(), store: RegionStore.factory(directory: directory))
        let acknowledged = Mutex<[String: String]>([:])
        let app = Application(router: node.router())
        try await app.test(.router) { client in
            for index in 0..<20 {
                let value = "before-\(index)"
                #expect(try await Self.put(client, "k\(index)", value).status == 200)
                acknowledged.withLock { $0["k\(index)"] = value }
            }

            // The disk fills up: writes fail as storage_full once SQLite needs a page it cannot get.
            let filled = disk.fill("filler", maxBytes: 16 << 20)
            #expect(filled > 1 << 20, "the filler took \(filled) bytes")
            var refused = 0
            for index in 0..<400 where refused < 5 {
                let value = String(repeating: "f", count: 4000) + "\(index)"
                let result = try await Self.put(client, "full-\(index)", value)
                if result.status == 200 {
                    acknowledged.withLock { $0["full-\(index)"] = value }
                } else {
                    #expect(result.status == 507 && result.code == "storage_full", "\(result)")
                    refused += 1
                }
            }
            #expect(refused == 5, "a full disk refused \(refused) writes of 400")
            let full = try await Self.storage(client)
            #expect(full["state"] as? String == "full", "\(full)")
            #expect((full["reason"] as? String)?.contains("Free space") == true, "\(full)")
            // Reads go on: everything acknowledged is served.
            for (key, value) in acknowledged.withLock({ $0 }) { #expect(try await Self.get(client, key) == value, "\(key)") }

            // Space comes back: writes resume by themselves.
            try FileManager.default.removeItem(atPath: (disk.path as NSString).appendingPathComponent("filler"))
            #expect(try await Self.put(client, "after-full", "ok").status == 200)
            acknowledged.withLock { $0["after-full"] = "ok" }
            #expect(try await Self.storage(client)["state"] as? String == "ok")

            // The kernel turns the file system read-only under the running node.
            try disk.breakToReadOnly()
            let readOnly = try await Self.put(client, "while-ro", "no")
            #expect(readOnly.status == 503 && readOnly.code == "storage_read_only", "\(readOnly)")
            let state = try await Self.storage(client)
            #expect(state["state"] as? String == "read_only", "\(state)")
            for (key, value) in acknowledged.withLock({ $0 }) { #expect(try await Self.get(client, key) == value, "\(key)") }
            #expect(try await Self.get(client, "while-ro") == nil, "a refused write wrote nothing")
        }
        node.store.close()
        // The operator's repair: unmount, check the file system, mount it again.
        disk.unmount()
        let checked = SmallDisk.run(["e2fsck", "-fy", disk.image])
        #expect(checked.status <= 1, "e2fsck: \(checked.output)")
        try disk.mount()

        // Nothing stored was damaged: SQLite's own check passes, and every acknowledged write is there.
        let database = try DatabaseQueue(path: (directory as NSString).appendingPathComponent("us-east.sqlite"))
        #expect(try await database.read { try String.fetchOne($0, sql: "PRAGMA integrity_check") } == "ok")
        try database.close()
        let reopened = try await RegionNode(configuration: NodeConfiguration(cluster: config, region: RegionName(validated: "us-east")).withTestRootKey(), store: RegionStore.factory(directory: directory))
        defer { reopened.store.close() }
        for (key, value) in acknowledged.withLock({ $0 }) {
            let stored = try await reopened.store.get(keyspace: KeyspaceName("profiles"), key: Key(key))
            #expect(stored.map { String(decoding: $0.value, as: UTF8.self) } == value, "\(key) after reopening")
        }
    }

    /// The region's PostgreSQL runs out of disk (its database in a tablespace on a small ext4, the server's own
    /// directory and WAL elsewhere): writes fail with `storage_full` saying nothing was written, reads go on, and
    /// once space is freed writes resume by themselves; every acknowledged write is there once, the log dense.
    @Test(.timeLimit(.minutes(3)))
    func aDatabaseOutOfDiskRefusesWritesAsFullAndResumesWhenSpaceIsFreed() async throws {
        let disk = SmallDisk()
        defer { disk.remove() }
        try disk.create(megabytes: 48)
        let location = (disk.path as NSString).appendingPathComponent("tablespace")
        try FileManager.default.createDirectory(atPath: location, withIntermediateDirectories: true)
        if getuid() == 0 { #expect(SmallDisk.run(["chown", "postgres:postgres", location]).status == 0) }
        // A server of its own: the shared one must never hold a tablespace on a disk the test takes away.
        let server = try await PostgresServer()
        let logger = Logger(label: "meridian.disk.test")
        let configuration = { (database: String) in
            PostgresClient.Configuration(host: "127.0.0.1", port: server.port, username: server.user, password: nil, database: database, tls: .disable)
        }
        let setup = PostgresClient(configuration: configuration("postgres"), backgroundLogger: logger)
        let running = Task { await setup.run() }
        let store: PostgresStore
        do {
            try await setup.query("CREATE TABLESPACE small LOCATION \(unescaped: "'" + location + "'")", logger: logger)
            try await setup.query("CREATE DATABASE region TABLESPACE small", logger: logger)
            running.cancel()
            let region = RegionName(validated: "us-east")
            store = try await PostgresStore.open(configuration("region"), context: StoreContext(region: region, limits: Limits(), conflictRules: [:],
                                                 physicalClockMs: { UInt64(Date().timeIntervalSince1970 * 1_000) }, observer: nil),
                                                 requestTimeout: .seconds(60), logger: logger)
        } catch {
            running.cancel()
            await server.stop()
            throw error
        }
        // The server stops before the disk goes (a tablespace unmounted under a running server stays busy), whatever
        // fails on the way.
        do {
            let keyspace = try KeyspaceName("profiles")
            func write(_ key: String, _ value: String) async -> Result<UInt64, MeridianError> {
                do {
                    let request = WriteRequest(keyspace: keyspace, key: try! Key(key), operation: .put, contentType: "text/plain", value: Array(value.utf8))
                    guard case .committed(let entry) = try await store.write(request) else { return .failure(MeridianError(.internalError, "not committed")) }
                    return .success(entry.sequence)
                } catch {
                    return .failure(error)
                }
            }
            var acknowledged: [String: String] = [:]
            for index in 0..<20 {
                if case .success = await write("k\(index)", "before-\(index)") { acknowledged["k\(index)"] = "before-\(index)" }
            }
            #expect(acknowledged.count == 20)

            // The disk fills up (the filler, written as root, takes the blocks ext4 keeps for root too): writes of values
            // that do not compress fail as storage_full once the tables need a page the disk has not got.
            let filled = disk.fill("filler", maxBytes: 48 << 20)
            #expect(filled > 1 << 20, "the filler took \(filled) bytes")
            var refusals: [MeridianError] = []
            for index in 0..<2_000 where refusals.count < 3 {
                let value = (0..<60).map { _ in UUID().uuidString }.joined()
                switch await write("full-\(index)", value) {
                case .success: acknowledged["full-\(index)"] = value
                case .failure(let error): refusals.append(error)
                }
            }
            #expect(refusals.count == 3 && refusals.allSatisfy { $0.code == .storageFull }, "\(refusals.map(\.code))")
            #expect(refusals.first?.message.contains("out of disk space") == true && refusals.first?.message.contains("nothing was written") == true,
                    "\(refusals.first?.message ?? "")")
            #expect(store.writeFaults.current?.code == .storageFull)
            // Reads go on: everything acknowledged is served.
            for (key, value) in acknowledged {
                #expect(try await store.get(keyspace: keyspace, key: Key(key)).map { String(decoding: $0.value, as: UTF8.self) } == value, "\(key)")
            }

            // Space comes back: writes resume by themselves.
            try FileManager.default.removeItem(atPath: (disk.path as NSString).appendingPathComponent("filler"))
            if case .success = await write("after-full", "ok") { acknowledged["after-full"] = "ok" }
            #expect(acknowledged["after-full"] == "ok", "a write after space was freed failed")
            #expect(store.writeFaults.current?.code == nil)

            // Every acknowledged write once, and no number taken by a refused one.
            let log = try await store.logEntries(origin: RegionName(validated: "us-east"), after: 0, limit: 10_000)
            #expect(log.map(\.sequence) == (0..<UInt64(log.count)).map { $0 + 1 }, "the log has a gap")
            #expect(log.count == acknowledged.count, "\(log.count) entries for \(acknowledged.count) acknowledged writes")
            #expect(Set(log.map(\.key.rawValue)) == Set(acknowledged.keys))
        } catch {
            store.close()
            await server.stop()
            throw error
        }
        store.close()
        await server.stop()
    }
}
