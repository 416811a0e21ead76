import Foundation
import RunnerCore
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCLI

/// Profiles, the config file and the precedence of the layers, through the same entry points the CLI uses.
final class ConfigurationTests: XCTestCase {
    private static let bigHost = HostFacts(
        processors: 4, memoryBytes: 8 << 30, strongestIsolation: .cgroup, cgroupShortfall: nil)
    private static let hostWithoutCgroups = HostFacts(
        processors: 2, memoryBytes: 1 << 30, strongestIsolation: .namespace,
        cgroupShortfall: "the cgroup controllers pids are not available")

    private let files = TemporaryFiles()

    override func tearDown() {
        files.removeAll()
        super.tearDown()
    }

    /// A config file with `text` in it.
    private func file(_ text: String) throws -> String { try files.write(text) }

    private func layered(
        _ arguments: [String], environment: [String: String] = [:], host: HostFacts = bigHost
    ) async throws -> ParsedArguments {
        let parsed = try ParsedArguments(arguments, command: WorkerCommand.spec, environment: environment)
        return try await ConfigurationLayers.applying(to: parsed, host: { host })
    }

    private func run(
        _ arguments: [String], environment: [String: String] = [:], host: HostFacts = bigHost
    ) async -> (code: Int32, out: String, err: String) {
        let output = CapturedOutput()
        let code = await RunnerCommandLine.run(
            arguments: arguments, environment: environment, console: output.console, host: { host })
        return (code, output.standardOutput, output.standardError)
    }

    /// A value wider than the others (a long --cgroup-parent) widens the VALUE column: SOURCE lines up on every row.
    func testConfigPrintColumnsFitTheirWidestValue() async throws {
        let parent = "nativerunner.slice/" + String(repeating: "pool-of-runners/", count: 4) + "jobs"
        let result = await run(["config", "--print", "--cgroup-parent", parent])
        XCTAssertEqual(result.code, 0, result.err)
        let lines = result.out.split(separator: "\n").map(String.init)
        let header = try XCTUnwrap(lines.first)
        let column = header.distance(from: header.startIndex, to: try XCTUnwrap(header.range(of: "SOURCE")).lowerBound)
        for line in lines {
            let source = line.dropFirst(column)
            XCTAssertTrue(line.prefix(column).hasSuffix("  ") && !source.isEmpty && !source.contains(" "), line)
        }
        XCTAssertTrue(lines.contains { $0.hasPrefix("cgroup-parent ") && $0.hasSuffix(parent + "  flag") }, result.out)
    }

    func testBadNamesAreOneReadableLineAndConfigFilesAreBounded() async throws {
        let escape = await run(["config", "--print", "--name", "ev\u{1B}[31mil"])
        XCTAssertEqual(escape.code, 2)
        XCTAssertTrue(
            escape.err.hasPrefix(
                "Error: invalid value for '--name': 'ev\\u{1B}[31mil' (1 to 128 characters; no braces, colons, spaces "
                    + "or control characters)\n"), escape.err)
        // The control plane's name follows the same rule (it is the `runner` of its events, the reaper lease's holder).
        let control = await run(["control", "--redis", "127.0.0.1:1", "--name", "a b"])
        XCTAssertEqual(control.code, 2)
        XCTAssertTrue(
            control.err.hasPrefix("Error: invalid value for '--name': 'a b' (1 to 128 characters"), control.err)
        let node = await run(["config", "--print", "--node", "a b"])
        XCTAssertEqual(node.code, 2)
        XCTAssertTrue(node.err.hasPrefix("Error: invalid value for '--node': 'a b'"), node.err)
        let long = await run(["config", "--print", "--name", String(repeating: "n", count: 100_000)])
        XCTAssertEqual(long.code, 2)
        XCTAssertLessThan(long.err.split(separator: "\n").first?.count ?? .max, 300, "one short line")
        XCTAssertTrue(long.err.contains("… (100000 bytes)"), long.err)

        let big = try file("{\"name\": \"" + String(repeating: "a", count: 1 << 20) + "\"}")
        let tooBig = await run(["config", "--print", "--config", big])
        XCTAssertEqual(tooBig.code, 2)
        XCTAssertTrue(tooBig.err.contains("a config file may have at most 1 MiB"), tooBig.err)
        let labels = (0...LabelSet.maximumCount).map { "\"k\($0)=v\"" }.joined(separator: ",")
        let many = await run(["config", "--print", "--config", try file("{\"label\": [\(labels)]}")])
        XCTAssertEqual(many.code, 2)
        XCTAssertTrue(many.err.contains("65 labels; at most 64 are allowed"), many.err)
    }

