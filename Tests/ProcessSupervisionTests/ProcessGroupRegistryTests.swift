import Foundation
import Synchronization
import XCTest

@testable import ProcessSupervision

/// What a watchdog that kills process groups relies on: it hears of a job's group id exactly while the id names
/// that job's group.
final class ProcessGroupRegistryTests: XCTestCase {
    /// Records each call with the state /proc shows for the group's leader at that moment.
    private final class Recorder: ProcessGroupRegistry {
        let calls = Mutex<[(String, Int32, String?)]>([])
        func groupStarted(_ processGroup: Int32) {
            calls.withLock { $0.append(("started", processGroup, processState(processGroup))) }
        }
        func groupEnding(_ processGroup: Int32) {
            calls.withLock { $0.append(("ending", processGroup, processState(processGroup))) }
        }
    }

    func testAGroupIsAnnouncedAtItsCloneAndWithdrawnBeforeItsLeaderIsReaped() async throws {
        let recorder = Recorder()
        // With a child that outlives the main process for a moment and holds its output open: the teardown drains
        // and reaps, and the group's id leaves the registry while its leader is still an unreaped zombie.
        let spec = ProcessSpec(executable: "/bin/sh", arguments: ["sh", "-c", "sleep 0.2 & exit 3"])
        let process = try await Shared.supervisor.spawn(spec, groups: recorder, output: { _, _ in })
        let started = recorder.calls.withLock { $0 }
        XCTAssertEqual(started.map(\.0), ["started"])
        XCTAssertEqual(started.first?.1, process.pid)
        let outcome = await process.wait(TerminationPolicy(timeout: .seconds(10)))
        XCTAssertEqual(outcome.termination, .exited(3))
        let calls = recorder.calls.withLock { $0 }
        XCTAssertEqual(calls.map(\.0), ["started", "ending"])
        XCTAssertEqual(calls.last?.1, process.pid)
        XCTAssertEqual(calls.last?.2, "Z", "told while the leader was a zombie, not after its reap")
        XCTAssertNil(processState(process.pid), "reaped once wait returned")
    }

    func testAProcessThatCannotStartIsNeverAnnounced() async throws {
        let recorder = Recorder()
        let spec = ProcessSpec(executable: "/nonexistent/tool", arguments: ["tool"])
        do {
            _ = try await Shared.supervisor.spawn(spec, groups: recorder, output: { _, _ in })
            XCTFail("it started")
        } catch is SpawnError {}
        XCTAssertTrue(recorder.calls.withLock { $0.isEmpty })
    }
}
