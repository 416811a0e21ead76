import Foundation
import RedisClient
import TestSupport
import XCTest

@testable import RunnerCore

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

    /// Entry ids are unique only per stream: the same id in two queues is two jobs, which a runner reading both runs
    /// side by side (not the second one a pending rescan later), each in a work folder of its own although their
    /// job ids sanitise alike, each acked on its own stream.
    func testTheSameEntryIdInTwoQueuesIsTwoJobsThatRunAtOnce() throws {
        try startRunner(["--no-reaper", "--concurrency", "2", "--queue", "qa", "--queue", "qb"])
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("release-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: release) }
        // Each job prints its work folder, then holds its slot until the test has seen both run.
        let spec = #"{"shell":"pwd; while [ ! -e \#(release.path) ]; do sleep 0.05; done"}"#
        let sameId = "5000000000000-0"
        let jobs = ["qa": "coll.1", "qb": "coll:1"]
        for (queue, id) in jobs.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(
                try send(["XADD", key("jobs:\(queue)"), sameId, "id", id, "spec", spec]).string, sameId, queue)
        }
        var states: [String: String] = [:]
        let together = try waitUntil(timeout: .seconds(5)) {
            for id in jobs.values { states[id] = try job(id)["state"] ?? "" }
            return states.values.allSatisfy { $0 == "running" }
        }
        FileManager.default.createFile(atPath: release.path, contents: nil)
        XCTAssertTrue(together, "both jobs run at the same time: \(states)")
        var folders: Set<String> = []
        for (queue, id) in jobs {
            let record = try waitForState(id, ["succeeded"])
            XCTAssertEqual(record["queue"], queue, id)
            XCTAssertEqual(record["stream_id"], sameId, id)
            XCTAssertEqual(try events(of: id).filter { $0 == "job.started" }.count, 1, "\(id) ran once")
            folders.insert(String(decoding: try logBytes(id).stdout, as: UTF8.self))
        }
        XCTAssertEqual(folders.count, 2, "a work folder each: \(folders)")
        for queue in jobs.keys {
            XCTAssertTrue(
                try waitUntil(timeout: .seconds(5)) {
                    try self.send(["XPENDING", self.key("jobs:\(queue)"), "runners"]).array?.first?.int == 0
                }, "the entry is acked on \(queue)")
        }
    }

    /// The same entry id with the same job id in two queues (a job id hand-added twice) is a duplicate like any other:
    /// one runs, the other is rejected as "running as another entry", never a second copy with the same attempt and
    /// fencing token (the claim took the same stream id on another queue for a resent claim of the running one).
    func testTheSameJobIdWithTheSameEntryIdInTwoQueuesRunsOnce() throws {
        try startRunner(["--no-reaper", "--concurrency", "2", "--queue", "qa", "--queue", "qb"])
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("release-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: release) }
        let spec = #"{"shell":"echo $NR_FENCING_TOKEN; while [ ! -e \#(release.path) ]; do sleep 0.05; done"}"#
        let sameId = "5000000000000-0"
        for queue in ["qa", "qb"] {
            XCTAssertEqual(
                try send(["XADD", key("jobs:\(queue)"), sameId, "id", "twice", "spec", spec]).string, sameId, queue)
        }
        let rejected = try waitUntil(timeout: .seconds(5)) {
            try self.events(of: "twice").contains("job.rejected")
        }
        let seen = try events(of: "twice")
        FileManager.default.createFile(atPath: release.path, contents: nil)
        XCTAssertTrue(rejected, "the second entry is rejected: \(seen)")
        XCTAssertEqual(seen.filter { $0 == "job.started" }.count, 1, "one copy started: \(seen)")
        try waitForState("twice", ["succeeded"])
        XCTAssertEqual(try events(of: "twice").filter { $0 == "job.started" }.count, 1, "ran once")
        for queue in ["qa", "qb"] {
            XCTAssertTrue(
                try waitUntil(timeout: .seconds(5)) {
                    try self.send(["XPENDING", self.key("jobs:\(queue)"), "runners"]).array?.first?.int == 0
                }, "the entry is acked on \(queue)")
        }
    }

    /// Two job ids crafted so that their deliveries of one entry id in two queues get the same context name (the
    /// names' 32-bit hash collides): they never share a folder or a cgroup. The second is handed back as a new entry,
    /// which gets a name of its own, and both jobs succeed.
    func testDeliveriesWhoseContextNamesCollideBothRun() throws {
        let sameId = "5000000000000-0"
        let (first, second) = try XCTUnwrap(Self.collidingJobIds(streamId: sameId, queues: ("qa", "qb")))
        XCTAssertEqual(
            isolationContextName(jobId: first, delivery: DeliveryKey(queue: "qa", streamId: sameId)),
            isolationContextName(jobId: second, delivery: DeliveryKey(queue: "qb", streamId: sameId)))
        try startRunner(["--no-reaper", "--concurrency", "2", "--queue", "qa", "--queue", "qb"])
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("release-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: release) }
        let spec = #"{"shell":"pwd; while [ ! -e \#(release.path) ]; do sleep 0.05; done"}"#
        // The second arrives while the first runs in the folder of that name.
        XCTAssertEqual(try send(["XADD", key("jobs:qa"), sameId, "id", first, "spec", spec]).string, sameId)
        XCTAssertTrue(try waitUntil(timeout: .seconds(10)) { try self.events(of: first).contains("job.started") })
        XCTAssertEqual(try send(["XADD", key("jobs:qb"), sameId, "id", second, "spec", spec]).string, sameId)
        let bothStarted = try waitUntil(timeout: .seconds(15)) {
            try [first, second].allSatisfy { try self.events(of: $0).contains("job.started") }
        }
        FileManager.default.createFile(atPath: release.path, contents: nil)
        let seen = (try events(of: first), try events(of: second))
        XCTAssertTrue(bothStarted, "both started: \(seen)")
        var folders: Set<String> = []
        for id in [first, second] {
            let record = try waitForState(id, ["succeeded"])
            XCTAssertEqual(record["exit_code"], "0", id)
            folders.insert(String(decoding: try logBytes(id).stdout, as: UTF8.self))
        }
        XCTAssertEqual(folders.count, 2, "a work folder each: \(folders)")
    }

    /// Two job ids of punctuation only (they read alike in a context name) whose names collide for `queues`.
    private static func collidingJobIds(streamId: String, queues: (String, String)) -> (String, String)? {
        let alphabet: [Character] = [".", ":", "@", "#", "!", "+", "=", "~"]
        func id(_ number: Int) -> String {
            var digits = number
            return "c"
                + String(
                    (0..<7).map { _ in
                        defer { digits /= alphabet.count }
                        return alphabet[digits % alphabet.count]
                    })
        }
        var seen: [String: String] = [:]
        for number in 0..<2_000_000 {
            let candidate = id(number)
            let first = isolationContextName(
                jobId: candidate, delivery: DeliveryKey(queue: queues.0, streamId: streamId))
            if let other = seen[
                isolationContextName(
                    jobId: candidate, delivery: DeliveryKey(queue: queues.1, streamId: streamId))], other != candidate
            {
                return (other, candidate)
            }
            seen[first] = candidate
        }
        return nil
    }
}
