import Foundation
import ProcessSupervision
import RunnerProtocol
import Synchronization

/// The isolation contexts of one attempt — its work folder and, at level `cgroup`, its cgroup — from set-up to
/// removal, and what they measured.
final class JobContainment: Sendable {
    let plan: IsolationPlan
    let workDirectory: String
    let cgroup: JobCgroup?
    private let host: IsolationHost
    private let peak = Mutex(PeakResidentTracker())
    private let mainPID = Mutex<Int32?>(nil)

    private init(plan: IsolationPlan, workDirectory: String, cgroup: JobCgroup?, host: IsolationHost) {
        self.plan = plan
        self.workDirectory = workDirectory
        self.cgroup = cgroup
        self.host = host
    }

    /// Makes the work folder and the cgroup (with the limits written). Nothing is left behind when it fails.
    static func create(plan: IsolationPlan, host: IsolationHost) async throws(IsolationError) -> JobContainment {
        let folder = try await host.workspace.create(name: plan.contextName)
        var cgroup: JobCgroup?
        if plan.level >= .cgroup, let driver = host.cgroups {
            do {
                cgroup = try driver.create(name: plan.contextName, limits: plan.limits.cgroupLimits)
            } catch {
                await host.workspace.remove(path: folder)
                throw IsolationError(.cgroup, "cannot create the job's cgroup: \(error.message)")
            }
        }
        return JobContainment(plan: plan, workDirectory: folder, cgroup: cgroup, host: host)
    }

    /// `create`, its error as a value: for a containment made while the claim is in flight, kept or discarded once
    /// the claim has answered.
    static func attempt(plan: IsolationPlan, host: IsolationHost) async -> Result<JobContainment, IsolationError> {
        do throws(IsolationError) {
            return .success(try await create(plan: plan, host: host))
        } catch {
            return .failure(error)
        }
    }

    /// The process-level isolation for the spawn.
    func processIsolation(hostname: String) -> ProcessIsolation {
        var limits = ProcessIsolation.defaultResourceLimits
        if let seconds = plan.limits.cpuSeconds {
            // The soft limit sends SIGXCPU (which a job may catch); the hard one, a second later, SIGKILL.
            limits.append(ResourceLimit(.cpuSeconds, soft: UInt64(seconds), hard: UInt64(seconds) + 1))
        }
        if let files = plan.limits.openFiles { limits.append(ResourceLimit(.openFiles, UInt64(files))) }
        if let size = plan.limits.fileSizeBytes { limits.append(ResourceLimit(.fileSize, UInt64(size))) }
        let level = plan.level.processLevel
        return ProcessIsolation(
            level: level, namespaces: .init(isolatesNetwork: level == .namespace && plan.network == .none),
            hostname: level == .namespace ? hostname : nil, resourceLimits: limits,
            credentials: host.configuration.runAs.map { .init(uid: $0.uid, gid: $0.gid) },
            cgroupProcsFiles: cgroup.map { host.cgroups?.procsFiles($0) ?? [] } ?? [])
    }

    /// Remembers the main process for sampling.
    func started(pid: Int32) { mainPID.withLock { $0 = pid } }

    /// What the job uses now: from its cgroup, else from its session's processes. Also keeps the sampled peak.
    func sample() -> (cpu: Duration, residentBytes: UInt64)? {
        if let cgroup, let driver = host.cgroups, let usage = try? driver.usage(cgroup) {
            return ((usage.totalCPUTime ?? .zero), usage.memoryCurrentBytes ?? 0)
        }
        guard let pid = mainPID.withLock({ $0 }) else { return nil }
        let selection: ProcessSelection = plan.level == .none ? .pids([pid]) : .session(pid)
        let usage = host.sampler.treeUsage(selection)
        peak.withLock { $0.record(usage) }
        return (usage.userCPUTime + usage.systemCPUTime, usage.residentBytes)
    }

