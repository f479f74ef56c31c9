// The certificate files a node loads, and what it says when they are wrong: every bad file gets a typed error
// naming the file and the problem; a reload keeps the old set until the new one works; keys are written 0600.
// And protected mode: a node reachable from other machines refuses to start without auth and TLS.
import Foundation
import MeridianCore
import MeridianSecurity
import Testing

struct CertificateFixture {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("meridian-tls-\(UUID().uuidString)").path
    let authority: CertificateAuthority
    static let cluster = "test"
    static let usEast = RegionName(validated: "us-east"), euWest = RegionName(validated: "eu-west")

    init() throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        authority = try CertificateAuthority.create(cluster: Self.cluster, generation: 1)
        try SecretFile.write(authority.certificatePEM, to: path("ca.pem"), mode: 0o644)
        try issue(Self.usEast)
    }

    func path(_ name: String) -> String { "\(directory)/\(name)" }

    func issue(_ region: RegionName, by authority: CertificateAuthority? = nil, as name: String? = nil) throws {
        let issued = try (authority ?? self.authority).issue(cluster: Self.cluster, region: region, hosts: ["localhost", "127.0.0.1"])
        try SecretFile.write(issued.certificatePEM, to: path("\(name ?? region.rawValue).pem"), mode: 0o644)
        try SecretFile.write(issued.keyPEM, to: path("\(name ?? region.rawValue).key"))
    }

    var config: TLSConfig { TLSConfig(ca: path("ca.pem"), certificate: path("{region}.pem"), key: path("{region}.key")) }

    func load(_ region: RegionName = usEast, config: TLSConfig? = nil) -> MeridianError? {
        do throws(MeridianError) {
            _ = try NodeTLS(config: config ?? self.config, region: region, cluster: Self.cluster)
            return nil
        } catch {
            #expect(error.code == .invalidConfig)
            return error
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

@Suite struct TLSFilesTests {
    @Test func aGoodSetLoadsAndEveryBadFileIsNamedWithItsProblem() throws {
        let fixture = try CertificateFixture()
        defer { fixture.remove() }
        #expect(fixture.load() == nil)
        // Its region's certificate carries the region's URI, and nothing else's.
        let leaf = try #require(try CertificateAuthority.certificates(fixture.path("us-east.pem")).first)
        #expect(try RegionIdentity.region(of: leaf, cluster: "test") == CertificateFixture.usEast)
        #expect(throws: MeridianError.self) { try RegionIdentity.region(of: leaf, cluster: "other") }

        // Missing file.
        let missing = fixture.load(CertificateFixture.euWest)
        #expect(missing?.message.contains("eu-west.pem") == true && missing?.context["file"] == fixture.path("eu-west.pem"), "\(String(describing: missing))")
        // Another region's certificate under this region's name.
        try fixture.issue(CertificateFixture.usEast, as: "eu-west")
        #expect(fixture.load(CertificateFixture.euWest)?.message.contains("is the certificate of us-east, not of eu-west") == true)
        // A key that is not the certificate's.
        try fixture.issue(CertificateFixture.euWest, as: "other")
        try FileManager.default.removeItem(atPath: fixture.path("eu-west.key"))
        try FileManager.default.copyItem(atPath: fixture.path("other.key"), toPath: fixture.path("eu-west.key"))
        try fixture.issue(CertificateFixture.euWest)
        try FileManager.default.removeItem(atPath: fixture.path("eu-west.key"))
        try FileManager.default.copyItem(atPath: fixture.path("other.key"), toPath: fixture.path("eu-west.key"))
        #expect(fixture.load(CertificateFixture.euWest)?.message.contains("is not the key of") == true)
        // A certificate from another CA.
        let rogue = try CertificateAuthority.create(cluster: "test", generation: 9)
        try fixture.issue(CertificateFixture.euWest, by: rogue)
        #expect(fixture.load(CertificateFixture.euWest)?.message.contains("does not hold") == true)
        // Garbage where PEM belongs, in each file.
        for name in ["ca.pem", "us-east.pem", "us-east.key"] {
            let original = try String(contentsOfFile: fixture.path(name), encoding: .utf8)
            try SecretFile.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", to: fixture.path(name))
            let error = fixture.load()
            #expect(error?.context["file"] == fixture.path(name) || error?.message.contains(name) == true, "\(name): \(String(describing: error))")
            try SecretFile.write(original, to: fixture.path(name))
        }
        #expect(fixture.load() == nil)
    }

    @Test func aReloadTakesAWorkingSetAndKeepsTheOldOneOtherwise() throws {
        let fixture = try CertificateFixture()
        defer { fixture.remove() }
        let tls = try NodeTLS(config: fixture.config, region: CertificateFixture.usEast, cluster: "test")
        guard case .unchanged = tls.reloadIfChanged() else { Issue.record("nothing changed, yet it reloaded"); return }
        let before = tls.contexts.notValidAfter
        // Half-rotated: a new certificate beside the old key.
        let oldKey = try String(contentsOfFile: fixture.path("us-east.key"), encoding: .utf8)
        try fixture.issue(CertificateFixture.usEast)
        let newKey = try String(contentsOfFile: fixture.path("us-east.key"), encoding: .utf8)
        try SecretFile.write(oldKey, to: fixture.path("us-east.key"))
        guard case .failed(let error) = tls.reloadIfChanged() else { Issue.record("a mismatched pair was taken"); return }
        #expect(error.message.contains("is not the key of"))
        #expect(tls.contexts.notValidAfter == before)
        // The key lands: the new pair is taken.
        try SecretFile.write(newKey, to: fixture.path("us-east.key"))
        guard case .reloaded = tls.reloadIfChanged() else { Issue.record("a working set was not taken"); return }
        // A bundle of two CAs (mid-rotation) loads, in either order.
        let next = try CertificateAuthority.create(cluster: "test", generation: 2)
        try SecretFile.write(CertificateAuthority.bundle([next, fixture.authority]), to: fixture.path("ca.pem"))
        guard case .reloaded(let contexts) = tls.reloadIfChanged() else { Issue.record("a bundle of two CAs did not load"); return }
        #expect(contexts.trusted.count == 2)
    }

    @Test func keysAreWrittenReadableByTheirOwnerOnly() throws {
        let fixture = try CertificateFixture()
        defer { fixture.remove() }
        for (name, mode) in [("us-east.key", 0o600), ("us-east.pem", 0o644)] {
            let attributes = try FileManager.default.attributesOfItem(atPath: fixture.path(name))
            #expect((attributes[.posixPermissions] as? Int) == mode, "\(name)")
        }
        // Rewriting replaces the file whole; no temporary file is left beside it.
        try SecretFile.write("x", to: fixture.path("us-east.key"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.directory).allSatisfy { !$0.contains(".tmp-") })
        #expect(try String(contentsOfFile: fixture.path("us-east.key"), encoding: .utf8) == "x")
    }

    @Test func protectedModeRefusesAReachableNodeWithoutAuthAndTLS() throws {
        #expect(ProtectedMode.isLoopback("127.0.0.1") && ProtectedMode.isLoopback("127.9.8.7") && ProtectedMode.isLoopback("localhost"))
        #expect(ProtectedMode.isLoopback("::1") && ProtectedMode.isLoopback("[::1]"))
        #expect(!ProtectedMode.isLoopback("0.0.0.0") && !ProtectedMode.isLoopback("10.0.0.5") && !ProtectedMode.isLoopback("db.example.com")
                && !ProtectedMode.isLoopback("127.0.0") && !ProtectedMode.isLoopback("128.0.0.1"))
        func refusal(_ sections: String, host: String = "0.0.0.0") -> String? {
            let yaml = """
                cluster: test
                regions:
                  - { name: us-east, client: \(host):7101, peer: 127.0.0.1:7201 }
                  - { name: eu-west, client: 127.0.0.1:7102, peer: 127.0.0.1:7202 }
                \(sections)
                """
            do throws(MeridianError) {
                try ProtectedMode.check(try ClusterConfig.parse(yaml: yaml, file: "c.yaml"), region: CertificateFixture.usEast)
                return nil
            } catch {
                #expect(error.code == .invalidConfig)
                return error.message
            }
        }
        let auth = "session_secret: 0123456789abcdef0123456789abcdef\nauth: { keys: [{ id: k, public_key: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo }] }"
        let tls = "tls: { ca: ca.pem, cert: '{region}.pem', key: '{region}.key' }"
        let plain = try #require(refusal(""))
        #expect(plain.contains("0.0.0.0:7101") && plain.contains("auth section") && plain.contains("tls section") && plain.contains("--insecure"), "\(plain)")
        #expect(try #require(refusal(auth)).contains("tls section"))
        #expect(try #require(refusal(tls)).contains("auth section"))
        #expect(try #require(refusal(auth + "\n" + "tls: { ca: ca.pem, cert: c.pem, key: k.pem, client_api: http }")).contains("client_api: https"))
        #expect(refusal(auth + "\n" + tls) == nil)
        #expect(refusal("", host: "127.0.0.1") == nil, "a loopback-only node starts as before")
    }
}
