import ArgumentParser
import Foundation
import MeridianCore
import MeridianSecurity

/// `meridian certs`: the cluster CA and the regions' certificates, with no external tools.
struct CertsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs", abstract: "Create the cluster CA, issue region certificates, and rotate the CA.",
        discussion: """
            Files in --dir: ca.pem (the trust bundle every region loads), ca.key (the CA's key: keep it off the regions),
            ca-current.pem, and REGION.pem / REGION.key per region. Keys are written with mode 0600.
            Rotating the CA takes three steps, each once every region has picked up the last (nodes reload within
            tls.reload_interval_ms, or at once on SIGHUP):
              meridian certs rotate            # a new CA; ca.pem trusts the old and the new
              meridian certs issue --all       # every region's certificate from the new CA
              meridian certs rotate --finish   # ca.pem trusts only the new CA
            """,
        subcommands: [Init.self, Issue.self, Rotate.self])

    struct Directory: ParsableArguments {
        @OptionGroup var cluster: ConfigOption
        @Option(help: "The certificate directory.") var dir = "certs"

        func path(_ name: String) -> String { "\(dir)/\(name)" }

        func authority() throws -> CertificateAuthority {
            do throws(MeridianError) {
                return try CertificateAuthority.load(certificatePath: path("ca-current.pem"), keyPath: path("ca.key"))
            } catch {
                throw CLIFailure("\(error.message) (create a CA with `meridian certs init --dir \(dir)`)")
            }
        }
    }

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create the cluster's CA in --dir (ca.pem, ca-current.pem, ca.key).")
        @OptionGroup var options: Directory
        @Flag(help: "Replace an existing CA (every certificate it issued stops being trusted).") var force = false

        func run() async throws {
            let config = try options.cluster.load(connecting: false)
            if FileManager.default.fileExists(atPath: options.path("ca.key")) && !force {
                throw CLIFailure("\(options.path("ca.key")) exists; to replace the CA without breaking the cluster use `meridian certs rotate`, or pass --force.")
            }
            do throws(MeridianError) {
                try SecretFile.makeDirectory(options.dir)
                let authority = try CertificateAuthority.create(cluster: config.name, generation: 1)
                try SecretFile.write(authority.keyPEM, to: options.path("ca.key"))
                try SecretFile.write(authority.certificatePEM, to: options.path("ca-current.pem"), mode: 0o644)
                try SecretFile.write(authority.certificatePEM, to: options.path("ca.pem"), mode: 0o644)
            } catch {
                throw CLIFailure(error.message)
            }
            print("created the CA of cluster '\(config.name)' in \(options.dir)/ (ca.pem, ca-current.pem, ca.key); next: meridian certs issue --all --dir \(options.dir)")
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue a region's certificate and key (REGION.pem, REGION.key) from the CA.")
        @OptionGroup var options: Directory
        @Option(help: "A region to issue for; repeat for several.") var region: [String] = []
        @Flag(help: "Issue for every region of the cluster file.") var all = false
        @Option(help: "An extra host name or address the region is reached at; repeat for several.") var host: [String] = []
        @Option(help: "Days the certificate is valid.") var days = CertificateAuthority.leafLifetimeDays

        func run() async throws {
            let config = try options.cluster.load(connecting: false)
            guard (1...3650).contains(days) else { throw ValidationError("--days must be 1 to 3650.") }
            var regions: [RegionName] = all ? config.regions.map(\.name) : []
            for name in region {
                guard let parsed = try? RegionName(name), config.region(parsed) != nil else {
                    throw ValidationError("--region '\(name)' is not a region of this cluster; its regions are \(config.regions.map(\.name.rawValue).joined(separator: ", ")).")
                }
                if !regions.contains(parsed) { regions.append(parsed) }
            }
            guard !regions.isEmpty else { throw ValidationError("Name a region with --region, or pass --all.") }
            let authority = try options.authority()
            for region in regions {
                let own = config.region(region)!
                let hosts = ["localhost", "127.0.0.1", "::1", own.client.host, own.peer.host] + host
                do throws(MeridianError) {
                    let issued = try authority.issue(cluster: config.name, region: region, hosts: hosts, lifetimeDays: days)
                    try SecretFile.write(issued.keyPEM, to: options.path("\(region).key"))
                    try SecretFile.write(issued.certificatePEM, to: options.path("\(region).pem"), mode: 0o644)
                } catch {
                    throw CLIFailure(error.message)
                }
                print("issued \(options.path("\(region).pem")) and \(options.path("\(region).key")) for \(RegionIdentity.uri(cluster: config.name, region: region)), valid \(days) days")
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a CA rotation (a new CA, trusted beside the old one), or --finish it (trust only the new one).")
        @OptionGroup var options: Directory
        @Flag(help: "Drop the previous CA from ca.pem: run once every region runs a certificate of the new CA.") var finish = false

        func run() async throws {
            let config = try options.cluster.load(connecting: false)
            let current = try options.authority()
            do throws(MeridianError) {
                if finish {
                    try SecretFile.write(current.certificatePEM, to: options.path("ca.pem"), mode: 0o644)
                    try? FileManager.default.removeItem(atPath: options.path("ca-previous.pem"))
                    print("ca.pem now trusts only \(current.certificate.subject); regions reload it within tls.reload_interval_ms (or on SIGHUP)")
                    return
                }
                let next = try CertificateAuthority.create(cluster: config.name, generation: current.generation + 1)
                try SecretFile.write(current.certificatePEM, to: options.path("ca-previous.pem"), mode: 0o644)
                try SecretFile.write(CertificateAuthority.bundle([next, current]), to: options.path("ca.pem"), mode: 0o644)
                try SecretFile.write(next.keyPEM, to: options.path("ca.key"))
                try SecretFile.write(next.certificatePEM, to: options.path("ca-current.pem"), mode: 0o644)
                print("""
                    created CA #\(next.generation); ca.pem trusts it and CA #\(current.generation).
                    Next, once every region has ca.pem (they reload it within tls.reload_interval_ms, or on SIGHUP):
                      meridian certs issue --all --dir \(options.dir)
                    and once every region runs its new certificate:
                      meridian certs rotate --finish --dir \(options.dir)
                    """)
            } catch {
                throw CLIFailure(error.message)
            }
        }
    }
}
