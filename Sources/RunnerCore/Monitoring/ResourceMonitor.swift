import Foundation
import ProcessSupervision
import RunnerProtocol

/// Publishes `runner.resource_usage` every interval and removes isolation contexts that belong to no running job
/// (`isolation.cleanup`): job cgroups under the runner's parent and work folders under its work directory, left by
/// a run of this runner that died.
struct ResourceMonitor: Sendable {
    let host: IsolationHost
    let containments: RunningContainments
    let store: JobStore
    let runner: String
    let logger: Logger
    /// Where the host figures of each sample go for `/metrics` (nil: nowhere).
    var metrics: WorkerMetrics? = nil
    /// Other runners' contexts on this host whose runner is dead (nil: not looked for).
    var deadRunners: DeadRunnerContexts? = nil

    /// Every `interval`: usage event, then a cleanup pass. Until cancelled.
    func run(interval: Duration) async {
        var previousHost = try? host.sampler.hostCPUTimes()
        var previousJobs: [String: (cpu: Duration, at: ContinuousClock.Instant)] = [:]
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { break }
            // First, before anything that waits for Redis: a round stuck on an unreachable Redis still touches them.
            keepOwnContexts()
            let now = ContinuousClock.now
            let hostTimes = try? host.sampler.hostCPUTimes()
            var data: [String: JSONValue] = [:]
            var sample = WorkerMetrics.HostSample()
            if let hostTimes, let previousHost, let busy = hostTimes.busyPercent(since: previousHost) {
                data["host_cpu_percent"] = .double((busy * 10).rounded() / 10)
                sample.cpuPercent = busy
            }
            previousHost = hostTimes
            if let load = try? host.sampler.loadAverage() {
                data["load"] = .array([
                    .double(load.oneMinute), .double(load.fiveMinutes), .double(load.fifteenMinutes),
                ])
                sample.load = (load.oneMinute, load.fiveMinutes, load.fifteenMinutes)
            }
            if let memory = try? host.sampler.memory() {
                data["memory_used_bytes"] = .int(Int(clamping: memory.usedBytes))
                data["memory_total_bytes"] = .int(Int(clamping: memory.totalBytes))
                sample.memoryUsedBytes = memory.usedBytes
                sample.memoryTotalBytes = memory.totalBytes
            }
            metrics?.recordHost(sample)
            if let disk = try? host.sampler.diskSpace(of: host.configuration.workRoot) {
                data["work_disk_free_bytes"] = .int(Int(clamping: disk.availableBytes))
            }
            var jobs: [JSONValue] = []
            var seen: [String: (cpu: Duration, at: ContinuousClock.Instant)] = [:]
            for running in containments.all {
                guard let usage = running.containment.sample() else { continue }
                var job: [String: JSONValue] = [
                    "job": .string(running.jobId), "cpu_ms": .int(usage.cpu.milliseconds),
                    "rss_bytes": .int(Int(clamping: usage.residentBytes)),
                ]
                if let before = previousJobs[running.jobId], now > before.at {
                    let share = Double((usage.cpu - before.cpu).milliseconds) / Double((now - before.at).milliseconds)
                    job["cpu_percent"] = .double((share * 1000).rounded() / 10)
                }
                seen[running.jobId] = (usage.cpu, now)
                jobs.append(.object(job))
            }
            previousJobs = seen
            data["jobs"] = .array(jobs)
            do {
                try await store.emit(.runnerResourceUsage, runner: runner, data: .object(data), retry: .never)
            } catch {
                store.logEventWriteFailure(error, what: "resource usage", logger: logger)
            }
            await cleanUp()
        }
    }

    /// A live runner's sign of life to the others' `DeadRunnerContexts`: the mtime of its folder and cgroup parents
    /// set to now. What they (or an operator) removed meanwhile (this runner was paused past its lease) is made again.
    private func keepOwnContexts() {
        if pathExists(host.workspace.directory) {
            utimensat(AT_FDCWD, host.workspace.directory, nil, AT_SYMLINK_NOFOLLOW)
        } else {
            try? host.workspace.prepareNow()
        }
        if let driver = host.cgroups {
            if driver.parentDirectories.allSatisfy(pathExists) {
                driver.touchParent()
            } else {
                _ = try? driver.prepareParent()
            }
        }
    }

    /// Kills and removes leftover job cgroups, removes leftover work folders, and reports them in one
    /// `isolation.cleanup` event (none when nothing was left). `processes` are pids stopped by the caller (at start).
    @discardableResult
    func cleanUp(processes: [Int32] = []) async -> JSONValue? {
        keepOwnContexts()
        // List first, then read what is in use: a context reserved after the listing is not in it.
        let cgroups = (try? host.cgroups?.jobCgroups(namePrefix: "job-")) ?? []
        // Kept folders (`--keep-work-dirs`) are the operator's to remove.
        let folders = host.configuration.keepWorkFolders ? [] : await host.workspace.leftovers(keeping: [])
        let inUse = containments.contextNames
        var removedCgroups: [String] = []
        if let driver = host.cgroups {
            for cgroup in cgroups where !inUse.contains(cgroup.name) {
                do {
                    try await driver.killAndRemove(cgroup, deadline: .now + .seconds(10))
                    removedCgroups.append(cgroup.name)
                } catch {
                    logger.warning("could not remove a leftover cgroup: \(error.message)", ["cgroup": cgroup.name])
                }
            }
        }
        var removedFolders: [String] = []
        for folder in folders where !inUse.contains((folder as NSString).lastPathComponent) {
            // Kept for the next job, not left by a dead runner.
            if host.workspace.isSpare(folder) { continue }
            if await host.workspace.remove(path: folder) { removedFolders.append(folder) }
        }
        let dead = await deadRunners?.cleanUp(host: host, logger: logger) ?? []
        guard !removedCgroups.isEmpty || !removedFolders.isEmpty || !processes.isEmpty || !dead.isEmpty else {
            return nil
        }
        var fields: [String: JSONValue] = [
            "cgroups": .array(removedCgroups.map(JSONValue.string)),
            "work_dirs": .array(removedFolders.map(JSONValue.string)),
            "processes": .array(processes.map { .int(Int($0)) }),
        ]
        if !dead.isEmpty { fields["dead_runners"] = .array(dead) }
        let data = JSONValue.object(fields)
        let counts = (String(removedCgroups.count), String(removedFolders.count), String(processes.count))
        // Named only when there were any, as in the event: an empty `dead_runners=` reads like a value left out.
        if dead.isEmpty {
            logger.info(
                "removed leftover isolation contexts",
                ["cgroups": counts.0, "work_dirs": counts.1, "processes": counts.2])
        } else {
            logger.info(
                "removed leftover isolation contexts",
                [
                    "cgroups": counts.0, "work_dirs": counts.1, "processes": counts.2,
                    "dead_runners": dead.compactMap { $0["runner"]?.stringValue }.joined(separator: ","),
                ])
        }
        try? await store.emit(.isolationCleanup, runner: runner, data: data, retry: .never)
        return data
    }
}

/// The resource side of a runner's capacity, beside its slots.
struct ResourceCapacity: Sendable, Equatable {
    /// Memory declared by the admitted (running) jobs.
    var memoryReservedBytes: UInt64 = 0
    /// Jobs that wait for memory before they start.
    var waiting: Int = 0
}

/// A runner's capacity at one moment: what `runner.capacity_update` reports when it changes.
struct CapacitySnapshot: Sendable, Equatable {
    var state: RunnerState
    var total: Int
    var free: Int
    var resources: ResourceCapacity

    var eventData: JSONValue {
        [
            "state": .string(state.rawValue), "capacity_total": .int(total), "capacity_free": .int(free),
            "memory_reserved_bytes": .int(Int(clamping: resources.memoryReservedBytes)),
            "waiting_for_resources": .int(resources.waiting),
        ]
    }
}
