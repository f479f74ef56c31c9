import ArgumentParser
import NIOCore
import NIOPosix

/// The `meridian` command: run regions, talk to them, measure them.
@main
struct Meridian: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meridian",
        abstract: "Meridian: a geo-distributed, multi-region data store.",
        subcommands: [
            Up.self, NodeCommand.self, GatewayCommand.self, WANCommand.self, Chaos.self, ConfigCommand.self,
            Put.self, Get.self, Del.self, Ls.self, Status.self, Repair.self, Failover.self, Failovers.self, Divergence.self, Erase.self, Backup.self, Restore.self, ResidencyCommand.self, AuditCommand.self, KeysCommand.self, Gameday.self, Nemesis.self,
            Bench.self, Sim.self, TokenCommand.self, CertsCommand.self,
        ])

    /// Runs Swift concurrency on NIO's event loops before anything else, so a request is decoded, handled and
    /// answered without hopping between NIO's threads and the cooperative pool (measured: those hops cost more
    /// than a point read itself). The program's main task runs on the main thread, as the install requires.
    static func main() async {
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        let arguments: [String]? = nil
        await (main as ([String]?) async -> Void)(arguments)
    }
}
