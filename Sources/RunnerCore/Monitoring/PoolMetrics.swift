import HTTPEndpoint
import RedisClient
import RunnerProtocol
import Synchronization

/// The pool as `runner control --metrics-listen` exports it: what `runner status` shows, as gauges, for dashboards
/// and alerts on queues (a worker's `/metrics` has its own figures only).
public enum PoolMetrics {
    /// The families for one reading of the pool: runners by state, each queue's length, pending, waiting and
    /// consumers, the jobs waiting for a retry, the dead letters (no sample when `{nr}:dead` is of another type), and
    /// the keys of another type than expected, which the other figures leave out (`runner status`'s WRONG TYPE); no
    /// runner sample when the registry is of another type (it could not be read: 0 running would be untrue).
    public static func families(_ status: PoolStatus, deadLetters: Int?, keyspace: Keyspace) -> [MetricFamily] {
        // Every state always, 0 when no runner is in it: an alert on `{state="running"} == 0` needs the sample.
        var states = Dictionary(uniqueKeysWithValues: RunnerState.allCases.map { ($0.rawValue, 0) })
        for runner in status.runners { states[runner.stateShown, default: 0] += 1 }
        if WrongTypeKey.registry(in: status.wrongTypeKeys, of: keyspace) != nil { states = [:] }
        func perQueue(_ name: String, _ help: String, _ value: (QueueStatus) -> Int) -> MetricFamily {
            MetricFamily(
                name: name, help: help, kind: .gauge,
                samples: status.queues.map { .init(labels: [.init("queue", $0.name)], value: Double(value($0))) })
        }
        return [
            MetricFamily(
                name: "nativerunner_pool_runners",
                help: "Runners in the registry, by state (lost: its lease is gone without its having released it).",
                kind: .gauge,
                samples: states.sorted { $0.key < $1.key }.map {
                    .init(labels: [.init("state", $0.key)], value: Double($0.value))
                }),
            perQueue("nativerunner_pool_queue_length", "Entries of the queue not yet done.", \.length),
            perQueue(
                "nativerunner_pool_queue_pending", "Entries delivered to a runner, not yet acknowledged.", \.pending),
            perQueue("nativerunner_pool_queue_waiting", "Entries not yet delivered to any runner.", \.unread),
            perQueue("nativerunner_pool_queue_consumers", "Consumers of the queue's group.", \.consumers),
            .single(
                "nativerunner_pool_retries_scheduled", .gauge, "Jobs waiting for their next attempt after a failure.",
                Double(status.retriesScheduled)),
            MetricFamily(
                name: "nativerunner_pool_dead_letters", help: "Entries of the dead-letter stream.", kind: .gauge,
                samples: deadLetters.map { [.init(labels: [], value: Double($0))] } ?? []),
            MetricFamily(
                name: "nativerunner_pool_wrong_type_keys",
                help: "Keys of the pool holding another type than expected (left out of the other figures).",
                kind: .gauge,
                samples: status.wrongTypeKeys.map {
                    .init(
                        labels: [.init("key", $0.key), .init("type", $0.type), .init("expected", $0.expected)],
                        value: 1)
                }),
        ]
    }
}

/// The last reading of the pool, so that a scrape is answered without a read of Redis: `refresh` reads it (every
/// few seconds, from the control plane's own task), `respond` serves it from the HTTP server's thread.
public final class PoolMetricsCache: Sendable {
    private struct State {
        var families: [MetricFamily]?
        var refreshedAt: ContinuousClock.Instant?
        /// How long the last good reading took: a pool of many queues takes seconds.
        var lastDuration = Duration.zero
        var failures = 0
        var lastError: String?

        /// A reading older than this is stale: `staleAfter`, or three readings' time when reading takes longer.
        func staleness(_ staleAfter: Duration) -> Duration { max(staleAfter, lastDuration * 3) }
    }

    private let state = Mutex(State())
    /// A reading older than this is stale (unless reading takes longer: three readings' time): `/readyz` 503.
    public let staleAfter: Duration

    public init(staleAfter: Duration) {
        self.staleAfter = staleAfter
    }

    /// Reads the pool once; on failure keeps the last reading and counts the failure.
    public func refresh(_ pool: PoolClient) async {
        let started = ContinuousClock.now
        do {
            var status = try await pool.status()
            // A dead-letter stream of another type is named as status names the others, not a failed reading that
            // froze every figure of the page (and made /readyz 503 with Redis's WRONGTYPE, which names no key).
            let dead = try await WrongTypeKey.skipping(
                client: pool.client, pool.keyspace.dead, "stream", into: &status.wrongTypeKeys
            ) { try await pool.client.send(RedisCommand(["XLEN", pool.keyspace.dead])).int ?? 0 }
            let families = PoolMetrics.families(status, deadLetters: dead, keyspace: pool.keyspace)
            state.withLock {
                $0.families = families
                $0.refreshedAt = .now
                $0.lastDuration = .now - started
                $0.lastError = nil
            }
        } catch {
            state.withLock {
                $0.failures += 1
                $0.lastError = "\(error)"
            }
        }
    }

    public func respond(_ request: HTTPRequestHead, now: ContinuousClock.Instant = .now) -> HTTPResponse {
        let current = state.withLock { $0 }
        switch request.path {
        case "/metrics":
            guard let families = current.families, let refreshedAt = current.refreshedAt else {
                return .text(503, "no reading of the pool yet" + (current.lastError.map { ": " + $0 } ?? ""))
            }
            func seconds(_ duration: Duration) -> Double {
                Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
            }
            let own: [MetricFamily] = [
                .single(
                    "nativerunner_pool_reading_age_seconds", .gauge, "How old the figures of this page are.",
                    seconds(now - refreshedAt)),
                .single(
                    "nativerunner_pool_reading_duration_seconds", .gauge, "How long the reading of these figures took.",
                    seconds(current.lastDuration)),
                .single(
                    "nativerunner_pool_reading_failures_total", .counter,
                    "Readings of the pool that failed (Redis unreachable or refusing).", Double(current.failures)),
            ]
            return HTTPResponse(
                status: 200, contentType: MetricsExposition.contentType,
                body: Array(MetricsExposition.render(families + own).utf8))
        case "/healthz":
            return .text(200, "ok")
        case "/readyz":
            let staleness = current.staleness(staleAfter)
            guard let refreshedAt = current.refreshedAt, now - refreshedAt <= staleness else {
                return .text(
                    503,
                    "not ready: no reading of the pool within \(staleness.milliseconds) ms"
                        + (current.lastError.map { " (\($0))" } ?? ""))
            }
            return .text(200, "ready")
        default:
            return .text(404, "no such endpoint: \(request.path) (try /metrics, /healthz or /readyz)")
        }
    }
}
