import Foundation
import Histogram
import MeridianCore

/// Why a benchmark step failed, in a sentence.
public struct BenchFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The outcome of one benchmark phase.
public struct PhaseResult: Sendable {
    public var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    public var requests = 0
    public var failures = 0
    public var firstFailure: String?
    public var seconds: Double = 0

    public init() {}

    public var throughput: Double { seconds > 0 ? Double(requests) / seconds : 0 }

    public mutating func merge(_ other: PhaseResult) {
        histogram.add(other.histogram)
        requests += other.requests
        failures += other.failures
        firstFailure = firstFailure ?? other.firstFailure
    }

    public func requireSuccess(_ phase: String) throws {
        if failures > 0 { throw BenchFailure("\(phase): \(failures) of \(requests + failures) requests failed; first: \(firstFailure ?? "?")") }
    }

    public func printRow(_ name: String) {
        print(row(name))
    }

    /// The phase's line of a results table: requests, throughput, p50, p99, p99.9 and max latency in ms.
    public func row(_ name: String) -> String {
        func ms(_ percentile: Double) -> String { String(format: "%8.3f", Double(histogram.valueAtPercentile(percentile)) / 1000) }
        return name.padding(toLength: 25, withPad: " ", startingAt: 0)
            + String(format: "%10d %14.0f", requests, throughput)
            + " \(ms(50)) \(ms(99)) \(ms(99.9))  " + String(format: "%8.3f", Double(histogram.max) / 1000)
    }
}

/// Keep-alive connections driven by one task each.
public struct ConnectionPool: Sendable {
    public let connections: [HTTPConnection]

    public static func open(_ target: Endpoint, count: Int) async throws -> ConnectionPool {
        try await open([target], count: count)
    }

    /// `count` connections spread over `targets` in turn (nodes of one region behind a load balancer).
    public static func open(_ targets: [Endpoint], count: Int) async throws -> ConnectionPool {
        var connections: [HTTPConnection] = []
        for index in 0..<count {
            let target = targets[index % targets.count]
            connections.append(try await HTTPConnection.connect(host: target.host, port: target.port))
        }
        return ConnectionPool(connections: connections)
    }

    public func close() async {
        for connection in connections { await connection.close() }
    }

    /// Runs requests on every connection until `seconds` pass or `requestsMax` were sent.
    /// - Parameter ratePerSecond: When set, requests start on a fixed schedule (open loop) and latency counts from
    ///   the scheduled start, so a stall is charged to every request it delayed (no coordinated omission).
    public func run(seconds: Double, requestsMax: Int = .max, ratePerSecond: Double? = nil,
             _ body: @escaping @Sendable (HTTPConnection, Int) async throws -> HTTPResult) async throws -> PhaseResult {
        let counter = RequestCounter(limit: requestsMax)
        let started = ContinuousClock.now
        let deadline = started + .milliseconds(Int64(seconds * 1000))
        let intervalNs = ratePerSecond.map { Double(connections.count) / $0 * 1e9 }
        var total = PhaseResult()
        try await withThrowingTaskGroup(of: PhaseResult.self) { group in
            for (slot, connection) in connections.enumerated() {
                group.addTask {
                    var result = PhaseResult()
                    var scheduled = started + .nanoseconds(Int64((intervalNs ?? 0) * Double(slot) / Double(connections.count)))
                    while ContinuousClock.now < deadline, let index = counter.next() {
                        if let intervalNs {
                            if scheduled > ContinuousClock.now { try await Task.sleep(until: scheduled, clock: .continuous) }
                        } else {
                            scheduled = ContinuousClock.now
                        }
                        do {
                            let response = try await body(connection, index)
                            if (200..<300).contains(response.status) {
                                let elapsed = ContinuousClock.now - scheduled
                                _ = result.histogram.record(UInt64(max(1, elapsed.components.seconds * 1_000_000 + elapsed.components.attoseconds / 1_000_000_000_000)))
                                result.requests += 1
                            } else {
                                result.failures += 1
                                if result.firstFailure == nil { result.firstFailure = "HTTP \(response.status): \(response.text.prefix(200))" }
                            }
                        } catch {
                            result.failures += 1
                            if result.firstFailure == nil { result.firstFailure = "\(error)" }
                            if result.failures > 100 { break }
                        }
                        if let intervalNs { scheduled = scheduled + .nanoseconds(Int64(intervalNs)) }
                    }
                    return result
                }
            }
            for try await result in group { total.merge(result) }
        }
        let elapsed = ContinuousClock.now - started
        total.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return total
    }
}

/// Hands out request numbers up to a limit, shared by the pool's tasks.
final class RequestCounter: @unchecked Sendable {
    // Safety: `value` is guarded by `lock`.
    private let lock = NSLock()
    private var value = 0
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    func next() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard value < limit else { return nil }
        value += 1
        return value - 1
    }
}
