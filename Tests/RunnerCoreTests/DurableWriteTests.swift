import RedisClient
import Synchronization
import XCTest

@testable import RunnerCore

/// What a durable write logs while Redis refuses it: once per write, and once when it lands.
final class DurableWriteTests: XCTestCase {
    private final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }
    }

    private func logger() -> (Logger, Lines) {
        let sink = Lines()
        return (
            Logger(label: "runner", level: .debug, format: .text) { line in sink.lines.withLock { $0.append(line) } },
            sink
        )
    }

    /// A write refused twice (a key of the wrong type, fixed meanwhile) logs the refusal once, and one info line
    /// when it lands, naming how many tries it took.
    func testARetriedWriteSaysItsErrorOnceAndThatItWasRecorded() async {
        let (logger, sink) = logger()
        let tries = Mutex(0)
        let value = await DurableWrite.perform(logger: logger, initialBackoff: .milliseconds(1), untilAccepted: true) {
            let attempt = tries.withLock { count in
                count += 1
                return count
            }
            if attempt < 4 {
                throw RedisServerError("WRONGTYPE Operation against a key holding the wrong kind of value")
            }
            return 7
        }
        XCTAssertEqual(value, 7)
        let lines = sink.all
        XCTAssertEqual(lines.filter { $0.contains("WRONGTYPE") }.count, 1, "\(lines)")
        XCTAssertEqual(lines.count, 2, "\(lines)")
        XCTAssertTrue(lines.last?.contains(" info    [runner] job write recorded after 4 tries") == true, "\(lines)")

        // A write that lands at once says nothing.
        let (quiet, none) = self.logger()
        _ = await DurableWrite.perform(logger: quiet) { 1 }
        XCTAssertEqual(none.all, [])
    }

    /// Writes given up for the same error (a caller that tries again each turn) say it once, not on every turn; a
    /// different error is said at once.
    func testTheSameGivenUpErrorIsLoggedOncePerInterval() async {
        let (logger, sink) = logger()
        let key = "{nr-test-\(UUID().uuidString)}:runners"
        for _ in 0..<3 {
            let value: Int? = await DurableWrite.perform(logger: logger) {
                throw RedisServerError("WRONGTYPE \(key) holds the wrong kind of value")
            }
            XCTAssertNil(value)
        }
        XCTAssertEqual(sink.all.count, 1, "\(sink.all)")
        XCTAssertTrue(
            sink.all.first?.contains("could not record a job write: ") == true
                && sink.all.first?.contains("WRONGTYPE \(key)") == true, "\(sink.all)")
        let _: Int? = await DurableWrite.perform(logger: logger) { throw RedisServerError("ERR other \(key)") }
        XCTAssertEqual(sink.all.count, 2, "\(sink.all)")
    }
}
