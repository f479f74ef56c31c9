// Proves durability with real processes: a node acknowledges 500 writes, is killed with SIGKILL (no
// chance to flush anything), restarts on the same data directory, and every acknowledged write is
// there with the value and version it was acknowledged with; new writes continue the log.
import Foundation
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct CrashRecoveryTests {
        @Test(.timeLimit(.minutes(3)))
        func acknowledgedWritesSurviveSIGKILL() async throws {
            let scratch = try Scratch()
            defer { scratch.remove() }
            let port = try LocalProcesses.freePort()
            let config = scratch.file("cluster.yaml")
            try (try clusterYAML(regions: ["solo"], ports: [port, try LocalProcesses.freePort()],
                            keyspaces: "  - { name: kv, topology: single-leader, leader: solo, ack: majority }\n"))
                .write(toFile: config, atomically: true, encoding: .utf8)
            let arguments = ["node", "--config", config, "--region", "solo", "--data", scratch.file("data"), "--exit-with-parent", "--log-level", "warning"]

            var node = try LocalProcesses.start(MeridianBinary.path, arguments, logPath: scratch.file("node.log"))
            defer { if node.isRunning { kill(node.processIdentifier, SIGKILL) } }
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: port, process: node, timeoutSeconds: 60))

            // 500 writes over 10 concurrent connections, so group commit batches them.
            let writers = 10, perWriter = 50
            let acknowledged = try await withThrowingTaskGroup(of: [(String, String, String)].self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        let connection = try await HTTPConnection.connect(host: "127.0.0.1", port: port)
                        var acks: [(String, String, String)] = []
                        for index in 0..<perWriter {
                            let key = "w\(writer)/k\(index)", value = "value-\(writer)-\(index)-\(UUID().uuidString)"
                            let response = try await connection.request("PUT", "/v1/kv/kv/\(key)", headers: [("Content-Type", "text/plain")], body: Array(value.utf8))
                            #expect(response.status == 200, "\(response.text)")
                            if response.status == 200, let etag = response.header("ETag") { acks.append((key, value, etag)) }
                        }
                        await connection.close()
                        return acks
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(acknowledged.count == writers * perWriter)

            kill(node.processIdentifier, SIGKILL)
            #expect(await LocalProcesses.waitExited(node), "the node survived SIGKILL")

            node = try LocalProcesses.start(MeridianBinary.path, arguments, logPath: scratch.file("node.log"))
            #expect(await LocalProcesses.waitHealthy(host: "127.0.0.1", port: port, process: node, timeoutSeconds: 60))
            let connection = try await HTTPConnection.connect(host: "127.0.0.1", port: port)
            var missing = 0
            for (key, value, etag) in acknowledged {
                let response = try await connection.request("GET", "/v1/kv/kv/\(key)")
                if response.status != 200 || response.text != value || response.header("ETag") != etag { missing += 1 }
            }
            #expect(missing == 0, "\(missing) acknowledged writes were lost or changed by the crash")

            // The log continues after the highest acknowledged sequence: no sequence is reused.
            let highest = acknowledged.compactMap { Int($0.2.dropFirst().dropLast().split(separator: ".").last!) }.max()!
            let next = try await connection.request("PUT", "/v1/kv/kv/after-crash", body: Array("x".utf8))
            #expect(next.status == 200)
            let nextSequence = Int(next.header("ETag")!.dropFirst().dropLast().split(separator: ".").last!)!
            #expect(nextSequence == highest + 1)
            await connection.close()
            #expect(await LocalProcesses.stop(node), "the node shuts down cleanly on SIGTERM")
        }
    }
}
