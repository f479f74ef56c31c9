// swift-tools-version:6.1
// Coverage-guided fuzzing of Meridian's decoders with libFuzzer. A package of its own, so the main build and
// the tests never carry the fuzzer's instrumentation. Build and run with fuzz/run.sh.
import PackageDescription

let package = Package(
    name: "MeridianFuzz",
    dependencies: [.package(name: "Meridian", path: "..")],
    targets: [
        .executableTarget(
            name: "MeridianFuzz",
            dependencies: [.product(name: "MeridianCore", package: "Meridian")],
            // run.sh adds -sanitize=fuzzer,address to every Swift module, so the decoders are instrumented too.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ]
)
