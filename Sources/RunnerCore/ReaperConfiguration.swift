import RedisClient
import RunnerProtocol

/// How a reaper works: how often the leader looks for lost runners, how long lost records stay visible.
public struct ReaperConfiguration: Sendable {
    public var redis: RedisEndpoint
    public var keyspace: Keyspace
    /// Its name in events and logs (the worker's id, or `control-<host>-<pid>`).
    public var name: String
    /// How often the leader looks for runners whose lease is gone (and moves due retries it was not woken for).
    public var interval: Duration
    /// How long a lost runner's registry record stays (state `lost`) before it is removed.
    public var lostRetention: Duration
    /// How often a job may be rescheduled from lost runners before it is dead.
    public var rescheduleBound: Int
    public var eventsMaxLength: Int
    public var resultRetention: Duration

    public static let defaultRescheduleBound = 3
    public static let defaultInterval = Duration.seconds(5)
    public static let defaultLostRetention = Duration.seconds(24 * 3600)

    public init(
        redis: RedisEndpoint, keyspace: Keyspace = Keyspace(), name: String,
        interval: Duration = ReaperConfiguration.defaultInterval,
        lostRetention: Duration = ReaperConfiguration.defaultLostRetention,
        rescheduleBound: Int = ReaperConfiguration.defaultRescheduleBound, eventsMaxLength: Int = 100_000,
        resultRetention: Duration = .seconds(7 * 24 * 3600)
    ) {
        self.redis = redis
        self.keyspace = keyspace
        self.name = name
        self.interval = interval
        self.lostRetention = lostRetention
        self.rescheduleBound = rescheduleBound
        self.eventsMaxLength = eventsMaxLength
        self.resultRetention = resultRetention
    }
}
