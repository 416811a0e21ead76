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
/// in-process switch beside it for `fire()` and for jobs watched after a firing. A watchdog that cannot be told
/// something (it died, or its queue is full) is logged once; the in-process switch still acts while the runner
/// runs.
final class WatchdogKillSwitch: JobKillSwitch {
    private let watchdog: JobWatchdog
    private let inProcess: InProcessKillSwitch
    private let logger: Logger
    private let complained = Mutex(false)
    private let events: Task<Void, Never>

    init(watchdog: JobWatchdog, logger: Logger, onFire: @escaping @Sendable () -> Void = {}) {
        self.watchdog = watchdog
        self.inProcess = InProcessKillSwitch(onFire: onFire)
        self.logger = logger
        events = Task { [stream = watchdog.events] in
            for await event in stream {
                switch event {
                case .fired(let firing):
                    logger.warning(
                        "the job watchdog killed \(firing.signalledGroups) job process group(s): the lease was not "
                            + "renewed in time")
                case .rejected(let group, let errno):
                    logger.warning("the job watchdog refused process group \(group) (errno \(errno))")
                case .exited(.stopped):
                    break
                case .exited(let ending):
                    logger.error("the job watchdog ended (\(ending)); jobs are guarded only while the runner runs")
                }
            }
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

    func arm(until deadline: ContinuousClock.Instant) {
        inProcess.arm(until: deadline)
        tell { try watchdog.arm(until: deadline) }
    }

    func disarm() {
        inProcess.disarm()
        tell { try watchdog.disarm() }
    }

    func watch(_ process: RunningProcess) {
        inProcess.watch(process)
        tell { try watchdog.watch(processGroup: process.pid) }
    }

    func unwatch(_ process: RunningProcess) {
        // Before the in-process switch forgets it: the group id must leave the watchdog's table while it is this
        // job's (the main process is reaped only after wait returns, and unwatch comes first).
        tell { try watchdog.unwatch(processGroup: process.pid) }
        inProcess.unwatch(process)
    }

    func fire() { inProcess.fire() }

    /// Quits the watchdog (leaving the jobs alone) and waits for it.
    func stop() async {
        _ = await watchdog.stop()
        await events.value
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
