import Foundation
import RedisClient
import TestSupport
import XCTest

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A real worker with `--metrics-listen 127.0.0.1:0`: its endpoints read with a real HTTP client (URLSession),
/// its exposition parsed by Prometheus's own Python parser, readiness following Redis, and `runner top --once`.
final class MetricsEndpointTests: PrivateRedisTestCase {
    /// GET `url` with URLSession; the status and body (status -1 and the error when it could not connect).
    func get(_ url: String) -> (status: Int, body: String) {
        var request = URLRequest(url: URL(string: url)!)
        request.timeoutInterval = 5
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result = (status: -1, body: "")
        let task = URLSession.shared.dataTask(with: request) { data, response, error in
            if let response = response as? HTTPURLResponse {
                result = (response.statusCode, String(decoding: data ?? Data(), as: UTF8.self))
            } else {
                result = (-1, "\(error.map { "\($0)" } ?? "no response")")
            }
            done.signal()
        }
        task.resume()
        if done.wait(timeout: .now() + 10) == .timedOut {
            task.cancel()
            return (-1, "timed out")
        }
        return result
    }

    /// The address the runner logged for its metrics endpoint (port 0 asked for: the kernel chose).
    func metricsAddress(_ runner: RunnerUnderTest) throws -> String {
        var address: String?
        _ = waitUntil(timeout: .seconds(10)) {
            address = runner.log.split(separator: "\n").first { $0.contains("metrics endpoint listening") }
                .flatMap { $0.split(separator: " ").first { $0.hasPrefix("address=") } }
                .map { String($0.dropFirst("address=".count)) }
            return address != nil
        }
        return try XCTUnwrap(address, "no 'metrics endpoint listening' line:\n\(runner.log)")
    }

    /// Parses an exposition with prometheus_client's text parser: `name{label="value",...}` (labels sorted) → value.
    func parsedByPrometheusClient(_ text: String) throws -> [String: Double] {
        let script = """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            out = {}
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in family.samples:
                    labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
                    out[s.name + ("{" + labels + "}" if labels else "")] = s.value
            print(json.dumps(out))
            """
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("exposition-\(namespace).txt")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data(text.utf8).write(to: file)
        let parsed = Python.run(["-c", script, file.path], timeout: 60)
        XCTAssertEqual(parsed.code, 0, "prometheus_client refused the exposition: \(parsed.err)\n\(text)")
        let object = try JSONSerialization.jsonObject(with: Data(parsed.stdout.utf8)) as? [String: Double]
        return try XCTUnwrap(object, parsed.stdout)
    }

