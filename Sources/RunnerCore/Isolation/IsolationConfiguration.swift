import RunnerProtocol

/// How a runner contains its jobs: the default level, limits and ceilings, who jobs run as, what of the runner's
/// environment they may see, and where their work folders and cgroups live.
public struct IsolationConfiguration: Sendable {
    /// The level of jobs whose spec names none.
    public var defaultLevel: IsolationLevel
    /// When the host cannot give the level a job asks for: false rejects the job with what is missing; true runs
    /// it at the strongest level the host has and records both levels in the result.
    public var fallback: Bool
    /// Limits of jobs whose spec sets none.
    public var defaultLimits: JobLimits
    /// The most a job may ask for; a job asking for more is rejected.
    public var ceilings: JobLimits
    /// The user jobs run as (the runner must be root); nil keeps the runner's user.
    public var runAs: RunAsUser?
    /// Names of the runner's environment variables copied into every job's environment.
    public var environmentAllowlist: [String]
    /// Jobs' work folders are made under `<workRoot>/<runner>`.
    public var workRoot: String
    /// Keep each job's work folder after it ended (for debugging) instead of removing it.
    public var keepWorkFolders: Bool
    /// The cgroup, relative to each hierarchy's root, in which the runner makes its own parent
    /// (`nativerunner-<context>`; nil: under the runner's own cgroup).
    public var cgroupParent: String?
    /// How often `runner.resource_usage` is published and leftovers are looked for.
    public var monitorInterval: Duration

    public init(
        defaultLevel: IsolationLevel = .processGroup, fallback: Bool = false, defaultLimits: JobLimits = JobLimits(),
        ceilings: JobLimits = JobLimits(), runAs: RunAsUser? = nil, environmentAllowlist: [String] = [],
        workRoot: String = IsolationConfiguration.defaultWorkRoot, keepWorkFolders: Bool = false,
        cgroupParent: String? = nil, monitorInterval: Duration = .seconds(10)
    ) {
        self.defaultLevel = defaultLevel
        self.fallback = fallback
        self.defaultLimits = defaultLimits
        self.ceilings = ceilings
        self.runAs = runAs
        self.environmentAllowlist = environmentAllowlist
        self.workRoot = workRoot
        self.keepWorkFolders = keepWorkFolders
        self.cgroupParent = cgroupParent
        self.monitorInterval = monitorInterval
    }

    public static let defaultWorkRoot = "/tmp/nativerunner"
}

/// A user jobs run as: its uid and primary gid, supplementary groups dropped.
public struct RunAsUser: Sendable, Hashable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32

    public init(name: String, uid: UInt32, gid: UInt32) {
        self.name = name
        self.uid = uid
        self.gid = gid
    }
}
