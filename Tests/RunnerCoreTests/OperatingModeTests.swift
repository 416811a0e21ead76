import RunnerProtocol
import XCTest

@testable import RunnerCore

final class OperatingModeTests: XCTestCase {
    func testDrainThenResume() {
        var mode = OperatingMode()
        XCTAssertTrue(mode.intakeOpen)
        XCTAssertEqual(mode.handle(.resume), .ignored("not drained"))
        XCTAssertEqual(mode.handle(.drain), .accepted(.closeIntake))
        XCTAssertFalse(mode.intakeOpen)
        XCTAssertEqual(mode.runnerState(jobsRunning: true), .draining)
        XCTAssertEqual(mode.runnerState(jobsRunning: false), .drained)
        XCTAssertEqual(mode.handle(.drain), .ignored("already drained"))
        XCTAssertEqual(mode.handle(.drain, jobsRunning: true), .ignored("already draining"))
        XCTAssertEqual(mode.handle(.resume), .accepted(.openIntake))
        XCTAssertTrue(mode.intakeOpen)
        XCTAssertEqual(mode.runnerState(jobsRunning: false), .running)
    }

    func testShutdownThenNowThenNothingMore() {
        var mode = OperatingMode()
        XCTAssertEqual(mode.handle(.shutdown(now: false)), .accepted(.shutDown))
        XCTAssertFalse(mode.intakeOpen)
        XCTAssertEqual(mode.runnerState(jobsRunning: false), .draining)
        XCTAssertEqual(mode.handle(.shutdown(now: false)), .ignored("already shutting down"))
        XCTAssertEqual(mode.handle(.drain), .rejected("the runner is shutting down"))
        XCTAssertEqual(mode.handle(.resume), .rejected("the runner is shutting down"))
        XCTAssertEqual(
            mode.handle(.migrate(toNode: "n2", takeoverTimeoutMs: 1)), .rejected("the runner is shutting down"))
        XCTAssertEqual(mode.handle(.shutdown(now: true)), .accepted(.shutDownNow))
        XCTAssertEqual(mode.handle(.shutdown(now: true)), .ignored("already shutting down"))
        XCTAssertNil(mode.migration)
    }

    func testSignalsAreGracefulThenImmediate() {
        var mode = OperatingMode()
        XCTAssertEqual(mode.signalled(), .shutDown)
        XCTAssertEqual(mode.signalled(), .shutDownNow)
        XCTAssertEqual(mode.handle(.shutdown(now: true)), .ignored("already shutting down"))
    }

    func testMigrateFromDrainedKeepsItsTargetThroughAnImmediateShutdown() {
        var mode = OperatingMode()
        _ = mode.handle(.drain)
        XCTAssertEqual(mode.handle(.migrate(toNode: "n2", takeoverTimeoutMs: 5000)), .accepted(.shutDown))
        XCTAssertEqual(mode.migration, OperatingMode.Migration(toNode: "n2", takeoverTimeoutMs: 5000))
        XCTAssertEqual(mode.signalled(), .shutDownNow)
        XCTAssertEqual(mode.migration?.toNode, "n2")
    }

    func testJobBudgetClosesIntakeWhenSpent() {
        var mode = OperatingMode(jobLimit: 2)
        XCTAssertTrue(mode.intakeOpen)
        mode.took(1)
        XCTAssertEqual(mode.remainingJobs, 1)
        XCTAssertTrue(mode.intakeOpen)
        mode.took(1)
        XCTAssertEqual(mode.remainingJobs, 0)
        XCTAssertFalse(mode.intakeOpen)
        // A drain and resume does not reopen a spent budget.
        _ = mode.handle(.drain)
        _ = mode.handle(.resume)
        XCTAssertFalse(mode.intakeOpen)
        // An entry that was no job to run (rejected, routed) gives its place back, never beyond the limit.
        mode.gaveBack(1)
        XCTAssertEqual(mode.remainingJobs, 1)
        XCTAssertTrue(mode.intakeOpen)
        mode.gaveBack(5)
        XCTAssertEqual(mode.remainingJobs, 2)
    }

    func testCancelIsNotARunnerCommand() {
        var mode = OperatingMode()
        XCTAssertEqual(mode.handle(.cancel(job: "j")).outcome, .rejected)
        XCTAssertTrue(mode.intakeOpen)
    }
}

final class ControlEchoTests: XCTestCase {
    func testCommandFieldsEchoedInOutcomeEventsAreCut() {
        XCTAssertEqual(ControlChannel.echoed("drain"), "drain")
        XCTAssertEqual(ControlChannel.echoed(nil), "")
        let long = ControlChannel.echoed(String(repeating: "x", count: 10_000))
        XCTAssertEqual(long, String(repeating: "x", count: ControlChannel.echoedFieldLimit) + "…")
    }
}
