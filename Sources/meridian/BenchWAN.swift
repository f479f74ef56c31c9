import ArgumentParser
import Foundation
import Histogram
import MeridianHarness
import MeridianCore
import MeridianWAN
import NIOCore
import NIOPosix

extension Bench {
    struct WAN: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "wan",
            abstract: "WAN emulator fidelity: the measured round trip through every link's proxy against its configured RTT.",
            discussion: "Starts its own emulator for the cluster (demo by default) on free ports, with an echo server behind every region, and pings through each directed link. Build with -c release.")

        @OptionGroup var cluster: ConfigOption
        @Option(help: "Multiply every delay.") var latencyScale: Double?
        @Option(help: "Pings per link.") var pings: Int = 50
        @Option(help: "Bytes per ping.") var pingBytes: Int = 64

        func validate() throws {
            guard (1...10_000).contains(pings) else { throw ValidationError("--pings must be 1 to 10000.") }
            guard (1...65_536).contains(pingBytes) else { throw ValidationError("--ping-bytes must be 1 to 65536.") }
        }

        func run() async throws {
            let config = try cluster.load()
            var echoes: [RegionName: any Channel] = [:]
            var listens: [DirectedLink: Endpoint] = [:]
            for region in config.regions {
                echoes[region.name] = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Echo()) } }
                    .bind(host: "127.0.0.1", port: 0).get()
            }
            let table = WANTable(cluster: config, latencyScale: latencyScale)
            for link in table.links { listens[link] = Endpoint(host: "127.0.0.1", port: try LocalProcesses.freePort()) }
            let emulator = WANEmulator(cluster: config, latencyScale: latencyScale, listenOverrides: listens,
                                       targetOverrides: echoes.mapValues { Endpoint(host: "127.0.0.1", port: $0.localAddress!.port!) })
            try await emulator.start()
            say("meridian bench wan: \(pings) pings of \(pingBytes) bytes per link, latency scale \(table.latencyScale)")
            say("LINK                          RTT ms   FLOOR ms  p50 ms    p99 ms    p50 error   within 5% or 1 ms")
            var misses = 0
            for link in table.links {
                let histogram = try await ping(listens[link]!)
                let configured = table.rttMs(link.from, link.to) * table.latencyScale
                let floor = Self.floorMs(link) .map { String(format: "%8.1f", $0 * table.latencyScale) } ?? "       -"
                let p50 = Double(histogram.valueAtPercentile(50)) / 1000, p99 = Double(histogram.valueAtPercentile(99)) / 1000
                let error = p50 - configured
                let ok = abs(error) <= max(configured * 0.05, 1)
                if !ok { misses += 1 }
                say("\(link)".padding(toLength: 30, withPad: " ", startingAt: 0)
                    + String(format: "%6.1f  ", configured) + floor + String(format: "  %8.3f  %8.3f  %+8.3f    ", p50, p99, error) + (ok ? "yes" : "NO"))
            }
            await emulator.stop()
            for echo in echoes.values { try? await echo.close() }
            if misses > 0 { throw CLIFailure("\(misses) links missed the fidelity target") }
        }

        private func ping(_ endpoint: Endpoint) async throws -> Histogram<UInt64> {
            let collector = PingCollector()
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) } }
                .connect(host: endpoint.host, port: endpoint.port).get()
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
            let payload = [UInt8](repeating: 0x2A, count: pingBytes)
            for index in 1...pings {
                let started = ContinuousClock.now
                try await channel.writeAndFlush(ByteBuffer(bytes: payload))
                try await collector.wait(until: index * pingBytes, timeoutSeconds: 30, eventLoop: channel.eventLoop)
                let elapsed = ContinuousClock.now - started
                _ = histogram.record(UInt64(elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000))
            }
            try await channel.close()
            return histogram
        }

        /// The fiber floor RTT from shared/latency/rtt-ms.csv for the demo's pairs, when known.
        static func floorMs(_ link: DirectedLink) -> Double? { DemoCluster.fiberFloorMs(link.from, link.to) }
    }
}

/// Echoes every byte back.
private final class Echo: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.writeAndFlush(data, promise: nil) }
}

/// Counts echoed bytes and wakes the pinger when its ping is back.
private final class PingCollector: ChannelInboundHandler, @unchecked Sendable {
    // Safety: `count` and `waiter` are guarded by `lock`.
    typealias InboundIn = ByteBuffer
    private let lock = NSLock()
    private var count = 0
    private var waiter: (target: Int, continuation: CheckedContinuation<Void, any Error>)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data).readableBytes
        lock.lock()
        count += bytes
        var ready: CheckedContinuation<Void, any Error>?
        if let current = waiter, count >= current.target { ready = current.continuation; waiter = nil }
        lock.unlock()
        ready?.resume()
    }

    func channelInactive(context: ChannelHandlerContext) {
        lock.lock()
        let pending = waiter
        waiter = nil
        lock.unlock()
        pending?.continuation.resume(throwing: CLIFailure("the WAN proxy closed the connection"))
    }

    /// Waits until `target` bytes came back, at most `timeoutSeconds`.
    func wait(until target: Int, timeoutSeconds: Int64, eventLoop: any EventLoop) async throws {
        try await withCheckedThrowingContinuation { continuation in
            lock.lock()
            if count >= target {
                lock.unlock()
                continuation.resume()
                return
            }
            waiter = (target, continuation)
            lock.unlock()
            eventLoop.scheduleTask(in: .seconds(timeoutSeconds)) {
                self.lock.lock()
                let expired = self.waiter?.target == target ? self.waiter : nil
                if expired != nil { self.waiter = nil }
                let received = self.count
                self.lock.unlock()
                expired?.continuation.resume(throwing: CLIFailure("no echo within \(timeoutSeconds) s: \(received) of \(target) bytes came back"))
            }
        }
    }
}