    func testPrecedenceIsDefaultProfileFileEnvironmentFlag() async throws {
        let path = try file(
            """
            {
              "profile": "development",
              "queue": ["file-a", "file-b"],
              "shutdown-timeout": "45s",
              "kill-grace": 3,
              "concurrency": 6,
              "isolation-fallback": true,
              "keep-work-dirs": true
            }
            """)
        let environment = [
            "RUNNER_CONFIG": path, "RUNNER_QUEUES": "env-q", "RUNNER_CONCURRENCY": "7",
            "RUNNER_KEEP_WORK_DIRS": "false",
        ]
        let arguments = try await layered(["--concurrency", "8", "--log-level", "warning"], environment: environment)
        let (configuration, logger) = try WorkerCommand.configuration(arguments)
        // flag over env over file over profile over default
        XCTAssertEqual(configuration.concurrency, 8)
        XCTAssertEqual(arguments.sources["--concurrency"], "flag")
        XCTAssertEqual(logger.level, .warning)  // flag over profile
        XCTAssertEqual(configuration.queues, ["env-q"])  // env over file (a repeated option is replaced, not merged)
        XCTAssertEqual(arguments.sources["--queue"], "RUNNER_QUEUES")
        XCTAssertEqual(configuration.shutdownTimeout, .seconds(45))  // file over profile (5s)
        XCTAssertEqual(arguments.sources["--shutdown-timeout"], "file:\(path):4")
        XCTAssertEqual(configuration.killGrace, .seconds(3))
        XCTAssertEqual(configuration.isolation.fallback, true)  // a flag from the file
        XCTAssertEqual(configuration.isolation.keepWorkFolders, false)  // env "false" over the file's true
        XCTAssertEqual(configuration.leaseTTL, .seconds(5))  // profile over default (15s)
        XCTAssertEqual(arguments.sources["--lease-ttl"], "profile:development")
        XCTAssertEqual(configuration.eventsMaxLength, 100_000)  // default
        XCTAssertNil(arguments.sources["--events-maxlen"])
        XCTAssertEqual(arguments.sources["--profile"], "file:\(path):2")

        // Without env and flags the file's values are the ones used.
        let fileOnly = try WorkerCommand.configuration(try await layered(["--config", path])).0
        XCTAssertEqual(fileOnly.queues, ["file-a", "file-b"])
        XCTAssertEqual(fileOnly.concurrency, 6)
        XCTAssertEqual(fileOnly.isolation.keepWorkFolders, true)
        // A profile given as a flag beats the file's.
        let production = try await layered(["--config", path, "--profile", "production"])
        XCTAssertEqual(production.value("--log-format"), "json")
        XCTAssertEqual(production.sources["--log-format"], "profile:production")
        XCTAssertEqual(production.sources["--shutdown-timeout"], "file:\(path):4")
    }

    func testEachProfilesEffectiveConfiguration() async throws {
        var (configuration, logger) = try WorkerCommand.configuration(try await layered(["--profile", "development"]))
        XCTAssertEqual(configuration.isolation.defaultLevel, .processGroup)
        XCTAssertEqual(configuration.leaseTTL, .seconds(5))
        XCTAssertEqual(configuration.shutdownTimeout, .seconds(5))
        XCTAssertEqual(configuration.killGrace, .seconds(1))
        XCTAssertEqual(logger.level, .debug)
        XCTAssertEqual(logger.format, .text)

        let production = try await layered(["--profile", "production"])
        XCTAssertEqual(production.warnings, [])
        (configuration, logger) = try WorkerCommand.configuration(production)
        XCTAssertEqual(configuration.isolation.defaultLevel, .cgroup)
        XCTAssertEqual(configuration.isolation.ceilings, JobLimits(memoryBytes: 6 << 30, pids: 4096, cpuMillis: nil))
        XCTAssertEqual(configuration.shutdownTimeout, .seconds(300))
        XCTAssertEqual(configuration.killGrace, .seconds(10))
        XCTAssertEqual(configuration.leaseTTL, .seconds(15))
        XCTAssertEqual(logger.level, .info)
        XCTAssertEqual(logger.format, .json)

        // Where the host has no cgroups: the strongest level it has, and a warning saying why.
        let weaker = try await layered(["--profile", "production"], host: Self.hostWithoutCgroups)
        XCTAssertEqual(try WorkerCommand.configuration(weaker).0.isolation.defaultLevel, .namespace)
        XCTAssertEqual(
            weaker.warnings,
            [
                "profile production: cgroup isolation is not available here (the cgroup controllers pids are not "
                    + "available); jobs run at namespace by default"
            ])
        XCTAssertEqual(weaker.value("--max-memory"), "768M")

        (configuration, logger) = try WorkerCommand.configuration(try await layered(["--profile", "high-performance"]))
        XCTAssertEqual(configuration.concurrency, 8)
        XCTAssertEqual(configuration.isolation.monitorInterval, .seconds(60))
        XCTAssertEqual(configuration.reaper?.interval, .seconds(10))
        XCTAssertEqual(logger.level, .warning)
        XCTAssertEqual(configuration.leaseTTL, .seconds(15))
    }

    func testUnknownProfileNamesTheChoices() async throws {
        var result = await run(["worker", "--profile", "fast"])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(
            result.err.split(separator: "\n").first,
            "Error: invalid value for '--profile': 'fast' (choose development, production, high-performance)")
        let path = try file("{\n  \"profile\": \"prod\"\n}")
        result = await run(["config", "--print", "--config", path])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(
            result.err,
            "Error: \(path):2: invalid value for '--profile': 'prod' (choose development, production, "
                + "high-performance)\n")
        result = await run(["config", "--print"], environment: ["RUNNER_PROFILE": "x"])
        XCTAssertEqual(result.code, 2)
        XCTAssertTrue(result.err.hasPrefix("Error: invalid value for RUNNER_PROFILE: 'x' (choose "), result.err)
    }

    /// The one line a bad config file gives (exit 2, no usage lines).
    private func configError(_ text: String) async throws -> (path: String, error: String) {
        let path = try file(text)
        let result = await run(["worker", "--config", path, "--redis", "127.0.0.1:1"])
        XCTAssertEqual(result.code, 2, result.err)
        XCTAssertEqual(result.out, "")
        XCTAssertEqual(result.err.filter { $0 == "\n" }.count, 1, result.err)
        return (path, String(result.err.dropLast()))
    }

