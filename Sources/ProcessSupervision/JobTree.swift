import CRunnerShims
import Glibc

/// One pass over /proc: who is whose parent, in which group, alive or a zombie, since when. Not atomic: a process
/// may start or end while it is read, so it is a picture to act on with checks (start times), never a proof.
struct ProcessTable {
    struct Entry {
        var pid: pid_t
        var parent: pid_t
        var group: pid_t
        var session: pid_t
        var isZombie: Bool
        var threads: Int
        /// Clock ticks after boot; with the pid it names one process for good.
        var startTime: UInt64
    }

    private(set) var entries: [pid_t: Entry] = [:]
    private(set) var children: [pid_t: [pid_t]] = [:]

    init(_ raw: [nr_proc_entry]) {
        entries.reserveCapacity(raw.count)
        for item in raw {
            let state = UInt8(bitPattern: item.state)
            let entry = Entry(
                pid: item.pid,
                parent: item.ppid,
                group: item.pgrp,
                session: item.session,
                // A main thread that exited while other threads run shows 'Z' too: that process is alive.
                isZombie: (state == UInt8(ascii: "Z") || state == UInt8(ascii: "X")) && item.threads <= 1,
                threads: Int(item.threads),
                startTime: item.start_time
            )
            entries[item.pid] = entry
            children[item.ppid, default: []].append(item.pid)
        }
    }

    /// A snapshot of /proc; nil when it cannot be read.
    static func read() -> ProcessTable? {
        System.processSnapshot().map(ProcessTable.init)
    }

    /// The runner's descendants only: where the runner is a child subreaper, every process of its jobs is one of
    /// them (an orphan is reparented to the nearest subreaper, the runner or a job's own process), so this is all a
    /// job's teardown needs to look at, at the cost of the job trees rather than of every process on the host.
    /// nil when /proc cannot be read.
    static func readDescendants() -> ProcessTable? {
        System.descendantSnapshot().map(ProcessTable.init)
    }

    /// Live (not zombie) processes of group `pgid` other than `excluded`.
    func liveMembers(ofGroup pgid: pid_t, excluding excluded: pid_t) -> Int {
        entries.values.count { $0.group == pgid && $0.pid != excluded && !$0.isZombie }
    }
}

/// The processes of one job other than its main process, as far as /proc can attribute them: descendants of the
/// main process (while it is unreaped, so that its pid is still its own), the runner's children that carry the
/// job's `EnvironmentMarker` (escapees reparented to the runner, a subreaper), their descendants, and every process
/// seen as a member before (so that one whose parent died is not lost). Members are kept as (pid, start time) and
/// signalled only through a pidfd checked against that start time, so a recycled pid is never hit.
///
/// Confined to the monitor thread.
struct JobTree {
    let mainPID: pid_t
    /// The job's process group; nil at isolation level `.none`, where the job shares the runner's group.
    let group: pid_t?
    /// `NAME=value` of the job's marker.
    let marker: [UInt8]?
    /// Every process attributed to the job and not known to be gone: pid → start time.
    private(set) var members: [pid_t: UInt64] = [:]

    init(mainPID: pid_t, group: pid_t?, marker: EnvironmentMarker?) {
        self.mainPID = mainPID
        self.group = group
        self.marker = marker.map { Array("\($0.name)=\($0.value)".utf8) }
    }

    /// Attributes what /proc shows now (reading `table` if none is given and there is anything to look for), and
    /// returns the table it used. `mainUnreaped`: the main process's pid is still its own, so its children are the
    /// job's.
    @discardableResult
    mutating func refresh(table given: ProcessTable? = nil, mainUnreaped: Bool) -> ProcessTable? {
        let me = System.processID()
        let watched = ChildRegistry.watched.withLock { $0 }
        // The runner's children that carry the marker, from the cheap /proc/self/task/*/children: the common case
        // (a job that left nothing behind) needs no full scan.
        let markedChildren: [pid_t]
        if let marker {
            let candidates = given.map { table in (table.children[me] ?? []) } ?? System.children()
            markedChildren = candidates.filter { pid in
                pid != mainPID && !watched.contains(pid)
                    && System.environment(of: pid)?.containsVariables([marker]) == true
            }
        } else {
            markedChildren = []
        }
        guard mainUnreaped || !members.isEmpty || !markedChildren.isEmpty || given != nil else { return nil }
        guard let table = given ?? ProcessTable.read() else { return nil }

        // Known members whose pid is gone or names another process now are not the job's any more.
        members = members.filter { table.entries[$0.key]?.startTime == $0.value }
        var roots = Array(members.keys) + markedChildren.filter { table.entries[$0] != nil }
        if mainUnreaped { roots.append(mainPID) }
        // A job with its own session (pid == pgid == sid): what is still in that session is the job's, also a
        // process that left the group (setpgid, a double fork) and replaced its environment (`env -i`), which no
        // descent or marker finds once its parent is gone. Only while the main process is unreaped: after that its
        // pid, and so a new session's id, may be another process's.
        if mainUnreaped, let group, group == mainPID {
            roots += table.entries.values.lazy.filter { $0.session == group && $0.pid != group }.map(\.pid)
        }
        var seen = Set(roots)
        while let pid = roots.popLast() {
            if pid != mainPID, let entry = table.entries[pid] {
                members[pid] = entry.startTime
            }
            for child in table.children[pid] ?? [] where !seen.contains(child) && !watched.contains(child) {
                seen.insert(child)
                roots.append(child)
            }
        }
        return table
    }

    /// Members `table` shows alive (not zombies).
    func liveMembers(in table: ProcessTable) -> [ProcessTable.Entry] {
        members.keys.compactMap { table.entries[$0] }.filter { !$0.isZombie }
    }

    /// Sends `signal` to every member outside the job's process group (the group is signalled as a whole), each
    /// through a pidfd checked against its start time.
    func signalMembersOutsideGroup(_ signal: Int32, in table: ProcessTable?) {
        for (pid, startTime) in members {
            if let group, let entry = table?.entries[pid], entry.group == group { continue }
            _ = System.signalProcess(pid, startTime: startTime, signal)
        }
    }

    /// Reaps the members (and, with a group, the group's processes) that `table` shows as zombies whose parent is
    /// the runner: orphans reparented to it. Watched main processes are never touched. Returns the reaped pids.
    @discardableResult
    func reapOwnZombies(in table: ProcessTable) -> Set<pid_t> {
        let me = System.processID()
        let zombies = table.entries.values.filter { entry in
            entry.isZombie && entry.parent == me && entry.pid != mainPID
                && (members[entry.pid] == entry.startTime || (group != nil && entry.group == group))
        }
        guard !zombies.isEmpty else { return [] }
        return ChildRegistry.watched.withLock { watched in
            Set(zombies.filter { !watched.contains($0.pid) && System.reapIfZombie($0.pid) }.map(\.pid))
        }
    }

    /// No member is left, not even a zombie, as far as `table` shows once the `reaped` pids are gone.
    func isEmpty(in table: ProcessTable, reaped: Set<pid_t>) -> Bool {
        !members.contains { !reaped.contains($0.key) && table.entries[$0.key]?.startTime == $0.value }
    }
}
