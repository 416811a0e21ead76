import Foundation
import TestSupport
import XCTest

/// scripts/examples/control_plane.py, a control plane in Python with nothing but redis-py and the documented
/// protocol, drives real runners: it submits, follows events through its own group, and reschedules what a runner
/// killed with kill -9 held (the runners run without their own reaper, so only Python can).
final class ControlPlaneExampleTests: IntegrationTestCase {
    func testPythonControlPlaneRunsFiftyJobsAndReschedulesAKilledRunnersJob() throws {
        guard Python.require(["redis"]) else { return }
        let hold = FileManager.default.temporaryDirectory.appendingPathComponent("cp-hold-\(namespace)")
        defer { try? FileManager.default.removeItem(at: hold) }
        let options = ["--no-reaper", "--lease-ttl", "1s", "--concurrency", "4"]
        let first = try startRunner(name: "py-a", options)
        let second = try startRunner(name: "py-b", options)
        let control = try Python.start([
            "-u", "scripts/examples/control_plane.py", "--redis", "\(endpoint.host):\(endpoint.port)", "--jobs", "50",
            "--namespace", namespace, "--hold", hold.path, "--name", "py-control", "--id-prefix", "py",
            "--timeout", "90",
        ])

        // Job 1 waits for the hold file: kill -9 the runner running it.
        let pid = try runningPid("py-1")
        let before = try job("py-1")
        let victim = before["runner"] == first.name ? first : second
        let survivor = victim === first ? second : first
        victim.signal(SIGKILL)
        XCTAssertNotNil(victim.waitForExit(timeout: 10))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) }, "the job outlived its runner")
        FileManager.default.createFile(atPath: hold.path, contents: nil)

        let status = control.waitForExit(timeout: 120)
        let output = control.output
        XCTAssertEqual(status, 0, output)
        let lines = output.split(separator: "\n").map(String.init)
        for i in 1...50 {
            XCTAssertEqual(lines.filter { $0 == "py-\(i) succeeded" }.count, 1, "py-\(i):\n\(output)")
        }
        let summary = try XCTUnwrap(lines.last)
        let rescheduled = Int(summary.split(separator: "=").last ?? "") ?? 0
        XCTAssertEqual(summary, "succeeded=50 failed=0 lost=0 rescheduled=\(rescheduled)")
        XCTAssertGreaterThanOrEqual(rescheduled, 1, output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("runner \(victim.name) is lost") }, output)

        // The held job ran again on the survivor, as attempt 2, rescheduled by Python under the fencing rules.
        let record = try job("py-1")
        XCTAssertEqual(record["state"], "succeeded")
        XCTAssertEqual(record["attempt"], "2")
        XCTAssertEqual(record["runner"], survivor.name)
        XCTAssertEqual(record["output_tail"], "job-1\n")
        XCTAssertEqual(record["reschedules"], "1")
        let all = try events()
        let moved = try XCTUnwrap(all.first { $0.type == "job.rescheduled" && $0.job == "py-1" })
        XCTAssertEqual(moved.runner, "py-control")
        XCTAssertEqual(moved.data["from_runner"] as? String, victim.name)
        XCTAssertEqual(moved.data["previous_stream_id"] as? String, before["stream_id"])
        XCTAssertEqual(all.filter { $0.type == "job.rescheduled" }.count, rescheduled)
        XCTAssertEqual(all.filter { $0.type == "job.succeeded" }.count, 50, "each job recorded once")
        XCTAssertEqual(all.filter { $0.type == "job.stale_result" }.count, 0)
        // It left nothing behind: its events group is gone, the lost consumer removed, no entry pending.
        XCTAssertEqual(try send(["XINFO", "GROUPS", key("events")]).array?.count, 0)
        let consumers = try send(["XINFO", "CONSUMERS", key("jobs:default"), "runners"]).array ?? []
        XCTAssertFalse(
            consumers.contains { strings($0)["name"] == victim.name }, "the lost consumer is still in the group")
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
    }
}
