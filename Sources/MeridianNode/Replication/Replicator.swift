import Foundation
import Histogram
import Logging
import MeridianCore
import MeridianSecurity
import MeridianStorage
import NIOCore
import NIOPosix
import Synchronization

/// How a node reaches its peers' replication ports.
public enum PeerRoute: String, Sendable, CaseIterable {
    /// Through the WAN emulator's proxy for each directed link (`meridian wan`, started by `meridian up`).
    case wan
    /// Straight to each peer's address from the cluster file.
    case direct
}

/// Executes a write forwarded here by another region and renders the answer.
typealias ForwardHandler = @Sendable (ForwardedWrite) async -> ForwardedReply
/// Serves a read forwarded here by another region and renders the answer.
/// Serves a read another region forwarded; the second argument is that region, as its stream's hello named it.
typealias ForwardReadHandler = @Sendable (ForwardedRead, RegionName) async -> ForwardedReply
/// Takes an election message of a single-leader keyspace from the region whose stream carried it.
typealias ElectionHandler = @Sendable (KeyspaceName, ElectionMessage, EpochStart?, RegionName) async -> Void
/// Hands a keyspace this region leads over to a region, as another region asked on an operator's behalf.
typealias HandOverHandler = @Sendable (KeyspaceName, RegionName) async -> HandOverOutcome
/// Serves one step of a peer's anti-entropy round (the peer as its stream's hello named it).
typealias RepairHandler = @Sendable (KeyspaceName, RepairRequest, RegionName) async -> RepairReply

/// The node's replication shell: it ships this region's log to every peer over long-lived streams, applies
/// the streams of other origins, confirms `majority`/`all` writes, and carries forwarded writes. The
/// decisions (what to send, what to apply, when a write is confirmed) are the core's `LogShipper`,
/// `LogReceiver` and `AckTracker`; this type does the I/O.
final class Replicator: Sendable {
    /// The longest an apply of entries shipped before their origin's fsync holds this region's writer, waiting for the
    /// origin to say they are durable (its fsync takes well under a millisecond here): a stalled origin costs the
    /// writer this much once, then its entries wait unheld for the durable point.
    static let heldApplyWaitMs = 5

    let region: RegionName
    /// Where this region accepts its peers' streams.
    let peerAddress: Endpoint
    let cluster: ClusterConfig
    let store: any RegionStorage
    let codec: PeerFrameCodec
    let links: [RegionName: OutboundLink]
    /// Decides which replicated entries of single-leader keyspaces apply (nil: no fencing, in tests of the
    /// replication shell alone).
    let fence: Leadership?
    /// Brackets each peer's clock from its heartbeats (nil in tests that need no clock check).
    let clock: ClockWatch?
    private let logger: Logger
    private let group: any EventLoopGroup
    private let acks: AckWaiters
    private let inboundStates = Mutex<[RegionName: InboundState]>([:])
    private let forwardsServed = Atomic<Int>(0)
    let wallClockMs: @Sendable () -> UInt64
    private let started = ContinuousClock.now
    /// Rung whenever this region applies entries, hears how fresh it is, or a peer acknowledges: reads
    /// waiting to catch up look again.
    let progress = ProgressSignal()

    var limits: Limits { cluster.limits }
    private var heartbeatInterval: Duration { .milliseconds(limits.heartbeatIntervalMs) }

    /// What this region knows about one origin's stream into it.
    struct InboundState: Sendable {
        /// Open streams from the origin (a new one may open before a stale one is noticed and closed).
        var connections = 0
        var lastHeard: ContinuousClock.Instant?
        /// The origin's log end and clock, from its latest heartbeat.
        var originLogHighWater: UInt64 = 0
        var originPhysicalMs: UInt64 = 0
        /// Apply lag in ms (apply time here minus the entry's HLC time at its origin), since the node started.
        var applyLagMs = Histogram<UInt64>(highestTrackableValue: 3_600_000, numberOfSignificantValueDigits: .three)
        /// How fresh this region is on the origin's writes, on ``Replicator/monotonicMs``.
        var freshness = FreshnessTracker()
        /// The regions the origin's streams could not reach, from its latest heartbeat: its health vote.
        var reportedUnreachable: Set<RegionName> = []
        /// A heartbeat carried the vote (a stream's first frames do not).
        var reported = false
    }

    /// Told of every batch of entries from a peer once it is committed here.
    private let onApplied: @Sendable ([ReplicationEntry]) -> Void
    /// Mutual TLS on every stream, when the cluster file configures it.
    private let tls: NodeTLS?
    /// Whether this process still holds its region's duties (asked at every peer frame).
    private let holdsDuties: @Sendable () -> Bool
    private let metrics: NodeMetrics?
    /// Every open peer stream, so a certificate reload can move them all to the new certificates.
    private let openChannels = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// Peer streams accepted and not yet taken up: closed when their listener stops.
    private let acceptedPeers = AcceptedChannels()
    /// The region's audit trail (nil: none kept): batches of restricted keyspaces sent and received go on it.
    let audit: AuditLog?
    /// A restored region's catch-up: while it runs, peers' welcomes are noted and nothing is shipped.
    let restore: RestoreState

    /// Milliseconds since this node started, on a clock that never jumps: the time echoed to origins.
    var monotonicMs: UInt64 {
        (ContinuousClock.now - started).wholeMilliseconds
    }

    init(own: RegionConfig, cluster: ClusterConfig, store: any RegionStorage, peerEndpoints: [RegionName: Endpoint], wallClockMs: @escaping @Sendable () -> UInt64,
         logger: Logger, fence: Leadership? = nil, clock: ClockWatch? = nil, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
         onApplied: @escaping @Sendable ([ReplicationEntry]) -> Void = { _ in }, tls: NodeTLS? = nil, metrics: NodeMetrics? = nil,
         audit: AuditLog? = nil, restore: RestoreState = RestoreState(nil), holdsDuties: @escaping @Sendable () -> Bool = { true }) {
        let region = own.name
        self.holdsDuties = holdsDuties
        self.audit = audit
        self.restore = restore
        self.onApplied = onApplied
        self.tls = tls
        self.metrics = metrics
        self.region = region
        peerAddress = own.peer
        self.fence = fence
        self.clock = clock
        self.cluster = cluster
        self.store = store
        self.logger = logger
        self.group = group
        self.wallClockMs = wallClockMs
        let limits = cluster.limits
        codec = PeerFrameCodec(valueBytesMax: limits.valueBytesMax, frameBytesMax: limits.replicationFrameBytesMax)
        acks = AckWaiters(origin: region)
        let highWater = store.appliedHighWater()[region] ?? 0
        var links: [RegionName: OutboundLink] = [:]
        for (peer, endpoint) in peerEndpoints {
            let silence = Duration.milliseconds(limits.heartbeatIntervalMs * limits.missedHeartbeatsMax) + .milliseconds(Int(cluster.wan.timeoutRttMs(region, peer)))
            links[peer] = OutboundLink(
                peer: peer, endpoint: endpoint, silenceLimit: silence,
                acknowledged: 0, logHighWater: highWater,
                shipperLimits: LogShipper.Limits(batchEntriesMax: limits.replicationBatchEntriesMax, inflightEntriesMax: limits.replicationInflightEntriesMax),
                forwardsMax: limits.forwardsInflightMax)
        }
        self.links = links
    }

