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

    private struct Due {
        var at: ContinuousClock.Instant
        var watch: RunningJobWatch
    }

    /// Both queues are in order of `at`: every entry is added `startedWriteDelay` or `sampleInterval` from now.
    private struct Queues {
        var started: [Due] = []
        var samples: [Due] = []
        var running = false
    }

    private let queues = Mutex(Queues())

    init(sampleInterval: Duration) {
        self.sampleInterval = sampleInterval
    }

    /// Starts watching a job that has just started. `sample` (nil with a cgroup) is called every `sampleInterval`.
    func start(
        sample: (@Sendable () -> Void)?, writeStarted: @escaping @Sendable () async -> Void
    ) -> RunningJobWatch {
        let watch = RunningJobWatch(sample: sample, writeStarted: writeStarted)
        let now = ContinuousClock.now
        let startLoop = queues.withLock { queues -> Bool in
            queues.started.append(Due(at: now + Self.startedWriteDelay, watch: watch))
            if sample != nil { queues.samples.append(Due(at: now + sampleInterval, watch: watch)) }
            defer { queues.running = true }
            return !queues.running
        }
        if startLoop { Task { await self.run() } }
        return watch
    }

    private func run() async {
        while let next = nextDue() {
            if next > .now { try? await Task.sleep(until: next, clock: .continuous) }
            let now = ContinuousClock.now
            let (started, sampled) = queues.withLock { queues -> ([RunningJobWatch], [RunningJobWatch]) in
                let started = Self.takeDue(&queues.started, now: now)
                let sampled = Self.takeDue(&queues.samples, now: now).filter { !$0.isStopped }
                queues.samples += sampled.map { Due(at: now + sampleInterval, watch: $0) }
                return (started, sampled)
            }
            for watch in started { watch.sendStartedWrite() }
            for watch in sampled { watch.sample?() }
        }
    }

    /// When the next entry is due, dropping the heads of stopped jobs; nil (and the loop ends) when nothing is left.
    private func nextDue() -> ContinuousClock.Instant? {
        queues.withLock { queues in
            while let head = queues.started.first, head.watch.isStopped { queues.started.removeFirst() }
            while let head = queues.samples.first, head.watch.isStopped { queues.samples.removeFirst() }
            let next = [queues.started.first?.at, queues.samples.first?.at].compactMap { $0 }.min()
            if next == nil { queues.running = false }
            return next
        }
    }

    private static func takeDue(_ queue: inout [Due], now: ContinuousClock.Instant) -> [RunningJobWatch] {
        let count = queue.prefix { $0.at <= now }.count
        defer { queue.removeFirst(count) }
        return queue.prefix(count).map(\.watch)
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

    fileprivate let sample: (@Sendable () -> Void)?
    private let writeStarted: @Sendable () async -> Void
    private let state = Mutex<(startedWrite: StartedWrite, stopped: Bool)>((.waiting, false))
    private let written = Latch()

    fileprivate init(sample: (@Sendable () -> Void)?, writeStarted: @escaping @Sendable () async -> Void) {
        self.sample = sample
        self.writeStarted = writeStarted
    }

    fileprivate var isStopped: Bool { state.withLock { $0.stopped } }

    fileprivate func sendStartedWrite() {
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
