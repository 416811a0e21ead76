/// The limits of one job's cgroup; nil leaves a resource unlimited.
public struct CgroupLimits: Sendable, Equatable {
    /// Memory limit in bytes (v1 memory.limit_in_bytes and memsw, v2 memory.max with memory.swap.max 0).
    public var memoryBytes: UInt64?
    /// Most processes and threads at once (pids.max).
    public var pids: UInt64?
    /// CPU quota in millicores, 1000 = one core (a quota of millis×100 µs per 100 ms period). At least 10.
    public var cpuMillis: UInt64?
    /// Relative CPU weight on the cgroup v2 scale, 1...10000 (default 100); v1 cpu.shares = weight × 1024 / 100.
    public var cpuWeight: UInt64?

    /// Limits; see the properties.
    public init(memoryBytes: UInt64? = nil, pids: UInt64? = nil, cpuMillis: UInt64? = nil, cpuWeight: UInt64? = nil) {
        self.memoryBytes = memoryBytes
        self.pids = pids
        self.cpuMillis = cpuMillis
        self.cpuWeight = cpuWeight
    }

    /// The period of the CPU quota: 100 ms, as the kernel's default.
    public static let cpuPeriodMicroseconds: UInt64 = 100_000

    /// The quota per period for `cpuMillis`.
    var cpuQuotaMicroseconds: UInt64? { cpuMillis.map { $0 * Self.cpuPeriodMicroseconds / 1000 } }

    /// The controllers these limits need, by their kernel names.
    var neededControllers: [String] {
        var names: [String] = []
        if memoryBytes != nil { names.append("memory") }
        if pids != nil { names.append("pids") }
        if cpuMillis != nil || cpuWeight != nil { names.append("cpu") }
        return names
    }

    /// Throws `.invalidArgument` for a value the kernel would refuse or misread.
    func validate(for path: String) throws(CgroupError) {
        if let memoryBytes, memoryBytes < 1 << 20 {
            throw .invalid(path, "memory limit \(memoryBytes) bytes is below the 1 MiB minimum")
        }
        if let pids, pids < 1 { throw .invalid(path, "pids limit must be at least 1") }
        if let cpuMillis, cpuMillis < 10 || cpuMillis > 1_000_000 {
            throw .invalid(path, "CPU quota \(cpuMillis) millicores is outside 10...1000000")
        }
        if let cpuWeight, cpuWeight < 1 || cpuWeight > 10_000 {
            throw .invalid(path, "CPU weight \(cpuWeight) is outside 1...10000")
        }
    }
}

/// What a job's cgroup has counted, read from the cgroup's own files; nil where this kernel or hierarchy has no such
/// counter.
public struct CgroupUsage: Sendable, Equatable {
    /// Memory charged now (v1 memory.usage_in_bytes, v2 memory.current).
    public var memoryCurrentBytes: UInt64?
    /// Most memory ever charged (v1 memory.max_usage_in_bytes, v2 memory.peak where the kernel has it).
    public var memoryPeakBytes: UInt64?
    /// The memory limit in force (nil when unlimited).
    public var memoryLimitBytes: UInt64?
    /// Processes the OOM killer killed in this cgroup (v1 `oom_kill` of memory.oom_control, v2 `oom_kill` of
    /// memory.events).
    public var oomKillCount: UInt64?
    /// CPU time in user mode of everything that ran in the cgroup.
    public var userCPUTime: Duration?
    /// CPU time in kernel mode of everything that ran in the cgroup.
    public var systemCPUTime: Duration?
    /// Processes and threads in the cgroup now (pids.current).
    public var pidsCurrent: UInt64?
    /// Most processes and threads at once (pids.peak where the kernel has it).
    public var pidsPeak: UInt64?
    /// Forks refused because of pids.max (`max` of pids.events).
    public var pidsLimitHits: UInt64?
    /// CPU quota periods that had runnable work (`nr_periods` of cpu.stat).
    public var cpuPeriods: UInt64?
    /// Periods in which the quota ran out (`nr_throttled`).
    public var cpuThrottledPeriods: UInt64?
    /// Time spent throttled (v1 `throttled_time` ns, v2 `throttled_usec`).
    public var cpuThrottledTime: Duration?