    func testConfigFileErrorsNameTheKeyTheFileAndTheLine() async throws {
        var (path, error) = try await configError(
            """
            {
              "queue": ["a"],

              "concurrency": 2,
              "shutdown-timout": "45s"
            }
            """)
        XCTAssertEqual(error, "Error: \(path):5: unknown key \"shutdown-timout\" (did you mean \"shutdown-timeout\"?)")
        (path, error) = try await configError("{\"frobnicate\": 1}")
        XCTAssertEqual(error, "Error: \(path):1: unknown key \"frobnicate\"")
        (path, error) = try await configError("{\n\"isolation-fallback\": \"yes\"}")
        XCTAssertEqual(error, "Error: \(path):2: \"isolation-fallback\" must be true or false, not a string")
        (path, error) = try await configError("{\n\n\"lease-ttl\": {\"s\": 5}}")
        XCTAssertEqual(error, "Error: \(path):3: \"lease-ttl\" must be a number or a string, not an object")
        (path, error) = try await configError("{\"name\": 5}")
        XCTAssertEqual(error, "Error: \(path):1: \"name\" must be a string, not a number")
        (path, error) = try await configError("{\"queue\": [\"a\", {}]}")
        XCTAssertEqual(
            error, "Error: \(path):1: \"queue\" must be a string or a list of them, not a list holding an object")
        (path, error) = try await configError("{\n  \"queue\": \"a\",\n  \"queue\": \"b\"\n}")
        XCTAssertEqual(error, "Error: \(path):3: key \"queue\" is given twice (also on line 2)")
        // Lines end at a lone CR too (old Mac files), and at CRLF once; an editor's byte order mark is white space.
        (path, error) = try await configError("{\r  \"queue\": \"a\",\r\n  \"frobnicate\": 1\r}")
        XCTAssertEqual(error, "Error: \(path):3: unknown key \"frobnicate\"")
        (path, error) = try await configError("\u{FEFF}{\n  \"frobnicate\": 1\n}")
        XCTAssertEqual(error, "Error: \(path):2: unknown key \"frobnicate\"")
        (path, error) = try await configError("\u{FEFF}{\"concurrency\": 2,}")
        XCTAssertTrue(error.hasPrefix("Error: \(path):1:22: invalid JSON"), error)
        let printInFile = try file("{\"print\": true}")
        let result = await run(["config", "--print", "--config", printInFile])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(result.err, "Error: \(printInFile):1: unknown key \"print\"\n")
        (path, error) = try await configError("{\"config\": \"/etc/other.json\"}")
        XCTAssertEqual(error, "Error: \(path):1: \"config\" cannot be set in a config file")
        // A bad value is caught by the worker's own check and located in the file.
        (path, error) = try await configError("{\n  \"concurrency\": 2,\n  \"shutdown-timeout\": \"soon\"\n}")
        XCTAssertEqual(
            error,
            "Error: \(path):3: invalid duration for '--shutdown-timeout': 'soon' (write 30s, 500ms, 2m, 1h30m, 7d or a "
                + "number of seconds)")
        (path, error) = try await configError("{\"concurrency\": 0}")
        XCTAssertEqual(
            error, "Error: \(path):1: invalid value for '--concurrency': '0' (expected a positive whole number)")
        (path, error) = try await configError("{\n  \"queue\": [\"a\"],\n  \"concurrency\": 2\n  \"x\": 1\n}")
        XCTAssertEqual(error, "Error: \(path):4:3: invalid JSON: expected ',' or '}'")
        (path, error) = try await configError("{\n  \"queue\": [\"a\",]\n}")
        XCTAssertEqual(error, "Error: \(path):2:17: invalid JSON: unexpected character ']'")
        // An empty list is refused as `--queue ''` is, not taken for the default queue.
        (path, error) = try await configError("{\n  \"queue\": []\n}")
        XCTAssertEqual(
            error, "Error: \(path):2: invalid value for '--queue': no queue (give at least one, e.g. default)")
        (path, error) = try await configError("\n[\"queue\"]")
        XCTAssertEqual(error, "Error: \(path):2: the config file must hold a JSON object of options, not an array")
        (path, error) = try await configError("")
        XCTAssertEqual(error, "Error: \(path):1:1: invalid JSON: unexpected end of input")

        let missing = "/nonexistent/nr-\(UUID().uuidString).json"
        let missingFile = await run(["worker", "--config", missing])
        XCTAssertEqual(missingFile.code, 2)
        XCTAssertEqual(missingFile.err, "Error: cannot read the config file \(missing): No such file or directory\n")
    }

