import Foundation
import RedisClient
import TestSupport
import XCTest

/// A runner that lost its lease epoch can never record a result for a job that moved on.
final class FencingTests: IntegrationTestCase {
    /// The watchdog process, not the paused runner, stops the job before the lease lapses: no copy of it runs beside
    /// its rescheduled one.
    func testPausedRunnersJobIsKilledByTheWatchdogBeforeTheLeaseLapses() throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("watchdog-\(namespace)")
        defer { try? FileManager.default.removeItem(at: marker) }
        let runner = try startRunner(name: "stopped", ["--lease-ttl", "3s"])
        try submit(
            [
                "--shell",
                "if [ -f '\(marker.path)' ]; then echo second run; else touch '\(marker.path)'; sleep 60 & echo pid=$!; wait; fi",
            ], id: "wd-1")
        let pid = try runningPid("wd-1")
        var child: Int32 = 0
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                child =
                    self.pids(in: (try? self.logBytes("wd-1")).map { String(decoding: $0.stdout, as: UTF8.self) } ?? "")
                    .first ?? 0
                return child > 0
            })

        runner.signal(SIGSTOP)
        defer { runner.signal(SIGCONT) }
        // Killed while the runner is still stopped, and while its lease is still there.
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) && !processIsAlive(child) })
        XCTAssertEqual(try send(["EXISTS", key("runner:stopped")]).int, 1, "killed only after the lease lapsed")
        let state = try String(contentsOfFile: "/proc/\(runner.pid)/stat", encoding: .utf8)
        XCTAssertTrue(state.contains(") T "), "the runner was not stopped: \(state)")
        runner.signal(SIGCONT)

        let record = try waitForState("wd-1", ["succeeded"], timeout: .seconds(30))
        XCTAssertEqual(record["output_tail"], "second run\n")
        XCTAssertEqual(record["attempt"], "2")
        let types = try events(of: "wd-1")
        XCTAssertTrue(types.contains("job.rescheduled"), "\(types)")
        XCTAssertFalse(types.contains("job.failed"), "\(types)")
    }

    func testRunnerPausedPastItsLeaseHasItsResultRefusedAndRegistersAgain() throws {
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("fence-\(namespace)")
        defer { try? FileManager.default.removeItem(at: release) }
        let runner = try startRunner(name: "paused", ["--lease-ttl", "2s", "--no-reaper"])
        try submit(
            [
                "--shell",
                "while [ ! -f '\(release.path)' ]; do sleep 0.02; done; echo attempt $NR_ATTEMPT $NR_FENCING_TOKEN",
            ],
            id: "fence-1")
        let pid = try runningPid("fence-1")
        let first = try job("fence-1")
        XCTAssertEqual(first["attempt"], "1")
        let firstFencing = try XCTUnwrap(Int(first["fencing_token"] ?? ""))

        runner.signal(SIGSTOP)
        // The job ends while its runner is paused; the lease lapses before the runner can say so.
        FileManager.default.createFile(atPath: release.path, contents: nil)
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) }, "the job did not end")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("runner:paused")]).int) == 0 })
        runner.signal(SIGCONT)

        let record = try waitForState("fence-1", ["succeeded"], timeout: .seconds(20))
        XCTAssertEqual(record["attempt"], "2", "the attempt of the ended epoch is not the one recorded")
        XCTAssertGreaterThan(Int(record["fencing_token"] ?? "") ?? 0, firstFencing)
        XCTAssertEqual(record["output_tail"], "attempt 2 \(record["fencing_token"] ?? "")\n")
        let all = try events()
        let stale = all.filter { $0.type == "job.stale_result" && $0.job == "fence-1" }
        XCTAssertEqual(stale.count, 1, "\(all.map(\.type))")
        XCTAssertEqual(stale.first?.data["attempt"] as? Int, 1)
        XCTAssertEqual(stale.first?.data["stream_id"] as? String, first["stream_id"])
        XCTAssertEqual(stale.first?.runner, "paused")
        XCTAssertEqual(all.filter { $0.type == "job.succeeded" && $0.job == "fence-1" }.count, 1)
        let lost = try XCTUnwrap(all.first { $0.type == "runner.lease_lost" })
        XCTAssertEqual(lost.runner, "paused")
        XCTAssertEqual(lost.data["old_lease_held"] as? Bool, false)
        XCTAssertGreaterThan(lost.data["new_epoch"] as? Int ?? 0, lost.data["old_epoch"] as? Int ?? 0)
        let rescheduled = try XCTUnwrap(all.first { $0.type == "job.rescheduled" && $0.job == "fence-1" })
        XCTAssertEqual(rescheduled.data["reason"] as? String, "lease_lost")
        XCTAssertEqual(rescheduled.data["from_runner"] as? String, "paused")
        XCTAssertEqual(rescheduled.data["attempt"] as? Int, 2)
        // It carries on under its new epoch.
        XCTAssertTrue(runner.isRunning)
        try submit(["--", "echo", "later"], id: "fence-2")
        XCTAssertEqual(try waitForState("fence-2", ["succeeded"])["output_tail"], "later\n")
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }
}

