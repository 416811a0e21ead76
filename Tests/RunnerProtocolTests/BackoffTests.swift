import RunnerProtocol
import XCTest

final class BackoffTests: XCTestCase {
    func testExponentialCappedWithJitter() {
        let none = Backoff(initialMs: 100, maxMs: 1000, multiplier: 2, jitter: .none)
        XCTAssertEqual((1...6).map { none.delayMs(afterFailures: $0, random: 0.5) }, [100, 200, 400, 800, 1000, 1000])
        let equal = Backoff(initialMs: 1000, maxMs: 60_000)
        XCTAssertEqual(equal.jitter, .equal, "equal jitter by default")
        XCTAssertEqual(equal.delayMs(afterFailures: 1, random: 0), 500)
        XCTAssertEqual(equal.delayMs(afterFailures: 1, random: 0.999_999), 999)
        XCTAssertEqual(equal.delayMs(afterFailures: 3, random: 0), 2000)
        let full = Backoff(initialMs: 1000, maxMs: 60_000, jitter: .full)
        XCTAssertEqual(full.delayMs(afterFailures: 2, random: 0), 0)
        XCTAssertEqual(full.delayMs(afterFailures: 2, random: 0.5), 1000)
        XCTAssertEqual(equal.delayMs(afterFailures: 1000, random: 1), 60_000, "capped, however many failures")
    }

    func testDelaysOfSpecsAtIntMaxStayWholeNumbers() throws {
        // A spec may give initial_ms and max_ms up to Int.max; Double(Int.max) is 2^63, which Int cannot hold: the
        // worker trapped on the first failure of such a job, and again on every restart (it was found by breaker16).
        let spec = try JobSpec(
            json: Array(
                #"{"argv":["false"],"max_attempts":2,"backoff":{"initial_ms":9223372036854775807,"jitter":"none"}}"#
                    .utf8))
        let longest = 1 << 62  // Backoff.longestDelayMs: far below Int.max, with room for Redis's clock
        let huge = try XCTUnwrap(spec.backoff)
        XCTAssertEqual(huge.delayMs(afterFailures: 1, random: 0.5), longest)
        let growing = Backoff(initialMs: 1, maxMs: Int.max, multiplier: 2, jitter: .none)
        XCTAssertEqual(growing.delayMs(afterFailures: 100, random: 0), longest)
    }

    func testSpecFieldParsesAndRoundTrips() throws {
        let parsed = try JobSpec(
            json: Array(
                #"{"shell":"x","max_attempts":3,"backoff":{"initial_ms":250,"max_ms":4000,"multiplier":1.5,"jitter":"full"}}"#
                    .utf8))
        XCTAssertEqual(parsed.backoff, Backoff(initialMs: 250, maxMs: 4000, multiplier: 1.5, jitter: .full))
        XCTAssertEqual(try JobSpec(json: Array(parsed.json.serialized.utf8)), parsed)
        let defaults = try JobSpec(json: Array(#"{"shell":"x","backoff":{}}"#.utf8))
        XCTAssertEqual(defaults.backoff, Backoff())
        XCTAssertNil(try JobSpec(json: Array(#"{"shell":"x"}"#.utf8)).backoff)
    }

    func testWholeMultipliersBeyondIntRoundTrip() throws {
        // `runner result` prints the spec again from its parsed form: a multiplier of 1e300 (whole, but beyond Int)
        // trapped there (found by breaker16).
        let spec = try JobSpec(json: Array(#"{"argv":["true"],"backoff":{"multiplier":1e300}}"#.utf8))
        let again = try JobSpec(json: Array(spec.json.serialized.utf8))
        XCTAssertEqual(again.backoff?.multiplier, 1e300)
        XCTAssertTrue(
            Backoff(multiplier: 3).json.serialized.contains(#""multiplier":3"#), "a whole one stays an integer")
    }

    func testBadBackoffsNameTheField() {
        func rejection(_ backoff: String) -> String? {
            do {
                _ = try JobSpec(json: Array((#"{"shell":"x","backoff":"# + backoff + "}").utf8))
                return nil
            } catch {
                return error.message
            }
        }
        XCTAssertEqual(rejection("3"), "spec.backoff must be an object, got a number")
        XCTAssertEqual(
            rejection(#"{"initial_ms":0}"#), "spec.backoff.initial_ms must be a positive integer, got 0")
        XCTAssertEqual(
            rejection(#"{"multiplier":0.5}"#), "spec.backoff.multiplier must be a number of at least 1, got 0.5")
        XCTAssertEqual(
            rejection(#"{"jitter":"some"}"#), #"spec.backoff.jitter must be "equal", "full" or "none", got "some""#)
        XCTAssertEqual(
            rejection(#"{"initial_ms":5000,"max_ms":10}"#), "spec.backoff.max_ms (10) is smaller than initial_ms (5000)"
        )
    }
}
