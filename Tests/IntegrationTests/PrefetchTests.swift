import Foundation
import RedisClient
import TestSupport
import XCTest

/// The prefetch buffer: entries read ahead of the free slots are this runner's pending entries that no slot runs;
/// a drain or a shutdown hands them back at once, and they run exactly once.
final class PrefetchTests: IntegrationTestCase {
    /// The stream ids pending for runner `r1` in the default queue.
    private func pendingOfR1() throws -> [String] {
        (try send(["XPENDING", key("jobs:default"), "runners", "-", "+", "100", "r1"]).array ?? []).compactMap {
            $0.array?.first?.string
        }
    }

    /// Three jobs queued before a runner with one slot starts: it runs the first and reads the second ahead (one
    /// entry of prefetch, as many as its concurrency); the third stays undelivered in the stream.
    private func startWithFullBuffer(_ arguments: [String], firstJob: [String]) throws -> RunnerUnderTest {
        try submit(firstJob, id: "pf-1")
        try submit(["--", "true"], id: "pf-2")
        try submit(["--", "true"], id: "pf-3")
        let runner = try startRunner(["--concurrency", "1"] + arguments)
        _ = try runningPid("pf-1")
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try self.pendingOfR1().count == 2 },
            "the running job and the one read ahead are pending: \((try? pendingOfR1()) ?? [])")
        XCTAssertEqual(try job("pf-2")["state"], "queued")
        return runner
    }

    func testDrainHandsTheReadAheadEntryBackAtOnce() throws {
        try startWithFullBuffer([], firstJob: ["--", "sleep", "2"])
        let drain = cli(["drain", "r1", "--wait"])
        XCTAssertEqual(drain.stdout.split(separator: "\n").last, "accepted", drain.err)
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(5)) { try self.events(of: "pf-2").last == "job.handed_back" },
            "handed back while the first job still runs: \((try? events(of: "pf-2")) ?? [])")
        XCTAssertEqual(try job("pf-1")["state"], "running")
        XCTAssertEqual(try pendingOfR1().count, 1, "only the running job is pending for r1")
        XCTAssertFalse(try events(of: "pf-2").contains("job.started"), "never started")
        try waitForState("pf-1", ["succeeded"])
        XCTAssertEqual(try job("pf-2")["state"], "queued")
        XCTAssertEqual(try job("pf-3")["state"], "queued")

        let resume = cli(["resume", "r1", "--wait"])
        XCTAssertEqual(resume.code, 0, resume.err)
        for id in ["pf-2", "pf-3"] {
            try waitForState(id, ["succeeded"])
            XCTAssertEqual(try events(of: id).filter { $0 == "job.started" }.count, 1, "\(id) ran once")
        }
    }

    func testGracefulShutdownHandsTheReadAheadEntryBackBeforeTheRunningJobEnds() throws {
        let runner = try startWithFullBuffer(["--shutdown-timeout", "20s"], firstJob: ["--", "sleep", "2"])
        runner.signal(SIGTERM)
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(5)) { try self.events(of: "pf-2").last == "job.handed_back" },
            "handed back at once: \((try? events(of: "pf-2")) ?? [])")
        XCTAssertEqual(try job("pf-1")["state"], "running", "the running job is still running")
        XCTAssertEqual(runner.waitForExit(timeout: 20), 0, runner.log)
        XCTAssertEqual(try job("pf-1")["state"], "succeeded")
        for id in ["pf-2", "pf-3"] { XCTAssertEqual(try job(id)["state"], "queued", id) }
        XCTAssertEqual(try pendingOfR1(), [])
        let shutdown = try events().last { $0.type == "runner.shutdown" }
        XCTAssertEqual(shutdown?.data["finished"] as? Int, 1)
        XCTAssertEqual(shutdown?.data["handed_back"] as? Int, 1)
    }

    func testABacklogRunsEveryJobOnceWithReadAhead() throws {
        for index in 0..<30 { try submit(["--", "true"], id: "bl-\(index)") }
        try startRunner(["--concurrency", "2"])
        for index in 0..<30 {
            try waitForState("bl-\(index)", ["succeeded"])
            XCTAssertEqual(try events(of: "bl-\(index)").filter { $0 == "job.started" }.count, 1, "bl-\(index)")
        }
        XCTAssertTrue(try waitUntil(timeout: .seconds(5)) { try self.pendingOfR1().isEmpty })
    }
}