    /// A bad value from a `RUNNER_*` variable names the variable, not the option nobody typed; the same value as a
    /// flag names the flag.
    func testEnvironmentValueErrorsNameTheVariable() async {
        let cases: [([String], [String: String], String)] = [
            (
                ["worker"], ["RUNNER_CONCURRENCY": "abc"],
                "Error: invalid value for RUNNER_CONCURRENCY: 'abc' (expected a positive whole number)"
            ),
            (
                ["config", "--print"], ["RUNNER_LEASE_TTL": "soon"],
                "Error: invalid duration for RUNNER_LEASE_TTL: 'soon' (write 30s, 500ms, 2m, 1h30m, 7d or a number "
                    + "of seconds)"
            ),
            (
                ["config", "--print"], ["RUNNER_QUEUES": " , "],
                "Error: invalid value for RUNNER_QUEUES: ' , ' (an empty queue name: give names separated by commas, "
                    + "e.g. high,default)"
            ),
            // A list of no queue at all is not the default queue.
            (
                ["config", "--print"], ["RUNNER_QUEUES": ","],
                "Error: invalid value for RUNNER_QUEUES: ',' (an empty queue name: give names separated by commas, "
                    + "e.g. high,default)"
            ),
            // An empty name between commas or at the end is refused too, not left out: `--queue ''` is.
            (
                ["config", "--print"], ["RUNNER_QUEUES": "a,,b"],
                "Error: invalid value for RUNNER_QUEUES: 'a,,b' (an empty queue name: give names separated by commas, "
                    + "e.g. high,default)"
            ),
            (
                ["worker"], ["RUNNER_QUEUES": "high,default,"],
                "Error: invalid value for RUNNER_QUEUES: 'high,default,' (an empty queue name: give names separated by "
                    + "commas, e.g. high,default)"
            ),
            (
                ["config", "--print"], ["RUNNER_LEASE_TTL": "500ms"],
                "Error: invalid value for RUNNER_LEASE_TTL: it must be at least 1s"
            ),
            // A default job timeout of 0 timed out every job without one of its own at once (found by breaker16).
            (
                ["config", "--print"], ["RUNNER_DEFAULT_TIMEOUT": "0"],
                "Error: invalid value for RUNNER_DEFAULT_TIMEOUT: it must be at least 1ms"
            ),
            (
                ["config", "--print", "--default-timeout", "0s"], [:],
                "Error: invalid value for '--default-timeout': it must be at least 1ms"
            ),
            // A result retention of 0 deleted every result as it was recorded (found by breaker16).
            (
                ["config", "--print"], ["RUNNER_RESULT_RETENTION": "0"],
                "Error: invalid value for RUNNER_RESULT_RETENTION: it must be at least 1s"
            ),
            (
                ["control", "--redis", "127.0.0.1:1", "--result-retention", "500ms"], [:],
                "Error: invalid value for '--result-retention': it must be at least 1s"
            ),
            // A command without --config: its environment is located too.
            (
                ["status"], ["RUNNER_NAMESPACE": "a b"],
                "Error: invalid value for RUNNER_NAMESPACE: 'a b' (1 to 128 characters; no braces, colons, spaces "
                    + "or control characters)"
            ),
        ]
        for (arguments, environment, expected) in cases {
            let result = await run(arguments, environment: environment)
            XCTAssertEqual(result.code, 2, "\(environment)")
            XCTAssertEqual(result.err.split(separator: "\n").first.map(String.init), expected)
        }
        let flag = await run(["worker", "--concurrency", "abc"], environment: ["RUNNER_CONCURRENCY": "2"])
        XCTAssertEqual(
            flag.err.split(separator: "\n").first.map(String.init),
            "Error: invalid value for '--concurrency': 'abc' (expected a positive whole number)")
        let emptyQueue = await run(["config", "--print", "--queue", ""], environment: [:])
        XCTAssertEqual(
            emptyQueue.err.split(separator: "\n").first.map(String.init),
            "Error: invalid value for '--queue': '' (an empty queue name)")
        // submit says the same, not the hint about braces and colons.
        let emptySubmitQueue = await run(["submit", "--queue", "", "--", "true"], environment: [:])
        XCTAssertEqual(emptySubmitQueue.code, 2, emptySubmitQueue.err)
        XCTAssertEqual(
            emptySubmitQueue.err.split(separator: "\n").first.map(String.init),
            "Error: invalid value for '--queue': '' (an empty queue name)")
    }

    /// A name over its length limit says so, with its length and the limit, instead of the rules of its characters
    /// (which it may well follow): the namespace, runner and control-plane names, queues, nodes, and runner ids.
    func testANameTooLongSaysHowLongItIsAndTheLimit() async throws {
        let long = String(repeating: "n", count: 129)
        let quoted = "'" + String(repeating: "n", count: 80) + "… (129 bytes)'"
        let longNode = String(repeating: "n", count: 201)
        let quotedNode = "'" + String(repeating: "n", count: 80) + "… (201 bytes)'"
        let tooLong = "(too long: 129 characters, at most 128)"
        let cases: [([String], [String: String], String)] = [
            (["status", "--namespace", long], [:], "invalid value for '--namespace': \(quoted) \(tooLong)"),
            (
                ["config", "--print"], ["RUNNER_NAMESPACE": long],
                "invalid value for RUNNER_NAMESPACE: \(quoted) \(tooLong)"
            ),
            (["config", "--print", "--name", long], [:], "invalid value for '--name': \(quoted) \(tooLong)"),
            (["control", "--name", long], [:], "invalid value for '--name': \(quoted) \(tooLong)"),
            (
                ["worker", "--resume-identity", long], [:],
                "invalid value for '--resume-identity': \(quoted) \(tooLong)"
            ),
            (["config", "--print", "--queue", long], [:], "invalid value for '--queue': \(quoted) \(tooLong)"),
            (["submit", "--queue", long, "--", "true"], [:], "invalid value for '--queue': \(quoted) \(tooLong)"),
            (["drain", long], [:], "invalid runner id \(quoted) \(tooLong)"),
            (
                ["config", "--print", "--node", longNode], [:],
                "invalid value for '--node': \(quotedNode) (too long: 201 characters, at most 200)"
            ),
            (
                ["migrate", "r1", "--to", longNode], [:],
                "invalid value for '--to': \(quotedNode) (too long: 201 characters, at most 200)"
            ),
            // At the limit, a name is taken (submit then only fails to reach Redis).
            (
                ["submit", "--namespace", String(repeating: "n", count: 128), "--", "true"], [:],
                "cannot reach Redis at 127.0.0.1:1: Connection refused"
            ),
        ]
        for (arguments, environment, expected) in cases {
            let command = arguments[0]
            let result = await run(
                [command, "--redis", "127.0.0.1:1"] + arguments.dropFirst(), environment: environment)
            XCTAssertEqual(result.out, "")
            XCTAssertEqual(
                result.err.split(separator: "\n").first.map(String.init), "Error: \(expected)", "\(arguments)")
            XCTAssertEqual(result.code, expected.hasPrefix("cannot reach") ? 1 : 2, "\(arguments)")
        }
    }

