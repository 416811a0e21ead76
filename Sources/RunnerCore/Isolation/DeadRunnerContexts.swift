import Foundation
import ProcessSupervision
import RedisClient
import RunnerProtocol

/// Finds and removes the isolation contexts of OTHER runners of this runner's namespace and pool on this host whose
/// runner is dead: their work folders `<work root>/<namespace>.<runner>.<pool>` and their cgroup parents
/// `nativerunner-<namespace>.<runner>.<pool>` beside this runner's (below its own cgroup, or in `--cgroup-parent`).
/// Periodic work only (start and every `--monitor-interval`), never on a job's path.
///
/// A context is removed only when all of these hold, checked in this order:
/// - its name is exactly `runnerContextName` of this namespace and pool and some runner name (a sanitised name, which
///   carries a hash, cannot be mapped back to a runner and is left alone);
/// - none of its directories changed for `age` (a live runner touches them at start, before it takes its lease,
///   and every monitor round: see `IsolationHost.start`, `ResourceMonitor.cleanUp`);
/// - its runner's lease key does not exist (one pipelined EXISTS; on any Redis error nothing is done this round);
/// - still unchanged just before anything is killed.
/// Then what still runs in it (its cgroups' members, processes carrying its `NR_RUNNER`/`NR_NAMESPACE`/`NR_POOL`) is
/// killed, its cgroups and folders removed (not its folders under `--keep-work-dirs`). At most `limit` contexts a
/// round, taken in random order from the old ones.
struct DeadRunnerContexts: Sendable {
    /// Contexts removed at most per round; the rest wait for the next.
    static let limit = 4

    let client: RedisClient
    let keyspace: Keyspace
    /// This runner's name: its own context is never a candidate.
    let runner: String
    /// The full pool identity (`NR_POOL`); its first 8 characters are in the context names.
    let pool: String
    /// How long a context must have been left untouched: at least the lease TTL.
    let age: Duration

    /// One dead runner's context.
    struct Candidate: Equatable {
        var runner: String
        var contextName: String
    }

    /// The runner whose context `name` is, when it is exactly the context name of a runner of `namespace` and
    /// `pool` (and not `own`).
    static func runner(ofContext name: String, namespace: String, pool: String, own: String) -> String? {
        let prefix = namespace + "."
        let suffix = "." + pool.prefix(8)
        guard name.hasPrefix(prefix), name.hasSuffix(suffix), name.count > prefix.count + suffix.count else {
            return nil
        }
        let runner = String(name.dropFirst(prefix.count).dropLast(suffix.count))
        guard runner != own, Keyspace.isValidName(runner),
            runnerContextName(namespace: namespace, runner: runner, pool: pool) == name
        else { return nil }
        return runner
    }

    /// Removes up to `limit` dead runners' contexts; one report per runner removed (`runner`, `cgroups`,
    /// `work_dirs`, `processes`).
    func cleanUp(host: IsolationHost, logger: Logger) async -> [JSONValue] {
        let namespace = keyspace.namespace
        let root = host.configuration.workRoot
        let driver = host.cgroups
        var names = Set<String>()
        if JobWorkspace.unsafeReason(root) == nil {
            names.formUnion((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
        }
        let cgroupPrefix = "nativerunner-"
        for name in driver?.siblingParentNames() ?? [] where name.hasPrefix(cgroupPrefix) {
            names.insert(String(name.dropFirst(cgroupPrefix.count)))
        }
        let own = runner
        let candidates = names.sorted().compactMap { name -> Candidate? in
            Self.runner(ofContext: name, namespace: namespace, pool: pool, own: own).map {
                Candidate(runner: $0, contextName: name)
            }
        }
        func lastChange(_ candidate: Candidate) -> Double? {
            let folder = (root as NSString).appendingPathComponent(candidate.contextName)
            var times: [Double] = []
            var info = stat()
            if lstat(folder, &info) == 0 {
                times.append(Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
            }
            if let time = driver?.sibling(parentName: cgroupPrefix + candidate.contextName)?.parentModificationTime() {
                times.append(time)
            }
            return times.max()
        }
        let ageSeconds = Double(age.components.seconds) + Double(age.components.attoseconds) / 1e18
        func isOld(_ candidate: Candidate) -> Bool {
            guard let changed = lastChange(candidate) else { return false }
            return Date().timeIntervalSince1970 - changed >= ageSeconds
        }
        // In random order: contexts that stay (a paused runner's, whose lease holds) do not hold back the others.
        let old = Array(candidates.filter(isOld).shuffled().prefix(Self.limit))
        guard !old.isEmpty else { return [] }
        let replies: [RedisReply]
        do {
            replies = try await client.pipeline(
                old.map { RedisCommand(["EXISTS", keyspace.lease(runner: $0.runner)]) })
        } catch {
            logger.debug("not looking for dead runners' contexts this round: \(error)")
            return []
        }
        guard replies.count == old.count else { return [] }
        var reports: [JSONValue] = []
        for (candidate, reply) in zip(old, replies) where reply.int == 0 {
            // Touched meanwhile (a runner of that name starting): not dead.
            guard isOld(candidate) else { continue }
            reports.append(await remove(candidate, host: host, driver: driver, logger: logger))
        }
        return reports
    }

    /// Kills what runs in the context and removes its cgroups and folders.
    private func remove(
        _ candidate: Candidate, host: IsolationHost, driver: (any CgroupDriver)?, logger: Logger
    ) async -> JSONValue {
        var processes = Set<Int32>()
        var cgroups: [String] = []
        if let sibling = driver?.sibling(parentName: "nativerunner-" + candidate.contextName) {
            let parent = sibling.parentCgroup
            processes.formUnion((try? sibling.members(of: parent)) ?? [])
            let present = parent.directories.filter(pathExists)
            do {
                try await sibling.killAndRemove(parent, deadline: .now + .seconds(10))
                cgroups = present
            } catch {
                logger.warning(
                    "could not remove a dead runner's cgroup: \(error.message)", ["runner": candidate.runner])
            }
        }
        // Processes that left the cgroups (or ran without one) still carry the dead runner's markers.
        processes.formUnion(
            LeftoverProcesses.kill(withEnvironment: [
                JobEnvironment.runner: candidate.runner, JobEnvironment.namespace: keyspace.namespace,
                JobEnvironment.pool: pool,
            ]))
        var folders: [String] = []
        // Kept folders (`--keep-work-dirs`) are the operator's to remove, a dead runner's too.
        guard !host.configuration.keepWorkFolders else { return report(candidate, cgroups, folders, processes) }
        let workspace = JobWorkspace(
            root: host.configuration.workRoot, runner: candidate.contextName, owner: host.workspace.owner)
        if pathExists(workspace.directory) {
            var removedAll = true
            for folder in await workspace.leftovers(keeping: []) where !(await workspace.remove(path: folder)) {
                removedAll = false
            }
            if removedAll, rmdir(workspace.directory) == 0 {
                folders.append(workspace.directory)
            } else {
                logger.warning(
                    "could not remove a dead runner's work folder", ["path": workspace.directory])
            }
        }
        return report(candidate, cgroups, folders, processes)
    }

    private func report(
        _ candidate: Candidate, _ cgroups: [String], _ folders: [String], _ processes: Set<Int32>
    ) -> JSONValue {
        [
            "runner": .string(candidate.runner), "cgroups": .array(cgroups.map(JSONValue.string)),
            "work_dirs": .array(folders.map(JSONValue.string)),
            "processes": .array(processes.sorted().map { .int(Int($0)) }),
        ]
    }
}
