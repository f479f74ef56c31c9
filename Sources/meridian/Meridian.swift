import ArgumentParser

/// The `meridian` command: run regions, talk to them, measure them.
@main
struct Meridian: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meridian",
        abstract: "Meridian: a geo-distributed, multi-region data store.",
        subcommands: [
            Up.self, NodeCommand.self, ConfigCommand.self,
            Put.self, Get.self, Del.self, Ls.self, Status.self,
            Bench.self,
        ])
}