    /// The main process's own peak (ru_maxrss from its wait, which covers the children it waited for), so that a
    /// job ending before its first sample still has a sampled peak. Only when it is clearly above the runner's own
    /// peak: a child cloned with the runner's memory (vfork-like, until its exec) has the runner's peak folded into
    /// its ru_maxrss, so a figure near it says nothing about the job.
    func recordMainProcessPeak(bytes: Int) {
        guard bytes > 0, UInt64(bytes) > host.runnerPeak.bytes() + RunnerPeakMemory.margin else { return }
        peak.withLock {
            $0.record(
                ProcessTreeUsage(pids: [], userCPUTime: .zero, systemCPUTime: .zero, residentBytes: UInt64(bytes)))
        }
    }

    /// Undoes `create` for an attempt that never ran (its claim refused it): kills and removes the cgroup and
    /// gives back the folder even when the runner keeps work folders (nothing of a job ever was in it).
    func discard(logger: Logger) async {
        await removeCgroup(logger: logger)
        await releaseFolder(logger: logger)
    }

    /// Reads the cgroup's counters, kills what is left in it, removes it and the work folder (unless kept).
    /// Returns the accounting for the result.
    func finish(logger: Logger) async -> JobAccounting {
        var accounting = JobAccounting(
            isolation: plan.level, requestedIsolation: plan.fellBack ? plan.requested : nil, network: plan.network,
            limits: plan.limits)
        if let cgroup, let driver = host.cgroups {
            if let usage = try? driver.usage(cgroup) {
                accounting.peakMemoryBytes = usage.memoryPeakBytes ?? usage.memoryCurrentBytes
                accounting.peakMemorySource = usage.memoryPeakBytes == nil ? "sampled" : "cgroup"
                accounting.processes = usage.pidsPeak
                accounting.oomKills = usage.oomKillCount ?? 0
                accounting.cgroupUserCPU = usage.userCPUTime
                accounting.cgroupSystemCPU = usage.systemCPUTime
            }
            await removeCgroup(logger: logger)
        } else {
            let sampled = peak.withLock { $0.peakBytes }
            if sampled > 0 {
                accounting.peakMemoryBytes = sampled
                accounting.peakMemorySource = "sampled"
            }
        }
        if !host.configuration.keepWorkFolders { await releaseFolder(logger: logger) }
        return accounting
    }

    /// Kills what is left in the cgroup and removes it.
    private func removeCgroup(logger: Logger) async {
        guard let cgroup, let driver = host.cgroups else { return }
        do {
            try await driver.killAndRemove(cgroup, deadline: .now + .seconds(10))
        } catch {
            logger.warning("could not remove the job's cgroup: \(error.message)", ["cgroup": cgroup.name])
        }
    }

    /// Gives the work folder back: kept as a spare when left as made, else removed.
    private func releaseFolder(logger: Logger) async {
        // Why, in the one line: the first entry that cannot be removed (e.g. made immutable by a job run as root).
        if !(await host.workspace.release(path: workDirectory)),
            let reason = await host.workspace.removalFailure(path: workDirectory)
        {
            logger.warning("could not remove the job's work folder: \(reason)", ["path": workDirectory])
        }
    }
}

/// What a job's isolation measured and what was in force, for its result and terminal event.
struct JobAccounting: Sendable, Hashable {
    var isolation: IsolationLevel
    /// Set only when the runner fell back from this level.
    var requestedIsolation: IsolationLevel?
    var network: NetworkMode
    var limits: JobLimits
    var peakMemoryBytes: UInt64?
    /// `cgroup` or `sampled`.
    var peakMemorySource: String?
    var processes: UInt64?
    var oomKills: UInt64 = 0
    /// CPU time of the whole cgroup (also of processes nobody waited for).
    var cgroupUserCPU: Duration?
    var cgroupSystemCPU: Duration?
}

extension JobLimits {
    var cgroupLimits: CgroupLimits {
        CgroupLimits(
            memoryBytes: memoryBytes.map(UInt64.init), pids: pids.map(UInt64.init),
            cpuMillis: cpuMillis.map(UInt64.init))
    }
}

extension IsolationLevel {
    /// The process-level part of the level: `cgroup` is `namespace` plus the job's cgroup.
    var processLevel: ProcessIsolation.Level {
        switch self {
        case .none: .none
        case .processGroup: .processGroup
        case .namespace, .cgroup: .namespace
        }
    }
}
