import Foundation
import Synchronization
import TestSupport
import XCTest

@testable import ProcessSupervision

final class JobWatchdogTests: XCTestCase {
    private let sleep300 = ProcessSpec(executable: "/bin/sleep", arguments: ["sleep", "300"])
    /// For a job the watchdog should kill: bounded, so that a watchdog that does not kill fails the test (stop
    /// reason `.timeout`, SIGTERM) instead of hanging it.
    private let killedByWatchdog = TerminationPolicy(timeout: .seconds(10), killGrace: .seconds(1))
    /// For a job the test stops itself.
    private let stoppedByTest = TerminationPolicy()

    func testDeadlineThatPassesKillsTheWholeGroupAndIsReported() async throws {
        let (job, grandchild) = try await startJobWithGrandchild()
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try watchdog.watch(processGroup: job.pid)
        let deadline = ContinuousClock.now + .milliseconds(300)
        try watchdog.arm(until: deadline)

        let fired = await eventually { !log.firings.isEmpty }
        XCTAssertTrue(fired, "no firing reported")
        let outcome = await job.wait(killedByWatchdog)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now, deadline)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertNil(outcome.stopReason)
        // The whole group died at once: nothing was left for the supervisor to stop after the main process.
        XCTAssertFalse(outcome.leftoverProcessesStopped)
        XCTAssertNil(processState(grandchild), "grandchild \(grandchild) survived the firing")

