// The nemesis as a test, opt-in: `MERIDIAN_NEMESIS_SECONDS=120 [MERIDIAN_NEMESIS_SEED=7] swift test --filter
// NemesisLiveTests`. It runs the nemesis library that `meridian nemesis` runs (real processes on free ports,
// every fault kind, every checker) and fails with its report when any check fails. CI runs the command itself
// in `.ci/run`.
import Foundation
import MeridianDrills
import MeridianHarness
import Testing

extension LiveTests {
    @Suite struct NemesisLiveTests {
        static let seconds = ProcessInfo.processInfo.environment["MERIDIAN_NEMESIS_SECONDS"].flatMap(Double.init)
        static let seed = ProcessInfo.processInfo.environment["MERIDIAN_NEMESIS_SEED"].flatMap(UInt64.init) ?? 1

        @Test(.enabled(if: seconds != nil, "set MERIDIAN_NEMESIS_SECONDS to run the nemesis"), .timeLimit(.minutes(60)))
        func theNemesisFindsNoViolation() async throws {
            let seconds = try #require(Self.seconds)
            let scratch = try Scratch()
            let cluster = try NemesisCluster(directory: scratch.path, latencyScale: 0.1, executable: MeridianBinary.path)
            let run = NemesisRun(cluster: cluster, seed: Self.seed, kinds: Fault.Kind.allCases, faultSeconds: 4)
            var report: NemesisRun.Report?
            do {
                try await cluster.start()
                report = try await run.execute(durationSeconds: seconds, settleSeconds: 90)
            } catch {
                await cluster.stop()
                throw error
            }
            await cluster.stop()
            let found = try #require(report)
            #expect(found.violations.isEmpty, "nemesis, seed \(Self.seed), \(seconds) s (logs in \(scratch.path)):\n\(found.text)")
            if found.violations.isEmpty { scratch.remove() }
        }
    }
}
