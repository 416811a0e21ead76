import CRunnerShims
import Glibc
import Synchronization

/// A small watchdog process that SIGKILLs the runner's job process groups when the runner stops renewing its
/// deadline, or dies. Threads cannot do this: a SIGSTOPped runner stops all of them, a killed one loses them.
///
/// The runner arms it with a deadline shortly before its lease could lapse and re-arms it after each renewal. If
/// the deadline passes with no newer `arm` or `disarm` heard, the watchdog sends SIGKILL to every watched group,
/// reports an `Event.fired`, and goes on disarmed. If the runner dies (its end of the watchdog's socket closes), the
/// watchdog SIGKILLs every watched group and exits. Deadlines count on CLOCK_BOOTTIME, the clock of
/// `ContinuousClock` on Linux, which keeps counting while the machine is suspended, as the lease in Redis ages.
///
/// The watchdog runs in its own session with every fd but its own closed, ignores SIGTERM, SIGINT, SIGHUP, SIGQUIT,
/// SIGPIPE and the terminal stop signals (it ends by `stop()` or by the runner's death; SIGKILL otherwise), and is
/// named `nr-watchdog`. Its pid is registered with the `ProcessSupervisor` orphan sweep as not an orphan: it is
/// reaped here, by a dedicated thread that also reads its reports.
///
/// Commands never block and never raise SIGPIPE: when the watchdog is gone or not reading they throw. The watched
/// groups are not commands: they are in a table shared with the watchdog (one memory page set, mapped before the
/// clone), which it reads when it kills, so watching a job's group costs one store and wakes nobody.
public final class JobWatchdog: Sendable {
    /// How many process groups one watchdog can watch.
    public static let capacity = Int(NR_WATCHDOG_MAX_GROUPS)

    /// What the watchdog reports, in order. `.exited` comes last, then the stream finishes.
    public enum Event: Sendable, Equatable {
        /// An armed deadline passed: every watched group was sent SIGKILL. The watchdog is disarmed now.
        case fired(Firing)
        /// The watchdog refused a command (`errno` EINVAL: a kind it does not know, a message of the wrong size):
        /// the two sides disagree.
        case rejected(processGroup: Int32, errno: Int32)
        /// The watchdog process ended and was reaped.
        case exited(Ending)
    }

    /// One firing of the watchdog.
    public struct Firing: Sendable, Equatable {
        /// The deadline that passed (as armed, give or take the conversion through CLOCK_BOOTTIME: a microsecond).
        public var deadline: ContinuousClock.Instant
        /// When the watchdog sent the signals.
        public var firedAt: ContinuousClock.Instant
        /// How many groups it watched.
        public var watchedGroups: Int
        /// For how many of them `kill(-pgid, SIGKILL)` succeeded; the others were gone already.
        public var signalledGroups: Int
    }

    /// How the watchdog process ended.
    public enum Ending: Sendable, Equatable {
        /// On `stop()`: it killed nothing.
        case stopped
        /// Its command channel closed (the runner died, or `simulateRunnerDeath()`): it SIGKILLed every watched
        /// group first.
        case runnerGone
        /// Otherwise: killed by a signal, or an exit status of neither of the above.
        case terminated(Termination)
        /// Something else in this process reaped it (a `waitpid(-1)`), so its status is unknown.
        case statusLost
    }

    /// The watchdog process's pid (also its process group and session id).
    public let pid: Int32
    /// The watchdog's reports, delivered from its reader thread. One consumer.
    public let events: AsyncStream<Event>
    private let channel: WatchdogChannel

    /// Starts the watchdog process (disarmed, watching nothing) and the thread that reads its reports and reaps it.
    public init() throws(WatchdogError) {
        // Registered in the same critical section as the clone: no orphan sweep can reap it before we know its pid.
        let started = ChildRegistry.watched.withLock { watched in
            let started = System.startWatchdog()
            if started.pid > 0 {
                watched.insert(started.pid)
            }
            return started
        }
        guard started.pid > 0 else {
            throw WatchdogError(
                code: .setupFailed,
                errno: started.failed_errno,
                message: "cannot start the job watchdog: \(Self.stepName(started.failed_step)) failed: "
                    + System.describe(errno: started.failed_errno)
            )
        }
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        let channel = WatchdogChannel(started: started, events: continuation)
        switch System.startThread({ channel.serve() }) {
        case .success(let thread):
            System.detach(thread)  // it ends by itself once the watchdog has exited and been reaped
        case .failure(let err):
            // Without a reader nobody would reap it: close the channel (it exits at once, watching nothing) and
            // reap it here, which waits only for that exit.
            channel.serve(readingReports: false)
            throw WatchdogError(
                code: .setupFailed,
                errno: err.value,
                message: "cannot start the job watchdog's reader thread (pthread_create): "
                    + System.describe(errno: err.value)
            )
        }
        self.pid = started.pid
        self.events = events
        self.channel = channel
    }

