import Foundation
import TestSupport
import XCTest

/// The benchmark script at smoke size (a few hundred jobs, no targets asserted), so that it cannot rot: it runs
/// against its own redis-server with the runner built for the tests, and its one JSON object has every figure.
final class BenchSmokeTests: XCTestCase {
    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    func testSmokeRunPrintsEveryFigureAsOneJSONObject() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [
            Self.repository.appendingPathComponent("scripts/bench").path, "--smoke", "--json", "--peers-if-available",
            "--runner", Binaries.runner,
        ]
        // Its progress goes to a log that a failure shows; stdout holds the JSON alone.
        let stdout = Pipe()
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let logHandle = try FileHandle(forWritingTo: logURL)
        process.standardOutput = stdout
        process.standardError = logHandle
        try process.run()
        // Drained on a thread of its own: the pipe must not fill while the script runs.
        let output = Latched<Data>()
        Thread.detachNewThread { output.set(stdout.fileHandleForReading.readDataToEndOfFile()) }
        let finished = waitUntil(timeout: .seconds(300)) { !process.isRunning }
        if !finished {
            // SIGTERM lets the script stop its redis-server and the processes it started.
            process.terminate()
            process.waitUntilExit()
            XCTFail("scripts/bench --smoke did not finish within 300 s:\n\(logTail())")
            return
        }
        process.waitUntilExit()
        try logHandle.close()
        XCTAssertEqual(process.terminationStatus, 0, logTail())
        let data = try XCTUnwrap(output.wait(timeout: 10), "stdout of scripts/bench was not closed")
        let object = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: data) as? [String: Any],
            "stdout is not one JSON object: \(String(decoding: data, as: UTF8.self))")

        var keys = [
            "throughput.runner.c1", "throughput.runner.c2", "throughput.runner.c8", "throughput.limit.c1",
            "throughput.limit.c2", "throughput.limit.c8", "ratio_to_limit_c2", "dispatch_ms.p50", "dispatch_ms.p99",
            "dispatch_ms.result_p50", "dispatch_ms.result_p99", "idle.rss_mb", "idle.redis_cmds_per_s",
            "output_mb_per_s", "output_peak_rss_mb", "pool.redis_cmds_per_s",
        ]
        if (object["throughput"] as? [String: Any])?["rq"] != nil {
            keys += [
                "throughput.rq.c1", "throughput.rq.c2", "throughput.rq.c8", "throughput.celery.c1",
                "throughput.celery.c2", "throughput.celery.c8", "ratio_to_best_peer_c2",
            ]
        } else {
            print("BenchSmokeTests: PyPI was not reachable; the peers (RQ, Celery) were skipped")
        }
        for key in keys {
            let value = key.split(separator: ".").reduce(object as Any?) { ($0 as? [String: Any])?[String($1)] }
            let number = try XCTUnwrap(value as? NSNumber, "\(key) is missing or not a number in \(object)")
            XCTAssertGreaterThan(number.doubleValue, 0, key)
        }
        // Idle CPU may honestly be 0; it must be there and not negative.
        let idle = try XCTUnwrap(object["idle"] as? [String: Any])
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(idle["cpu_seconds"] as? NSNumber).doubleValue, 0)
    }

    private var logURL: URL { FileManager.default.temporaryDirectory.appendingPathComponent("nr-bench-smoke.log") }

    private func logTail() -> String {
        let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(40).joined(separator: "\n")
    }
}

/// A value handed from one thread to another, waited for with a deadline.
private final class Latched<Value: Sendable>: @unchecked Sendable {
    // Guarded by `condition`: set once by the reading thread, read by the test.
    private let condition = NSCondition()
    private var value: Value?

    func set(_ newValue: Value) {
        condition.lock()
        value = newValue
        condition.broadcast()
        condition.unlock()
    }

    func wait(timeout: TimeInterval) -> Value? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while value == nil, condition.wait(until: deadline) {}
        return value
    }
}
