/// Told, on the monitor thread, when a spawned process's group id starts and stops naming that process's group:
/// right after the clone, and right before the main process is reaped (after which the kernel may give the number
/// to a new process). A watchdog that kills groups on the runner's behalf keeps exactly these.
///
/// Both calls must return at once: they run on the thread that watches every job.
public protocol ProcessGroupRegistry: Sendable {
    func groupStarted(_ processGroup: Int32)
    func groupEnding(_ processGroup: Int32)
}
