import Foundation
import MeridianCore

/// A certificate directory, as `meridian certs` and `meridian up --secure` keep it:
///
///     ca.pem            the trust bundle every region loads (the current CA; during a rotation, the previous too)
///     ca-current.pem    the current CA alone
///     ca-previous.pem   the CA being rotated out, until the rotation finishes
///     ca.key            the current CA's key (0600; keep it off the regions)
///     REGION.pem        a region's certificate, REGION.key its key (0600)
public struct CertificateDirectory: Sendable {
    public let path: String

    public init(_ path: String) {
        self.path = path
    }

    public func file(_ name: String) -> String { "\(path)/\(name)" }
    public var bundlePath: String { file("ca.pem") }
    public var hasAuthority: Bool { FileManager.default.fileExists(atPath: file("ca.key")) }

    /// The current CA, from `ca-current.pem` and `ca.key`.
    public func authority() throws(MeridianError) -> CertificateAuthority {
        try CertificateAuthority.load(certificatePath: file("ca-current.pem"), keyPath: file("ca.key"))
    }

    /// Creates the cluster's first CA and a bundle trusting it.
    public func createAuthority(cluster: String) throws(MeridianError) -> CertificateAuthority {
        try SecretFile.makeDirectory(path)
        let authority = try CertificateAuthority.create(cluster: cluster, generation: 1)
        try SecretFile.write(authority.keyPEM, to: file("ca.key"))
        try SecretFile.write(authority.certificatePEM, to: file("ca-current.pem"), mode: 0o644)
        try SecretFile.write(authority.certificatePEM, to: bundlePath, mode: 0o644)
        return authority
    }

    /// Issues `region`'s certificate and key from `authority`, for its URI, `localhost`, the loopback addresses,
    /// the hosts of its addresses in the cluster file, and `hosts`.
    public func issue(_ authority: CertificateAuthority, cluster: String, region: RegionConfig, hosts: [String] = [],
                      lifetimeDays: Int = CertificateAuthority.leafLifetimeDays) throws(MeridianError) {
        let issued = try authority.issue(cluster: cluster, region: region.name,
                                         hosts: ["localhost", "127.0.0.1", "::1", region.client.host, region.peer.host] + hosts, lifetimeDays: lifetimeDays)
        try SecretFile.write(issued.keyPEM, to: file("\(region.name).key"))
        try SecretFile.write(issued.certificatePEM, to: file("\(region.name).pem"), mode: 0o644)
    }

    /// Starts a rotation: a new CA becomes current, and the bundle trusts it and the previous one.
    public func startRotation(cluster: String) throws(MeridianError) -> (previous: CertificateAuthority, next: CertificateAuthority) {
        let current = try authority()
        let next = try CertificateAuthority.create(cluster: cluster, generation: current.generation + 1)
        try SecretFile.write(current.certificatePEM, to: file("ca-previous.pem"), mode: 0o644)
        try SecretFile.write(CertificateAuthority.bundle([next, current]), to: bundlePath, mode: 0o644)
        try SecretFile.write(next.keyPEM, to: file("ca.key"))
        try SecretFile.write(next.certificatePEM, to: file("ca-current.pem"), mode: 0o644)
        return (current, next)
    }

    /// Finishes a rotation: the bundle trusts only the current CA.
    public func finishRotation() throws(MeridianError) -> CertificateAuthority {
        let current = try authority()
        try SecretFile.write(current.certificatePEM, to: bundlePath, mode: 0o644)
        try? FileManager.default.removeItem(atPath: file("ca-previous.pem"))
        return current
    }
}