    /// Every comma list (the worker's --queue, --label and --env-allow as flags, `RUNNER_*` variables or config file
    /// values, submit's --require) refuses an empty item, naming the option (or variable, or file line) and quoting
    /// the value: `--queue a,,b` was one queue named `a,,b`, `RUNNER_LABELS=a=1,,b=2` left the empty label out.
    func testAnEmptyItemInACommaListIsAUsageError() async throws {
        let queueHint = "give names separated by commas, e.g. high,default"
        let labelHint = "give K=V labels separated by commas, e.g. gpu=a100,zone=eu"
        let cases: [([String], [String: String], String)] = [
            (
                ["worker", "--queue", "a,,b"], [:],
                "invalid value for '--queue': 'a,,b' (an empty queue name: \(queueHint))"
            ),
            (
                ["config", "--print", "--queue", ",a"], [:],
                "invalid value for '--queue': ',a' (an empty queue name: \(queueHint))"
            ),
            (
                ["config", "--print", "--queue", "high", "--queue", "a,"], [:],
                "invalid value for '--queue': 'a,' (an empty queue name: \(queueHint))"
            ),
            (
                ["worker", "--label", "gpu=a100,,zone=eu"], [:],
                "invalid value for '--label': 'gpu=a100,,zone=eu' (an empty label: \(labelHint))"
            ),
            (
                ["config", "--print"], ["RUNNER_LABELS": "gpu=a100,"],
                "invalid value for RUNNER_LABELS: 'gpu=a100,' (an empty label: \(labelHint))"
            ),
            (
                ["config", "--print", "--env-allow", "LANG,,TZ"], [:],
                "invalid value for '--env-allow': 'LANG,,TZ' (an empty variable name: give names separated by commas, "
                    + "e.g. LANG,TZ)"
            ),
            (
                ["config", "--print"], ["RUNNER_ENV_ALLOW": ",LANG"],
                "invalid value for RUNNER_ENV_ALLOW: ',LANG' (an empty variable name: give names separated by commas, "
                    + "e.g. LANG,TZ)"
            ),
            (
                ["submit", "--require", "gpu=a100,", "--", "true"], [:],
                "invalid value for '--require': 'gpu=a100,' (an empty label: \(labelHint))"
            ),
            // A runner reads `--queue a,b` as two queues: submit refuses a queue name no runner could read.
            (
                ["submit", "--queue", "a,b", "--", "true"], [:],
                "invalid value for '--queue': 'a,b' (one queue name, without commas)"
            ),
        ]
        for (arguments, environment, expected) in cases {
            let command = arguments[0]
            let result = await run(
                [command, "--redis", "127.0.0.1:1"] + arguments.dropFirst(), environment: environment)
            XCTAssertEqual(result.code, 2, "\(arguments) \(environment)")
            XCTAssertEqual(result.out, "")
            XCTAssertEqual(result.err, "Error: \(expected)\nSee 'runner \(command) --help'.\n", "\(arguments)")
        }
        // In a config file, as a list item or a string: located at the key's line.
        var (path, error) = try await configError("{\n  \"queue\": [\"high\", \"a,,b\"]\n}")
        XCTAssertEqual(
            error, "Error: \(path):2: invalid value for '--queue': 'a,,b' (an empty queue name: \(queueHint))")
        (path, error) = try await configError("{\"label\": \",gpu=a100\"}")
        XCTAssertEqual(
            error, "Error: \(path):1: invalid value for '--label': ',gpu=a100' (an empty label: \(labelHint))")

        // Without an empty item, a list is its items, wherever it is written.
        let flags = try await layered(["--queue", "high,default", "--queue", "low", "--label", "gpu=a100, zone=eu"])
        var configuration = try WorkerCommand.configuration(flags).0
        XCTAssertEqual(configuration.queues, ["high", "default", "low"])
        XCTAssertEqual(configuration.labels, try LabelSet(["gpu": "a100", "zone": "eu"]))
        let path2 = try file("{\"queue\": \"high,default\", \"env-allow\": [\"LANG,TZ\", \"HOME\"]}")
        configuration = try WorkerCommand.configuration(try await layered(["--config", path2])).0
        XCTAssertEqual(configuration.queues, ["high", "default"])
        XCTAssertEqual(configuration.isolation.environmentAllowlist, ["LANG", "TZ", "HOME"])
        // Past the checks, submit only fails to reach Redis.
        let submit = await run(["submit", "--redis", "127.0.0.1:1", "--require", "gpu=a100,zone=eu", "--", "true"])
        XCTAssertEqual(submit.code, 1, submit.err)
        XCTAssertTrue(submit.err.hasPrefix("Error: cannot reach Redis at 127.0.0.1:1"), submit.err)
    }

