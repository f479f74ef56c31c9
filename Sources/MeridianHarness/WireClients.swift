// Minimal blocking clients for the peer systems `meridian bench peers` measures beside Meridian: Redis (RESP2)
// and PostgreSQL (the simple-query protocol, trust authentication). The benchmark's write-latency and throughput
// figures come from the systems' own tools (pgbench, redis-benchmark); these clients only drive the replication-lag
// phases, which need what those tools cannot give: a standby polled in a tight loop (PostgreSQL) and keyspace
// notifications read as they arrive (Redis). No Swift Redis client is among the packages this project may use, and
// PostgresNIO would add minutes to every CI build for two queries; each protocol subset here is a few dozen lines.
//
// The clients block, so callers run them on threads of their own (never on NIO's event loops or the cooperative pool).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A wire-protocol failure: the peer sent something unexpected, refused, or went away.
public struct WireError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Buffers bytes pulled from a source and hands them out by count or up to a CRLF.
public final class WireReader {
    private let fill: () throws -> [UInt8]
    private var buffer: [UInt8] = []
    private var offset = 0
    /// The most bytes one message may take; more is a protocol error, not a reason to grow without bound.
    public static let messageBytesMax = 64 << 20

    /// - Parameter fill: Returns the next bytes (at least one), or throws when there are none.
    public init(fill: @escaping () throws -> [UInt8]) { self.fill = fill }

    private func ensure(_ count: Int) throws {
        while buffer.count - offset < count {
            if offset > 0 {
                buffer.removeFirst(offset)
                offset = 0
            }
            buffer += try fill()
        }
    }

    public func byte() throws -> UInt8 {
        try ensure(1)
        defer { offset += 1 }
        return buffer[offset]
    }

    public func bytes(_ count: Int) throws -> [UInt8] {
        guard (0...Self.messageBytesMax).contains(count) else { throw WireError("a length of \(count) bytes is out of range") }
        try ensure(count)
        defer { offset += count }
        return Array(buffer[offset..<offset + count])
    }

    public func int32() throws -> Int32 {
        let b = try bytes(4)
        return Int32(bitPattern: UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]))
    }

    public func int16() throws -> Int16 {
        let b = try bytes(2)
        return Int16(bitPattern: UInt16(b[0]) << 8 | UInt16(b[1]))
    }

    /// The bytes up to a CRLF, without it.
    public func line() throws -> String {
        var line: [UInt8] = []
        while true {
            let next = try byte()
            if next == UInt8(ascii: "\r") {
                guard try byte() == UInt8(ascii: "\n") else { throw WireError("a CR not followed by LF") }
                return String(decoding: line, as: UTF8.self)
            }
            line.append(next)
            guard line.count <= 1 << 16 else { throw WireError("a line longer than 64 KiB") }
        }
    }
}

/// A connected TCP socket with blocking reads and writes, bounded by a timeout.
public final class BlockingSocket {
    private let fd: Int32
    public let reader: WireReader

    public init(host: String, port: Int, timeoutSeconds: Int = 10) throws {
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
            throw WireError("cannot resolve \(host):\(port)")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, 0)
        guard fd >= 0 else { throw WireError("socket(): errno \(errno)") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let code = errno
            close(fd)
            throw WireError("cannot connect to \(host):\(port): errno \(code)")
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        self.fd = fd
        reader = WireReader {
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { throw WireError(count == 0 ? "the server closed the connection" : "read failed or timed out: errno \(errno)") }
            return Array(chunk[0..<count])
        }
    }

    public func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw WireError("write failed or timed out: errno \(errno)") }
            sent += count
        }
    }

    deinit { close(fd) }
}

// MARK: - Redis

/// A RESP2 reply.
public enum RESPValue: Equatable, Sendable {
    case simple(String)
    case error(String)
    case integer(Int)
    case bulk([UInt8]?)
    case array([RESPValue]?)

    /// A bulk or simple string as text.
    public var text: String? {
        switch self {
        case .simple(let text): text
        case .bulk(let bytes?): String(decoding: bytes, as: UTF8.self)
        default: nil
        }
    }
}

public enum RESP {
    /// A command as an array of bulk strings.
    public static func encode(_ parts: [String]) -> [UInt8] {
        var out = Array("*\(parts.count)\r\n".utf8)
        for part in parts {
            let bytes = Array(part.utf8)
            out += Array("$\(bytes.count)\r\n".utf8) + bytes + [13, 10]
        }
        return out
    }

    /// Reads one reply; nesting deeper than 8 arrays is refused.
    public static func decode(_ reader: WireReader, depth: Int = 0) throws -> RESPValue {
        guard depth <= 8 else { throw WireError("RESP arrays nested deeper than 8") }
        let kind = try reader.byte()
        let line = try reader.line()
        switch kind {
        case UInt8(ascii: "+"): return .simple(line)
        case UInt8(ascii: "-"): return .error(line)
        case UInt8(ascii: ":"):
            guard let value = Int(line) else { throw WireError("RESP integer '\(line)' is not a number") }
            return .integer(value)
        case UInt8(ascii: "$"):
            guard let count = Int(line), count >= -1 else { throw WireError("RESP bulk length '\(line)' is not a length") }
            if count == -1 { return .bulk(nil) }
            let bytes = try reader.bytes(count)
            guard try reader.byte() == 13, try reader.byte() == 10 else { throw WireError("RESP bulk string not ended by CRLF") }
            return .bulk(bytes)
        case UInt8(ascii: "*"):
            guard let count = Int(line), (-1...1 << 20).contains(count) else { throw WireError("RESP array length '\(line)' is out of range") }
            if count == -1 { return .array(nil) }
            return .array(try (0..<count).map { _ in try decode(reader, depth: depth + 1) })
        default:
            throw WireError("RESP reply starts with byte \(kind), not one of + - : $ *")
        }
    }
}

