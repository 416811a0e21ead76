import Foundation
import RunnerProtocol
import TestSupport
import XCTest

/// What real runners write is what docs/schema/ describes: runners go through as many events as a pool knows
/// (success, failure, timeout, retry, dead job, rejection, requeue by hand, kill -9 and reschedule, a payload gone,
/// a leftover cleanup, a pause past the lease, hand-back at shutdown, resource and capacity reports), then
/// scripts/check_protocol.py validates every event, heartbeat, registry record, result hash, job entry, output entry
/// and dead letter of the namespace with the PyPI `jsonschema` validator.
final class ProtocolSchemaValidationTests: IntegrationTestCase {
    /// Event types this scenario cannot produce; every other EventType case must show up and validate, so a new event
    /// type fails here until the scenario produces it (or it is listed here with the reason).
    private let notProducedHere: Set<EventType> = [
        // Produced and validated by PoolOperationsTests (control commands, cancel, migration).
        .runnerCommand, .runnerMigration, .runnerMigrated, .jobCancelReceived, .jobCancelSigterm, .jobCancelSigkill,
        .jobCancelled,
    ]

    private func file(_ name: String) -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("schema-\(namespace)-\(name)")
    }

    private func eventually(_ what: String, timeout: Duration = .seconds(20), _ condition: () throws -> Bool) throws {
        XCTAssertTrue(try waitUntil(timeout: timeout, condition), what)
    }

    private func hasEvent(_ type: EventType, job: String? = nil) throws -> Bool {
        try events().contains { $0.type == type.rawValue && (job == nil || $0.job == job) }
    }

    func testEverythingRunnersWriteMatchesTheSchemas() throws {
        guard Python.require(["redis", "jsonschema"]) else { return }
        let release = file("release")
        let pausedRelease = file("paused-release")
        defer {
            for url in [release, pausedRelease] { try? FileManager.default.removeItem(at: url) }
        }
        let monitor = ["--monitor-interval", "300ms"]
        // beta serves the default queue and reaps; alpha and the paused runner have queues of their own.
        try startRunner(
            name: "beta", ["--lease-ttl", "2s", "--reaper-interval", "200ms", "--concurrency", "4"] + monitor)
        let alpha = try startRunner(
            name: "alpha", ["--queue", "slow", "--lease-ttl", "1s", "--no-reaper", "--concurrency", "2"] + monitor)

        // Outcomes on the default queue: submitted by the CLI, and one by plain XADD as a foreign control plane does.
        try submit(["--", "echo", "ok"], id: "ok-1")
        try submit(["--shell", "exit 3"], id: "fail-1")
        try submit(["--timeout", "300ms", "--", "sleep", "5"], id: "timeout-1")
        try submit(["--max-attempts", "2", "--backoff", "100ms", "--shell", "echo no >&2; exit 4"], id: "retry-1")
        try submit(["--isolation", "cgroup", "--memory", "64M", "--", "echo", "cg"], id: "cgroup-1")
        _ = try send(["XADD", key("jobs:default"), "*", "id", "plain-1", "spec", #"{"argv":["echo","plain"]}"#])
        _ = try send(["XADD", key("jobs:default"), "*", "id", "bad-1", "spec", #"{"argv":"echo"}"#])
        // A job requiring labels no runner here has: beta routes it to its requirement stream, where it waits.
        _ = try send([
            "XADD", key("jobs:default"), "*", "id", "routed-1", "spec",
            #"{"argv":["echo","gpu"],"requires":{"gpu":"yes"}}"#,
        ])
        for id in ["ok-1", "plain-1"] { try waitForState(id, ["succeeded"]) }
        try waitForState("fail-1", ["failed"])
        try waitForState("timeout-1", ["timed_out"])
        try waitForState("retry-1", ["dead"])
        try waitForState("cgroup-1", ["succeeded"])
        try waitForState("bad-1", ["rejected"])
        try eventually("job.routed") { try hasEvent(.jobRouted, job: "routed-1") }
        XCTAssertEqual(cli(["retry", "fail-1"]).code, 0)
        try waitForState("fail-1", ["failed"])
        try eventually("job.requeued") { try hasEvent(.jobRequeued, job: "fail-1") }

        // kill -9 of alpha while it runs two jobs: one is rescheduled, the other's payload is deleted (job.lost).
        let wait = "while [ ! -f '\(release.path)' ]; do sleep 0.02; done"
        try submit(["--queue", "slow", "--shell", wait], id: "slow-1")
        try submit(["--queue", "slow", "--shell", wait], id: "slow-2")
        _ = try runningPid("slow-1")
        _ = try runningPid("slow-2")
        let gone = try XCTUnwrap(try job("slow-2")["stream_id"])
        alpha.signal(SIGKILL)
        XCTAssertNotNil(alpha.waitForExit(timeout: 10))
        _ = try send(["XDEL", key("jobs:slow"), gone])
        try eventually("job.rescheduled and job.lost") {
            try hasEvent(.jobRescheduled, job: "slow-1") && hasEvent(.jobLost)
        }
        FileManager.default.createFile(atPath: release.path, contents: nil)
        // alpha again: it cleans up what its killed run left (isolation.cleanup), and runs slow-1's next attempt.
        let heir = try startRunner(name: "alpha", ["--queue", "slow", "--no-reaper", "--shutdown-timeout", "300ms"])
        try waitForState("slow-1", ["succeeded"])
        try eventually("isolation.cleanup") { try hasEvent(.isolationCleanup) }

        // A runner paused past its lease: its late result is refused (job.stale_result), it registers again.
        let paused = try startRunner(name: "paused", ["--queue", "fence", "--lease-ttl", "2s", "--no-reaper"])
        try submit(
            ["--queue", "fence", "--shell", "while [ ! -f '\(pausedRelease.path)' ]; do sleep 0.02; done"],
            id: "fence-1")
        let fencePid = try runningPid("fence-1")
        paused.signal(SIGSTOP)
        FileManager.default.createFile(atPath: pausedRelease.path, contents: nil)
        try eventually("the paused runner's job ended") { !processIsAlive(fencePid) }
        try eventually("the paused runner's lease lapsed") { try send(["EXISTS", key("runner:paused")]).int == 0 }
        paused.signal(SIGCONT)
        try eventually("job.stale_result and runner.lease_lost") {
            try hasEvent(.jobStaleResult, job: "fence-1") && hasEvent(.runnerLeaseLost)
        }
        try waitForState("fence-1", ["succeeded"])

        // Shutdown with a job still running: handed back, then runner.shutdown.
        try submit(["--queue", "slow", "--", "sleep", "30"], id: "handback-1")
        _ = try runningPid("handback-1")
        XCTAssertEqual(heir.stop(timeout: 15), 0, heir.log)
        try waitForState("handback-1", ["queued"])
        try eventually("runner.resource_usage and runner.capacity_update") {
            try hasEvent(.runnerResourceUsage) && hasEvent(.runnerCapacityUpdate)
        }
        // The registry while runners live (stopped runners remove their records).
        let live = try validate()
        XCTAssertEqual(live["runner_record"], 2, "beta and paused are registered")
        for runner in runners where runner.isRunning { XCTAssertEqual(runner.stop(timeout: 15), 0, runner.log) }

        let counts = try validate()
        let types = Set(EventType.allCases).subtracting(notProducedHere)
        let missing = types.filter { (counts[$0.rawValue] ?? 0) == 0 }.map(\.rawValue).sorted()
        XCTAssertEqual(missing, [], "event types the scenario did not produce (or that did not validate): \(counts)")
        // Each kind of record was read and validated, in the numbers this scenario makes.
        XCTAssertEqual(counts["event"], try events().count)
        // beta, alpha twice, paused (its second epoch is announced by runner.lease_lost).
        XCTAssertEqual(counts["runner.registered"], 4)
        XCTAssertEqual(counts["job.succeeded"], 5, "ok, plain, cgroup, slow-1, fence-1")
        XCTAssertEqual(counts["job.failed"], 2, "fail-1 and its requeued attempt")
        XCTAssertEqual(counts["job.dead"], 1)
        XCTAssertEqual(counts["result"], 12, "one hash per job (routed-1's written when it was routed)")
        XCTAssertEqual(counts["dead_letter"], 2, "bad-1 and retry-1")
        XCTAssertGreaterThanOrEqual(counts["heartbeat"] ?? 0, 4)
        XCTAssertGreaterThanOrEqual(counts["log_entry"] ?? 0, 5)
        XCTAssertGreaterThanOrEqual(counts["job_entry"] ?? 0, 1, "handback-1 waits on its queue")
    }

    private func validate() throws -> [String: Int] { try checkProtocol() }
}

extension IntegrationTestCase {
    /// Runs scripts/check_protocol.py on this namespace: asserts it found nothing wrong, returns its counts.
    func checkProtocol() throws -> [String: Int] {
        let check = Python.run(
            ["scripts/check_protocol.py", "--redis", "\(endpoint.host):\(endpoint.port)", "--namespace", namespace],
            timeout: 120)
        let report = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: check.out) as? [String: Any], "no report:\n\(check.err)")
        XCTAssertEqual(report["errors"] as? [String], [], "what the runners wrote that the schemas do not allow")
        XCTAssertEqual(check.code, 0, check.err)
        return report["counts"] as? [String: Int] ?? [:]
    }
}
