import ProcessSupervision
import RunnerProtocol
import Synchronization
import XCTest

@testable import RunnerCore

final class LatchTests: XCTestCase {
    func testWaitReturnsOnFireAndFiredLatchesDoNotBlock() async {
        let latch = Latch()
        XCTAssertFalse(latch.isFired)
        let waiter = Task { await latch.wait() }
        latch.fire()
        await waiter.value
        XCTAssertTrue(latch.isFired)
        await latch.wait()  // already fired: returns at once
        latch.fire()  // firing twice is harmless
    }

    func testCancellationEndsAWait() async {
        let latch = Latch()
        let waiter = Task { await latch.wait() }
        waiter.cancel()
        await waiter.value
        XCTAssertFalse(latch.isFired)
    }

    func testTimeoutVersusFire() async {
        let never = Latch()
        let timedOut = await RunnerCore.wait(for: never, timeout: .milliseconds(10))
        XCTAssertFalse(timedOut)
        let fired = await RunnerCore.wait(for: Latch(fired: true), timeout: .seconds(60))
        XCTAssertTrue(fired)
    }
}

final class JobSlotsTests: XCTestCase {
    /// The capacity report asks for the next change every second while nothing changes: it gets the same latch each
    /// time, so an idle runner keeps one, not one more a second (found by breaker19b); a change fires it.
    func testTheNextChangeIsOneLatchHoweverOftenItIsAskedFor() async {
        let slots = JobSlots(capacity: 2)
        let seen = await slots.changes
        let first = await slots.changeLatch(after: seen)
        for _ in 0..<1000 {
            let again = await slots.changeLatch(after: seen)
            XCTAssertTrue(again === first)
        }
        XCTAssertFalse(first.isFired)
        let key = DeliveryKey(queue: "default", streamId: "1-1")
        await slots.reserve(key, jobId: "j1")
        XCTAssertTrue(first.isFired)
        let sinceSeen = await slots.changeLatch(after: seen)
        XCTAssertTrue(sinceSeen.isFired, "a change since `seen` answers at once")
        let next = await slots.changeLatch(after: await slots.changes)
        XCTAssertFalse(next === first)
        XCTAssertFalse(next.isFired)
        await slots.release(key)
        XCTAssertTrue(next.isFired)
    }

    private func key(_ streamId: String, queue: String = "default") -> DeliveryKey {
        DeliveryKey(queue: queue, streamId: streamId)
    }

    func testReserveReleaseAndLatches() async {
        let slots = JobSlots(capacity: 2)
        let initiallyFree = await slots.free
        XCTAssertEqual(initiallyFree, 2)
        let idle = await slots.emptyLatch()
        XCTAssertTrue(idle.isFired)
        await slots.reserve(key("1-0"), jobId: "a")
        await slots.reserve(key("2-0"), jobId: "b")
        let free = await slots.free
        let ids = await slots.runningJobIds
        XCTAssertEqual(free, 0)
        XCTAssertEqual(ids, ["a", "b"])
        let freeLatch = await slots.freeSlotLatch()
        let emptyLatch = await slots.emptyLatch()
        XCTAssertFalse(freeLatch.isFired)
        await slots.release(key("1-0"))
        XCTAssertTrue(freeLatch.isFired)
        XCTAssertFalse(emptyLatch.isFired)
        await slots.release(key("2-0"))
        XCTAssertTrue(emptyLatch.isFired)
        // Releasing twice, or a task attached after release, changes nothing.
        await slots.release(key("2-0"))
        await slots.attach(key("2-0"), task: Task {})
        let after = await slots.free
        XCTAssertEqual(after, 2)
    }
    func testTheSameStreamIdInTwoQueuesTakesTwoSlots() async {
        let slots = JobSlots(capacity: 2)
        await slots.reserve(key("5-0", queue: "qa"), jobId: "same-a")
        await slots.reserve(key("5-0", queue: "qb"), jobId: "same-b")
        let free = await slots.free
        let running = await slots.runningKeys
        XCTAssertEqual(free, 0)
        XCTAssertEqual(running, [key("5-0", queue: "qa"), key("5-0", queue: "qb")])
        await slots.release(key("5-0", queue: "qa"))
        let ids = await slots.runningJobIds
        XCTAssertEqual(ids, ["same-b"])
    }
}

