/// How a process is contained: its isolation level, limits and credentials. Applied in the child between the clone
/// and the exec (see `nr_spawn` for the order), so nothing of the job runs before all of it is in force.
///
/// The default is `.processGroup` with no-new-privileges and a core size limit of 0; `.namespace` also drops every
/// capability by default (`dropsCapabilities`).
public struct ProcessIsolation: Sendable, Equatable {
    /// Each level includes the ones before it.
    public enum Level: Sendable, Equatable {
        /// A plain child in the runner's own process group. Teardown signals the main process (through its pidfd)
        /// and the processes the supervisor can attribute to it (descendants, `ProcessSpec.treeMarker`), never a
        /// group. An orphan it cannot attribute stays in the runner's group and session, where the orphan sweep
        /// leaves it (it cannot tell it from a child of other code in the runner) unless the supervisor was made with
        /// `reapsOwnSessionOrphans`: else it lingers as a zombie.
        case none
        /// Its own session and process group (pid == pgid == sid); teardown signals the group and the job's
        /// escapees found by descent and by `ProcessSpec.treeMarker`.
        case processGroup
        /// `.processGroup` plus new PID, mount (with its own /proc, and its own read-only sysfs on /sys), IPC and UTS
        /// namespaces: the job is PID 1 of its PID namespace and sees no other process. The host's /sys, with every
        /// mount under it, is gone from the job's mount namespace; the new sysfs shows the job's own network
        /// interfaces and no cgroup file system (nothing under /sys/fs/cgroup). A root without /sys gets none. Unless
        /// `dropsCapabilities` is set to false, the job has no capability, so it can unmount neither.
        ///
        /// As PID 1 it ignores every signal it has no handler for, SIGTERM included: on timeout or cancel, SIGTERM
        /// reaches its descendants, and the job itself ends with the SIGKILL after `TerminationPolicy.killGrace`
        /// (unless it handles SIGTERM). When it ends, the kernel kills everything left in its namespace.
        case namespace
    }

    /// Options of the `.namespace` level.
    public struct NamespaceOptions: Sendable, Equatable {
        /// A new network namespace with only the loopback interface, brought up: no route out, and the runner's
        /// own 127.0.0.1 is out of reach.
        public var isolatesNetwork: Bool

        /// Options; see the properties.
        public init(isolatesNetwork: Bool = false) {
            self.isolatesNetwork = isolatesNetwork
        }
    }

    /// The user the job runs as: `setgroups(0)` (every supplementary group dropped), then `setresgid(gid)` and
    /// `setresuid(uid)`. Needs a runner running as root.
    public struct Credentials: Sendable, Equatable {
        /// Real, effective and saved user id.
        public var uid: UInt32
        /// Real, effective and saved group id.
        public var gid: UInt32

        /// Credentials; see the properties.
        public init(uid: UInt32, gid: UInt32) {
            self.uid = uid
            self.gid = gid
        }
    }

    /// The isolation level.
    public var level: Level
    /// Used with `.namespace` only (asking for a network namespace at another level is an error).
    public var namespaces: NamespaceOptions
    /// The hostname in the job's own UTS namespace (`.namespace` only); nil keeps the host's name. At most 64 bytes
    /// (the kernel's limit, reported as a `.setHostname` failure).
    public var hostname: String?
    /// Applied in order with `prlimit64`; one entry per kind at most.
    public var resourceLimits: [ResourceLimit]
    /// `PR_SET_NO_NEW_PRIVS`: execve can never grant privileges (setuid bits, file capabilities) to the job.
    public var noNewPrivileges: Bool
    /// Whether the job runs without any capability: after every set-up step that needs one (cgroups, mounts,
    /// hostname, loopback, rlimits, credentials), the child empties its bounding set (`PR_CAPBSET_DROP`), its ambient
    /// set (`PR_CAP_AMBIENT_CLEAR_ALL`) and its effective, permitted and inheritable sets (`capset`). An execve then
    /// grants no capability, even to uid 0: a root job can no longer unmount its /proc or /sys, `setns` into another
    /// namespace, or mount a cgroup file system. (It still owns every file uid 0 owns: run it as another user with
    /// `credentials` to take that away.) Dropping the bounding set needs CAP_SETPCAP unless it is empty already.
    ///
    /// Unless set, it follows the level: true at `.namespace` (which a root runner's jobs could otherwise leave with
    /// `umount /proc` or `nsenter`), false at the others (a root runner's job keeps root's capabilities, as before).
    /// Set it to decide yourself; a later change of `level` then changes nothing here.
    public var dropsCapabilities: Bool {
        get { capabilityChoice ?? (level == .namespace) }
        set { capabilityChoice = newValue }
    }
    /// The explicit choice for `dropsCapabilities`; nil follows the level. (Equality compares the choice, so an
    /// explicit true at `.namespace` differs from the default that gives the same.)
    private var capabilityChoice: Bool?
    /// nil: the runner's own user.
    public var credentials: Credentials?
    /// Absolute paths of `cgroup.procs` files (cgroup v1: one per hierarchy; v2: one). The supervisor opens them
    /// (O_WRONLY | O_CLOEXEC) before the clone and the child writes "0" into each before it does anything else of
    /// the job's, so the job is in its cgroups from its first instruction. At most 16.
    public var cgroupProcsFiles: [String]

