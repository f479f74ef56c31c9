import MeridianCore
import MeridianStorage
import Synchronization

/// Group commit for the PostgreSQL store: writes that arrive while a batch commits wait, and the next transaction
/// takes them together (at most `commit_batch_max`), so one commit's fsync answers them all. The queue is bounded
/// (`commit_queue_max` writes, `commit_queue_bytes_max` bytes): past it a write is refused with `overloaded` at once.
final class PostgresCommitter: Sendable {
    typealias Outcome = Result<(WriteOutcome, PostgresStore.Recorded), MeridianError>
    typealias Commit = @Sendable ([WriteRequest]) async throws(MeridianError) -> [(WriteOutcome, PostgresStore.Recorded)]

    private struct Waiting: Sendable {
        let request: WriteRequest
        let bytes: Int
        let answer: CheckedContinuation<Outcome, Never>
    }

    private struct State: Sendable {
        var queue: [Waiting] = []
        var queuedBytes = 0
        var draining = false
    }

    private let state = Mutex(State())
    private let batchMax: Int
    private let queueMax: Int
    private let queueBytesMax: Int

    init(limits: Limits) {
        batchMax = max(1, limits.commitBatchMax)
        queueMax = max(1, limits.commitQueueMax)
        queueBytesMax = max(1, limits.commitQueueBytesMax)
    }

    /// Queues a write and waits for the batch that commits it. The first write to find no batch under way starts
    /// the loop that commits batches until the queue is empty.
    func submit(_ request: WriteRequest, bytes: Int, commit: @escaping Commit) async -> Outcome {
        await withCheckedContinuation { answer in
            let refusal = state.withLock { state -> MeridianError? in
                guard state.queue.count < queueMax, state.queuedBytes + bytes <= queueBytesMax || state.queue.isEmpty else {
                    return MeridianError(.overloaded, "The region's commit queue is full (\(state.queue.count) writes, \(state.queuedBytes) bytes waiting for PostgreSQL); retry shortly.")
                }
                state.queue.append(Waiting(request: request, bytes: bytes, answer: answer))
                state.queuedBytes += bytes
                return nil
            }
            if let refusal { return answer.resume(returning: .failure(refusal)) }
            let start = state.withLock { state -> Bool in
                guard !state.draining else { return false }
                state.draining = true
                return true
            }
            if start { Task { await drain(commit) } }
        }
    }

    private func drain(_ commit: Commit) async {
        while true {
            let batch = state.withLock { state -> [Waiting] in
                let taken = Array(state.queue.prefix(batchMax))
                state.queue.removeFirst(taken.count)
                state.queuedBytes -= taken.reduce(0) { $0 + $1.bytes }
                if taken.isEmpty { state.draining = false }
                return taken
            }
            guard !batch.isEmpty else { return }
            do {
                let outcomes = try await commit(batch.map(\.request))
                for (waiting, outcome) in zip(batch, outcomes) { waiting.answer.resume(returning: .success(outcome)) }
            } catch {
                for waiting in batch { waiting.answer.resume(returning: .failure(error)) }
            }
        }
    }
}
