// A region's database made highly available the way operators do it: PostgreSQL under Patroni in synchronous mode
// (Debian's packages, etcd as its configuration store). The primary is killed while the store writes; Patroni promotes
// the synchronous standby, and on it every acknowledged write is there, the log is dense, and the store knows it runs
// on another database, so the region catches up from its peers before it numbers another write.
import Foundation
import Logging
import MeridianCore
import MeridianHarness
import MeridianPostgres
import MeridianStorage
import PostgresNIO
import Synchronization
import Testing

/// The tests that run whole PostgreSQL clusters (copied, promoted, under Patroni): on two cores beside the rest of
/// the run they starve the shared test server, so CI runs them in a step of their own (`MERIDIAN_FAILOVER_TESTS=1`).
let failoverTestsEnabled = ProcessInfo.processInfo.environment["MERIDIAN_FAILOVER_TESTS"] != nil

@Suite struct PatroniTests {
    /// What the writers had acknowledged.
    final class Acknowledged: Sendable {
        let entries = Mutex<[ReplicationEntry]>([])
    }

    let region = RegionName(validated: "us-east")
    let keyspace = try! KeyspaceName("ks")

    func context() -> StoreContext {
        StoreContext(region: region, limits: Limits(), conflictRules: [:], physicalClockMs: { UInt64(Date().timeIntervalSince1970 * 1_000) }, observer: nil)
    }

    static func configuration(_ port: Int, _ database: String) -> PostgresClient.Configuration {
        PostgresClient.Configuration(host: "127.0.0.1", port: port, username: "postgres", password: nil, database: database, tls: .disable)
    }

    @Test(.timeLimit(.minutes(5)), .enabled(if: failoverTestsEnabled, "set MERIDIAN_FAILOVER_TESTS=1 (.ci/run runs it in a step of its own)"))
    func aSynchronousFailoverUnderWritesLosesNoAcknowledgedWriteAndTheStoreCatchesUpBeforeNumberingOn() async throws {
        let cluster = try await PatroniCluster()
        do {
            try await run(cluster)
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    /// Opens the store on `port` once that database takes writes (retrying until `deadline`).
    private func openOnceWritable(_ port: Int, until deadline: ContinuousClock.Instant) async throws -> PostgresStore {
        while true {
            let failure: MeridianError
            do {
                return try await PostgresStore.open(Self.configuration(port, "meridian"), context: context(), logger: SharedPostgres.logger)
            } catch {
                failure = error
            }
            guard failure.code == .storageReadOnly, ContinuousClock.now < deadline else { throw failure }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    private func run(_ cluster: PatroniCluster) async throws {
        let logger = SharedPostgres.logger
        let primary = try #require(await cluster.leader())
        let setup = PostgresClient(configuration: Self.configuration(primary.port, "postgres"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await setup.run() }
            defer { group.cancelAll() }
            try await setup.query("CREATE DATABASE meridian", logger: logger)
        }
        let store = try await PostgresStore.open(Self.configuration(primary.port, "meridian"), context: context(), requestTimeout: .seconds(3), logger: logger)
        // Four writers, each until its first failure (the primary gone) or 60 s.
        let acknowledged = Acknowledged()
        let keyspace = keyspace
        let writers = Task {
            await withTaskGroup(of: Void.self) { group in
                for writer in 0..<4 {
                    group.addTask {
                        let deadline = ContinuousClock.now + .seconds(60)
                        for index in 0..<100_000 where ContinuousClock.now < deadline {
                            let request = WriteRequest(keyspace: keyspace, key: try! Key("w\(writer)-\(index)"), operation: .put, contentType: "text/plain",
                                                       value: Array("v\(writer)-\(index)".utf8))
                            guard case .committed(let entry)? = try? await store.write(request) else { return }
                            acknowledged.entries.withLock { $0.append(entry) }
                        }
                    }
                }
            }
        }
        let started = ContinuousClock.now
        while acknowledged.entries.withLock({ $0.count }) < 300, ContinuousClock.now < started + .seconds(60) { try await Task.sleep(for: .milliseconds(20)) }
        await cluster.crash(primary)
        await writers.value
        store.close()
        let acked = acknowledged.entries.withLock { $0 }
        #expect(acked.count >= 300, "only \(acked.count) writes were acknowledged before the crash")

        // Patroni promotes the synchronous standby once the leader's lock expires.
        let deadline = ContinuousClock.now + .seconds(Double(cluster.ttlSeconds) * 6)
        var successor: PatroniCluster.Member?
        while successor == nil, ContinuousClock.now < deadline {
            if let leader = await cluster.leader(), leader.name != primary.name { successor = leader } else { try await Task.sleep(for: .milliseconds(250)) }
        }
        let promoted = try #require(successor, "Patroni promoted no standby")
        // Patroni names it primary as it promotes it: it may take writes a moment later (the node retries as well).
        let moved = try await openOnceWritable(promoted.port, until: deadline)
        defer { moved.close() }

        // Every acknowledged write is on the new primary, under its number; the log has no gap.
        for entry in acked {
            let stored = try await moved.get(keyspace: keyspace, key: entry.key)?.value
            let found = stored.map { String(decoding: $0, as: UTF8.self) } ?? "missing"
            #expect(stored == entry.value, "acknowledged \(entry.key.rawValue) (#\(entry.sequence)) is \(found)")
        }
        let highest = try #require(acked.map(\.sequence).max())
        let log = try await moved.logEntries(origin: region, after: 0, limit: Int(highest) + 100)
        #expect(log.map(\.sequence) == Array(stride(from: UInt64(1), through: UInt64(log.count), by: 1)), "the log has a gap")
        let numbered = Dictionary(log.map { ($0.sequence, $0.key) }, uniquingKeysWith: { first, _ in first })
        #expect(acked.allSatisfy { numbered[$0.sequence] == $0.key }, "an acknowledged write's number holds another write")

        // Another database than the store last ran on: it catches up before numbering on, and then numbers above
        // everything the peers acknowledged.
        #expect(try await moved.restorePending() != nil, "the store did not notice the failover")
        #expect(await errorCode { _ = try await moved.write(WriteRequest(keyspace: keyspace, key: try Key("after"), operation: .put, contentType: "text/plain", value: [1])) }
                == .restorePending)
        let peersHold = UInt64(log.count)
        try await moved.finishRestore(logEnd: peersHold)
        guard case .committed(let next) = try await moved.write(WriteRequest(keyspace: keyspace, key: try Key("after"), operation: .put, contentType: "text/plain", value: [1])) else {
            throw MeridianError(.internalError, "not committed")
        }
        #expect(next.sequence == peersHold + 1)
    }
}
