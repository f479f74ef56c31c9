// swift-tools-version:6.1
// Meridian: a geo-distributed, multi-region data store.
//
// Module graph (arrows are "may import"):
//   MeridianCore   <- pure protocol logic and types, the region machine among them; no I/O, no clock, seeded
//                     randomness only (Yams, Crypto).
//   MeridianStorage -> MeridianCore                      (the storage protocols, split by concern, and their neutral types;
//                                                         an in-memory backend)
//   MeridianStore  -> MeridianCore, MeridianStorage, GRDB (the SQLite backend of the storage protocols)
//   MeridianPostgres -> MeridianCore, MeridianStorage, PostgresNIO (a region's store in PostgreSQL, shared by several
//                                                         nodes: the schema, the region lease)
//   MeridianHarness -> MeridianCore, NIO, Histogram      (test, drill and benchmark plumbing: the local-cluster launcher, an HTTP/1.1 keep-alive client and
//                                                         local process helpers; not the client library, which will be MeridianClient)
//   MeridianTestKit -> MeridianCore                       (history checkers: linearizability, session guarantees, staleness)
//   MeridianDrills -> MeridianCore, MeridianHarness, MeridianTestKit (the nemesis and the game day against real processes,
//                                                         as a library the CLI and the tests call)
//   MeridianSimulator -> MeridianCore, MeridianStorage, MeridianTestKit (deterministic multi-region runs of the region machine
//                                                         under faults, each region on the in-memory store)
//   MeridianAPI    -> MeridianCore, HTTPTypes                (the v1 HTTP contract: headers, error statuses, answers, openapi.yaml)
//   MeridianHTTP   -> MeridianCore, MeridianAPI, Hummingbird (JSON and error rendering shared by the HTTP shells)
//   MeridianNode   -> MeridianCore, MeridianAPI, MeridianStorage, MeridianHTTP, Prometheus (the region server shell;
//                                                         given a store factory, it never sees the engine)
//   MeridianWAN    -> MeridianCore, MeridianHTTP, NIO        (the WAN emulator: delaying TCP proxies and their admin API)
//   MeridianGateway -> MeridianCore, MeridianAPI, MeridianHTTP, NIO, NIOSSL, Hummingbird, AsyncHTTPClient (the front door: routes each
//                                                         request to a region by the core's RoutePlanner, and GeoDNS answers)
//   meridian       -> everything above, ArgumentParser   (the CLI)
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Meridian",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "meridian", targets: ["meridian"]),
        .library(name: "MeridianCore", targets: ["MeridianCore"]),
        // For bench/, a package of its own: the local-cluster launcher and load plumbing.
        .library(name: "MeridianHarness", targets: ["MeridianHarness"]),
        // The Swift client library: topology discovery, leader and home routing, failover, sessions.
        .library(name: "MeridianClient", targets: ["MeridianClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.20.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.10.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.0"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.19.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.3.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.24.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
    ],
    targets: [
        .target(
            name: "MeridianCore",
            dependencies: [.product(name: "Yams", package: "Yams"), .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianStorage",
            dependencies: ["MeridianCore"],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianStore",
            dependencies: [
                "MeridianCore",
                "MeridianStorage",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianPostgres",
            dependencies: [
                "MeridianCore",
                "MeridianStorage",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianHarness",
            dependencies: [
                "MeridianCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianDrills",
            dependencies: ["MeridianCore", "MeridianHarness", "MeridianTestKit"],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianTestKit",
            dependencies: ["MeridianCore"],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianSimulator",
            dependencies: ["MeridianCore", "MeridianStorage", "MeridianTestKit"],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianAPI",
            dependencies: [
                "MeridianCore",
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            // The API's OpenAPI document, served at /openapi.yaml from the binary itself.
            resources: [.embedInCode("openapi.yaml")],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianHTTP",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianWAN",
            dependencies: [
                "MeridianCore",
                "MeridianHTTP",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianSecurity",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianNode",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                "MeridianHTTP",
                "MeridianSecurity",
                "MeridianStorage",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianGateway",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                "MeridianHTTP",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "MeridianClient",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "meridian",
            dependencies: [
                "MeridianCore",
                "MeridianStorage",
                "MeridianStore",
                "MeridianPostgres",
                "MeridianNode",
                "MeridianWAN",
                "MeridianSimulator",
                "MeridianTestKit",
                "MeridianHarness",
                "MeridianDrills",
                "MeridianSecurity",
                "MeridianGateway",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianCoreTests",
            dependencies: [
                "MeridianCore",
                "MeridianSimulator",
                "MeridianTestKit",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianPostgresTests",
            dependencies: ["MeridianCore", "MeridianPostgres", "MeridianHarness", .product(name: "PostgresNIO", package: "postgres-nio")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianStoreTests",
            dependencies: ["MeridianCore", "MeridianStorage", "MeridianStore", "MeridianPostgres", "MeridianHarness",
                           .product(name: "GRDB", package: "GRDB.swift"), .product(name: "PostgresNIO", package: "postgres-nio")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianNodeTests",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                "MeridianStorage",
                "MeridianStore",
                "MeridianNode",
                "MeridianHarness",
                "MeridianSecurity",
                "MeridianPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianWANTests",
            dependencies: [
                "MeridianCore",
                "MeridianWAN",
                "MeridianHarness",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianGatewayTests",
            dependencies: [
                "MeridianCore",
                "MeridianAPI",
                "MeridianGateway",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MeridianLiveTests",
            dependencies: ["MeridianCore", "MeridianAPI", "MeridianHarness", "MeridianDrills", "MeridianClient",
                           .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
