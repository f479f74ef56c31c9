import ArgumentParser
import Foundation
import MeridianHarness
import MeridianCore
import MeridianDrills
import Synchronization

/// `meridian gameday`: a failure drill against a running local cluster (`meridian up`), measured from the
/// client's side.
struct Gameday: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a failover drill against a running local cluster and report RTO and RPO as clients saw them.",
        discussion: """
            Each round: a steady write load (through the regions that do not lead, so writes are forwarded to the \
            leader), then the leader region's process is killed with SIGKILL. RTO is the time from the kill until \
            every writer has had a write acknowledged again; RPO counts acknowledged writes the cluster no longer \
            has (and those kept aside in divergence logs). The killed region is started again with its own command \
            line, every region's Merkle root of the keyspace is compared, and (with failback) leadership is \
            awaited back at the first region of the failover order.
            With --soak-seconds the drill kills nothing: it runs the load with --jitter-percent latency jitter on \
            every link and counts failovers, each of which is a false one.
            """)

    @OptionGroup var cluster: ConfigOption
    @Option(help: "The single-leader keyspace (default: the first one with a failover order).") var keyspace: String?
    @Option(help: "Failovers to run.") var rounds: Int = 3
    @Option(help: "Concurrent writers.") var writers: Int = 4
    @Option(help: "Seconds of load before each kill.") var warmupSeconds: Double = 3
    @Option(help: "Seconds the killed region stays down.") var downSeconds: Double = 5
    @Option(help: "Seconds to wait for failback and for the regions to agree.") var settleSeconds: Double = 60
    @Option(help: "Instead of killing: seconds of load under jitter, counting failovers (all false).") var soakSeconds: Double = 0
    @Option(help: "Latency jitter during the soak, in percent of each link's delay.") var jitterPercent: Double = 50

    func validate() throws {
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds is 1 to 100.") }
        guard (1...64).contains(writers) else { throw ValidationError("--writers is 1 to 64.") }
        guard warmupSeconds >= 0, downSeconds >= 0, settleSeconds > 0, soakSeconds >= 0, (0...100).contains(jitterPercent) else {
            throw ValidationError("Durations are positive seconds; --jitter-percent is 0 to 100.")
        }
    }

    func run() async throws {
        let config = try cluster.load()
        let policies = config.keyspaces.filter { $0.topology == .singleLeader && $0.failover != nil }
        guard let policy = keyspace.map({ name in policies.first { $0.name.rawValue == name } }) ?? policies.first else {
            throw CLIFailure("No single-leader keyspace with a failover order\(keyspace.map { " named '\($0)'" } ?? "") in the cluster file.")
        }
        let drill = Drill(config: config, policy: policy, writers: writers)
        print("game day: keyspace \(policy.name) (ack \(policy.ack.rawValue)), failover order \(policy.failover!.order.map(\.rawValue).joined(separator: " > ")), \(writers) writers")
        if soakSeconds > 0 {
            try await drill.soak(seconds: soakSeconds, jitterPercent: jitterPercent)
            return
        }
        var results: [Drill.Round] = []
        for round in 1...rounds {
            let result = try await drill.round(round, warmupSeconds: warmupSeconds, downSeconds: downSeconds, settleSeconds: settleSeconds)
            results.append(result)
            print(result.line)
        }
        Drill.summarize(results)
        if results.contains(where: { $0.lost > 0 || !$0.agreed }) { throw CLIFailure("the drill found lost writes or regions that disagree; see above.") }
    }
}

