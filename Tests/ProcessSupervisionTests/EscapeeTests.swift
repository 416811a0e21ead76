import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// Processes that leave the job's process group (setsid, double fork) are still found and killed with the job.
final class EscapeeTests: TemporaryDirectoryTestCase {

    /// A script whose first stdout line is the pid of a `sleep 300` in a session of its own, printed only once it
    /// is there (a fifo hand-shake). `doubleFork`: started from a subshell that exits at once, so the escapee is
    /// reparented to the runner (the subreaper) and no /proc parent link leads to it from the job.
    private func escapingScript(doubleFork: Bool = false, ignoreTERM: Bool = false, then rest: String) -> String {
        let fifo = "\(directory)/ready"
        let trap = ignoreTERM ? "trap \"\" TERM; " : ""
        let escape = "setsid sh -c '\(trap)echo $$ > \(fifo); exec sleep 300' </dev/null >/dev/null 2>&1 &"
        let start = doubleFork ? "(\(escape));" : escape
        return "mkfifo \(fifo); \(start) read pid < \(fifo); echo $pid; \(rest)"
    }

    /// The escapee's pid, checked to be in a session of its own (and, when asked, a child of this process).
    private func escapee(
        _ output: OutputCollector, job: Int32, reparented: Bool = false, line: UInt = #line
    ) async throws -> Int32 {
        let pid = try await printedPid(output, line: line)
        let relations = try XCTUnwrap(processRelations(pid), "escapee \(pid) is not running", line: line)
        XCTAssertEqual(relations.session, pid, "it should lead a session of its own", line: line)
        XCTAssertNotEqual(relations.group, job, line: line)
        if reparented {
            XCTAssertEqual(relations.parent, getpid(), "it should have been reparented to the runner", line: line)
        }
        return pid
    }

    private enum Stop {
        /// A timeout of 1 s (the escapee is there long before).
        case timeout
        /// Cancelling the waiting task once the escapee is there.
        case cancel
    }

    /// Spawns `spec` (an `escapingScript`), stops it by `stop` once its escapee is there, and returns the outcome and
    /// the escapee's pid (SIGKILLed at the test's end, should it have survived).
    private func stopEscapingJob(
        _ spec: ProcessSpec, by stop: Stop, killGrace: Duration = .seconds(5), reparented: Bool = false,
        line: UInt = #line
    ) async throws -> (ProcessOutcome, Int32) {
        let output = OutputCollector()
        let process = try await Shared.supervisor.spawn(spec, output: output.handler)
        let timeout: Duration? = stop == .timeout ? .seconds(1) : nil
        let waiter = Task { await process.wait(TerminationPolicy(timeout: timeout, killGrace: killGrace)) }
        let escaped = try await escapee(output, job: process.pid, reparented: reparented, line: line)
        addTeardownBlock { kill(escaped, SIGKILL) }
        if stop == .cancel { waiter.cancel() }
        let outcome = await waiter.value
        XCTAssertEqual(outcome.stopReason, stop == .timeout ? .timeout : .cancelled, line: line)
        return (outcome, escaped)
    }

    func testSetsidEscapeeIsKilledOnTimeout() async throws {
        let (outcome, escaped) = try await stopEscapingJob(shell(escapingScript(then: "wait")), by: .timeout)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertFalse(outcome.forcedKill)
        XCTAssertNil(processState(escaped), "the setsid escapee \(escaped) survived the timeout")
    }

    func testSetsidEscapeeIsKilledOnCancel() async throws {
        let (outcome, escaped) = try await stopEscapingJob(shell(escapingScript(then: "wait")), by: .cancel)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertNil(processState(escaped), "the setsid escapee \(escaped) survived the cancel")
    }

    func testEscapeeIgnoringSIGTERMIsKilledAfterTheGrace() async throws {
        let spec = shell(escapingScript(ignoreTERM: true, then: "wait"))
        let (outcome, escaped) = try await stopEscapingJob(spec, by: .cancel, killGrace: .milliseconds(200))
        XCTAssertTrue(outcome.forcedKill)
        XCTAssertNil(processState(escaped), "escapee \(escaped) ignoring SIGTERM survived")
    }

    func testDoubleForkEscapeeIsFoundByItsMarkerOnTimeout() async throws {
        let script = escapingScript(doubleFork: true, then: "exec sleep 60")
        let spec = shell(script, isolation: .default, marker: uniqueMarker())
        let (outcome, escaped) = try await stopEscapingJob(spec, by: .timeout, reparented: true)
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertNil(processState(escaped), "the double-fork escapee \(escaped) survived the timeout")
    }

