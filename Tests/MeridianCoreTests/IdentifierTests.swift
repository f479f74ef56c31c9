// Proves that region, keyspace and key validation accepts exactly the documented spellings and
// rejects everything else with a typed error, by checking boundary and hostile inputs.
import MeridianCore
import Testing

@Suite struct IdentifierTests {
    @Test(arguments: ["a", "us-east", "eu_west-2", String(repeating: "z", count: 64), "0"])
    func acceptsValidNames(_ name: String) throws {
        #expect(try KeyspaceName(name).rawValue == name)
        #expect(try RegionName(name).rawValue == name)
    }

    @Test(arguments: ["", "Upper", "has space", "dot.ted", "slash/", String(repeating: "z", count: 65), "é", "tab\t"])
    func rejectsInvalidNames(_ name: String) {
        #expect(throws: MeridianError.self) { try KeyspaceName(name) }
        do {
            _ = try RegionName(name)
            Issue.record("accepted \(name)")
        } catch {
            #expect(error.code == .invalidRegion)
        }
    }

    @Test func keysFollowTheByteAndCharacterRules() throws {
        #expect(try Key("users/42/profile").rawValue == "users/42/profile")
        #expect(try Key("日本語").rawValue == "日本語")
        #expect(try Key(String(repeating: "k", count: 1024)).rawValue.utf8.count == 1024)
        for bad in ["", String(repeating: "k", count: 1025), "line\nbreak", "nul\u{0}", "del\u{7F}", String(repeating: "é", count: 513)] {
            do {
                _ = try Key(bad)
                Issue.record("accepted a bad key of \(bad.utf8.count) bytes")
            } catch {
                #expect(error.code == .invalidKey)
            }
        }
        #expect(throws: MeridianError.self) { try Key(utf8: [0xC3, 0x28]) }
    }

    @Test func keysOrderByBytes() throws {
        #expect(try Key("a") < Key("b"))
        #expect(try Key("Z") < Key("a"))
        #expect(try Key("a") < Key("é"))
        // By bytes: EF AC 81 before F0 90 80 80.
        #expect(try Key("\u{FB01}") < Key("\u{10000}"))
    }

    /// Canonically equivalent spellings are different keys, as every store keeps them: equal only byte for byte.
    @Test func keysAreEqualByTheirBytes() throws {
        let composed = try Key("cl\u{E9}"), decomposed = try Key("cle\u{301}")
        #expect(composed.rawValue == decomposed.rawValue, "Swift's strings call them equal")
        #expect(composed != decomposed && Set([composed, decomposed]).count == 2)
        #expect(decomposed < composed, "65 CC 81 before C3 A9")
        #expect(try Key("cl\u{E9}") == composed && Set([composed, try Key("cl\u{E9}")]).count == 1)
    }
}