    // MARK: - Running

    /// Listens for peers, keeps a stream to every peer, and runs the timers, until cancelled.
    /// - Parameter onListening: Called once the peer port is bound.
    func run(forward: @escaping ForwardHandler, forwardRead: @escaping ForwardReadHandler, election: @escaping ElectionHandler = { _, _, _, _ in },
             handOver: @escaping HandOverHandler = { _, _ in .refused(code: "leader_unavailable", message: "This region serves no hand-overs.") },
             repair: @escaping RepairHandler = { _, _, _ in .refused(code: "not_replica_region", message: "This region serves no anti-entropy.") },
             onListening: @escaping @Sendable () -> Void = {}) async throws {
        let address = peerAddress
        let first: NIOAsyncChannel<PeerConnection, Never>
        do {
            first = try await bindListener()
        } catch {
            throw MeridianError(.invalidConfig, "Region \(region) cannot listen for peers on \(address): \(error). Is another node running with this cluster file?",
                                context: ["peer": address.description])
        }
        logger.info("replication listening on \(address)")
        onListening()
        try await acceptedPeers.closingWaiting { try await self.serve(first, forward: forward, forwardRead: forwardRead, election: election, handOver: handOver, repair: repair) }
    }

    /// Accepts peer streams, keeps a stream to every peer, and runs the timers, until cancelled.
    private func serve(_ first: NIOAsyncChannel<PeerConnection, Never>, forward: @escaping ForwardHandler, forwardRead: @escaping ForwardReadHandler,
                       election: @escaping ElectionHandler, handOver: @escaping HandOverHandler, repair: @escaping RepairHandler) async throws {
        let address = peerAddress
        try await withThrowingDiscardingTaskGroup { tasks in
            for link in links.values {
                tasks.addTask { await self.keepConnected(link) }
            }
            tasks.addTask { await self.tickAcks() }
            tasks.addTask { await self.maintain() }
            // The listener's stream fails when one accepted connection cannot be set up (a peer that reset it
            // at once, as a reconnecting peer or a cut link does): that must not end the region's replication.
            // Listen again; the streams already accepted run on in this group, untouched.
            var listener: NIOAsyncChannel<PeerConnection, Never>? = first
            var failures = 0
            while !Task.isCancelled {
                do {
                    let current: NIOAsyncChannel<PeerConnection, Never>
                    if let listener { current = listener } else { current = try await bindListener() }
                    listener = nil
                    try await current.executeThenClose { connections in
                        for try await connection in connections {
                            failures = 0
                            acceptedPeers.takenUp(connection.channel.channel)
                            tasks.addTask {
                                await self.serveInbound(connection, forward: forward, forwardRead: forwardRead, election: election, handOver: handOver, repair: repair)
                            }
                        }
                    }
                } catch {
                    guard !Task.isCancelled else { break }
                    // What the stopped listener accepted and did not hand over yet has no one to serve it.
                    await acceptedPeers.closeWaiting(forGood: false)
                    failures += 1
                    metrics?.recordPeerRefusal(reason: "listener_restart")
                    logger.warning("the peer listener stopped; listening again", metadata: ["peer": "\(address)", "error": "\(error)"])
                    // Immediately after a failed accept; backing off only while binding again fails.
                    if failures > 1 { try? await Task.sleep(for: .milliseconds(min(1_000, 25 << min(failures, 6)))) }
                }
            }
        }
    }

