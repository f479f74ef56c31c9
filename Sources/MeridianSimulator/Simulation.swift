import MeridianCore

/// A deterministic simulation of K regions replicating one multi-leader keyspace with `majority` acks,
/// driving the core's real state machines (`LogShipper`, `LogReceiver`, `AckTracker`) under simulated
/// time, WAN latency, partitions, message loss on broken streams, and crashes that lose everything not
/// durable. A seed chooses every fault; the same seed replays the same run.
///
/// Invariants checked: every `majority`-acknowledged write was durable in a majority when acknowledged and
/// is never lost; every region applies each origin's log as a gap-free prefix, each entry once; after the
/// faults stop and the network heals, every region converges to the same state within a time budget.
public struct Simulation {
    /// What a run is asked to do.
    public struct Options: Sendable {
        /// Seeds every random choice.
        public var seed: UInt64
        /// How many random steps (writes, faults, heals) the fault phase takes.
        public var steps: Int
        /// How many regions (3 to 5).
        public var regions: Int
        /// Simulated time to converge after the faults stop, in ms.
        public var convergenceBudgetMs: UInt64 = 60_000

        /// Creates options.
        public init(seed: UInt64, steps: Int, regions: Int) {
            precondition((3...5).contains(regions) && steps >= 0)
            self.seed = seed
            self.steps = steps
            self.regions = regions
        }
    }

    /// What a run did and found.
    public struct Report: Sendable, CustomStringConvertible {
        /// The options replayed by the run.
        public let seed: UInt64
        /// Writes clients issued.
        public var writes = 0
        /// Writes acknowledged with `majority`.
        public var acknowledged = 0
        /// Writes whose ack wait timed out (durable at their origin, not confirmed).
        public var timedOut = 0
        /// Writes lost with their region before they were answered.
        public var unanswered = 0
        /// Crashes, partitions and heals injected.
        public var crashes = 0, partitions = 0, heals = 0
        /// Messages delivered and dropped.
        public var delivered = 0, dropped = 0
        /// Simulated ms from the final heal to identical state, if reached.
        public var convergenceMs: UInt64?
        /// Every invariant broken, described.
        public var violations: [String] = []

        /// Whether every invariant held.
        public var passed: Bool { violations.isEmpty }

        public var description: String {
            var text = "seed \(seed): \(writes) writes, \(acknowledged) majority-acknowledged, \(timedOut) timed out, \(unanswered) unanswered; "
            text += "\(crashes) crashes, \(partitions) partitions, \(heals) heals; \(delivered) messages delivered, \(dropped) dropped; "
            text += convergenceMs.map { "converged \($0) ms after heal" } ?? "did not converge"
            if !violations.isEmpty { text += "\nVIOLATIONS:\n- " + violations.joined(separator: "\n- ") }
            return text
        }
    }

    // MARK: - Model

    private enum Message {
        case entries(origin: Int, to: Int, stream: UInt64, first: UInt64, count: Int)
        case ack(origin: Int, from: Int, stream: UInt64, upTo: UInt64)
    }

    private struct Event {
        let timeMs: UInt64
        let order: UInt64
        let kind: Kind
        enum Kind {
            case deliver(Message)
            case reconnect(from: Int, to: Int)
            case restart(Int)
            case tick
        }
    }

    /// One region's state; `durable` parts survive a crash, the rest is rebuilt from them.
    private struct Region {
        let name: RegionName
        var up = true
        // Durable.
        var log: [ReplicationEntry] = []
        var applied: [[ReplicationEntry]]          // per origin, the entries applied here (own origin: its log)
        var cursors: [UInt64]                      // per peer: how far the peer acknowledged our log
        var kv: [String: ReplicationEntry] = [:]
        var clock: HybridLogicalClock
        // Volatile.
        var shippers: [LogShipper?]
        var receivers: [LogReceiver]
        var acks: AckTracker
        var streams: [UInt64?]                     // per peer: the open outbound stream id
    }

    private let options: Options
    private var generator: SeededGenerator
    private var nowMs: UInt64 = 1_000_000
    /// Each region's clock error, within the maximum offset the HLC accepts.
    private var skewMs: [Int64] = []
    private var queue: [Event] = []
    private var order: UInt64 = 0
    private var nextStream: UInt64 = 1
    private var regions: [Region]
    private var names: [RegionName]
    private var rttMs: [[UInt64]]
    private var cut: Set<[Int]> = []
    private var lastDeliveryMs: [[Int]: UInt64] = [:]
    private var reconnectPending: Set<[Int]> = []
    private var report: Report
    /// Acknowledged writes: (origin, sequence, key, regions durable at ack time).
    private var acknowledgedWrites: [(origin: Int, sequence: UInt64)] = []
    private let keyspace = try! KeyspaceName("sim")
    private let ackTimeoutMs: UInt64 = 2_000

