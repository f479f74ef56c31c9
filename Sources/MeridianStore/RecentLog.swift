import DequeModule
import MeridianCore
import Synchronization

/// The newest entries of this region's own log, kept in memory as the group committer appends them, so shipping
/// them to peers does not read back from SQLite what was just written there.
///
/// It holds what the log holds, and the batch being committed: the committer is the only writer of this region's
/// own log rows, and hands each batch over in sequence order, once its statements ran (before the COMMIT's fsync, when
/// entries ship early: ``CommitShipping``) or once it committed; a failed COMMIT takes its batch back
/// (``discard(after:)``), and trimming the log drops entries here too.
/// A read is answered only when every entry it asks for is held, otherwise the store reads the rows. Bounded in
/// entries and bytes: the oldest go first.
final class RecentLog: Sendable {
    private struct Held {
        var entries: Deque<ReplicationEntry> = []
        var bytes = 0
    }

    private let held = Mutex(Held())
    let entriesMax: Int
    let bytesMax: Int

    init(entriesMax: Int, bytesMax: Int) {
        precondition(entriesMax > 0 && bytesMax > 0)
        self.entriesMax = entriesMax
        self.bytesMax = bytesMax
    }

    /// A committed batch's entries, in sequence order; a batch that does not follow the last entry held (the log
    /// continued elsewhere, as after a restore) replaces what was held.
    func appended(_ entries: [ReplicationEntry]) {
        guard let first = entries.first else { return }
        held.withLock { held in
            if let last = held.entries.last, last.sequence + 1 != first.sequence { held = Held() }
            for entry in entries {
                held.entries.append(entry)
                held.bytes += EntryCodec.encodedBytes(entry)
            }
            while held.entries.count > entriesMax || (held.bytes > bytesMax && held.entries.count > 1) {
                held.bytes -= EntryCodec.encodedBytes(held.entries.removeFirst())
            }
        }
    }

    /// The `limit` entries after `sequence`, when every one of them is held (nil otherwise).
    func entries(after sequence: UInt64, limit: Int) -> [ReplicationEntry]? {
        held.withLock { held in
            guard limit > 0, let first = held.entries.first?.sequence, let last = held.entries.last?.sequence,
                  sequence >= first - 1, sequence <= last, UInt64(limit) <= last - sequence else { return nil }
            let start = Int(sequence + 1 - first)
            return Array(held.entries[start..<start + limit])
        }
    }

    /// Drops the entries after `sequence` (a COMMIT that failed); whether there were any.
    func discard(after sequence: UInt64) -> Bool {
        held.withLock { held in
            var dropped = false
            while let last = held.entries.last, last.sequence > sequence {
                held.bytes -= EntryCodec.encodedBytes(held.entries.removeLast())
                dropped = true
            }
            return dropped
        }
    }

    /// The log was trimmed through `sequence`.
    func trimmed(through sequence: UInt64) {
        held.withLock { held in
            while let first = held.entries.first, first.sequence <= sequence {
                held.bytes -= EntryCodec.encodedBytes(held.entries.removeFirst())
            }
        }
    }
}