    /// A watchdog nobody can command any more is told to quit (as `stop()`): dropping it does not kill the jobs.
    deinit {
        channel.quit()
    }

    /// Arms the watchdog (ARM): if it hears no newer `arm` or `disarm` before `deadline`, it SIGKILLs every watched
    /// group. A deadline that has passed already fires at once.
    public func arm(until deadline: ContinuousClock.Instant) throws(WatchdogError) {
        let command = nr_watchdog_command(NR_WATCHDOG_ARM, deadlineNanoseconds: Self.boottimeNanoseconds(of: deadline))
        try channel.send(command, "arm")
    }

    /// Disarms the watchdog (DISARM): it forgets the deadline and keeps watching its groups.
    public func disarm() throws(WatchdogError) {
        try channel.send(nr_watchdog_command(NR_WATCHDOG_DISARM), "disarm")
    }

    /// Adds a job's process group to the shared table. Watching a group twice is watching it once. Throws
    /// `.tableFull` when `capacity` groups are watched, `.invalidProcessGroup` for a pgid of 1 or less or the
    /// watchdog's own, `.gone` once the watchdog has been stopped or has exited.
    ///
    /// Unwatch a group as soon as its job has ended: once the group's last process is reaped, the pgid is free for
    /// reuse (when the pid numbers wrap around), and a later firing would signal whoever leads it then.
    public func watch(processGroup pgid: Int32) throws(WatchdogError) {
        try channel.watch(pgid)
    }

    /// Removes a process group from the shared table; one not watched is ignored.
    public func unwatch(processGroup pgid: Int32) {
        channel.unwatch(pgid)
    }

    /// Tells the watchdog to quit (QUIT: it kills nothing) and waits until it has been reaped; returns how it ended
    /// (`.stopped`, or how it had ended before). A watchdog that has not ended within `grace` (it is stopped or
    /// hung), or whose queue is full so that it cannot take the QUIT, is ended with SIGKILL instead
    /// (`.terminated(.signaled(SIGKILL))`), its groups left alone. Suspends, never blocks: the reader thread reaps.
    /// Idempotent.
    public func stop(grace: Duration = .seconds(2)) async -> Ending {
        channel.quit()
        let channel = self.channel
        let enforcer = Task {
            try? await Task.sleep(for: grace)
            if !Task.isCancelled { channel.kill() }
        }
        defer { enforcer.cancel() }
        return await channel.ending()
    }

    /// For tests of the runner's death: closes the command channel as a dying runner's kernel would
    /// (`shutdown(SHUT_WR)`), so the watchdog SIGKILLs every watched group and exits (`.runnerGone`). Later commands
    /// throw `.gone`.
    public func simulateRunnerDeath() {
        channel.closeForWriting()
    }

    // MARK: Helpers

    /// The CLOCK_BOOTTIME nanoseconds of `instant`. ContinuousClock reads CLOCK_BOOTTIME on Linux (swift_get_time),
    /// but its raw value is not public, so this goes through the distance from now.
    static func boottimeNanoseconds(of instant: ContinuousClock.Instant) -> Int64 {
        let distance = ContinuousClock.now.duration(to: instant)
        return System.boottimeNanoseconds() + distance.clampedNanoseconds
    }

    /// The instant of CLOCK_BOOTTIME nanoseconds `nanoseconds`.
    static func instant(ofBoottime nanoseconds: Int64) -> ContinuousClock.Instant {
        let now = ContinuousClock.now
        return now.advanced(by: .nanoseconds(nanoseconds - System.boottimeNanoseconds()))
    }

    private static func stepName(_ step: Int32) -> String {
        switch UInt32(step) {
        case NR_WATCHDOG_STEP_SOCKETPAIR.rawValue: "socketpair"
        case NR_WATCHDOG_STEP_TIMERFD.rawValue: "timerfd_create"
        case NR_WATCHDOG_STEP_CLONE.rawValue: "clone"
        case NR_WATCHDOG_STEP_MMAP.rawValue: "mmap of the group table"
        default: "step \(step)"
        }
    }
}

