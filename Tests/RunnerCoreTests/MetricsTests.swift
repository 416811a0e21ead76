import HTTPEndpoint
import RedisClient
import RunnerProtocol
import XCTest

@testable import RunnerCore

final class MetricsExpositionTests: XCTestCase {
    func testHelpTypeSamplesAndEscaping() {
        let text = MetricsExposition.render([
            MetricFamily(
                name: "nativerunner_x_total", help: "A help with \\ and\nnew line.", kind: .counter,
                samples: [
                    .init(labels: [.init("a", "q\"uote"), .init("b", "back\\slash\nline")], value: 3),
                    .init(labels: [.init("a", "plain")], value: 0.25),
                ]),
            .single("nativerunner_g", .gauge, "G.", .infinity),
            .single("nativerunner_n", .gauge, "N.", .nan),
            .single("nativerunner_m", .gauge, "M.", -.infinity),
            .single("nativerunner_big", .gauge, "Big.", 25_276_071_936),
        ])
        XCTAssertEqual(
            text,
            """
            # HELP nativerunner_x_total A help with \\\\ and\\nnew line.
            # TYPE nativerunner_x_total counter
            nativerunner_x_total{a="q\\"uote",b="back\\\\slash\\nline"} 3
            nativerunner_x_total{a="plain"} 0.25
            # HELP nativerunner_g G.
            # TYPE nativerunner_g gauge
            nativerunner_g +Inf
            # HELP nativerunner_n N.
            # TYPE nativerunner_n gauge
            nativerunner_n NaN
            # HELP nativerunner_m M.
            # TYPE nativerunner_m gauge
            nativerunner_m -Inf
            # HELP nativerunner_big Big.
            # TYPE nativerunner_big gauge
            nativerunner_big 25276071936

            """)
    }

    /// A CR LF in a label value (a queue key `{nr}:jobs:a\r\nb` anyone can XADD to, which the pool's page lists) or
    /// in a help text keeps every sample on one line: CR LF is one Character, so the line feed went out raw and the
    /// scrape failed as a whole.
    func testALineFeedAfterACarriageReturnIsEscapedToo() {
        let text = MetricsExposition.render([
            MetricFamily(
                name: "nativerunner_pool_queue_length", help: "Help\r\nmore.", kind: .gauge,
                samples: [.init(labels: [.init("queue", "a\r\nb\"\r\n\\")], value: 1)])
        ])
        XCTAssertEqual(
            text,
            """
            # HELP nativerunner_pool_queue_length Help\r\\nmore.
            # TYPE nativerunner_pool_queue_length gauge
            nativerunner_pool_queue_length{queue="a\r\\nb\\"\r\\n\\\\"} 1

            """)
        XCTAssertEqual(text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).count, 4, text)
    }
    func testHistogramBucketsAreCumulativeUpToInf() {
        let family = MetricFamily.histogram("h_seconds", "H.", bounds: [0.1, 1], counts: [2, 0, 3], sum: 9.5)
        XCTAssertEqual(
            MetricsExposition.render([family]),
            """
            # HELP h_seconds H.
            # TYPE h_seconds histogram
            h_seconds_bucket{le="0.1"} 2
            h_seconds_bucket{le="1"} 2
            h_seconds_bucket{le="+Inf"} 5
            h_seconds_sum 9.5
            h_seconds_count 5

            """)
    }
}

final class WorkerMetricsTests: XCTestCase {
    func makeMetrics() -> WorkerMetrics {
        WorkerMetrics(runner: "r1", capacity: 3, livenessBound: .seconds(10))
    }

    func sampleValue(_ metrics: WorkerMetrics, _ name: String, _ labels: [String: String] = [:]) -> Double? {
        for family in metrics.families() {
            for sample in family.samples where family.name + sample.suffix == name {
                let found = Dictionary(uniqueKeysWithValues: sample.labels.map { ($0.name, $0.value) })
                if labels.allSatisfy({ found[$0.key] == $0.value }) { return sample.value }
            }
        }
        return nil
    }

