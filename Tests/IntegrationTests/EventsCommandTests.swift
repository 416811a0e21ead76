import Foundation
import RunnerProtocol
import XCTest

/// `runner events` reading back what is on the events stream.
final class EventsCommandTests: IntegrationTestCase {
    /// Adds `count` events of `job` (numbered from `first` in their `data`) in one script.
    private func addEvents(job: String, count: Int, first: Int = 1) throws {
        let script = """
            for i = 0, tonumber(ARGV[2]) - 1 do
              redis.call('XADD', KEYS[1], '*', '\(EventField.type)', 'job.started', '\(EventField.timestamp)',
                '1796383483556', '\(EventField.runner)', 'r1', '\(EventField.job)', ARGV[1], '\(EventField.data)',
                '{"n":' .. (tonumber(ARGV[3]) + i) .. '}', '\(ProtocolVersion.field)', '1')
            end
            """
        _ = try send(["EVAL", script, "1", key("events"), job, String(count), String(first)])
    }

    /// The `n` of each event printed as JSON lines.
    private func numbers(_ result: CLIResult) -> [String] {
        result.stdout.split(separator: "\n").map { line in
            guard let object = (try? JSONValue(parsing: String(line)))?.objectValue,
                let number = object["data"]?.objectValue?["n"]
            else { return "?" }
            return number.serialized
        }
    }

    /// `--count` with `--job` is the job's last events, however many of the pool's came after them; before, the
    /// pool's last `--count` events were read and then filtered, so an older job's printed nothing (exit 0).
    func testTheCountWithAJobIsTheJobsLastEventsHoweverManyCameAfter() throws {
        try addEvents(job: "old-1", count: 3)
        try addEvents(job: "busy-1", count: 2500, first: 100)
        var result = cli(["events", "--json", "--job", "old-1", "--count", "2"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(numbers(result), ["2", "3"])
        result = cli(["events", "--json", "--job", "old-1"])
        XCTAssertEqual(numbers(result), ["1", "2", "3"])
        result = cli(["events", "--json", "--job", "busy-1", "--count", "1500"])
        XCTAssertEqual(numbers(result), (1100...2599).map(String.init))
        result = cli(["events", "--json", "--count", "2"])
        XCTAssertEqual(numbers(result), ["2598", "2599"])
        result = cli(["events", "--json", "--job", "none-1"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.stdout, "")
        XCTAssertEqual(
            result.err,
            "runner: no events of job 'none-1' on the events stream (never submitted, or its events were trimmed)\n")
    }

    /// A --count larger than the stream reads it in pages of at most 1000 entries, with or without --job: it was
    /// read whole in one XREVRANGE, whose reply held about 3 KB per entry (800 MB of RSS for `events --job J --count
    /// 1000000` on 260,000 events, to print one).
    func testACountLargerThanTheStreamReadsItInPages() throws {
        try addEvents(job: "old-1", count: 2)
        try addEvents(job: "busy-1", count: 2400, first: 100)
        for arguments in [["--job", "old-1"], []] {
            let before = try commandCalls()["xrevrange"] ?? 0
            let result = cli(["events", "--json", "--count", "1000000"] + arguments)
            XCTAssertEqual(result.code, 0, result.err)
            XCTAssertEqual(numbers(result).count, arguments.isEmpty ? 2402 : 2, result.stdout.suffix(300).description)
            // Pages of 1000, 1000 and the 402 left.
            XCTAssertEqual((try commandCalls()["xrevrange"] ?? 0) - before, 3, "\(arguments)")
        }
    }
}
