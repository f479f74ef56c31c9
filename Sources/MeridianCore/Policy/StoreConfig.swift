import Foundation

/// Where a region keeps its data (`regions[].store` in the cluster file).
public enum RegionStoreConfig: Sendable, Hashable, Encodable {
    /// An embedded SQLite file in the node's data directory (the default): one node per region.
    case sqlite
    /// A PostgreSQL database of the region's own, which several nodes of the region may share.
    case postgres(PostgresStoreConfig)

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .sqlite: try container.encode(["kind": "sqlite"])
        case .postgres(let config): try container.encode(config)
        }
    }
}

/// A region's PostgreSQL database: where it is and how to authenticate, never the password itself.
public struct PostgresStoreConfig: Sendable, Hashable, Encodable {
    /// How the connection is encrypted, as libpq's `sslmode` names it.
    public enum TLSMode: String, Sendable, Hashable, CaseIterable, Encodable {
        /// Plaintext (a database on the same machine or a private network only).
        case disable
        /// Encrypted, the server's certificate not checked.
        case require
        /// Encrypted, the server's certificate checked against the trusted roots (`sslrootcert`, or the system's) and
        /// its name against the host.
        case verifyFull = "verify-full"
    }

    /// Where the password comes from when the server asks for one.
    public enum PasswordSource: Sendable, Hashable, Encodable {
        /// An environment variable of the node's process.
        case environment(String)
        /// A file (its first line), such as a mounted Kubernetes Secret.
        case file(String)

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .environment(let name): try container.encode(["password_env": name])
            case .file(let path): try container.encode(["password_file": path])
            }
        }
    }

    public let host: String
    public let port: Int
    public let user: String
    public let database: String
    public let tls: TLSMode
    /// The CA bundle (PEM) that verifies the server for `verify-full` (nil: the system's roots).
    public let rootCertificateFile: String?
    public let password: PasswordSource?
    /// How long the region's lease outlives its holder's last renewal (`lease_ttl_ms`): a standby node serves the region
    /// about this long after the holder died. Renewals go every fifth of it, and the holder stops a fifth before it.
    public let leaseTTLMs: UInt64

    /// The range `lease_ttl_ms` takes: long enough for renewals on a loaded machine, short enough that a takeover
    /// stays a matter of seconds.
    public static let leaseTTLMsRange: ClosedRange<Int> = 1_500...60_000
    public static let leaseTTLMsDefault: UInt64 = 5_000

    /// The URL without a password, as the file gives it (for status and logs).
    public var url: String {
        var text = "postgres://\(user)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)?sslmode=\(tls.rawValue)"
        if let rootCertificateFile { text += "&sslrootcert=\(rootCertificateFile)" }
        return text
    }

    public init(host: String, port: Int = 5432, user: String, database: String, tls: TLSMode, rootCertificateFile: String? = nil,
                password: PasswordSource? = nil, leaseTTLMs: UInt64 = Self.leaseTTLMsDefault) {
        self.leaseTTLMs = leaseTTLMs
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self.tls = tls
        self.rootCertificateFile = rootCertificateFile
        self.password = password
    }

    /// Why a URL is not a region's database.
    public struct URLProblem: Error, Sendable {
        public let message: String
    }

    /// Parses `postgres://user@host[:port]/database[?sslmode=...&sslrootcert=...]`.
    /// - Returns: The configuration, or why the URL is not one (a sentence to show after the field's path).
    public static func parse(url text: String, password: PasswordSource?, leaseTTLMs: UInt64 = leaseTTLMsDefault) -> Result<PostgresStoreConfig, URLProblem> {
        guard let components = URLComponents(string: text), let scheme = components.scheme, ["postgres", "postgresql"].contains(scheme) else {
            return .failure(URLProblem(message: "'\(text)' is not a PostgreSQL URL; use postgres://user@host:5432/database?sslmode=verify-full"))
        }
        guard components.password == nil else {
            return .failure(URLProblem(message: "the URL holds a password; keep it out of the cluster file and give password_env or password_file instead"))
        }
        guard let user = components.user, !user.isEmpty else { return .failure(URLProblem(message: "the URL names no user; use postgres://user@host/database")) }
        // An IPv6 address comes in brackets.
        guard let host = components.host.map({ $0.hasPrefix("[") && $0.hasSuffix("]") ? String($0.dropFirst().dropLast()) : $0 }), !host.isEmpty else { return .failure(URLProblem(message: "the URL names no host; use postgres://user@host/database")) }
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else { return .failure(URLProblem(message: "port \(port) is out of range; use 1 to 65535")) }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else {
            return .failure(URLProblem(message: "the URL names no database; use postgres://user@host/database (one database per region)"))
        }
        var tls = TLSMode.verifyFull
        var rootCertificateFile: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value.flatMap(TLSMode.init(rawValue:)) else {
                    return .failure(URLProblem(message: "sslmode '\(item.value ?? "")' is not supported; use \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))"))
                }
                tls = mode
            case "sslrootcert":
                guard let path = item.value, !path.isEmpty else { return .failure(URLProblem(message: "sslrootcert needs a file path")) }
                rootCertificateFile = path
            default:
                return .failure(URLProblem(message: "the URL parameter '\(item.name)' is not supported; use sslmode and sslrootcert"))
            }
        }
        if rootCertificateFile != nil && tls != .verifyFull {
            return .failure(URLProblem(message: "sslrootcert verifies the server only with sslmode=verify-full"))
        }
        return .success(PostgresStoreConfig(host: host, port: port, user: user, database: database, tls: tls, rootCertificateFile: rootCertificateFile,
                                            password: password, leaseTTLMs: leaseTTLMs))
    }
}