    /// Binds the peer port, each accepted stream wrapped (TLS first when configured, then the frame codec).
    private func bindListener() async throws -> NIOAsyncChannel<PeerConnection, Never> {
        let (codec, tls, holdsDuties) = (self.codec, self.tls, self.holdsDuties)
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: peerAddress.host, port: peerAddress.port) { [acceptedPeers] channel in
                PeerChannel.wrap(channel, codec: codec, tls: tls, dialing: nil, holdsDuties: holdsDuties).map { connection in
                    acceptedPeers.accepted(connection.channel)
                    return connection
                }
            }
    }

    /// Connects to a peer, streams, and reconnects with backoff, until cancelled.
    private func keepConnected(_ link: OutboundLink) async {
        var failures = 0
        var lastLogged: String?
        while !Task.isCancelled {
            var reason: String?
            do {
                try await stream(to: link)
                failures = 0
            } catch {
                failures += 1
                reason = (error as? MeridianError)?.message ?? "\(error)"
                if reason != lastLogged {
                    logger.warning("stream to \(link.peer) ended", metadata: ["peer": "\(link.endpoint)", "reason": "\(reason!)"])
                    lastLogged = reason
                }
            }
            link.disconnected(reason: reason)
            let backoffMs = min(1_000, 25 << min(failures, 6))
            try? await Task.sleep(for: .milliseconds(backoffMs))
        }
    }

    /// One outbound connection: hello, then batches and heartbeats out, welcome and acks in.
    private func stream(to link: OutboundLink) async throws {
        let (codec, tls, holdsDuties) = (self.codec, self.tls, self.holdsDuties)
        let connection = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(2))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: link.endpoint.host, port: link.endpoint.port) { channel in
                PeerChannel.wrap(channel, codec: codec, tls: tls, dialing: link.peer, holdsDuties: holdsDuties)
            }
        let channel = connection.channel
        // With TLS, nothing is sent before the peer's certificate proves it is the region dialled.
        do {
            _ = try await connection.certifiedRegion()
        } catch {
            channel.channel.close(promise: nil)
            metrics?.recordPeerRefusal(reason: "outbound_identity")
            throw error
        }
        let key = ObjectIdentifier(channel.channel)
        openChannels.withLock { $0[key] = channel.channel }
        defer { openChannels.withLock { _ = $0.removeValue(forKey: key) } }
        let (commands, outbox) = AsyncStream<OutboundLink.Command>.makeStream()
        link.connected(outbox: outbox)
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.hello(PeerHello(cluster: cluster.name, from: region, to: link.peer)))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await self.writeOutbound(commands, to: outbound, link: link) }
                tasks.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: self.heartbeatInterval)
                        if link.tick() {
                            channel.channel.close(promise: nil)
                            return
                        }
                    }
                }
                defer {
                    outbox.finish()
                    tasks.cancelAll()
                }
                do {
                    for try await frame in inbound {
                        link.heard()
                        switch frame {
                        case .welcome(let applied, let auditWitnessed):
                            // Restoring: the log's end is what the peers hold, not yet known; ship nothing.
                            if restore.welcomed(by: link.peer, log: applied, audit: auditWitnessed) {
                                link.heldForRestore()
                                continue
                            }
                            try link.welcomed(applied: applied, logFloor: store.logFloor())
                            acks.peerApplied(link.peer, upTo: applied)
                            progress.signal()
                        case .ack(let applied, _, let echoMs):
                            // Only the durable point counts: toward majority and all, for the window and for trimming.
                            try link.acked(applied, echoMs: echoMs)
                            acks.peerApplied(link.peer, upTo: applied)
                            progress.signal()
                        case .forwardReply(let reply):
                            link.forwardAnswered(reply)
                        case .handOverReply(let id, let outcome):
                            link.handOverAnswered(id: id, outcome)
                        case .repairReply(let id, let reply):
                            link.repairAnswered(id: id, reply)
                        case .refusal(let code, let message):
                            throw MeridianError(.replicationProtocol, "\(link.peer) refused the stream (\(code)): \(message)")
                        case .hello, .batch, .heartbeat, .forward, .forwardRead, .election, .handOverRequest, .repairRequest, .auditCheckpoint, .durable:
                            throw MeridianError(.replicationProtocol, "\(link.peer) sent a frame only an origin sends on this region's stream.")
                        }
                    }
                } catch let error as MeridianError {
                    try? await outbound.write(.refusal(code: error.code.description, message: error.message))
                    throw error
                }
            }
        }
    }

    /// Drains a connection's outbox in order.
    private func writeOutbound(_ commands: AsyncStream<OutboundLink.Command>, to outbound: NIOAsyncChannelOutboundWriter<PeerFrame>, link: OutboundLink) async throws {
        for await command in commands {
            switch command {
            case .ship:
                guard let range = link.takeShipment() else { continue }
                // Read and send in chunks of the batch size, so one large shipment does not hold the whole window in memory.
                var from = range.lowerBound
                while from <= range.upperBound {
                    let count = Int(min(UInt64(limits.replicationBatchEntriesMax), range.upperBound - from + 1))
                    let entries = try await store.logEntries(origin: region, after: from - 1, limit: count)
                    guard entries.count == count, entries.first?.sequence == from else {
                        throw MeridianError(.replicationProtocol, "Entries \(from) to \(from + UInt64(count) - 1) of this region's log are no longer held (retention); \(link.peer) needs a full resync.")
                    }
                    for frame in Shipment.batches(entries, from: from, through: from + UInt64(count) - 1, for: link.peer, cluster: cluster,
                                                   bytesMax: codec.frameBytesMax - 64) {
                        try await outbound.write(frame)
                        if let audit, case .batch(let first, let last, let shipped) = frame {
                            for batch in AuditedBatch.summaries(shipped, cluster: cluster) {
                                audit.record(.replicationSent, ["peer": link.peer.rawValue, "keyspace": batch.keyspace.rawValue, "from": String(first),
                                                                "through": String(last), "entries": String(batch.entries), "bytes": String(batch.bytes),
                                                                "digest": batch.digest])
                            }
                        }
                    }
                    from += UInt64(count)
                }
            case .heartbeat:
                // The echo first, then the log end: everything answered before the echoed ack arrived is below it.
                let snapshot = link.snapshot
                try await outbound.write(.heartbeat(logHighWater: snapshot.logHighWater, physicalMs: wallClockMs(), echoMs: snapshot.echoMs,
                                                    unreachable: unreachable()))
            case .forward(let frame):
                try await outbound.write(frame)
            case .durable:
                guard let through = link.takeDurable() else { continue }
                try await outbound.write(.durable(through: through))
            case .reset:
                throw MeridianError(.storageFailure, "A commit of this region failed after its entries were shipped to \(link.peer); the stream restarts from what \(link.peer) holds.")
            }
        }
    }

    /// One inbound connection from an origin: apply its batches in order and acknowledge; serve forwarded writes.
    private func serveInbound(_ accepted: PeerConnection, forward: @escaping ForwardHandler, forwardRead: @escaping ForwardReadHandler,
                              election: @escaping ElectionHandler, handOver: @escaping HandOverHandler, repair: @escaping RepairHandler) async {
        var origin: RegionName?
        let connection = accepted.channel
        let key = ObjectIdentifier(connection.channel)
        openChannels.withLock { $0[key] = connection.channel }
        defer { openChannels.withLock { _ = $0.removeValue(forKey: key) } }
        do {
            try await connection.executeThenClose { inbound, outbound in
                let (replies, replyOut) = AsyncStream<PeerFrame>.makeStream()
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask {
                        for await frame in replies { try await outbound.write(frame) }
                    }
                    // An origin sends at least a heartbeat per interval; a stream silent for much longer is stale
                    // (its origin reconnected, or the link was cut) and is closed.
                    let lastFrame = Mutex(ContinuousClock.now)
                    let idleLimit = Duration.milliseconds(limits.heartbeatIntervalMs * limits.missedHeartbeatsMax * 4) + .seconds(1)
                    tasks.addTask {
                        while true {
                            try await Task.sleep(for: self.heartbeatInterval)
                            if ContinuousClock.now - lastFrame.withLock({ $0 }) > idleLimit {
                                connection.channel.close(promise: nil)
                                return
                            }
                        }
                    }
                    defer {
                        replyOut.finish()
                        tasks.cancelAll()
                    }
                    var applier: BatchApplier?
                    do {
                        defer { applier?.finish() }
                        for try await frame in inbound {
                            lastFrame.withLock { $0 = .now }
                            if let origin { heardFrom(origin) }
                            switch frame {
                            case .hello(let hello):
                                guard origin == nil else { throw MeridianError(.replicationProtocol, "A stream said hello twice.") }
                                try check(hello)
                                try await checkIdentity(hello, accepted)
                                origin = hello.from
                                let applied = store.appliedHighWater()[hello.from] ?? 0
                                let started = BatchApplier(receiver: LogReceiver(origin: hello.from, applied: applied))
                                applier = started
                                tasks.addTask { try await self.applyBatches(started, origin: hello.from, replies: replyOut) }
                                inboundStates.withLock { $0[hello.from, default: InboundState()].connections += 1 }
                                // Possibly a new process with its clock set anew: its old bracket no longer vouches for ours.
                                clock?.peerReconnected(hello.from)
                                heardFrom(hello.from)
                                // How far this region witnessed the origin's trail: a restored origin resumes after it.
                                // Unreadable: the stream ends rather than understate it (a restored origin would resume over it).
                                let witnessed = try await store.witnessed(region: hello.from, limit: 1).checkpoints.last?.sequence ?? 0
                                replyOut.yield(.welcome(applied: applied, auditWitnessed: witnessed))
                                progress.signal()
                            case .batch(let from, let through, let entries):
                                guard let origin, let applier else { throw MeridianError(.replicationProtocol, "A batch arrived before hello.") }
                                if let audit {
                                    for batch in AuditedBatch.summaries(entries, cluster: cluster) {
                                        audit.record(.replicationReceived, ["origin": origin.rawValue, "keyspace": batch.keyspace.rawValue, "from": String(from),
                                                                            "through": String(through), "entries": String(batch.entries), "bytes": String(batch.bytes),
                                                                            "digest": batch.digest])
                                    }
                                }
                                try applier.received(from: from, through: through, entries: entries)
                            case .durable(let through):
                                guard let applier else { throw MeridianError(.replicationProtocol, "A durable point arrived before hello.") }
                                applier.originDurable(through: through)
                            case .heartbeat(let logHighWater, let physicalMs, let echoMs, let unreachable):
                                guard let origin else { throw MeridianError(.replicationProtocol, "A heartbeat arrived before hello.") }
                                let applied = store.appliedHighWater()[origin] ?? 0, visible = store.visibleHighWater()[origin] ?? 0
                                let now = monotonicMs
                                // The origin read its clock after this region's ack stamped `echoMs` arrived, and before
                                // now: a bracket of its clock against ours (0: no ack of this stream's echoed yet).
                                if let clock, echoMs > 0, echoMs <= now {
                                    let wallNow = wallClockMs()
                                    clock.sample(peer: origin, sentMs: wallNow - min(wallNow, now - echoMs), peerMs: physicalMs, receivedMs: wallNow)
                                }
                                inboundStates.withLock { all in
                                    var state = all[origin, default: InboundState()]
                                    state.originLogHighWater = logHighWater
                                    state.originPhysicalMs = physicalMs
                                    state.freshness.heard(logHighWater: logHighWater, echo: echoMs, now: now, applied: visible)
                                    state.reportedUnreachable = Set(unreachable)
                                    state.reported = true
                                    all[origin] = state
                                }
                                progress.signal()
                                replyOut.yield(.ack(applied: applied, visible: max(visible, applied), echoMs: monotonicMs))
                            case .forward(let write):
                                guard origin != nil else { throw MeridianError(.replicationProtocol, "A forwarded write arrived before hello.") }
                                guard admitForwarded(id: write.id, replies: replyOut) else { continue }
                                tasks.addTask {
                                    defer { self.forwardsServed.subtract(1, ordering: .relaxed) }
                                    replyOut.yield(.forwardReply(await forward(write)))
                                }
                            case .forwardRead(let read):
                                guard let from = origin else { throw MeridianError(.replicationProtocol, "A forwarded read arrived before hello.") }
                                guard admitForwarded(id: read.id, replies: replyOut) else { continue }
                                tasks.addTask {
                                    defer { self.forwardsServed.subtract(1, ordering: .relaxed) }
                                    replyOut.yield(.forwardReply(await forwardRead(read, from)))
                                }
                            case .election(let keyspace, let message, let start):
                                guard let from = origin else { throw MeridianError(.replicationProtocol, "An election message arrived before hello.") }
                                // In order, on the stream: a leader's heartbeat naming its term's start arrives before
                                // the term's entries are applied.
                                await election(keyspace, message, start, from)
                            case .handOverRequest(let id, let keyspace, let target):
                                guard origin != nil else { throw MeridianError(.replicationProtocol, "A hand-over request arrived before hello.") }
                                guard forwardsServed.add(1, ordering: .relaxed).newValue <= limits.forwardsInflightMax else {
                                    forwardsServed.subtract(1, ordering: .relaxed)
                                    replyOut.yield(.handOverReply(id: id, outcome: .refused(code: MeridianError.Code.overloaded.description,
                                                                                            message: "\(region) is serving \(limits.forwardsInflightMax) forwarded requests; retry shortly.")))
                                    continue
                                }
                                tasks.addTask {
                                    defer { self.forwardsServed.subtract(1, ordering: .relaxed) }
                                    replyOut.yield(.handOverReply(id: id, outcome: await handOver(keyspace, target)))
                                }
                            case .repairRequest(let id, let keyspace, let request):
                                guard let from = origin else { throw MeridianError(.replicationProtocol, "A repair request arrived before hello.") }
                                guard forwardsServed.add(1, ordering: .relaxed).newValue <= limits.forwardsInflightMax else {
                                    forwardsServed.subtract(1, ordering: .relaxed)
                                    replyOut.yield(.repairReply(id: id, .refused(code: MeridianError.Code.overloaded.description,
                                                                                 message: "\(region) is serving \(limits.forwardsInflightMax) forwarded requests; retry shortly.")))
                                    continue
                                }
                                tasks.addTask {
                                    defer { self.forwardsServed.subtract(1, ordering: .relaxed) }
                                    replyOut.yield(.repairReply(id: id, await repair(keyspace, request, from)))
                                }
                            case .auditCheckpoint(let checkpoint, let key):
                                guard let from = origin else { throw MeridianError(.replicationProtocol, "An audit checkpoint arrived before hello.") }
                                // Only the region's own trail, from its own authenticated stream.
                                if checkpoint.region == from {
                                    do throws(MeridianError) { try await store.witness(checkpoint, publicKey: key) } catch {
                                        logger.warning("an audit checkpoint was not kept", metadata: ["peer": "\(from)", "error": "\(error.message)"])
                                    }
                                } else {
                                    logger.warning("a peer sent a checkpoint of another region's audit trail", metadata: ["peer": "\(from)", "names": "\(checkpoint.region)"])
                                }
                            case .welcome, .ack, .forwardReply, .handOverReply, .repairReply, .refusal:
                                throw MeridianError(.replicationProtocol, "The origin sent a frame only a receiving region sends.")
                            }
                        }
                    } catch {
                        if let error = error as? MeridianError {
                            try? await outbound.write(.refusal(code: error.code.description, message: error.message))
                        }
                        await applier?.drained(withinMs: limits.heartbeatIntervalMs * limits.missedHeartbeatsMax)
                        throw error
                    }
                    // The stream ended (its origin closed it, or died: a reset). What it sent before is still
                    // applied: an origin that died may never send it again, and a region holding less of its log
                    // than another could not take over from it.
                    await applier?.drained(withinMs: limits.heartbeatIntervalMs * limits.missedHeartbeatsMax)
                }
            }
        } catch {
            logger.warning("stream from \(origin.map(\.rawValue) ?? "an unidentified peer") ended", metadata: ["reason": "\((error as? MeridianError)?.message ?? "\(error)")"])
        }
        if let origin { inboundStates.withLock { $0[origin]?.connections -= 1 } }
    }

    /// An entry whose context and dependencies name only regions of this cluster: a peer's bytes never
    /// grow a key's causal context past the cluster's regions (contexts are joined on every apply).
    private func withClusterRegionsOnly(_ entry: ReplicationEntry) -> ReplicationEntry {
        let known = { (counters: [RegionName: UInt64]) in counters.filter { self.cluster.region($0.key) != nil } }
        let context = known(entry.context), dependencies = known(entry.dependencies)
        guard context.count != entry.context.count || dependencies.count != entry.dependencies.count else { return entry }
        return ReplicationEntry(origin: entry.origin, sequence: entry.sequence, hlc: entry.hlc, epoch: entry.epoch, keyspace: entry.keyspace,
                                key: entry.key, operation: entry.operation, contentType: entry.contentType, value: entry.value,
                                dependencies: dependencies, context: context, idempotency: entry.idempotency)
    }

    /// Applies what arrived on one inbound stream: everything queued since the last apply goes in one store
    /// transaction (``ApplyDurability``). A batch with a write some origin waits for (`majority` or `all`
    /// keyspaces) commits with its fsync; a batch of `async` keyspaces commits without one, readable at once, and a
    /// sync makes it durable. Either way one ack follows, with the durable point. Only durable points count toward
    /// `majority`/`all` and trimming at the origin, and only they reach the region machine (``Leadership``) and
    /// the stream's receiver: a machine crash before the sync loses a visible-first batch here, and the origin
    /// ships it again from the durable point.
    private func applyBatches(_ applier: BatchApplier, origin: RegionName, replies: AsyncStream<PeerFrame>.Continuation) async throws {
        defer { applier.stopped() }
        for await _ in applier.doorbell {
            while let work = applier.take() {
                switch work {
                case .apply(let from, let through, let entries, let held):
                    let applied: UInt64
                    // Entries of single-leader keyspaces pass the fence first: a deposed leader's unshipped writes
                    // are kept aside, and entries wait while an election this region took part in settles.
                    // The data keys of sealed values arrive before the values are applied (a CRDT delta opens
                    // there; reads open later without a round trip).
                    if held {
                        // A held entry's data key may be one its origin's commit is still making: fetched once durable.
                        do throws(MeridianError) {
                            try await bringDataKeys(for: entries.map { ($0.keyspace, $0.value) }, from: [origin])
                        } catch {
                            applier.putBack(from: from, through: through, entries: entries)
                            continue
                        }
                    } else {
                        try await bringDataKeys(for: entries.map { ($0.keyspace, $0.value) }, from: [origin])
                    }
                    let admitted = try await fence?.admit(entries)
                    let durability = ApplyDurability.of(entries, in: cluster)
                    let visible: UInt64
                    do {
                        let cleaned = entries.map(withClusterRegionsOnly)
                        if held {
                            // Shipped while the origin's fsync ran: the statements run now, the commit waits for the
                            // origin's durable point (the two fsyncs overlap), bounded so that a stalled origin does
                            // not hold this region's writer; then the range goes back and waits unheld.
                            guard let done = try await store.applyReplicatedOnceDurable(
                                origin: origin, from: from, through: through, entries: cleaned, diverted: admitted?.diverted ?? [:],
                                durable: durability == .durable, originDurable: { applier.waitForOrigin(through: through, timeoutMs: Self.heldApplyWaitMs) })
                            else {
                                if let admitted { fence?.committed(admitted, false) }
                                applier.putBack(from: from, through: through, entries: entries)
                                continue
                            }
                            visible = done
                        } else {
                            visible = try await store.applyReplicated(origin: origin, from: from, through: through, entries: cleaned,
                                                                      diverted: admitted?.diverted ?? [:], durable: durability == .durable)
                        }
                    } catch {
                        if let admitted { fence?.committed(admitted, false) }
                        applier.failed()
                        throw error
                    }
                    recordApplied(entries, origin: origin, applied: visible)
                    progress.signal()
                    do {
                        // A visible-first batch is acknowledged once, after its sync: the origin counts only durable
                        // points, so an ack of the visible one would be a frame through the WAN for nothing.
                        applied = durability == .durable ? visible : try await store.syncApplied()[origin] ?? 0
                    } catch {
                        // Applied and readable here, so held as far as this process goes; not durable, so never
                        // acknowledged as such. The stream ends and the origin ships the batch again from the durable point.
                        if let admitted { fence?.committed(admitted, true) }
                        applier.failed()
                        throw error
                    }
                    if let admitted { fence?.committed(admitted, true) }
                    applier.persisted(upTo: through)
                    replies.yield(.ack(applied: applied, visible: max(applied, visible), echoMs: monotonicMs))
                case .reacknowledge(let applied):
                    replies.yield(.ack(applied: applied, visible: max(applied, store.visibleHighWater()[origin] ?? 0), echoMs: monotonicMs))
                }
            }
        }
    }

    /// Counts a forwarded request in, within `forwards_inflight_max`; beyond it answers `overloaded` at once.
    /// The caller subtracts one when an admitted request is answered.
    private func admitForwarded(id: UInt64, replies: AsyncStream<PeerFrame>.Continuation) -> Bool {
        guard forwardsServed.add(1, ordering: .relaxed).newValue <= limits.forwardsInflightMax else {
            forwardsServed.subtract(1, ordering: .relaxed)
            let refused = MeridianError(.overloaded, "\(region) is serving \(limits.forwardsInflightMax) forwarded requests; retry shortly.")
            replies.yield(.forwardReply(ForwardedReply(id: id, answer: .refused(Refusal(refused)))))
            return false
        }
        return true
    }

    private func check(_ hello: PeerHello) throws(MeridianError) {
        guard hello.cluster == cluster.name else {
            throw MeridianError(.replicationProtocol, "A region of cluster '\(hello.cluster)' connected to cluster '\(cluster.name)'; check the peers' addresses.")
        }
        guard hello.to == region else {
            throw MeridianError(.replicationProtocol, "\(hello.from) meant to reach \(hello.to) but reached \(region); check the peers' addresses.")
        }
        guard hello.from != region, cluster.region(hello.from) != nil else {
            throw MeridianError(.replicationProtocol, "Region '\(hello.from)' is not a peer of \(region) in the cluster file.")
        }
    }

    /// With TLS, a stream speaks for the region its certificate names, whatever its hello claims.
    private func checkIdentity(_ hello: PeerHello, _ connection: PeerConnection) async throws {
        let certified: RegionName?
        do {
            certified = try await connection.certifiedRegion()
        } catch {
            metrics?.recordPeerRefusal(reason: "handshake")
            throw error
        }
        guard let certified, certified != hello.from else { return }
        metrics?.recordPeerRefusal(reason: "identity_mismatch")
        audit?.record(.authenticationFailed, ["peer_claimed": hello.from.rawValue, "peer_certificate": certified.rawValue, "reason": "identity_mismatch"])
        logger.error("refused a peer stream: its hello claims one region, its certificate proves another",
                     metadata: ["claimed": "\(hello.from)", "certificate": "\(certified)"])
        throw MeridianError(.unauthenticated, "The stream's hello claims \(hello.from), but its certificate is \(certified)'s; a region joins only as itself.")
    }

    /// Closes every open peer stream; each reconnects at once, with the TLS contexts current now.
    func reconnectAll() {
        for channel in openChannels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }

    private func heardFrom(_ origin: RegionName) {
        inboundStates.withLock { $0[origin, default: InboundState()].lastHeard = .now }
    }

    private func recordApplied(_ entries: [ReplicationEntry], origin: RegionName, applied: UInt64) {
        onApplied(entries)
        let now = wallClockMs()
        inboundStates.withLock { all in
            all[origin, default: InboundState()].freshness.advance(applied: applied)
            for entry in entries {
                all[origin, default: InboundState()].applyLagMs.record(now > entry.hlc.physicalMs ? now - entry.hlc.physicalMs : 0)
            }
        }
    }

    // MARK: - Timers

    private func tickAcks() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
            acks.tick()
        }
    }

    /// Trims the log once a second: a peer resumes from the applied point its welcome names, so what every
    /// peer acknowledged is no longer needed (up to the retention bound).
    private func maintain() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            let through = LogTrim.through(highWater: store.appliedHighWater()[region] ?? 0, floor: store.logFloor(),
                                          acknowledged: links.values.map(\.snapshot.acknowledged), settled: fence?.mayTrimAcknowledged() != false,
                                          retentionEntries: UInt64(limits.logRetentionEntries))
            if let through {
                do { try await store.trimLog(origin: region, through: through) } catch {
                    logger.warning("cannot trim the log", metadata: ["reason": "\(error.message)"])
                }
            }
        }
    }

    // MARK: - What the write path asks

    /// The regions this region can confirm writes with now: itself and every peer whose stream is up.
    func reachable() -> Set<RegionName> {
        var result: Set<RegionName> = [region]
        for (peer, link) in links where link.snapshot.health == .up { result.insert(peer) }
        return result
    }

    /// The peers this region's streams cannot reach now, sorted: its vote in the health verdicts.
    func unreachable() -> [RegionName] {
        links.filter { $0.value.snapshot.health != .up }.keys.sorted()
    }

    /// The health votes of the peers heard from within their silence limit (a silent peer has no vote).
    func healthReports() -> [RegionName: Set<RegionName>] {
        let states = inboundStates.withLock { $0 }
        let now = ContinuousClock.now
        var reports: [RegionName: Set<RegionName>] = [:]
        for (peer, state) in states where state.reported && state.connections > 0 {
            guard let heard = state.lastHeard, let link = links[peer], now - heard <= link.silenceLimit else { continue }
            reports[peer] = state.reportedUnreachable
        }
        return reports
    }

    /// Sends a frame on this region's stream to `peer`, if the stream is up (election messages: a lost one is
    /// like a dropped packet, which elections tolerate).
    func send(to peer: RegionName, _ frame: PeerFrame) {
        links[peer]?.send(frame)
    }

    /// This region's log is durable through `sequence` (a local write committed): it ships, and the peers hear so.
    func logGrew(to sequence: UInt64) {
        for link in links.values { link.durable(through: sequence) }
    }

    /// This region's log was written up to `sequence`, its commit's fsync under way: it ships now, and peers apply it
    /// once ``logGrew(to:)`` says it is durable (``CommitShipping``).
    func logWritten(to sequence: UInt64) {
        for link in links.values { link.logGrew(to: sequence) }
    }

    /// The commit of entries that may have shipped failed: the log ends at `sequence`, and every stream restarts, so
    /// that no peer keeps what it carried beyond.
    func commitFailed(logEndsAt sequence: UInt64) {
        for link in links.values { link.commitFailed(logEndsAt: sequence) }
    }

    /// Waits until enough replica regions applied a committed write, or the ack timeout passes.
    func confirm(sequence: UInt64, required: Int, replicas: [RegionName]) async throws(MeridianError) -> AckTracker.Resolution {
        try await acks.wait(sequence: sequence, required: required, replicas: replicas, timeoutMs: UInt64(limits.ackTimeoutMs))
    }

    /// Forwards a write or read to another region and waits for the answer: as long as the target may take
    /// (a write waits for its acks; a read may also wait to catch up first), plus the round trip and a margin.
    func forward(to target: RegionName, _ make: (UInt64) -> PeerFrame) async throws(MeridianError) -> ForwardedReply {
        guard let link = links[target] else {
            throw MeridianError(.regionUnavailable, "Region '\(target)' is not a peer of \(region); nothing was sent.", context: ["region": target.rawValue], applied: .no)
        }
        return try await link.forward(make, timeout: .milliseconds(limits.readWaitMs + limits.ackTimeoutMs + Int(cluster.wan.timeoutRttMs(region, target)) + 2_000))
    }

    /// Asks `leader` to hand `keyspace` over to `target`, over the stream to it; bounded by the hand-over's own
    /// wait (the ack timeout) plus the round trip.
    /// - Throws: `region_unavailable` when the stream to `leader` is down (nothing was sent) or closes first.
    func requestHandOver(from leader: RegionName, keyspace: KeyspaceName, to target: RegionName) async throws(MeridianError) -> HandOverOutcome {
        guard let link = links[leader] else {
            throw MeridianError(.regionUnavailable, "Region '\(leader)' is not a peer of \(region); nothing was sent.", context: ["region": leader.rawValue], applied: .no)
        }
        return try await link.requestHandOver(keyspace: keyspace, to: target,
                                              timeout: .milliseconds(limits.ackTimeoutMs + Int(cluster.wan.timeoutRttMs(region, leader)) + 2_000))
    }

    /// ``requestRepair(from:keyspace:_:)``'s answer or error, as a value (for a task group asking several peers).
    func repairResult(from peer: RegionName, keyspace: KeyspaceName, _ request: RepairRequest) async -> Result<RepairReply, MeridianError> {
        do {
            return .success(try await requestRepair(from: peer, keyspace: keyspace, request))
        } catch {
            return .failure(error)
        }
    }

    /// Asks `peer` for one step of an anti-entropy round over the stream to it, bounded by the round trip plus
    /// a margin for the peer's read.
    /// - Throws: `region_unavailable` when the stream is down (nothing was sent) or closes first.
    func requestRepair(from peer: RegionName, keyspace: KeyspaceName, _ request: RepairRequest) async throws(MeridianError) -> RepairReply {
        guard let link = links[peer] else {
            throw MeridianError(.regionUnavailable, "Region '\(peer)' is not a peer of \(region); nothing was sent.", context: ["region": peer.rawValue], applied: .no)
        }
        return try await link.requestRepair(keyspace: keyspace, request, timeout: .milliseconds(limits.readWaitMs + Int(cluster.wan.timeoutRttMs(region, peer)) + 2_000))
    }

    /// How current this region is, for admitting a read.
    func readView() -> Admission.ReadView {
        let now = monotonicMs
        let staleness = inboundStates.withLock { all in
            all.compactMapValues { $0.freshness.stalenessMs(now: now) }
        }
        return Admission.ReadView(applied: store.visibleHighWater(), stalenessMs: staleness, reachable: reachable())
    }

    /// Whether enough replica regions applied this region's write `sequence`.
    func isConfirmed(sequence: UInt64, required: Int, replicas: [RegionName]) -> Bool {
        acks.isConfirmed(sequence: sequence, required: required, replicas: replicas)
    }

    /// Per peer: the outbound stream's state and the inbound stream's.
    func peerStates() -> [RegionName: (outbound: OutboundLink.Snapshot, inbound: InboundState?)] {
        let inboundStates = inboundStates.withLock { $0 }
        return links.mapValues { ($0.snapshot, inboundStates[$0.peer]) }
    }
}

