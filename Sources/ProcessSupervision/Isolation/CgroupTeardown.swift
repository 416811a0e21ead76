import Glibc

/// How a hierarchy stops a cgroup's processes (v1 freezer.state, v2 cgroup.freeze), so that none can fork while its
/// members are killed one by one.
struct CgroupFreezer: Sendable {
    /// The file written to freeze and thaw.
    var controlFile: String
    var freezeValue: String
    var thawValue: String
    /// The file that says whether freezing is complete, and how to tell from its content.
    var stateFile: String
    var isFrozen: @Sendable (String) -> Bool

    /// v1: freezer.state, "FROZEN" once every task is frozen ("FREEZING" until then).
    static func v1(directory: String) -> CgroupFreezer {
        let file = joinPath(directory, "freezer.state")
        return CgroupFreezer(
            controlFile: file, freezeValue: "FROZEN", thawValue: "THAWED", stateFile: file,
            isFrozen: { $0.trimmingWhitespace == "FROZEN" })
    }

    /// v2: cgroup.freeze, and "frozen 1" in cgroup.events once it took effect.
    static func v2(directory: String) -> CgroupFreezer {
        CgroupFreezer(
            controlFile: joinPath(directory, "cgroup.freeze"), freezeValue: "1", thawValue: "0",
            stateFile: joinPath(directory, "cgroup.events"),
            isFrozen: { $0.split(separator: "\n").contains("frozen 1") })
    }
}

/// The waiting and removing both drivers share: kill rounds, waiting for a cgroup to empty, rmdir with EBUSY retries.
struct CgroupTeardown: Sendable {
    let fileSystem: any CgroupFileSystem

    /// Between polls of cgroup.procs and freezer state.
    static let pollInterval: Duration = .milliseconds(5)
    /// How long one kill round waits for the freezer before it kills anyway.
    static let freezeWait: Duration = .milliseconds(500)

    /// The pids in `directory` and in its child cgroups (a job running as root may have made some); empty when gone.
    func members(of directory: String) throws(CgroupError) -> [Int32] {
        guard fileSystem.fileExists(directory) else { return [] }
        var pids = try fileSystem.readProcesses(joinPath(directory, "cgroup.procs"))
        for child in try childCgroups(of: directory) {
            pids += try members(of: child)
        }
        return pids
    }

    /// Rounds of freeze, SIGKILL to every member, thaw, until no member is left or `deadline` passes.
    ///
    /// Frozen processes cannot exit, so a pid read from the frozen cgroup cannot be reaped and recycled before the
    /// SIGKILL reaches it; the kill takes effect at the thaw. Without a freezer (or when freezing does not complete
    /// within `freezeWait`) the round kills anyway and the next round catches what forked meanwhile.
    func killMembers(
        of directories: [String], freezers: [CgroupFreezer], deadline: ContinuousClock.Instant
    ) async throws(CgroupError) {
        let me = getpid()
        while true {
            var pids: [Int32] = []
            for directory in directories { pids += try members(of: directory) }
            pids.removeAll { $0 <= 1 || $0 == me }
            if pids.isEmpty { return }
            if ContinuousClock.now >= deadline { throw stillPopulated(directories, pids) }
            do {
                try await freeze(freezers, deadline: min(deadline, .now + Self.freezeWait))
            } catch {
                // Never leave a cgroup frozen behind: a frozen job that nobody kills hangs forever.
                for freezer in freezers { try? thaw(freezer) }
                throw error
            }
            for pid in pids { _ = System.signalProcess(pid, SIGKILL) }
            for freezer in freezers { try thaw(freezer) }
            // Give the killed processes a moment to exit before the next round lists what is left.
            try await waitUntilEmpty(directories, deadline: min(deadline, .now + .milliseconds(100)), throwing: false)
        }
    }

    /// Polls until no directory has a member; throws `.stillPopulated` at `deadline` when `throwing`.
    func waitUntilEmpty(
        _ directories: [String], deadline: ContinuousClock.Instant, throwing: Bool = true
    ) async throws(CgroupError) {
        while true {
            var pids: [Int32] = []
            for directory in directories { pids += try members(of: directory) }
            if pids.isEmpty { return }
            if ContinuousClock.now >= deadline {
                if throwing { throw stillPopulated(directories, pids) }
                return
            }
            await Self.pause()
        }
    }

    /// Removes `directory`'s child cgroups, waits until it is empty, and rmdirs it, retrying EBUSY until `deadline`.
    /// Gone already is fine.
    func removeTree(_ directory: String, deadline: ContinuousClock.Instant) async throws(CgroupError) {
        guard fileSystem.fileExists(directory) else { return }
        for child in try childCgroups(of: directory) {
            try await removeTree(child, deadline: deadline)
        }
        try await waitUntilEmpty([directory], deadline: deadline)
        while true {
            do {
                try fileSystem.removeDirectory(directory)
                return
            } catch let error where error.errno == ENOENT {
                return
            } catch let error where error.errno == EBUSY && ContinuousClock.now < deadline {
                // The last members are still leaving (exit is not instantaneous after cgroup.procs stops listing
                // them), or a css is still being released: the kernel answers EBUSY for a while.
                await Self.pause()
            } catch let error where error.errno == EBUSY {
                throw CgroupError(
                    code: .removeFailed, path: error.path, errno: EBUSY,
                    message: "cannot remove cgroup \(error.path): still busy (EBUSY) when the deadline passed")
            }
        }
    }

    /// The child cgroups of `directory` as paths (none when it is gone).
    private func childCgroups(of directory: String) throws(CgroupError) -> [String] {
        do {
            return try fileSystem.subdirectories(of: directory).map { joinPath(directory, $0) }
        } catch let error where error.errno == ENOENT {
            return []
        }
    }

    private func freeze(_ freezers: [CgroupFreezer], deadline: ContinuousClock.Instant) async throws(CgroupError) {
        for freezer in freezers { try fileSystem.writeFile(freezer.controlFile, freezer.freezeValue) }
        for freezer in freezers {
            while ContinuousClock.now < deadline {
                if freezer.isFrozen(try fileSystem.readFile(freezer.stateFile)) { break }
                await Self.pause()
            }
        }
    }

    private func thaw(_ freezer: CgroupFreezer) throws(CgroupError) {
        try fileSystem.writeFile(freezer.controlFile, freezer.thawValue)
    }

    private func stillPopulated(_ directories: [String], _ pids: [Int32]) -> CgroupError {
        let shown = pids.prefix(20).map(String.init).joined(separator: " ")
        let location = directories.joined(separator: ", ")
        return CgroupError(
            code: .stillPopulated, path: directories.first ?? "",
            message: "cgroup \(location) still has \(pids.count) process(es) when the deadline passed: \(shown)")
    }

    /// `Task.sleep` in a detached task: cleanup keeps its pace even when the caller's task is cancelled, instead of
    /// spinning on a sleep that returns at once.
    static func pause() async {
        await Task.detached { try? await Task.sleep(for: pollInterval) }.value
    }
}
