// Proves the point routes' handler on a real node over a raw socket: pipelined requests, point routes mixed with
// routes Hummingbird serves, are answered in the order they were sent with the right bodies; a value over the limit is
// refused whether its length is declared or chunked, and the connection goes on; `Connection: close`, a client's
// half-close and a malformed request end the connection only after the answers owed before them.
import Foundation
import MeridianHarness
import Testing

extension LiveTests {
    @Suite(.serialized) struct PointRouteLiveTests {
        @Test(.timeLimit(.minutes(2)))
        func pipelinedRequestsAreAnsweredInOrder() async throws {
            try await Self.withSocket { socket in
                try socket.send(
                    Self.request("PUT", "/v1/kv/bench/a", body: "one")
                        + Self.request("GET", "/v1/kv/bench/a")
                        + Self.request("GET", "/health")
                        + Self.request("PUT", "/v1/kv/bench/a", body: "two")
                        + Self.request("GET", "/v1/kv/bench")
                        + Self.request("GET", "/v1/kv/bench/a")
                        + Self.request("DELETE", "/v1/kv/bench/a")
                        + Self.request("GET", "/v1/kv/bench/a"))
                let answers = try (0..<8).map { _ in try socket.response() }
                #expect(answers.map(\.status) == [200, 200, 200, 200, 200, 200, 200, 404])
                // Each answer is the one its request asked for: two kinds of writes, reads, Hummingbird's own routes.
                #expect(answers[0].body.contains("\"operation\":\"put\""))
                #expect(answers[1].body == "one")
                #expect(answers[2].body.contains("\"status\":\"ok\""))
                #expect(answers[3].body.contains("\"operation\":\"put\"") && answers[3].body != answers[0].body)
                #expect(answers[4].body.contains("\"keys\"") && answers[4].body.contains("\"a\""))
                #expect(answers[5].body == "two")
                #expect(answers[7].body.contains("key_not_found"))
                // Every answer carries the region's name and a date, as Hummingbird's do.
                for answer in answers {
                    #expect(answer.headers["meridian-region"] == "local")
                    #expect(answer.headers["date"] != nil)
                    #expect(answer.headers["server"] == "meridian/local")
                }
            }
        }

        /// A client that sends its requests and then shuts its side of the connection still gets every answer.
        @Test(.timeLimit(.minutes(2)))
        func aClientThatHalfClosesGetsEveryAnswer() async throws {
            try await Self.withSocket { socket in
                try socket.send(Self.request("PUT", "/v1/kv/bench/h", body: "half") + Self.request("GET", "/health")
                                    + Self.request("GET", "/v1/kv/bench/h"))
                socket.shutdownWriting()
                let answers = try (0..<3).map { _ in try socket.response() }
                #expect(answers.map(\.status) == [200, 200, 200])
                #expect(answers[2].body == "half")
            }
        }

        /// Nothing after a request that asks to close is processed, whichever side answers it; nothing after a
        /// malformed request either, and the answers before it come first.
        @Test(.timeLimit(.minutes(2)))
        func nothingAfterACloseOrAMalformedRequestIsProcessed() async throws {
            try await Self.withSocket { socket in
                try socket.send(Self.request("GET", "/health", headers: "Connection: close\r\n") + Self.request("PUT", "/v1/kv/bench/after-close", body: "no"))
                #expect(try socket.response().status == 200)
                #expect(try socket.atEnd())
            } then: { port in
                let socket = try RawSocket(port: port)
                defer { socket.close() }
                try socket.send(Self.request("PUT", "/v1/kv/bench/before-error", body: "yes") + "NOT HTTP AT ALL\r\n\r\n"
                                    + Self.request("PUT", "/v1/kv/bench/after-error", body: "no"))
                #expect(try socket.response().status == 200)
                #expect(try socket.response().status == 400)
                #expect(try socket.atEnd())
                let check = try RawSocket(port: port)
                defer { check.close() }
                try check.send(Self.request("GET", "/v1/kv/bench/after-close") + Self.request("GET", "/v1/kv/bench/before-error")
                                   + Self.request("GET", "/v1/kv/bench/after-error"))
                #expect(try (0..<3).map { _ in try check.response().status } == [404, 200, 404])
            }
        }

