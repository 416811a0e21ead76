/// What to run.
public struct ProcessSpec: Sendable {
    /// An absolute or relative path (relative paths are resolved in `workingDirectory`, like a shell started there),
    /// or a bare name looked up in `environment["PATH"]` (default `/usr/local/bin:/usr/bin:/bin`) before the fork.
    public var executable: String
    /// The full argv: `arguments[0]` is argv[0].
    public var arguments: [String]
    /// The complete environment of the child: nothing is inherited from the runner.
    public var environment: [String: String]
    /// The child's working directory; nil keeps the runner's.
    public var workingDirectory: String?
    /// `PR_SET_PDEATHSIG(SIGKILL)` in the child: it is killed when the supervisor's monitor thread (the thread that
    /// started it) or the whole runner goes away.
    public var dieWithParent: Bool
    /// Level, limits, credentials and cgroups of the child; `.default` is its own process group.
    public var isolation: ProcessIsolation
    /// Marks the job's processes so that those that escaped its process group and were reparented to the runner
    /// (a subreaper) are still found and killed with it. Put into the child's environment (a variable of that name
    /// in `environment` must have the same value). Processes that replace their environment are not found.
    public var treeMarker: EnvironmentMarker?

    /// The default `PATH` for a bare `executable` when `environment` has none.
    public static let defaultSearchPath = "/usr/local/bin:/usr/bin:/bin"

    /// Describes a process to start; see the properties.
    public init(
        executable: String,
        arguments: [String],
        environment: [String: String] = [:],
        workingDirectory: String? = nil,
        dieWithParent: Bool = true,
        isolation: ProcessIsolation = .default,
        treeMarker: EnvironmentMarker? = nil
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.dieWithParent = dieWithParent
        self.isolation = isolation
        self.treeMarker = treeMarker
    }
}

/// How the main process ended, from `waitid`.
public enum Termination: Sendable, Equatable {
    /// It exited with this status.
    case exited(Int32)
    /// It was killed by this signal.
    case signaled(Int32)
}

/// The child's output streams.
public enum OutputStream: Sendable, Equatable {
    /// fd 1 of the child.
    case stdout
    /// fd 2 of the child.
    case stderr
}

/// Why the supervisor stopped a process (nil when it ended on its own).
public enum StopReason: Sendable, Equatable {
    /// `TerminationPolicy.timeout` passed.
    case timeout
    /// The task waiting for it was cancelled, or the supervisor shut down.
    case cancelled
}

/// How a process ended and what it cost.
public struct ProcessOutcome: Sendable {
    /// The main process's pid (also its process group and session id, unless the isolation level is `.none`), as the
    /// runner sees it (in a new PID namespace the job sees itself as 1).
    public var pid: Int32
    /// How the main process ended.
    public var termination: Termination
    /// `.timeout` if the timeout fired, `.cancelled` if the waiting task was cancelled (or the supervisor shut down).
    public var stopReason: StopReason?
    /// SIGKILL was sent to the job: it had not exited within the grace after SIGTERM (`killGrace` while stopping
    /// it, or `leftoverGrace` for what was left after the main process exited).
    public var forcedKill: Bool
    /// Processes of the job (its group, or escapees found by descent or marker) were still alive when the main
    /// process's exit was observed, and were stopped.
    public var leftoverProcessesStopped: Bool
    /// The pipes were still held open (by an escaped process) past the drain bound; later output was not read.
    public var outputTruncatedByDrainLimit: Bool
    /// From the start of the process to the observation of its exit.
    public var wallTime: Duration
    /// From wait's rusage of the main process (includes its waited-for children).
    public var userCPUTime: Duration
    /// From wait's rusage of the main process (includes its waited-for children).
    public var systemCPUTime: Duration
    /// `ru_maxrss * 1024`. Not the job's own peak: the child shares the supervisor's memory until exec
    /// (CLONE_VM|CLONE_VFORK) and the kernel folds that into maxrss at exec, so this is at least the runner's RSS.
    public var maxResidentBytes: Int

    /// An outcome; normally made by the supervisor.
    public init(
        pid: Int32,
        termination: Termination,
        stopReason: StopReason? = nil,
        forcedKill: Bool = false,
        leftoverProcessesStopped: Bool = false,
        outputTruncatedByDrainLimit: Bool = false,
        wallTime: Duration = .zero,
        userCPUTime: Duration = .zero,
        systemCPUTime: Duration = .zero,
        maxResidentBytes: Int = 0
    ) {
        self.pid = pid
        self.termination = termination
        self.stopReason = stopReason
        self.forcedKill = forcedKill
        self.leftoverProcessesStopped = leftoverProcessesStopped
        self.outputTruncatedByDrainLimit = outputTruncatedByDrainLimit
        self.wallTime = wallTime
        self.userCPUTime = userCPUTime
        self.systemCPUTime = systemCPUTime
        self.maxResidentBytes = maxResidentBytes
    }
}

/// Teardown timing.
public struct TerminationPolicy: Sendable {
    /// Measured from the start of the process; nil = no timeout.
    public var timeout: Duration?
    /// SIGTERM to the job → wait this long → SIGKILL (default 5 s). A job that is PID 1 of its own PID namespace
    /// ignores SIGTERM unless it handles it, so it ends only with the SIGKILL.
    public var killGrace: Duration
    /// After the main process exits: SIGTERM to what is left of the group, wait this long, SIGKILL (default 1 s).
    public var leftoverGrace: Duration
    /// After the main process exited and the group is gone, keep reading the pipes at most this long (default 1 s).
    public var drainLimit: Duration

    /// A policy; see the properties.
    public init(
        timeout: Duration? = nil,
        killGrace: Duration = .seconds(5),
        leftoverGrace: Duration = .seconds(1),
        drainLimit: Duration = .seconds(1)
    ) {
        self.timeout = timeout
        self.killGrace = killGrace
        self.leftoverGrace = leftoverGrace
        self.drainLimit = drainLimit
    }
}

/// `OutputStream` without the clash with `Foundation.OutputStream` in files that import both modules.
public typealias ProcessOutputStream = OutputStream