extension FencingTests {
    /// A lease key someone SET to another type refuses the renewal and then the new registration: the runner used
    /// to log once and live on with its intake closed for good (state `lost`, its job never rescheduled). It tries
    /// again every second and carries on once the key is fixed.
    func testARunnerWhoseLeaseKeyHasTheWrongTypeRegistersAgainOnceItIsFixed() throws {
        let runner = try startRunner(name: "wrong-lease", ["--lease-ttl", "2s", "--no-reaper"])
        try submit(["--shell", "if [ $NR_ATTEMPT = 1 ]; then exec sleep 60; fi; echo attempt $NR_ATTEMPT"], id: "wl-1")
        let pid = try runningPid("wl-1")
        _ = try send(["DEL", key("runner:wrong-lease")])
        _ = try send(["HSET", key("runner:wrong-lease"), "not", "a string"])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { !processIsAlive(pid) }, "the job was not stopped")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { runner.log.contains("could not register again") }, runner.log)
        _ = try send(["DEL", key("runner:wrong-lease")])
        let record = try waitForState("wl-1", ["succeeded"], timeout: .seconds(20))
        XCTAssertEqual(record["output_tail"], "attempt 2\n")
        XCTAssertEqual(runner.log.components(separatedBy: "could not register again").count, 2, runner.log)
        XCTAssertTrue(runner.isRunning)
        XCTAssertEqual(runner.stop(), 0, runner.log)
    }
}

extension FencingTests {
    /// A jobs stream SET to a string fails every intake read: one line naming the key, not twenty a second; the
    /// runner reads it again once the key is fixed.
    func testAJobsStreamOfTheWrongTypeIsReportedOnceAndReadAgainOnceFixed() throws {
        // At debug: a recheck that finds the key still a string says so only there.
        let runner = try startRunner(name: "wrong-stream", ["--log-level", "debug"])
        _ = try send(["DEL", key("jobs:default")])
        _ = try send(["SET", key("jobs:default"), "not a stream"])
        let warning = "key \(key("jobs:default")) is a string, expected a stream; not reading it until it is fixed"
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { runner.log.contains(warning) }, runner.log)
        // Checked again about 5 s later: still a string, and no second warning (nor a read failing over and over).
        let recheck = "checked key \(key("jobs:default")) again: still a string, still not reading it"
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { runner.log.contains(recheck) }, runner.log)
        XCTAssertEqual(runner.log.components(separatedBy: warning).count, 2, runner.log)
        XCTAssertFalse(runner.log.contains("intake read failed"), runner.log)
        _ = try send(["DEL", key("jobs:default")])
        try submit(["--", "echo", "read again"], id: "ws-1")
        XCTAssertEqual(try waitForState("ws-1", ["succeeded"], timeout: .seconds(20))["output_tail"], "read again\n")
    }
}

extension FencingTests {
    /// The events stream SET to a string: every submit fails, and the runner says so once a minute (its own
    /// resource samples and capacity updates are refused), naming the key, instead of failing silently at debug.
    func testAnEventsStreamOfTheWrongTypeIsWarnedAboutOnceAMinute() throws {
        let runner = try startRunner(name: "wrong-events", ["--monitor-interval", "200ms"])
        let monitor = try RedisMonitor(endpoint: endpoint)
        defer { monitor.close() }
        _ = try send(["DEL", key("events")])
        _ = try send(["SET", key("events"), "not a stream"])
        let warning = "key \(key("events")) is a string, expected a stream; events are lost until it is fixed"
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { runner.log.contains(warning) }, runner.log)
        // Every refused write checks the key's type first (in its script): a few more of them after the warning,
        // and still one warning.
        let refused = monitor.count("TYPE", key: key("events"))
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { monitor.count("TYPE", key: key("events")) >= refused + 3 },
            "no more writes of events\n\(runner.log)")
        XCTAssertEqual(runner.log.components(separatedBy: warning).count, 2, runner.log)
        _ = try send(["DEL", key("events")])
    }
}

