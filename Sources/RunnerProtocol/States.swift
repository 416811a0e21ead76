/// The state of a job in its result hash.
public enum JobState: String, Sendable, CaseIterable, Codable {
    case queued
    case running
    case succeeded
    case failed
    case timedOut = "timed_out"
    case rejected

    /// Whether the job has ended for good (no further attempt of this submission will run).
    public var isTerminal: Bool {
        switch self {
        case .queued, .running: false
        case .succeeded, .failed, .timedOut, .rejected: true
        }
    }
}

/// The state a runner reports in its heartbeats and registry record.
public enum RunnerState: String, Sendable, CaseIterable, Codable {
    case starting
    case running
    case draining
    case stopped
}

/// Every event type on `{nr}:events`.
public enum EventType: String, Sendable, CaseIterable, Codable {
    case runnerRegistered = "runner.registered"
    case runnerShutdown = "runner.shutdown"
    case jobSubmitted = "job.submitted"
    case jobReceived = "job.received"
    case jobStarted = "job.started"
    case jobSucceeded = "job.succeeded"
    case jobFailed = "job.failed"
    case jobTimeout = "job.timeout"
    case jobRejected = "job.rejected"
    case jobLost = "job.lost"
    case jobHandedBack = "job.handed_back"
    case jobRetryScheduled = "job.retry_scheduled"
    case runnerResourceUsage = "runner.resource_usage"
    case runnerCapacityUpdate = "runner.capacity_update"
    case isolationCleanup = "isolation.cleanup"

    /// The terminal event for a terminal state.
    public static func terminal(for state: JobState) -> EventType? {
        switch state {
        case .succeeded: .jobSucceeded
        case .failed: .jobFailed
        case .timedOut: .jobTimeout
        case .rejected: .jobRejected
        case .queued, .running: nil
        }
    }
}