    /// Usage; normally read by a driver.
    public init(
        memoryCurrentBytes: UInt64? = nil, memoryPeakBytes: UInt64? = nil, memoryLimitBytes: UInt64? = nil,
        oomKillCount: UInt64? = nil, userCPUTime: Duration? = nil, systemCPUTime: Duration? = nil,
        pidsCurrent: UInt64? = nil, pidsPeak: UInt64? = nil, pidsLimitHits: UInt64? = nil, cpuPeriods: UInt64? = nil,
        cpuThrottledPeriods: UInt64? = nil, cpuThrottledTime: Duration? = nil
    ) {
        self.memoryCurrentBytes = memoryCurrentBytes
        self.memoryPeakBytes = memoryPeakBytes
        self.memoryLimitBytes = memoryLimitBytes
        self.oomKillCount = oomKillCount
        self.userCPUTime = userCPUTime
        self.systemCPUTime = systemCPUTime
        self.pidsCurrent = pidsCurrent
        self.pidsPeak = pidsPeak
        self.pidsLimitHits = pidsLimitHits
        self.cpuPeriods = cpuPeriods
        self.cpuThrottledPeriods = cpuThrottledPeriods
        self.cpuThrottledTime = cpuThrottledTime
    }

    /// The OOM killer killed at least one process of the cgroup. A job that killed itself with SIGKILL has count 0.
    public var wasOOMKilled: Bool { (oomKillCount ?? 0) > 0 }

    /// User plus system CPU time, when both are known.
    public var totalCPUTime: Duration? {
        guard let userCPUTime, let systemCPUTime else { return nil }
        return userCPUTime + systemCPUTime
    }
}

/// One job's cgroup, as a driver made it: its name under the runner's parent and its directory in every hierarchy
/// it spans (one on v2; one per controller hierarchy on v1).
public struct JobCgroup: Sendable, Hashable {
    /// The name under the parent (the runner's choice, e.g. "job-<id>").
    public var name: String
    /// The cgroup's directory in each hierarchy.
    public var directories: [String]

    /// A job cgroup; normally made by a driver.
    public init(name: String, directories: [String]) {
        self.name = name
        self.directories = directories
    }
}

/// Where the runner keeps its job cgroups, in each hierarchy.
public enum CgroupParent: Sendable, Equatable {
    /// A child of the runner's own cgroup (the delegated layout, e.g. under a systemd unit with Delegate=yes).
    case belowOwnCgroup(String)
    /// A path from the hierarchy's root, e.g. "/nativerunner".
    case fromRoot(String)

    /// The parent's directory in a hierarchy mounted at `mountPoint` where the runner's own cgroup is `ownDirectory`.
    func directory(mountPoint: String, ownDirectory: String) -> String {
        switch self {
        case .belowOwnCgroup(let name): joinPath(ownDirectory, name)
        case .fromRoot(let path): joinPath(mountPoint, path)
        }
    }
}

/// What `prepareParent()` did.
public struct CgroupPreparation: Sendable, Equatable, CustomStringConvertible {
    /// The parent's directory in each hierarchy.
    public var parentDirectories: [String]
    /// Controllers the job cgroups get (v2: enabled in the parent's cgroup.subtree_control; v1: mounted).
    public var controllers: [String]
    /// Controllers the runner would use that are not there, each with why ("memory: not offered by ...").
    public var missingControllers: [String]
    /// v2 only: the leaf the runner's own processes were moved into so its cgroup could enable controllers for its
    /// children (the no-internal-processes rule); nil when nothing was moved.
    public var movedProcessesTo: String?

    /// A preparation report; normally made by a driver.
    public init(
        parentDirectories: [String], controllers: [String], missingControllers: [String],
        movedProcessesTo: String? = nil
    ) {
        self.parentDirectories = parentDirectories
        self.controllers = controllers
        self.missingControllers = missingControllers
        self.movedProcessesTo = movedProcessesTo
    }

    /// One line for the log.
    public var description: String {
        var text = "cgroup parent \(parentDirectories.joined(separator: ", ")); controllers: "
        text += controllers.isEmpty ? "none" : controllers.joined(separator: " ")
        if !missingControllers.isEmpty { text += "; missing: " + missingControllers.joined(separator: "; ") }
        if let movedProcessesTo { text += "; runner moved into \(movedProcessesTo)" }
        return text
    }
}

