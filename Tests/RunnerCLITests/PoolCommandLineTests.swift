import XCTest

@testable import RunnerCLI

/// The control commands' usage errors are caught before anything is sent (exit 2, one line naming the mistake).
final class PoolCommandLineTests: XCTestCase {
    private func firstError(_ arguments: [String]) async -> (Int32, String) {
        let output = CapturedOutput()
        let code = await RunnerCommandLine.run(arguments: arguments, environment: [:], console: output.console)
        return (code, output.standardError.split(separator: "\n").first.map(String.init) ?? "")
    }

    func testEveryControlCommandHasHelpAndIsListed() async {
        let output = CapturedOutput()
        _ = await RunnerCommandLine.run(arguments: ["--help"], environment: [:], console: output.console)
        for name in ["drain", "resume", "shutdown", "cancel", "migrate"] {
            XCTAssertTrue(output.standardOutput.contains("\n  \(name) "), "overview lists \(name)")
            let help = CapturedOutput()
            let code = await RunnerCommandLine.run(
                arguments: [name, "--help"], environment: [:], console: help.console)
            XCTAssertEqual(code, 0)
            XCTAssertTrue(help.standardOutput.contains("\nUSAGE: runner \(name) "), name)
        }
    }

    func testUsageMistakes() async {
        let cases: [([String], String)] = [
            (["drain"], "Error: missing runner id"),
            (["drain", "r1", "--all"], "Error: give either RUNNER or '--all', not both"),
            (
                ["resume", "--all", "--wait"],
                "Error: '--wait' waits for one runner's outcome; it cannot be used with '--all'"
            ),
            (["shutdown", "a:b"], "Error: invalid runner id 'a:b' (no braces, colons, spaces or control characters)"),
            (["migrate", "r1"], "Error: missing '--to NODE'"),
            (
                ["migrate", "r1", "--to", "n 2"],
                "Error: invalid value for '--to': 'n 2' (a node name, no spaces or control characters)"
            ),
            (
                ["migrate", "r1", "--to", "n2", "--takeover-timeout", "soon"],
                "Error: invalid duration for '--takeover-timeout': 'soon' (write 30s, 500ms, 2m, 1h30m, 7d or a number of seconds)"
            ),
            (["cancel"], "Error: missing job id"),
            (
                ["worker", "--name", "a", "--resume-identity", "b"],
                "Error: '--name a' and '--resume-identity b' name different runners"
            ),
            (
                ["worker", "--exit-after-jobs", "0"],
                "Error: invalid value for '--exit-after-jobs': '0' (expected a positive whole number)"
            ),
        ]
        for (arguments, expected) in cases {
            let (code, line) = await firstError(arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(line, expected, "\(arguments)")
        }
    }

    /// `--count 0` means "none of the old ones": for `events --follow` only new events, elsewhere nothing at all,
    /// which is refused with what it would do (before any connection).
    func testCountZeroIsForEventsFollowOnly() async {
        let cases: [([String], String)] = [
            (
                ["events", "--count", "0"],
                "Error: '--count 0' prints nothing without --follow (with --follow: only events that come after it starts)"
            ),
            (["dead", "--count", "0"], "Error: '--count 0' would list no dead letters (give 1 or more)"),
            (
                ["events", "--follow", "--count", "-1"],
                "Error: invalid value for '--count': '-1' (expected a whole number; 0 only with --follow)"
            ),
        ]
        for (arguments, expected) in cases {
            let (code, line) = await firstError(["--redis", "127.0.0.1:1"] + arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(line, expected, "\(arguments)")
        }
        // Accepted: it gets as far as connecting.
        let (code, line) = await firstError(["--redis", "127.0.0.1:1", "events", "--follow", "--count", "0"])
        XCTAssertEqual(code, 1, line)
        XCTAssertTrue(line.contains("cannot reach Redis at 127.0.0.1:1"), line)
    }

    /// `--wait-timeout` without `--wait` would be ignored: every command with the pair refuses it, before anything
    /// is sent.
    func testWaitTimeoutNeedsWaitEverywhere() async {
        for arguments in [
            ["submit", "--wait-timeout", "5s", "--", "true"], ["drain", "r4", "--wait-timeout", "2s"],
            ["resume", "r4", "--wait-timeout", "1s"], ["shutdown", "r4", "--wait-timeout", "1s"],
            ["shutdown", "--all", "--now", "--wait-timeout", "1s"],
            ["migrate", "r4", "--to", "n2", "--wait-timeout", "1s"],
            ["cancel", "nosuch", "--wait-timeout", "1s"],
        ] {
            let (code, line) = await firstError(["--redis", "127.0.0.1:1"] + arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(line, "Error: --wait-timeout needs --wait", "\(arguments)")
        }
    }

    func testStatusShowsARunnerThatReleasedItsLeaseOnPurposeAsItIsNotLost() {
        XCTAssertEqual(StatusCommand.stateText("migrating", leaseHeld: false), "migrating")
        XCTAssertEqual(StatusCommand.stateText("migrated", leaseHeld: false), "migrated")
        XCTAssertEqual(StatusCommand.stateText("lost", leaseHeld: false), "lost")
        XCTAssertEqual(StatusCommand.stateText("running", leaseHeld: false), "running (lost)")
        XCTAssertEqual(StatusCommand.stateText("drained", leaseHeld: true), "drained")
    }
}
