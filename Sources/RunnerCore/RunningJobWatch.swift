import Synchronization

/// What runs beside the runner's jobs while they run: each job's `started` write and, for a job without a cgroup,
/// its peak-memory samples. One task does it for every job, sleeping until the next thing is due, and ends when no
/// job needs it: a task or a timer of each job's own would be one or two more wake-ups per job.
///
/// The `started` write waits `startedWriteDelay`: a job that ends sooner has `job.started` written by the script that
/// records its result, right before its terminal event, so that a short job costs one round trip less.
final class RunningJobWatches: Sendable {
    /// How long a job runs before its `started` write is sent on its own.
    static let startedWriteDelay = Duration.milliseconds(10)

    /// The first sample comes one interval after the start, then one every interval.
    let sampleInterval: Duration

    /// Two queues, each with a task of its own while it has entries: every entry of a queue is due the same delay
    /// after it was added, so its head is always the next one due and a new entry never needs to wake its task.
    private let started: DelayQueue
    private let samples: DelayQueue

    init(sampleInterval: Duration) {
        self.sampleInterval = sampleInterval
        started = DelayQueue(delay: Self.startedWriteDelay, repeats: false) { $0.sendStartedWrite() }
        samples = DelayQueue(delay: sampleInterval, repeats: true) { $0.sample?() }
    }

    /// Starts watching a job that has just started. `sample` (nil with a cgroup) is called every `sampleInterval`.
    func start(
        sample: (@Sendable () -> Void)?, writeStarted: @escaping @Sendable () async -> Void
    ) -> RunningJobWatch {
        let watch = RunningJobWatch(sample: sample, writeStarted: writeStarted)
        started.add(watch)
        if sample != nil { samples.add(watch) }
        return watch
    }
}

/// Watches due a fixed delay after they were added, in order; a task runs while any is waiting.
private final class DelayQueue: Sendable {
    private struct Due {
        var at: ContinuousClock.Instant
        var watch: RunningJobWatch
    }

    private let delay: Duration
    /// A watch done with is due again one delay later (until it stops).
    private let repeats: Bool
    /// What is done with each watch when it is due (not for a stopped one).
    private let onDue: @Sendable (RunningJobWatch) -> Void
    private let state = Mutex<(entries: [Due], running: Bool)>(([], false))

    init(delay: Duration, repeats: Bool, onDue: @escaping @Sendable (RunningJobWatch) -> Void) {
        self.delay = delay
        self.repeats = repeats
        self.onDue = onDue
    }

    func add(_ watch: RunningJobWatch) {
        let due = Due(at: ContinuousClock.now + delay, watch: watch)
        let startTask = state.withLock { state -> Bool in
            state.entries.append(due)
            defer { state.running = true }
            return !state.running
        }
        if startTask { Task { await self.run() } }
    }

    private func run() async {
        while let next = nextDue() {
            if next > .now { try? await Task.sleep(until: next, clock: .continuous) }
            let now = ContinuousClock.now
            let due = state.withLock { state -> [RunningJobWatch] in
                let count = state.entries.prefix { $0.at <= now }.count
                defer { state.entries.removeFirst(count) }
                return state.entries.prefix(count).map(\.watch)
            }
            for watch in due where !watch.isStopped {
                onDue(watch)
                if repeats { add(watch) }
            }
        }
    }

    /// When the head is due, dropping stopped watches first; nil (and the task ends) when nothing is left.
    private func nextDue() -> ContinuousClock.Instant? {
        state.withLock { state in
            while let head = state.entries.first, head.watch.isStopped { state.entries.removeFirst() }
            guard let head = state.entries.first else {
                state.running = false
                return nil
            }
            return head.at
        }
    }
}

/// One running job in `RunningJobWatches`.
final class RunningJobWatch: Sendable {
    private enum StartedWrite {
        /// Not sent yet.
        case waiting
        /// Sent by the watch; `written` fires when it has landed.
        case sending
        /// Left to the caller of `stop()`.
        case handedOver
    }

    let sample: (@Sendable () -> Void)?
    private let writeStarted: @Sendable () async -> Void
    private let state = Mutex<(startedWrite: StartedWrite, stopped: Bool)>((.waiting, false))
    private let written = Latch()

    fileprivate init(sample: (@Sendable () -> Void)?, writeStarted: @escaping @Sendable () async -> Void) {
        self.sample = sample
        self.writeStarted = writeStarted
    }

    var isStopped: Bool { state.withLock { $0.stopped } }

    func sendStartedWrite() {
        let send = state.withLock { state -> Bool in
            guard state.startedWrite == .waiting, !state.stopped else { return false }
            state.startedWrite = .sending
            return true
        }
        guard send else { return }
        Task {
            await writeStarted()
            written.fire()
        }
    }

    /// Sends the `started` write now if it was not sent yet, and waits until it has landed (a cancel reports its
    /// phases, which name the pid, only after `job.started`). Nothing once `stop()` took it over.
    func writeStartedNow() async {
        sendStartedWrite()
        let pending = state.withLock { $0.startedWrite == .sending }
        if pending { await written.wait() }
    }

    /// Stops the watch once the process has ended (no sample after this). True when `started` was not sent: the
    /// caller writes it, with the result or before any other write about the attempt. False once the watch's own
    /// write has landed.
    func stop() async -> Bool {
        let handedOver = state.withLock { state -> Bool in
            state.stopped = true
            guard state.startedWrite == .waiting else { return false }
            state.startedWrite = .handedOver
            return true
        }
        if !handedOver { await written.wait() }
        return handedOver
    }
}