/// Which cgroup version a driver speaks.
public enum CgroupVersion: String, Sendable, Equatable {
    /// cgroup v1: one hierarchy per controller (or co-mounted group of controllers).
    case v1
    /// cgroup v2: one unified hierarchy.
    case v2
}

/// Creates, measures, kills and removes job cgroups under a parent the runner owns.
///
/// File reads and writes here are short cgroupfs operations that do not wait for anything outside the kernel, so the
/// synchronous methods may run on any thread; `kill` and `remove` wait with `Task.sleep` between polls.
public protocol CgroupDriver: Sendable {
    /// v1 or v2.
    var version: CgroupVersion { get }
    /// The parent's directory in each hierarchy the driver uses.
    var parentDirectories: [String] { get }
    /// Creates the parent (and, on v2, enables the controllers for its children). Idempotent; call at start.
    func prepareParent() throws(CgroupError) -> CgroupPreparation
    /// Creates the job's cgroup with `limits` written. Throws `.controllerMissing` (before creating anything) when a
    /// limit needs a controller that is not there, `.invalidArgument` for a bad name or value, and removes what it
    /// created when a write fails.
    func create(name: String, limits: CgroupLimits) throws(CgroupError) -> JobCgroup
    /// The `cgroup.procs` files the child writes "0" into before exec, in order: after the last write it is in the
    /// job's cgroup in every hierarchy.
    func procsFiles(_ job: JobCgroup) -> [String]
    /// The cgroup's counters now. Read them before `remove`: they go with the cgroup.
    func usage(_ job: JobCgroup) throws(CgroupError) -> CgroupUsage
    /// Kills every process in the cgroup and waits until it is empty (`.stillPopulated` if it is not by `deadline`).
    /// Runs to the end even if the calling task is cancelled.
    func kill(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError)
    /// Waits until the cgroup is empty in every hierarchy, then removes it (its own child cgroups first), retrying
    /// while the kernel answers EBUSY; throws a typed error naming the path if it cannot by `deadline`. A cgroup that
    /// is already gone is not an error. Runs to the end even if the calling task is cancelled.
    func remove(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError)
    /// The job cgroups under the parent whose names start with `namePrefix` (for orphan cleanup: the runner decides
    /// which belong to no running job, then kills and removes them).
    func jobCgroups(namePrefix: String) throws(CgroupError) -> [JobCgroup]
    /// The names of the directories beside the parent (in any hierarchy), the parent's own excluded: other runners'
    /// parents when each runner has its own below a shared cgroup.
    func siblingParentNames() -> [String]
    /// The same driver for the sibling parent `name` (a name from `siblingParentNames`), nil for a bad name.
    func sibling(parentName name: String) -> (any CgroupDriver)?
    /// The pids in the cgroup's directories and in their child cgroups (empty when gone).
    func members(of job: JobCgroup) throws(CgroupError) -> [Int32]
    /// The newest mtime (seconds since the epoch) of the parent's directories, nil when none is there.
    func parentModificationTime() -> Double?
    /// Sets the mtime of the parent's directories to now (a live runner's sign of life, see `parentModificationTime`).
    func touchParent()
}

extension CgroupDriver {
    /// The parent itself as a cgroup (its directories; its job cgroups are its children).
    public var parentCgroup: JobCgroup {
        JobCgroup(name: "", directories: parentDirectories)
    }

    /// Kills the cgroup's processes and removes it, within `deadline` in all.
    public func killAndRemove(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {
        try await kill(job, deadline: deadline)
        try await remove(job, deadline: deadline)
    }
}

/// `base/child` without doubled slashes.
func joinPath(_ base: String, _ child: String) -> String {
    let trimmedChild = child.drop { $0 == "/" }
    if trimmedChild.isEmpty { return base }
    return base.hasSuffix("/") ? base + trimmedChild : base + "/" + trimmedChild
}

/// The path without its last component.
func dirname(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// The last component of the path.
func basename(of path: String) -> String {
    path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
}

/// Throws `.invalidArgument` unless `name` is one path component the kernel accepts as a cgroup name.
func validateCgroupName(_ name: String, under parent: String) throws(CgroupError) {
    let bad =
        name.isEmpty || name == "." || name == ".." || name.utf8.count > 255
        || name.contains { $0 == "/" || $0 == "\n" || $0 == "\0" }
    if bad { throw .invalid(joinPath(parent, name), "'\(name)' is not a usable cgroup name") }
}
