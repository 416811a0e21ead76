// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "NativeRunner",
    products: [
        .executable(name: "runner", targets: ["runner"])
    ],
    targets: [
        // C interop: hiredis through the system library, and the fork/exec child set-up.
        .systemLibrary(
            name: "CHiredis",
            path: "Sources/CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "CRunnerShims",
            cSettings: [.define("_GNU_SOURCE")]
        ),

        // Libraries, bottom up.
        .target(name: "RedisClient", dependencies: ["CHiredis"]),
        .target(name: "RunnerProtocol"),
        .target(name: "HTTPEndpoint"),
        .target(name: "ProcessSupervision", dependencies: ["CRunnerShims"]),
        .target(
            name: "RunnerCore",
            dependencies: ["RedisClient", "RunnerProtocol", "ProcessSupervision", "HTTPEndpoint", "CRunnerShims"]),
        .target(name: "RunnerCLI", dependencies: ["RunnerCore", "RunnerProtocol", "RedisClient", "HTTPEndpoint"]),
        .executableTarget(name: "runner", dependencies: ["RunnerCLI"]),

        // Tests: a fast unit tier per module, and an integration tier with real redis-server processes.
        .target(name: "TestSupport", dependencies: ["RedisClient"], path: "Tests/TestSupport"),
        .testTarget(name: "RedisClientTests", dependencies: ["RedisClient", "TestSupport"]),
        .testTarget(name: "RunnerProtocolTests", dependencies: ["RunnerProtocol"]),
        .testTarget(name: "HTTPEndpointTests", dependencies: ["HTTPEndpoint"]),
        .testTarget(
            name: "RunnerCoreTests",
            dependencies: ["RunnerCore", "RunnerProtocol", "ProcessSupervision", "HTTPEndpoint"]),
        .testTarget(name: "ProcessSupervisionTests", dependencies: ["ProcessSupervision", "TestSupport"]),
        .testTarget(
            name: "RunnerCLITests", dependencies: ["RunnerCLI", "RunnerCore", "RunnerProtocol", "TestSupport"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["RunnerCore", "RunnerCLI", "RunnerProtocol", "RedisClient", "TestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
