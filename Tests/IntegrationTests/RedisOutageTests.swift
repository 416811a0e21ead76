import Foundation
import RedisClient
import TestSupport
import XCTest

/// Redis restarted under a running job: the job keeps running and its result is written once Redis is back.
final class RedisOutageTests: PrivateRedisTestCase {
    override func makeServer() throws -> RedisServerProcess { try RedisServerProcess(appendOnly: true) }

    /// An outage is not an error for `top`: it says it reconnects, as `events --follow` does, and carries on.
    func testTopSaysItReconnectsWithoutAnErrorLineWhileRedisIsAway() throws {
        let top = try startCLI(["top", "--interval", "100ms"])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { top.output.contains("RUNNERS") }, top.output)
        redis = nil
        try server.stop()
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { top.output.contains("; reconnecting (every 0.1 seconds)") }, top.output)
        let outage = top.output.split(separator: "\n").filter { $0.contains("reconnecting") }
        XCTAssertTrue(outage.allSatisfy { $0.hasPrefix("runner: cannot reach Redis at ") }, "\(outage)")
        XCTAssertFalse(top.output.contains("Error:"), top.output)
        try server.restart()
        let before = top.output.count
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { top.output.dropFirst(before).contains("RUNNERS") }, top.output)
        kill(top.process.processIdentifier, SIGINT)
        XCTAssertNotNil(top.waitForExit(timeout: 10))
        redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
    }

    func testResultArrivesAfterRedisRestart() throws {
        let runner = try startRunner(["--lease-ttl", "6s"])
        // A client waiting for the result rides out the restart too.
        let waiter = try startCLI(["submit", "--wait", "--id", "rr-1", "--shell", "sleep 2; echo survived"])
        try waitForState("rr-1", ["running"])
        redis = nil
        try server.restart()
        redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
        let record = try waitForState("rr-1", ["succeeded"], timeout: .seconds(30))
        XCTAssertEqual(record["output_tail"], "survived\n")
        XCTAssertEqual(waiter.waitForExit(timeout: 30), 0)
        XCTAssertEqual(waiter.output, "survived\n")
        XCTAssertEqual(try events(of: "rr-1").filter { $0 == "job.succeeded" }.count, 1)
        // The runner carries on: a new job after the restart runs too.
        try submit(["--", "echo", "again"], id: "rr-2")
        XCTAssertEqual(try waitForState("rr-2", ["succeeded"])["output_tail"], "again\n")
        XCTAssertTrue(runner.isRunning)
        let lostLines = runner.log.split(separator: "\n").filter { $0.contains("lost connection") }
        // Four connections: intake, presence, jobs, control.
        XCTAssertLessThanOrEqual(lostLines.count, 4, "one line per connection, not one per retry:\n\(runner.log)")
    }
}

/// Redis restarted without persistence: everything about the job is gone except what the runner knows.
final class VolatileRedisTests: PrivateRedisTestCase {
    func testResultIsRebuiltAfterRedisLostEverything() throws {
        try startRunner()
        try submit(["--shell", "sleep 1.5; echo rebuilt"], id: "vol-1")
        let before = try waitForState("vol-1", ["running"])
        redis = nil
        try server.restart()
        redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
        XCTAssertEqual(try job("vol-1"), [:], "the restarted server starts empty")
        let record = try waitForState("vol-1", ["succeeded"])
        XCTAssertEqual(record["started_at"], before["started_at"])
        XCTAssertEqual(record["queue"], "default")
        XCTAssertEqual(record["spec"], before["spec"])
        // The submission time is gone with the record: the entry id's milliseconds stand in for it.
        XCTAssertEqual(record["submitted_at"], before["stream_id"].map { String($0.prefix { $0 != "-" }) })
        XCTAssertEqual(record["output_tail"], "rebuilt\n")
        // And the runner keeps taking jobs (its group was recreated).
        try submit(["--", "echo", "next"], id: "vol-2")
        XCTAssertEqual(try waitForState("vol-2", ["succeeded"])["output_tail"], "next\n")
    }
}

/// Shutting down while Redis is away: bounded, honest about what was not recorded, and nothing lost.
final class ShutdownWithoutRedisTests: PrivateRedisTestCase {
    override func makeServer() throws -> RedisServerProcess { try RedisServerProcess(appendOnly: true) }

