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
        var directory: CertificateDirectory { CertificateDirectory(dir) }

        func authority() throws -> CertificateAuthority {
            do throws(MeridianError) {
                return try directory.authority()
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
            if options.directory.hasAuthority && !force {
                throw CLIFailure("\(options.path("ca.key")) exists; to replace the CA without breaking the cluster use `meridian certs rotate`, or pass --force.")
            }
            do throws(MeridianError) {
                _ = try options.directory.createAuthority(cluster: config.name)
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
                do throws(MeridianError) {
                    try options.directory.issue(authority, cluster: config.name, region: config.region(region)!, hosts: host, lifetimeDays: days)
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
            _ = try options.authority()
            do throws(MeridianError) {
                if finish {
                    let current = try options.directory.finishRotation()
                    print("ca.pem now trusts only \(current.certificate.subject); regions reload it within tls.reload_interval_ms (or on SIGHUP)")
                    return
                }
                let (current, next) = try options.directory.startRotation(cluster: config.name)
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