extension ConfigParser {
    /// A region's `store` field: `{kind: sqlite}` or `{kind: postgres, url: ..., password_env | password_file: ...}`.
    func parseStore(_ value: YAMLValue) throws(ConfigProblem) -> RegionStoreConfig {
        let fields = try value.mapping(allowed: ["kind", "url", "password_env", "password_file", "lease_ttl_ms"])
        guard let kind = fields["kind"] else { throw ConfigProblem(path: value.child("kind"), message: "give the store's kind: sqlite or postgres") }
        switch try kind.string() {
        case "sqlite":
            if let extra = ["url", "password_env", "password_file", "lease_ttl_ms"].first(where: { fields[$0] != nil }) {
                throw ConfigProblem(path: value.child(extra), message: "a sqlite store keeps its file in the node's data directory and takes no \(extra)")
            }
            return .sqlite
        case "postgres":
            guard let url = fields["url"] else {
                throw ConfigProblem(path: value.child("url"), message: "a postgres store needs a url: postgres://user@host:5432/database?sslmode=verify-full")
            }
            var password: PostgresStoreConfig.PasswordSource?
            switch (fields["password_env"], fields["password_file"]) {
            case (.some(let name), .some): throw ConfigProblem(path: name.path, message: "give password_env or password_file, not both")
            case (.some(let name), nil):
                let text = try name.string()
                guard !text.isEmpty, text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
                    throw ConfigProblem(path: name.path, message: "'\(text)' is not an environment variable's name (letters, digits and _)")
                }
                password = .environment(text)
            case (nil, .some(let file)):
                let text = try file.string()
                guard !text.isEmpty else { throw ConfigProblem(path: file.path, message: "give the password file's path") }
                password = .file(text)
            case (nil, nil): password = nil
            }
            let leaseTTLMs = try fields["lease_ttl_ms"].map { field throws(ConfigProblem) in
                UInt64(try field.int(in: PostgresStoreConfig.leaseTTLMsRange))
            } ?? PostgresStoreConfig.leaseTTLMsDefault
            switch PostgresStoreConfig.parse(url: try url.string(), password: password, leaseTTLMs: leaseTTLMs) {
            case .success(let config): return .postgres(config)
            case .failure(let problem): throw ConfigProblem(path: url.path, message: problem.message)
            }
        case let other:
            throw ConfigProblem(path: kind.path, message: "unknown store kind '\(other)'; use sqlite or postgres")
        }
    }
}
