import Foundation
import RedisClient
import TestSupport
import XCTest

/// `--queue high --queue default`: strict priority order, also for a busy runner whose slots free up one by one.
final class QueuePriorityTests: IntegrationTestCase {
    /// The jobs in the order their `job.started` events were written.
    private func startOrder() throws -> [String] {
        try events().filter { $0.type == "job.started" }.map(\.job)
    }

    func testEveryHighJobStartsBeforeAnyDefaultJobWhenBothQueuesAreFull() throws {
        // Submitted before any runner exists, default ones first, so that both queues are full when it starts.
        for index in 0..<3 {
            try submit(["--queue", "default", "--", "true"], id: "default-\(index)")
            try submit(["--queue", "high", "--", "true"], id: "high-\(index)")
        }
        try startRunner(["--no-reaper", "--concurrency", "1", "--queue", "high", "--queue", "default"])
        for index in 0..<3 {
            try waitForState("default-\(index)", ["succeeded"])
            try waitForState("high-\(index)", ["succeeded"])
        }
        XCTAssertEqual(try startOrder(), ["high-0", "high-1", "high-2", "default-0", "default-1", "default-2"])
    }

    func testABusyRunnerTakesANewHighJobBeforeOlderDefaultJobsWhenItsSlotFrees() throws {
        try startRunner(["--no-reaper", "--concurrency", "1", "--queue", "high", "--queue", "default"])
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("release-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: release) }
        // Holds the only slot until the test lets it go.
        try submit(
            ["--queue", "default", "--", "sh", "-c", "while [ ! -e \(release.path) ]; do sleep 0.05; done"],
            id: "busy")
        _ = try runningPid("busy")
        try submit(["--queue", "default", "--", "true"], id: "older-0")
        try submit(["--queue", "default", "--", "true"], id: "older-1")
        try submit(["--queue", "high", "--", "true"], id: "urgent")
        FileManager.default.createFile(atPath: release.path, contents: nil)
        for id in ["busy", "older-0", "older-1", "urgent"] { try waitForState(id, ["succeeded"]) }
        XCTAssertEqual(try startOrder(), ["busy", "urgent", "older-0", "older-1"])
    }

    func testARequirementStreamIsReadRightAfterItsQueue() throws {
        try submit(["--queue", "default", "--require", "gpu=yes", "--", "true"], id: "default-gpu")
        try submit(["--queue", "default", "--", "true"], id: "default-any")
        try submit(["--queue", "high", "--require", "gpu=yes", "--", "true"], id: "high-gpu")
        try submit(["--queue", "high", "--", "true"], id: "high-any")
        try startRunner([
            "--no-reaper", "--concurrency", "1", "--queue", "high", "--queue", "default", "--label", "gpu=yes",
        ])
        for id in ["default-gpu", "default-any", "high-gpu", "high-any"] { try waitForState(id, ["succeeded"]) }
        XCTAssertEqual(try startOrder(), ["high-any", "high-gpu", "default-any", "default-gpu"])
    }
}