/// Writes waiting for `majority`/`all` confirmation: the core's ``AckTracker`` plus the suspended requests.
final class AckWaiters: Sendable {
    private struct State {
        var tracker: AckTracker
        var waiting: [UInt64: CheckedContinuation<Result<AckTracker.Resolution, MeridianError>, Never>] = [:]
    }

    private let state: Mutex<State>
    private let started = ContinuousClock.now

    init(origin: RegionName) {
        state = Mutex(State(tracker: AckTracker(origin: origin)))
    }

    private var nowMs: UInt64 {
        (ContinuousClock.now - started).wholeMilliseconds
    }

    func wait(sequence: UInt64, required: Int, replicas: [RegionName], timeoutMs: UInt64) async throws(MeridianError) -> AckTracker.Resolution {
        let deadline = nowMs + timeoutMs
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<AckTracker.Resolution, MeridianError>, Never>) in
            let immediate = state.withLock { state -> Result<AckTracker.Resolution, MeridianError>? in
                do throws(MeridianError) {
                    if let done = try state.tracker.register(sequence: sequence, required: required, replicas: replicas, deadlineMs: deadline) {
                        return .success(done)
                    }
                    state.waiting[sequence] = continuation
                    return nil
                } catch {
                    return .failure(error)
                }
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
        return try result.get()
    }

