import Glibc
import Synchronization

/// Owns the monitor thread. Makes the calling process a child subreaper (PR_SET_CHILD_SUBREAPER) when `subreaper` is
/// true, and reaps reparented orphans (waitid P_ALL WNOHANG|WNOWAIT to peek; reap only pids that are not a live child
/// it is watching).
///
/// One thread does all the waiting: an epoll over each child's pidfd and its non-blocking stdout and stderr pipes,
/// plus an eventfd to wake it. Spawning runs there too (clone with CLONE_VFORK suspends only that thread), so no
/// caller ever blocks the cooperative thread pool.
///
/// The orphan sweep leaves alone zombies in the runner's own session: children that other code of the process
/// started (Foundation.Process gives each a process group of its own, in this session) are theirs to wait for. A job
/// at isolation level `.processGroup` or above runs in its own session, and no process can move into another
/// session, so its orphans never are in the runner's; a `.none` job's are reaped by its teardown when it can
/// attribute them (descendants, `ProcessSpec.treeMarker`), and by the sweep only with `reapsOwnSessionOrphans`.
///
/// Teardown reaches the whole job tree: the process group, plus descendants that left it (setsid, double fork),
/// found by walking /proc parent links from the main process before anything is killed, and orphans reparented to
/// the runner that carry the spec's `treeMarker`. They are signalled through pidfds checked against their start
/// times, so a recycled pid is never hit.
public final class ProcessSupervisor: Sendable {
    private let shared: MonitorShared
    private let thread: Mutex<pthread_t?>

    /// Creates the epoll instance, the eventfd and the monitor thread; with `subreaper`,
    /// `prctl(PR_SET_CHILD_SUBREAPER, 1)` and a periodic orphan sweep.
    ///
    /// `reapsOwnSessionOrphans` (with `subreaper`): the sweep also reaps zombies in the runner's own session
    /// (orphans of `.none` jobs that nobody could attribute, which would otherwise pile up), i.e. every zombie child
    /// that no supervisor or `JobWatchdog` of this process watches. Only for a process whose other code starts no
    /// children it waits for itself (Foundation.Process, posix_spawn, system): the sweep would take their exit
    /// statuses. It applies to the whole process: while this supervisor runs, its sweeps reap for everyone.
    public init(subreaper: Bool = true, reapsOwnSessionOrphans: Bool = false) throws {
        if subreaper {
            let err = System.becomeChildSubreaper()
            if err != 0 { throw SupervisorError.setup("become a child subreaper (prctl)", errno: err) }
        }
        let epollFD = System.epollCreate()
        if epollFD < 0 { throw SupervisorError.setup("create the monitor's epoll instance", errno: -epollFD) }
        let wakeFD = System.eventFDCreate()
        if wakeFD < 0 {
            System.close(epollFD)
            throw SupervisorError.setup("create the monitor's eventfd", errno: -wakeFD)
        }
        let devNullFD = System.openReadOnly("/dev/null")
        if devNullFD < 0 {
            System.close(epollFD)
            System.close(wakeFD)
            throw SupervisorError.setup("open /dev/null for the children's stdin", errno: -devNullFD)
        }
        func closeAll() {
            System.close(epollFD)
            System.close(wakeFD)
            System.close(devNullFD)
        }
        let watchErr = System.epollAdd(epollFD, wakeFD, token: MonitorLoop.TokenKind.wake.rawValue)
        if watchErr != 0 {
            closeAll()
            throw SupervisorError.setup("watch the monitor's eventfd (epoll_ctl)", errno: watchErr)
        }
        let shared = MonitorShared(epollFD: epollFD, wakeFD: wakeFD, devNullFD: devNullFD)
        let thread: pthread_t
        switch System.startThread({
            MonitorLoop(
                shared: shared, sweepsOrphans: subreaper,
                sweepsOwnSession: subreaper && reapsOwnSessionOrphans
            ).run()
        }) {
        case .success(let started):
            thread = started
        case .failure(let err):
            // The eventfd is `shared`'s now: it closes it when it goes.
            System.close(epollFD)
            System.close(devNullFD)
            throw SupervisorError.setup("start the monitor thread (pthread_create)", errno: err.value)
        }
        self.shared = shared
        self.thread = Mutex(thread)
    }

    deinit {
        shutdown()
    }

