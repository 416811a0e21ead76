import Foundation
import RedisClient
import XCTest

@testable import RunnerCLI
@testable import RunnerCore

/// `nr_utc`, the Lua that writes a millisecond epoch as a person reads it in a reason (`the cancel was requested at
/// 2026-12-04T11:02:03.773Z`), run by a real Redis: Redis' Lua has no os.date, so the calendar is computed there.
final class ReasonTimeScriptTests: IntegrationTestCase {
    /// The texts `nr_utc` gives for `values`, in order.
    private func utc(_ values: [String]) throws -> [String] {
        let script =
            ControlScripts.utcTimeFunction + "\n"
            + "local out = {}\nfor i, v in ipairs(ARGV) do out[i] = nr_utc(v) end\nreturn out"
        let reply = try send(["EVAL", script, "0"] + values)
        return try XCTUnwrap(reply.array).map { $0.string ?? "<\($0)>" }
    }

    func testAMillisecondEpochIsWrittenAsISO8601UTCWithMilliseconds() throws {
        let expected: [(String, String)] = [
            ("0", "1970-01-01T00:00:00.000Z"),
            ("31535999999", "1970-12-31T23:59:59.999Z"),
            // Leap days: 2000 is a leap year (divisible by 400), 2100 is not (by 100), 2400 is.
            ("951825600001", "2000-02-29T12:00:00.001Z"),
            ("951868800000", "2000-03-01T00:00:00.000Z"),
            ("1709251199999", "2024-02-29T23:59:59.999Z"),
            ("1796382123773", "2026-12-04T11:02:03.773Z"),
            ("4107542399999", "2100-02-28T23:59:59.999Z"),
            ("4107542400000", "2100-03-01T00:00:00.000Z"),
            ("13574585228009", "2400-02-29T06:07:08.009Z"),
            ("253402300799999", "9999-12-31T23:59:59.999Z"),
            // Outside the years 1970 to 9999, or no whole number of milliseconds: the text as it was.
            ("253402300800000", "253402300800000"),
            ("-1", "-1"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("9223372036854775807", "9223372036854775807"),
            ("1.5", "1.5"),
            ("0x10", "0x10"),
            ("", ""),
            ("soon", "soon"),
        ]
        XCTAssertEqual(try utc(expected.map(\.0)), expected.map(\.1))

        // Every day's first and last millisecond of 1970 to 2500 (all the leap-year rules), and values all over the
        // range up to 9999, agree with the C library's calendar (`formatTimestamp`, what `runner result` prints).
        var values: [Int] = []
        for day in stride(from: 0, through: 194_000, by: 1) where day % 7 == 0 || day % 365 < 3 || day % 1461 > 1457 {
            values += [day * 86_400_000, day * 86_400_000 + 86_399_999]
        }
        var generator = SystemRandomNumberGenerator()
        values += (0..<2000).map { _ in Int.random(in: 0...253_402_300_799_999, using: &generator) }
        for chunk in stride(from: 0, to: values.count, by: 5000).map({
            Array(values[$0..<min($0 + 5000, values.count)])
        }) {
            let texts = try utc(chunk.map(String.init))
            for (value, text) in zip(chunk, texts) where text != formatTimestamp(value) {
                XCTFail("nr_utc(\(value)) = \(text), expected \(formatTimestamp(value))")
                return
            }
        }
    }
}
