import Foundation
import RedisClient
import TestSupport
import XCTest

/// Redis away for longer than two thirds of the lease TTL, again and again: the runner ends its epochs, reschedules
/// its own jobs, and none of that counts as a job that kills its runner.
final class RepeatedOutageTests: PrivateRedisTestCase {
    override func makeServer() throws -> RedisServerProcess { try RedisServerProcess(appendOnly: true) }

    func testOutagesEndEpochsWithoutUsingUpTheRescheduleBound() throws {
        let runner = try startRunner(["--lease-ttl", "2s", "--reschedule-limit", "1", "--shutdown-timeout", "1s"])
        try submit(["--", "sleep", "60"], id: "out-1")
        var pid = try runningPid("out-1")
        for outage in 1...2 {
            redis = nil
            try server.stop()
            // The kill switch stops the job while Redis is away.
            XCTAssertTrue(waitUntil(timeout: .seconds(10)) { !processIsAlive(pid) }, "outage \(outage)")
            try server.restart()
            redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
            var record: [String: String] = [:]
            XCTAssertTrue(
                try waitUntil(timeout: .seconds(20)) {
                    record = try job("out-1")
                    return record["state"] == "running" && Int(record["attempt"] ?? "") == outage + 1
                        && Int(record["pid"] ?? "") != nil && Int32(record["pid"]!) != pid
                }, "after outage \(outage): \(record)\n\(runner.log)")
            XCTAssertEqual(record["reschedules"] ?? "0", "0", "a runner ending its own epoch is not a lost runner")
            pid = Int32(record["pid"]!)!
        }
        XCTAssertFalse(try events(of: "out-1").contains("job.dead"))
        XCTAssertTrue(runner.isRunning)
    }
}

/// The jobs stream's group destroyed while jobs run: it is made again from 0 and the running entries come again as
/// new; none of them is started a second time.
final class GroupRecreatedTests: IntegrationTestCase {
    func testARunningEntryDeliveredAgainIsNotRunTwice() throws {
        let starts = FileManager.default.temporaryDirectory.appendingPathComponent("starts-\(namespace)")
        defer { try? FileManager.default.removeItem(at: starts) }
        try startRunner(name: "g1", ["--concurrency", "2"])
        try startRunner(name: "g2", ["--concurrency", "2"])
        try submit(["--shell", "echo $NR_RUNNER $NR_ATTEMPT >> '\(starts.path)'; sleep 3"], id: "grp-1")
        _ = try runningPid("grp-1")
        _ = try send(["XGROUP", "DESTROY", key("jobs:default"), "runners"])
        let record = try waitForState("grp-1", ["succeeded"], timeout: .seconds(30))
        let lines = try String(contentsOf: starts, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "started \(lines)")
        XCTAssertEqual(record["attempt"], "1")
        XCTAssertEqual(try events(of: "grp-1").filter { $0 == "job.started" }.count, 1)
        XCTAssertFalse(try events().contains { $0.type == "job.stale_result" })
        // Nothing stays pending once the one copy recorded its result.
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                try self.send(["XPENDING", self.key("jobs:default"), "runners"]).array?.first?.int == 0
            })
    }
}

/// A result that Redis refuses for good (here the events stream `SET` to a string while the job runs) is retried
/// until it is accepted, holding the job's slot: given up, the entry stayed pending, the stray-pending check claimed
/// it again in the same epoch, the claim took that for a resent one, and the attempt ran a second time.
final class RefusedResultTests: IntegrationTestCase {
    func testAResultRefusedUntilAKeyIsFixedIsRecordedOnceAndTheJobRunsOnce() throws {
        let starts = FileManager.default.temporaryDirectory.appendingPathComponent("refused-\(namespace)")
        defer { try? FileManager.default.removeItem(at: starts) }
        let runner = try startRunner(name: "rr", ["--no-reaper", "--lease-ttl", "3s"])
        try submit(["--shell", "echo $NR_ATTEMPT >> '\(starts.path)'; sleep 1"], id: "refused-1")
        _ = try runningPid("refused-1")
        _ = try send(["SET", key("events"), "not a stream"])
        let refused = "Redis refused a job write: WRONGTYPE key \(key("events")) is a string, expected a stream"
        XCTAssertTrue(waitUntil(timeout: .seconds(15)) { runner.log.contains(refused) }, runner.log)
        // Two stray-pending checks (one lease TTL apart) pass without a second start, the record still running.
        let startedAgain = waitUntil(timeout: .seconds(7)) {
            ((try? String(contentsOf: starts, encoding: .utf8)) ?? "").split(separator: "\n").count > 1
        }
        XCTAssertFalse(startedAgain, "the attempt ran again while its result was refused")
        XCTAssertEqual(try job("refused-1")["state"], "running")

        _ = try send(["DEL", key("events")])
        let record = try waitForState("refused-1", ["succeeded"], timeout: .seconds(20))
        XCTAssertEqual(record["attempt"], "1")
        // Until the next stray-pending check has passed: nothing more starts.
        let ranTwice = waitUntil(timeout: .seconds(5)) {
            ((try? String(contentsOf: starts, encoding: .utf8)) ?? "").split(separator: "\n").count > 1
        }
        XCTAssertFalse(ranTwice, "started \(String(describing: try? String(contentsOf: starts, encoding: .utf8)))")
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0, "the entry is acked and deleted")
    }

    /// A claim refused until the key is fixed is retried, not counted as a job left unrecorded: the clean stop
    /// afterwards exits 0 without claiming that Redis was unreachable.
    func testAClaimRefusedUntilAKeyIsFixedRunsTheJobOnceAndTheStopIsClean() throws {
        let runner = try startRunner(name: "rc", ["--no-reaper", "--lease-ttl", "3s"])
        _ = try send(["SET", key("events"), "not a stream"])
        let spec = #"{"argv":["true"]}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "refused-2", "spec", spec])
        let refused = "Redis refused a job write: WRONGTYPE key \(key("events")) is a string, expected a stream"
        XCTAssertTrue(waitUntil(timeout: .seconds(15)) { runner.log.contains(refused) }, runner.log)
        _ = try send(["DEL", key("events")])
        XCTAssertEqual(try waitForState("refused-2", ["succeeded"], timeout: .seconds(20))["attempt"], "1")
        XCTAssertEqual(try events(of: "refused-2").filter { $0 == "job.started" }.count, 1)
        XCTAssertEqual(runner.stop(), 0, runner.log)
        XCTAssertFalse(runner.log.contains("stopped without recording"), runner.log)
    }
}
