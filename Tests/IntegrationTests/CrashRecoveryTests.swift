import Foundation
import RedisClient
import TestSupport
import XCTest

/// A runner killed with kill -9, and started again under the same name.
final class CrashRecoveryTests: IntegrationTestCase {
    func testKilledRunnerTakesItsWholeJobWithItAndItsSuccessorRerunsIt() throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("crash-\(namespace)")
        defer { try? FileManager.default.removeItem(at: marker) }
        let runner = try startRunner(name: "fixed", ["--lease-ttl", "2s"])
        let script =
            "if [ -f '\(marker.path)' ]; then echo second run; else touch '\(marker.path)'; sleep 60 & echo pid=$!; wait; fi"
        try submit(["--shell", script], id: "crash-1")
        let pid = try runningPid("crash-1")
        XCTAssertTrue(processIsAlive(pid))
        var child: Int32 = 0
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                child =
                    self.pids(
                        in: (try? self.logBytes("crash-1")).map { String(decoding: $0.stdout, as: UTF8.self) } ?? ""
                    ).first ?? 0
                return child > 0
            })

        runner.signal(SIGKILL)
        XCTAssertNotNil(runner.waitForExit(timeout: 10))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) }, "the job outlived its runner")
        // Its background child too: the runner's watchdog process kills the job's whole group when the runner dies.
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(child) }, "the job's child outlived its runner")
        // The entry is still pending for consumer "fixed"; nothing acked it.
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 1)

        // The same name can be taken again once the dead runner's lease has expired.
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("runner:fixed")]).int) == 0 })
        try startRunner(name: "fixed")
        let after = try waitForState("crash-1", ["succeeded"])
        XCTAssertEqual(after["output_tail"], "second run\n")
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testAKeptFolderOfAKilledRunsAttemptSurvivesItsSuccessorReadingTheEntryAgain() throws {
        // The successor reads the dead run's pending entry, and its claim sends it to be rescheduled: the folder the
        // attempt used (kept with --keep-work-dirs) must not be replaced on the way.
        let root = NSTemporaryDirectory() + "nr-kept-\(namespace)"
        let marker = root + ".marker"
        defer {
            try? FileManager.default.removeItem(atPath: root)
            try? FileManager.default.removeItem(atPath: marker)
        }
        let options = ["--lease-ttl", "2s", "--keep-work-dirs", "--work-root", root]
        let runner = try startRunner(name: "keeper", options)
        let script =
            "if [ -f '\(marker)' ]; then echo second run; else touch '\(marker)'; echo kept > \"$NR_WORK_DIR/evidence\"; "
            + "exec sleep 60; fi"
        try submit(["--shell", script], id: "kept-1")
        _ = try runningPid("kept-1")
        var evidence: String?
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                evidence = self.files(named: "evidence", under: root).first
                return evidence != nil
            }, "the first attempt wrote no evidence")
        runner.signal(SIGKILL)
        XCTAssertNotNil(runner.waitForExit(timeout: 10))
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("runner:keeper")]).int) == 0 })
        try startRunner(name: "keeper", options)
        XCTAssertEqual(try waitForState("kept-1", ["succeeded"])["output_tail"], "second run\n")
        XCTAssertEqual(
            try String(contentsOfFile: try XCTUnwrap(evidence), encoding: .utf8), "kept\n",
            "the kept folder of the first attempt was replaced")
    }

    /// Every file of that name one or two folders below `root` (`<root>/<runner>/<job folder>/NAME`).
    private func files(named name: String, under root: String) -> [String] {
        let manager = FileManager.default
        var found: [String] = []
        for runner in (try? manager.contentsOfDirectory(atPath: root)) ?? [] {
            for folder in (try? manager.contentsOfDirectory(atPath: "\(root)/\(runner)")) ?? [] {
                let path = "\(root)/\(runner)/\(folder)/\(name)"
                if manager.fileExists(atPath: path) { found.append(path) }
            }
        }
        return found
    }

    /// The pids of the runner's watchdog processes (its children named nr-watchdog).
    private func watchdogs(of runner: RunnerUnderTest) -> [Int32] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap(Int32.init).filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            let comm = stat[stat.index(after: stat.firstIndex(of: "(")!)..<close]
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return comm == "nr-watchdog" && fields.count > 2 && fields[0] != "Z" && Int32(fields[1]) == runner.pid
        }
    }

    func testAKilledWatchdogIsReplacedAndStillTakesTheJobWithADeadRunner() throws {
        let runner = try startRunner(name: "guarded", ["--lease-ttl", "2s"])
        try submit(["--shell", "sleep 60 & echo pid=$!; wait"], id: "wd-2")
        _ = try runningPid("wd-2")
        var child: Int32 = 0
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                child =
                    self.pids(in: (try? self.logBytes("wd-2")).map { String(decoding: $0.stdout, as: UTF8.self) } ?? "")
                    .first ?? 0
                return child > 0
            })
        let first = try XCTUnwrap(watchdogs(of: runner).first, "the runner has no watchdog")
        XCTAssertEqual(kill(first, SIGKILL), 0)
        var replacement: Int32?
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                replacement = self.watchdogs(of: runner).first { $0 != first }
                return replacement != nil
            }, "no new watchdog:\n\(runner.log)")
        XCTAssertTrue(runner.log.contains("the job watchdog ended"), runner.log)
        runner.signal(SIGKILL)
        XCTAssertNotNil(runner.waitForExit(timeout: 10))
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) { !processIsAlive(child) },
            "the job's child outlived its runner after the watchdog was replaced")
    }

    func testRunnerThatLostItsNameToAnotherStopsItsJobsAndExits() throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("paused-\(namespace)")
        defer { try? FileManager.default.removeItem(at: marker) }
        let first = try startRunner(name: "same", ["--lease-ttl", "2s"])
        let script = "if [ -f '\(marker.path)' ]; then echo second run; else touch '\(marker.path)'; sleep 60; fi"
        try submit(["--shell", script], id: "pause-1")
        let pid = try runningPid("pause-1")

        first.signal(SIGSTOP)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("runner:same")]).int) == 0 })
        try startRunner(name: "same", ["--lease-ttl", "2s"])
        // The paused runner's registry field is still there: wait for the new runner's lease itself.
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.send(["EXISTS", self.key("runner:same")]).int) == 1 })
        // A job added now may be handed to the paused runner's read, still blocked in Redis: when it wakes it must
        // give the entry back, not run it beside the new runner.
        try submit(["--", "echo", "once"], id: "pause-2")
        first.signal(SIGCONT)

        XCTAssertEqual(first.waitForExit(timeout: 15), 1, first.log)
        XCTAssertTrue(first.log.contains("runner name 'same' was taken by another runner"), first.log)
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) }, "the paused runner's job still runs")
        let record = try waitForState("pause-1", ["succeeded"])
        XCTAssertEqual(record["output_tail"], "second run\n")
        XCTAssertEqual(try events(of: "pause-1").filter { $0 == "job.succeeded" }.count, 1)
        XCTAssertEqual(try waitForState("pause-2", ["succeeded"])["output_tail"], "once\n")
        XCTAssertEqual(try events(of: "pause-2").filter { $0 == "job.started" }.count, 1)
        XCTAssertEqual(try send(["HEXISTS", key("runners"), "same"]).int, 1, "the new runner's record is left alone")
    }

    func testArgumentListTooLongFailsCleanly() throws {
        try startRunner()
        let huge = String(repeating: "x", count: 200_000)  // above the kernel's 128 KiB per-argument limit
        let spec = #"{"argv":["/bin/echo",""# + huge + #""]}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "e2big-1", "spec", spec])
        let record = try waitForState("e2big-1", ["failed"])
        XCTAssertEqual(record["exit_code"], "126")
        XCTAssertTrue(record["reason"]?.hasPrefix("argument list too long") == true, record["reason"] ?? "")
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
        XCTAssertEqual(try events(of: "e2big-1").filter { $0 == "job.failed" }.count, 1, "failed once, not retried")
    }
}