    func testDoubleForkEscapeeIsFoundByItsMarkerOnCancel() async throws {
        let script = escapingScript(doubleFork: true, then: "exec sleep 60")
        let spec = shell(script, isolation: .default, marker: uniqueMarker())
        let (_, escaped) = try await stopEscapingJob(spec, by: .cancel, reparented: true)
        XCTAssertNil(processState(escaped), "the double-fork escapee \(escaped) survived the cancel")
    }

    func testWithoutAMarkerADoubleForkEscapeeIsNotFound() async throws {
        // The limit of descent: nothing links the job to a process reparented to the runner but the marker.
        let spec = shell(escapingScript(doubleFork: true, then: "exec sleep 60"))
        let (_, escaped) = try await stopEscapingJob(spec, by: .cancel, reparented: true)
        XCTAssertTrue(processIsAlive(escaped))
    }

    /// Runs `script` (with a marker, at the default level) until its main process exits, with a leftover grace of
    /// 2 s; returns the outcome and the pid it printed (SIGKILLed at the test's end, should it have survived).
    private func runUntilTheMainProcessExits(_ script: String) async throws -> (ProcessOutcome, Int32) {
        let output = OutputCollector()
        let spec = shell(script, isolation: .default, marker: uniqueMarker())
        let process = try await Shared.supervisor.spawn(spec, output: output.handler)
        let outcome = await process.wait(TerminationPolicy(leftoverGrace: .seconds(2)))
        let escaped = try await printedPid(output)
        addTeardownBlock { kill(escaped, SIGKILL) }
        return (outcome, escaped)
    }

    func testEscapeesLeftWhenTheMainProcessExitsAreKilled() async throws {
        let (outcome, escaped) = try await runUntilTheMainProcessExits(escapingScript(then: "exit 0"))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertNil(outcome.stopReason)
        XCTAssertTrue(outcome.leftoverProcessesStopped)
        XCTAssertFalse(outcome.forcedKill)  // sleep dies of SIGTERM
        XCTAssertNil(processState(escaped), "escapee \(escaped) outlived its job")
    }

    /// A process that stays in the job's session but leaves its group (setpgid after a double fork) and replaces
    /// its environment (`env -i`, so no marker) is the job's by its session: it outlived the job, found by neither
    /// descent (its parent exited) nor marker, although only leaving the session is documented to escape.
    func testAnEscapeeStillInTheJobsSessionIsKilledWhenTheMainProcessExits() async throws {
        let perl = "/usr/bin/perl"
        guard access(perl, X_OK) == 0 else { throw XCTSkip("no \(perl) to call setpgrp with") }
        let fifo = "\(directory)/ready"
        let escape =
            "env -i \(perl) -e 'exit 0 if fork; setpgrp(0, 0); open(my $f, \">\", \"\(fifo)\"); print $f \"$$\\n\"; "
            + "close $f; exec \"sleep\", \"300\"' </dev/null >/dev/null 2>&1 &"
        let (outcome, escaped) = try await runUntilTheMainProcessExits(
            "mkfifo \(fifo); \(escape) read pid < \(fifo); echo $pid; exit 0")
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertTrue(outcome.leftoverProcessesStopped)
        XCTAssertNil(processState(escaped), "escapee \(escaped) in the job's session outlived its job")
    }

    func testCloneParentEscapeeIsFoundAmongTheRunnersChildren() async throws {
        // clone(CLONE_PARENT) makes the escapee a sibling of the main process: a child of the monitor thread, which
        // the cheap proof that a job left nothing must read as well as the leader thread (where orphans go).
        let python = "/usr/bin/python3"
        guard access(python, X_OK) == 0 else { throw XCTSkip("no \(python) to call clone(CLONE_PARENT) with") }
        let script = """
            import ctypes, os, platform
            number = {"x86_64": 56, "aarch64": 220}[platform.machine()]
            ready, told = os.pipe()
            pid = ctypes.CDLL(None, use_errno=True).syscall(number, 0x8000 | 17, 0, 0, 0, 0)
            if pid == 0:
                os.setsid()
                null = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.write(told, b"x")
                os.execv("/bin/sleep", ["sleep", "300"])
            os.close(told)
            os.read(ready, 1)
            print(pid, flush=True)
            """
        let spec = ProcessSpec(
            executable: python, arguments: ["python3", "-c", script], environment: ["PATH": testPath],
            treeMarker: uniqueMarker())
        let output = OutputCollector()
        let process = try await Shared.supervisor.spawn(spec, output: output.handler)
        let escaped = try await printedPid(output)
        addTeardownBlock { kill(escaped, SIGKILL) }
        XCTAssertEqual(processRelations(escaped)?.parent, getpid(), "clone(CLONE_PARENT) should make it our child")
        let outcome = await process.wait(TerminationPolicy(leftoverGrace: .seconds(2)))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertTrue(outcome.leftoverProcessesStopped)
        XCTAssertNil(processState(escaped), "the CLONE_PARENT escapee \(escaped) outlived its job")
    }

