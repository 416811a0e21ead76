import Glibc

/// Job cgroups on cgroup v1: one directory per controller hierarchy (memory, pids, cpu and cpuacct, which may be
/// co-mounted, and freezer), each under the runner's parent in that hierarchy.
public struct CgroupV1Driver: CgroupDriver {
    /// The controllers a job joins where they are mounted: memory and pids for their limits and counters, cpu for the
    /// quota and shares, cpuacct for CPU time, freezer so that a kill cannot be outrun by fork.
    public static let usedControllers = ["memory", "pids", "cpu", "cpuacct", "freezer"]

    /// One hierarchy the driver uses, with the runner's parent in it.
    struct Hierarchy: Sendable {
        var controllers: [String]
        var mountPoint: String
        var parentDirectory: String
    }

    private let hierarchies: [Hierarchy]
    private let fileSystem: any CgroupFileSystem
    private let teardown: CgroupTeardown

    /// A driver for the hierarchies that carry a used controller; the others (cpuset, devices, ...) are left alone.
    public init(
        hierarchies: [CgroupV1Hierarchy], parent: CgroupParent,
        fileSystem: any CgroupFileSystem = LiveCgroupFileSystem()
    ) {
        self.hierarchies = hierarchies.filter { !Set($0.controllers).isDisjoint(with: Self.usedControllers) }.map {
            Hierarchy(
                controllers: $0.controllers, mountPoint: $0.mountPoint,
                parentDirectory: parent.directory(mountPoint: $0.mountPoint, ownDirectory: $0.ownDirectory))
        }
        self.fileSystem = fileSystem
        self.teardown = CgroupTeardown(fileSystem: fileSystem)
    }

    private init(hierarchies: [Hierarchy], fileSystem: any CgroupFileSystem) {
        self.hierarchies = hierarchies
        self.fileSystem = fileSystem
        self.teardown = CgroupTeardown(fileSystem: fileSystem)
    }

    /// `.v1`.
    public var version: CgroupVersion { .v1 }

    /// The parent's directory in each used hierarchy.
    public var parentDirectories: [String] { hierarchies.map(\.parentDirectory) }

    /// Creates the parent directory (and missing directories above it) in every used hierarchy.
    public func prepareParent() throws(CgroupError) -> CgroupPreparation {
        for hierarchy in hierarchies {
            try fileSystem.makeDirectories(hierarchy.parentDirectory, below: hierarchy.mountPoint)
        }
        let mounted = Set(hierarchies.flatMap(\.controllers))
        return CgroupPreparation(
            parentDirectories: parentDirectories,
            controllers: Self.usedControllers.filter(mounted.contains),
            missingControllers: Self.usedControllers.filter { !mounted.contains($0) }.map {
                "\($0): no cgroup v1 hierarchy carries it"
            })
    }

    /// mkdir in each used hierarchy, then memory.limit_in_bytes (+ memory.memsw.limit_in_bytes where present, so the
    /// job cannot swap past it), pids.max, cpu.cfs_period_us + cpu.cfs_quota_us, cpu.shares.
    public func create(name: String, limits: CgroupLimits) throws(CgroupError) -> JobCgroup {
        let location = parentDirectories.first ?? "cgroup v1"
        try validateCgroupName(name, under: location)
        try limits.validate(for: joinPath(location, name))
        for controller in limits.neededControllers where directory(of: controller, name: name) == nil {
            throw CgroupError(
                code: .controllerMissing, path: location,
                message: "the \(controller) limit needs the cgroup v1 \(controller) controller, which is not mounted")
        }
        let job = jobCgroup(named: name)
        var created: [String] = []
        do {
            for directory in job.directories {
                try fileSystem.makeDirectory(directory)
                created.append(directory)
            }
            try write(limits, name: name)
        } catch {
            for directory in created.reversed() { try? fileSystem.removeDirectory(directory) }
            throw error
        }
        return job
    }

    /// cgroup.procs of each of the job's directories.
    public func procsFiles(_ job: JobCgroup) -> [String] {
        job.directories.map { joinPath($0, "cgroup.procs") }
    }

    /// memory.usage_in_bytes, memory.max_usage_in_bytes, memory.limit_in_bytes, `oom_kill` of memory.oom_control;
    /// cpuacct.usage_user/usage_sys (ns) or else cpuacct.stat (ticks); pids.current, pids.peak, pids.events; cpu.stat.
    public func usage(_ job: JobCgroup) throws(CgroupError) -> CgroupUsage {
        var usage = CgroupUsage()
        if let memory = directory(of: "memory", name: job.name) {
            usage.memoryCurrentBytes = try fileSystem.readNumber(joinPath(memory, "memory.usage_in_bytes"))
            usage.memoryPeakBytes = try fileSystem.readNumber(joinPath(memory, "memory.max_usage_in_bytes"))
            // "Unlimited" reads as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB pages).
            usage.memoryLimitBytes = try fileSystem.readNumber(joinPath(memory, "memory.limit_in_bytes")).flatMap {
                $0 >= 1 << 62 ? nil : $0
            }
            usage.oomKillCount = try fileSystem.readKeyedNumbers(joinPath(memory, "memory.oom_control"))?["oom_kill"]
        }
        if let cpuacct = directory(of: "cpuacct", name: job.name) {
            if let user = try fileSystem.readNumber(joinPath(cpuacct, "cpuacct.usage_user")),
                let system = try fileSystem.readNumber(joinPath(cpuacct, "cpuacct.usage_sys"))
            {
                usage.userCPUTime = .nanoseconds(Int64(clamping: user))
                usage.systemCPUTime = .nanoseconds(Int64(clamping: system))
            } else if let stat = try fileSystem.readKeyedNumbers(joinPath(cpuacct, "cpuacct.stat")) {
                let tick = Duration.seconds(1) / Int(System.clockTicksPerSecond())
                usage.userCPUTime = stat["user"].map { tick * Int(clamping: $0) }
                usage.systemCPUTime = stat["system"].map { tick * Int(clamping: $0) }
            }
        }
        if let pids = directory(of: "pids", name: job.name) {
            usage.pidsCurrent = try fileSystem.readNumber(joinPath(pids, "pids.current"))
            usage.pidsPeak = try fileSystem.readNumber(joinPath(pids, "pids.peak"))
            usage.pidsLimitHits = try fileSystem.readKeyedNumbers(joinPath(pids, "pids.events"))?["max"]
        }
        if let cpu = directory(of: "cpu", name: job.name),
            let stat = try fileSystem.readKeyedNumbers(joinPath(cpu, "cpu.stat"))
        {
            usage.cpuPeriods = stat["nr_periods"]
            usage.cpuThrottledPeriods = stat["nr_throttled"]
            usage.cpuThrottledTime = stat["throttled_time"].map { .nanoseconds(Int64(clamping: $0)) }
        }
        return usage
    }

