// swift-tools-version:6.1
// Meridian beside etcd, PostgreSQL and Redis: a package of its own, so the `meridian` binary ships no competitor
// benchmark. bench/peers builds it and Meridian (release), starts the peer systems from Debian's packages and
// runs `meridian-peers` against them.
import PackageDescription

let package = Package(
    name: "MeridianBench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Meridian", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
    ],
    targets: [
        .executableTarget(
            name: "MeridianPeers",
            dependencies: [
                .product(name: "MeridianCore", package: "Meridian"),
                .product(name: "MeridianHarness", package: "Meridian"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