/// A runner that cannot renew (Redis stops answering its writes) stops its jobs before its lease can lapse.
final class UnrenewableLeaseTests: PrivateRedisTestCase {
    func testJobsAreStoppedBeforeTheLeaseLapsesAndAreNeverRecordedAsKilled() throws {
        let runner = try startRunner(name: "cut-off", ["--lease-ttl", "3s", "--no-reaper"])
        try submit(
            ["--shell", "if [ $NR_ATTEMPT = 1 ]; then exec sleep 60; fi; echo attempt $NR_ATTEMPT"], id: "cut-1")
        let pid = try runningPid("cut-1")
        // Writes (and so every renewal) wait for 2.6 s: past two thirds of the TTL, short of the TTL itself.
        _ = try send(["CLIENT", "PAUSE", "2600", "WRITE"])
        var leaseLeft = -1
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) {
                leaseLeft = (try? self.send(["PTTL", self.key("runner:cut-off")]).int) ?? -1
                return !processIsAlive(pid)
            }, "the job was not stopped")
        XCTAssertGreaterThan(leaseLeft, 0, "the job was stopped only after the lease lapsed")

        let record = try waitForState("cut-1", ["succeeded"], timeout: .seconds(20))
        XCTAssertEqual(record["attempt"], "2")
        XCTAssertEqual(record["output_tail"], "attempt 2\n")
        let all = try events()
        XCTAssertEqual(
            all.filter { $0.job == "cut-1" && ["job.failed", "job.stale_result"].contains($0.type) }.count, 0)
        let lost = try XCTUnwrap(all.first { $0.type == "runner.lease_lost" })
        XCTAssertEqual(lost.data["reason"] as? String, "not_renewed")
        XCTAssertEqual(lost.data["old_lease_held"] as? Bool, true, "the old token was replaced before it lapsed")
        XCTAssertEqual(lost.data["jobs_stopped"] as? Int, 1)
        let rescheduled = try XCTUnwrap(all.first { $0.type == "job.rescheduled" && $0.job == "cut-1" })
        XCTAssertEqual(rescheduled.data["reason"] as? String, "lease_lost")
        XCTAssertEqual(rescheduled.data["started"] as? Bool, true)
        XCTAssertTrue(runner.isRunning)
        XCTAssertEqual(runner.stop(), 0, runner.log)
        let shutdown = try XCTUnwrap(try events().last { $0.type == "runner.shutdown" })
        XCTAssertEqual(shutdown.data["abandoned"] as? Int, 1)
        XCTAssertEqual(shutdown.data["lease_epochs_lost"] as? Int, 1)
    }
}

extension FencingTests {
    /// The log stream SET to a string mid-job: the output written after it is lost, but the runner says so once,
    /// naming the key; the result still has the output's tail; `runner logs` names the key.
    func testALogStreamOfTheWrongTypeIsNamedOncePerJob() throws {
        let runner = try startRunner(name: "wrong-log", [])
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("wrong-log-\(namespace)")
        defer { try? FileManager.default.removeItem(at: release) }
        try submit(
            [
                "--shell",
                "echo first; while [ ! -f '\(release.path)' ]; do sleep 0.02; done; echo second; sleep 0.2; echo third",
            ], id: "wl-log")
        let log = key("log:wl-log")
        XCTAssertTrue(try waitUntil(timeout: .seconds(20)) { try send(["XLEN", log]).int == 1 }, runner.log)
        _ = try send(["DEL", log])
        _ = try send(["SET", log, "x"])
        FileManager.default.createFile(atPath: release.path, contents: nil)
        let record = try waitForState("wl-log", ["succeeded"])
        XCTAssertEqual(record["output_tail"], "first\nsecond\nthird\n")
        let warning = "the job's output is not recorded: key \(log) is a string, expected a stream"
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { runner.log.contains(warning) }, runner.log)
        let lines = runner.log.split(separator: "\n").filter { $0.contains(warning) }
        XCTAssertEqual(lines.count, 1, runner.log)
        XCTAssertTrue(lines.first?.contains("job=wl-log") == true, runner.log)
        XCTAssertEqual(try send(["GET", log]).string, "x")

        let logs = cli(["logs", "wl-log"])
        XCTAssertEqual(logs.code, 1, logs.err)
        XCTAssertEqual(
            logs.err, "Error: Redis refused the command: WRONGTYPE key \(log) is a string, expected a stream\n")
        XCTAssertEqual(runner.stop(), 0, runner.log)
    }

    /// A log stream whose last entry id was written by hand at the end of the id space: the runner no longer traps
    /// on `ms + 1` (at 2^63 - 1), nor loses the output without a word (beyond an Int); it says so once per job, the
    /// job succeeds with its tail, and the runner goes on to the next job.
    func testALogStreamEndingAtTheLastPossibleIdIsNamedAndTheRunnerGoesOn() throws {
        let runner = try startRunner(name: "last-id", [])
        for (n, planted) in ["9223372036854775807-0", "18446744073709551615-0"].enumerated() {
            let id = "li-\(n)"
            let log = key("log:\(id)")
            _ = try send(["XADD", log, planted, "fd", "meta", "data", "planted"])
            let waited = cli(["submit", "--wait", "--id", id, "--", "echo", "hello"])
            XCTAssertEqual(waited.code, 0, waited.err + runner.log)
            let record = try job(id)
            XCTAssertEqual(record["state"], "succeeded")
            XCTAssertEqual(record["output_tail"], "hello\n")
            let warning =
                "the job's output is not recorded: key \(log) ends with entry \(planted), after which no entry id is "
                + "left; its result keeps the output's tail"
            XCTAssertTrue(waitUntil(timeout: .seconds(5)) { runner.log.contains(warning) }, runner.log)
            XCTAssertEqual(runner.log.split(separator: "\n").filter { $0.contains(warning) }.count, 1, runner.log)
            XCTAssertEqual(try send(["XLEN", log]).int, 1)
        }
        XCTAssertTrue(runner.isRunning, runner.log)
        XCTAssertEqual(cli(["submit", "--wait", "--id", "li-after", "--", "echo", "next"]).code, 0)
        XCTAssertEqual(try send(["XLEN", key("log:li-after")]).int, 1)
        XCTAssertEqual(runner.stop(), 0, runner.log)
    }
}