    /// Prepares a run.
    public init(_ options: Options) {
        self.options = options
        generator = SeededGenerator(seed: options.seed)
        let all = ["us-east", "eu-west", "ap-southeast", "sa-east", "ap-northeast"].prefix(options.regions).map { RegionName(validated: $0) }
        names = Array(all)
        // Round-trip times from shared/latency/rtt-ms.csv for these regions.
        let table: [Set<String>: UInt64] = [
            ["us-east", "eu-west"]: 81, ["us-east", "ap-southeast"]: 230, ["eu-west", "ap-southeast"]: 170,
            ["us-east", "sa-east"]: 120, ["us-east", "ap-northeast"]: 145, ["ap-northeast", "ap-southeast"]: 74,
            ["ap-northeast", "sa-east"]: 257, ["ap-southeast", "sa-east"]: 328, ["eu-west", "sa-east"]: 190,
            ["eu-west", "ap-northeast"]: 220,
        ]
        rttMs = all.map { a in all.map { b in a == b ? 0 : table[[a.rawValue, b.rawValue]] ?? 150 } }
        let count = options.regions
        regions = all.map { name in
            Region(name: name, applied: Array(repeating: [], count: count), cursors: Array(repeating: 0, count: count),
                   clock: HybridLogicalClock(region: name), shippers: Array(repeating: nil, count: count),
                   receivers: all.map { LogReceiver(origin: $0, applied: 0) }, acks: AckTracker(origin: name),
                   streams: Array(repeating: nil, count: count))
        }
        report = Report(seed: options.seed)
        skewMs = (0..<count).map { _ in Int64.random(in: -200...200, using: &generator) }
    }

    private func physicalMs(_ index: Int) -> UInt64 { UInt64(Int64(nowMs) + skewMs[index]) }

    /// Runs the fault phase, heals, runs the convergence phase, and checks every invariant.
    public mutating func run() -> Report {
        for index in regions.indices { rebuildVolatile(index) }
        for origin in regions.indices { for peer in regions.indices where peer != origin { connect(origin, peer) } }
        schedule(after: 50, .tick)
        // Safety phase: writes and faults.
        for _ in 0..<options.steps {
            advance(by: UInt64.random(in: 1...40, using: &generator))
            let roll = Int.random(in: 0..<100, using: &generator)
            switch roll {
            case 0..<70: clientWrite(at: Int.random(in: regions.indices, using: &generator))
            case 70..<78: partitionRandomPair()
            case 78..<86: healAll()
            case 86..<90: crash(Int.random(in: regions.indices, using: &generator))
            default: break
            }
        }
        // Liveness phase: heal, restart everyone, and demand convergence within the budget.
        healAll()
        for index in regions.indices where !regions[index].up { restart(index) }
        let healedAt = nowMs
        while nowMs - healedAt < options.convergenceBudgetMs {
            advance(by: 100)
            if converged() {
                report.convergenceMs = nowMs - healedAt
                break
            }
        }
        checkInvariants()
        return report
    }

    // MARK: - Clients

    private mutating func clientWrite(at index: Int) {
        guard regions[index].up else { return }
        report.writes += 1
        let key = "k\(Int.random(in: 0..<20, using: &generator))"
        let sequence = UInt64(regions[index].log.count + 1)
        let hlc = regions[index].clock.now(physicalMs: physicalMs(index))
        let entry = ReplicationEntry(origin: regions[index].name, sequence: sequence, hlc: hlc, epoch: 0, keyspace: keyspace,
                                     key: try! Key(key), operation: .put, contentType: "", value: Array("\(regions[index].name)-\(sequence)".utf8))
        // Group commit: durable before anything else.
        regions[index].log.append(entry)
        regions[index].applied[index].append(entry)
        applyLWW(index, entry)
        let required = AckMode.majority.regionsRequired(replicaCount: regions.count)
        do {
            if let done = try regions[index].acks.register(sequence: sequence, required: required, replicas: names, deadlineMs: nowMs + ackTimeoutMs) {
                resolve(index, done)
            }
        } catch {
            report.violations.append("ack tracker refused a write: \(error)")
        }
        for peer in regions.indices where peer != index {
            carry(index, peer, regions[index].shippers[peer]?.entriesAppended(upTo: sequence) ?? [])
        }
    }

