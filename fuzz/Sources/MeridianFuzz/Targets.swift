// libFuzzer entry points for every decoder that reads bytes from a peer, a client or a file. The target is
// chosen by FUZZ_TARGET (see fuzz/run.sh). Every input must decode to a value or a typed MeridianError; a
// trap, an overflow or a memory error is a crash libFuzzer reports with the input that caused it. Inputs
// that decode are encoded again and must decode to the same value (no decoder accepts what its encoder
// cannot reproduce).
import Foundation
import MeridianCore

enum Target: String, CaseIterable {
    case peerFrame = "peer-frame"
    case entry
    case sessionToken = "session-token"
    case contextToken = "context-token"
    case config
    case crdt
    case keyStates = "key-states"
}

let target: Target = {
    let name = ProcessInfo.processInfo.environment["FUZZ_TARGET"] ?? ""
    guard let target = Target(rawValue: name) else {
        FileHandle.standardError.write(Data("FUZZ_TARGET must be one of \(Target.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    return target
}()

let peerCodec = PeerFrameCodec(valueBytesMax: 1 << 16, frameBytesMax: 1 << 20)
let entryCodec = EntryCodec(valueBytesMax: 1 << 16)
let sessionKey = SessionKey(secret: "fuzzing-secret-0123456789")
let keyspace = try! KeyspaceName("carts")
let key = try! Key("alice")

func check(_ condition: Bool, _ what: String) {
    if !condition { fatalError("round trip broke: \(what)") }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    switch target {
    case .peerFrame:
        if let (frame, used) = try? peerCodec.decodeFrame(bytes[...]) {
            let again = try? peerCodec.decodeFrame(peerCodec.encode(frame)[...])
            check(again?.0 == frame && used <= bytes.count, "peer frame")
        }
    case .entry:
        if let entry = try? entryCodec.decode(bytes) { check((try? entryCodec.decode(entryCodec.encode(entry))) == entry, "entry") }
    case .sessionToken:
        if let token = try? SessionToken(decoding: String(decoding: bytes, as: UTF8.self), key: sessionKey) {
            check((try? SessionToken(decoding: token.encoded(with: sessionKey), key: sessionKey)) == token, "session token")
        }
    case .contextToken:
        if let context = try? CausalContextToken.decode(String(decoding: bytes, as: UTF8.self), keyspace: keyspace, key: key, with: sessionKey) {
            let again = try? CausalContextToken.decode(CausalContextToken.encode(context, keyspace: keyspace, key: key, with: sessionKey),
                                                       keyspace: keyspace, key: key, with: sessionKey)
            check(again == context, "context token")
        }
    case .config:
        _ = try? ClusterConfig.parse(yaml: String(decoding: bytes, as: UTF8.self), file: "fuzz.yaml")
    case .crdt:
        if let value = try? CRDTCodec.decode(bytes) {
            check((try? CRDTCodec.decode(CRDTCodec.encode(value))) == value, "crdt")
            // Merging with itself and with an empty value of its type must not trap either.
            _ = value.merged(value)
            _ = value.merged(CRDTValue.empty(value.type))
        }
    case .keyStates:
        if let states = try? KeyStateCodec.decode(bytes, valueBytesMax: 1 << 16) {
            let again = try? KeyStateCodec.decode(KeyStateCodec.encode(states), valueBytesMax: 1 << 16)
            check(again.map { $0.map(\.key) } == states.map(\.key) && again.map { $0.map(\.state) } == states.map(\.state), "key states")
            for item in states { _ = MerkleTree.item(item.key, state: item.state); _ = item.state.merged(with: item.state) }
        }
    }
    return 0
}
