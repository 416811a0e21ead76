import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// Retries with backoff through the delayed set, dead jobs, `runner retry` and `runner dead`, idempotency keys.
final class RetryTests: IntegrationTestCase {
    private func event(_ type: String, of job: String) throws -> RecordedEvent? {
        try events().first { $0.type == type && $0.job == job }
    }

    func testAFailedAttemptIsRetriedAfterItsBackoff() throws {
        try startRunner(["--no-reaper"])
        let result = cli([
            "submit", "--wait", "--id", "bo-1", "--max-attempts", "2", "--backoff", "1500ms", "--",
            "sh", "-c", "[ $NR_ATTEMPT = 2 ]",
        ])
        XCTAssertEqual(result.code, 0, result.err)
        let record = try job("bo-1")
        XCTAssertEqual(record["state"], "succeeded")
        XCTAssertEqual(record["attempt"], "2")
        XCTAssertEqual(record["failures"], "1")
        let scheduled = try XCTUnwrap(try event("job.retry_scheduled", of: "bo-1"))
        let delay = try XCTUnwrap(scheduled.data["delay_ms"] as? Int)
        XCTAssertTrue((750...1500).contains(delay), "equal jitter of 1500 ms: \(delay)")
        let retryAt = try XCTUnwrap(scheduled.data["retry_at"] as? Int)
        let failedAt = try XCTUnwrap(Int(scheduled.fields["ts"] ?? ""))
        XCTAssertEqual(retryAt - failedAt, delay)
        XCTAssertGreaterThanOrEqual(
            Int(record["started_at"] ?? "") ?? 0, retryAt, "the retry started before it was due")
        XCTAssertEqual(scheduled.data["failed_attempt"] as? Int, 1)
        XCTAssertEqual(scheduled.data["attempt"] as? Int, 2)
        XCTAssertEqual(try send(["ZCARD", key("delayed")]).int, 0)
    }

    /// A job hash saying Int.max failures (submitters write the hash too) trapped the worker at the job's next
    /// failure, and every runner that took the job again after it (found by breaker16): the job is dead instead.
    func testAFailureCountOfIntMaxInTheHashEndsTheJobDead() throws {
        let runner = try startRunner(["--no-reaper"])
        _ = try send(["HSET", key("job:fx"), "state", "queued", "failures", String(Int.max)])
        _ = try send(["XADD", key("jobs:default"), "*", "id", "fx", "spec", #"{"argv":["false"],"max_attempts":2}"#])
        let record = try waitForState("fx", ["dead"], timeout: .seconds(10))
        XCTAssertEqual(record["failures"], String(Int.max))
        XCTAssertTrue(runner.isRunning, runner.log)
    }

    func testADueRetryIsMovedByTheReaperWhenItsRunnerIsGone() throws {
        let first = try startRunner(name: "first", ["--no-reaper", "--lease-ttl", "1s"])
        try submit(
            ["--max-attempts", "2", "--backoff", "2s", "--", "sh", "-c", "[ $NR_ATTEMPT = 2 ]"], id: "bo-2")
        let waiting = try waitForState("bo-2", ["retry_scheduled"])
        first.signal(SIGKILL)
        XCTAssertNotNil(first.waitForExit(timeout: 10))
        // A runner without a reaper of its own, and a control plane that moves what is due.
        try startRunner(name: "second", ["--no-reaper"])
        let control = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "control", subcommand: "control",
            arguments: ["--interval", "300ms"])
        defer { XCTAssertEqual(control.stop(timeout: 10), 0, control.log) }
        let record = try waitForState("bo-2", ["succeeded"], timeout: .seconds(20))
        XCTAssertEqual(record["runner"], "second")
        XCTAssertGreaterThanOrEqual(Int(record["started_at"] ?? "") ?? 0, Int(waiting["retry_at"] ?? "") ?? .max)
    }

    func testMoversRacingMoveEachDueRetryOnce() async throws {
        let keyspace = Keyspace(namespace: namespace)
        for index in 1...50 {
            _ = try send([
                "HSET", key("job:due-\(index)"), "state", "retry_scheduled", "queue", "default", "attempt", "2",
                "spec", #"{"argv":["true"]}"#,
            ])
            _ = try send(["ZADD", key("delayed"), "0", "due-\(index)"])
        }
        let clients = (0..<3).map { _ in RedisClient(endpoint: endpoint) }
        defer { clients.forEach { $0.close() } }
        let moved = await withTaskGroup(of: Int.self) { group in
            for client in clients {
                group.addTask {
                    let store = JobStore(client: client, keyspace: keyspace)
                    var total = 0
                    for _ in 0..<5 { total += (try? await store.moveDue(limit: 7).moved) ?? 0 }
                    return total
                }
            }
            var sum = 0
            for await part in group { sum += part }
            return sum
        }
        XCTAssertEqual(moved, 50)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 50, "one entry per due retry")
        XCTAssertEqual(try job("due-7")["state"], "queued")
        XCTAssertEqual(try send(["ZCARD", key("delayed")]).int, 0)
    }