    func testShutdownWithRedisGoneExitsAndTheJobRunsAgainLater() throws {
        let runner = try startRunner(name: "lonely", ["--shutdown-timeout", "500ms", "--kill-grace", "500ms"])
        try submit(["--", "sleep", "60"], id: "sw-1")
        let pid = try runningPid("sw-1")
        redis = nil
        try server.stop()
        runner.signal(SIGTERM)
        let started = ContinuousClock.now
        XCTAssertEqual(runner.waitForExit(timeout: 30), 1, runner.log)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(25))
        XCTAssertTrue(
            runner.log.contains("Error: stopped without recording 1 job because Redis was unreachable"), runner.log)
        XCTAssertFalse(processIsAlive(pid))

        try server.restart()
        redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 1, "still pending")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(20)) { (try? self.send(["EXISTS", self.key("runner:lonely")]).int) == 0 })
        try startRunner(name: "lonely", ["--shutdown-timeout", "500ms", "--kill-grace", "500ms"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(20)) {
                (try? self.job("sw-1")["pid"]).flatMap { Int32($0 ?? "") } ?? pid != pid
            },
            "the job does not run again under the restarted runner")
    }

    /// A Redis that stops answering (SIGSTOP: connected, no reply) must not hold up a shutdown: a second SIGTERM
    /// stops the jobs at once and the shutdown timeout counts from the first. Before, the runner first waited for
    /// its draining record to be written (a reply timeout, 10 s) and each read-ahead entry's hand-back, and only then
    /// started the timeout and looked at the second signal (found by breaker17).
    func testASecondSigtermStopsTheJobsAtOnceWhileRedisDoesNotAnswer() throws {
        // A TTL long enough that the watchdog (two thirds of it without a renewal) does not stop the job first.
        let runner = try startRunner(
            name: "stalled", ["--lease-ttl", "60s", "--shutdown-timeout", "60s", "--kill-grace", "500ms"])
        try submit(["--", "sleep", "60"], id: "st-1")
        let pid = try runningPid("st-1")
        let redisPid = try XCTUnwrap(server.pid)
        kill(redisPid, SIGSTOP)
        defer { kill(redisPid, SIGCONT) }
        runner.signal(SIGTERM)
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { runner.log.contains("shutting down: intake stopped") })
        runner.signal(SIGTERM)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) },
            "the job still runs 5 s after the second SIGTERM:\n\(runner.log)")
        kill(redisPid, SIGCONT)
        XCTAssertEqual(runner.waitForExit(timeout: 30), 0, runner.log)
        XCTAssertEqual(try job("st-1")["state"], "queued", "handed back")
    }
}

/// A Redis that stalls (a long script, a fork, a paused host) and then answers everything at once.
final class StalledRedisTests: PrivateRedisTestCase {
    /// The epoch that a stall ends is followed by one new epoch, not two: the new epoch's rotation, sent during the
    /// stall and answered late, is confirmed again from a fresh send. Before, its clock started at the late send,
    /// so the next renewal found it overdue and ended it at once ("registered again as lease epoch N", then "lease
    /// epoch N ended (not_renewed)"), rescheduling what it had read meanwhile (found by breaker17).
    func testAnEpochBegunByALateReplyIsNotEndedAgainAtOnce() throws {
        let runner = try startRunner(name: "stall", ["--lease-ttl", "3s"])
        // Redis answers nobody for 4 s: longer than two thirds of the TTL (the epoch ends, and its rotation is sent
        // during the stall) plus a third of it.
        let stall = """
            local t = redis.call('TIME')
            local start = t[1] * 1000 + t[2] / 1000
            repeat t = redis.call('TIME') until t[1] * 1000 + t[2] / 1000 - start > 4000
            return 1
            """
        XCTAssertEqual(try send(["EVAL", stall, "0"]).int, 1)
        func ends() -> Int { runner.log.components(separatedBy: " ended (").count - 1 }
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { runner.log.contains("registered again as lease epoch") }, runner.log)
        XCTAssertEqual(ends(), 1, runner.log)
        XCTAssertFalse(waitUntil(timeout: .seconds(3)) { ends() > 1 }, "the new epoch ended again:\n\(runner.log)")
        XCTAssertTrue(runner.isRunning)
    }
}
