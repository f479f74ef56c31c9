// The peer benchmark's wire decoders (Redis RESP2, PostgreSQL simple query), fed byte by byte as a socket may
// deliver them: every reply shape they read, and a typed error rather than a trap or a hang on bad input.
import MeridianHarness
import Testing

/// A reader over fixed bytes, handed out `chunk` at a time; past the end it throws as a closed socket does.
func wireReader(_ text: String, chunk: Int = 1) -> WireReader { wireReader(Array(text.utf8), chunk: chunk) }

func wireReader(_ bytes: [UInt8], chunk: Int = 1) -> WireReader {
    final class Cursor { var offset = 0 }
    let cursor = Cursor()
    return WireReader {
        guard cursor.offset < bytes.count else { throw WireError("the server closed the connection") }
        let end = min(bytes.count, cursor.offset + chunk)
        defer { cursor.offset = end }
        return Array(bytes[cursor.offset..<end])
    }
}

@Suite struct RESPTests {
    @Test func commandsAreArraysOfBulkStrings() {
        #expect(String(decoding: RESP.encode(["SET", "k", "värde"]), as: UTF8.self) == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$6\r\nvärde\r\n")
    }

    @Test func everyReplyShapeDecodes() throws {
        let stream = wireReader("+OK\r\n-ERR wrong type\r\n:42\r\n$-1\r\n$5\r\nhe\r\no\r\n*-1\r\n"
            + "*4\r\n$8\r\npmessage\r\n$3\r\nk:*\r\n$20\r\n__keyspace@0__:lag:7\r\n$3\r\nset\r\n")
        #expect(try RESP.decode(stream) == .simple("OK"))
        #expect(try RESP.decode(stream) == .error("ERR wrong type"))
        #expect(try RESP.decode(stream) == .integer(42))
        #expect(try RESP.decode(stream) == .bulk(nil))
        #expect(try RESP.decode(stream) == .bulk(Array("he\r\no".utf8)))
        #expect(try RESP.decode(stream) == .array(nil))
        let message = try RESP.decode(stream)
        guard case .array(let parts?) = message else { Issue.record("not an array: \(message)"); return }
        #expect(parts.map(\.text) == ["pmessage", "k:*", "__keyspace@0__:lag:7", "set"])
    }

    @Test(arguments: ["?what\r\n", ":12x\r\n", "$abc\r\n", "$-2\r\n", "*99999999\r\n", "$3\r\nabcd\r\n", "+no end", "$5\r\nab", "+a\rb\r\n",
                      String(repeating: "*1\r\n", count: 20) + ":1\r\n"])
    func badRepliesAreErrors(_ input: String) {
        #expect(throws: WireError.self) { try RESP.decode(wireReader(input)) }
    }
}

@Suite struct PostgresWireTests {
    /// One backend message: type, length (counting itself), body.
    func message(_ type: Character, _ body: [UInt8]) -> [UInt8] {
        let length = UInt32(body.count + 4)
        return [type.asciiValue!, UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)] + body
    }

    func int32(_ value: Int32) -> [UInt8] {
        let bits = UInt32(bitPattern: value)
        return [UInt8(bits >> 24), UInt8(bits >> 16 & 0xFF), UInt8(bits >> 8 & 0xFF), UInt8(bits & 0xFF)]
    }

    func dataRow(_ columns: [String?]) -> [UInt8] {
        var body: [UInt8] = [0, UInt8(columns.count)]
        for column in columns {
            if let column { body += int32(Int32(column.utf8.count)) + Array(column.utf8) } else { body += int32(-1) }
        }
        return message("D", body)
    }

    let ready = [UInt8(ascii: "Z"), 0, 0, 0, 5, UInt8(ascii: "I")]

    @Test func startupThenRowsOfTheLastResult() throws {
        let startup = message("R", int32(0)) + message("S", Array("server_version\u{0}15\u{0}".utf8)) + message("K", int32(7) + int32(9)) + ready
        #expect(try PostgresConnection.readUntilReady(wireReader(startup)).isEmpty)
        let rows = message("T", [0, 2]) + dataRow(["17", nil]) + dataRow(["18", "0.731"]) + message("C", Array("SELECT 2\u{0}".utf8)) + ready
        #expect(try PostgresConnection.readUntilReady(wireReader(rows, chunk: 3)) == [["17", nil], ["18", "0.731"]])
    }

    @Test func anErrorResponseThrowsItsMessageAfterReady() {
        let error = message("E", Array("SERROR\u{0}C42P01\u{0}Mrelation \"lag\" does not exist\u{0}\u{0}".utf8)) + ready
        #expect {
            try PostgresConnection.readUntilReady(wireReader(error))
        } throws: { error in
            "\(error)".contains("42P01") && "\(error)".contains("relation \"lag\" does not exist")
        }
    }

    @Test func aPasswordRequestIsRefusedWithAReason() {
        #expect(throws: WireError.self) { try PostgresConnection.readUntilReady(wireReader(message("R", int32(5)) + ready)) }
    }

    @Test func truncatedOrMalformedMessagesAreErrors() {
        // A DataRow announcing more columns than it holds, a column longer than the row, a length below 4, and a cut stream.
        for bad in [message("D", [0, 3] + int32(1) + [0x31]) + ready,
                    message("D", [0, 1] + int32(50) + [0x31]) + ready,
                    [UInt8(ascii: "Z"), 0, 0, 0, 2],
                    Array(ready.prefix(3))] {
            #expect(throws: WireError.self) { try PostgresConnection.readUntilReady(wireReader(bad)) }
        }
    }
}
