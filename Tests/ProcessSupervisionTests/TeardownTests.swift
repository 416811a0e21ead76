import Foundation
import ProcessSupervision
import XCTest

final class TeardownTests: XCTestCase {
    private let sleep60 = ProcessSpec(executable: "/bin/sleep", arguments: ["sleep", "60"])

    /// The main process and every pid the job printed (one per line, `expecting` of them) are gone.
    private func assertGone(
        _ outcome: ProcessOutcome, printedPids lines: [String], expecting count: Int, line: UInt = #line
    ) {
        let members = lines.compactMap { Int32($0) }
        XCTAssertEqual(members.count, count, line: line)
        for pid in members + [outcome.pid] {
            XCTAssertNil(processState(pid), "group member \(pid) still exists after wait()", line: line)
        }
    }

    func testTimeoutStopsTheWholeGroup() async throws {
        let start = ContinuousClock.now
        let (outcome, output) = try await runToEnd(
            shell("sleep 60 & echo $!; sleep 60 & echo $!; wait"),
            TerminationPolicy(timeout: .milliseconds(300), killGrace: .seconds(5))
        )
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(outcome.stopReason, .timeout)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertFalse(outcome.forcedKill)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(300))
        XCTAssertLessThan(elapsed, .seconds(3))
        assertGone(outcome, printedPids: output.stdoutLines, expecting: 2)
    }

    func testIgnoredSIGTERMNeedsSIGKILL() async throws {
        let start = ContinuousClock.now
        let (outcome, output) = try await runToEnd(
            shell("trap '' TERM; sleep 60 & echo $!; wait"),
            TerminationPolicy(timeout: .milliseconds(200), killGrace: .milliseconds(300))
        )
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(outcome.stopReason, .timeout)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertTrue(outcome.forcedKill)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(500))
        XCTAssertLessThan(elapsed, .seconds(3))
        assertGone(outcome, printedPids: output.stdoutLines, expecting: 1)
    }

    func testBackgroundChildHoldingStdoutNeitherHangsNorOutlivesWait() async throws {
        let policy = TerminationPolicy(leftoverGrace: .seconds(1), drainLimit: .seconds(1))
        let start = ContinuousClock.now
        let (outcome, output) = try await runToEnd(shell("sleep 100 & echo $!; echo hi"), policy)
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertNil(outcome.stopReason)
        XCTAssertTrue(outcome.leftoverProcessesStopped)
        XCTAssertFalse(outcome.forcedKill)  // sleep dies of SIGTERM
        XCTAssertFalse(outcome.outputTruncatedByDrainLimit)
        XCTAssertLessThan(elapsed, .milliseconds(3500))  // leftoverGrace + drainLimit + slack
        let lines = output.stdoutLines
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(lines.last, "hi")
        let background = try XCTUnwrap(lines.first.flatMap { Int32($0) })
        XCTAssertNil(processState(background), "background child \(background) still exists after wait()")
    }

    func testLeftoverIgnoringSIGTERMIsKilledAfterTheLeftoverGrace() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let policy = TerminationPolicy(leftoverGrace: .milliseconds(200), drainLimit: .seconds(1))
        let start = ContinuousClock.now
        // The fifo makes the job end only once the background child ignores SIGTERM.
        let script =
            "mkfifo \(directory)/ready; (trap '' TERM; echo > \(directory)/ready; exec sleep 100) & "
            + "read x < \(directory)/ready; echo $!"
        let (outcome, output) = try await runToEnd(shell(script), policy)
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertTrue(outcome.leftoverProcessesStopped)
        XCTAssertTrue(outcome.forcedKill)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(200))
        XCTAssertLessThan(elapsed, .seconds(3))
        let background = try XCTUnwrap(output.stdoutLines.first.flatMap { Int32($0) })
        XCTAssertNil(processState(background))
    }

    func testEscapedProcessHoldingThePipeIsCutOffByTheDrainLimit() async throws {
        // setsid: a new session, so the group teardown does not reach it; it holds stdout open. The fifo makes the
        // job end only once it has escaped.
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let policy = TerminationPolicy(leftoverGrace: .seconds(1), drainLimit: .milliseconds(300))
        let start = ContinuousClock.now
        let script =
            "mkfifo \(directory)/ready; setsid sh -c 'echo $$ > \(directory)/ready; exec sleep 30' & "
            + "read pid < \(directory)/ready; echo $pid"
        let (outcome, output) = try await runToEnd(shell(script), policy)
        let elapsed = ContinuousClock.now - start
        let escaped = try XCTUnwrap(output.stdoutLines.first.flatMap { Int32($0) })
        defer { kill(escaped, SIGKILL) }
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertTrue(outcome.outputTruncatedByDrainLimit)
        XCTAssertFalse(outcome.leftoverProcessesStopped)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(300))
        XCTAssertLessThan(elapsed, .seconds(3))
    }

    func testCancellingTheWaitingTaskStopsTheProcess() async throws {
        let collector = OutputCollector()
        let process = try await Shared.supervisor.spawn(shell("echo ready; exec sleep 60"), output: collector.handler)
        let ready = await eventually { collector.stdoutText == "ready\n" }
        XCTAssertTrue(ready)
        let waiter = Task { await process.wait(TerminationPolicy(killGrace: .seconds(5))) }
        waiter.cancel()
        let outcome = await waiter.value
        XCTAssertEqual(outcome.stopReason, .cancelled)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertFalse(outcome.forcedKill)
        XCTAssertNil(processState(process.pid))
    }

    func testWaitInAnAlreadyCancelledTaskStillTearsDownAndReturns() async throws {
        let process = try await Shared.supervisor.spawn(sleep60, output: { _, _ in })
        let waiter = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await process.wait(TerminationPolicy())
        }
        let outcome = await waiter.value
        XCTAssertEqual(outcome.stopReason, .cancelled)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertNil(processState(process.pid))
    }

    func testSignalGroup() async throws {
        let process = try await Shared.supervisor.spawn(shell("sleep 60 & exec sleep 60"), output: { _, _ in })
        process.signalGroup(SIGKILL)
        let outcome = await process.wait(TerminationPolicy())
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertNil(outcome.stopReason)
        process.signalGroup(SIGKILL)  // after the reap: a no-op, never a recycled group
    }

    func testWaitAfterTheProcessAlreadyExited() async throws {
        let process = try await Shared.supervisor.spawn(shell("exit 5"), output: { _, _ in })
        // Not waited for yet: it stays a zombie, so its pid (and pgid) cannot be recycled meanwhile.
        let zombie = await eventually { processState(process.pid) == "Z" }
        XCTAssertTrue(zombie)
        let outcome = await process.wait(TerminationPolicy())
        XCTAssertEqual(outcome.termination, .exited(5))
        XCTAssertNil(processState(process.pid))
        let again = await process.wait(TerminationPolicy())
        XCTAssertEqual(again.termination, .exited(5))
    }

    func testTimeoutAlreadyPassedWhenWaitStarts() async throws {
        let process = try await Shared.supervisor.spawn(sleep60, output: { _, _ in })
        let outcome = await process.wait(TerminationPolicy(timeout: .zero))
        XCTAssertEqual(outcome.stopReason, .timeout)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
    }

    func testOrphanedGrandchildIsReapedAfterTheJobEnded() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The grandchild escapes the job's group (setsid) so the teardown leaves it alone, outlives the job, and is
        // reparented to us (the subreaper) when its parent exits: a zombie unless the orphan sweep reaps it. The fifo
        // makes the job end only once it has escaped.
        let fifo = "\(directory)/ready"
        let script =
            "mkfifo \(fifo); setsid sh -c 'echo $$ > \(fifo); exec sleep 0.5' </dev/null >/dev/null 2>&1 & "
            + "read pid < \(fifo); echo $pid"
        let (outcome, output) = try await runToEnd(shell(script))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertFalse(outcome.leftoverProcessesStopped)
        let grandchild = try XCTUnwrap(output.stdoutLines.first.flatMap { Int32($0) })
        XCTAssertNotNil(processState(grandchild), "the grandchild should outlive the job")
        let gone = await eventually(within: .seconds(5)) { processState(grandchild) == nil }
        XCTAssertTrue(gone, "grandchild \(grandchild) left as \(processState(grandchild) ?? "?")")
    }

    func testOrphansOfANoneJobAreReapedOnlyWhenTheSupervisorReapsItsOwnSession() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // At `.none` the job is in our process group, and so are its orphans: each `head` is started from a subshell
        // that exits at once, so it is reparented to us (the subreaper), where nothing attributes it to the job. It
        // reads a fifo whose only writer is the job's shell: it ends (end of file) once the job has, never as the
        // subshell's child, which could reap it.
        let fifo = "\(directory)/hold"
        let orphan = "(head -c 1 < \(fifo) > /dev/null 2>&1 4>&- & echo $!)"
        let script = "mkfifo \(fifo); exec 4<>\(fifo); " + Array(repeating: orphan, count: 10).joined(separator: "; ")
        let spec = shell(script, isolation: ProcessIsolation(level: .none))

        // Without reapsOwnSessionOrphans they stay zombies, even after the final sweep of the supervisor's shutdown.
        let keeping = try ProcessSupervisor(subreaper: true)
        let (kept, keptOutput) = try await runToEnd(spec, supervisor: keeping)
        XCTAssertEqual(kept.termination, .exited(0), keptOutput.stderrText)
        let left = keptOutput.stdoutLines.compactMap { Int32($0) }
        XCTAssertEqual(left.count, 10)
        defer {
            for pid in left { _ = waitpid(pid, nil, WNOHANG) }
        }
        let zombies = await eventually { left.allSatisfy(Self.isZombieChild) }
        XCTAssertTrue(zombies, "the orphans should be our zombies: \(left.map { processState($0) ?? "gone" })")
        keeping.shutdown()
        XCTAssertEqual(left.filter(Self.isZombieChild), left, "the sweep reaped our own session's zombies")
        for pid in left { XCTAssertEqual(waitpid(pid, nil, WNOHANG), pid) }

        // With it, the sweep reaps them.
        let reaping = try ProcessSupervisor(subreaper: true, reapsOwnSessionOrphans: true)
        defer { reaping.shutdown() }
        let (reaped, reapedOutput) = try await runToEnd(spec, supervisor: reaping)
        XCTAssertEqual(reaped.termination, .exited(0), reapedOutput.stderrText)
        let orphans = reapedOutput.stdoutLines.compactMap { Int32($0) }
        XCTAssertEqual(orphans.count, 10)
        let gone = await eventually { !orphans.contains(where: Self.isZombieChild) }
        XCTAssertTrue(gone, "zombies left: \(orphans.filter(Self.isZombieChild))")
    }

    /// A child that other code of this process started in a process group of its own, as Foundation.Process starts
    /// every child, is that code's to wait for: the sweep leaves its exit status. It took it before, and `Process`
    /// then reported exit 0 for a command that had failed.
    func testTheSweepLeavesAChildOfOtherCodeInItsOwnGroupToItsOwner() async throws {
        var attributes = posix_spawnattr_t()
        XCTAssertEqual(posix_spawnattr_init(&attributes), 0)
        defer { posix_spawnattr_destroy(&attributes) }
        XCTAssertEqual(posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP)), 0)
        XCTAssertEqual(posix_spawnattr_setpgroup(&attributes, 0), 0)
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("sh"), strdup("-c"), strdup("exit 3"), nil]
        defer { argv.forEach { free($0) } }
        XCTAssertEqual(posix_spawn(&pid, "/bin/sh", nil, &attributes, argv, environ), 0)
        XCTAssertEqual(processRelations(pid)?.group, pid, "the child should lead a group of its own")
        let exited = await eventually { Self.isZombieChild(pid) }
        XCTAssertTrue(exited, "the child did not exit: \(processState(pid) ?? "gone")")

        // A job that ends brings a sweep soon, and the shutdown makes a final one.
        let sweeping = try ProcessSupervisor(subreaper: true)
        let (outcome, _) = try await runToEnd(
            ProcessSpec(executable: "/bin/true", arguments: ["true"]), supervisor: sweeping)
        XCTAssertEqual(outcome.termination, .exited(0))
        sweeping.shutdown()
        var status: Int32 = 0
        XCTAssertEqual(waitpid(pid, &status, WNOHANG), pid, "the sweep reaped another owner's child")
        XCTAssertEqual((status >> 8) & 0xff, 3)
    }

    /// A zombie whose parent is this process.
    private static func isZombieChild(_ pid: Int32) -> Bool {
        processState(pid) == "Z" && processRelations(pid)?.parent == getpid()
    }

    func testAbandonedProcessIsStoppedAndReaped() async throws {
        var process: RunningProcess? = try await Shared.supervisor.spawn(sleep60, output: { _, _ in })
        let pid = try XCTUnwrap(process?.pid)
        XCTAssertEqual(processState(pid).map { $0 == "Z" }, false)
        process = nil
        let gone = await eventually { processState(pid) == nil }
        XCTAssertTrue(gone)
    }

    /// A wait policy given at spawn applies from the start: the timeout stops the process with nobody waiting yet,
    /// `wait` then collects that outcome (its own policy ignored), and a handle let go unwaited still stops its job.
    func testAWaitPolicyGivenAtSpawnAppliesBeforeAnyoneWaits() async throws {
        let policy = TerminationPolicy(timeout: .milliseconds(100), killGrace: .milliseconds(100))
        let timed = try await Shared.supervisor.spawn(sleep60, waitPolicy: policy, output: { _, _ in })
        let stopped = await eventually(within: .seconds(5)) { processState(timed.pid) == nil }
        XCTAssertTrue(stopped, "pid \(timed.pid) still runs past its timeout with nobody waiting")
        guard stopped else { return }  // its wait would not return before the sleep ends
        let outcome = await timed.wait(TerminationPolicy())
        XCTAssertEqual(outcome.stopReason, .timeout)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))

        let fdsBefore = openFDCount()
        var dropped: RunningProcess? = try await Shared.supervisor.spawn(
            sleep60, waitPolicy: TerminationPolicy(killGrace: .milliseconds(100)), output: { _, _ in })
        let pid = try XCTUnwrap(dropped?.pid)
        XCTAssertEqual(processState(pid).map { $0 == "Z" }, false)
        dropped = nil
        let gone = await eventually { processState(pid) == nil }
        XCTAssertTrue(gone, "an unwaited handle let go left pid \(pid) running")
        // Its pipes and pidfd close after the process is gone (and before the next test counts descriptors).
        let closed = await eventually { openFDCount() == fdsBefore }
        XCTAssertTrue(closed, "\(openFDCount() - fdsBefore) descriptors of the let-go process left open")
    }

    /// The monitor's eventfd belongs to the state its handles share, not to the monitor thread: a handle used after
    /// the shutdown still names that fd (never a reused number), and once the last holder goes, it is closed too.
    func testASupervisorLetGoLeavesNoDescriptorOpenEvenAfterAHandleOutlivedIt() async throws {
        // libdispatch opens its timer fd at the first sleep: let it happen before counting, not in `eventually`.
        try await Task.sleep(for: .milliseconds(1))
        let before = openFDCount()
        var supervisor: ProcessSupervisor? = try ProcessSupervisor(subreaper: true)
        // Never waited for: the shutdown kills it, and letting the handle go queues its abandon to a closed inbox.
        var process: RunningProcess? = try await supervisor?.spawn(
            ProcessSpec(executable: "/bin/sleep", arguments: ["sleep", "60"]), output: { _, _ in })
        let pid = try XCTUnwrap(process?.pid)
        supervisor?.shutdown()
        supervisor = nil
        let killed = await eventually { processState(pid) == nil }
        XCTAssertTrue(killed, "the shutdown left pid \(pid)")
        XCTAssertGreaterThan(openFDCount(), before, "the handle still holds the eventfd")
        process = nil
        let closed = await eventually { openFDCount() == before }
        XCTAssertTrue(closed, "\(openFDCount() - before) descriptors left open")
    }

    func testShutdownKillsWhatRunsAndAnswersWaiters() async throws {
        let supervisor = try ProcessSupervisor(subreaper: true)
        let process = try await supervisor.spawn(shell("sleep 60 & echo $!; wait"), output: { _, _ in })
        let waiter = Task { await process.wait(TerminationPolicy()) }
        supervisor.shutdown()
        supervisor.shutdown()  // idempotent
        let outcome = await waiter.value
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertEqual(outcome.stopReason, .cancelled)
        XCTAssertTrue(outcome.forcedKill)
        XCTAssertNil(processState(process.pid))

        do {
            _ = try await supervisor.spawn(ProcessSpec(executable: "/bin/true", arguments: ["true"])) { _, _ in }
            XCTFail("spawn after shutdown must throw")
        } catch let error as SpawnError {
            XCTAssertEqual(error.code, .systemError)
            XCTAssertEqual(error.errno, ESHUTDOWN)
        }
        let late = await process.wait(TerminationPolicy())
        XCTAssertEqual(late.termination, .signaled(SIGKILL))
    }
}
