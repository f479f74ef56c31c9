import Crypto
import Foundation
import MeridianCore
import SwiftASN1
import X509

/// The cluster's certificate authority and the certificates it issues to regions: P-256 keys, ECDSA-SHA256
/// signatures (what every TLS 1.3 stack verifies), and a region's identity in a SAN URI,
/// `meridian://CLUSTER/region/REGION`, which peers read instead of trusting what a hello says.
///
/// Files in the certificate directory: `ca.pem` (the trust bundle every region loads: the current CA, plus the
/// previous one during a rotation), `ca.key` (the current CA's key, kept by whoever issues certificates),
/// `ca-current.pem` (the current CA alone), and `REGION.pem`/`REGION.key` per region.
public struct CertificateAuthority: Sendable {
    /// The CA's certificate.
    public let certificate: Certificate
    let key: Certificate.PrivateKey

    /// How long a CA is valid.
    public static let caLifetimeDays = 3650
    /// How long a region's certificate is valid by default.
    public static let leafLifetimeDays = 90
    /// Certificates start an hour in the past: machines' clocks differ, and TLS checks validity against each one's own.
    static let backdateSeconds: TimeInterval = 3600

    /// Creates a new CA for `cluster`; `generation` tells successive CAs apart (their names differ, so a bundle
    /// holding both during a rotation builds each chain to the right issuer).
    public static func create(cluster: String, generation: Int, now: Date = Date()) throws(MeridianError) -> CertificateAuthority {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        do {
            let name = try DistinguishedName {
                OrganizationName("Meridian")
                CommonName("Meridian CA \(cluster) #\(generation)")
            }
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
                notValidBefore: now - backdateSeconds, notValidAfter: now + TimeInterval(caLifetimeDays) * 86_400,
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                    Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                    SubjectKeyIdentifier(hash: key.publicKey)
                },
                issuerPrivateKey: key)
            return CertificateAuthority(certificate: certificate, key: key)
        } catch {
            throw MeridianError(.internalError, "Creating the CA failed: \(error)")
        }
    }

    /// Loads a CA from its certificate and key files.
    public static func load(certificatePath: String, keyPath: String) throws(MeridianError) -> CertificateAuthority {
        let certificate = try Self.certificates(certificatePath).first!
        let keyPEM = try SecretFile.read(keyPath, what: "the CA's key")
        let key: Certificate.PrivateKey
        do { key = try Certificate.PrivateKey(pemEncoded: keyPEM) } catch {
            throw MeridianError(.invalidConfig, "\(keyPath): not a private key in PEM: \(error)", context: ["file": keyPath])
        }
        guard key.publicKey == certificate.publicKey else {
            throw MeridianError(.invalidConfig, "\(keyPath) is not the key of \(certificatePath); they must come from the same `meridian certs init` or `rotate`.",
                                context: ["file": keyPath])
        }
        return CertificateAuthority(certificate: certificate, key: key)
    }

    /// The CA's generation, from its name (`#N`), 1 when absent.
    public var generation: Int {
        let name = certificate.subject.description
        guard let hash = name.lastIndex(of: "#") else { return 1 }
        return Int(name[name.index(after: hash)...].prefix(while: \.isNumber)) ?? 1
    }

    /// Issues a region's certificate.
    /// - Parameters:
    ///   - hosts: Names and addresses the region is reached at (DNS names and IP literals), beside its URI.
    public func issue(cluster: String, region: RegionName, hosts: [String], lifetimeDays: Int = leafLifetimeDays,
                      now: Date = Date()) throws(MeridianError) -> (certificatePEM: String, keyPEM: String) {
        let leafKey = Certificate.PrivateKey(P256.Signing.PrivateKey())
        var names: [GeneralName] = [.uniformResourceIdentifier(RegionIdentity.uri(cluster: cluster, region: region))]
        for host in Set(hosts).sorted() {
            if let address = RegionIdentity.ipAddressBytes(host) {
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))))
            } else {
                names.append(.dnsName(host))
            }
        }
        do {
            let leaf = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: leafKey.publicKey,
                notValidBefore: now - Self.backdateSeconds, notValidAfter: now + TimeInterval(lifetimeDays) * 86_400,
                issuer: certificate.subject,
                subject: try DistinguishedName {
                    OrganizationName("Meridian")
                    CommonName("\(cluster)/\(region)")
                },
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth, .clientAuth])
                    SubjectAlternativeNames(names)
                    SubjectKeyIdentifier(hash: leafKey.publicKey)
                    AuthorityKeyIdentifier(keyIdentifier: try certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
                },
                issuerPrivateKey: key)
            return (try leaf.serializeAsPEM().pemString + "\n", try leafKey.serializeAsPEM().pemString + "\n")
        } catch {
            throw MeridianError(.internalError, "Issuing the certificate of \(region) failed: \(error)")
        }
    }

    public var certificatePEM: String { ((try? certificate.serializeAsPEM().pemString) ?? "") + "\n" }

    /// A trust bundle of several CAs: their PEM blocks, one after the other.
    public static func bundle(_ authorities: [CertificateAuthority]) -> String {
        authorities.map(\.certificatePEM).joined()
    }
    public var keyPEM: String { ((try? key.serializeAsPEM().pemString) ?? "") + "\n" }

    /// Every certificate in a PEM file (a bundle may hold several).
    /// - Throws: `MeridianError` `invalid_config` naming the file and what is wrong.
    public static func certificates(_ path: String) throws(MeridianError) -> [Certificate] {
        let text = try SecretFile.read(path, what: "certificates")
        var found: [Certificate] = []
        do {
            for document in try PEMDocument.parseMultiple(pemString: text) {
                guard document.discriminator == "CERTIFICATE" else {
                    throw MeridianError(.invalidConfig, "\(path) holds a \(document.discriminator); expected CERTIFICATE blocks.", context: ["file": path])
                }
                found.append(try Certificate(derEncoded: document.derBytes))
            }
        } catch let error as MeridianError {
            throw error
        } catch {
            throw MeridianError(.invalidConfig, "\(path): not a PEM certificate: \(error)", context: ["file": path])
        }
        guard !found.isEmpty else {
            throw MeridianError(.invalidConfig, "\(path) holds no certificate (expected -----BEGIN CERTIFICATE----- blocks).", context: ["file": path])
        }
        return found
    }
}