        let firing = try XCTUnwrap(log.firings.first)
        XCTAssertEqual(firing.watchedGroups, 1)
        XCTAssertEqual(firing.signalledGroups, 1)
        XCTAssertLessThan(abs((firing.deadline - deadline).seconds), 0.001)
        XCTAssertGreaterThanOrEqual(firing.firedAt, firing.deadline)

        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
        let events = await log.finished()
        XCTAssertEqual(events, [.fired(firing), .exited(.stopped)])
        XCTAssertFalse(processExists(watchdog.pid))
    }

    func testRearmingBeforeEachDeadlineKeepsTheGroupAlive() async throws {
        let job = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try watchdog.watch(processGroup: job.pid)
        let firstDeadline = ContinuousClock.now + .milliseconds(400)
        try watchdog.arm(until: firstDeadline)
        // A heartbeat: re-arm every 50 ms (its period, not a wait), until well past the first deadline: a window, as a
        // watchdog that rightly does not fire leaves nothing to wait for.
        while ContinuousClock.now < firstDeadline + .milliseconds(600) {
            try await Task.sleep(for: .milliseconds(50))
            try watchdog.arm(until: .now + .milliseconds(400))
        }
        XCTAssertTrue(processIsAlive(job.pid), "the watchdog fired although it was re-armed in time")
        try watchdog.disarm()

        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
        let events = await log.finished()
        XCTAssertEqual(events, [.exited(.stopped)])
        await assertSurvived(job, "stopping the watchdog killed the job")
    }

    func testUnwatchedGroupIsNotKilled() async throws {
        let kept = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let killed = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try watchdog.watch(processGroup: kept.pid)
        try watchdog.watch(processGroup: killed.pid)
        watchdog.unwatch(processGroup: kept.pid)
        try watchdog.arm(until: .now + .milliseconds(200))

        let fired = await eventually { !log.firings.isEmpty }
        XCTAssertTrue(fired, "no firing reported")
        XCTAssertEqual(log.firings.first?.watchedGroups, 1)
        XCTAssertEqual(log.firings.first?.signalledGroups, 1)
        let outcome = await killed.wait(killedByWatchdog)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
        await assertSurvived(kept, "an unwatched group was killed")
    }

    func testRunnerDeathKillsEveryWatchedGroupAndEndsTheWatchdog() async throws {
        let (job, grandchild) = try await startJobWithGrandchild()
        let other = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try watchdog.watch(processGroup: job.pid)
        try watchdog.watch(processGroup: other.pid)  // never armed: the runner's death alone is enough

        watchdog.simulateRunnerDeath()
        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .runnerGone)
        XCTAssertFalse(processExists(watchdog.pid), "the watchdog \(watchdog.pid) is still there")
        let events = await log.finished()
        XCTAssertEqual(events, [.exited(.runnerGone)])

        // SIGKILL is sent to the whole group at once, but each member dies when it is next scheduled: on a loaded
        // machine the grandchild may still be alive for a moment, and the supervisor would count it as a leftover.
        let grandchildDied = await eventually { processState(grandchild).map { $0 == "Z" } ?? true }
        XCTAssertTrue(grandchildDied, "grandchild \(grandchild) survived the watchdog's SIGKILL")
        let outcome = await job.wait(killedByWatchdog)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertFalse(outcome.leftoverProcessesStopped)
        XCTAssertNil(processState(grandchild), "grandchild \(grandchild) survived the runner's death")
        let otherOutcome = await other.wait(killedByWatchdog)
        XCTAssertEqual(otherOutcome.termination, .signaled(SIGKILL))

        XCTAssertEqual(watchdogErrorCode { try watchdog.arm(until: .now + .seconds(10)) }, .gone)
    }

    func testWatchdogHoldsNoFDOfTheRunnerAndLivesInItsOwnSession() async throws {
        var pipeFDs: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&pipeFDs), 0)  // inheritable on purpose: the watchdog must close it anyway
        defer { pipeFDs.forEach { _ = close($0) } }
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try await firedOnce(watchdog, log)  // it has served a command: its set-up is done

        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(watchdog.pid)/fd").sorted()
        let targets = try fds.map {
            try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(watchdog.pid)/fd/\($0)")
        }
        XCTAssertEqual(targets.count, 2, "fds of the watchdog: \(targets)")
        XCTAssertEqual(targets.filter { $0.hasPrefix("socket:") }.count, 1, "\(targets)")
        XCTAssertEqual(targets.filter { $0 == "anon_inode:[timerfd]" }.count, 1, "\(targets)")
        let comm = try String(contentsOfFile: "/proc/\(watchdog.pid)/comm", encoding: .utf8)
        XCTAssertEqual(comm, "nr-watchdog\n")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(watchdog.pid)/cwd"), "/")
        let stat = try XCTUnwrap(processStatFields(watchdog.pid))
        XCTAssertEqual(stat.parent, getpid())
        XCTAssertEqual(stat.group, watchdog.pid)
        XCTAssertEqual(stat.session, watchdog.pid)
        // The orphan sweep of any supervisor here leaves it alone: it is reaped by its own reader thread.
        XCTAssertTrue(ChildRegistry.watched.withLock { $0.contains(watchdog.pid) })

        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
        XCTAssertFalse(ChildRegistry.watched.withLock { $0.contains(watchdog.pid) })
        XCTAssertFalse(processExists(watchdog.pid))
    }

    func testSignalsMeantForTheRunnerDoNotEndOrStopTheWatchdog() async throws {
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try await firedOnce(watchdog, log)  // the child has set its signal dispositions
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU] {
            XCTAssertEqual(kill(watchdog.pid, signal), 0)
        }
        let job = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        try watchdog.watch(processGroup: job.pid)
        try watchdog.arm(until: .now + .milliseconds(100))
        let fired = await eventually { log.firings.count == 2 }
        XCTAssertTrue(
            fired, "the watchdog did not fire after the signals: state \(processState(watchdog.pid) ?? "gone")")
        let outcome = await job.wait(killedByWatchdog)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
    }

    func testTableHoldsCapacityGroupsAndRefusesOneMore() async throws {
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        // Above any pid_max (2^22): kill(-pgid) finds no such group, so nothing real is signalled.
        let groups = (0..<Int32(JobWatchdog.capacity)).map { 100_000_000 + $0 }
        for group in groups {
            try watchdog.watch(processGroup: group)
        }
        try watchdog.watch(processGroup: groups[0])  // already watched: not a new entry
        let extra: Int32 = 200_000_000
        XCTAssertEqual(watchdogErrorCode { try watchdog.watch(processGroup: extra) }, .tableFull)
        for invalid in [1, 0, -7, watchdog.pid] {
            XCTAssertEqual(watchdogErrorCode { try watchdog.watch(processGroup: invalid) }, .invalidProcessGroup)
        }

        try watchdog.arm(until: .now - .seconds(1))  // passed already: fires at once
        let firedFull = await eventually { log.firings.count == 1 }
        XCTAssertTrue(firedFull)
        XCTAssertEqual(log.firings.first?.watchedGroups, JobWatchdog.capacity)
        XCTAssertEqual(log.firings.first?.signalledGroups, 0)

        watchdog.unwatch(processGroup: groups[5])
        try watchdog.watch(processGroup: extra)
        try watchdog.arm(until: .now)
        let firedAgain = await eventually { log.firings.count == 2 }
        XCTAssertTrue(firedAgain)
        XCTAssertEqual(log.firings.last?.watchedGroups, JobWatchdog.capacity)

        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
        let events = await log.finished()
        XCTAssertFalse(events.contains { if case .rejected = $0 { true } else { false } }, "\(events)")
    }

    func testWatchingGroupsSendsTheStoppedWatchdogNothingAndItStillKillsWhatIsWatched() async throws {
        let job = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let bystander = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try await firedOnce(watchdog, log)  // in its loop: stopped below while serving, not in its set-up
        XCTAssertEqual(kill(watchdog.pid, SIGSTOP), 0)
        let stopped = await eventually { processState(watchdog.pid) == "T" }
        XCTAssertTrue(stopped)
        // Far more watches and unwatches than its command queue holds (about twenty thousand): none is a message
        // it would have to read, so none fails while it does not read.
        for round in 0..<Int32(100_000) {
            let group = 100_000_000 + round  // above any pid_max: nothing real
            try watchdog.watch(processGroup: group)
            watchdog.unwatch(processGroup: group)
        }
        try watchdog.watch(processGroup: job.pid)
        XCTAssertEqual(kill(watchdog.pid, SIGCONT), 0)
        try watchdog.arm(until: .now - .seconds(1))  // passed already: fires once it reads this

        let fired = await eventually { log.firings.count == 2 }
        XCTAssertTrue(fired, "no second firing reported: \(log.firings)")
        XCTAssertEqual(log.firings.last?.watchedGroups, 1)
        XCTAssertEqual(log.firings.last?.signalledGroups, 1)
        let outcome = await job.wait(killedByWatchdog)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        watchdog.unwatch(processGroup: job.pid)
        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .stopped)
        await assertSurvived(bystander, "a group that was never watched was killed")
    }

    func testCommandToAWatchdogThatDiedFailsWithoutSIGPIPE() async throws {
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        // While the registry is held, the reader thread cannot reap the watchdog, so its socket stays open here and
        // the command really goes to a closed peer: EPIPE, where a pipe or a stream socket would kill this process.
        let error: WatchdogError? = ChildRegistry.watched.withLock { _ -> WatchdogError? in
            XCTAssertEqual(kill(watchdog.pid, SIGKILL), 0)
            XCTAssertTrue(waitUntil(timeout: .seconds(5)) { processState(watchdog.pid) == "Z" })
            do {
                try withSIGPIPEDeliverable { try watchdog.arm(until: .now + .seconds(10)) }
                return nil
            } catch let error as WatchdogError {
                return error
            } catch {
                XCTFail("unexpected error \(error)")
                return nil
            }
        }
        XCTAssertEqual(error?.code, .gone)
        XCTAssertEqual(error?.errno, EPIPE)
        let ending = await watchdog.stop()
        XCTAssertEqual(ending, .terminated(.signaled(SIGKILL)))
        let events = await log.finished()
        XCTAssertEqual(events, [.exited(.terminated(.signaled(SIGKILL)))])
        XCTAssertFalse(processExists(watchdog.pid))
        XCTAssertEqual(watchdogErrorCode { try watchdog.disarm() }, .gone)
    }

    func testDroppedWatchdogQuitsWithoutKillingItsGroups() async throws {
        let job = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        var watchdog: JobWatchdog? = try JobWatchdog()
        let pid = try XCTUnwrap(watchdog?.pid)
        let log = EventLog(try XCTUnwrap(watchdog))
        try watchdog?.watch(processGroup: job.pid)
        watchdog = nil
        let events = await log.finished()
        XCTAssertEqual(events, [.exited(.stopped)])
        XCTAssertFalse(processExists(pid))
        await assertSurvived(job, "dropping the watchdog killed the job")
    }

    func testStoppedWatchdogMakesCommandsFailInsteadOfBlockingAndStopStillEndsIt() async throws {
        let job = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let watchdog = try JobWatchdog()
        let log = EventLog(watchdog)
        try await firedOnce(watchdog, log)  // it serves commands: stopped below in its loop, not in its set-up
        try watchdog.watch(processGroup: job.pid)
        XCTAssertEqual(kill(watchdog.pid, SIGSTOP), 0)
        let stopped = await eventually { processState(watchdog.pid) == "T" }
        XCTAssertTrue(stopped)
        // Nobody reads now: the queue fills (about twenty thousand commands) and the next command fails at once.
        var code: WatchdogError.Code?
        var sent = 0
        while code == nil, sent < 1_000_000 {
            code = watchdogErrorCode { try watchdog.arm(until: .now + .seconds(60)) }
            sent += 1
        }
        XCTAssertEqual(code, .unresponsive, "after \(sent) commands")
        // QUIT cannot be queued either: the watchdog is ended with SIGKILL at once (not after the grace), and the
        // group it watched is left alone.
        let start = ContinuousClock.now
        let ending = await watchdog.stop(grace: .seconds(60))
        XCTAssertEqual(ending, .terminated(.signaled(SIGKILL)))
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10))
        await assertSurvived(job, "stopping an unresponsive watchdog killed the job")
    }

    func testStopEndsAWatchdogThatIsStoppedWithinTheGrace() async throws {
        let job = try await Shared.supervisor.spawn(sleep300, output: { _, _ in })
        let watchdog = try JobWatchdog()
        try watchdog.watch(processGroup: job.pid)
        XCTAssertEqual(kill(watchdog.pid, SIGSTOP), 0)  // perhaps before its set-up: it holds copies of our fds then
        let start = ContinuousClock.now
        let ending = await watchdog.stop(grace: .milliseconds(200))  // the QUIT is queued, but nobody reads it
        XCTAssertEqual(ending, .terminated(.signaled(SIGKILL)))
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(200))
        XCTAssertFalse(processExists(watchdog.pid))
        await assertSurvived(job, "ending a stopped watchdog killed the job")
    }

    // MARK: Helpers

    /// Asserts that `job` is still alive, then stops it (SIGKILL) and reaps it.
    private func assertSurvived(_ job: RunningProcess, _ message: String, line: UInt = #line) async {
        XCTAssertTrue(processIsAlive(job.pid), message, line: line)
        job.signalGroup(SIGKILL)
        _ = await job.wait(stoppedByTest)
    }

    /// `sh` with a `sleep 300` in the background, in the job's group: the job and the grandchild's pid.
    private func startJobWithGrandchild() async throws -> (RunningProcess, Int32) {
        let output = OutputCollector()
        let job = try await Shared.supervisor.spawn(shell("sleep 300 & echo $!; wait"), output: output.handler)
        let printed = await eventually { output.stdoutLines.count == 1 }
        XCTAssertTrue(printed, "the job printed no pid")
        return (job, Int32(output.stdoutLines.first ?? "") ?? -1)
    }

    /// Arms with a deadline that has passed and waits for the firing.
    private func firedOnce(_ watchdog: JobWatchdog, _ log: EventLog) async throws {
        try watchdog.arm(until: .now - .milliseconds(1))
        let fired = await eventually { log.firings.count == 1 }
        XCTAssertTrue(fired, "the watchdog did not fire")
    }

    /// The code of the WatchdogError `body` throws; nil when it throws nothing (or another error, which fails).
    private func watchdogErrorCode(_ body: () throws -> Void, line: UInt = #line) -> WatchdogError.Code? {
        do {
            try body()
            return nil
        } catch let error as WatchdogError {
            return error.code
        } catch {
            XCTFail("unexpected error \(error)", line: line)
            return nil
        }
    }

    /// Runs `body` with SIGPIPE at its default action (death) and unblocked on this thread. The runner does not
    /// ignore it, but this thread may block it (the cooperative pool's threads do), and then a send without
    /// MSG_NOSIGNAL would pass unnoticed. No suspension inside: the thread stays the same.
    private func withSIGPIPEDeliverable(_ body: () throws -> Void) rethrows {
        let previous = signal(SIGPIPE, SIG_IGN)  // discards a SIGPIPE left pending on this thread by anyone else
        signal(SIGPIPE, SIG_DFL)
        var pipeOnly = sigset_t()
        var saved = sigset_t()
        sigemptyset(&pipeOnly)
        sigaddset(&pipeOnly, SIGPIPE)
        pthread_sigmask(SIG_UNBLOCK, &pipeOnly, &saved)
        defer {
            pthread_sigmask(SIG_SETMASK, &saved, nil)
            signal(SIGPIPE, previous)
        }
        try body()
    }

    /// Parent, process group and session from /proc/<pid>/stat.
    private func processStatFields(_ pid: Int32) -> (parent: Int32, group: Int32, session: Int32)? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ").compactMap { Int32($0) }
        guard fields.count >= 3 else { return nil }
        return (fields[0], fields[1], fields[2])
    }
}

/// Collects a watchdog's events as they arrive.
final class EventLog: Sendable {
    private let received = Mutex<[JobWatchdog.Event]>([])
    private let reader = Mutex<Task<Void, Never>?>(nil)

    init(_ watchdog: JobWatchdog) {
        let stream = watchdog.events
        let task = Task { [self] in
            for await event in stream {
                received.withLock { $0.append(event) }
            }
        }
        reader.withLock { $0 = task }
    }

    var all: [JobWatchdog.Event] { received.withLock { $0 } }

    var firings: [JobWatchdog.Firing] {
        all.compactMap { event in
            if case .fired(let firing) = event { firing } else { nil }
        }
    }

    /// Every event, once the stream has finished (the watchdog was reaped).
    func finished() async -> [JobWatchdog.Event] {
        await reader.withLock { $0 }?.value
        return all
    }
}
