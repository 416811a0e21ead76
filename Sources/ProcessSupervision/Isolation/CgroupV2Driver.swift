import Glibc

/// Job cgroups on cgroup v2: one directory per job under the runner's parent in the unified hierarchy.
public struct CgroupV2Driver: CgroupDriver {
    /// The controllers the runner enables for its job cgroups where the hierarchy offers them.
    public static let usedControllers = ["cpu", "memory", "pids"]
    /// The leaf the runner's own processes move into when its cgroup must hand controllers to children: cgroup v2
    /// lets only a cgroup without processes of its own do that (the no-internal-processes rule; the root is exempt).
    public static let runnerLeafName = "supervisor"

    private let hierarchy: CgroupV2Hierarchy
    private let parentDirectory: String
    private let fileSystem: any CgroupFileSystem
    private let teardown: CgroupTeardown

    /// A driver for job cgroups under `parent` in `hierarchy`.
    public init(
        hierarchy: CgroupV2Hierarchy, parent: CgroupParent, fileSystem: any CgroupFileSystem = LiveCgroupFileSystem()
    ) {
        self.hierarchy = hierarchy
        self.parentDirectory = parent.directory(mountPoint: hierarchy.mountPoint, ownDirectory: hierarchy.ownDirectory)
        self.fileSystem = fileSystem
        self.teardown = CgroupTeardown(fileSystem: fileSystem)
    }

    private init(hierarchy: CgroupV2Hierarchy, parentDirectory: String, fileSystem: any CgroupFileSystem) {
        self.hierarchy = hierarchy
        self.parentDirectory = parentDirectory
        self.fileSystem = fileSystem
        self.teardown = CgroupTeardown(fileSystem: fileSystem)
    }

    /// `.v2`.
    public var version: CgroupVersion { .v2 }

    /// The one parent directory.
    public var parentDirectories: [String] { [parentDirectory] }

    /// Creates the parent (and the directories above it), then enables each used controller the hierarchy offers in
    /// cgroup.subtree_control of every cgroup from the mount's root down to the parent. When the runner's own cgroup
    /// is on that path and refuses (EBUSY: it has processes), its processes move into `<own>/supervisor` first.
    /// A controller that some cgroup on the path does not offer, or refuses to enable, is reported missing with why;
    /// only failing to create the parent throws.
    public func prepareParent() throws(CgroupError) -> CgroupPreparation {
        try fileSystem.makeDirectories(parentDirectory, below: hierarchy.mountPoint)
        var chain = [hierarchy.mountPoint]
        for component in parentDirectory.dropFirst(hierarchy.mountPoint.count).split(separator: "/") {
            chain.append(joinPath(chain[chain.count - 1], String(component)))
        }
        var movedTo: String?
        var missing: [String] = []
        var offered = Set(Self.usedControllers)
        for cgroup in chain {
            let available = try fileSystem.readWords(joinPath(cgroup, "cgroup.controllers"))
            for controller in Self.usedControllers where offered.contains(controller) && !available.contains(controller)
            {
                offered.remove(controller)
                missing.append(
                    "\(controller): not offered to \(cgroup) (cgroup.controllers: \(available.joined(separator: " ")))")
            }
            let enabled = try fileSystem.readWords(joinPath(cgroup, "cgroup.subtree_control"))
            for controller in Self.usedControllers where offered.contains(controller) && !enabled.contains(controller) {
                var refusal = enable(controller, in: cgroup)
                let isOwn = cgroup == hierarchy.ownDirectory && cgroup != hierarchy.mountPoint
                if let error = refusal, error.errno == EBUSY, isOwn, movedTo == nil {
                    movedTo = try moveProcesses(of: cgroup, into: joinPath(cgroup, Self.runnerLeafName))
                    refusal = enable(controller, in: cgroup)
                }
                if let refusal {
                    // Not fatal: the other controllers may still work; jobs that need this one are refused by create.
                    offered.remove(controller)
                    missing.append("\(controller): \(refusal.message)")
                }
            }
        }
        return CgroupPreparation(
            parentDirectories: [parentDirectory], controllers: Self.usedControllers.filter(offered.contains),
            missingControllers: missing, movedProcessesTo: movedTo)
    }