    /// Starts the process; throws SpawnError if it cannot start (exec failure reported by the child). Output chunks
    /// are delivered in order per stream to `output` from the monitor thread (keep it cheap; chunks up to 64 KiB).
    ///
    /// The process runs as `spec.isolation` says (by default in its own session and process group, its pid), with
    /// stdin from /dev/null, stdout and stderr to pipes read by the monitor thread, default signal dispositions, an
    /// empty signal mask and no other fd.
    ///
    /// With `waitPolicy`, the process is waited for from the moment it starts, as if `wait(waitPolicy)` had been
    /// called at once: `wait` then only collects the outcome (its own policy is ignored), and tells the monitor thread
    /// nothing, which saves waking it once more per process.
    public func spawn(
        _ spec: ProcessSpec,
        groups: (any ProcessGroupRegistry)? = nil,
        waitPolicy: TerminationPolicy? = nil,
        output: @escaping @Sendable (OutputStream, [UInt8]) -> Void
    ) async throws -> RunningProcess {
        let shared = self.shared
        let handle = try await withCheckedThrowingContinuation {
            (continuation: CheckedContinuation<SpawnedHandle, any Error>) in
            let request = SpawnRequest(spec: spec, output: output, groups: groups, waitPolicy: waitPolicy)
            if !shared.enqueue(.spawn(request, continuation)) {
                continuation.resume(throwing: SpawnError.shutDown(spec))
            }
        }
        return RunningProcess(handle: handle, shared: shared, waitedFromStart: waitPolicy != nil)
    }

    /// Stops the monitor thread after killing (SIGKILL to the job) anything still running. Idempotent.
    ///
    /// Every pending `wait` returns (stopReason `.cancelled` for what was still running); later spawns throw. Blocks
    /// until the monitor thread has reaped what it killed and exited (briefly: SIGKILL does not wait for anyone).
    public func shutdown() {
        _ = shared.close()
        guard
            let thread = self.thread.withLock({ thread in
                defer { thread = nil }; return thread
            })
        else { return }
        if System.isCurrentThread(thread) {
            System.detach(thread)  // called from an output callback: the loop ends when this callback returns
        } else {
            System.join(thread)
        }
    }
}

/// A started process. Its pid is also its process group id and session id (unless its isolation level is `.none`).
public final class RunningProcess: Sendable {
    /// The main process's pid, as the runner sees it; also the process group id and session id (unless `.none`).
    public var pid: Int32 { handle.pid }

    private let id: UInt64
    private let handle: ProcessHandleState
    private let shared: MonitorShared
    private let waitCalled = Atomic<Bool>(false)
    /// Spawned with a wait policy: the monitor thread waits for it already.
    private let waitedFromStart: Bool

    init(handle: SpawnedHandle, shared: MonitorShared, waitedFromStart: Bool = false) {
        self.id = handle.id
        self.handle = handle.state
        self.shared = shared
        self.waitedFromStart = waitedFromStart
    }

    deinit {
        if !waitCalled.load(ordering: .relaxed) {
            // Nobody will wait: stop it now rather than leak it (or let it run to its policy's timeout).
            shared.enqueue(waitedFromStart ? .cancel(id: id) : .abandon(id: id))
        }
    }

    /// Waits for the end: the main process's exit (not its pipes closing). Applies the policy: on timeout SIGTERM to
    /// the whole job (process group and escapees), killGrace, SIGKILL; after the main process exits, what is left of
    /// the job gets SIGTERM, leftoverGrace, SIGKILL, and is reaped; pipes are drained for at most drainLimit
    /// afterwards; then returns. If the calling task is cancelled the same teardown runs to the end (stopReason
    /// .cancelled) and the outcome is still returned. Call once (a later call returns the same outcome; its policy is
    /// ignored).
    ///
    /// When it returns, no process of the group, and none the job tree could attribute, is left, not even a zombie,
    /// and all output has been delivered.
    public func wait(_ policy: TerminationPolicy) async -> ProcessOutcome {
        waitCalled.store(true, ordering: .relaxed)
        let id = self.id
        let handle = self.handle
        let shared = self.shared
        let waitedFromStart = self.waitedFromStart
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ProcessOutcome, Never>) in
                let finished: ProcessOutcome? = handle.value.withLock { value in
                    if let outcome = value.outcome { return outcome }
                    value.waiters.append(continuation)
                    return nil
                }
                if let finished {
                    continuation.resume(returning: finished)
                    return
                }
                // If the supervisor is shutting down, this is refused, and the shutdown completes the handle.
                if !waitedFromStart { shared.enqueue(.wait(id: id, policy: policy)) }
            }
        } onCancel: {
            // The monitor runs the teardown to its end; the continuation above is resumed when it is done.
            shared.enqueue(.cancel(id: id))
        }
    }

    /// Sends a signal to the whole process group (while the main process is alive or a zombie, so the pgid cannot be
    /// recycled): `kill(-pid, signal)`; at isolation level `.none`, to the main process only, through its pidfd.
    /// Does nothing once the main process has been reaped.
    public func signalGroup(_ signal: Int32) {
        handle.signalJobIfUnreaped(signal)
    }
}
