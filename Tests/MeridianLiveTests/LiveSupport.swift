import Foundation
import MeridianHarness
import Testing

/// Locates the `meridian` binary built alongside the tests.
enum MeridianBinary {
    static let path: String = {
        if let explicit = ProcessInfo.processInfo.environment["MERIDIAN_BINARY"] { return explicit }
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("meridian").path,
            URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent(".build/debug/meridian").path,
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
    }()
}

/// A temporary directory removed at the end of a test.
struct Scratch {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-live-\(UUID().uuidString)").path

    init() throws { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }

    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    /// Removes the directory, unless MERIDIAN_LIVE_KEEP is set (to read a failed run's logs).
    func remove() {
        guard ProcessInfo.processInfo.environment["MERIDIAN_LIVE_KEEP"] == nil else { return }
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Runs the CLI to completion (bounded by `timeoutSeconds`) and captures its output.
func runCLI(_ arguments: [String], timeoutSeconds: Double = 60) async throws -> (status: Int32, stdout: String, stderr: String) {
    try await runProgram(MeridianBinary.path, arguments, timeoutSeconds: timeoutSeconds)
}

/// Runs a program to completion (bounded by `timeoutSeconds`, then killed and reported) and captures its output;
/// `environment` adds to this process's, and `directory` is its working directory.
///
/// The wait runs on a thread of its own, never on the cooperative pool: the pool has one thread per core (two here),
/// and two tests waiting on programs there would stall every other test in the process, whose database answers
/// and timers then come late (PostgreSQL store tests timed out so in full runs).
func runProgram(_ path: String, _ arguments: [String], directory: String? = nil, environment: [String: String] = [:],
                timeoutSeconds: Double = 60) async throws -> (status: Int32, stdout: String, stderr: String) {
    let result = try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(with: Result {
                try runProgramWaiting(path, arguments, directory: directory, environment: environment, timeoutSeconds: timeoutSeconds)
            })
        }.start()
    }
    if result.timedOut {
        Issue.record("\((path as NSString).lastPathComponent) \(arguments.joined(separator: " ")) did not finish within \(timeoutSeconds) s")
    }
    return (result.status, result.stdout, result.stderr)
}

private func runProgramWaiting(_ path: String, _ arguments: [String], directory: String?, environment: [String: String],
                               timeoutSeconds: Double) throws -> (status: Int32, stdout: String, stderr: String, timedOut: Bool) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read both pipes while the child runs: a child that fills a pipe's buffer would otherwise block on it
    // until the timeout killed it.
    let captured = OutputCapture()
    let readers = DispatchGroup()
    for (pipe, isError) in [(out, false), (err, true)] {
        DispatchQueue.global().async(group: readers) { captured.set(pipe.fileHandleForReading.readDataToEndOfFile(), isError: isError) }
    }
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    while !LocalProcesses.hasExited(process) && Date() < deadline { usleep(20_000) }
    let timedOut = !LocalProcesses.hasExited(process)
    if timedOut { kill(process.processIdentifier, SIGKILL) }
    // The pipes end when the child (and anything it left holding them) is gone; bounded all the same.
    _ = readers.wait(timeout: .now() + 10)
    let (stdout, stderr) = captured.texts
    // Foundation may notice the exit a moment after the kernel; its status is unreadable until then.
    let noticed = Date().addingTimeInterval(5)
    while process.isRunning && Date() < noticed { usleep(10_000) }
    return (process.isRunning ? -1 : process.terminationStatus, stdout, stderr, timedOut)
}

/// Repeats `attempt` until `done` holds for its result or `timeoutSeconds` have passed, and returns the last
/// result: the one way live tests wait for a condition (never a bare sleep).
func eventually<T>(timeoutSeconds: Double = 10, every interval: Duration = .milliseconds(50),
                   _ attempt: () async throws -> T, until done: (T) -> Bool) async throws -> T {
    let deadline = ContinuousClock.now + .milliseconds(Int(timeoutSeconds * 1000))
    while true {
        let result = try await attempt()
        if done(result) || ContinuousClock.now >= deadline { return result }
        try await Task.sleep(for: interval)
    }
}

/// What a child wrote to its standard output and error, filled by the reading threads.
final class OutputCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var stdout = Data(), stderr = Data()

    func set(_ data: Data, isError: Bool) {
        lock.lock()
        defer { lock.unlock() }
        if isError { stderr = data } else { stdout = data }
    }

    var texts: (String, String) {
        lock.lock()
        defer { lock.unlock() }
        return (String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}

/// Whether a process with this pid still exists (and is not a zombie we could reap).
func processExists(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    let status = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
    return !status.contains(") Z ")
}

/// Whether something accepts TCP connections on 127.0.0.1:port.
func portAcceptsConnections(_ port: Int) async -> Bool {
    guard let connection = try? await HTTPConnection.connect(host: "127.0.0.1", port: port, timeoutSeconds: 1) else { return false }
    await connection.close()
    return true
}

/// A one- or more-region cluster file on free ports, its WAN emulator included.
func clusterYAML(regions: [String], ports: [Int], keyspaces: String, stores: [String: String] = [:]) throws -> String {
    let links = regions.count * (regions.count - 1)
    var text = "cluster: live\n"
    text += "wan: { admin: 127.0.0.1:\(try LocalProcesses.freePort()), base_port: \(try LocalProcesses.freePortRange(count: max(links, 1))) }\n"
    text += "regions:\n"
    for (index, region) in regions.enumerated() {
        let store = stores[region].map { ", store: \($0)" } ?? ""
        text += "  - { name: \(region), client: 127.0.0.1:\(ports[2 * index]), peer: 127.0.0.1:\(ports[2 * index + 1])\(store) }\n"
    }
    return text + "keyspaces:\n" + keyspaces
}

/// Where a live cluster's regions keep their data.
enum StoreMix: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// Every region on its SQLite file.
    case sqlite
    /// us-east and eu-west each on a PostgreSQL database of its own (on the test run's server), ap-southeast on SQLite.
    case mixed

    var testDescription: String { rawValue }

    /// The `store` fields of the regions not on SQLite, their databases made now.
    func stores() async throws -> [String: String] {
        guard self == .mixed else { return [:] }
        let server = try await PostgresServer.shared.value
        var stores: [String: String] = [:]
        for region in ["us-east", "eu-west"] {
            stores[region] = "{ kind: postgres, url: \"postgres://\(server.user)@127.0.0.1:\(server.port)/\(try await server.newDatabase())?sslmode=disable\" }"
        }
        return stores
    }
}

/// Every suite that starts real processes, one at a time: clusters running side by side on two cores starve each
/// other's timers (leases expire, elections start), which tests of timing would then report. The suites nest here
/// so that no test waits inside its own time limit for another to finish.
@Suite(.serialized) enum LiveTests {}
