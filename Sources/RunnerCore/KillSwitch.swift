import ProcessSupervision
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Stops a runner's jobs when the runner can no longer vouch for its lease, so that by the time a reaper
/// reschedules them they are already dead.
///
/// The runner arms it after every successful renewal with the moment its lease is at risk (two thirds of the TTL
/// after Redis last confirmed it); if that moment passes without a new arm, every watched process group is killed.
/// A separate watchdog process does this even while the runner is paused (SIGSTOP) or after it died; the in-process
/// fallback (`InProcessKillSwitch`) only while the runner runs.
protocol JobKillSwitch: Sendable {
    /// Kill every watched process group at `deadline` unless armed again before it.
    func arm(until deadline: ContinuousClock.Instant)
    /// No deadline any more (clean shutdown).
    func disarm()
    /// Kill this job's process group when the switch fires.
    func watch(_ process: RunningProcess)
    /// The job ended: forget its group.
    func unwatch(_ process: RunningProcess)
    /// For the spawn: told of a job's group from its clone to just before its reap, on the monitor thread, for a
    /// switch outside this process (which must never keep a group id the kernel may reuse). Nil for one inside.
    var processGroups: (any ProcessGroupRegistry)? { get }
    /// Kill every watched process group now; groups watched later are killed at once until the next `arm`.
    func fire()
}

/// The kill switch inside the runner's own process: a timer task that kills the watched groups at the armed
/// deadline. It cannot act while the runner is paused or after it died: a job's main process dies with the runner
/// (PR_SET_PDEATHSIG), and the watchdog process covers the rest.
final class InProcessKillSwitch: JobKillSwitch {
    private struct State {
        var processes: [Int32: RunningProcess] = [:]
        var timer: Task<Void, Never>?
        var generation = 0
        var fired = false
    }
    private let state = Mutex(State())
    private let onFire: @Sendable () -> Void

    /// `onFire` is called (once per firing) after the groups were killed.
    init(onFire: @escaping @Sendable () -> Void = {}) {
        self.onFire = onFire
    }

    deinit {
        state.withLock { $0.timer?.cancel() }
    }

    func arm(until deadline: ContinuousClock.Instant) {
        state.withLock { state in
            state.generation += 1
            state.fired = false
            state.timer?.cancel()
            let generation = state.generation
            state.timer = Task { [weak self] in
                try? await Task.sleep(until: deadline, clock: .continuous)
                guard !Task.isCancelled else { return }
                self?.fireIfStillArmed(generation: generation)
            }
        }
    }

    func disarm() {
        state.withLock { state in
            state.timer?.cancel()
            state.timer = nil
            state.generation += 1
        }
    }

    var processGroups: (any ProcessGroupRegistry)? { nil }

    func watch(_ process: RunningProcess) {
        let killNow = state.withLock { state -> Bool in
            state.processes[process.pid] = process
            return state.fired
        }
        if killNow { process.signalGroup(SIGKILL) }
    }

    func unwatch(_ process: RunningProcess) {
        state.withLock { _ = $0.processes.removeValue(forKey: process.pid) }
    }

    func fire() {
        let processes = state.withLock { state -> [RunningProcess] in
            state.fired = true
            state.generation += 1
            state.timer?.cancel()
            state.timer = nil
            return Array(state.processes.values)
        }
        // signalGroup only signals while the main process is unreaped, so a recycled pid is never hit.
        for process in processes { process.signalGroup(SIGKILL) }
        onFire()
    }

    private func fireIfStillArmed(generation: Int) {
        // A renewal that re-armed (or a disarm) in the meantime cancelled this timer; the generation covers the race
        // with one that came just as it woke.
        guard state.withLock({ $0.generation == generation && !$0.fired }) else { return }
        fire()
    }
}

/// The kill switch of a running worker: the watchdog process, which kills the watched process groups at the armed
/// deadline even while this runner is paused, and kills them all when this runner dies (kill -9); with the
/// in-process switch beside it for `fire()` and for jobs watched after a firing. A watchdog that ends on its own
/// (killed) is replaced at once by a new one told the groups and the deadline; one that cannot be told something
/// is logged once.
final class WatchdogKillSwitch: JobKillSwitch, ProcessGroupRegistry {
    private struct Guard {
        var watchdog: JobWatchdog
        var groups: Set<Int32> = []
        var deadline: ContinuousClock.Instant?
        var stopping = false
        var follower: Task<Void, Never>?
    }