    /// A worker default or ceiling outside what a job spec accepts (`JobLimits.accepted`, the rule submit applies to
    /// its --memory, --pids and --cpu) is refused at start and by config --print, naming the option where it was
    /// given (flag, RUNNER_* variable, config file line) with the range in the option's units, exit 2: otherwise the
    /// runner starts and every cgroup job fails.
    func testWorkerLimitsOutsideTheSpecRangeAreRefused() async throws {
        let cases: [([String], String)] = [
            (
                ["--default-cpu", "5"],
                "invalid value for '--default-cpu': '5' is below 10 (from 10 to 1000000 millicores)"
            ),
            (
                ["--max-cpu", "1000001"],
                "invalid value for '--max-cpu': '1000001' is above 1000000 (from 10 to 1000000 millicores)"
            ),
            (
                ["--default-memory", "100K"],
                "invalid value for '--default-memory': '100K' is below 1M (write 64M, 1G or a number of bytes)"
            ),
            (
                ["--max-memory", "64"],
                "invalid value for '--max-memory': '64' is below 1M (write 64M, 1G or a number of bytes)"
            ),
            (
                ["--default-pids", "99999999"],
                "invalid value for '--default-pids': '99999999' is above 4194304 (from 1 to 4194304)"
            ),
            (
                ["--max-pids", "4194305"],
                "invalid value for '--max-pids': '4194305' is above 4194304 (from 1 to 4194304)"
            ),
        ]
        for (options, message) in cases {
            for command in [["config", "--print"], ["worker", "--redis", "127.0.0.1:1"]] {
                let result = await run(command + options)
                XCTAssertEqual(result.code, 2, "\(command + options): \(result.err)")
                XCTAssertEqual(result.out, "")
                XCTAssertEqual(result.err, "Error: \(message)\nSee 'runner \(command[0]) --help'.\n")
            }
        }
        let environment = await run(["config", "--print"], environment: ["RUNNER_DEFAULT_CPU": "5"])
        XCTAssertEqual(environment.code, 2)
        XCTAssertEqual(
            environment.err.split(separator: "\n").first.map(String.init),
            "Error: invalid value for RUNNER_DEFAULT_CPU: '5' is below 10 (from 10 to 1000000 millicores)")
        let (path, error) = try await configError("{\n  \"max-memory\": \"64\"\n}")
        XCTAssertEqual(
            error,
            "Error: \(path):2: invalid value for '--max-memory': '64' is below 1M (write 64M, 1G or a number of bytes)")
        // The bounds themselves are accepted.
        let bounds = await run([
            "config", "--print", "--default-cpu", "10", "--max-cpu", "1000000", "--default-memory", "1M",
            "--max-memory", "1024T", "--default-pids", "1", "--max-pids", "4194304",
        ])
        XCTAssertEqual(bounds.code, 0, bounds.err)
    }

    /// `--concurrency 9223372036854775807` registered the runner, then trapped it (arithmetic overflow in its
    /// intake's count, exit 132) with its lease and record left behind (found by breaker19): above 4096 it is a usage
    /// error, from a flag, a variable or a config file alike; 4096 itself is accepted.
    func testConcurrencyAbove4096IsAUsageError() async throws {
        // Digits beyond an Int are said to be too large as well (they were 'expected a positive whole number').
        for value in ["99999999999999999999", "9223372036854775807", "4611686018427387904", "4097"] {
            for command in [["config", "--print"], ["worker", "--redis", "127.0.0.1:1"]] {
                let result = await run(command + ["--concurrency", value])
                XCTAssertEqual(result.code, 2, "\(command) \(value): \(result.err)")
                XCTAssertEqual(result.out, "")
                XCTAssertEqual(
                    result.err,
                    "Error: invalid value for '--concurrency': '\(value)' is too large (it must be at most 4096)\n"
                        + "See 'runner \(command[0]) --help'.\n")
            }
        }
        let environment = await run(
            ["worker", "--redis", "127.0.0.1:1"], environment: ["RUNNER_CONCURRENCY": "9223372036854775807"])
        XCTAssertEqual(environment.code, 2)
        XCTAssertEqual(
            environment.err.split(separator: "\n").first.map(String.init),
            "Error: invalid value for RUNNER_CONCURRENCY: '9223372036854775807' is too large (it must be at most 4096)")
        let (path, error) = try await configError("{\n  \"concurrency\": 5000\n}")
        XCTAssertEqual(
            error, "Error: \(path):2: invalid value for '--concurrency': '5000' is too large (it must be at most 4096)")
        let bound = await run(["config", "--print", "--concurrency", "4096"])
        XCTAssertEqual(bound.code, 0, bound.err)
        let row = bound.out.split(separator: "\n").first { $0.hasPrefix("concurrency ") }
        XCTAssertEqual(row?.split(separator: " "), ["concurrency", "4096", "flag"], bound.out)
    }

    /// A default above its ceiling is named where the user wrote it: the flag, the variable or the file line.
    func testADefaultLimitAboveItsCeilingNamesWhereItWasWritten() async throws {
        let flag = await run(["config", "--print", "--default-memory", "1G", "--max-memory", "64M"])
        XCTAssertEqual(flag.code, 2)
        XCTAssertEqual(
            flag.err,
            "Error: invalid value for '--default-memory': '1G' is above the ceiling --max-memory 64M\n"
                + "See 'runner config --help'.\n")
        let variable = await run(
            ["config", "--print", "--max-memory", "64M"], environment: ["RUNNER_DEFAULT_MEMORY": "1G"])
        XCTAssertEqual(variable.code, 2)
        XCTAssertEqual(
            variable.err.split(separator: "\n").first.map(String.init),
            "Error: invalid value for RUNNER_DEFAULT_MEMORY: '1G' is above the ceiling --max-memory 64M")
        let (path, error) = try await configError("{\n  \"default-pids\": 500,\n  \"max-pids\": 100\n}")
        XCTAssertEqual(
            error, "Error: \(path):2: invalid value for '--default-pids': '500' is above the ceiling --max-pids 100")
    }