    func isConfirmed(sequence: UInt64, required: Int, replicas: [RegionName]) -> Bool {
        state.withLock { $0.tracker.isConfirmed(sequence: sequence, required: required, replicas: replicas) }
    }

    func peerApplied(_ peer: RegionName, upTo sequence: UInt64) {
        let resumes = state.withLock { state in
            state.tracker.peerApplied(peer, upTo: sequence).compactMap { resolution in
                state.waiting.removeValue(forKey: resolution.sequence).map { ($0, resolution) }
            }
        }
        for (continuation, resolution) in resumes { continuation.resume(returning: .success(resolution)) }
    }

    func tick() {
        let now = nowMs
        let resumes = state.withLock { state in
            state.tracker.tick(nowMs: now).compactMap { resolution in
                state.waiting.removeValue(forKey: resolution.sequence).map { ($0, resolution) }
            }
        }
        for (continuation, resolution) in resumes { continuation.resume(returning: .success(resolution)) }
    }
}

extension AckTracker.Resolution {
    var sequence: UInt64 {
        switch self {
        case .acknowledged(let sequence, _), .timedOut(let sequence, _, _): sequence
        }
    }
}

/// Batches received on one inbound stream and waiting to be applied. The core's ``LogReceiver`` checks each
/// batch as it arrives (order, gaps, origin); consecutive checked batches merge into one apply. The queue is
/// bounded by the origin's in-flight window: it sends nothing more until these are acknowledged.
final class BatchApplier: Sendable {
    enum Work: Sendable {
        /// `held`: the origin has not yet said the range is durable; the apply waits for it before its commit
        /// (``waitForOrigin(through:timeoutMs:)``), and is put back (``putBack(_:)``) if it does not come in time.
        case apply(from: UInt64, through: UInt64, entries: [ReplicationEntry], held: Bool)
        case reacknowledge(UInt64)
    }