    /// Commands go to the watchdog under this lock (they never block: the socket is non-blocking), so a replacement
    /// sees every group and deadline exactly once.
    private let state: Mutex<Guard>
    private let inProcess: InProcessKillSwitch
    private let logger: Logger
    private let complained = Mutex(false)

    init(watchdog: JobWatchdog, logger: Logger, onFire: @escaping @Sendable () -> Void = {}) {
        self.state = Mutex(Guard(watchdog: watchdog))
        self.inProcess = InProcessKillSwitch(onFire: onFire)
        self.logger = logger
        let follower = follow(watchdog)
        state.withLock { $0.follower = follower }
    }

    private func follow(_ watchdog: JobWatchdog) -> Task<Void, Never> {
        Task { [logger, stream = watchdog.events] in
            for await event in stream {
                switch event {
                case .fired(let firing):
                    // Nothing said of killing when there was nothing to kill (no job ran, or all had ended).
                    let groups = firing.signalledGroups
                    let killed =
                        groups == 0 ? "" : " and killed \(counted(groups, "job process group", "job process groups"))"
                    logger.warning("the job watchdog fired\(killed): the lease was not renewed in time")
                case .rejected(let group, let errno):
                    logger.warning("the job watchdog refused process group \(group) (errno \(errno))")
                case .exited(.stopped):
                    break
                case .exited(let ending):
                    self.replace(watchdog, after: ending)
                }
            }
        }
    }

    /// A new watchdog in place of one that ended, told every watched group and the armed deadline.
    private func replace(_ ended: JobWatchdog, after ending: JobWatchdog.Ending) {
        state.withLock { guarded in
            guard !guarded.stopping, guarded.watchdog === ended else { return }
            let next: JobWatchdog
            do {
                next = try JobWatchdog()
            } catch {
                logger.error(
                    "the job watchdog ended (\(ending)) and a new one cannot start (\(error)); jobs are guarded only "
                        + "while the runner runs")
                return
            }
            logger.error("the job watchdog ended (\(ending)); started a new one (pid \(next.pid))")
            for group in guarded.groups { try? next.watch(processGroup: group) }
            if let deadline = guarded.deadline { try? next.arm(until: deadline) }
            guarded.watchdog = next
            guarded.follower = follow(next)
        }
    }

    /// Starts the watchdog process, or answers nil (with a warning) when it cannot be started.
    static func start(logger: Logger) -> WatchdogKillSwitch? {
        do {
            return WatchdogKillSwitch(watchdog: try JobWatchdog(), logger: logger)
        } catch {
            logger.warning("cannot start the job watchdog (\(error)); a paused runner's jobs are not stopped in time")
            return nil
        }
    }

    /// The watchdog's pid now (it changes when one is replaced).
    var watchdogPID: Int32 { state.withLock { $0.watchdog.pid } }

    func arm(until deadline: ContinuousClock.Instant) {
        inProcess.arm(until: deadline)
        state.withLock { guarded in
            guarded.deadline = deadline
            tell { try guarded.watchdog.arm(until: deadline) }
        }
    }

    func disarm() {
        inProcess.disarm()
        state.withLock { guarded in
            guarded.deadline = nil
            tell { try guarded.watchdog.disarm() }
        }
    }

    func watch(_ process: RunningProcess) { inProcess.watch(process) }

    func unwatch(_ process: RunningProcess) { inProcess.unwatch(process) }

    /// The watchdog's table holds a group from the clone to just before its leader's reap, told by the monitor
    /// thread: never a group id the kernel may have given to another process meanwhile.
    var processGroups: (any ProcessGroupRegistry)? { self }

    func groupStarted(_ processGroup: Int32) {
        state.withLock { guarded in
            guarded.groups.insert(processGroup)
            tell { try guarded.watchdog.watch(processGroup: processGroup) }
        }
    }

    func groupEnding(_ processGroup: Int32) {
        state.withLock { guarded in
            guarded.groups.remove(processGroup)
            guarded.watchdog.unwatch(processGroup: processGroup)
        }
    }

    func fire() { inProcess.fire() }

    /// Quits the watchdog (leaving the jobs alone) and waits for it.
    func stop() async {
        let (watchdog, follower) = state.withLock { guarded in
            guarded.stopping = true
            return (guarded.watchdog, guarded.follower)
        }
        _ = await watchdog.stop()
        await follower?.value
    }

    private func tell(_ command: () throws -> Void) {
        do {
            try command()
        } catch {
            let first = complained.withLock { flag in
                defer { flag = true }
                return !flag
            }
            if first { logger.warning("the job watchdog did not take a command: \(error)") }
        }
    }
}