    func testMetricsHealthAndReadinessOfARealWorker() throws {
        guard Python.require(["prometheus_client"]) else { return }
        let runner = try startRunner([
            "--metrics-listen", "127.0.0.1:0", "--lease-ttl", "3s", "--monitor-interval", "300ms",
            "--concurrency", "3", "--kill-grace", "200ms", "--shutdown-timeout", "1s",
        ])
        let base = "http://" + (try metricsAddress(runner))

        try submit(["--", "true"], id: "m-ok")
        try submit(["--", "false"], id: "m-fail")
        try submit(["--timeout", "300ms", "--", "sleep", "10"], id: "m-slow")
        try waitForState("m-ok", ["succeeded"])
        try waitForState("m-fail", ["failed"])
        try waitForState("m-slow", ["timed_out"])

        // Counters are updated when the slot is released, a moment after the result is written.
        var metrics: [String: Double] = [:]
        let counted = try waitUntil(timeout: .seconds(10), interval: .milliseconds(100)) {
            let scrape = get(base + "/metrics")
            XCTAssertEqual(scrape.status, 200, scrape.body)
            metrics = try parsedByPrometheusClient(scrape.body)
            return metrics["nativerunner_jobs_running"] == 0 && metrics["nativerunner_host_memory_total_bytes"] != nil
        }
        XCTAssertTrue(counted, "\(metrics)")
        let expected: [String: Double] = [
            "nativerunner_jobs_total{state=\"succeeded\"}": 1, "nativerunner_jobs_total{state=\"failed\"}": 1,
            "nativerunner_jobs_total{state=\"timed_out\"}": 1, "nativerunner_jobs_total{state=\"rejected\"}": 0,
            "nativerunner_jobs_total{state=\"dead\"}": 0, "nativerunner_job_duration_seconds_count": 3,
            "nativerunner_job_duration_seconds_bucket{le=\"+Inf\"}": 3, "nativerunner_capacity_slots": 3,
            "nativerunner_capacity_free_slots": 3, "nativerunner_runner_state{state=\"running\"}": 1,
            "nativerunner_build_info{protocol=\"1\",runner=\"r1\",version=\"0.1.0\"}": 1,
            "nativerunner_lease_renewal_failures_total": 0, "nativerunner_redis_errors_total{client=\"jobs\"}": 0,
        ]
        for (name, value) in expected.sorted(by: { $0.key < $1.key }) {
            XCTAssertEqual(metrics[name], value, name)
        }
        // The timed-out sleep took its 300 ms: never in the 0.1 s bucket (true and false may be, load permitting).
        XCTAssertEqual(
            metrics["nativerunner_job_duration_seconds_bucket{le=\"0.1\"}"].map { (0...2).contains($0) }, true)
        XCTAssertGreaterThanOrEqual(metrics["nativerunner_job_duration_seconds_sum"] ?? 0, 0.3)
        XCTAssertNotNil(metrics["nativerunner_host_load_average{period=\"1m\"}"])

        XCTAssertEqual(get(base + "/healthz").status, 200)
        XCTAssertEqual(get(base + "/readyz").status, 200)
        XCTAssertEqual(get(base + "/readyz").body, "ready\n")
        XCTAssertEqual(get(base + "/nope").status, 404)

        // runner top --once (not a terminal): the runner, its state and a running job with its runtime.
        try submit(["--", "sleep", "30"], id: "m-long")
        _ = try runningPid("m-long")
        var top = CLIResult(code: -1, out: Data(), err: "")
        // The running list and the free slots are as of the runner's last heartbeat (every third of the TTL).
        let shown = waitUntil(timeout: .seconds(10), interval: .milliseconds(200)) {
            top = cli(["top", "--once"])
            return top.stdout.split(separator: "\n").contains {
                $0.split(separator: " ").prefix(4) == ["m-long", "r1", "default", "1"]
            }
        }
        XCTAssertTrue(shown && top.code == 0, "\(top.code) \(top.err)\n\(top.stdout)")
        let lines = top.stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(
            lines.contains { $0.hasPrefix("  r1 ") && $0.contains(" running ") && $0.contains(" [#--] 1/3 ") },
            top.stdout)
        XCTAssertFalse(top.stdout.contains("\u{1B}["), "no terminal escapes when stdout is not a terminal")
        XCTAssertEqual(cli(["status", "--watch", "--once"]).stdout.contains("m-long"), true)

        // Redis gone: not ready (saying why) but alive; ready again once Redis is back and the lease is renewed.
        redis = nil
        try server.stop()
        var readiness = (status: 0, body: "")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10), interval: .milliseconds(100)) {
                readiness = get(base + "/readyz")
                return readiness.status == 503
            }, "\(readiness)")
        // The intake connection, blocked in XREADGROUP, sees the loss at once: Redis is the reason, not the lease.
        XCTAssertTrue(readiness.body.hasPrefix("not ready: Redis at 127.0.0.1:"), readiness.body)
        XCTAssertEqual(get(base + "/healthz").status, 200)
        try server.restart()
        redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
        XCTAssertTrue(
            waitUntil(timeout: .seconds(20), interval: .milliseconds(100)) {
                readiness = get(base + "/readyz")
                return readiness.status == 200
            }, "\(readiness)\n\(runner.log)")
        let after = try parsedByPrometheusClient(get(base + "/metrics").body)
        func total(_ name: String) -> Double {
            ["intake", "presence", "jobs"].reduce(0) { $0 + (after["\(name){client=\"\($1)\"}"] ?? 0) }
        }
        XCTAssertGreaterThan(total("nativerunner_redis_errors_total"), 0, "\(after)")
        XCTAssertGreaterThan(total("nativerunner_redis_reconnects_total"), 0, "\(after)")
    }

    /// `runner control --metrics-listen`: the pool's figures, as `runner status` has them, parsed by Prometheus's own
    /// parser; they follow the pool at the next reading; readiness follows the readings.
    func testTheControlPlaneServesThePoolsFigures() throws {
        guard Python.require(["prometheus_client"]) else { return }
        // A runner that died (a record, no lease), a retry due in 2100, a dead letter, two jobs waiting.
        _ = try send(["HSET", key("runners"), "r9", #"{"node":"n9","pid":1,"queues":["default"],"state":"running"}"#])
        _ = try send(["ZADD", key("delayed"), "4102444800000", "later-1"])
        _ = try send(["XADD", key("dead"), "*", "id", "gone-1", "reason", "test"])
        for id in ["q-1", "q-2"] {
            _ = try send(["XADD", key("jobs:default"), "*", "id", id, "spec", #"{"argv":["true"]}"#])
        }
        let control = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "ctl", subcommand: "control",
            arguments: ["--metrics-listen", "127.0.0.1:0", "--interval", "300ms"])
        runners.append(control)
        let base = "http://" + (try metricsAddress(control))
        var metrics: [String: Double] = [:]
        func scrape() throws -> [String: Double] {
            let page = get(base + "/metrics")
            XCTAssertEqual(page.status, 200, page.body)
            return try parsedByPrometheusClient(page.body)
        }
        metrics = try scrape()
        let expected: [String: Double] = [
            "nativerunner_pool_runners{state=\"lost\"}": 1, "nativerunner_pool_runners{state=\"running\"}": 0,
            "nativerunner_pool_runners{state=\"drained\"}": 0, "nativerunner_pool_queue_length{queue=\"default\"}": 2,
            "nativerunner_pool_queue_waiting{queue=\"default\"}": 2,
            "nativerunner_pool_queue_pending{queue=\"default\"}": 0, "nativerunner_pool_retries_scheduled": 1,
            "nativerunner_pool_dead_letters": 1, "nativerunner_pool_reading_failures_total": 0,
        ]
        for (name, value) in expected.sorted(by: { $0.key < $1.key }) { XCTAssertEqual(metrics[name], value, name) }
        XCTAssertLessThan(metrics["nativerunner_pool_reading_age_seconds"] ?? 99, 5)
        XCTAssertEqual(get(base + "/healthz").status, 200)
        XCTAssertEqual(get(base + "/readyz").status, 200)

        // A worker comes and takes the jobs: the next readings show it.
        let worker = try startRunner(name: "w1")
        XCTAssertEqual(try waitForState("q-1", ["succeeded"])["state"], "succeeded")
        XCTAssertEqual(try waitForState("q-2", ["succeeded"])["state"], "succeeded")
        let followed = try waitUntil(timeout: .seconds(10), interval: .milliseconds(100)) {
            metrics = try scrape()
            return metrics["nativerunner_pool_runners{state=\"running\"}"] == 1
                && metrics["nativerunner_pool_queue_length{queue=\"default\"}"] == 0
        }
        XCTAssertTrue(followed, "\(metrics)")

        XCTAssertEqual(worker.stop(), 0, worker.log)

        // Redis gone: the page keeps the last figures and counts the failures; not ready once they are stale.
        try server.stop()
        let stale = waitUntil(timeout: .seconds(10)) { self.get(base + "/readyz").status == 503 }
        XCTAssertTrue(stale, get(base + "/readyz").body)
        metrics = try scrape()
        XCTAssertGreaterThan(metrics["nativerunner_pool_reading_failures_total"] ?? 0, 0)
        XCTAssertEqual(metrics["nativerunner_pool_retries_scheduled"], 1)
    }

    /// A dead-letter stream or registry of another type is named on the pool's page, and the other figures go on:
    /// a `{nr}:dead` of another type failed every reading (the figures froze, /readyz 503 with Redis's WRONGTYPE,
    /// which names no key), and a registry of another type only left the runners out.
    func testThePoolsPageNamesKeysOfTheWrongTypeAndServesTheRest() throws {
        guard Python.require(["prometheus_client"]) else { return }
        _ = try send(["SET", key("dead"), "x"])
        _ = try send(["SET", key("runners"), "x"])
        _ = try send(["XADD", key("jobs:default"), "*", "id", "q-1", "spec", #"{"argv":["true"]}"#])
        let control = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "ctl", subcommand: "control",
            arguments: ["--metrics-listen", "127.0.0.1:0", "--interval", "300ms"])
        runners.append(control)
        let base = "http://" + (try metricsAddress(control))
        var page = get(base + "/metrics")
        XCTAssertEqual(page.status, 200, page.body)
        var metrics = try parsedByPrometheusClient(page.body)
        XCTAssertEqual(metrics["nativerunner_pool_reading_failures_total"], 0, page.body)
        XCTAssertEqual(metrics["nativerunner_pool_queue_length{queue=\"default\"}"], 1, page.body)
        XCTAssertNil(metrics["nativerunner_pool_dead_letters"], page.body)
        // An unreadable registry is no runner at all: no sample, rather than 0 running (found by breaker19b).
        XCTAssertFalse(page.body.contains("nativerunner_pool_runners{"), page.body)
        for (name, expected) in [("dead", "stream"), ("runners", "hash")] {
            let sample =
                "nativerunner_pool_wrong_type_keys{expected=\"\(expected)\",key=\"\(key(name))\",type=\"string\"}"
            XCTAssertEqual(metrics[sample], 1, page.body)
        }
        XCTAssertEqual(get(base + "/readyz").status, 200)

        // Fixed: the next readings count the dead letters again and name nothing.
        _ = try send(["DEL", key("dead"), key("runners")])
        _ = try send(["XADD", key("dead"), "*", "id", "gone-1", "reason", "test"])
        let fixed = try waitUntil(timeout: .seconds(10), interval: .milliseconds(100)) {
            page = get(base + "/metrics")
            metrics = try parsedByPrometheusClient(page.body)
            return metrics["nativerunner_pool_dead_letters"] == 1
        }
        XCTAssertTrue(fixed, page.body)
        XCTAssertFalse(page.body.contains("nativerunner_pool_wrong_type_keys{"), page.body)
        XCTAssertEqual(metrics["nativerunner_pool_runners{state=\"running\"}"], 0, page.body)
        XCTAssertEqual(get(base + "/readyz").status, 200)
    }

    func testTheDurationHistogramCountsACancelledAttempt() throws {
        let runner = try startRunner(["--metrics-listen", "127.0.0.1:0", "--kill-grace", "200ms"])
        let base = "http://" + (try metricsAddress(runner))
        try submit(["--", "sleep", "30"], id: "m-cancel")
        _ = try runningPid("m-cancel")
        let cancel = cli(["cancel", "m-cancel", "--wait"])
        XCTAssertEqual(cancel.code, 0, cancel.err)
        try waitForState("m-cancel", ["cancelled"])
        var body = ""
        let counted = waitUntil(timeout: .seconds(10), interval: .milliseconds(100)) {
            body = get(base + "/metrics").body
            return body.contains("\nnativerunner_jobs_running 0\n")
        }
        XCTAssertTrue(counted, body)
        XCTAssertTrue(body.contains("\nnativerunner_job_duration_seconds_count 1\n"), body)
    }

    func testTopWithoutATerminalPrintsASnapshotPerIntervalUntilSIGTERM() throws {
        try startRunner()
        let top = try startCLI(["top", "--interval", "200ms"])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { top.output.components(separatedBy: "NativeRunner pool").count > 3 },
            top.output)
        kill(top.process.processIdentifier, SIGTERM)
        // It ends by the signal itself, as every live command does (the shell sees 143).
        XCTAssertEqual(top.waitForExit(timeout: 10), SIGTERM)
        XCTAssertEqual(top.process.terminationReason, .uncaughtSignal)
        let snapshots = top.output.components(separatedBy: "\n\nNativeRunner pool '\(namespace)'")
        XCTAssertGreaterThanOrEqual(snapshots.count, 3, top.output)
        XCTAssertTrue(snapshots.allSatisfy { $0.contains("\nRUNNERS\n") && $0.contains("\n  r1 ") }, top.output)
        XCTAssertFalse(top.output.contains("\u{1B}["), "no terminal escapes when stdout is not a terminal")
    }

    func testABadOrBusyListenAddressStopsTheWorkerAtStart() throws {
        let busy = try LoopbackListener()
        for (address, message) in [
            (
                "127.0.0.1:\(busy.port)",
                "Error: --metrics-listen: cannot listen on 127.0.0.1:\(busy.port): bind: the port is already in use"
            ),
            (
                "nowhere",
                "Error: invalid value for '--metrics-listen': invalid listen address 'nowhere': expected HOST:PORT"
            ),
        ] {
            let result = cli(["worker", "--name", "bad", "--metrics-listen", address], timeout: 20)
            XCTAssertEqual(result.code, 2, result.err)
            XCTAssertEqual(result.err.split(separator: "\n").first.map(String.init), message, result.err)
        }
    }
}