    private mutating func resolve(_ origin: Int, _ resolution: AckTracker.Resolution) {
        switch resolution {
        case .acknowledged(let sequence, let ackedBy):
            report.acknowledged += 1
            acknowledgedWrites.append((origin, sequence))
            // The ack's promise: durable right now in every region it names, and those are a majority, so
            // the write survives the loss of any one region (RPO 0).
            let majority = AckMode.majority.regionsRequired(replicaCount: regions.count)
            if Set(ackedBy).count < majority {
                report.violations.append("write \(names[origin])#\(sequence) acknowledged by \(ackedBy.count) regions; a majority is \(majority)")
            }
            for name in ackedBy {
                let region = names.firstIndex(of: name)!
                if regions[region].applied[origin].count < Int(sequence) {
                    report.violations.append("write \(names[origin])#\(sequence) acknowledged by \(name), which has not applied it")
                }
            }
        case .timedOut:
            report.timedOut += 1
        }
    }

    // MARK: - Replication

    private mutating func connect(_ origin: Int, _ peer: Int) {
        // A down origin reconnects when it restarts; otherwise keep retrying until the link and peer are up.
        guard regions[origin].up, regions[origin].streams[peer] == nil else { return }
        guard regions[peer].up, !cut.contains([origin, peer]) else {
            if !reconnectPending.contains([origin, peer]) {
                reconnectPending.insert([origin, peer])
                schedule(after: 500, .reconnect(from: origin, to: peer))
            }
            return
        }
        let stream = nextStream
        nextStream += 1
        regions[origin].streams[peer] = stream
        regions[peer].receivers[origin].streamClosed()
        carry(origin, peer, regions[origin].shippers[peer]!.streamOpened())
    }

    private mutating func disconnect(_ origin: Int, _ peer: Int) {
        guard regions[origin].streams[peer] != nil else { return }
        regions[origin].streams[peer] = nil
        regions[origin].shippers[peer]?.streamClosed()
        if regions[peer].up { regions[peer].receivers[origin].streamClosed() }
        if !reconnectPending.contains([origin, peer]) {
            reconnectPending.insert([origin, peer])
            schedule(after: 200 + UInt64.random(in: 0...300, using: &generator), .reconnect(from: origin, to: peer))
        }
    }

    private mutating func carry(_ origin: Int, _ peer: Int, _ effects: [LogShipper.Effect]) {
        guard let stream = regions[origin].streams[peer] else { return }
        for effect in effects {
            switch effect {
            case .send(let first, let count):
                send(.entries(origin: origin, to: peer, stream: stream, first: first, count: count), from: origin, to: peer)
            case .persistCursor(let sequence):
                regions[origin].cursors[peer] = sequence
            }
        }
    }

    private mutating func send(_ message: Message, from: Int, to: Int) {
        // Jitter varies the delay, but a stream is a byte stream: a message never overtakes an earlier one.
        let oneWay = rttMs[from][to] / 2 + UInt64.random(in: 0...5, using: &generator)
        let at = max(nowMs + oneWay, lastDeliveryMs[[from, to], default: 0])
        lastDeliveryMs[[from, to]] = at
        schedule(after: at - nowMs, .deliver(message))
    }

    private mutating func deliver(_ message: Message) {
        switch message {
        case .entries(let origin, let peer, let stream, let first, let count):
            guard regions[origin].streams[peer] == stream, regions[peer].up else { report.dropped += 1; return }
            report.delivered += 1
            let batch = Array(regions[origin].log[Int(first - 1)..<Int(first - 1) + count])
            do {
                let delivery = try regions[peer].receivers[origin].received(batch)
                for entry in delivery.toApply {
                    regions[peer].applied[origin].append(entry)
                    applyLWW(peer, entry)
                    do {
                        _ = try regions[peer].clock.receive(entry.hlc, physicalMs: physicalMs(peer))
                    } catch {
                        report.violations.append("\(names[peer]) refused a timestamp within the skew bound: \(error)")
                    }
                }
                if let last = delivery.toApply.last {
                    let upTo = regions[peer].receivers[origin].persisted(upTo: last.sequence)
                    send(.ack(origin: origin, from: peer, stream: stream, upTo: upTo), from: peer, to: origin)
                }
                if let again = delivery.reacknowledge {
                    send(.ack(origin: origin, from: peer, stream: stream, upTo: again), from: peer, to: origin)
                }
            } catch {
                report.violations.append("\(names[peer]) refused \(names[origin])'s batch \(first)+\(count): \(error)")
                disconnect(origin, peer)
            }
        case .ack(let origin, let peer, let stream, let upTo):
            guard regions[origin].streams[peer] == stream, regions[origin].up else { report.dropped += 1; return }
            report.delivered += 1
            do {
                carry(origin, peer, try regions[origin].shippers[peer]!.ackReceived(upTo: upTo))
            } catch {
                report.violations.append("\(names[origin]) refused an ack from \(names[peer]): \(error)")
                disconnect(origin, peer)
                return
            }
            for resolution in regions[origin].acks.peerApplied(names[peer], upTo: upTo) { resolve(origin, resolution) }
        }
    }