/// The runner's end of a watchdog's socket, shared by the callers (commands) and the reader thread (reports, the
/// reap). Every send and the final close happen under one lock, so no command can reach a closed, or meanwhile
/// reused, fd number.
final class WatchdogChannel: Sendable {
    private struct State {
        /// False once QUIT or shutdown(SHUT_WR) went out, or the socket is closed: nothing more is sent.
        var writable = true
        /// The watched groups and their slots in the shared table.
        var watched: [Int32: Int32] = [:]
        /// The table's free slots, the lowest last.
        var freeSlots: [Int32] = (0..<Int32(JobWatchdog.capacity)).reversed()
        /// Set by the reader thread after the reap, in the same critical section as the close of the socket.
        var ending: JobWatchdog.Ending?
        var waiters: [CheckedContinuation<JobWatchdog.Ending, Never>] = []
    }

    private let pid: pid_t
    private let pidfd: Int32
    private let socketFD: Int32
    /// The group table shared with the watchdog, written under `state`'s lock only and unmapped (under it too) once
    /// the watchdog has been reaped.
    private nonisolated(unsafe) let groups: UnsafeMutablePointer<Int32>
    private let events: AsyncStream<JobWatchdog.Event>.Continuation
    private let state = Mutex(State())

    init(started: nr_watchdog_started, events: AsyncStream<JobWatchdog.Event>.Continuation) {
        self.pid = started.pid
        self.pidfd = started.pidfd
        self.socketFD = started.socket_fd
        self.groups = started.groups
        self.events = events
    }

    // MARK: Commands (any thread)

    func send(_ command: nr_watchdog_command, _ what: String) throws(WatchdogError) {
        try state.withLock { (state: inout State) throws(WatchdogError) in
            try send(command, what, writable: state.writable)
        }
    }

    func watch(_ pgid: Int32) throws(WatchdogError) {
        try state.withLock { (state: inout State) throws(WatchdogError) in
            let what = "watch process group \(pgid)"
            guard pgid > 1, pgid != pid else {
                throw failure(.invalidProcessGroup, EINVAL, what, "not a process group the watchdog may kill")
            }
            guard state.watched[pgid] == nil else { return }
            guard state.writable else { throw failure(.gone, 0, what, "it has been stopped or has exited") }
            guard let slot = state.freeSlots.popLast() else {
                throw failure(.tableFull, ENOSPC, what, "it watches \(JobWatchdog.capacity) groups already")
            }
            nr_watchdog_set_group(groups, slot, pgid)
            state.watched[pgid] = slot
        }
    }

    func unwatch(_ pgid: Int32) {
        state.withLock { state in
            guard let slot = state.watched.removeValue(forKey: pgid) else { return }
            // Also once the watchdog is gone: the table is unmapped only when `ending` is set.
            if state.ending == nil { nr_watchdog_set_group(groups, slot, 0) }
            state.freeSlots.append(slot)
        }
    }

    /// Sends QUIT once; a watchdog that is gone already needs none. One that cannot take it (its queue is full: it
    /// is stopped or hung) would never end, so it gets SIGKILL instead, which spares its groups as QUIT does.
    func quit() {
        state.withLock { state in
            guard state.writable else { return }
            state.writable = false
            if System.sendWatchdogCommand(socketFD, nr_watchdog_command(NR_WATCHDOG_QUIT)) == EAGAIN {
                _ = System.signal(pidfd: pidfd, SIGKILL)  // the pidfd: it may not lead a group of its own yet
            }
        }
    }

    /// SIGKILL to the watchdog unless it has been reaped (the pidfd names exactly that process, never a reused pid).
    func kill() {
        state.withLock { state in
            if state.ending == nil { _ = System.signal(pidfd: pidfd, SIGKILL) }
        }
    }

    func closeForWriting() {
        state.withLock { state in
            guard state.writable else { return }
            state.writable = false
            System.shutdownWrite(socketFD)
        }
    }

    /// How the watchdog ended, once it has been reaped.
    func ending() async -> JobWatchdog.Ending {
        await withCheckedContinuation { (continuation: CheckedContinuation<JobWatchdog.Ending, Never>) in
            let ending: JobWatchdog.Ending? = state.withLock { state in
                if state.ending == nil { state.waiters.append(continuation) }
                return state.ending
            }
            if let ending { continuation.resume(returning: ending) }
        }
    }