    /// Freeze (freezer.state FROZEN), SIGKILL every member, thaw, in rounds until the cgroup is empty.
    public func kill(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {
        let freezers = directory(of: "freezer", name: job.name).map { [CgroupFreezer.v1(directory: $0)] } ?? []
        try await teardown.killMembers(
            of: job.directories, freezers: freezers.filter { fileSystem.fileExists($0.controlFile) },
            deadline: deadline)
    }

    /// Waits for each directory to empty and removes it, EBUSY retried until `deadline`.
    public func remove(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {
        for directory in job.directories {
            try await teardown.removeTree(directory, deadline: deadline)
        }
    }

    /// The names under the parent in any used hierarchy (a crash between two mkdirs leaves some in one only).
    public func jobCgroups(namePrefix: String) throws(CgroupError) -> [JobCgroup] {
        var names = Set<String>()
        for hierarchy in hierarchies {
            do {
                names.formUnion(try fileSystem.subdirectories(of: hierarchy.parentDirectory))
            } catch let error where error.errno == ENOENT {
                continue
            }
        }
        return names.filter { $0.hasPrefix(namePrefix) }.sorted().map(jobCgroup(named:))
    }

    /// The directories beside the parent in any used hierarchy.
    public func siblingParentNames() -> [String] {
        var names = Set<String>()
        for hierarchy in hierarchies {
            let above = dirname(of: hierarchy.parentDirectory)
            names.formUnion((try? fileSystem.subdirectories(of: above)) ?? [])
        }
        let own = Set(hierarchies.map { basename(of: $0.parentDirectory) })
        return names.subtracting(own).sorted()
    }

    /// This driver with `name` beside the parent as its parent, in every used hierarchy.
    public func sibling(parentName name: String) -> (any CgroupDriver)? {
        guard (try? validateCgroupName(name, under: "")) != nil else { return nil }
        return CgroupV1Driver(
            hierarchies: hierarchies.map {
                Hierarchy(
                    controllers: $0.controllers, mountPoint: $0.mountPoint,
                    parentDirectory: joinPath(dirname(of: $0.parentDirectory), name))
            }, fileSystem: fileSystem)
    }

    /// The members of every directory of `job`, their child cgroups included.
    public func members(of job: JobCgroup) throws(CgroupError) -> [Int32] {
        var pids = Set<Int32>()
        for directory in job.directories { pids.formUnion(try teardown.members(of: directory)) }
        return pids.sorted()
    }

    /// The newest mtime of the parent's directories.
    public func parentModificationTime() -> Double? {
        parentDirectories.compactMap(fileSystem.modificationTime).max()
    }

    /// `utimensat` on each of the parent's directories.
    public func touchParent() {
        for directory in parentDirectories { fileSystem.touch(directory) }
    }

    private func jobCgroup(named name: String) -> JobCgroup {
        JobCgroup(name: name, directories: hierarchies.map { joinPath($0.parentDirectory, name) })
    }

    /// The job's directory in the hierarchy that carries `controller`, nil when none does.
    private func directory(of controller: String, name: String) -> String? {
        hierarchies.first { $0.controllers.contains(controller) }.map { joinPath($0.parentDirectory, name) }
    }

    private func write(_ limits: CgroupLimits, name: String) throws(CgroupError) {
        if let bytes = limits.memoryBytes, let memory = directory(of: "memory", name: name) {
            // memsw (memory + swap) may never be below the memory limit: set the memory limit first.
            try fileSystem.writeFile(joinPath(memory, "memory.limit_in_bytes"), String(bytes))
            let swapLimit = joinPath(memory, "memory.memsw.limit_in_bytes")
            if fileSystem.fileExists(swapLimit) { try fileSystem.writeFile(swapLimit, String(bytes)) }
        }
        if let pids = limits.pids, let directory = directory(of: "pids", name: name) {
            try fileSystem.writeFile(joinPath(directory, "pids.max"), String(pids))
        }
        if let cpu = directory(of: "cpu", name: name) {
            if let quota = limits.cpuQuotaMicroseconds {
                try fileSystem.writeFile(joinPath(cpu, "cpu.cfs_period_us"), String(CgroupLimits.cpuPeriodMicroseconds))
                try fileSystem.writeFile(joinPath(cpu, "cpu.cfs_quota_us"), String(quota))
            }
            if let weight = limits.cpuWeight {
                // systemd's mapping: weight 100 (the v2 default) is 1024 shares (the v1 default).
                try fileSystem.writeFile(joinPath(cpu, "cpu.shares"), String(max(2, weight * 1024 / 100)))
            }
        }
    }
}
