import HTTPEndpoint
import RedisClient
import RunnerProtocol
import Synchronization

/// What a worker counts for `/metrics` and decides `/healthz` and `/readyz` from. Updated by the worker, its job
/// executor and resource monitor (each update is one short lock); read by the metrics endpoint's thread.
public final class WorkerMetrics: Sendable {
    /// Upper bounds of the job duration histogram's buckets, in seconds.
    public static let durationBounds: [Double] = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600]
    /// The terminal states `nativerunner_jobs_total` counts, each shown from 0 on.
    static let terminalStates: [JobState] = JobState.allCases.filter(\.isTerminal)

    /// Host figures from the resource monitor's last sample.
    public struct HostSample: Sendable, Equatable {
        public var cpuPercent: Double?
        public var load: (Double, Double, Double)?
        public var memoryUsedBytes: UInt64?
        public var memoryTotalBytes: UInt64?

        public init(
            cpuPercent: Double? = nil, load: (Double, Double, Double)? = nil, memoryUsedBytes: UInt64? = nil,
            memoryTotalBytes: UInt64? = nil
        ) {
            self.cpuPercent = cpuPercent
            self.load = load
            self.memoryUsedBytes = memoryUsedBytes
            self.memoryTotalBytes = memoryTotalBytes
        }

        public static func == (a: HostSample, b: HostSample) -> Bool {
            a.cpuPercent == b.cpuPercent && a.memoryUsedBytes == b.memoryUsedBytes
                && a.memoryTotalBytes == b.memoryTotalBytes
                && a.load.map { [$0.0, $0.1, $0.2] } == b.load.map { [$0.0, $0.1, $0.2] }
        }
    }

    struct Counters: Sendable {
        var state = RunnerState.starting
        var jobs: [JobState: Int] = [:]
        var running = 0
        var leaseRenewals = 0
        var leaseRenewalFailures = 0
        var leaseEpochsLost = 0
        /// The kill deadline of the last confirmed renewal: the lease is held (as far as this runner can vouch) until.
        var leaseHeldUntil: ContinuousClock.Instant?
        var durationCounts = [Int](repeating: 0, count: WorkerMetrics.durationBounds.count + 1)
        var durationSum = 0.0
        var host = HostSample()
        /// The last time one of the worker's loops (lease watch, presence) went round.
        var loopTick: ContinuousClock.Instant?
    }

    public let runner: String
    public let capacity: Int
    /// How long the worker's loops may stay silent before `/healthz` says the worker is stuck.
    public let livenessBound: Duration
    private let counters = Mutex(Counters())
    private let redisClients = Mutex<[RedisClient]>([])

    public init(runner: String, capacity: Int, livenessBound: Duration) {
        self.runner = runner
        self.capacity = capacity
        self.livenessBound = livenessBound
    }

    // MARK: Updates

    func track(redis clients: [RedisClient]) { redisClients.withLock { $0 += clients } }

    func setState(_ state: RunnerState) { counters.withLock { $0.state = state } }

    func jobStarted() { counters.withLock { $0.running += 1 } }

    func jobEnded() { counters.withLock { $0.running = max(0, $0.running - 1) } }

    /// A job reached a terminal state through this runner.
    func jobTerminal(_ state: JobState) { counters.withLock { $0.jobs[state, default: 0] += 1 } }

    /// An attempt's process ended after running this long.
    func observeJobDuration(_ duration: Duration) {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        let bucket = WorkerMetrics.durationBounds.firstIndex { seconds <= $0 } ?? WorkerMetrics.durationBounds.count
        counters.withLock {
            $0.durationCounts[bucket] += 1
            $0.durationSum += seconds
        }
    }

    /// Redis confirmed the lease (acquired, renewed or taken again); it is vouched for until `killDeadline`.
    func leaseConfirmed(until killDeadline: ContinuousClock.Instant, renewal: Bool) {
        counters.withLock {
            if renewal { $0.leaseRenewals += 1 }
            $0.leaseHeldUntil = killDeadline
        }
    }

    func leaseRenewalFailed() { counters.withLock { $0.leaseRenewalFailures += 1 } }

    /// The lease epoch ended: not ready until a new epoch is confirmed.
    func leaseLost() {
        counters.withLock {
            $0.leaseEpochsLost += 1
            $0.leaseHeldUntil = nil
        }
    }

    func recordHost(_ sample: HostSample) { counters.withLock { $0.host = sample } }

    func loopWentRound() { counters.withLock { $0.loopTick = .now } }

    // MARK: Health

    /// `/healthz`: nil while alive (the worker's loops went round recently), else why not.
    public func livenessProblem(now: ContinuousClock.Instant = .now) -> String? {
        let tick = counters.withLock { $0.loopTick }
        guard let tick else { return nil }  // still starting: the process is alive
        guard now - tick <= livenessBound else {
            return "the worker's loops have not run for \((now - tick).milliseconds) ms"
        }
        return nil
    }

    /// `/readyz`: nil when registered and running, the lease confirmed and no Redis connection known to be down;
    /// else why not, in a few words.
    public func readinessProblem(now: ContinuousClock.Instant = .now) -> String? {
        let (state, heldUntil) = counters.withLock { ($0.state, $0.leaseHeldUntil) }
        guard state == .running else { return "runner is \(state.rawValue)" }
        if let down = redisClients.withLock({ $0 }).first(where: { $0.stats.isDown }) {
            return "Redis at \(down.endpoint) is unreachable (\(down.name) connection)"
        }
        guard let heldUntil else { return "lease lost; registering again" }
        guard now < heldUntil else { return "lease not confirmed by Redis for two thirds of its TTL" }
        return nil
    }

    // MARK: Exposition

    /// Every metric, `nativerunner_` prefixed, in a stable order.
    public func families() -> [MetricFamily] {
        let c = counters.withLock { $0 }
        let clients = redisClients.withLock { $0 }
        typealias Sample = MetricFamily.Sample
        typealias Label = MetricFamily.Label
        let runnerLabel = Label("runner", runner)
        var families: [MetricFamily] = [
            MetricFamily(
                name: "nativerunner_build_info", help: "The runner's version and protocol version (always 1).",
                kind: .gauge,
                samples: [
                    Sample(
                        labels: [
                            runnerLabel, Label("version", RunnerVersion.current),
                            Label("protocol", String(ProtocolVersion.current)),
                        ],
                        value: 1)
                ]),
            MetricFamily(
                name: "nativerunner_runner_state", help: "1 for the runner's current state, 0 for the others.",
                kind: .gauge,
                samples: RunnerState.allCases.filter { $0 != .lost }.map {
                    Sample(labels: [Label("state", $0.rawValue)], value: $0 == c.state ? 1 : 0)
                }),
            MetricFamily(
                name: "nativerunner_jobs_total", help: "Jobs this runner brought to a terminal state, by state.",
                kind: .counter,
                samples: WorkerMetrics.terminalStates.map {
                    Sample(labels: [Label("state", $0.rawValue)], value: Double(c.jobs[$0] ?? 0))
                }),
            .single("nativerunner_jobs_running", .gauge, "Jobs holding a slot now.", Double(c.running)),
            .single(
                "nativerunner_capacity_slots", .gauge, "Job slots of this runner (--concurrency).", Double(capacity)),
            .single(
                "nativerunner_capacity_free_slots", .gauge, "Job slots free now.", Double(max(0, capacity - c.running))),
            .single(
                "nativerunner_lease_renewals_total", .counter, "Lease renewals Redis confirmed.",
                Double(c.leaseRenewals)),
            .single(
                "nativerunner_lease_renewal_failures_total", .counter,
                "Lease renewals that failed: Redis unreachable, the lease gone, or confirmed too late.",
                Double(c.leaseRenewalFailures)),
            .single(
                "nativerunner_lease_epochs_lost_total", .counter,
                "Lease epochs this runner had to end (runner.lease_lost).", Double(c.leaseEpochsLost)),
            MetricFamily(
                name: "nativerunner_redis_errors_total",
                help: "Failed Redis connection attempts and lost connections, by connection.", kind: .counter,
                samples: clients.map {
                    Sample(labels: [Label("client", $0.name)], value: Double($0.stats.connectionFailures))
                }),
            MetricFamily(
                name: "nativerunner_redis_reconnects_total",
                help: "Redis connections made again after a loss or a failed attempt, by connection.", kind: .counter,
                samples: clients.map { Sample(labels: [Label("client", $0.name)], value: Double($0.stats.reconnects)) }),
            .histogram(
                "nativerunner_job_duration_seconds", "Wall time of job processes, from start to exit.",
                bounds: WorkerMetrics.durationBounds, counts: c.durationCounts, sum: c.durationSum),
        ]
        if let cpu = c.host.cpuPercent {
            families.append(
                .single("nativerunner_host_cpu_percent", .gauge, "Host CPU busy, percent of all cores.", cpu))
        }
        if let load = c.host.load {
            families.append(
                MetricFamily(
                    name: "nativerunner_host_load_average", help: "Host load average, by period.", kind: .gauge,
                    samples: [
                        Sample(labels: [Label("period", "1m")], value: load.0),
                        Sample(labels: [Label("period", "5m")], value: load.1),
                        Sample(labels: [Label("period", "15m")], value: load.2),
                    ]))
        }
        if let used = c.host.memoryUsedBytes {
            families.append(.single("nativerunner_host_memory_used_bytes", .gauge, "Host memory in use.", Double(used)))
        }
        if let total = c.host.memoryTotalBytes {
            families.append(
                .single("nativerunner_host_memory_total_bytes", .gauge, "Host memory in all.", Double(total)))
        }
        return families
    }
}

/// Answers `/metrics`, `/healthz` and `/readyz` from a worker's metrics; 404 for any other path.
public struct MetricsEndpoint: Sendable {
    public let metrics: WorkerMetrics

    public init(metrics: WorkerMetrics) {
        self.metrics = metrics
    }

    public func respond(_ request: HTTPRequestHead) -> HTTPResponse {
        switch request.path {
        case "/metrics":
            return HTTPResponse(
                status: 200, contentType: MetricsExposition.contentType,
                body: Array(MetricsExposition.render(metrics.families()).utf8))
        case "/healthz":
            return metrics.livenessProblem().map { .text(503, "not alive: " + $0) } ?? .text(200, "ok")
        case "/readyz":
            return metrics.readinessProblem().map { .text(503, "not ready: " + $0) } ?? .text(200, "ready")
        default:
            return .text(404, "no such endpoint: \(request.path) (try /metrics, /healthz or /readyz)")
        }
    }
}
