import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// An idle runner's heartbeat: published when it says something new, otherwise only once its last one is a refresh
/// interval old.
final class PresenceTests: IntegrationTestCase {
    private func presence(_ client: RedisClient) -> Presence {
        let configuration = WorkerConfiguration(
            redis: endpoint, keyspace: Keyspace(namespace: namespace), name: "p1", node: "n1", concurrency: 2)
        return Presence(
            client: client, keyspace: configuration.keyspace, configuration: configuration, startedAtMs: 1)
    }

    private func heartbeats() throws -> Int { try send(["XLEN", key("heartbeats")]).int ?? -1 }

    private func record() throws -> [String: Any] {
        let value = try send(["HGET", key("runners"), "p1"]).string ?? "{}"
        return try JSONSerialization.jsonObject(with: Data(value.utf8)) as? [String: Any] ?? [:]
    }

    func testAHeartbeatThatSaysNothingNewWaitsForTheRefresh() async throws {
        let client = RedisClient(endpoint: endpoint)
        defer { client.close() }
        let presence = presence(client)
        let idle = HeartbeatContent(state: .running, free: 2, running: [], epoch: 1)

        let first = try await presence.publish(idle, unlessCurrentWithin: .seconds(60))
        XCTAssertTrue(first)
        let same = try await presence.publish(idle, unlessCurrentWithin: .seconds(60))
        XCTAssertFalse(same)
        XCTAssertEqual(try heartbeats(), 1)

        // A change goes out at once, to the stream and the registry.
        var busy = idle
        busy.free = 1
        busy.running = ["j1"]
        let changed = try await presence.publish(busy, unlessCurrentWithin: .seconds(60))
        XCTAssertTrue(changed)
        XCTAssertEqual(try heartbeats(), 2)
        XCTAssertEqual(try record()["capacity_free"] as? Int, 1)
        XCTAssertEqual(try record()["running"] as? [String], ["j1"])

        // The same content once the last heartbeat is as old as the refresh: out again.
        let refreshed = try await presence.publish(busy, unlessCurrentWithin: .zero)
        XCTAssertTrue(refreshed)
        XCTAssertEqual(try heartbeats(), 3)

        // A publish by another path (a drain's state, published at once) counts as the last heartbeat too.
        try await presence.publish(state: .drained, free: 2, running: [], epoch: 1)
        var drained = idle
        drained.state = .drained
        let afterDrain = try await presence.publish(drained, unlessCurrentWithin: .seconds(60))
        XCTAssertFalse(afterDrain)
        XCTAssertEqual(try heartbeats(), 4)
        XCTAssertEqual(try record()["state"] as? String, "drained")
        let resumed = try await presence.publish(idle, unlessCurrentWithin: .seconds(60))
        XCTAssertTrue(resumed)
        XCTAssertEqual(try heartbeats(), 5)
        XCTAssertEqual(try record()["state"] as? String, "running")

        // So is anything else the record says: a job finished moves the counter it carries.
        presence.extras.jobFinished()
        let counted = try await presence.publish(idle, unlessCurrentWithin: .seconds(60))
        XCTAssertTrue(counted)
        XCTAssertEqual(try heartbeats(), 6)
        XCTAssertEqual(try record()["jobs_finished"] as? Int, 1)
    }

    func testAFailedPublishIsNotTakenForTheLastHeartbeat() async throws {
        let client = RedisClient(endpoint: endpoint)
        defer { client.close() }
        let presence = presence(client)
        let idle = HeartbeatContent(state: .running, free: 2, running: [], epoch: 1)
        // The heartbeats key holds something else: the XADD fails, the record is not taken as published.
        _ = try send(["SET", key("heartbeats"), "not a stream"])
        do {
            _ = try await presence.publish(idle, unlessCurrentWithin: .seconds(60))
            XCTFail("the publish should have failed")
        } catch is RedisServerError {}
        _ = try send(["DEL", key("heartbeats")])
        let retried = try await presence.publish(idle, unlessCurrentWithin: .seconds(60))
        XCTAssertTrue(retried)
        XCTAssertEqual(try heartbeats(), 1)
    }

    /// A job that starts or ends shows in the runner's record within about a second, not at its next heartbeat (a
    /// third of a 60 s lease TTL here): `status` and `top` read the record.
    func testAJobsStartAndEndReachTheRecordBeforeTheNextHeartbeat() throws {
        try startRunner(name: "r1", ["--lease-ttl", "60s", "--shutdown-timeout", "1s"])
        func running() throws -> [String]? {
            let value = try send(["HGET", key("runners"), "r1"]).string ?? "{}"
            let record = try JSONSerialization.jsonObject(with: Data(value.utf8)) as? [String: Any]
            return record?["running"] as? [String]
        }
        XCTAssertEqual(try running(), [])
        let release = FileManager.default.temporaryDirectory.appendingPathComponent("presence-\(namespace)")
        defer { try? FileManager.default.removeItem(at: release) }
        try submit(["--shell", "while [ ! -e '\(release.path)' ]; do sleep 0.05; done"], id: "pr-1")
        XCTAssertTrue(try waitUntil(timeout: .seconds(5)) { try running() == ["pr-1"] }, "the start")
        FileManager.default.createFile(atPath: release.path, contents: nil)
        XCTAssertTrue(try waitUntil(timeout: .seconds(5)) { try running() == [] }, "the end")
    }

    /// `submit --wait` and then `status`, as a user types them: the job that just ended is no longer shown running.
    /// Its end goes out with the change of the slots, not at the capacity report's next round a second later (which
    /// a job of 1.2 s ends before, in most places between two rounds); and short jobs back to back, whose ends come
    /// faster than the report's pace, are checked against their records by the view.
    func testStatusRightAfterSubmitWaitNoLongerShowsTheJobRunning() throws {
        try startRunner(name: "r1", ["--lease-ttl", "60s", "--shutdown-timeout", "1s", "--concurrency", "2"])
        for n in 1...8 {
            let submitted = cli(["submit", "--id", "sw-\(n)", "--wait", "--", "sleep", n <= 2 ? "1.2" : "0.1"])
            XCTAssertEqual(submitted.code, 0, submitted.err)
            let status = cli(["status", "--json"])
            XCTAssertEqual(status.code, 0, status.err)
            let object = try JSONSerialization.jsonObject(with: status.out) as? [String: Any]
            let runner = (object?["runners"] as? [[String: Any]])?.first { $0["id"] as? String == "r1" }
            XCTAssertEqual(runner?["running"] as? [String], [], "job sw-\(n), status right after its wait")
            XCTAssertEqual(runner?["capacity_free"] as? Int, 2, "job sw-\(n)")
        }
    }
}
