import MeridianCore
import Synchronization

/// The region's health verdicts (the core's ``HealthVerdicts``) and the version of its topology, probed once per
/// heartbeat interval, with the open topology streams told of every change.
final class TopologyFeed: Sendable {
    /// What an open stream is told.
    enum Event: Sendable, Equatable {
        /// The topology changed: its new version.
        case changed(UInt64)
        /// Nothing changed for a while: a comment keeps the connection (and its idle timers) alive.
        case keepalive
    }

    /// Who takes each single-leader keyspace's writes, as this region knows it: part of what a change is.
    typealias Leaders = [KeyspaceName: (leader: RegionName?, epoch: UInt64)]

    private struct State {
        var verdicts: HealthVerdicts
        var version: UInt64 = 1
        var leaders: [KeyspaceName: LeaderMark] = [:]
        var streams: [UInt64: AsyncStream<Event>.Continuation] = [:]
        var nextStream: UInt64 = 0
        var probesSinceEvent = 0
    }

    private struct LeaderMark: Equatable {
        let leader: RegionName?
        let epoch: UInt64
    }

    private let state: Mutex<State>
    let streamsMax: Int
    /// Probes between keepalive comments on a quiet stream.
    let keepaliveProbes: Int

    init(region: RegionName, regions: [RegionName], readmitProbes: Int, streamsMax: Int, keepaliveProbes: Int) {
        state = Mutex(State(verdicts: HealthVerdicts(region: region, regions: regions, settings: .init(readmitProbes: readmitProbes))))
        self.streamsMax = streamsMax
        self.keepaliveProbes = max(1, keepaliveProbes)
    }

    /// The verdicts and the topology's version now.
    var snapshot: (verdicts: HealthVerdicts, version: UInt64) {
        state.withLock { ($0.verdicts, $0.version) }
    }

    /// One probe: this region's view, its peers' votes and the leaders it knows. Returns the verdicts that changed.
    func probe(ownSuspects: Set<RegionName>, reports: [RegionName: Set<RegionName>], leaders: Leaders) -> [HealthVerdicts.Change] {
        state.withLock { state in
            let before = state.verdicts.version
            let quorateBefore = state.verdicts.quorate
            let changes = state.verdicts.evaluate(ownSuspects: ownSuspects, reports: reports)
            let marks = leaders.mapValues { LeaderMark(leader: $0.leader, epoch: $0.epoch) }
            let changed = state.verdicts.version != before || marks != state.leaders || quorateBefore != state.verdicts.quorate
            state.leaders = marks
            if changed {
                state.version += 1
                state.probesSinceEvent = 0
                for stream in state.streams.values { stream.yield(.changed(state.version)) }
            } else {
                state.probesSinceEvent += 1
                if state.probesSinceEvent >= keepaliveProbes {
                    state.probesSinceEvent = 0
                    for stream in state.streams.values { stream.yield(.keepalive) }
                }
            }
            return changes
        }
    }

    /// Opens a stream of changes, or nil when ``streamsMax`` are open. The stream ends when `close` is called.
    func subscribe() -> (events: AsyncStream<Event>, close: @Sendable () -> Void)? {
        let (events, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id: UInt64? = state.withLock { state in
            guard state.streams.count < streamsMax else { return nil }
            state.nextStream += 1
            state.streams[state.nextStream] = continuation
            return state.nextStream
        }
        guard let id else { return nil }
        let close: @Sendable () -> Void = { [weak self] in
            let removed = self?.state.withLock { $0.streams.removeValue(forKey: id) }
            (removed ?? continuation).finish()
        }
        continuation.onTermination = { _ in close() }
        return (events, close)
    }

    /// Ends every open stream (the node stops).
    func closeAll() {
        let streams = state.withLock { state in
            defer { state.streams = [:] }
            return Array(state.streams.values)
        }
        for stream in streams { stream.finish() }
    }

    var openStreams: Int { state.withLock { $0.streams.count } }
}
