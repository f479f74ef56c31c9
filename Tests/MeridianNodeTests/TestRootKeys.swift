import MeridianCore
import MeridianNode

extension NodeConfiguration {
    /// The configuration with a fixed root key, for a node whose cluster has sealed keyspaces (the demo cluster's
    /// restricted ones).
    func withTestRootKey() -> NodeConfiguration {
        var configuration = self
        configuration.rootKeys = RegionKeyRing(single: try! RegionRootKey(bytes: Array(repeating: 0x5A, count: RegionRootKey.byteCount), source: "test root key"))
        return configuration
    }
}