        @Test(.timeLimit(.minutes(2)))
        func aValueOverTheLimitIsRefusedAndTheConnectionGoesOn() async throws {
            try await Self.withSocket { socket in
                let tooLarge = String(repeating: "x", count: (1 << 20) + 10)
                // Declared, then chunked (no length known until the end), each followed by a request that must succeed.
                var chunked = "PUT /v1/kv/bench/big HTTP/1.1\r\nHost: local\r\nTransfer-Encoding: chunked\r\n\r\n"
                for _ in 0..<17 { chunked += String(65_536, radix: 16) + "\r\n" + String(repeating: "y", count: 65_536) + "\r\n" }
                chunked += "0\r\n\r\n"
                try socket.send(Self.request("PUT", "/v1/kv/bench/big", body: tooLarge) + Self.request("PUT", "/v1/kv/bench/small", body: "fits")
                                    + chunked + Self.request("GET", "/v1/kv/bench/small") + Self.request("GET", "/v1/kv/bench/big"))
                let answers = try (0..<5).map { _ in try socket.response() }
                #expect(answers.map(\.status) == [413, 200, 413, 200, 404])
                #expect(answers[0].body.contains("value_too_large"))
                #expect(answers[2].body.contains("value_too_large"))
                #expect(answers[3].body == "fits")
            }
        }

        @Test(.timeLimit(.minutes(2)))
        func connectionCloseIsHonoured() async throws {
            try await Self.withSocket { socket in
                try socket.send(Self.request("PUT", "/v1/kv/bench/c", body: "v") + Self.request("GET", "/v1/kv/bench/c", headers: "Connection: close\r\n"))
                let answers = try (0..<2).map { _ in try socket.response() }
                #expect(answers.map(\.status) == [200, 200])
                #expect(answers[1].headers["connection"] == "close")
                #expect(try socket.atEnd())
            }
        }

        /// Starts a one-region node, connects to it, runs `body` (then `then` with the node's port), and stops the
        /// node whatever happened.
        static func withSocket(_ body: (RawSocket) async throws -> Void, then: (Int) async throws -> Void = { _ in }) async throws {
            let node = try await SingleNode.start(keyspace: "bench", executable: MeridianBinary.path)
            do {
                let socket = try RawSocket(port: node.endpoint.port)
                defer { socket.close() }
                try await body(socket)
                try await then(node.endpoint.port)
            } catch {
                await node.stop()
                throw error
            }
            await node.stop()
        }

        static func request(_ method: String, _ path: String, body: String? = nil, headers: String = "") -> String {
            var text = "\(method) \(path) HTTP/1.1\r\nHost: local\r\n\(headers)"
            if let body { text += "Content-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n" }
            return text + "\r\n" + (body ?? "")
        }
    }
}

/// A blocking TCP connection to 127.0.0.1 with a receive timeout, reading HTTP/1.1 responses framed by Content-Length.
final class RawSocket {
    struct Answer {
        let status: Int
        let headers: [String: String]
        let body: String
    }

    private let descriptor: Int32
    private var buffer: [UInt8] = []

    init(port: Int) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw RawSocketError("socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(descriptor)
            throw RawSocketError("cannot connect to port \(port)")
        }
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(descriptor, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() { Glibc.close(descriptor) }

    /// Ends this side's sending; answers still arrive.
    func shutdownWriting() { Glibc.shutdown(descriptor, Int32(SHUT_WR)) }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes[sent...].withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw RawSocketError("send failed after \(sent) bytes") }
            sent += count
        }
    }

    /// Whether the peer closed the connection (nothing more arrives).
    func atEnd() throws -> Bool {
        try fill() == 0 && buffer.isEmpty
    }

    /// Reads one response.
    func response() throws -> Answer {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        var end: Int?
        for _ in 0..<10_000 {
            if let found = Self.find(separator, in: buffer) {
                end = found
                break
            }
            guard try fill() > 0 else { throw RawSocketError("the connection closed before a response head") }
        }
        guard let end else { throw RawSocketError("no response head") }
        let lines = String(decoding: buffer[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        buffer.removeFirst(end + separator.count)
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1.1 "), let status = Int(statusLine.dropFirst(9).prefix(3)) else {
            throw RawSocketError("not an HTTP/1.1 status line: \(lines.first ?? "")")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        for _ in 0..<10_000 where buffer.count < length {
            guard try fill() > 0 else { throw RawSocketError("the connection closed inside a body") }
        }
        guard buffer.count >= length else { throw RawSocketError("the body did not arrive") }
        let body = String(decoding: buffer[..<length], as: UTF8.self)
        buffer.removeFirst(length)
        return Answer(status: status, headers: headers, body: body)
    }

    private func fill() throws -> Int {
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let count = chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        guard count >= 0 else { throw RawSocketError("receive failed or timed out (errno \(errno))") }
        buffer += chunk[..<count]
        return count
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for start in 0...(haystack.count - needle.count) where haystack[start..<start + needle.count].elementsEqual(needle) {
            return start
        }
        return nil
    }
}

struct RawSocketError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
