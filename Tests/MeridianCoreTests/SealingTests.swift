import Foundation
@testable import MeridianCore
import Testing

@Suite struct SealingTests {
    static let eu = RegionName(validated: "eu-west")
    static let us = RegionName(validated: "us-east")
    static let health = try! KeyspaceName("eu_health")
    static let root = try! RegionRootKey(bytes: Array(repeating: 7, count: 32), source: "test")
    static let otherRoot = try! RegionRootKey(bytes: Array(repeating: 8, count: 32), source: "test")

    static func version(_ sequence: UInt64, at ms: UInt64 = 1_000) -> Version {
        Version(hlc: HLCTimestamp(physicalMs: ms, logical: 0, region: eu), sequence: sequence)
    }

    /// Whether `body` throws `sealed_value_unreadable`.
    static func unreadable<T>(_ body: () throws -> T) -> Bool {
        do {
            _ = try body()
            return false
        } catch let error as MeridianError {
            return error.code == .sealedValueUnreadable
        } catch {
            return false
        }
    }

    @Test func aSealedValueOpensOnlyForItsKeyspaceKeyAndVersion() throws {
        var random = SystemRandomNumberGenerator()
        let dataKey = DataKey.generate(using: &random)
        let key = try Key("users/42/email")
        let plaintext = Array("ada@example.eu".utf8)
        let sealed = SealedValue.seal(plaintext, with: dataKey, id: DataKeyID.generate(using: &random), keyspace: Self.health, key: key, version: Self.version(5))
        #expect(sealed.count == plaintext.count + SealedValue.overheadBytes)
        #expect(!String(decoding: sealed, as: UTF8.self).contains("ada@example.eu"), "the plaintext shows through")
        #expect(try SealedValue.open(sealed, with: dataKey, keyspace: Self.health, key: key, version: Self.version(5)) == plaintext)
        // Moved to another key, version, keyspace, or opened with another subject's key: refused, never garbage.
        let otherKey = DataKey.generate(using: &random)
        let moves: [() throws -> [UInt8]] = [
            { try SealedValue.open(sealed, with: dataKey, keyspace: Self.health, key: try Key("users/43/email"), version: Self.version(5)) },
            { try SealedValue.open(sealed, with: dataKey, keyspace: Self.health, key: key, version: Self.version(6)) },
            { try SealedValue.open(sealed, with: dataKey, keyspace: Self.health, key: key, version: Self.version(5, at: 1_001)) },
            { try SealedValue.open(sealed, with: dataKey, keyspace: try KeyspaceName("profiles"), key: key, version: Self.version(5)) },
            { try SealedValue.open(sealed, with: otherKey, keyspace: Self.health, key: key, version: Self.version(5)) },
        ]
        for (index, move) in moves.enumerated() {
            #expect(Self.unreadable(move), "move \(index) opened")
        }
        // The nonce is synthetic: the same value of the same version seals to the same bytes (regions agree on a
        // merged CRDT value), and any other plaintext or version gets another nonce.
        let id = try #require(SealedValue.keyID(of: sealed))
        #expect(SealedValue.seal(plaintext, with: dataKey, id: id, keyspace: Self.health, key: key, version: Self.version(5)) == sealed)
        let nonce = { (bytes: [UInt8]) in Array(bytes[(1 + DataKeyID.byteCount)..<(1 + DataKeyID.byteCount + 12)]) }
        #expect(nonce(SealedValue.seal(Array("ada@example.eu!".utf8), with: dataKey, id: id, keyspace: Self.health, key: key, version: Self.version(5))) != nonce(sealed))
        #expect(nonce(SealedValue.seal(plaintext, with: dataKey, id: id, keyspace: Self.health, key: key, version: Self.version(6))) != nonce(sealed))
    }