    /// A job dead after attempts that timed out waits as one that timed out: `submit --wait` exits 124, not with
    /// the SIGTERM that stopped the last attempt (143).
    func testAJobDeadAfterTimingOutExitsSubmitWaitWith124() throws {
        try startRunner()
        let waited = cli([
            "submit", "--wait", "--id", "dt-1", "--timeout", "300ms", "--max-attempts", "2", "--backoff", "10ms",
            "--", "sleep", "30",
        ])
        XCTAssertEqual(waited.code, 124, waited.err)
        let record = try job("dt-1")
        XCTAssertEqual(record["state"], "dead")
        XCTAssertEqual(record["last_state"], "timed_out")
        XCTAssertEqual(record["signal"], "15")
        let shown = cli(["result", "dt-1", "--json"])
        let object = try JSONSerialization.jsonObject(with: shown.out) as? [String: Any]
        XCTAssertEqual(object?["last_state"] as? String, "timed_out")
    }

    func testDeadJobsAreListedAndRequeuedByHand() throws {
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("retry-\(namespace)")
        defer { try? FileManager.default.removeItem(at: marker) }
        try startRunner()
        let failing = cli([
            "submit", "--wait", "--id", "dl-1", "--max-attempts", "2", "--backoff", "10ms", "--",
            "sh", "-c", "[ -f '\(marker.path)' ]",
        ])
        XCTAssertEqual(failing.code, 1)
        XCTAssertEqual(try job("dl-1")["state"], "dead")
        XCTAssertEqual(try job("dl-1")["last_state"], "failed")

        let listed = cli(["dead"])
        XCTAssertEqual(listed.code, 0, listed.err)
        XCTAssertTrue(
            listed.stdout.hasSuffix(" dl-1 attempt=2: failed 2 of 2 attempts; the last: exited with code 1\n"),
            listed.stdout)
        let json = cli(["dead", "--json", "--count", "1"])
        let letter = try JSONSerialization.jsonObject(with: json.out) as? [String: Any]
        XCTAssertEqual(letter?["id"] as? String, "dl-1")
        XCTAssertEqual((letter?["spec"] as? [String: Any])?["max_attempts"] as? Int, 2)
        XCTAssertEqual(letter?["source"] as? String, key("jobs:default"))
        XCTAssertEqual(letter?["job_state"] as? String, "dead")

        FileManager.default.createFile(atPath: marker.path, contents: nil)
        let retried = cli(["retry", "dl-1"])
        XCTAssertEqual(retried.code, 0, retried.err)
        XCTAssertEqual(retried.stdout, "requeued dl-1 as attempt 3\n")
        let record = try waitForState("dl-1", ["succeeded"])
        XCTAssertEqual(record["attempt"], "3")
        XCTAssertEqual(record["failures"], "0")
        XCTAssertNil(record["last_state"], "the dead attempt's last state is cleared by the next claim")
        let requeued = try XCTUnwrap(try event("job.requeued", of: "dl-1"))
        XCTAssertEqual(requeued.data["previous_state"] as? String, "dead")
        XCTAssertEqual(requeued.data["attempt"] as? Int, 3)

        let again = cli(["retry", "dl-1"])
        XCTAssertEqual(again.code, 1)
        XCTAssertEqual(
            again.err,
            "Error: job 'dl-1' is in state succeeded; only dead, failed or timed_out jobs can be retried by hand\n")
        // The dead letter stays, with what became of its job.
        XCTAssertTrue(
            cli(["dead"]).stdout.hasSuffix(
                " dl-1 attempt=2: failed 2 of 2 attempts; the last: exited with code 1 (now succeeded)\n"))
        let after =
            try JSONSerialization.jsonObject(with: cli(["dead", "--json", "--count", "1"]).out) as? [String: Any]
        XCTAssertEqual(after?["job_state"] as? String, "succeeded")
        XCTAssertEqual(cli(["retry", "no-such"]).code, 1)
    }

