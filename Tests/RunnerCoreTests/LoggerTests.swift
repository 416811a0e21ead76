import Foundation
import Synchronization
import XCTest

@testable import RunnerCore

final class LoggerTests: XCTestCase {
    private final class Lines: Sendable {
        let lines = Mutex<[String]>([])
    }

    private func logger(_ level: Logger.Level, _ format: Logger.Format) -> (Logger, Lines) {
        let sink = Lines()
        return (
            Logger(label: "runner", level: level, format: format) { line in sink.lines.withLock { $0.append(line) } },
            sink
        )
    }

    func testCountsHaveTheirSingularOrPlural() {
        XCTAssertEqual(counted(0, "job", "jobs"), "0 jobs")
        XCTAssertEqual(counted(1, "job", "jobs"), "1 job")
        XCTAssertEqual(counted(1, "entry", "entries"), "1 entry")
        XCTAssertEqual(counted(3, "entry", "entries"), "3 entries")
    }

    func testJSONLinesCarryTheirKeysAndFieldsAndNoFieldReplacesThem() throws {
        let (logger, sink) = logger(.debug, .json)
        logger.debug("job received", ["job": "j1", "queue": "high", "msg": "field named msg"])
        let line = try XCTUnwrap(sink.lines.withLock { $0.first })
        XCTAssertTrue(line.hasPrefix("{\"ts\":\""), line)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        XCTAssertEqual(object["level"], "debug")
        XCTAssertEqual(object["logger"], "runner")
        XCTAssertEqual(object["msg"], "job received")
        XCTAssertEqual(object["job"], "j1")
        XCTAssertEqual(object["queue"], "high")
        XCTAssertEqual(object["field_msg"], "field named msg")
        XCTAssertEqual(Set(object.keys), ["ts", "level", "logger", "msg", "job", "queue", "field_msg"])
    }

    func testLevelsBelowTheLoggersAreDroppedAndTextLinesShowFields() {
        let (logger, sink) = logger(.warning, .text)
        logger.debug("hidden")
        logger.info("hidden too")
        logger.warning("cannot start", ["job": "j1", "reason": "two words"])
        let lines = sink.lines.withLock { $0 }
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].hasSuffix(" warning [runner] cannot start job=j1 reason=\"two words\""), lines[0])
        XCTAssertEqual(Logger.Level(name: "WARNING"), .warning)
        XCTAssertNil(Logger.Level(name: "verbose"))
    }

    /// A job spec's env var name, argv or cwd and a control entry's command reach log lines; written raw, a line
    /// break in one forged a whole line after it and an escape sequence drove the terminal (found by breaker19). The
    /// text format escapes every control character (C0, DEL, C1) in the message and in each field's key and value.
    func testTextLinesEscapeControlCharactersInTheMessageAndTheFields() throws {
        let (logger, sink) = logger(.info, .text)
        let forged = "X\n2026-12-04T16:27:11.000Z error   [runner] FORGED"
        logger.error(
            "rejected entry: spec.env has an invalid variable name \"\(forged)\"",
            ["command": "drain\u{1B}[2J\r", "cwd\t": "/tmp/a b\u{7F}\u{9B}31m"])
        let lines = sink.lines.withLock { $0 }
        XCTAssertEqual(lines.count, 1)
        let line = try XCTUnwrap(lines.first)
        // The time, then the rest of the line exactly.
        XCTAssertEqual(
            String(line.dropFirst("2026-12-04T16:27:11.000Z ".count)),
            "error   [runner] rejected entry: spec.env has an invalid variable name \"X\\u{a}2026-12-04T16:27:11.000Z "
                + "error   [runner] FORGED\" command=drain\\u{1b}[2J\\u{d} cwd\\u{9}=\"/tmp/a b\\u{7f}\\u{9b}31m\"")
        XCTAssertFalse(
            line.unicodeScalars.contains { $0.properties.generalCategory == .control }, line.debugDescription)

        // A quote in a field's value cannot end the value and start a forged field.
        logger.info("cancel", ["job": "j1\" runner=forged", "reason": "a\"b"])
        let quoted = try XCTUnwrap(sink.lines.withLock { $0.last })
        XCTAssertTrue(quoted.hasSuffix(#" cancel job="j1\u{22} runner=forged" reason=a\u{22}b"#), quoted)

        // JSON lines were already one line each: their strings are JSON-escaped, as before.
        let (json, jsonSink) = self.logger(.info, .json)
        json.error("a\nb", ["command": "drain\u{1B}[2J"])
        let object = try XCTUnwrap(jsonSink.lines.withLock { $0.first })
        XCTAssertTrue(object.contains(#""msg":"a\nb""#), object)
        XCTAssertTrue(object.contains(#""command":"drain\u001b[2J""#), object)
    }
}