    /// mkdir, then memory.max (+ memory.swap.max 0 where present, so the job cannot swap past it), pids.max,
    /// cpu.max "quota period", cpu.weight.
    public func create(name: String, limits: CgroupLimits) throws(CgroupError) -> JobCgroup {
        try validateCgroupName(name, under: parentDirectory)
        let directory = joinPath(parentDirectory, name)
        try limits.validate(for: directory)
        let enabled = try fileSystem.readWords(joinPath(parentDirectory, "cgroup.subtree_control"))
        for controller in limits.neededControllers where !enabled.contains(controller) {
            throw CgroupError(
                code: .controllerMissing, path: joinPath(parentDirectory, "cgroup.subtree_control"),
                message: "the \(controller) limit needs the cgroup v2 \(controller) controller, which is not enabled "
                    + "for \(parentDirectory) (subtree_control: \(enabled.isEmpty ? "empty" : enabled.joined(separator: " ")))"
            )
        }
        try fileSystem.makeDirectory(directory)
        do {
            try write(limits, in: directory)
        } catch {
            try? fileSystem.removeDirectory(directory)
            throw error
        }
        return JobCgroup(name: name, directories: [directory])
    }

    /// The job's one cgroup.procs.
    public func procsFiles(_ job: JobCgroup) -> [String] {
        job.directories.map { joinPath($0, "cgroup.procs") }
    }

    /// memory.current, memory.peak, memory.max, `oom_kill` of memory.events; cpu.stat (user_usec, system_usec,
    /// nr_periods, nr_throttled, throttled_usec); pids.current, pids.peak, `max` of pids.events.
    public func usage(_ job: JobCgroup) throws(CgroupError) -> CgroupUsage {
        var usage = CgroupUsage()
        guard let directory = job.directories.first else { return usage }
        func file(_ name: String) -> String { joinPath(directory, name) }
        usage.memoryCurrentBytes = try fileSystem.readNumber(file("memory.current"))
        usage.memoryPeakBytes = try fileSystem.readNumber(file("memory.peak"))
        usage.memoryLimitBytes = try fileSystem.readNumberOrMax(file("memory.max"))
        usage.oomKillCount = try fileSystem.readKeyedNumbers(file("memory.events"))?["oom_kill"]
        if let stat = try fileSystem.readKeyedNumbers(file("cpu.stat")) {
            usage.userCPUTime = stat["user_usec"].map { .microseconds(Int64(clamping: $0)) }
            usage.systemCPUTime = stat["system_usec"].map { .microseconds(Int64(clamping: $0)) }
            usage.cpuPeriods = stat["nr_periods"]
            usage.cpuThrottledPeriods = stat["nr_throttled"]
            usage.cpuThrottledTime = stat["throttled_usec"].map { .microseconds(Int64(clamping: $0)) }
        }
        usage.pidsCurrent = try fileSystem.readNumber(file("pids.current"))
        usage.pidsPeak = try fileSystem.readNumber(file("pids.peak"))
        usage.pidsLimitHits = try fileSystem.readKeyedNumbers(file("pids.events"))?["max"]
        return usage
    }