final class OutcomeMappingTests: XCTestCase {
    private func record(_ termination: Termination, stop: StopReason? = nil, forced: Bool = false) -> JobResultRecord {
        JobExecutor.record(
            for: ProcessOutcome(
                pid: 7, termination: termination, stopReason: stop, forcedKill: forced, wallTime: .milliseconds(1500)),
            timeout: .seconds(2))
    }

    func testExitCodesSignalsAndTimeouts() {
        XCTAssertEqual(record(.exited(0)).state, .succeeded)
        XCTAssertEqual(record(.exited(0)).durationMs, 1500)
        let failed = record(.exited(3))
        XCTAssertEqual(failed.state, .failed)
        XCTAssertEqual(failed.exitCode, 3)
        XCTAssertEqual(failed.reason, "exited with code 3")
        let killed = record(.signaled(9))
        XCTAssertEqual(killed.state, .failed)
        XCTAssertEqual(killed.signal, 9)
        XCTAssertNil(killed.exitCode)
        XCTAssertEqual(killed.reason, "killed by signal 9 (SIGKILL)")
        let gentle = record(.signaled(15), stop: .timeout)
        XCTAssertEqual(gentle.state, .timedOut)
        XCTAssertEqual(gentle.reason, "timed out after 2000 ms; stopped with SIGTERM")
        XCTAssertFalse(gentle.forcedKill)
        let forced = record(.signaled(9), stop: .timeout, forced: true)
        XCTAssertEqual(forced.reason, "timed out after 2000 ms; killed with SIGKILL after the grace period")
        XCTAssertEqual(forced.eventData["forced_kill"], .bool(true))
        XCTAssertEqual(forced.eventData["state"], "timed_out")
    }
}

final class InProcessKillSwitchTests: XCTestCase {
    private func sleeper(_ supervisor: ProcessSupervisor) async throws -> RunningProcess {
        try await supervisor.spawn(ProcessSpec(executable: "/bin/sleep", arguments: ["sleep", "60"])) { _, _ in }
    }

    func testArmedDeadlineKillsWatchedGroupsUnlessArmedAgain() async throws {
        let supervisor = try ProcessSupervisor(subreaper: false)
        defer { supervisor.shutdown() }
        let fired = Latch()
        let killSwitch = InProcessKillSwitch { fired.fire() }
        let doomed = try await sleeper(supervisor)
        let spared = try await sleeper(supervisor)
        killSwitch.watch(doomed)
        killSwitch.watch(spared)
        killSwitch.unwatch(spared)
        // Armed again before the first deadline: only the later one counts.
        killSwitch.arm(until: .now + .milliseconds(100))
        killSwitch.arm(until: .now + .milliseconds(300))
        let early = await RunnerCore.wait(for: fired, timeout: .milliseconds(200))
        XCTAssertFalse(early, "fired at a deadline that was replaced")
        let outcome = await doomed.wait(TerminationPolicy(timeout: .seconds(10)))
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertNil(outcome.stopReason, "killed by the switch, not by the supervisor's timeout")
        XCTAssertTrue(fired.isFired)
        // Once fired, a group watched later is killed at once; the unwatched one lives on.
        let late = try await sleeper(supervisor)
        killSwitch.watch(late)
        let lateOutcome = await late.wait(TerminationPolicy(timeout: .seconds(10)))
        XCTAssertEqual(lateOutcome.termination, .signaled(SIGKILL))
        spared.signalGroup(SIGTERM)
        let sparedOutcome = await spared.wait(TerminationPolicy(timeout: .seconds(10)))
        XCTAssertEqual(sparedOutcome.termination, .signaled(SIGTERM))
    }

    func testDisarmedSwitchKillsNothing() async throws {
        let supervisor = try ProcessSupervisor(subreaper: false)
        defer { supervisor.shutdown() }
        let fired = Latch()
        let killSwitch = InProcessKillSwitch { fired.fire() }
        let process = try await sleeper(supervisor)
        killSwitch.watch(process)
        killSwitch.arm(until: .now + .milliseconds(50))
        killSwitch.disarm()
        let firedAnyway = await RunnerCore.wait(for: fired, timeout: .milliseconds(300))
        XCTAssertFalse(firedAnyway)
        process.signalGroup(SIGTERM)
        let outcome = await process.wait(TerminationPolicy(timeout: .seconds(10)))
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
    }
}

