// Proves the residency check's matcher: a needle is found in each form it can take inside longer text (base64 at
// every alignment, hex, JSON and percent escaping), and not found where it is not.
import Foundation
@testable import MeridianCore
import Testing

@Suite struct ResidencyScanTests {
    static let needle = "alice/marker-7f3a@example.eu"

    @Test(arguments: 0..<6)
    func aNeedleIsFoundInBase64AtEveryAlignment(_ shift: Int) {
        let prefix = Array("xyzxyz".utf8.prefix(shift))
        let encoded = Data(prefix + Array(Self.needle.utf8) + Array("tail!".utf8)).base64EncodedString()
        let hits = ResidencyScan.find(Self.needle, in: Data(("{\"blob\":\"" + encoded + "\"}").utf8))
        #expect(hits.contains { $0.encoding == "base64" }, "shift \(shift): \(encoded)")
    }

    @Test func aNeedleIsFoundRawHexJSONAndPercentEncoded() {
        let raw = Array(Self.needle.utf8)
        let hex = raw.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        let cases: [(String, String)] = [
            ("raw", "log line: key=\(Self.needle) done"),
            ("hex", "x'\(hex)'"),
            ("HEX", "0x\(hex.uppercased())"),
            ("json", #"{"key":"alice\/marker-7f3a@example.eu"}"#),
            ("percent", "GET /v1/kv/ks/alice%2Fmarker-7f3a%40example.eu"),
        ]
        for (encoding, text) in cases {
            #expect(ResidencyScan.find(Self.needle, in: Data(text.utf8)).contains { $0.encoding == encoding }, "\(encoding) in \(text)")
        }
        #expect(ResidencyScan.find(Self.needle, in: Data("alice/marker-7f3b@example.eu and key#0011aabb".utf8)).isEmpty)
    }
}
