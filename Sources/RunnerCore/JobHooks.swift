import RunnerProtocol

/// Executables a runner runs around each job (`--hook-pre-job`, `--hook-post-job`), with the job's environment,
/// in its work folder, as its user, in a process group of their own, stopped with their tree after `timeout`.
public struct JobHooksConfiguration: Sendable, Equatable {
    /// Run before the job; when it fails (non-zero, timeout, cannot start) the attempt fails and the job never runs.
    public var preJob: String?
    /// Run after the job with `NR_JOB_STATE` and `NR_EXIT_CODE`; its exit code is recorded, the job's state stays.
    public var postJob: String?
    /// How long a hook may run before it is stopped (SIGTERM, the kill grace, SIGKILL to its group).
    public var timeout: Duration

    public init(preJob: String? = nil, postJob: String? = nil, timeout: Duration = .seconds(60)) {
        self.preJob = preJob
        self.postJob = postJob
        self.timeout = timeout
    }
}
