import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// The control plane (and the workers' own reaper) reschedules what lost runners held, through the consumer group.
final class ReaperTests: IntegrationTestCase {
    /// `runner control` in the background, stopped at the end of the test.
    private var controls: [RunnerUnderTest] = []

    override func tearDownWithError() throws {
        for control in controls where control.isRunning {
            XCTAssertEqual(control.stop(timeout: 10), 0, "control did not stop cleanly:\n\(control.log)")
        }
        controls.removeAll()
        try super.tearDownWithError()
    }

    private func startControl(_ arguments: [String] = []) throws -> RunnerUnderTest {
        let control = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "control", subcommand: "control",
            arguments: ["--interval", "200ms"] + arguments)
        controls.append(control)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("reaper")]).int) == 1 },
            "the control plane did not take the leader lease:\n\(control.log)")
        return control
    }

    /// A job that records each attempt in `file` and waits for `release` on its first attempt only.
    private func recordingJob(_ file: URL, release: URL) -> [String] {
        [
            "--shell",
            "echo \"$NR_ATTEMPT $NR_RUNNER\" >> '\(file.path)'; "
                + "if [ $NR_ATTEMPT = 1 ]; then while [ ! -f '\(release.path)' ]; do sleep 0.02; done; fi",
        ]
    }

    func testControlPlaneReschedulesAKilledRunnersJobWithItsAttemptRaised() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("reap-\(namespace)")
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("reap-release-\(namespace)")
        defer { try? FileManager.default.removeItem(at: file); try? FileManager.default.removeItem(at: release) }
        let doomed = try startRunner(name: "doomed", ["--lease-ttl", "1s", "--no-reaper"])
        try startControl()
        try submit(recordingJob(file, release: release), id: "reap-1")
        let pid = try runningPid("reap-1")
        let before = try job("reap-1")

        doomed.signal(SIGKILL)
        XCTAssertNotNil(doomed.waitForExit(timeout: 10))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) }, "the job outlived its runner")
        // Rescheduled, and run by another runner.
        let record = try waitForState("reap-1", ["queued"], timeout: .seconds(10))
        XCTAssertEqual(record["attempt"], "2")
        XCTAssertEqual(record["reschedules"], "1")
        XCTAssertEqual(record["requeued_from"], before["stream_id"])
        try startRunner(name: "heir", ["--no-reaper"])
        let done = try waitForState("reap-1", ["succeeded"])
        XCTAssertEqual(done["runner"], "heir")
        XCTAssertEqual(done["attempt"], "2")
        XCTAssertEqual(try String(contentsOf: file, encoding: .utf8), "1 doomed\n2 heir\n")

        let all = try events()
        let lost = try XCTUnwrap(all.first { $0.type == "runner.lost" })
        XCTAssertEqual(lost.runner, "doomed")
        XCTAssertEqual(lost.data["pending"] as? Int, 1)
        XCTAssertEqual(all.filter { $0.type == "runner.lost" }.count, 1, "runner.lost once")
        let rescheduled = try XCTUnwrap(all.first { $0.type == "job.rescheduled" && $0.job == "reap-1" })
        XCTAssertEqual(rescheduled.data["from_runner"] as? String, "doomed")
        XCTAssertEqual(rescheduled.data["reason"] as? String, "lease_expired")
        XCTAssertEqual(rescheduled.data["attempt"] as? Int, 2)
        XCTAssertEqual(rescheduled.data["previous_stream_id"] as? String, before["stream_id"])
        XCTAssertEqual(rescheduled.runner, "control")
        XCTAssertEqual(all.filter { $0.type == "job.succeeded" && $0.job == "reap-1" }.count, 1)
        XCTAssertEqual(all.filter { $0.type == "job.stale_result" }.count, 0)

        // The dead consumer left the group; the registry keeps it as lost.
        let consumers = try send(["XINFO", "CONSUMERS", key("jobs:default"), "runners"]).array ?? []
        XCTAssertEqual(consumers.map { strings($0)["name"] }, ["heir"])
        let registry = try hash(key("runners"))
        let record2 = try JSONSerialization.jsonObject(with: Data((registry["doomed"] ?? "{}").utf8)) as? [String: Any]
        XCTAssertEqual(record2?["state"] as? String, "lost")
        XCTAssertNotNil(record2?["lost_at"] as? Int)
        let status = cli(["status"])
        XCTAssertTrue(
            status.stdout.split(separator: "\n").contains { $0.contains("doomed") && $0.contains(" lost ") },
            status.stdout)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    /// The control plane's log lines are its own ([control]) and name a signal as the worker's do.
    /// A pass Redis refuses ({nr}:reaper of another type here; a user without EVALSHA alike) is a warning, once per
    /// 30 s, not a debug line: no lost runner's jobs are rescheduled meanwhile. Fixed, it says passes work again.
    func testARefusedReaperPassIsAWarningUntilItWorksAgain() throws {
        _ = try send(["HSET", key("reaper"), "x", "y"])
        let control = try startControl(["--interval", "200ms"])
        let warning = " [control] reaper pass failed: key \(key("reaper")) is a hash, expected a string; lost runners'"
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { control.log.contains(warning) }, control.log)
        _ = try send(["DEL", key("reaper")])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { control.log.contains(" [control] reaper passes work again") },
            control.log)
        XCTAssertEqual(control.stop(timeout: 10), 0, control.log)
        let lines = control.log.split(separator: "\n").filter { $0.contains("reaper pass failed") }
        XCTAssertEqual(lines.count, 1, control.log)
        XCTAssertTrue(lines.first?.contains("warning") == true, control.log)
        XCTAssertTrue(lines.first?.hasSuffix("lost runners' jobs are not rescheduled until this is fixed") == true)
    }

    func testControlPlaneLogsAsControlAndNamesTheSignal() throws {
        let control = try startControl()
        XCTAssertEqual(control.stop(timeout: 10), 0, control.log)
        let log = control.log
        XCTAssertTrue(log.contains(" [control] control plane running"), log)
        XCTAssertTrue(log.contains(" [control] received SIGTERM; stopping"), log)
        XCTAssertFalse(log.contains("[runner]"), log)
    }

    /// `runner control` says whether it leads or stands by, at start and on every change, naming the holder of the
    /// leader lease (whose value begins with the holder's name).
    func testControlPlaneSaysWhetherItLeadsOrStandsBy() throws {
        let worker = try startRunner(name: "lead-r1", ["--reaper-interval", "200ms"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                (try? self.send(["GET", self.key("reaper")]).string)?.hasPrefix("lead-r1 ") == true
            }, "the worker's reaper did not take the lease under its name:\n\(worker.log)")
        let control = try startControl(["--name", "ctl2"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                control.log.contains(" [control] standing by: the reaper lease is held by lead-r1")
            }, control.log)
        XCTAssertFalse(control.log.contains("leads the pool"), control.log)
        // The worker resigns the lease as it stops: the control plane takes it and says so, once.
        XCTAssertEqual(worker.stop(timeout: 20), 0, worker.log)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { control.log.contains(" [control] control plane leads the pool") },
            control.log)
        XCTAssertTrue(worker.log.contains("this reaper leads the pool"), worker.log)
        XCTAssertTrue(try send(["GET", key("reaper")]).string?.hasPrefix("ctl2 ") == true)
        XCTAssertEqual(control.stop(timeout: 10), 0, control.log)
        let lines = control.log.split(separator: "\n").filter {
            $0.contains("leads the pool") || $0.contains("standing by")
        }
        XCTAssertEqual(lines.count, 2, control.log)
        XCTAssertTrue(lines.first?.contains("standing by") == true, control.log)
    }

    /// A control plane (and a worker's reaper) that stops cleanly releases the leader lease (compare-and-delete),
    /// so a standby leads at its next try, well before the lease's TTL (4 intervals: 20 s at --interval 5s, 40 s at
    /// --reaper-interval 10s) would have run out. Its log lines name its own name and the leader's apart.
    /// A control plane killed while it led and started again under its name waits for its earlier run's lease, and
    /// says that is whose it is (it said "held by cpx", its own name, which read as nonsense).
    func testAControlPlaneRestartedUnderItsNameSaysItsEarlierRunHoldsTheLease() throws {
        func control() throws -> RunnerUnderTest {
            let control = try RunnerUnderTest(
                endpoint: endpoint, namespace: namespace, name: "cpx", subcommand: "control",
                arguments: ["--interval", "300ms"])
            controls.append(control)
            return control
        }
        let first = try control()
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { first.log.contains("control plane leads the pool") }, first.log)
        first.signal(SIGKILL)
        XCTAssertNotNil(first.waitForExit(timeout: 10))
        let second = try control()
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                second.log.contains(
                    "standing by: the reaper lease is still held by an earlier run under this name (cpx); it lapses "
                        + "within the lease TTL")
            }, second.log)
    }

    func testAStoppedLeaderReleasesTheReaperLeaseSoTheStandbyLeadsAtOnce() throws {
        func holder() -> String? { (try? send(["GET", key("reaper")]).string).flatMap { ReaperLease.holder($0) } }
        func control(_ name: String, interval: String) throws -> RunnerUnderTest {
            let control = try RunnerUnderTest(
                endpoint: endpoint, namespace: namespace, name: name, subcommand: "control",
                arguments: ["--interval", interval])
            controls.append(control)
            return control
        }
        let cp1 = try control("cp1", interval: "5s")
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { holder() == "cp1" }, cp1.log)
        let cp2 = try control("cp2", interval: "300ms")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                cp2.log.contains("standing by: the reaper lease is held by cp1 name=cp2 leader=cp1")
            }, cp2.log)
        XCTAssertFalse(cp2.log.contains("reaper="), cp2.log)
        let stopped = ContinuousClock.now
        XCTAssertEqual(cp1.stop(timeout: 10), 0, cp1.log)
        XCTAssertTrue(cp1.log.contains("released the reaper lease name=cp1"), cp1.log)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(4)) { holder() == "cp2" },
            "cp2 did not lead within 4 s of cp1's SIGTERM (lease TTL 20 s): holder \(holder() ?? "none")\n\(cp2.log)")
        XCTAssertLessThan(ContinuousClock.now - stopped, .seconds(5))
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) { cp2.log.contains("control plane leads the pool name=cp2") }, cp2.log)
        XCTAssertEqual(cp2.stop(timeout: 10), 0, cp2.log)
        XCTAssertEqual(try send(["EXISTS", key("reaper")]).int, 0, "cp2 released it too")

        // A worker's own reaper, stopped, does the same.
        let worker = try startRunner(name: "lead-w1", ["--reaper-interval", "10s"])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { holder() == "lead-w1" }, worker.log)
        let cp3 = try control("cp3", interval: "300ms")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { cp3.log.contains("standing by: the reaper lease is held by lead-w1") },
            cp3.log)
        let workerStopped = ContinuousClock.now
        XCTAssertEqual(worker.stop(timeout: 20), 0, worker.log)
        XCTAssertTrue(worker.log.contains("released the reaper lease name=lead-w1"), worker.log)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(4)) { holder() == "cp3" },
            "cp3 did not lead within 4 s of the worker's exit (lease TTL 40 s): holder \(holder() ?? "none")\n\(cp3.log)"
        )
        XCTAssertLessThan(ContinuousClock.now - workerStopped, .seconds(8))
    }

    /// A worker's reaper says it stands by at info only when it lost the lease: not at start, nor when the lease
    /// passes from one other holder to another.
    func testAWorkerSaysStandingByAtInfoOnlyWhenItLostTheLease() throws {
        _ = try send(["SET", key("reaper"), "cp1 t1", "PX", "60000"])
        // At debug, so that the worker's standing by is seen (at debug) before the lease changes under it.
        let worker = try startRunner(name: "w1", ["--reaper-interval", "200ms", "--log-level", "debug"])
        func saidAtDebug(_ holder: String) -> Bool {
            worker.log.contains(" debug   [runner] standing by: the reaper lease is held by \(holder) name=w1")
        }
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { saidAtDebug("cp1") }, worker.log)
        // Another holder takes over from cp1 (its lease value changes under the worker's standing by).
        _ = try send(["SET", key("reaper"), "cp2 t2", "PX", "60000"])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { saidAtDebug("cp2") }, worker.log)
        // The worker leads, then loses the lease to cp3.
        _ = try send(["DEL", key("reaper")])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { worker.log.contains("this reaper leads the pool") }, worker.log)
        _ = try send(["SET", key("reaper"), "cp3 t3", "PX", "60000"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                worker.log.contains(" info    [runner] standing by: the reaper lease is held by cp3 name=w1 leader=cp3")
            }, worker.log)
        // Said at debug only: no other line names cp1 or cp2.
        let above = worker.log.split(separator: "\n").filter { !$0.contains(" debug   [runner] ") }
        XCTAssertFalse(above.contains { $0.contains("held by cp1") }, worker.log)
        XCTAssertFalse(above.contains { $0.contains("held by cp2") }, worker.log)
        _ = try send(["DEL", key("reaper")])
    }

    func testWorkersReapByThemselvesAndLeaveLiveRunnersAlone() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("self-\(namespace)")
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("self-release-\(namespace)")
        defer { try? FileManager.default.removeItem(at: file); try? FileManager.default.removeItem(at: release) }
        // A live runner with a job pending far longer than any interval: left alone.
        try startRunner(name: "alive", ["--lease-ttl", "1s", "--reaper-interval", "200ms"])
        try submit(recordingJob(file, release: release), id: "long-1")
        try runningPid("long-1")
        let doomed = try startRunner(name: "doomed", ["--lease-ttl", "1s", "--reaper-interval", "200ms"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("reaper")]).int) == 1 })
        doomed.signal(SIGKILL)
        XCTAssertNotNil(doomed.waitForExit(timeout: 10))
        // The surviving worker's reaper marks the dead one lost; the live runner's long job is never touched.
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.events().contains { $0.type == "runner.lost" }) == true })
        let idle = ContinuousClock.now
        XCTAssertFalse(waitUntil(timeout: .seconds(2)) { (try? self.job("long-1")["state"]) != "running" })
        XCTAssertGreaterThan(ContinuousClock.now - idle, .seconds(2))
        XCTAssertEqual(try events().filter { $0.type == "job.rescheduled" }.count, 0)
        XCTAssertEqual(try events().first { $0.type == "runner.lost" }?.runner, "doomed")
        FileManager.default.createFile(atPath: release.path, contents: nil)
        XCTAssertEqual(try waitForState("long-1", ["succeeded"])["attempt"], "1")
    }

    /// A worker's reaper forgets lost runners after its own --lost-retention, as a control plane's does: workers
    /// had only the 24 h default, so the retention of a pool depended on whether a worker or a control plane led.
    func testAWorkersReaperForgetsALostRunnerAfterItsLostRetention() throws {
        let lostAt = try XCTUnwrap(try send(["TIME"]).array?.first?.string.flatMap { Int($0) }) * 1000 - 5000
        _ = try send([
            "HSET", key("runners"), "gone", #"{"node":"n9","state":"lost","lost_at":\#(lostAt)}"#, "kept",
            #"{"node":"n9","state":"lost","lost_at":\#(lostAt + 3_600_000)}"#,
        ])
        let runner = try startRunner(["--reaper-interval", "200ms", "--lost-retention", "2s"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["HEXISTS", self.key("runners"), "gone"]).int) == 0 },
            runner.log)
        XCTAssertEqual(try send(["HEXISTS", key("runners"), "kept"]).int, 1)
    }

    /// Registry records whose `lost_at` or `migrated_at` is Int.min (hand-written) made `now - lost_at` trap the
    /// reaper, so every worker died as it took the lead, and every restarted one (found by breaker16). They are as
    /// old as records get: forgotten at the first pass.
    func testRecordsWithTimesAtIntMinAreForgottenNotFatal() throws {
        _ = try send([
            "HSET", key("runners"), "lost-min", #"{"state":"lost","lost_at":-9223372036854775808}"#, "migrated-min",
            #"{"state":"migrated","migrated_at":-9223372036854775808}"#,
        ])
        let runner = try startRunner(["--reaper-interval", "200ms"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["HLEN", self.key("runners")]).int) == 1 },
            runner.log)
        XCTAssertTrue(runner.isRunning, runner.log)
    }

    func testAJobThatKillsItsRunnersEndsDeadAfterTheRescheduleBound() throws {
        try startControl(["--reschedule-limit", "1"])
        let pool = try ["p1", "p2", "p3"].map { try startRunner(name: $0, ["--lease-ttl", "1s", "--no-reaper"]) }
        // The job's parent is its runner.
        try submit(["--shell", "kill -9 $PPID; sleep 5"], id: "poison-1")
        let record = try waitForState("poison-1", ["dead"], timeout: .seconds(30))
        XCTAssertEqual(record["reschedules"], "1")
        XCTAssertEqual(pool.filter { !$0.isRunning }.count, 2, "it killed a runner per attempt, two in all")
        let all = try events()
        XCTAssertEqual(all.filter { $0.type == "job.rescheduled" && $0.job == "poison-1" }.count, 1)
        let dead = try XCTUnwrap(all.first { $0.type == "job.dead" && $0.job == "poison-1" })
        XCTAssertEqual(dead.data["reschedules"] as? Int, 1)
        XCTAssertEqual(all.filter { $0.type == "runner.lost" }.count, 2)
        let letter = strings(try send(["XRANGE", key("dead"), "-", "+"]).array?.first?.array?[1] ?? .null)
        XCTAssertEqual(letter["id"], "poison-1")
        XCTAssertEqual(letter["reason"], record["reason"])
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testAnIdleLeaderTurnLooksAtTheFirstRetryOnly() async throws {
        let client = RedisClient(endpoint: endpoint)
        defer { client.close() }
        let store = JobStore(client: client, keyspace: Keyspace(namespace: namespace))
        _ = try await store.leadAndMove(token: "t1", ttl: .seconds(10))  // the script is loaded from here on
        func delta(_ turn: () async throws -> Void) async throws -> [String: Int] {
            let before = try commandCalls()
            try await turn()
            var changed: [String: Int] = [:]
            for (name, calls) in try commandCalls() where calls != before[name] ?? 0 {
                changed[name] = calls - (before[name] ?? 0)
            }
            return changed
        }

        // Nothing waits: the lease and one look at the set, no clock.
        let empty = try await delta {
            let turn = try await store.leadAndMove(token: "t1", ttl: .seconds(10))
            XCTAssertEqual(turn?.moved, 0)
            XCTAssertNil(turn?.nextDue)
        }
        XCTAssertEqual(empty, ["evalsha": 1, "get": 1, "pexpire": 1, "zrange": 1])

        // A retry not due yet: the clock too, for when it is due; nothing moved.
        let redisNowMs = (try send(["TIME"]).array?.first?.string).flatMap(Int.init).map { $0 * 1000 } ?? 0
        _ = try send(["ZADD", key("delayed"), String(redisNowMs + 60_000), "later-1"])
        let waiting = try await delta {
            let turn = try await store.leadAndMove(token: "t1", ttl: .seconds(10))
            XCTAssertEqual(turn?.moved, 0)
            let due = try XCTUnwrap(turn?.nextDue)
            XCTAssertGreaterThan(due, .seconds(55))
            XCTAssertLessThanOrEqual(due, .seconds(61))
        }
        XCTAssertEqual(waiting, ["evalsha": 1, "get": 1, "pexpire": 1, "zrange": 1, "time": 1])
        XCTAssertEqual(try send(["ZCARD", key("delayed")]).int, 1)

        // Due: moved, and the next one looked at again.
        _ = try send([
            "HSET", key("job:due-1"), "state", "retry_scheduled", "queue", "default", "attempt", "2", "spec",
            #"{"argv":["true"]}"#,
        ])
        _ = try send(["ZADD", key("delayed"), "0", "due-1"])
        let turn = try await store.leadAndMove(token: "t1", ttl: .seconds(10))
        XCTAssertEqual(turn?.moved, 1)
        XCTAssertNotNil(turn?.nextDue)
        XCTAssertEqual(try job("due-1")["state"], "queued")
        XCTAssertEqual(try send(["ZRANGE", key("delayed"), "0", "-1"]).array?.compactMap(\.string), ["later-1"])
    }
}