    private struct State {
        var receiver: LogReceiver
        var queue = ApplyQueue()
        /// How far the origin said its log is durable on this stream: what is queued beyond it waits.
        var originDurable: UInt64 = 0
        /// When ranges beyond it may again be taken to apply held: a held apply that was put back (its origin's fsync
        /// took longer than the hold) suspends holding on this stream for a second, so that an origin with a slow disk
        /// does not hold this region's writer on every commit.
        var holdResumesAt: ContinuousClock.Instant?
        /// An apply waits for the durable point (``waitForOrigin(through:timeoutMs:)``), or the stream ended.
        var waiting = false
        var ended = false
    }

    private let state: Mutex<State>
    let doorbell: AsyncStream<Void>
    private let ring: AsyncStream<Void>.Continuation
    /// Ends when the applying task stops.
    private let done: AsyncStream<Void>
    private let doneOut: AsyncStream<Void>.Continuation

    /// Wakes an apply waiting for the origin's durable point.
    private let durableMoved = DispatchSemaphore(value: 0)

    init(receiver: LogReceiver) {
        state = Mutex(State(receiver: receiver))
        (doorbell, ring) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        (done, doneOut) = AsyncStream<Void>.makeStream()
    }

    /// A batch arrived: check it and queue what it adds.
    func received(from: UInt64, through: UInt64, entries: [ReplicationEntry]) throws(MeridianError) {
        try state.withLock { (state: inout State) throws(MeridianError) in
            state.queue.add(try state.receiver.received(from: from, through: through, entries: entries), from: from)
        }
        ring.yield()
    }