    func testEnvironmentSwitchMustBeASwitch() async {
        let result = await run(["config", "--print"], environment: ["RUNNER_NO_REAPER": "maybe"])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(
            result.err.split(separator: "\n").first,
            "Error: invalid value for RUNNER_NO_REAPER: 'maybe' (expected 1, true, yes, on, 0, false, no or off)")
    }

    func testConfigPrintShowsEveryOptionWithItsSource() async throws {
        let path = try file("{\n  \"profile\": \"high-performance\",\n  \"queue\": [\"high\", \"default\"]\n}")
        let environment = [
            "RUNNER_REDIS": "redis://ops:s3cret@redis.example:6380/2", "RUNNER_SHUTDOWN_TIMEOUT": "1m",
        ]
        var result = await run(
            ["config", "--print", "--config", path, "--node", "n7", "--no-reaper"], environment: environment)
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.err, "")
        let lines = result.out.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        func row(_ name: String) -> [String]? { lines.first { $0.first == name } }
        XCTAssertEqual(lines.first, ["OPTION", "VALUE", "SOURCE"])
        XCTAssertEqual(row("redis"), ["redis", "redis://ops:***@redis.example:6380/2", "env:RUNNER_REDIS"])
        XCTAssertEqual(row("queue"), ["queue", "high,default", "file:\(path):3"])
        XCTAssertEqual(row("concurrency"), ["concurrency", "8", "profile:high-performance"])
        XCTAssertEqual(row("shutdown-timeout"), ["shutdown-timeout", "1m", "env:RUNNER_SHUTDOWN_TIMEOUT"])
        XCTAssertEqual(row("node"), ["node", "n7", "flag"])
        XCTAssertEqual(row("no-reaper"), ["no-reaper", "true", "flag"])
        XCTAssertEqual(row("keep-work-dirs"), ["keep-work-dirs", "false", "default"])
        XCTAssertEqual(row("lease-ttl"), ["lease-ttl", "15s", "default"])
        XCTAssertEqual(row("profile"), ["profile", "high-performance", "file:\(path):2"])
        XCTAssertFalse(result.out.contains("s3cret"))
        // Every worker option is listed, once.
        let listed = lines.dropFirst().compactMap(\.first)
        let workerOptions = WorkerCommand.spec.options.map { String($0.name.dropFirst(2)) }.filter { $0 != "help" }
        XCTAssertEqual(listed, workerOptions)

        result = await run(["config", "--print", "--json", "--config", path], environment: environment)
        XCTAssertEqual(result.code, 0, result.err)
        let object = try JSONValue(parsing: result.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(object["queue"], ["value": ["high", "default"], "source": .string("file:\(path):3")])
        XCTAssertEqual(object["concurrency"], ["value": 8, "source": "profile:high-performance"])
        XCTAssertEqual(object["keep-work-dirs"], ["value": false, "source": "default"])
        XCTAssertEqual(object["run-as"], ["value": nil, "source": "default"])
        XCTAssertEqual(object["redis"]?["value"], "redis://ops:***@redis.example:6380/2")
        XCTAssertEqual(object.objectValue?.count, workerOptions.count)

        // The same errors as the worker, and --print is needed.
        result = await run(["config", "--print", "--lease-ttl", "0s"])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(
            result.err.split(separator: "\n").first, "Error: invalid value for '--lease-ttl': it must be at least 1s")
        result = await run(["config"])
        XCTAssertEqual(result.code, 2)
        XCTAssertEqual(result.err.split(separator: "\n").first, "Error: nothing to do: give --print")
    }