/// A region's identity in its certificate.
public enum RegionIdentity {
    /// The SAN URI naming a region of a cluster.
    public static func uri(cluster: String, region: RegionName) -> String {
        "meridian://\(cluster)/region/\(region)"
    }

    /// The region a certificate names for `cluster`: exactly one `meridian://CLUSTER/region/REGION` URI.
    /// - Throws: `MeridianError` `unauthenticated` saying what the certificate lacks.
    public static func region(of certificate: Certificate, cluster: String) throws(MeridianError) -> RegionName {
        let names: SubjectAlternativeNames
        do {
            names = try certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames()
        } catch {
            throw MeridianError(.unauthenticated, "The peer's certificate has an unreadable subject alternative name extension.")
        }
        var regions: [String] = []
        let prefix = "meridian://\(cluster)/region/"
        for name in names {
            guard case .uniformResourceIdentifier(let uri) = name, uri.hasPrefix("meridian://") else { continue }
            guard uri.hasPrefix(prefix) else {
                throw MeridianError(.unauthenticated, "The peer's certificate names \(uri.prefix(120)), not a region of cluster '\(cluster)'.")
            }
            regions.append(String(uri.dropFirst(prefix.count)))
        }
        guard regions.count == 1, let name = regions.first, let region = try? RegionName(name) else {
            throw MeridianError(.unauthenticated, "The peer's certificate must name exactly one region as \(prefix)REGION; it names \(regions.count).")
        }
        return region
    }

    /// The bytes of an IPv4 or IPv6 literal, nil for a name.
    static func ipAddressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}
