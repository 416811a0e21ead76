import Glibc
import XCTest

@testable import ProcessSupervision

/// The teardown's order and timing without processes: events in, actions out.
final class TeardownStateMachineTests: XCTestCase {
    private let ms: Int64 = 1_000_000

    func testTimeoutThenGraceThenKill() {
        var machine = TeardownStateMachine()
        let policy = TerminationPolicy(timeout: .milliseconds(100), killGrace: .milliseconds(50))
        XCTAssertEqual(machine.waitStarted(policy: policy, startedAt: 0, now: 10 * ms), [])
        XCTAssertEqual(machine.nextDeadline, 100 * ms)
        XCTAssertEqual(machine.timerFired(now: 99 * ms), [])
        XCTAssertEqual(machine.timerFired(now: 100 * ms), [.signalJob(SIGTERM)])
        XCTAssertEqual(machine.nextDeadline, 150 * ms)
        XCTAssertEqual(machine.timerFired(now: 150 * ms), [.signalJob(SIGKILL)])
        XCTAssertEqual(machine.nextDeadline, nil)
        XCTAssertEqual(machine.mainExited(now: 151 * ms), [.probeJob])
        XCTAssertEqual(machine.jobProbed(othersAlive: false, now: 151 * ms), [.reapMain, .reapJob])
        XCTAssertEqual(machine.jobChecked(empty: true, now: 151 * ms), [])  // pipes still open: drain
        XCTAssertEqual(machine.pipesClosed(now: 152 * ms), [.finish])
        XCTAssertEqual(machine.stopReason, .timeout)
        XCTAssertTrue(machine.forcedKill)
        XCTAssertFalse(machine.leftoverProcessesStopped)
        XCTAssertTrue(machine.isFinished)
    }

    func testLeftoversGetSIGTERMWhileTheMainProcessIsAZombieThenSIGKILL() {
        var machine = TeardownStateMachine()
        let policy = TerminationPolicy(leftoverGrace: .milliseconds(20), drainLimit: .milliseconds(10))
        _ = machine.waitStarted(policy: policy, startedAt: 0, now: 0)
        XCTAssertEqual(machine.mainExited(now: 5 * ms), [.probeJob])
        // Signals go out before the main process is reaped.
        XCTAssertEqual(machine.jobProbed(othersAlive: true, now: 5 * ms), [.signalJob(SIGTERM)])
        XCTAssertEqual(machine.nextDeadline, 6 * ms)  // 1 ms backoff
        XCTAssertEqual(machine.timerFired(now: 6 * ms), [.probeJob])
        XCTAssertEqual(machine.jobProbed(othersAlive: true, now: 6 * ms), [])
        XCTAssertEqual(machine.nextDeadline, 8 * ms)  // doubled
        XCTAssertEqual(machine.timerFired(now: 25 * ms), [.signalJob(SIGKILL), .reapMain, .reapJob])
        XCTAssertEqual(machine.jobChecked(empty: false, now: 25 * ms), [])  // SIGKILL sent: just wait
        XCTAssertEqual(machine.timerFired(now: 26 * ms), [.reapJob])
        XCTAssertEqual(machine.jobChecked(empty: true, now: 26 * ms), [])
        XCTAssertEqual(machine.nextDeadline, 36 * ms)
        XCTAssertEqual(machine.timerFired(now: 36 * ms), [.closePipes, .finish])
        XCTAssertNil(machine.stopReason)
        XCTAssertTrue(machine.leftoverProcessesStopped)
        XCTAssertTrue(machine.forcedKill)
        XCTAssertTrue(machine.outputTruncatedByDrainLimit)
    }

    func testCancelBeforeTheWaitIsRegisteredStillStops() {
        var machine = TeardownStateMachine()
        XCTAssertEqual(machine.cancel(now: 0), [])
        XCTAssertEqual(machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 1), [.signalJob(SIGTERM)])
        XCTAssertEqual(machine.stopReason, .cancelled)
    }

    func testCancelAfterANaturalExitChangesNothing() {
        var machine = TeardownStateMachine()
        _ = machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 0)
        _ = machine.pipesClosed(now: 1)
        XCTAssertEqual(machine.mainExited(now: 2), [.probeJob])
        XCTAssertEqual(machine.cancel(now: 3), [])
        XCTAssertEqual(machine.jobProbed(othersAlive: false, now: 3), [.reapMain, .reapJob])
        XCTAssertEqual(machine.jobChecked(empty: true, now: 3), [.finish])
        XCTAssertNil(machine.stopReason)
    }

    func testAStragglerTheProbeMissedIsKilled() {
        var machine = TeardownStateMachine()
        _ = machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 0)
        _ = machine.mainExited(now: 1)
        _ = machine.jobProbed(othersAlive: false, now: 1)
        XCTAssertEqual(machine.jobChecked(empty: false, now: 1), [.killRemainingJob])
        XCTAssertTrue(machine.leftoverProcessesStopped)
    }

    func testAGroupThatWillNotVanishIsGivenUpOnAfterTheVanishLimit() {
        var machine = TeardownStateMachine()
        _ = machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 0)
        _ = machine.pipesClosed(now: 0)
        _ = machine.mainExited(now: 0)
        _ = machine.jobProbed(othersAlive: false, now: 0)
        _ = machine.jobChecked(empty: false, now: 0)
        XCTAssertEqual(machine.jobChecked(empty: false, now: TeardownStateMachine.vanishLimit), [.finish])
    }
}