    /// "1" to cgroup.kill (the kernel kills every member and descendant at once, forks included), then waits until
    /// the cgroup is empty. A kernel without cgroup.kill (before 5.14) gets freeze + SIGKILL + thaw rounds instead.
    public func kill(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {
        var withoutKillFile: [String] = []
        for directory in job.directories where fileSystem.fileExists(directory) {
            let killFile = joinPath(directory, "cgroup.kill")
            if fileSystem.fileExists(killFile) {
                try fileSystem.writeFile(killFile, "1")
            } else {
                withoutKillFile.append(directory)
            }
        }
        if !withoutKillFile.isEmpty {
            let freezers = withoutKillFile.map(CgroupFreezer.v2(directory:)).filter {
                fileSystem.fileExists($0.controlFile)
            }
            try await teardown.killMembers(of: withoutKillFile, freezers: freezers, deadline: deadline)
        }
        try await teardown.waitUntilEmpty(job.directories, deadline: deadline)
    }

    /// Waits for the cgroup to empty and removes it, EBUSY retried until `deadline`.
    public func remove(_ job: JobCgroup, deadline: ContinuousClock.Instant) async throws(CgroupError) {
        for directory in job.directories {
            try await teardown.removeTree(directory, deadline: deadline)
        }
    }

    /// The child cgroups of the parent whose names start with `namePrefix` (the runner's leaf is never one).
    public func jobCgroups(namePrefix: String) throws(CgroupError) -> [JobCgroup] {
        let names: [String]
        do {
            names = try fileSystem.subdirectories(of: parentDirectory)
        } catch let error where error.errno == ENOENT {
            return []
        }
        return names.filter { $0.hasPrefix(namePrefix) }.map {
            JobCgroup(name: $0, directories: [joinPath(parentDirectory, $0)])
        }
    }

    /// The cgroups beside the parent (the runner's own leaf, if it is there, among them: it never matches a runner
    /// parent's name).
    public func siblingParentNames() -> [String] {
        let names = (try? fileSystem.subdirectories(of: dirname(of: parentDirectory))) ?? []
        return names.filter { $0 != basename(of: parentDirectory) }
    }

    /// This driver with the cgroup `name` beside the parent as its parent.
    public func sibling(parentName name: String) -> (any CgroupDriver)? {
        guard (try? validateCgroupName(name, under: "")) != nil else { return nil }
        return CgroupV2Driver(
            hierarchy: hierarchy, parentDirectory: joinPath(dirname(of: parentDirectory), name), fileSystem: fileSystem)
    }

    /// The members of `job`'s cgroup and of its child cgroups.
    public func members(of job: JobCgroup) throws(CgroupError) -> [Int32] {
        var pids = Set<Int32>()
        for directory in job.directories { pids.formUnion(try teardown.members(of: directory)) }
        return pids.sorted()
    }

    /// The parent's mtime.
    public func parentModificationTime() -> Double? { fileSystem.modificationTime(parentDirectory) }

    /// `utimensat` on the parent.
    public func touchParent() { fileSystem.touch(parentDirectory) }

    private func write(_ limits: CgroupLimits, in directory: String) throws(CgroupError) {
        func file(_ name: String) -> String { joinPath(directory, name) }
        if let bytes = limits.memoryBytes {
            try fileSystem.writeFile(file("memory.max"), String(bytes))
            if fileSystem.fileExists(file("memory.swap.max")) { try fileSystem.writeFile(file("memory.swap.max"), "0") }
        }
        if let pids = limits.pids {
            try fileSystem.writeFile(file("pids.max"), String(pids))
        }
        if let quota = limits.cpuQuotaMicroseconds {
            try fileSystem.writeFile(file("cpu.max"), "\(quota) \(CgroupLimits.cpuPeriodMicroseconds)")
        }
        if let weight = limits.cpuWeight {
            try fileSystem.writeFile(file("cpu.weight"), String(weight))
        }
    }

    /// "+controller" to `cgroup`'s cgroup.subtree_control: nil when it took, else the refusal saying which rule.
    private func enable(_ controller: String, in cgroup: String) -> CgroupError? {
        let file = joinPath(cgroup, "cgroup.subtree_control")
        do {
            try fileSystem.writeFile(file, "+" + controller)
            return nil
        } catch {
            let why =
                error.errno == EBUSY
                ? "it has processes of its own, and cgroup v2 lets only a cgroup without processes enable controllers "
                    + "for its children (move them into a leaf cgroup)"
                : System.describe(errno: error.errno)
            return CgroupError(
                code: .controllerNotEnabled, path: error.path, errno: error.errno,
                message: "cannot enable \(controller) in \(error.path): \(why)")
        }
    }

    /// Moves every process of `cgroup` into the leaf `leaf` (created if needed); returns the leaf. A process that
    /// exits meanwhile (ESRCH) is skipped.
    private func moveProcesses(of cgroup: String, into leaf: String) throws(CgroupError) -> String {
        if !fileSystem.fileExists(leaf) { try fileSystem.makeDirectory(leaf) }
        for pid in try fileSystem.readProcesses(joinPath(cgroup, "cgroup.procs")) {
            do {
                try fileSystem.writeFile(joinPath(leaf, "cgroup.procs"), String(pid))
            } catch let error where error.errno == ESRCH {
                continue
            }
        }
        return leaf
    }
}
