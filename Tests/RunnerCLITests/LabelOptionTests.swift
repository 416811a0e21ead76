import RunnerCore
import RunnerProtocol
import XCTest

@testable import RunnerCLI

/// `--label` and `RUNNER_LABELS` on the worker, `--require` on submit, the hook options.
final class LabelOptionTests: XCTestCase {
    private func run(_ arguments: [String]) async -> (Int32, String) {
        let output = CapturedOutput()
        let code = await RunnerCommandLine.run(arguments: arguments, environment: [:], console: output.console)
        return (code, output.standardError)
    }

    func testWorkerLabelsComeFromFlagsOrTheEnvironment() throws {
        let flags = try ParsedArguments(
            ["--label", "gpu=a100", "--label", "zone=eu"], command: WorkerCommand.spec, environment: [:])
        XCTAssertEqual(try WorkerCommand.labels(flags), try LabelSet(["gpu": "a100", "zone": "eu"]))
        let environment = try ParsedArguments(
            [], command: WorkerCommand.spec, environment: ["RUNNER_LABELS": "gpu=a100,zone=eu"])
        XCTAssertEqual(
            try WorkerCommand.configuration(environment).0.labels, try LabelSet(["gpu": "a100", "zone": "eu"]))
        let none = try ParsedArguments([], command: WorkerCommand.spec, environment: [:])
        let configuration = try WorkerCommand.configuration(none).0
        XCTAssertEqual(configuration.labels, LabelSet())
        XCTAssertEqual(configuration.hooks, JobHooksConfiguration())
    }

    func testBadLabelsAndRequirementsAreUsageErrors() async {
        var (code, err) = await run(["worker", "--label", "gpu=a100", "--label", "gpu=h100"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: invalid value for '--label': label 'gpu' is given twice")
        (code, err) = await run(["submit", "--require", "gpu=", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: invalid value for '--require': label 'gpu' must have a value of 1 to 256 bytes")
        (code, err) = await run(["worker", "--hook-timeout", "1ms"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: invalid value for '--hook-timeout': it must be at least 10ms")
    }
}
