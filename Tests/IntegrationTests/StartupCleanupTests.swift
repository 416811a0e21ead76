import Foundation
import TestSupport
import XCTest

/// A worker that cannot start leaves nothing on the host: no cgroup parent, no work folder.
final class StartupCleanupTests: PrivateRedisTestCase {
    func testABadWorkRootFailsWithTheErrnoTextAndLeavesNoCgroupBehind() throws {
        let result = runCLI([
            "worker", "--redis", endpoint.url, "--namespace", namespace, "--name", "rt1", "--work-root",
            "/proc/nope", "--exit-when-idle", "1s",
        ])
        let parents = IsolationLeftovers.cgroupParents(namespace: namespace)
        IsolationLeftovers.remove(namespace: namespace)
        XCTAssertEqual(result.code, 2, result.err)
        let lines = result.err.split(separator: "\n").map(String.init)
        XCTAssertEqual(
            lines.last, "Error: cannot create the work root /proc/nope: No such file or directory", result.err)
        // The controllers the runner's cgroup parent is made in: cgroup v1 hierarchies, or v2's unified one.
        let controllers = ["memory", "pids", "cpu"]
        let v1 = controllers.contains { FileManager.default.fileExists(atPath: "/sys/fs/cgroup/\($0)") }
        let v2 = (try? String(contentsOfFile: "/sys/fs/cgroup/cgroup.controllers", encoding: .utf8))
            .map { text in controllers.contains { text.split(separator: " ").map(String.init).contains($0) } }
        guard v1 || v2 == true else {
            throw XCTSkip("no cgroup v1 or v2 hierarchy with memory, pids or cpu here: no cgroup parent to look for")
        }
        XCTAssertEqual(parents, [], "cgroup folders of runner rt1 left behind")
    }

    /// A start that fails after the host was prepared (here: Redis refuses to make the queue's group) removes the
    /// work root and the cgroup parent it made.
    func testAStartThatFailsAfterTheHostWasPreparedRemovesWhatItMade() throws {
        _ = try send(["SET", key("jobs:default"), "not a stream"])
        let root = NSTemporaryDirectory() + "nr-startup-\(namespace)"
        let result = runCLI([
            "worker", "--redis", endpoint.url, "--namespace", namespace, "--name", "rt2", "--work-root", root,
            "--exit-when-idle", "1s",
        ])
        let parents = IsolationLeftovers.cgroupParents(namespace: namespace)
        let rootLeft = FileManager.default.fileExists(atPath: root)
        IsolationLeftovers.remove(namespace: namespace)
        try? FileManager.default.removeItem(atPath: root)
        XCTAssertEqual(result.code, 1, result.err)
        XCTAssertTrue(
            result.err.contains("WRONGTYPE key \(key("jobs:default")) is a string, expected a stream"), result.err)
        XCTAssertFalse(rootLeft, "the work root \(root) made by the failed start is left")
        XCTAssertEqual(parents, [], "cgroup folders of runner rt2 left behind")
    }
}

/// The registry or the heartbeats stream SET to another type: Redis's own WRONGTYPE names no key, the runner does.
final class WrongTypeRegistryTests: PrivateRedisTestCase {
    func testAWorkerNamesARegistryOrHeartbeatsKeyOfTheWrongType() throws {
        _ = try send(["SET", key("runners"), "x"])
        let root = NSTemporaryDirectory() + "nr-registry-\(namespace)"
        let result = runCLI([
            "worker", "--redis", endpoint.url, "--namespace", namespace, "--name", "wt1", "--work-root", root,
            "--exit-when-idle", "1s",
        ])
        IsolationLeftovers.remove(namespace: namespace)
        try? FileManager.default.removeItem(atPath: root)
        XCTAssertEqual(result.code, 1, result.err)
        XCTAssertTrue(
            result.err.contains("WRONGTYPE key \(key("runners")) is a string, expected a hash"), result.err)

        // A running runner whose heartbeats stream turns into a string says so (it was a debug line only).
        _ = try send(["DEL", key("runners")])
        let runner = try startRunner(name: "wt2", ["--no-reaper", "--lease-ttl", "3s"])
        _ = try send(["SET", key("heartbeats"), "x"])
        let warning = "heartbeat not recorded: WRONGTYPE key \(key("heartbeats")) is a string, expected a stream"
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { runner.log.contains(warning) }, runner.log)
        _ = try send(["DEL", key("heartbeats")])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { runner.log.contains("heartbeat recorded again: the key is fixed") },
            runner.log)
        XCTAssertEqual(runner.log.components(separatedBy: "heartbeat recorded again").count, 2, runner.log)
        XCTAssertEqual(runner.stop(), 0, runner.log)
    }

    /// A queue stream SET to another type is the intake's to name: the heartbeat is still recorded, and the stray
    /// check (XPENDING on every queue) must not call it "heartbeat not recorded" with Redis's keyless WRONGTYPE.
    func testAWrongTypedQueueDoesNotMakeTheHeartbeatLookUnrecorded() throws {
        let runner = try startRunner(name: "wt3", ["--no-reaper", "--lease-ttl", "3s", "--queue", "wq"])
        _ = try send(["DEL", key("jobs:wq")])
        _ = try send(["SET", key("jobs:wq"), "x"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                runner.log.contains("key \(self.key("jobs:wq")) is a string, expected a stream")
            }, runner.log)
        // A stray check (XPENDING on every queue) runs once a lease TTL (3 s) of heartbeats: wait for two of them.
        let before = try commandCalls()["xpending"] ?? 0
        XCTAssertTrue(
            waitUntil(timeout: .seconds(15)) { ((try? self.commandCalls()["xpending"]) ?? 0) >= before + 2 },
            runner.log)
        XCTAssertFalse(runner.log.contains("heartbeat not recorded"), runner.log)
        _ = try send(["DEL", key("jobs:wq")])
        XCTAssertEqual(runner.stop(), 0, runner.log)
    }
}