    /// The origin's log is durable through `sequence`: what is queued up to there may be applied.
    func originDurable(through sequence: UInt64) {
        let (raised, wake) = state.withLock { state in
            guard sequence > state.originDurable else { return (false, false) }
            state.originDurable = sequence
            return (true, state.waiting)
        }
        if wake { durableMoved.signal() }
        if raised { ring.yield() }
    }

    /// The next work: queued entries up to the origin's durable point; else the entries beyond it, to apply held
    /// (their commit waits for the durable point, and they are dropped with the stream if none covers them: the
    /// origin may have lost them with its commit); else an ack owed.
    func take() -> Work? {
        state.withLock { state in
            if let batch = state.queue.takeBatch(through: state.originDurable) {
                return .apply(from: batch.from, through: batch.through, entries: batch.entries, held: false)
            }
            if !state.ended, state.holdResumesAt.map({ ContinuousClock.now >= $0 }) ?? true, let batch = state.queue.takeBatch() {
                return .apply(from: batch.from, through: batch.through, entries: batch.entries, held: true)
            }
            return state.queue.takeReacknowledgement().map { .reacknowledge($0) }
        }
    }

    /// Blocks its thread (an apply's transaction, before its commit) until the origin says its log is durable through
    /// `sequence`, at most `timeoutMs`, or the stream ends. - Returns: Whether it is durable.
    func waitForOrigin(through sequence: UInt64, timeoutMs: Int) -> Bool {
        let deadline = DispatchTime.now() + .milliseconds(timeoutMs)
        while true {
            let done = state.withLock { state -> Bool? in
                if state.originDurable >= sequence {
                    state.waiting = false
                    return true
                }
                if state.ended {
                    state.waiting = false
                    return false
                }
                state.waiting = true
                return nil
            }
            if let done { return done }
            if durableMoved.wait(timeout: deadline) == .timedOut {
                return state.withLock { state in
                    state.waiting = false
                    return state.originDurable >= sequence
                }
            }
        }
    }

