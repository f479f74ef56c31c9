/// Splits a server-sent event stream into events (fields `event`, `data`, `id`; comments ignored). Bounded: an
/// event larger than ``eventBytesMax`` is an error.
public struct EventStreamParser: Sendable {
    public struct Event: Equatable, Sendable {
        public var name = "message"
        public var data = ""
        public var id: String?

        public init(name: String = "message", data: String = "", id: String? = nil) {
            self.name = name
            self.data = data
            self.id = id
        }
    }

    /// Why a stream cannot be parsed further.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public init() {}

    public static let eventBytesMax = 1 << 20
    private var pending: [UInt8] = []
    /// Where to look for the next blank line from (what is before it was searched).
    private var scanned = 0

    /// Adds bytes of the stream; returns the events they complete.
    public mutating func consume(_ bytes: some Collection<UInt8>) throws(Failure) -> [Event] {
        pending += bytes
        var events: [Event] = []
        while let end = Self.blankLine(in: pending, from: scanned) {
            let block = pending[..<end.start]
            pending.removeSubrange(..<end.after)
            scanned = 0
            var event = Event()
            var lines: [String] = []
            for line in block.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
                let text = String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line, as: UTF8.self)
                if text.hasPrefix(":") || text.isEmpty { continue }
                let (field, value) = text.firstIndex(of: ":").map { (String(text[..<$0]), String(text[text.index(after: $0)...]).drop { $0 == " " }) }
                    ?? (text, Substring(""))
                switch field {
                case "event": event.name = String(value)
                case "data": lines.append(String(value))
                case "id": event.id = String(value)
                default: break
                }
            }
            event.data = lines.joined(separator: "\n")
            if !lines.isEmpty { events.append(event) }
        }
        scanned = max(0, pending.count - 2)
        guard pending.count <= Self.eventBytesMax else { throw Failure(description: "an event larger than \(Self.eventBytesMax) bytes") }
        return events
    }

    /// Where the first blank line (an event's end) is: its start and the index after it.
    private static func blankLine(in bytes: [UInt8], from start: Int) -> (start: Int, after: Int)? {
        var index = start
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") {
                if index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "\n") { return (index, index + 2) }
                if index + 2 < bytes.count, bytes[index + 1] == UInt8(ascii: "\r"), bytes[index + 2] == UInt8(ascii: "\n") { return (index, index + 3) }
            }
            index += 1
        }
        return nil
    }
}