    @Test func everyFlippedByteOfASealedValueIsCaught() throws {
        var random = SystemRandomNumberGenerator()
        let dataKey = DataKey.generate(using: &random)
        let key = try Key("k")
        let sealed = SealedValue.seal(Array("marker-1".utf8), with: dataKey, id: DataKeyID.generate(using: &random), keyspace: Self.health, key: key, version: Self.version(1))
        for index in sealed.indices {
            var flipped = sealed
            flipped[index] ^= 0x01
            #expect(throws: MeridianError.self, "byte \(index) flipped") {
                try SealedValue.open(flipped, with: dataKey, keyspace: Self.health, key: key, version: Self.version(1))
            }
        }
        #expect(throws: MeridianError.self) { try SealedValue.open(Array(sealed.prefix(10)), with: dataKey, keyspace: Self.health, key: key, version: Self.version(1)) }
    }

    @Test func aWrappedDataKeyOpensOnlyInItsRegionKeyspaceEpochAndSubject() throws {
        var random = SystemRandomNumberGenerator()
        let subject = try Subject("users/42")
        let kek = Self.root.keyEncryptionKey(region: Self.eu, keyspace: Self.health, epoch: 1)
        let dataKey = DataKey.generate(using: &random)
        let wrapped = kek.wrap(dataKey, subject: subject, using: &random)
        let key = try Key("users/42/email")
        let sealed = SealedValue.seal(Array("v".utf8), with: dataKey, id: DataKeyID.generate(using: &random), keyspace: Self.health, key: key, version: Self.version(1))
        // Unwrapped by the same derivation (a restart re-derives it from the root key), it opens the value.
        let again = try Self.root.keyEncryptionKey(region: Self.eu, keyspace: Self.health, epoch: 1).unwrap(wrapped, subject: subject)
        #expect(try SealedValue.open(sealed, with: again, keyspace: Self.health, key: key, version: Self.version(1)) == Array("v".utf8))
        let wrongs: [(String, () throws -> DataKey)] = [
            ("another subject", { try kek.unwrap(wrapped, subject: try Subject("users/43")) }),
            ("another region", { try Self.root.keyEncryptionKey(region: Self.us, keyspace: Self.health, epoch: 1).unwrap(wrapped, subject: subject) }),
            ("another keyspace", { try Self.root.keyEncryptionKey(region: Self.eu, keyspace: try KeyspaceName("profiles"), epoch: 1).unwrap(wrapped, subject: subject) }),
            ("another epoch", { try Self.root.keyEncryptionKey(region: Self.eu, keyspace: Self.health, epoch: 2).unwrap(WrappedDataKey(epoch: 2, bytes: wrapped.bytes), subject: subject) }),
            ("another root key", { try Self.otherRoot.keyEncryptionKey(region: Self.eu, keyspace: Self.health, epoch: 1).unwrap(wrapped, subject: subject) }),
            ("a corrupted wrap", { try kek.unwrap(WrappedDataKey(epoch: 1, bytes: Array(wrapped.bytes.dropLast()) + [wrapped.bytes.last! ^ 1]), subject: subject) }),
        ]
        for (name, wrong) in wrongs {
            #expect(Self.unreadable(wrong), "a wrapped data key opened with \(name)")
        }
    }

    @Test func aSeededGeneratorSealsTheSameBytesTwice() throws {
        // The simulator's seeded generator makes sealing deterministic; two generators of one seed agree.
        var first = SeededGenerator(seed: 42), second = SeededGenerator(seed: 42)
        let key = try Key("k")
        let a = SealedValue.seal(Array("v".utf8), with: DataKey.generate(using: &first), id: DataKeyID.generate(using: &first), keyspace: Self.health, key: key, version: Self.version(1))
        let b = SealedValue.seal(Array("v".utf8), with: DataKey.generate(using: &second), id: DataKeyID.generate(using: &second), keyspace: Self.health, key: key, version: Self.version(1))
        #expect(a == b)
    }

    @Test func rootKeysAndSubjectsAreValidated() throws {
        #expect(throws: MeridianError.self) { try RegionRootKey(bytes: Array(repeating: 1, count: 31), source: "MERIDIAN_ROOT_KEY") }
        #expect(throws: MeridianError.self) { try RegionRootKey(base64: "not base64!", source: "/etc/meridian/root.key") }
        let text = Data(repeating: 9, count: 32).base64EncodedString() + "\n"
        _ = try RegionRootKey(base64: text, source: "file")
        do {
            _ = try RegionRootKey(base64: Data(repeating: 9, count: 16).base64EncodedString(), source: "/etc/meridian/root.key")
        } catch {
            #expect(error.code == .invalidConfig && error.message.contains("/etc/meridian/root.key") && error.message.contains("32"))
        }
        #expect(throws: MeridianError.self) { try Subject("") }
        #expect(throws: MeridianError.self) { try Subject("a\nb") }
        #expect(throws: MeridianError.self) { try Subject(String(repeating: "x", count: 256)) }
        #expect(try SubjectRule.keyPrefix(separator: "/", depth: 2).subject(of: try Key("users/42/email")).rawValue == "users/42")
        #expect(try SubjectRule.keyPrefix(separator: "/", depth: 1).subject(of: try Key("alice@example.eu/address")).rawValue == "alice@example.eu")
        #expect(try SubjectRule.keyPrefix(separator: "/", depth: 2).subject(of: try Key("solo")).rawValue == "solo")
        #expect(try SubjectRule.wholeKey.subject(of: try Key("users/42")).rawValue == "users/42")
    }
}
