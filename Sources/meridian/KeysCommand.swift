import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness

struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keys", abstract: "Manage the regions' root keys.", subcommands: [KeysRotate.self])
}

struct KeysRotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Start a new key-encryption epoch in a region: wrap every data key again under a new root key, then destroy the old one.",
        discussion: "Values are not rewritten. Once the old epoch is destroyed, a copy of the key table taken before (an old backup) no longer opens. The node keeps serving; a rotation cut short goes on when run again (POST /v1/admin/keys/rotate).")

    @OptionGroup var target: TargetOptions
    @Flag(help: "Rotate every region of the cluster, one after another.") var all = false

    func run() async throws {
        if all {
            let config = try target.cluster.load()
            for region in config.regions {
                let connection: HTTPConnection
                do {
                    connection = try await HTTPConnection.connect(host: region.client.host, port: region.client.port, timeoutSeconds: 30)
                } catch {
                    throw CLIFailure("cannot reach \(region.name) at \(region.client)")
                }
                try await rotate(connection)
                await connection.close()
            }
            return
        }
        let connection = try await target.connect()
        defer { Task { await connection.close() } }
        try await rotate(connection)
    }

    private func rotate(_ connection: HTTPConnection) async throws {
        let result = try await connection.request("POST", "/v1/admin/keys/rotate")
        try report(result, verbose: false, printBody: false)
        let answer = (try? JSONSerialization.jsonObject(with: Data(result.body))) as? [String: Any] ?? [:]
        print("\(answer["region"] as? String ?? "?"): epoch \(answer["epoch"] as? String ?? "?"), \(answer["rewrapped"] as? String ?? "?") data keys wrapped again, epochs \(answer["destroyed_epochs"] as? String ?? "?") destroyed")
    }
}
