import Glibc
import Synchronization

/// What callers ask of the monitor thread.
enum MonitorCommand: Sendable {
    /// Start a process; the continuation gets the handle or the SpawnError.
    case spawn(SpawnRequest, CheckedContinuation<SpawnedHandle, any Error>)
    /// `wait(policy)` was called (the continuation is parked in the handle's state).
    case wait(id: UInt64, policy: TerminationPolicy)
    /// The waiting task was cancelled.
    case cancel(id: UInt64)
    /// The `RunningProcess` went away without `wait`: stop the process at once and reap it.
    case abandon(id: UInt64)
}

struct SpawnRequest: Sendable {
    var spec: ProcessSpec
    var output: @Sendable (OutputStream, [UInt8]) -> Void
    var groups: (any ProcessGroupRegistry)?
    /// The teardown policy, applied from the start: the process is waited for as soon as it runs.
    var waitPolicy: TerminationPolicy?
}

struct SpawnedHandle: Sendable {
    var id: UInt64
    var pid: pid_t
    var state: ProcessHandleState
}

/// What a `RunningProcess` and the monitor thread share about one process.
final class ProcessHandleState: Sendable {
    struct Value {
        /// Set (under the lock) in the same critical section as the reaping waitid: until then, the pid is still ours
        /// (alive or a zombie), the pidfd is open, and `kill(-pgid)` cannot reach a recycled group.
        var reaped = false
        var outcome: ProcessOutcome?
        var waiters: [CheckedContinuation<ProcessOutcome, Never>] = []
    }

    let pid: pid_t
    /// The main process's pidfd; used only under the lock while `reaped` is false (the monitor closes it after).
    let pidfd: Int32
    /// The job has its own process group (pgid == pid); false at isolation level `.none`.
    let ownsGroup: Bool
    let value = Mutex(Value())

    init(pid: pid_t, pidfd: Int32, ownsGroup: Bool) {
        self.pid = pid
        self.pidfd = pidfd
        self.ownsGroup = ownsGroup
    }

    /// Unless the main process has been reaped: `kill(-pgid, signal)` to the job's group, or, without a group of its
    /// own, `pidfd_send_signal` to the main process.
    func signalJobIfUnreaped(_ signal: Int32) {
        value.withLock { value in
            guard !value.reaped else { return }
            if ownsGroup {
                _ = System.signalGroup(pid, signal)
            } else {
                _ = System.signalProcess(pidfd: pidfd, pid: pid, signal)
            }
        }
    }

    /// Records the outcome and resumes everyone waiting for it.
    func complete(with outcome: ProcessOutcome) {
        let waiters = value.withLock { value in
            value.outcome = outcome
            defer { value.waiters = [] }
            return value.waiters
        }
        for waiter in waiters {
            waiter.resume(returning: outcome)
        }
    }
}

/// The monitor thread's inbox and fds, shared with the callers' threads.
final class MonitorShared: Sendable {
    let epollFD: Int32
    /// Closed when the last holder lets go (deinit), not when the monitor thread ends: a caller signals it after
    /// releasing the inbox's lock, so that the monitor it wakes does not at once block on that lock.
    let wakeFD: Int32
    let devNullFD: Int32

    private struct Inbox {
        var commands: [MonitorCommand] = []
        var closed = false
    }

    private let inbox = Mutex(Inbox())

    init(epollFD: Int32, wakeFD: Int32, devNullFD: Int32) {
        self.epollFD = epollFD
        self.wakeFD = wakeFD
        self.devNullFD = devNullFD
    }

    deinit {
        System.close(wakeFD)
    }

    /// Queues a command and wakes the monitor; false once the supervisor is shutting down.
    @discardableResult
    func enqueue(_ command: MonitorCommand) -> Bool {
        let queued = inbox.withLock { inbox in
            guard !inbox.closed else { return false }
            inbox.commands.append(command)
            return true
        }
        // After the append, so the monitor never misses it (at worst it wakes once for a command it already took).
        if queued { System.eventFDSignal(wakeFD) }
        return queued
    }

    /// Marks the inbox closed and wakes the monitor; true for the call that closed it.
    func close() -> Bool {
        let closing = inbox.withLock { inbox in
            guard !inbox.closed else { return false }
            inbox.closed = true
            return true
        }
        if closing { System.eventFDSignal(wakeFD) }
        return closing
    }

    /// The queued commands, and whether the supervisor is shutting down.
    func takeCommands() -> (commands: [MonitorCommand], closed: Bool) {
        inbox.withLock { inbox in
            defer { inbox.commands = [] }
            return (inbox.commands, inbox.closed)
        }
    }
}

/// The pids of the main processes that supervisors in this process watch (not yet reaped), and of the job watchdogs
/// (each `JobWatchdog` reaps its own). Its lock also makes "peek a zombie, decide, reap it" atomic against spawning,
/// so an orphan sweep (of any supervisor) can never reap a child between its clone and its registration here.
enum ChildRegistry {
    static let watched = Mutex<Set<pid_t>>([])

    /// Reaps zombie children that nobody watches: orphans reparented to us as a child subreaper.
    ///
    /// Peeks with `waitid(P_ALL, WNOHANG | WNOWAIT)`. Reaped are only zombies that are not a watched pid (a main
    /// process, a watchdog) and, unless `includingOwnSession`, not in the runner's own session: children other code
    /// of this process started stay for their owners to wait for. Their own process group is no sign of an orphan:
    /// Foundation.Process puts every child in a new group (the sweep took their exit statuses, and `Process` then
    /// reported 0). A process never moves into another session, so the orphans of jobs with their own session are
    /// always in another one; those of `.none` jobs are in the runner's: reaped by their job's teardown (`JobTree`)
    /// when it can attribute them, else only `includingOwnSession` (`ProcessSupervisor(reapsOwnSessionOrphans:)`)
    /// reaps them.
    static func sweepOrphans(includingOwnSession: Bool) {
        // nil: every session is fair game.
        let sparedSession = includingOwnSession ? nil : System.session()
        watched.withLock { watched in
            for _ in 0..<1024 {
                guard let pid = System.peekZombieChild() else { return }
                if isOrphan(pid, watched: watched, sparedSession: sparedSession) {
                    System.reapIfZombie(pid)
                    continue
                }
                // The first zombie in line must stay (a main process not waited for yet, or another owner's
                // child), and the peek would keep returning it: look past it at every child instead.
                for child in System.children() where isOrphan(child, watched: watched, sparedSession: sparedSession) {
                    System.reapIfZombie(child)
                }
                return
            }
        }
    }

    private static func isOrphan(_ pid: pid_t, watched: Set<pid_t>, sparedSession: pid_t?) -> Bool {
        guard !watched.contains(pid) else { return false }
        guard let sparedSession else { return true }
        guard let stat = System.processStat(pid) else { return false }
        return stat.session != sparedSession
    }
}