    private mutating func applyLWW(_ index: Int, _ entry: ReplicationEntry) {
        let key = entry.key.rawValue
        if let current = regions[index].kv[key], current.hlc >= entry.hlc { return }
        regions[index].kv[key] = entry
    }

    // MARK: - Faults

    private mutating func partitionRandomPair() {
        let a = Int.random(in: regions.indices, using: &generator)
        var b = Int.random(in: regions.indices, using: &generator)
        if a == b { b = (a + 1) % regions.count }
        report.partitions += 1
        cut.insert([a, b])
        cut.insert([b, a])
        disconnect(a, b)
        disconnect(b, a)
    }

    private mutating func healAll() {
        guard !cut.isEmpty else { return }
        report.heals += 1
        cut.removeAll()
    }

    private mutating func crash(_ index: Int) {
        guard regions[index].up else { return }
        report.crashes += 1
        report.unanswered += regions[index].acks.waitingCount
        regions[index].up = false
        for peer in regions.indices where peer != index {
            disconnect(index, peer)
            disconnect(peer, index)
        }
        schedule(after: 500 + UInt64.random(in: 0...2_000, using: &generator), .restart(index))
    }

    private mutating func restart(_ index: Int) {
        guard !regions[index].up else { return }
        regions[index].up = true
        rebuildVolatile(index)
        for peer in regions.indices where peer != index {
            connect(index, peer)
            connect(peer, index)
        }
    }

    /// Rebuilds what a crash loses from what is durable, as a node does at start-up.
    private mutating func rebuildVolatile(_ index: Int) {
        let count = regions.count
        let logHighWater = UInt64(regions[index].log.count)
        regions[index].shippers = (0..<count).map { peer in
            peer == index ? nil : LogShipper(peer: names[peer], acknowledged: regions[index].cursors[peer], logHighWater: logHighWater,
                                             limits: .init(batchEntriesMax: 8, inflightEntriesMax: 32))
        }
        regions[index].receivers = (0..<count).map { origin in LogReceiver(origin: names[origin], applied: UInt64(regions[index].applied[origin].count)) }
        regions[index].acks = AckTracker(origin: names[index])
        regions[index].streams = Array(repeating: nil, count: count)
        regions[index].clock = HybridLogicalClock(region: names[index], floor: regions[index].log.last?.hlc)
    }

    // MARK: - Time

    private mutating func schedule(after delayMs: UInt64, _ kind: Event.Kind) {
        order += 1
        queue.append(Event(timeMs: nowMs + delayMs, order: order, kind: kind))
    }

    private mutating func advance(by deltaMs: UInt64) {
        let until = nowMs + deltaMs
        while let next = queue.indices.min(by: { (queue[$0].timeMs, queue[$0].order) < (queue[$1].timeMs, queue[$1].order) }),
              queue[next].timeMs <= until {
            let event = queue.remove(at: next)
            nowMs = max(nowMs, event.timeMs)
            switch event.kind {
            case .deliver(let message): deliver(message)
            case .reconnect(let from, let to):
                reconnectPending.remove([from, to])
                connect(from, to)
            case .restart(let index): restart(index)
            case .tick:
                for index in regions.indices where regions[index].up {
                    for resolution in regions[index].acks.tick(nowMs: nowMs) { resolve(index, resolution) }
                }
                schedule(after: 50, .tick)
            }
        }
        nowMs = until
    }

    // MARK: - Invariants

    private func converged() -> Bool {
        let first = regions[0]
        return regions.allSatisfy { region in
            region.up && region.kv.mapValues(\.version) == first.kv.mapValues(\.version)
                && region.applied.map(\.count) == regions.map { $0.log.count }
        }
    }

    private mutating func checkInvariants() {
        if report.convergenceMs == nil {
            report.violations.append("no convergence within \(options.convergenceBudgetMs) ms after heal: applied counts \(regions.map { $0.applied.map(\.count) }), logs \(regions.map(\.log.count))")
        }
        for (index, region) in regions.enumerated() {
            for origin in regions.indices where region.applied[origin] != Array(regions[origin].log.prefix(region.applied[origin].count)) {
                report.violations.append("\(names[index]) applied \(names[origin])'s log out of order or with a gap")
            }
        }
        for write in acknowledgedWrites {
            for (index, region) in regions.enumerated() where region.applied[write.origin].count < Int(write.sequence) {
                report.violations.append("acknowledged write \(names[write.origin])#\(write.sequence) missing in \(names[index]) after convergence")
            }
        }
    }
}
