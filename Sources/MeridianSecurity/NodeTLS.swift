import Crypto
import Foundation
import MeridianCore
import NIOCore
import NIOSSL
import NIOTLS
import SwiftASN1
import Synchronization
import X509

/// One node's TLS: contexts for its peer listener, its peer dials and its client API, built from the files the
/// cluster file names, and rebuilt when those files change. Connections opened after a reload use the new
/// contexts; open ones keep theirs until they reconnect.
public final class NodeTLS: Sendable {
    /// The contexts built from one version of the files.
    public struct Contexts: Sendable {
        public let peerServer: NIOSSLContext
        public let peerClient: NIOSSLContext
        /// nil when the client API speaks plain HTTP.
        public let apiServer: NIOSSLContext?
        /// When this region's certificate expires.
        public let notValidAfter: Date
        /// The subjects of the CAs trusted.
        public let trusted: [String]
    }

    /// What a check of the files found.
    public enum Reload: Sendable {
        case unchanged
        case reloaded(Contexts)
        /// The files changed but do not make a working set (half-written, mismatched); the old contexts stay.
        case failed(MeridianError)
    }

    public let config: TLSConfig
    public let region: RegionName
    public let cluster: String
    private let state: Mutex<(contexts: Contexts, fingerprint: [UInt8])>

    /// Loads the node's certificate, key and trust bundle.
    /// - Throws: `MeridianError` `invalid_config` naming the file and what is wrong: unreadable, not PEM, a key
    ///   that is not the certificate's, a certificate for another region or cluster, or one the bundle does not trust.
    public init(config: TLSConfig, region: RegionName, cluster: String) throws(MeridianError) {
        self.config = config
        self.region = region
        self.cluster = cluster
        let (files, fingerprint) = try Self.read(config, region)
        state = Mutex((try Self.build(config, region: region, cluster: cluster, files: files), fingerprint))
    }

    public var contexts: Contexts { state.withLock { $0.contexts } }

    /// Re-reads the files; rebuilds the contexts when they changed and make a working set.
    public func reloadIfChanged() -> Reload {
        do throws(MeridianError) {
            let (files, fingerprint) = try Self.read(config, region)
            guard fingerprint != state.withLock({ $0.fingerprint }) else { return .unchanged }
            let contexts = try Self.build(config, region: region, cluster: cluster, files: files)
            state.withLock { $0 = (contexts, fingerprint) }
            return .reloaded(contexts)
        } catch {
            return .failed(error)
        }
    }

    private struct Files {
        let ca: String
        let certificate: String
        let key: String
    }

    private static func read(_ config: TLSConfig, _ region: RegionName) throws(MeridianError) -> (Files, [UInt8]) {
        let files = Files(ca: try SecretFile.read(config.ca, what: "the CA bundle"),
                          certificate: try SecretFile.read(config.certificatePath(region), what: "the region's certificate"),
                          key: try SecretFile.read(config.keyPath(region), what: "the region's key"))
        var hash = SHA256()
        for text in [files.ca, files.certificate, files.key] {
            hash.update(data: Data(text.utf8))
            hash.update(data: [0])
        }
        return (files, Array(hash.finalize()))
    }

