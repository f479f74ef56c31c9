// The nemesis as a test, opt-in: `MERIDIAN_NEMESIS_SECONDS=120 [MERIDIAN_NEMESIS_SEED=7] swift test --filter
// NemesisLiveTests`. It runs `meridian nemesis` (real processes on free ports, every fault kind, every checker)
// and fails with its report when any check fails. CI runs the same command directly in `.ci/run`.
import Foundation
import Testing

@Suite struct NemesisLiveTests {
    static let seconds = ProcessInfo.processInfo.environment["MERIDIAN_NEMESIS_SECONDS"].flatMap(Double.init)
    static let seed = ProcessInfo.processInfo.environment["MERIDIAN_NEMESIS_SEED"].flatMap(UInt64.init) ?? 1

    @Test(.enabled(if: seconds != nil, "set MERIDIAN_NEMESIS_SECONDS to run the nemesis"), .timeLimit(.minutes(60)))
    func theNemesisFindsNoViolation() throws {
        let seconds = try #require(Self.seconds)
        // Load and faults, then up to 90 s to converge, the checks, and the start-up.
        let result = try runCLI(["nemesis", "--duration", String(seconds), "--seed", String(Self.seed)], timeoutSeconds: seconds + 240)
        #expect(result.status == 0, "meridian nemesis --duration \(seconds) --seed \(Self.seed):\n\(result.stdout)\n\(result.stderr)")
        #expect(result.stdout.contains("violations: none"), "\(result.stdout)")
    }
}