/// One Redis connection.
public final class RESPConnection {
    private let socket: BlockingSocket

    public init(host: String, port: Int, timeoutSeconds: Int = 10) throws {
        socket = try BlockingSocket(host: host, port: port, timeoutSeconds: timeoutSeconds)
    }

    /// Sends a command and reads its reply; an error reply throws.
    @discardableResult
    public func call(_ parts: [String]) throws -> RESPValue {
        try socket.send(RESP.encode(parts))
        let reply = try receive()
        if case .error(let message) = reply { throw WireError("redis \(parts.first ?? ""): \(message)") }
        return reply
    }

    public func send(_ parts: [String]) throws { try socket.send(RESP.encode(parts)) }
    public func receive() throws -> RESPValue { try RESP.decode(socket.reader) }
}

// MARK: - PostgreSQL

/// One PostgreSQL connection speaking the simple-query protocol; the server must trust the user (no password).
public final class PostgresConnection {
    private let socket: BlockingSocket

    public init(host: String, port: Int, user: String = "postgres", database: String = "postgres", timeoutSeconds: Int = 10) throws {
        socket = try BlockingSocket(host: host, port: port, timeoutSeconds: timeoutSeconds)
        var body = Self.int32(196_608)  // protocol 3.0
        for (key, value) in [("user", user), ("database", database)] { body += Array(key.utf8) + [0] + Array(value.utf8) + [0] }
        body.append(0)
        try socket.send(Self.int32(Int32(body.count + 4)) + body)
        _ = try Self.readUntilReady(socket.reader)
    }

    /// Runs one statement (or several separated by semicolons) and returns the rows of the last result, as text.
    public func query(_ sql: String) throws -> [[String?]] {
        let body = Array(sql.utf8) + [0]
        try socket.send([UInt8(ascii: "Q")] + Self.int32(Int32(body.count + 4)) + body)
        return try Self.readUntilReady(socket.reader)
    }

    /// The first column of the first row, if any.
    public func scalar(_ sql: String) throws -> String? {
        try query(sql).first?.first ?? nil
    }

    static func int32(_ value: Int32) -> [UInt8] {
        let bits = UInt32(bitPattern: value)
        return [UInt8(bits >> 24), UInt8(bits >> 16 & 0xFF), UInt8(bits >> 8 & 0xFF), UInt8(bits & 0xFF)]
    }

    /// Reads messages up to ReadyForQuery: the rows of the last result, or the first error as a thrown `WireError`.
    public static func readUntilReady(_ reader: WireReader) throws -> [[String?]] {
        var rows: [[String?]] = []
        var failure: WireError?
        while true {
            let type = try reader.byte()
            let length = Int(try reader.int32())
            guard length >= 4 else { throw WireError("a PostgreSQL message of length \(length)") }
            let body = try reader.bytes(length - 4)
            switch type {
            case UInt8(ascii: "R"):
                let code = body.count >= 4 ? Int32(bitPattern: UInt32(body[0]) << 24 | UInt32(body[1]) << 16 | UInt32(body[2]) << 8 | UInt32(body[3])) : -1
                guard code == 0 else { throw WireError("the server asks for authentication method \(code); the benchmark's servers trust local users") }
            case UInt8(ascii: "T"): rows = []
            case UInt8(ascii: "D"): rows.append(try dataRow(body))
            case UInt8(ascii: "E"): failure = failure ?? WireError("postgres: " + errorText(body))
            case UInt8(ascii: "Z"):
                if let failure { throw failure }
                return rows
            default: break  // ParameterStatus, BackendKeyData, CommandComplete, NoticeResponse, EmptyQueryResponse
            }
        }
    }

    static func dataRow(_ body: [UInt8]) throws -> [String?] {
        var index = 0
        func take(_ count: Int) throws -> ArraySlice<UInt8> {
            guard count >= 0, index + count <= body.count else { throw WireError("a DataRow shorter than its columns") }
            defer { index += count }
            return body[index..<index + count]
        }
        func integer(_ bytes: ArraySlice<UInt8>) -> Int { bytes.reduce(0) { $0 << 8 | Int($1) } }
        let count = integer(try take(2))
        var row: [String?] = []
        for _ in 0..<count {
            let length = Int(Int32(truncatingIfNeeded: integer(try take(4))))
            row.append(length < 0 ? nil : String(decoding: try take(length), as: UTF8.self))
        }
        return row
    }

    /// The human-readable fields of an ErrorResponse: severity, SQLSTATE and message.
    static func errorText(_ body: [UInt8]) -> String {
        var fields: [UInt8: String] = [:]
        var index = 0
        while index < body.count, body[index] != 0 {
            let code = body[index]
            guard let end = body[(index + 1)...].firstIndex(of: 0) else { break }
            fields[code] = String(decoding: body[(index + 1)..<end], as: UTF8.self)
            index = end + 1
        }
        return "\(fields[UInt8(ascii: "S")] ?? "ERROR") \(fields[UInt8(ascii: "C")] ?? "?"): \(fields[UInt8(ascii: "M")] ?? "no message")"
    }
}
