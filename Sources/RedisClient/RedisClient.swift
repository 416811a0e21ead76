/// Tuning of a `RedisClient`.
public struct RedisClientOptions: Sendable {
    /// Limit for establishing a TCP connection (redisConnectWithTimeout).
    public var connectTimeout: Duration = .seconds(2)
    /// Default limit for a reply; a blocking command without an explicit timeout waits at least its block time.
    public var readTimeout: Duration = .seconds(10)
    /// First pause between reconnection attempts; doubles per failure.
    public var initialBackoff: Duration = .milliseconds(50)
    /// Longest pause between reconnection attempts.
    public var maximumBackoff: Duration = .seconds(5)
    /// Used in log lines and the thread name, e.g. "intake".
    public var name: String = "redis"

    /// The defaults.
    public init() {}
}

/// How hard `RedisClient.send` tries when Redis is unreachable.
public enum RedisRetry: Sendable {
    /// One attempt; connection problems are thrown.
    case never
    /// Keeps reconnecting (capped exponential backoff with jitter) while the command was certainly not sent,
    /// until the deadline (nil = forever) or task cancellation; a command possibly sent is not resent.
    case whileUnreachable(deadline: ContinuousClock.Instant?)
    /// For idempotent commands: also resent after the connection was lost mid-command.
    case idempotent(deadline: ContinuousClock.Instant?)
}

/// An async Redis client: one dedicated thread owns one connection and serves a FIFO queue of requests,
/// handing results back through continuations. Reconnects lazily with capped exponential backoff and jitter
/// and logs "lost connection ... reconnecting" once when it goes down and "reconnected ..." once when back,
/// never once per retry.
///
/// Requests are served one at a time: a command queued behind a `BLOCK` read waits for it, so give blocking reads
/// a client of their own.
public final class RedisClient: Sendable {
    /// Where the client connects.
    public let endpoint: RedisEndpoint
    private let core: ClientCore

    /// Starts the owner thread; connecting waits for the first request (or `connect()`).
    /// `log` is called on the owner thread.
    public init(
        endpoint: RedisEndpoint, options: RedisClientOptions = RedisClientOptions(),
        log: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.endpoint = endpoint
        self.core = ClientCore(endpoint: endpoint, options: options, log: log)
        core.start()
    }

    deinit {
        core.close()
    }

    /// Connects now (used at start to fail fast with a clear error): redisConnectWithTimeout, AUTH, SELECT; with a
    /// connection already up, checks that the server has not closed it. Throws RedisClientError.
    public func connect() async throws {
        _ = try await core.submit(.connect, retry: .never)
    }

    /// Sends one command (redisCommandArgv on the owner thread). Throws RedisClientError (client side),
    /// RedisServerError (error reply), CancellationError. `readTimeout` overrides the default for this call; a
    /// blocking command (`XREADGROUP ... BLOCK ms`) without one waits at least its block time plus a second.
    public func send(
        _ command: RedisCommand, readTimeout: Duration? = nil, retry: RedisRetry = .never
    ) async throws -> RedisReply {
        let replies = try await core.submit(.commands([command], readTimeout: readTimeout), retry: retry)
        if case .error(let message) = replies[0] {
            throw RedisServerError(message)
        }
        return replies[0]
    }

    /// Queues one command and returns at once: the caller collects the reply later with `PendingReply.value()`, and
    /// can do other work while the round trip is in flight, on the same task. The request is not withdrawn when that
    /// task is cancelled, so use it for writes that must land (with `.idempotent`, it is resent as `send` would).
    public func start(_ command: RedisCommand, retry: RedisRetry = .never) -> PendingReply {
        PendingReply(replies: core.start(.commands([command], readTimeout: nil), retry: retry))
    }

    /// Sends commands in one round trip (the commands encoded into one write, redisGetReply ×N); error replies are returned in
    /// place as `.error`, not thrown. With `.idempotent` the whole pipeline may be resent.
    public func pipeline(_ commands: [RedisCommand], retry: RedisRetry = .never) async throws -> [RedisReply] {
        guard !commands.isEmpty else {
            return []
        }
        return try await core.submit(.commands(commands, readTimeout: nil), retry: retry)
    }

    /// Breaks a blocking read in progress (shutdown(2) on the socket) so the owner thread returns promptly;
    /// the current command fails with .connectionLost (or CancellationError if its task was cancelled); the
    /// next command reconnects. Also ends a reconnection backoff in progress. No effect when idle. Thread safe.
    public func interrupt() {
        core.interrupt()
    }

    /// Fails queued and future requests with .closed and ends the thread. Idempotent. A command in progress is
    /// interrupted (.connectionLost if it may have been sent, .closed if not); the thread exits right after it.
    public func close() {
        core.close()
    }

    /// What this client has met so far: connection failures, reconnects, failed requests. Thread safe.
    public var stats: RedisClientStats {
        core.stats
    }

    /// The client's name (`RedisClientOptions.name`).
    public var name: String {
        core.options.name
    }

    /// Connection attempts so far (for tests).
    var connectionAttempts: Int {
        core.connectionAttempts
    }

    /// Requests waiting behind the one in progress (for tests).
    var queuedRequests: Int {
        core.queuedRequests
    }

    /// Whether the owner thread has ended (for tests).
    var ownerThreadHasExited: Bool {
        core.ownerThreadHasExited
    }
}

/// Counters of one client's connection trouble, for metrics.
public struct RedisClientStats: Sendable, Equatable {
    /// Connection attempts that failed, and connections that were lost (each counted once).
    public var connectionFailures = 0
    /// Connections made after an earlier connection or a failed attempt.
    public var reconnects = 0
    /// Requests that ended with a client-side error (unreachable, lost, timed out); server error replies are not
    /// counted.
    public var failedRequests = 0
    /// A failure or loss was met and no connection has been made since.
    public var isDown = false

    public init() {}
}
