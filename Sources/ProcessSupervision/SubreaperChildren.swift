import CRunnerShims
import Glibc

/// The cheap proof that the jobs whose main process has ended left nothing behind, for a runner that is a child
/// subreaper: a few preads instead of a walk of its descendants.
///
/// Every process of a job is a descendant of the runner, and the topmost of a job's processes other than its main
/// process is a child of one of two runner threads. Orphans are reparented to the first thread of the subreaper that
/// is not exiting: the leader thread, checked to be alive and not exiting after the children are read (PF_EXITING is
/// never cleared, so it was not exiting before either). The monitor thread clones every main process, so a main
/// process's CLONE_PARENT children are its children too. No other runner thread is ever the parent of a job's
/// process: a process's parent is the thread that forked it, or the thread it was reparented to.
///
/// So when every child of those two threads is a watched pid (an unreaped main process or a watchdog, each holding
/// its pid while the registry's lock is held), no process exists of any job whose main process has exited (a zombie
/// has no children: the kernel reparents them before the pidfd turns readable) — and none can start again, as only a
/// job's own processes could start one. Anything else there (an orphan, a child of other code) means: do the full
/// walk.
///
/// Confined to the monitor thread that created it.
final class SubreaperChildren {
    private var watch: nr_children_watch
    /// Room for the children of both threads; more of them than this: no proof, the full walk.
    private let pids = UnsafeMutableBufferPointer<pid_t>.allocate(capacity: 4096)

    /// Opens the /proc files, for the calling thread as the one that clones the main processes; nil when they
    /// cannot be opened (no proof ever: every teardown does the full walk).
    init?() {
        guard case .success(let watch) = System.openChildrenWatch() else {
            pids.deallocate()
            return nil
        }
        self.watch = watch
    }

    deinit {
        System.closeChildrenWatch(&watch)
        pids.deallocate()
    }

    /// True when every child of the leader and the monitor thread is a watched pid: nothing is left of any job whose
    /// main process has exited. False when that cannot be shown.
    func showOnlyWatchedProcesses() -> Bool {
        ChildRegistry.watched.withLock { watched in
            // Under the lock: no watched pid is reaped (and so could be reused) while the files are read.
            guard let count = System.readChildrenWatch(watch, into: pids) else { return false }
            return pids[0..<count].allSatisfy(watched.contains)
        }
    }
}