    private static func build(_ config: TLSConfig, region: RegionName, cluster: String, files: Files) throws(MeridianError) -> Contexts {
        let caPath = config.ca, certificatePath = config.certificatePath(region), keyPath = config.keyPath(region)
        // Checked with swift-certificates first, so each problem gets a sentence naming its file.
        let authorities = try parse(files.ca, path: caPath)
        let chain = try parse(files.certificate, path: certificatePath)
        let leaf = chain[0]
        let key: Certificate.PrivateKey
        do { key = try Certificate.PrivateKey(pemEncoded: files.key) } catch {
            throw MeridianError(.invalidConfig, "\(keyPath): not a private key in PEM.", context: ["file": keyPath])
        }
        guard key.publicKey == leaf.publicKey else {
            throw MeridianError(.invalidConfig, "\(keyPath) is not the key of \(certificatePath) (mid-rotation? both files must come from the same `meridian certs issue`).",
                                context: ["file": keyPath])
        }
        let named: RegionName
        do { named = try RegionIdentity.region(of: leaf, cluster: cluster) } catch {
            throw MeridianError(.invalidConfig, "\(certificatePath): \(error.message) Issue one with `meridian certs issue --region \(region)`.", context: ["file": certificatePath])
        }
        guard named == region else {
            throw MeridianError(.invalidConfig, "\(certificatePath) is the certificate of \(named), not of \(region): a region joins only with its own certificate.",
                                context: ["file": certificatePath])
        }
        guard authorities.contains(where: { $0.subject == leaf.issuer }) else {
            throw MeridianError(.invalidConfig, "\(certificatePath) was issued by \(leaf.issuer), which \(caPath) does not hold; its peers would refuse it.",
                                context: ["file": certificatePath])
        }
        func loaded<T>(_ path: String, _ load: () throws -> T) throws(MeridianError) -> T {
            do { return try load() } catch {
                throw MeridianError(.invalidConfig, "\(path): TLS cannot load it (\(error)); is every PEM block whole, each on its own lines?", context: ["file": path])
            }
        }
        let roots = try loaded(caPath) { try NIOSSLCertificate.fromPEMBytes(Array(files.ca.utf8)) }
        let sslChain = try loaded(certificatePath) { try NIOSSLCertificate.fromPEMBytes(Array(files.certificate.utf8)).map { NIOSSLCertificateSource.certificate($0) } }
        let sslKey = try loaded(keyPath) { NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(bytes: Array(files.key.utf8), format: .pem)) }
        do {
            func server(_ verification: CertificateVerification) throws -> NIOSSLContext {
                var tls = TLSConfiguration.makeServerConfiguration(certificateChain: sslChain, privateKey: sslKey)
                tls.minimumTLSVersion = .tlsv13
                tls.trustRoots = .certificates(roots)
                tls.certificateVerification = verification
                return try NIOSSLContext(configuration: tls)
            }
            var client = TLSConfiguration.makeClientConfiguration()
            client.minimumTLSVersion = .tlsv13
            client.trustRoots = .certificates(roots)
            client.certificateChain = sslChain
            client.privateKey = sslKey
            // Peers are reached through the WAN emulator or by address: the identity that matters is the
            // region in the certificate, checked after the handshake, not a host name.
            client.certificateVerification = .noHostnameVerification
            let apiVerification: CertificateVerification = switch config.clientCertificates {
            case .none: .none
            case .optional: .optionalVerification
            case .required: .noHostnameVerification
            }
            return Contexts(peerServer: try server(.noHostnameVerification), peerClient: try NIOSSLContext(configuration: client),
                            apiServer: config.clientAPI ? try server(apiVerification) : nil,
                            notValidAfter: leaf.notValidAfter, trusted: authorities.map { $0.subject.description })
        } catch {
            throw MeridianError(.invalidConfig, "\(certificatePath), \(keyPath) or \(caPath) cannot be used for TLS: \(error)", context: ["file": certificatePath])
        }
    }

    private static func parse(_ text: String, path: String) throws(MeridianError) -> [Certificate] {
        var found: [Certificate] = []
        do {
            for document in try PEMDocument.parseMultiple(pemString: text) where document.discriminator == "CERTIFICATE" {
                found.append(try Certificate(derEncoded: document.derBytes))
            }
        } catch {
            throw MeridianError(.invalidConfig, "\(path): not a PEM certificate: \(error)", context: ["file": path])
        }
        guard !found.isEmpty else {
            throw MeridianError(.invalidConfig, "\(path) holds no certificate (expected -----BEGIN CERTIFICATE----- blocks).", context: ["file": path])
        }
        return found
    }

    // MARK: - Peer streams

    /// Adds TLS to a peer stream's channel: the server side of an accepted stream, or the client side of a dial
    /// to `expected`. The future names the region the other end's certificate proves, once the handshake is
    /// done; it fails (and the channel closes) when there is no such certificate, or it names another region.
    public func securePeerChannel(_ channel: any Channel, dialing expected: RegionName?) throws -> EventLoopFuture<RegionName> {
        let contexts = contexts
        let identity = channel.eventLoop.makePromise(of: RegionName.self)
        if expected == nil {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: contexts.peerServer))
        } else {
            try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: contexts.peerClient, serverHostname: nil))
        }
        try channel.pipeline.syncOperations.addHandler(PeerIdentityHandler(cluster: cluster, expected: expected, identity: identity))
        return identity.futureResult
    }

    /// Adds TLS to an accepted client API connection, with the context current now.
    public func secureClientConnection(_ channel: any Channel) throws {
        guard let context = contexts.apiServer else { return }
        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
    }
}

/// Reads the region a peer's certificate proves, right after the TLS handshake.
final class PeerIdentityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let cluster: String
    let expected: RegionName?
    let identity: EventLoopPromise<RegionName>
    private var settled = false

    init(cluster: String, expected: RegionName?, identity: EventLoopPromise<RegionName>) {
        self.cluster = cluster
        self.expected = expected
        self.identity = identity
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent, !settled {
            settled = true
            do throws(MeridianError) {
                guard let leaf = try? context.pipeline.syncOperations.nioSSL_peerCertificate(),
                      let certificate = try? Certificate(derEncoded: leaf.toDERBytes()) else {
                    throw MeridianError(.unauthenticated, "The peer presented no certificate.")
                }
                let region = try RegionIdentity.region(of: certificate, cluster: cluster)
                if let expected, region != expected {
                    throw MeridianError(.unauthenticated, "The peer reached as \(expected) presented the certificate of \(region).")
                }
                identity.succeed(region)
            } catch {
                identity.fail(error)
                context.close(promise: nil)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !settled {
            settled = true
            identity.fail(MeridianError(.unauthenticated, "The TLS handshake with the peer failed: \(error)"))
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !settled {
            settled = true
            identity.fail(MeridianError(.unauthenticated, "The peer closed the stream before completing the TLS handshake."))
        }
        context.fireChannelInactive()
    }
}
