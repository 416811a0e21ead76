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
}