    func testCountersFollowTheUpdates() {
        let metrics = makeMetrics()
        XCTAssertEqual(sampleValue(metrics, "nativerunner_jobs_total", ["state": "succeeded"]), 0)
        metrics.jobStarted()
        metrics.jobStarted()
        XCTAssertEqual(sampleValue(metrics, "nativerunner_jobs_running"), 2)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_capacity_free_slots"), 1)
        metrics.jobEnded()
        metrics.jobTerminal(.succeeded)
        metrics.jobTerminal(.timedOut)
        metrics.jobTerminal(.timedOut)
        metrics.observeJobDuration(.milliseconds(30))
        metrics.observeJobDuration(.seconds(2))
        metrics.observeJobDuration(.seconds(7200))
        XCTAssertEqual(sampleValue(metrics, "nativerunner_jobs_running"), 1)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_capacity_slots"), 3)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_jobs_total", ["state": "succeeded"]), 1)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_jobs_total", ["state": "timed_out"]), 2)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_jobs_total", ["state": "failed"]), 0)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_job_duration_seconds_bucket", ["le": "0.05"]), 1)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_job_duration_seconds_bucket", ["le": "5"]), 2)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_job_duration_seconds_bucket", ["le": "3600"]), 2)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_job_duration_seconds_bucket", ["le": "+Inf"]), 3)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_job_duration_seconds_count"), 3)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_job_duration_seconds_sum")!, 7202.03, accuracy: 1e-9)
        XCTAssertNil(sampleValue(metrics, "nativerunner_host_cpu_percent"), "no host figure before the first sample")
        metrics.recordHost(.init(cpuPercent: 12.5, load: (1, 2, 3), memoryUsedBytes: 10, memoryTotalBytes: 20))
        XCTAssertEqual(sampleValue(metrics, "nativerunner_host_cpu_percent"), 12.5)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_host_load_average", ["period": "15m"]), 3)
        XCTAssertEqual(sampleValue(metrics, "nativerunner_host_memory_total_bytes"), 20)
    }

    func testReadinessNeedsRunningStateAndAConfirmedLease() {
        let metrics = makeMetrics()
        let now = ContinuousClock.now
        XCTAssertEqual(metrics.readinessProblem(now: now), "runner is starting")
        metrics.setState(.running)
        XCTAssertEqual(metrics.readinessProblem(now: now), "lease lost; registering again")
        metrics.leaseConfirmed(until: now + .seconds(2), renewal: false)
        XCTAssertNil(metrics.readinessProblem(now: now))
        XCTAssertEqual(
            metrics.readinessProblem(now: now + .seconds(3)), "lease not confirmed by Redis for two thirds of its TTL")
        metrics.leaseConfirmed(until: now + .seconds(5), renewal: true)
        XCTAssertNil(metrics.readinessProblem(now: now + .seconds(3)))
        XCTAssertEqual(sampleValue(metrics, "nativerunner_lease_renewals_total"), 1)
        metrics.leaseLost()
        XCTAssertEqual(metrics.readinessProblem(now: now), "lease lost; registering again")
        XCTAssertEqual(sampleValue(metrics, "nativerunner_lease_epochs_lost_total"), 1)
        metrics.leaseConfirmed(until: now + .seconds(2), renewal: false)
        metrics.setState(.draining)
        XCTAssertEqual(metrics.readinessProblem(now: now), "runner is draining")
    }

    func testLivenessFollowsThePresenceLoop() {
        let metrics = makeMetrics()
        let now = ContinuousClock.now
        XCTAssertNil(metrics.livenessProblem(now: now), "alive while starting")
        metrics.loopWentRound()
        XCTAssertNil(metrics.livenessProblem(now: .now + .seconds(9)))
        XCTAssertNotNil(metrics.livenessProblem(now: .now + .seconds(11)))
    }

    func testEndpointRoutes() {
        let metrics = makeMetrics()
        let endpoint = MetricsEndpoint(metrics: metrics)
        let scrape = endpoint.respond(HTTPRequestHead(method: "GET", path: "/metrics"))
        XCTAssertEqual(scrape.status, 200)
        XCTAssertEqual(scrape.contentType, "text/plain; version=0.0.4; charset=utf-8")
        XCTAssertTrue(String(decoding: scrape.body, as: UTF8.self).contains("nativerunner_build_info{runner=\"r1\""))
        XCTAssertEqual(endpoint.respond(HTTPRequestHead(method: "GET", path: "/healthz")).status, 200)
        let ready = endpoint.respond(HTTPRequestHead(method: "GET", path: "/readyz"))
        XCTAssertEqual(ready.status, 503)
        XCTAssertEqual(String(decoding: ready.body, as: UTF8.self), "not ready: runner is starting\n")
        XCTAssertEqual(endpoint.respond(HTTPRequestHead(method: "GET", path: "/other")).status, 404)
    }
}
