import ArgumentParser
import MeridianCore
import MeridianSimulator

struct Sim: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the deterministic simulator: regions replicating and electing leaders under latency, partitions, crashes, pauses and clock skew.",
        discussion: "Each seed replays exactly. Exits non-zero when an invariant breaks, printing the failing seed.")

    @Option(help: "The first seed.") var seed: UInt64 = 1
    @Option(help: "How many consecutive seeds to run.") var seeds: Int = 1
    @Option(help: "Random steps (writes and faults) per run.") var steps: Int = 300
    @Option(help: "Regions per run, 3 to 5.") var regions: Int = 3
    @Flag(help: "Lose one region for good (process and disk) at a random step of every run.") var loseARegion = false
    @Flag(help: "Print every run's report, not only failures.") var verbose = false
    @Flag(help: "Print what every region machine logs (elections, terms, hand-overs, failback), with the simulated time.") var trace = false
    @Option(help: "Break one rule of the region machine on purpose, to see the run catch it: \(RegionMachine.PlantedBug.allCases.map(\.rawValue).joined(separator: ", ")).")
    var plantedBug: RegionMachine.PlantedBug?

    func validate() throws {
        guard (3...5).contains(regions) else { throw ValidationError("--regions must be 3 to 5.") }
        guard (1...1_000_000).contains(seeds) else { throw ValidationError("--seeds must be 1 to 1000000.") }
        guard (0...1_000_000).contains(steps) else { throw ValidationError("--steps must be 0 to 1000000.") }
    }

    func run() throws {
        var failed: [UInt64] = []
        var acknowledged = 0, writes = 0, crashes = 0, partitions = 0
        for offset in 0..<seeds {
            var simulation = Simulation(.init(seed: seed + UInt64(offset), steps: steps, regions: regions, loseARegion: loseARegion, plantedBug: plantedBug))
            if trace { simulation.trace = { print($0) } }
            let report = simulation.run()
            writes += report.writes
            acknowledged += report.acknowledged
            crashes += report.crashes
            partitions += report.partitions
            if !report.passed { failed.append(report.seed) }
            if verbose || !report.passed { print(report) }
            if !report.passed {
                print("replay: meridian sim --seed \(report.seed) --steps \(steps) --regions \(regions)\(loseARegion ? " --lose-a-region" : "")\(plantedBug.map { " --planted-bug \($0.rawValue)" } ?? "") --verbose --trace")
            }
        }
        print("\(seeds - failed.count) passed, \(failed.count) failed: \(seeds) seeds, \(writes) writes, \(acknowledged) majority-acknowledged, \(crashes) crashes, \(partitions) partitions")
        if !failed.isEmpty { throw CLIFailure("invariants broken for seeds \(failed.map(String.init).joined(separator: ", "))") }
    }
}

extension RegionMachine.PlantedBug: ExpressibleByArgument {}
