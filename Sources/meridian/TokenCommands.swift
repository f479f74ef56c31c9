import ArgumentParser
import Foundation
import MeridianCore
import MeridianHarness
import MeridianSecurity

/// `meridian token`: signing keys and client tokens.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Create signing keys, issue client tokens, and revoke them.",
        subcommands: [Keygen.self, Issue.self, Revoke.self])

    struct Keygen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a signing key (PEM, mode 0600) and print the auth.keys entry for the cluster file.")

        @Option(help: "Where to write the signing key.") var out = "meridian-signing.key"
        @Option(help: "The key's id in the cluster file (default: from its public key).") var id: String?
        @Flag(help: "Replace an existing key file.") var force = false

        func run() async throws {
            if FileManager.default.fileExists(atPath: out) && !force {
                throw CLIFailure("\(out) exists; pass --force to replace it (tokens it signed stop verifying once its public key leaves the cluster file).")
            }
            if let id, !Principal.validName(id) || id.utf8.count > 64 {
                throw ValidationError("--id must be 1 to 64 printable characters without spaces.")
            }
            let issuer: TokenIssuer
            do throws(MeridianError) {
                issuer = try TokenIssuer.generate(keyID: id)
                try SecretFile.write(issuer.pemRepresentation, to: out)
            } catch {
                throw CLIFailure(error.message)
            }
            let key = issuer.verificationKey
            FileHandle.standardError.write(Data("wrote the signing key to \(out) (mode 0600); add its public half to the cluster file:\n".utf8))
            print("""
                auth:
                  keys:
                    - id: \(key.id)
                      public_key: \(key.encodedPublicKey)
                """)
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign a client token; prints the token on stdout and its id and expiry on stderr.",
            discussion: "Example: meridian token issue --config cluster.yaml --signing-key meridian-signing.key --principal checkout --keyspace carts --ops read,write --ttl 24h")

        @OptionGroup var cluster: ConfigOption
        @Option(name: .customLong("signing-key"), help: "The signing key file (`meridian token keygen`).") var signingKey: String
        @Option(name: .customLong("key-id"), help: "The key's id (default: the cluster file's entry for its public key).") var keyID: String?
        @Option(help: "Who the token speaks for.") var principal: String
        @Option(help: "A keyspace the token covers, or '*' for every keyspace; repeat or separate with commas.") var keyspace: [String]
        @Option(help: "The operations it allows: read, write, admin (comma-separated).") var ops: String
        @Option(help: "How long it is valid: 90s, 30m, 24h, 7d.") var ttl = "24h"
        @Option(help: "Only keys starting with this prefix.") var prefix: String?
        @Option(help: "Only these regions accept it (comma-separated; default: every region).") var regions: String?
        @Flag(help: "Print a JSON object (token, id, expires_at_ms) instead.") var json = false

        func run() async throws {
            let config = try cluster.load(connecting: false)
            guard let auth = config.auth else {
                throw CLIFailure("The cluster file has no auth section, so its regions accept requests without tokens. Add one: `meridian token keygen` prints it.")
            }
            let keyspaces = keyspace.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
            for name in keyspaces where name != AccessScope.everyKeyspace {
                guard let parsed = try? KeyspaceName(name), config.keyspace(parsed) != nil, !name.hasPrefix(AccessRule.systemKeyspacePrefix) else {
                    throw ValidationError("--keyspace '\(name)' is not a keyspace of this cluster; its keyspaces are \(config.keyspaces.map(\.name.rawValue).filter { !$0.hasPrefix("_") }.joined(separator: ", ")), or '*'.")
                }
            }
            var operations: Set<AccessOperation> = []
            for op in ops.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                guard let operation = AccessOperation(rawValue: op) else { throw ValidationError("--ops '\(op)' is not read, write or admin.") }
                operations.insert(operation)
            }
            var regionNames: [RegionName]?
            if let regions {
                regionNames = []
                for name in regions.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                    guard let region = try? RegionName(name), config.region(region) != nil else {
                        throw ValidationError("--regions '\(name)' is not a region of this cluster; its regions are \(config.regions.map(\.name.rawValue).joined(separator: ", ")).")
                    }
                    regionNames?.append(region)
                }
            }
            guard let ttlSeconds = Self.seconds(ttl) else { throw ValidationError("--ttl '\(ttl)' is not a duration like 90s, 30m, 24h or 7d.") }
            guard ttlSeconds <= auth.tokenTTLMaxSeconds else {
                throw ValidationError("--ttl \(ttl) is longer than the cluster allows (auth.token_ttl_max_hours: \(auth.tokenTTLMaxSeconds / 3600)).")
            }
            let issued: IssuedToken
            do throws(MeridianError) {
                let issuer = try TokenIssuer.load(path: signingKey, keyID: keyID, auth: auth)
                let scope = AccessScope(keyspaces: keyspaces, operations: operations, keyPrefix: prefix, regions: regionNames)
                issued = try await issuer.issue(cluster: config.name, principal: principal, scope: scope, ttlSeconds: ttlSeconds,
                                                nowMs: UInt64(Date().timeIntervalSince1970 * 1000))
            } catch {
                throw CLIFailure(error.message)
            }
            do {
                if json {
                    let object: [String: Any] = ["token": issued.token, "id": issued.id, "expires_at_ms": issued.expiresAtMs]
                    print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
                } else {
                    print(issued.token)
                    let expiry = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(issued.expiresAtMs) / 1000))
                    FileHandle.standardError.write(Data("token id \(issued.id) for '\(principal)', valid until \(expiry)\n".utf8))
                }
            }
        }

        /// A duration like `90s`, `30m`, `24h` or `7d`, in seconds.
        static func seconds(_ text: String) -> UInt64? {
            guard let unit = text.last, let count = UInt64(text.dropLast()), count > 0 else { return nil }
            let scale: UInt64? = switch unit {
            case "s": 1
            case "m": 60
            case "h": 3600
            case "d": 86_400
            default: nil
            }
            guard let scale else { return nil }
            let (seconds, overflow) = count.multipliedReportingOverflow(by: scale)
            return overflow ? nil : seconds
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a token in every region (needs an admin token: --token or MERIDIAN_TOKEN).",
            discussion: "Give the token's id (as `token issue` printed it) or the token itself. The region you call revokes it at once; the others learn it through replication.")

        @OptionGroup var target: TargetOptions
        @Argument(help: "The token id, or the whole token.") var token: String

        func run() async throws {
            var body: [String: Any] = [:]
            if token.split(separator: ".").count == 3, let claims = Self.unverifiedClaims(token) {
                // Read only to name the token and how long its revocation must last; the node checks nothing from it.
                body["id"] = claims["jti"] as? String
                if let exp = claims["exp"] as? Double, exp > 0, exp < 1e11 { body["expires_at_ms"] = UInt64(exp * 1000) }
            } else {
                body["id"] = token
            }
            guard body["id"] != nil else { throw ValidationError("The token carries no id (jti); pass the id instead.") }
            let connection = try await target.connect()
            defer { Task { await connection.close() } }
            let result = try await connection.request("POST", "/v1/admin/tokens/revoke", headers: [("Content-Type", "application/json")],
                                                      body: Array(try JSONSerialization.data(withJSONObject: body)))
            try report(result, verbose: false)
        }

        static func unverifiedClaims(_ token: String) -> [String: Any]? {
            let parts = token.split(separator: ".")
            guard parts.count == 3, let payload = Base64URL.decode(parts[1].utf8) else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any]
        }
    }
}
