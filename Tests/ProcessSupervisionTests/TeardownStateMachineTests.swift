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
        XCTAssertEqual(machine.timerFired(now: 100 * ms), [.signalGroup(SIGTERM)])
        XCTAssertEqual(machine.nextDeadline, 150 * ms)
        XCTAssertEqual(machine.timerFired(now: 150 * ms), [.signalGroup(SIGKILL)])
        XCTAssertEqual(machine.nextDeadline, nil)
        XCTAssertEqual(machine.mainExited(now: 151 * ms), [.probeGroup])
        XCTAssertEqual(machine.groupProbed(othersAlive: false, now: 151 * ms), [.reapMain, .reapGroup])
        XCTAssertEqual(machine.groupChecked(empty: true, now: 151 * ms), [])  // pipes still open: drain
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
        XCTAssertEqual(machine.mainExited(now: 5 * ms), [.probeGroup])
        // Signals go out before the main process is reaped.
        XCTAssertEqual(machine.groupProbed(othersAlive: true, now: 5 * ms), [.signalGroup(SIGTERM)])
        XCTAssertEqual(machine.nextDeadline, 6 * ms)  // 1 ms backoff
        XCTAssertEqual(machine.timerFired(now: 6 * ms), [.probeGroup])
        XCTAssertEqual(machine.groupProbed(othersAlive: true, now: 6 * ms), [])
        XCTAssertEqual(machine.nextDeadline, 8 * ms)  // doubled
        XCTAssertEqual(machine.timerFired(now: 25 * ms), [.signalGroup(SIGKILL), .reapMain, .reapGroup])
        XCTAssertEqual(machine.groupChecked(empty: false, now: 25 * ms), [])  // SIGKILL sent: just wait
        XCTAssertEqual(machine.timerFired(now: 26 * ms), [.reapGroup])
        XCTAssertEqual(machine.groupChecked(empty: true, now: 26 * ms), [])
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
        XCTAssertEqual(machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 1), [.signalGroup(SIGTERM)])
        XCTAssertEqual(machine.stopReason, .cancelled)
    }

    func testCancelAfterANaturalExitChangesNothing() {
        var machine = TeardownStateMachine()
        _ = machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 0)
        _ = machine.pipesClosed(now: 1)
        XCTAssertEqual(machine.mainExited(now: 2), [.probeGroup])
        XCTAssertEqual(machine.cancel(now: 3), [])
        XCTAssertEqual(machine.groupProbed(othersAlive: false, now: 3), [.reapMain, .reapGroup])
        XCTAssertEqual(machine.groupChecked(empty: true, now: 3), [.finish])
        XCTAssertNil(machine.stopReason)
    }

    func testAStragglerTheProbeMissedIsKilled() {
        var machine = TeardownStateMachine()
        _ = machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 0)
        _ = machine.mainExited(now: 1)
        _ = machine.groupProbed(othersAlive: false, now: 1)
        XCTAssertEqual(machine.groupChecked(empty: false, now: 1), [.killRemainingGroup])
        XCTAssertTrue(machine.leftoverProcessesStopped)
    }

    func testAGroupThatWillNotVanishIsGivenUpOnAfterTheVanishLimit() {
        var machine = TeardownStateMachine()
        _ = machine.waitStarted(policy: TerminationPolicy(), startedAt: 0, now: 0)
        _ = machine.pipesClosed(now: 0)
        _ = machine.mainExited(now: 0)
        _ = machine.groupProbed(othersAlive: false, now: 0)
        _ = machine.groupChecked(empty: false, now: 0)
        XCTAssertEqual(machine.groupChecked(empty: false, now: TeardownStateMachine.vanishLimit), [.finish])
    }
}