    /// A comma list in a flag or the file is shown as the items the worker takes, as one in a variable already was:
    /// `--queue 'x, y'` was printed as the one queue "x, y" (`["x, y"]` in --json), and a file's `"env-allow":
    /// ["LANG, TZ"]` as "LANG, TZ".
    func testConfigPrintShowsACommaListAsItsItems() async throws {
        let path = try file(#"{"env-allow": ["LANG, TZ"], "label": "a=1, b=2"}"#)
        let result = await run(["config", "--print", "--json", "--config", path, "--queue", "x, y", "--queue", "z"])
        XCTAssertEqual(result.code, 0, result.err)
        let object = try JSONValue(parsing: result.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(object["queue"]?["value"], ["x", "y", "z"])
        XCTAssertEqual(object["env-allow"]?["value"], ["LANG", "TZ"])
        XCTAssertEqual(object["label"]?["value"], ["a=1", "b=2"])
        let table = await run(["config", "--print", "--config", path, "--queue", "x, y"])
        XCTAssertEqual(table.code, 0, table.err)
        let row = table.out.split(separator: "\n").first { $0.hasPrefix("queue ") }.map {
            $0.split(separator: " ").map(String.init)
        }
        XCTAssertEqual(row, ["queue", "x,y", "flag"], table.out)
    }

    /// config --print shows what the worker will use, not what was typed: sizes and durations in their canonical
    /// spelling (`2M` of a duration is two minutes, `64mb` of a size 64 MiB), numbers as JSON numbers, and `null`
    /// (`-` in the table) for every option that sets nothing, "none" and "off" defaults included.
    func testConfigPrintShowsTheEffectiveNormalizedValue() async throws {
        let path = try file("{\n  \"kill-grace\": 90,\n  \"log-limit\": 1048576\n}")
        let options = [
            "config", "--print", "--config", path, "--shutdown-timeout", "2M", "--max-memory", "64mb",
            "--default-timeout", "1.5s", "--events-maxlen", "500", "--max-cpu", "2000",
        ]
        var result = await run(options)
        XCTAssertEqual(result.code, 0, result.err)
        let rows = result.out.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        let expected = [
            "shutdown-timeout 2m flag", "max-memory 64M flag", "default-timeout 1s500ms flag",
            "kill-grace 1m30s file:\(path):2", "log-limit 1M file:\(path):3", "default-memory - default",
            "metrics-listen - default", "lease-ttl 15s default",
        ]
        for line in expected {
            let cells = line.split(separator: " ").map(String.init)
            XCTAssertEqual(rows.first { $0.first == cells[0] }, cells, result.out)
        }

        result = await run(options + ["--json"])
        XCTAssertEqual(result.code, 0, result.err)
        let object = try JSONValue(parsing: result.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(object["shutdown-timeout"]?["value"], "2m")
        XCTAssertEqual(object["max-memory"]?["value"], "64M")
        XCTAssertEqual(object["events-maxlen"]?["value"], 500)
        XCTAssertEqual(object["max-cpu"]?["value"], 2000)
        XCTAssertEqual(object["reschedule-limit"], ["value": 3, "source": "default"])
        XCTAssertEqual(object["log-limit"]?["value"], "1M")
        for unset in [
            "default-memory", "default-pids", "default-cpu", "max-pids", "metrics-listen", "run-as", "exit-after-jobs",
        ] {
            XCTAssertEqual(object[unset], ["value": nil, "source": "default"], unset)
        }
        // A number from the environment as the worker reads it, not as written (`02`).
        let padded = await run(["config", "--print", "--json"], environment: ["RUNNER_CONCURRENCY": "02"])
        XCTAssertEqual(padded.code, 0, padded.err)
        let paddedObject = try JSONValue(parsing: padded.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(paddedObject["concurrency"], ["value": 2, "source": "env:RUNNER_CONCURRENCY"])
        XCTAssertEqual(DurationParser.text(.zero), "0s")
        XCTAssertEqual(DurationParser.text(.seconds(7 * 86400)), "7d")
        XCTAssertEqual(DurationParser.text(.seconds(5400)), "1h30m")
        XCTAssertEqual(DurationParser.text(.milliseconds(500)), "500ms")
        for text in ["30s", "500ms", "2m", "1h30m", "7d", "1d1h1m1s1ms"] {
            XCTAssertEqual(DurationParser.parse(text).map(DurationParser.text), text)
        }
    }

    /// The default name is derived when the worker starts: shown with this host's name and `<pid>` for the
    /// worker's pid, not a placeholder; a name given, or a resumed identity, is shown as the worker would use it.
    func testConfigPrintShowsTheNameTheWorkerWouldDerive() async throws {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        var result = await run(["config", "--print"])
        XCTAssertEqual(result.code, 0, result.err)
        let row = result.out.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            .first { $0.first == "name" }
        XCTAssertEqual(row, ["name", "\(host)-<pid>", "default"])
        XCTAssertFalse(result.out.contains("hostname-pid"), result.out)
        result = await run(["config", "--print", "--json"])
        let object = try JSONValue(parsing: result.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(object["name"], ["value": .string("\(host)-<pid>"), "source": "default"])
        result = await run(["config", "--print", "--json", "--resume-identity", "old-runner"])
        XCTAssertEqual(result.code, 0, result.err)
        let resumed = try JSONValue(parsing: result.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(resumed["name"], ["value": "old-runner", "source": "default"])
        result = await run(["config", "--print", "--json", "--name", "r7"])
        let named = try JSONValue(parsing: result.out.trimmingCharacters(in: .newlines))
        XCTAssertEqual(named["name"], ["value": "r7", "source": "flag"])
    }

    /// No option needs code of its own to be settable: every one in the worker's table (flags added by anyone
    /// included) is taken from the file and from its variable, and shows up with that source.
    func testEveryWorkerOptionIsSettableFromTheFileAndTheEnvironment() async throws {
        let options = WorkerCommand.spec.options.filter { !["--help", "--config"].contains($0.name) }
        var members: [String] = []
        var environment: [String: String] = [:]
        for option in options {
            let key = "\"\(option.name.dropFirst(2))\""
            let value = option.name == "--profile" ? "development" : "x"
            switch option.kind {
            case .flag: members.append("\(key): true")
            case .value: members.append("\(key): \"\(value)\"")
            case .repeated: members.append("\(key): [\"x\", \"y\"]")
            }
            XCTAssertNotNil(option.environment, "\(option.name) has no RUNNER_* variable")
            environment[option.environment ?? ""] = option.kind == .flag ? "off" : value
        }
        let path = try file("{\n" + members.joined(separator: ",\n") + "\n}")
        let fromFile = try await layered(["--config", path])
        let fromEnvironment = try await layered(["--config", path], environment: environment)
        for (index, option) in options.enumerated() {
            XCTAssertEqual(
                ConfigurationLayers.source(of: option.name, in: fromFile), "file:\(path):\(index + 2)", option.name)
            XCTAssertEqual(
                ConfigurationLayers.source(of: option.name, in: fromEnvironment),
                "env:\(option.environment ?? "")", option.name)
            guard option.kind == .flag else { continue }
            XCTAssertTrue(fromFile.flag(option.name), option.name)
            XCTAssertFalse(
                fromEnvironment.flag(option.name), "RUNNER_* 'off' turns the file's true off: \(option.name)")
        }
    }
}