    /// The default limits: no core dumps.
    public static let defaultResourceLimits = [ResourceLimit(.coreSize, 0)]

    /// `.processGroup`, no-new-privileges, core size 0: what every job gets unless it asks otherwise.
    public static let `default` = ProcessIsolation()

    /// An isolation; see the properties. `dropsCapabilities` nil follows the level (true at `.namespace` only).
    public init(
        level: Level = .processGroup,
        namespaces: NamespaceOptions = NamespaceOptions(),
        hostname: String? = nil,
        resourceLimits: [ResourceLimit] = ProcessIsolation.defaultResourceLimits,
        noNewPrivileges: Bool = true,
        dropsCapabilities: Bool? = nil,
        credentials: Credentials? = nil,
        cgroupProcsFiles: [String] = []
    ) {
        self.level = level
        self.namespaces = namespaces
        self.hostname = hostname
        self.resourceLimits = resourceLimits
        self.noNewPrivileges = noNewPrivileges
        self.capabilityChoice = dropsCapabilities
        self.credentials = credentials
        self.cgroupProcsFiles = cgroupProcsFiles
    }

    /// Sets `limit`, replacing a limit of the same kind.
    public mutating func setLimit(_ limit: ResourceLimit) {
        resourceLimits.removeAll { $0.kind == limit.kind }
        resourceLimits.append(limit)
    }
}

/// One rlimit for the job.
public struct ResourceLimit: Sendable, Equatable {
    /// Which rlimit.
    public enum Kind: Sendable, Equatable, CaseIterable, CustomStringConvertible {
        /// RLIMIT_CPU, in seconds: SIGXCPU at the soft limit, SIGKILL at the hard one.
        case cpuSeconds
        /// RLIMIT_AS, in bytes.
        case addressSpace
        /// RLIMIT_NOFILE: the highest fd number plus one.
        case openFiles
        /// RLIMIT_FSIZE, in bytes: a write past it fails and raises SIGXFSZ.
        case fileSize
        /// RLIMIT_NPROC: processes of the job's real user (ignored by the kernel for root: use with `credentials`,
        /// or the cgroup pids limit).
        case processes
        /// RLIMIT_CORE, in bytes.
        case coreSize

        /// The C name, e.g. "RLIMIT_NOFILE".
        public var description: String {
            switch self {
            case .cpuSeconds: "RLIMIT_CPU"
            case .addressSpace: "RLIMIT_AS"
            case .openFiles: "RLIMIT_NOFILE"
            case .fileSize: "RLIMIT_FSIZE"
            case .processes: "RLIMIT_NPROC"
            case .coreSize: "RLIMIT_CORE"
            }
        }
    }

    /// Which rlimit.
    public var kind: Kind
    /// The soft limit; nil = unlimited. Not above `hard`.
    public var soft: UInt64?
    /// The hard limit; nil = unlimited.
    public var hard: UInt64?

    /// A limit with separate soft and hard values (nil = unlimited).
    public init(_ kind: Kind, soft: UInt64?, hard: UInt64?) {
        self.kind = kind
        self.soft = soft
        self.hard = hard
    }

    /// A limit whose soft and hard values are both `value`.
    public init(_ kind: Kind, _ value: UInt64) {
        self.init(kind, soft: value, hard: value)
    }
}

/// An environment variable that marks every process of one job (`NAME=value` in /proc/<pid>/environ).
public struct EnvironmentMarker: Sendable, Equatable {
    /// The variable's name.
    public var name: String
    /// Its value: unique per job, so that two jobs' processes are never confused.
    public var value: String

    /// A marker; see the properties.
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}
