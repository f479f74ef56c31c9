import Foundation
import MeridianCore

/// Everything a cluster needs to run with TLS and tokens, made in one directory: what `meridian up --secure`
/// (and the drills' `--secure`) use. Files already there are kept, so a restart keeps its CA and keys.
///
///     DIRECTORY/signing.key        the token signing key (0600)
///     DIRECTORY/certs/ca.pem ...   the CA, its key (0600), every region's certificate and key (0600)
///     DIRECTORY/admin.token        an admin token valid 24 h (0600)
public struct SecureSetup: Sendable {
    /// The `session_secret` and `auth` sections to append to the cluster file.
    public let authSections: String
    /// The `tls` section to append to the cluster file.
    public let tlsSection: String
    /// Both.
    public var sections: String { authSections + tlsSection }
    /// A token for every keyspace and operation.
    public let adminToken: String
    /// Where that token is written.
    public let adminTokenPath: String
    /// The CA bundle clients verify the regions by.
    public let caPath: String

    /// Creates (or reuses) the keys and certificates for the cluster `yaml` describes.
    public static func prepare(directory: String, yaml: String) async throws(MeridianError) -> SecureSetup {
        let config = try ClusterConfig.parse(yaml: yaml, file: "<secure>")
        try SecretFile.makeDirectory(directory)
        let root = URL(fileURLWithPath: directory).standardizedFileURL.path
        let certificates = "\(root)/certs"
        try SecretFile.makeDirectory(certificates)
        let fileManager = FileManager.default

        let signingPath = "\(root)/signing.key"
        let issuer: TokenIssuer
        if fileManager.fileExists(atPath: signingPath) {
            issuer = try TokenIssuer.load(path: signingPath, keyID: "up-1", auth: nil)
        } else {
            issuer = try TokenIssuer.generate(keyID: "up-1")
            try SecretFile.write(issuer.pemRepresentation, to: signingPath)
        }

        let certificateFiles = CertificateDirectory(certificates)
        let authority = certificateFiles.hasAuthority ? try certificateFiles.authority() : try certificateFiles.createAuthority(cluster: config.name)
        for region in config.regions where !fileManager.fileExists(atPath: certificateFiles.file("\(region.name).pem")) {
            try certificateFiles.issue(authority, cluster: config.name, region: region)
        }

        let now = UInt64(Date().timeIntervalSince1970 * 1000)
        let admin = try await issuer.issue(cluster: config.name, principal: "admin", scope: AccessScope(keyspaces: ["*"], operations: [.read, .write, .admin]),
                                           ttlSeconds: 86_400, nowMs: now)
        let tokenPath = "\(root)/admin.token"
        try SecretFile.write(admin.token + "\n", to: tokenPath)
        let secret = config.sessionSecret == nil ? "session_secret: \((0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined())\n" : ""
        let authSections = """

            \(secret)auth:
              keys: [{ id: \(issuer.keyID), public_key: \(issuer.verificationKey.encodedPublicKey) }]

            """
        let tlsSection = """
            tls:
              ca: \(certificates)/ca.pem
              cert: \(certificates)/{region}.pem
              key: \(certificates)/{region}.key

            """
        return SecureSetup(authSections: authSections, tlsSection: tlsSection, adminToken: admin.token, adminTokenPath: tokenPath,
                           caPath: "\(certificates)/ca.pem")
    }
}
