import RunnerProtocol
import XCTest

final class ControlCommandTests: XCTestCase {
    private func parse(_ fields: [String: String]) -> Result<ControlCommand, ControlCommandError> {
        Result { () throws(ControlCommandError) in try ControlCommand(fields: fields) }
    }

    func testEveryCommandRoundTripsThroughItsFields() throws {
        let commands: [ControlCommand] = [
            .drain, .resume, .shutdown(now: false), .shutdown(now: true), .cancel(job: "job-1"),
            .migrate(toNode: "n2", takeoverTimeoutMs: 1234), .migrate(toNode: "n2", takeoverTimeoutMs: 315_360_000_000),
        ]
        for command in commands {
            let fields = Dictionary(uniqueKeysWithValues: command.fields)
            XCTAssertEqual(try parse(fields).get(), command)
        }
    }

    func testAFieldGivenTwiceIsRefused() throws {
        let twice = Result { () throws(ControlCommandError) in
            try ControlCommand(pairs: [("command", "drain"), ("command", "shutdown")])
        }
        XCTAssertThrowsError(try twice.get()) { error in
            XCTAssertEqual((error as? ControlCommandError)?.message, "the entry has the field 'command' more than once")
        }
        XCTAssertEqual(try ControlCommand(pairs: [("command", "cancel"), ("job", "j1")]), .cancel(job: "j1"))
    }

    func testDefaults() throws {
        XCTAssertEqual(try parse(["command": "shutdown"]).get(), .shutdown(now: false))
        XCTAssertEqual(
            try parse(["command": "migrate", "to_node": "n9"]).get(),
            .migrate(toNode: "n9", takeoverTimeoutMs: ControlCommand.defaultTakeoverTimeoutMs))
    }

    func testMalformedCommandsSayWhatIsWrong() {
        let cases: [([String: String], String)] = [
            ([:], "the entry has no 'command' field"),
            (["command": "explode"], "unknown command 'explode' (known: drain, resume, shutdown, cancel, migrate)"),
            (["command": "cancel"], "cancel: the 'job' field is missing"),
            (["command": "cancel", "job": "a b"], "cancel: invalid job id:"),
            (["command": "shutdown", "now": "soon"], "shutdown: 'now' must be 1 or 0, got 'soon'"),
            (["command": "migrate"], "migrate: the 'to_node' field is missing"),
            (["command": "migrate", "to_node": "n 2"], "migrate: 'to_node' must be a node name without spaces"),
            (
                ["command": "migrate", "to_node": String(repeating: "n", count: 201)],
                "migrate: 'to_node' is too long: 201 characters, at most 200"
            ),
            (
                ["command": "migrate", "to_node": "n2", "takeover_timeout_ms": "-5"],
                "migrate: 'takeover_timeout_ms' must be a positive number of milliseconds, got '-5'"
            ),
            // Int.max was taken, and the runner trapped adding it to Redis's clock as it finished the migration: it
            // died without releasing its lease, its record left 'draining' (found by breaker16).
            (
                ["command": "migrate", "to_node": "n2", "takeover_timeout_ms": "9223372036854775807"],
                "migrate: 'takeover_timeout_ms' is 9223372036854775807, more than 315360000000 (10 years)"
            ),
        ]
        for (fields, expected) in cases {
            switch parse(fields) {
            case .success(let command): XCTFail("\(fields) parsed as \(command)")
            case .failure(let error): XCTAssertTrue(error.message.hasPrefix(expected), "\(error.message) for \(fields)")
            }
        }
    }
}