    /// Called with the lock held.
    private func send(_ command: nr_watchdog_command, _ what: String, writable: Bool) throws(WatchdogError) {
        guard writable else {
            throw failure(.gone, 0, what, "it has been stopped or has exited")
        }
        let err = System.sendWatchdogCommand(socketFD, command)
        switch err {
        case 0: return
        case EAGAIN: throw failure(.unresponsive, err, what, "its command queue is full: it is not reading")
        case EPIPE, ECONNRESET, ENOTCONN: throw failure(.gone, err, what, "it has exited")
        default: throw failure(.sendFailed, err, what, System.describe(errno: err))
        }
    }

    private func failure(_ code: WatchdogError.Code, _ err: Int32, _ what: String, _ why: String) -> WatchdogError {
        WatchdogError(code: code, errno: err, message: "job watchdog (pid \(pid)): cannot \(what): \(why)")
    }

    // MARK: The reader thread

    /// Reads reports until end of file (the watchdog exited), then reaps the watchdog, closes the socket and
    /// completes `ending()` and the event stream. Without `readingReports` it first closes the channel, which ends
    /// the watchdog (used when the thread could not be started).
    func serve(readingReports: Bool = true) {
        if readingReports {
            System.nameCurrentThread("nr-watchdog-rd")
            readReports()
        } else {
            closeForWriting()
        }
        let ending = reap()
        // Both closed under the lock that `quit()` signals and sends under: it can never reach a reused fd number.
        let waiters = state.withLock { state in
            state.writable = false
            System.close(pidfd)
            System.close(socketFD)
            nr_watchdog_release_groups(groups)
            state.ending = ending
            defer { state.waiters = [] }
            return state.waiters
        }
        events.yield(.exited(ending))
        events.finish()
        for waiter in waiters {
            waiter.resume(returning: ending)
        }
    }

    private func readReports() {
        while true {
            switch System.receiveWatchdogReport(socketFD) {
            case .success(let report?):
                if let event = Self.event(of: report) { events.yield(event) }
            case .success(nil):
                return  // end of file: the watchdog has closed its end, which it does only by exiting
            case .failure:
                // Cannot hear it any more, so it cannot be trusted to quit: end it.
                _ = System.signal(pidfd: pidfd, SIGKILL)
                return
            }
        }
    }

    private static func event(of report: nr_watchdog_report) -> JobWatchdog.Event? {
        switch report.kind {
        case NR_WATCHDOG_FIRED.rawValue:
            let firing = JobWatchdog.Firing(
                deadline: JobWatchdog.instant(ofBoottime: report.deadline_ns),
                firedAt: JobWatchdog.instant(ofBoottime: report.fired_ns),
                watchedGroups: Int(report.watched),
                signalledGroups: Int(report.signalled)
            )
            return .fired(firing)
        case NR_WATCHDOG_REJECTED.rawValue:
            return .rejected(processGroup: report.group, errno: report.error)
        default:
            return nil
        }
    }

    /// Waits (this dedicated thread only) until the watchdog is a zombie, then reaps it in one critical section
    /// with its removal from the registry the orphan sweep consults.
    private func reap() -> JobWatchdog.Ending {
        _ = System.waitUntilExited(pidfd: pidfd)  // ECHILD: reaped elsewhere; the reap below says so
        let result = ChildRegistry.watched.withLock { watched in
            defer { watched.remove(pid) }
            return System.reap(pidfd: pidfd, block: false)
        }
        guard case .success(let exit) = result, exit.reaped != 0 else { return .statusLost }
        switch Int(exit.code) {
        case CLD_EXITED where exit.status == NR_WATCHDOG_EXIT_QUIT: return .stopped
        case CLD_EXITED where exit.status == NR_WATCHDOG_EXIT_RUNNER_GONE: return .runnerGone
        case CLD_EXITED: return .terminated(.exited(exit.status))
        default: return .terminated(.signaled(exit.status))
        }
    }
}

extension nr_watchdog_command {
    /// A command record of `kind`.
    init(_ kind: nr_watchdog_command_kind, group: Int32 = 0, deadlineNanoseconds: Int64 = 0) {
        self.init(kind: kind.rawValue, group: group, deadline_ns: deadlineNanoseconds)
    }
}
