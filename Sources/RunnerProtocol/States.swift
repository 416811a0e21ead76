/// The state of a job in its result hash.
public enum JobState: String, Sendable, CaseIterable, Codable {
    case queued
    case running
    case succeeded
    case failed
    case timedOut = "timed_out"
    case rejected
    /// Failed with attempts left: waits in `{nr}:delayed` until its `retry_at`.
    case retryScheduled = "retry_scheduled"
    /// Gave up: attempts exhausted, or rescheduled from lost runners too often; see `{nr}:dead`.
    case dead
    /// Stopped by `runner cancel` (before it started, or while it ran); never retried, not a failure.
    case cancelled

    /// Whether the job has ended for good (no further attempt of this submission will run).
    public var isTerminal: Bool {
        switch self {
        case .queued, .running, .retryScheduled: false
        case .succeeded, .failed, .timedOut, .rejected, .dead, .cancelled: true
        }
    }
}

/// The state a runner reports in its heartbeats and registry record.
public enum RunnerState: String, Sendable, CaseIterable, Codable {
    case starting
    case running
    case draining
    /// Intake stopped by a `drain` command and no job runs: registered and idle until `resume`.
    case drained
    /// Left for another node (`migrate`): its lease is released and a runner started with `--resume-identity`
    /// may take the id over until `migrate_deadline`.
    case migrating
    /// Set by a reaper: a migrating runner nobody took over before its deadline.
    case migrated
    case stopped
    /// Set by a reaper when the runner's lease was gone: the runner died or was cut off.
    case lost

    /// Whether the runner gave up its lease on purpose (it moved to another node): a missing lease does not mean it
    /// is lost.
    public var releasedItsLease: Bool { self == .migrating || self == .migrated }
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
    case jobRescheduled = "job.rescheduled"
    case jobRequeued = "job.requeued"
    case jobStaleResult = "job.stale_result"
    case jobDead = "job.dead"
    case runnerLost = "runner.lost"
    case runnerLeaseLost = "runner.lease_lost"
    case runnerResourceUsage = "runner.resource_usage"
    case runnerCapacityUpdate = "runner.capacity_update"
    case isolationCleanup = "isolation.cleanup"
    /// A job whose required labels the reading runner lacks was moved to its requirement stream.
    case jobRouted = "job.routed"
    /// The outcome of one control command (`accepted`, `rejected` or `ignored`), from the runner that acted.
    case runnerCommand = "runner.command"
    /// A migrating runner released its lease: what it finished and handed back.
    case runnerMigration = "runner.migration"
    /// A reaper found a migrating runner that nobody took over before its deadline.
    case runnerMigrated = "runner.migrated"
    /// The owner of a running job read its cancel command.
    case jobCancelReceived = "job.cancel_received"
    /// The owner sent SIGTERM to the cancelled job's tree.
    case jobCancelSigterm = "job.cancel_sigterm"
    /// The cancelled job's tree outlived the kill grace: SIGKILL was sent.
    case jobCancelSigkill = "job.cancel_sigkill"
    /// Terminal: the job is `cancelled`.
    case jobCancelled = "job.cancelled"

    /// The terminal event for a terminal state.
    public static func terminal(for state: JobState) -> EventType? {
        switch state {
        case .succeeded: .jobSucceeded
        case .failed: .jobFailed
        case .timedOut: .jobTimeout
        case .rejected: .jobRejected
        case .dead: .jobDead
        case .cancelled: .jobCancelled
        case .queued, .running, .retryScheduled: nil
        }
    }
}