    func testAnIdempotencyKeyYieldsOneJob() throws {
        let first = cli(["submit", "--idempotency-key", "order-42", "--json", "--", "true"])
        XCTAssertEqual(first.code, 0, first.err)
        let created = try JSONSerialization.jsonObject(with: first.out) as? [String: Any]
        XCTAssertEqual(created?["existing"] as? Bool, false)
        let id = try XCTUnwrap(created?["id"] as? String)
        let second = cli(["submit", "--idempotency-key", "order-42", "--json", "--", "true"])
        XCTAssertEqual(
            second.err,
            "runner: idempotency key 'order-42' belongs to job \(id), submitted earlier: nothing new was queued\n")
        let existing = try JSONSerialization.jsonObject(with: second.out) as? [String: Any]
        XCTAssertEqual(existing?["id"] as? String, id)
        XCTAssertEqual(existing?["existing"] as? Bool, true)
        XCTAssertEqual(cli(["submit", "--idempotency-key", "order-42", "--", "true"]).stdout, "\(id)\n")
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 1)
        XCTAssertEqual(try events().filter { $0.type == "job.submitted" }.count, 1)
        XCTAssertEqual(try send(["GET", key("idempotency:order-42")]).string, id)
        XCTAssertGreaterThan(try send(["PTTL", key("idempotency:order-42")]).int ?? 0, 0)

        // A control plane that XADDs directly: the runner's claim keeps the key to one job.
        try startRunner()
        try waitForState(id, ["succeeded"])
        _ = try send([
            "XADD", key("jobs:default"), "*", "id", "plain-1", "spec", #"{"argv":["true"]}"#, "idempotency_key", "k-7",
        ])
        try waitForState("plain-1", ["succeeded"])
        _ = try send([
            "XADD", key("jobs:default"), "*", "id", "plain-2", "spec", #"{"argv":["true"]}"#, "idempotency_key", "k-7",
        ])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { (try? self.send(["XLEN", self.key("dead")]).int) == 1 })
        let letter = strings(try send(["XRANGE", key("dead"), "-", "+"]).array?.first?.array?[1] ?? .null)
        XCTAssertEqual(letter["reason"], "idempotency key 'k-7' belongs to job 'plain-1'; this entry was not run")
        XCTAssertEqual(try job("plain-2")["state"], "rejected")
        XCTAssertEqual(try events(of: "plain-2").filter { $0 == "job.started" }.count, 0)
    }
}

/// A Redis that may evict keys: runners and control planes refuse to start unless told to go on.
final class EvictionPolicyTests: PrivateRedisTestCase {
    override func makeServer() throws -> RedisServerProcess {
        try RedisServerProcess(extraArguments: ["--maxmemory-policy", "allkeys-lru"])
    }

    func testAnEvictingRedisIsRefusedWithTheReason() throws {
        let expected =
            "Error: Redis's maxmemory-policy is 'allkeys-lru', which may evict keys and so silently break leases "
            + "and fencing; set it to 'noeviction' (CONFIG SET maxmemory-policy noeviction), or start with "
            + "--allow-eviction-policy to run anyway\n"
        let worker = runCLI(["worker", "--redis", endpoint.url, "--namespace", namespace], timeout: 20)
        XCTAssertEqual(worker.code, 2)
        XCTAssertEqual(worker.err, expected)
        let control = runCLI(["control", "--redis", endpoint.url, "--namespace", namespace], timeout: 20)
        XCTAssertEqual(control.code, 2)
        XCTAssertEqual(control.err, expected)

        let allowed = try startRunner(["--allow-eviction-policy"])
        XCTAssertTrue(allowed.log.contains("maxmemory-policy is 'allkeys-lru'"), allowed.log)
        XCTAssertTrue(allowed.log.contains("running anyway: --allow-eviction-policy"), allowed.log)
        try submit(["--", "echo", "ok"], id: "ev-1")
        XCTAssertEqual(try waitForState("ev-1", ["succeeded"])["output_tail"], "ok\n")
    }
}

/// A Redis without an append-only file: a worker says once, at start, what a restart of it loses; with one, nothing.
final class PersistenceWarningTests: PrivateRedisTestCase {
    func testARedisWithoutAnAppendOnlyFileIsNamedOnceAtStart() throws {
        let warning =
            "Redis runs without an append-only file (appendonly no): a restart of redis-server loses every job, "
            + "lease and result (no snapshots either: save is ''); set appendonly yes where jobs must not be lost "
            + "(docs/guarantees.md)"
        let runner = try startRunner()
        // The check comes before the registration, which is logged.
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { runner.log.contains("runner registered") }, runner.log)
        XCTAssertEqual(runner.log.components(separatedBy: warning).count, 2, runner.log)

        _ = try send(["CONFIG", "SET", "save", "3600 1"])
        let snapshots = try startRunner(name: "r2")
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { snapshots.log.contains("runner registered") }, snapshots.log)
        XCTAssertTrue(snapshots.log.contains("loses every job, lease and result written since its last snapshot"))

        _ = try send(["CONFIG", "SET", "appendonly", "yes"])
        let quiet = try startRunner(name: "r3")
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { quiet.log.contains("runner registered") }, quiet.log)
        XCTAssertFalse(quiet.log.contains("append-only"), quiet.log)
    }
}
