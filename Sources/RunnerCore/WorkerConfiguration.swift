import Foundation
import RedisClient
import RunnerProtocol

/// Everything a worker needs to know, already validated by whoever built it (the CLI).
public struct WorkerConfiguration: Sendable {
    public var redis: RedisEndpoint
    public var keyspace: Keyspace
    /// The runner id, also its consumer name in the group.
    public var name: String

    /// The most job slots a runner has (`--concurrency`, a `--resume-identity` record's `capacity`): generous for
    /// any host, and far from where the intake's counts (free slots plus the read-ahead room) overflow Int, which
    /// trapped a runner given 2^62 or more right after it had registered.
    public static let maximumConcurrency = 4096
    public var node: String
    /// Queues in priority order.
    public var queues: [String]
    /// Job slots: 1 to `maximumConcurrency`.
    public var concurrency: Int
    public var leaseTTL: Duration
    /// How often the lease is renewed, and a heartbeat published when the runner's state, slots, running jobs or
    /// resources changed.
    public var heartbeatInterval: Duration
    public var shutdownTimeout: Duration
    /// SIGTERM → SIGKILL grace for a job that timed out or is being stopped.
    public var killGrace: Duration
    /// Timeout for jobs whose spec has none (nil: no timeout).
    public var defaultJobTimeout: Duration?
    /// How long a terminal result hash and log stay in Redis.
    public var resultRetention: Duration
    /// Approximate MAXLEN of the events stream.
    public var eventsMaxLength: Int
    /// Approximate MAXLEN of the heartbeats stream.
    public var heartbeatsMaxLength: Int
    /// Approximate MAXLEN of the dead-letter stream.
    public var deadMaxLength: Int
    /// Bytes of output kept in a job's log stream before the truncation marker.
    public var logLimitBytes: Int
    /// Bytes of output kept in the result's `output_tail`.
    public var outputTailBytes: Int
    /// How long one XREADGROUP BLOCK waits before it is issued again (an idle runner's only read traffic). An entry
    /// ends the wait at once, and a drain or shutdown breaks it off, so it only sets how often an idle runner reads.
    public var intakeBlock: Duration
    /// How often a job may be rescheduled from lost runners before it is dead (a poison job that kills runners).
    public var rescheduleBound: Int
    /// The reaper this worker runs for the pool (nil: none, `--no-reaper`).
    public var reaper: ReaperConfiguration?
    /// Start even when Redis's `maxmemory-policy` may evict keys (with a warning).
    public var allowEvictionPolicy = false
    /// How jobs are contained.
    public var isolation: IsolationConfiguration
    public var version: String
    /// This runner's labels (`--label`): it runs only jobs whose `requires` they satisfy.
    public var labels = LabelSet()
    /// Executables run before and after each job (`--hook-pre-job`, `--hook-post-job`).
    public var hooks = JobHooksConfiguration()
    /// How long one XREAD of the control streams blocks (an idle runner's only control traffic). A command ends the
    /// wait at once, and shutdown breaks it off.
    public var controlBlock: Duration = WorkerConfiguration.defaultBlock
    /// Ephemeral runner: shut down gracefully after this many jobs were taken and have ended (never takes more).
    public var exitAfterJobs: Int?
    /// Ephemeral runner: shut down gracefully when no job ran or arrived for this long.
    public var exitWhenIdle: Duration?
    /// Take over the registry record of `name` (a runner that migrated here): its lease must be free, and its
    /// counters are carried over (its queues, concurrency and labels too, by the CLI, unless given).
    public var resumeIdentity = false
    /// Entries read ahead of the free slots when the queue has more than they can take, so that a freed slot starts
    /// its next job without a read (nil: as many as `concurrency`; 0: none). Never used by an ephemeral runner.
    public var prefetch: Int?

    public init(
        redis: RedisEndpoint, keyspace: Keyspace = Keyspace(), name: String, node: String,
        queues: [String] = [Keyspace.defaultQueue], concurrency: Int, leaseTTL: Duration = .seconds(15),
        heartbeatInterval: Duration? = nil, shutdownTimeout: Duration = .seconds(30), killGrace: Duration = .seconds(5),
        defaultJobTimeout: Duration? = nil, resultRetention: Duration = .seconds(7 * 24 * 3600),
        eventsMaxLength: Int = 100_000, heartbeatsMaxLength: Int = 10_000, deadMaxLength: Int = 100_000,
        logLimitBytes: Int = 16 << 20, outputTailBytes: Int = 4096,
        intakeBlock: Duration = WorkerConfiguration.defaultBlock,
        rescheduleBound: Int = ReaperConfiguration.defaultRescheduleBound, reaper: ReaperConfiguration? = nil,
        isolation: IsolationConfiguration = IsolationConfiguration(), version: String = RunnerVersion.current
    ) {
        self.redis = redis
        self.keyspace = keyspace
        self.name = name
        self.node = node
        self.queues = queues
        self.concurrency = concurrency
        self.leaseTTL = leaseTTL
        self.heartbeatInterval = heartbeatInterval ?? leaseTTL / 3
        self.shutdownTimeout = shutdownTimeout
        self.killGrace = killGrace
        self.defaultJobTimeout = defaultJobTimeout
        self.resultRetention = resultRetention
        self.eventsMaxLength = eventsMaxLength
        self.heartbeatsMaxLength = heartbeatsMaxLength
        self.deadMaxLength = deadMaxLength
        self.logLimitBytes = logLimitBytes
        self.outputTailBytes = outputTailBytes
        self.intakeBlock = intakeBlock
        self.rescheduleBound = rescheduleBound
        self.reaper = reaper
        self.isolation = isolation
        self.version = version
    }
}

extension WorkerConfiguration {
    /// The default `intakeBlock` and `controlBlock`: each blocking read of an idle runner is one Redis command per
    /// this interval.
    public static let defaultBlock = Duration.seconds(15)

    /// How long a heartbeat that would say nothing new is left out: about one lease TTL (the first heartbeat at or
    /// past it goes out), so an idle runner's record and heartbeats stay at most that old.
    public var unchangedHeartbeatRefresh: Duration { max(heartbeatInterval, leaseTTL - heartbeatInterval / 2) }
}

/// The runner's release version.
public enum RunnerVersion {
    public static let current = "0.1.0"
}

extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }
}