    /// A held range was not applied (its origin did not say it is durable in time, or its data keys are not yet
    /// committed there): it goes back in front of the queue, to be applied once the durable point covers it.
    func putBack(from: UInt64, through: UInt64, entries: [ReplicationEntry]) {
        state.withLock { state in
            state.queue.putBack(ApplyQueue.Batch(from: from, through: through, entries: entries))
            state.holdResumesAt = ContinuousClock.now + .seconds(1)
        }
    }

    func persisted(upTo sequence: UInt64) {
        state.withLock { _ = $0.receiver.persisted(upTo: sequence) }
    }

    func failed() {
        state.withLock { $0.receiver.persistFailed() }
    }

    /// No more batches will arrive: the applying task stops once it has applied what is queued up to the origin's
    /// durable point (a held apply stops waiting).
    func finish() {
        let wake = state.withLock { state in
            state.ended = true
            return state.waiting
        }
        if wake { durableMoved.signal() }
        ring.finish()
    }

    /// The applying task stopped (it applied everything queued, or failed, or was cancelled).
    func stopped() { doneOut.finish() }

    /// Waits until the applying task has applied what was queued before ``finish()`` and stopped, at most
    /// `withinMs` (the caller then cancels it, and the stream's next connection resends from the last ack).
    func drained(withinMs: Int) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for await _ in self.done {} }
            group.addTask { try? await Task.sleep(for: .milliseconds(withinMs)) }
            await group.next()
            group.cancelAll()
        }
    }
}

/// Wakes tasks waiting for this region's state to move (entries applied, freshness heard, peers' acks).
/// A waiter that misses a signal is still woken by its timeout, so a wait never outlives its bound.
final class ProgressSignal: Sendable {
    private enum Slot {
        /// Allocated, continuation not yet registered.
        case allocated
        case waiting(CheckedContinuation<Void, Never>)
        /// The timeout passed before the continuation was registered.
        case expired
    }

    private struct State {
        var next: UInt64 = 0
        var slots: [UInt64: Slot] = [:]
    }

    /// The most tasks that may wait at once; beyond it a waiter just sleeps out its timeout.
    static let waitersMax = 65_536
    private let state = Mutex(State())

    /// Wakes every waiter.
    func signal() {
        let woken = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            var woken: [CheckedContinuation<Void, Never>] = []
            for (id, slot) in state.slots {
                if case .waiting(let continuation) = slot {
                    woken.append(continuation)
                    state.slots[id] = nil
                }
            }
            return woken
        }
        for continuation in woken { continuation.resume() }
    }

    /// Returns at the next signal, or after `timeout`, whichever comes first.
    func wait(atMost timeout: Duration) async {
        let id: UInt64? = state.withLock { state in
            guard state.slots.count < Self.waitersMax else { return nil }
            state.next += 1
            state.slots[state.next] = .allocated
            return state.next
        }
        guard let id else {
            try? await Task.sleep(for: timeout)
            return
        }
        let timer = Task {
            do { try await Task.sleep(for: timeout) } catch { return }
            self.expire(id)
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { state -> Bool in
                if case .expired = state.slots[id] {
                    state.slots[id] = nil
                    return true
                }
                state.slots[id] = .waiting(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
        timer.cancel()
    }

    /// The timeout of waiter `id` passed. Every path removes the slot exactly once, so a late call finds
    /// nothing and leaves nothing behind.
    private func expire(_ id: UInt64) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            switch state.slots[id] {
            case .waiting(let continuation):
                state.slots[id] = nil
                return continuation
            case .allocated:
                state.slots[id] = .expired
                return nil
            case .expired, nil:
                return nil
            }
        }
        continuation?.resume()
    }
}
