import Synchronization
import Foundation

/// Starts and stops local `meridian` processes: used by `meridian up`, the benchmarks and the live tests.
public enum LocalProcesses {
    /// A TCP port on 127.0.0.1 that was free a moment ago, chosen below the ephemeral range.
    public static func freePort() throws -> Int {
        // Outside the kernel's ephemeral range, so no outgoing connection (of this or another test) can take the
        // port between this probe and the bind of whoever it is for.
        var generator = SystemRandomNumberGenerator()
        let ceiling = ephemeralLow - 1
        for _ in 0..<200 {
            let port = Int.random(in: 15_000...ceiling, using: &generator)
            if isFree(port) && reserve(port..<(port + 1)) { return port }
        }
        return try kernelAssignedPort()
    }

    /// Ports this process has handed out: a port picked for one cluster is free until its process binds it,
    /// and suites that start clusters in parallel must not be handed the same one in between.
    private static let handedOut = Mutex<Set<Int>>([])

    private static func reserve(_ ports: Range<Int>) -> Bool {
        handedOut.withLock { taken in
            guard ports.allSatisfy({ !taken.contains($0) }) else { return false }
            taken.formUnion(ports)
            return true
        }
    }

    /// The lowest port the kernel hands to outgoing connections (`ip_local_port_range`), 32768 if unknown.
    static let ephemeralLow: Int = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        let low = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) } ?? 32_768
        return max(low, 16_000)
    }()

    private static func kernelAssignedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ConnectionError(description: "socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw ConnectionError(description: "bind() failed: errno \(errno)") }
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw ConnectionError(description: "getsockname() failed: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// The first of `count` consecutive ports on 127.0.0.1 that were all free a moment ago.
    public static func freePortRange(count: Int, attempts: Int = 200) throws -> Int {
        precondition(count > 0)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<attempts {
            let base = Int.random(in: 15_000...(ephemeralLow - 1 - count), using: &generator)
            if (base..<(base + count)).allSatisfy(isFree) && reserve(base..<(base + count)) { return base }
        }
        throw ConnectionError(description: "no \(count) consecutive free ports found in \(attempts) attempts")
    }

    private static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// The path of the running executable.
    public static func currentExecutable() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// Starts `executable` with `arguments`, sending its output to `logPath` (or discarding it); `environment` adds
    /// to (or replaces) variables of this process's environment.
    public static func start(_ executable: String, _ arguments: [String], logPath: String?, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if let logPath {
            FileManager.default.createFile(atPath: logPath, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            handle.seekToEndOfFile()
            process.standardOutput = handle
            process.standardError = handle
        } else {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Polls `GET /health` until it answers 200.
    /// - Returns: false when `timeoutSeconds` passed, the process exited first, or `stop` said so.
    public static func waitHealthy(host: String, port: Int, process: Process?, timeoutSeconds: Double,
                                   stop: @Sendable () -> Bool = { false }, credentials: ClientCredentials = .process) async -> Bool {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline && !stop() {
            if let process, !process.isRunning { return false }
            if let connection = try? await HTTPConnection.connect(host: host, port: port, timeoutSeconds: 2, credentials: credentials) {
                let result = try? await connection.request("GET", "/health")
                await connection.close()
                if result?.status == 200 { return true }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Whether the process has exited. Foundation's `isRunning` alone is not trusted: on Linux it can miss a
    /// child's exit under load and report a zombie as running forever (and `waitUntilExit` then spins), so a
    /// process the kernel lists as a zombie, or no longer lists, counts as exited.
    public static func hasExited(_ process: Process) -> Bool {
        guard process.isRunning else { return true }
        #if os(Linux)
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8) else { return true }
        // The state follows the command name in parentheses: "pid (comm) S ...".
        guard let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
        #else
        return false
        #endif
    }

    /// Waits, bounded, until the process has exited.
    /// - Returns: false when it was still running after `timeoutSeconds`.
    @discardableResult
    public static func waitExited(_ process: Process, timeoutSeconds: Double = 10) async -> Bool {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while !hasExited(process) {
            guard Date() < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        // Give Foundation a moment to notice too, so the caller can read the termination status (unless it
        // missed the exit altogether: then `isRunning` stays true and the status must not be read).
        let noticed = Date().addingTimeInterval(5)
        while process.isRunning && Date() < noticed { try? await Task.sleep(for: .milliseconds(10)) }
        return true
    }

    /// Sends SIGTERM, waits up to `graceSeconds` for exit, then SIGKILLs and waits (bounded) again.
    /// - Returns: true when the process exited on SIGTERM within the grace period.
    @discardableResult
    public static func stop(_ process: Process, graceSeconds: Double = 10) async -> Bool {
        guard !hasExited(process) else { return true }
        kill(process.processIdentifier, SIGTERM)
        if await waitExited(process, timeoutSeconds: graceSeconds) { return true }
        kill(process.processIdentifier, SIGKILL)
        await waitExited(process, timeoutSeconds: 10)
        return false
    }
}