    func testEscapeeWhoseMainThreadExitedIsFoundByItsMarker() async throws {
        try await stopLeftoverWithItsMainThreadGone(leavingTheGroup: true)
    }

    func testGroupMemberWhoseMainThreadExitedCountsAsALeftover() async throws {
        try await stopLeftoverWithItsMainThreadGone(leavingTheGroup: false)
    }

    /// A job leaves a process (reparented to the runner; in a session of its own or in the job's group) whose main
    /// thread has exited while another runs: /proc/<pid>/environ cannot be read (ESRCH) and /proc/<pid>/stat says
    /// 'Z', yet the process lives on. It must be found (through a live thread's environ) and stopped with the job.
    private func stopLeftoverWithItsMainThreadGone(leavingTheGroup: Bool, line: UInt = #line) async throws {
        let python = "/usr/bin/python3"
        guard access(python, X_OK) == 0 else { throw XCTSkip("no \(python) to end a main thread with") }
        let script = """
            import ctypes, os, threading, time
            ready, told = os.pipe()
            if os.fork() == 0:
                if \(leavingTheGroup ? "True" : "False"):
                    os.setsid()
                if os.fork() == 0:
                    null = os.open("/dev/null", os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(null, fd)
                    threading.Thread(target=time.sleep, args=(300,)).start()
                    os.write(told, b"%d\\n" % os.getpid())
                    ctypes.CDLL(None).pthread_exit(None)
                os._exit(0)
            os.close(told)
            pid = int(os.read(ready, 32))
            print(pid, flush=True)
            for _ in range(1000):
                with open("/proc/%d/stat" % pid) as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                time.sleep(0.005)
            """
        let spec = ProcessSpec(
            executable: python, arguments: ["python3", "-c", script], environment: ["PATH": testPath],
            treeMarker: uniqueMarker())
        let output = OutputCollector()
        let process = try await Shared.supervisor.spawn(spec, output: output.handler)
        let escaped = try await printedPid(output, line: line)
        addTeardownBlock { kill(escaped, SIGKILL) }
        XCTAssertEqual(processRelations(escaped)?.group == process.pid, !leavingTheGroup, line: line)
        let outcome = await process.wait(TerminationPolicy(leftoverGrace: .seconds(2)))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText, line: line)
        XCTAssertTrue(outcome.leftoverProcessesStopped, "\(outcome)", line: line)
        let gone = await eventually { processState(escaped) == nil }
        XCTAssertTrue(
            gone, "leftover \(escaped), its main thread gone, outlived its job (\(processState(escaped) ?? "-"))",
            line: line)
    }

    func testNoneLevelSharesTheRunnersGroupYetItsChildrenAreStopped() async throws {
        let isolation = ProcessIsolation(level: .none)
        let (outcome, ids) = try await runToEnd(shell("exec cut -d' ' -f5,6 /proc/self/stat", isolation: isolation))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(ids.stdoutLines, ["\(getpgrp()) \(getsid(0))"])

        // Teardown signals the main process through its pidfd and its child found by descent, never the group
        // (which is this test process's).
        let output = OutputCollector()
        let process = try await Shared.supervisor.spawn(
            shell("sleep 300 & echo $!; wait", isolation: isolation), output: output.handler)
        let child = try await printedPid(output)
        addTeardownBlock { kill(child, SIGKILL) }
        let waiter = Task { await process.wait(TerminationPolicy(killGrace: .seconds(5))) }
        waiter.cancel()
        let stopped = await waiter.value
        XCTAssertEqual(stopped.stopReason, .cancelled)
        XCTAssertEqual(stopped.termination, .signaled(SIGTERM))
        XCTAssertNil(processState(child), "the .none job's child \(child) survived")
    }

    func testNoneLevelLeftoversFoundByMarkerAreStoppedAndReaped() async throws {
        let output = OutputCollector()
        let spec = shell("sleep 300 & echo $!", isolation: ProcessIsolation(level: .none), marker: uniqueMarker())
        let process = try await Shared.supervisor.spawn(spec, output: output.handler)
        let outcome = await process.wait(TerminationPolicy(leftoverGrace: .seconds(2)))
        let child = try await printedPid(output)
        addTeardownBlock { kill(child, SIGKILL) }
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertTrue(outcome.leftoverProcessesStopped)
        // In this process's own group, so the orphan sweep would never have reaped it: the teardown did.
        XCTAssertNil(processState(child), "leftover \(child) of a .none job exists as \(processState(child) ?? "?")")
    }
}