final class WatchdogKillSwitchTests: XCTestCase {
    private final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        let logged = Latch()
    }

    /// A firing's warning says how many job process groups the watchdog killed, singular or plural, and nothing of
    /// killing when there was none to kill.
    func testAFiringSaysHowManyGroupsItKilledAndNothingOfKillingWhenThereWereNone() async throws {
        let expected = [
            0: "the job watchdog fired: the lease was not renewed in time",
            1: "the job watchdog fired and killed 1 job process group: the lease was not renewed in time",
            2: "the job watchdog fired and killed 2 job process groups: the lease was not renewed in time",
        ]
        let supervisor = try ProcessSupervisor(subreaper: false)
        defer { supervisor.shutdown() }
        for count in expected.keys.sorted() {
            let sink = Lines()
            let logger = Logger(label: "runner", level: .warning, format: .json) { line in
                sink.lines.withLock { $0.append(line) }
                sink.logged.fire()
            }
            let killSwitch = try XCTUnwrap(WatchdogKillSwitch.start(logger: logger))
            var processes: [RunningProcess] = []
            for _ in 0..<count {
                processes.append(
                    try await supervisor.spawn(
                        ProcessSpec(executable: "/bin/sleep", arguments: ["sleep", "60"]), groups: killSwitch
                    ) { _, _ in })
            }
            killSwitch.arm(until: .now + .milliseconds(100))
            for process in processes {
                let outcome = await process.wait(TerminationPolicy(timeout: .seconds(10)))
                XCTAssertEqual(outcome.termination, .signaled(SIGKILL), "\(count)")
            }
            let logged = await RunnerCore.wait(for: sink.logged, timeout: .seconds(10))
            XCTAssertTrue(logged, "\(count): nothing logged")
            await killSwitch.stop()
            let messages = try sink.lines.withLock { $0 }.map { line in
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
                return object?["msg"] ?? line
            }
            XCTAssertEqual(messages, [expected[count]!], "\(count)")
        }
    }
}

final class PublishedHeartbeatTests: XCTestCase {
    func testALaterSendConfirmedFirstIsNotReplacedByAnEarlierOne() {
        let published = PublishedHeartbeat()
        let running: [String: JSONValue] = ["state": "running", "jobs_finished": 1]
        let draining: [String: JSONValue] = ["state": "draining", "jobs_finished": 1]
        XCTAssertFalse(published.isCurrent(running, refresh: .seconds(60)))
        let early = published.send()
        let late = published.send()
        // Redis applied them in send order: the late one is what it holds, whatever order the replies are seen in.
        published.confirm(draining, ticket: late.ticket, sentAt: late.at)
        published.confirm(running, ticket: early.ticket, sentAt: early.at)
        XCTAssertTrue(published.isCurrent(draining, refresh: .seconds(60)))
        XCTAssertFalse(published.isCurrent(running, refresh: .seconds(60)))
        XCTAssertFalse(published.isCurrent(["state": "draining", "jobs_finished": 2], refresh: .seconds(60)))
        XCTAssertFalse(published.isCurrent(draining, refresh: .zero))
    }
}

final class RoundPacingTests: XCTestCase {
    /// Rounds go out at once while they are spread out, `burst` of them back to back, then one per gap.
    func testABurstGoesAtOnceThenOneRoundPerGap() {
        let start = ContinuousClock.Instant.now
        var pacing = RoundPacing(gap: .milliseconds(250), burst: 3, now: start)
        XCTAssertEqual(pacing.delay(now: start), .zero)
        XCTAssertEqual(pacing.delay(now: start), .zero)
        XCTAssertEqual(pacing.delay(now: start), .zero)
        // The fourth at the same moment waits one gap, the fifth (due as the fourth went out) another.
        XCTAssertEqual(pacing.delay(now: start), .milliseconds(250))
        XCTAssertEqual(pacing.delay(now: start + .milliseconds(250)), .milliseconds(250))
        // A quiet second later the bucket is full again: three at once.
        let later = start + .seconds(2)
        XCTAssertEqual(pacing.delay(now: later), .zero)
        XCTAssertEqual(pacing.delay(now: later), .zero)
        XCTAssertEqual(pacing.delay(now: later), .zero)
        let partial = pacing.delay(now: later + .milliseconds(100))
        XCTAssertEqual(Double(partial.components.attoseconds) / 1e15, 150, accuracy: 0.001)
    }
}
