import Glibc

/// The life of one supervised process after it started, as a state machine: events in, actions out, no I/O.
///
/// The monitor thread feeds it events and performs the actions it returns, feeding back the answers of `probeJob`
/// and `reapJob`. Times are monotonic nanoseconds.
///
/// "The job" is the main process's process group (at isolation level `.none`: the main process) plus the
/// processes the `JobTree` attributes to it outside that group (escapees found by descent or marker).
///
/// The order of the steps is the point: every signal to the group by pgid is sent while the main process is alive
/// or an unreaped zombie, so the pgid cannot have been recycled; the main process is reaped only when the rest of
/// the job is gone or has been sent SIGKILL; `wait()` returns only when `kill(-pgid, 0)` says ESRCH and no tree
/// member is left (or after `vanishLimit`, for processes that will not die, such as ones stuck in uninterruptible
/// sleep).
struct TeardownStateMachine {
    enum Action: Equatable {
        /// `kill(-pgid, signal)` (or the main process's pidfd) and the tree members outside the group, found afresh
        /// first; emitted only while the main process is unreaped.
        case signalJob(Int32)
        /// The main process is a zombie: are other processes of the job alive? Answer with `jobProbed`.
        case probeJob
        /// Reap the main process (it is a zombie).
        case reapMain
        /// The main process is reaped: reap the job's zombies (SIGKILL to tree members still alive), then is the job
        /// gone? Answer with `jobChecked`.
        case reapJob
        /// `kill(-pgid, SIGKILL)` and SIGKILL to the tree after the main process was reaped: only right after
        /// `reapJob` found the job not empty, so members pin the pgid.
        case killRemainingJob
        /// Stop reading the pipes and close them.
        case closePipes
        /// The outcome is complete: hand it to the waiter.
        case finish
    }

    private enum State: Equatable {
        /// No one waits yet; the main process runs.
        case started
        /// No one waits yet; the main process is a zombie.
        case exitedUnwaited
        /// Waited for; the main process runs.
        case running(timeoutAt: Int64?)
        /// SIGTERM was sent to the job; SIGKILL at `killAt`.
        case stopping(killAt: Int64)
        /// SIGKILL was sent; the main process has not been seen to exit yet.
        case killed
        /// The main process is a zombie; the answer of `probeGroup` is awaited. `stopKillAt`: the SIGKILL deadline of
        /// a stop in progress (nil when the process ended on its own).
        case probing(stopKillAt: Int64?)
        /// The main process is a zombie; SIGTERM went to what is left of the job; SIGKILL at `killAt`.
        case leftovers(killAt: Int64, nextProbe: Int64, backoff: Int64)
        /// The main process is reaped; waiting for `kill(-pgid, 0)` to say ESRCH and the tree to be gone.
        case reaping(nextCheck: Int64, backoff: Int64, giveUpAt: Int64, killSent: Bool)
        /// The job is gone; reading what the pipes still hold, until `until`.
        case draining(until: Int64)
        case finished
    }

    /// First delay of the bounded backoff loops (1 ms), doubled up to `maximumBackoff` (32 ms).
    static let initialBackoff: Int64 = 1_000_000
    static let maximumBackoff: Int64 = 32_000_000
    /// How long to wait for a job that was sent SIGKILL (or was empty but for stragglers) to vanish.
    static let vanishLimit: Int64 = 2_000_000_000

    private var state: State = .started
    private var policy = TerminationPolicy()
    private var cancelRequested = false
    private var pipesOpen = true

    private(set) var stopReason: StopReason?
    private(set) var forcedKill = false
    private(set) var leftoverProcessesStopped = false
    private(set) var outputTruncatedByDrainLimit = false

    var isFinished: Bool { state == .finished }
    var isWaitedFor: Bool {
        switch state {
        case .started, .exitedUnwaited: false
        default: true
        }
    }

    /// The next time `timerFired` has something to do.
    var nextDeadline: Int64? {
        switch state {
        case .running(let timeoutAt): timeoutAt
        case .stopping(let killAt): killAt
        case .leftovers(let killAt, let nextProbe, _): min(killAt, nextProbe)
        case .reaping(let nextCheck, _, _, _): nextCheck
        case .draining(let until): until
        case .started, .exitedUnwaited, .killed, .probing, .finished: nil
        }
    }

    /// `wait(policy)` was called. `startedAt` is when the process was started (the timeout counts from there).
    mutating func waitStarted(policy: TerminationPolicy, startedAt: Int64, now: Int64) -> [Action] {
        switch state {
        case .started:
            self.policy = policy
            if cancelRequested {
                return stop(.cancelled, now: now)
            }
            guard let timeout = policy.timeout else {
                state = .running(timeoutAt: nil)
                return []
            }
            let timeoutAt = startedAt + timeout.clampedNanoseconds
            if now >= timeoutAt {
                return stop(.timeout, now: now)
            }
            state = .running(timeoutAt: timeoutAt)
            return []
        case .exitedUnwaited:
            self.policy = policy
            state = .probing(stopKillAt: nil)
            return [.probeJob]
        default:
            return []  // already waited for: the first policy applies
        }
    }

    /// The waiting task was cancelled (or the process was abandoned): stop it, unless it already ended on its own.
    mutating func cancel(now: Int64) -> [Action] {
        switch state {
        case .started, .exitedUnwaited:
            cancelRequested = true  // applied when the wait starts
            return []
        case .running:
            return stop(.cancelled, now: now)
        default:
            return []
        }
    }

    /// The pidfd became readable: the main process is a zombie.
    mutating func mainExited(now: Int64) -> [Action] {
        switch state {
        case .started:
            state = .exitedUnwaited
            return []
        case .running:
            state = .probing(stopKillAt: nil)
            return [.probeJob]
        case .stopping(let killAt):
            state = .probing(stopKillAt: killAt)
            return [.probeJob]
        case .killed:
            state = .probing(stopKillAt: now)
            return [.probeJob]
        default:
            return []
        }
    }

    /// The answer to `probeGroup`.
    mutating func jobProbed(othersAlive: Bool, now: Int64) -> [Action] {
        switch state {
        case .probing(let stopKillAt):
            guard othersAlive else { return jobQuiet(now: now, killSent: false) }
            let backoff = Self.initialBackoff
            if let stopKillAt {
                // Stopping the whole job is under way: its SIGTERM reached these too, and its deadline applies.
                state = .leftovers(killAt: stopKillAt, nextProbe: min(now + backoff, stopKillAt), backoff: backoff)
                return []
            }
            leftoverProcessesStopped = true
            let killAt = now + policy.leftoverGrace.clampedNanoseconds
            state = .leftovers(killAt: killAt, nextProbe: min(now + backoff, killAt), backoff: backoff)
            return [.signalJob(SIGTERM)]
        case .leftovers(let killAt, _, let backoff):
            guard othersAlive else { return jobQuiet(now: now, killSent: false) }
            let next = min(backoff * 2, Self.maximumBackoff)
            state = .leftovers(killAt: killAt, nextProbe: min(now + next, killAt), backoff: next)
            return []
        default:
            return []
        }
    }

    /// The answer to `reapGroup`.
    mutating func jobChecked(empty: Bool, now: Int64) -> [Action] {
        guard case .reaping(_, let backoff, let giveUpAt, let killSent) = state else { return [] }
        if empty || now >= giveUpAt {
            return enterDraining(now: now)
        }
        let next = min(backoff * 2, Self.maximumBackoff)
        let nextCheck = min(now + backoff, giveUpAt)
        if killSent {
            state = .reaping(nextCheck: nextCheck, backoff: next, giveUpAt: giveUpAt, killSent: true)
            return []
        }
        // The probe saw no live member, yet the job is not gone: one was forked meanwhile. It pins the pgid.
        leftoverProcessesStopped = true
        forcedKill = true
        state = .reaping(nextCheck: nextCheck, backoff: next, giveUpAt: giveUpAt, killSent: true)
        return [.killRemainingJob]
    }

    /// Both pipes reached end of file (or were closed).
    mutating func pipesClosed(now: Int64) -> [Action] {
        pipesOpen = false
        if case .draining = state {
            state = .finished
            return [.finish]
        }
        return []
    }

    /// Time passed; acts on whatever deadline is due.
    mutating func timerFired(now: Int64) -> [Action] {
        switch state {
        case .running(let timeoutAt?) where now >= timeoutAt:
            return stop(.timeout, now: now)
        case .stopping(let killAt) where now >= killAt:
            forcedKill = true
            state = .killed
            return [.signalJob(SIGKILL)]
        case .leftovers(let killAt, _, _) where now >= killAt:
            forcedKill = true
            state = .reaping(
                nextCheck: now,
                backoff: Self.initialBackoff,
                giveUpAt: now + Self.vanishLimit,
                killSent: true
            )
            return [.signalJob(SIGKILL), .reapMain, .reapJob]
        case .leftovers(_, let nextProbe, _) where now >= nextProbe:
            return [.probeJob]
        case .reaping(let nextCheck, _, _, _) where now >= nextCheck:
            return [.reapJob]
        case .draining(let until) where now >= until:
            outputTruncatedByDrainLimit = true
            state = .finished
            return [.closePipes, .finish]
        default:
            return []
        }
    }

    private mutating func stop(_ reason: StopReason, now: Int64) -> [Action] {
        stopReason = reason
        state = .stopping(killAt: now + policy.killGrace.clampedNanoseconds)
        return [.signalJob(SIGTERM)]
    }

    /// Nothing but the zombie main process is left of the job: reap it, then make sure the job is gone.
    private mutating func jobQuiet(now: Int64, killSent: Bool) -> [Action] {
        state = .reaping(
            nextCheck: now,
            backoff: Self.initialBackoff,
            giveUpAt: now + Self.vanishLimit,
            killSent: killSent
        )
        return [.reapMain, .reapJob]
    }

    private mutating func enterDraining(now: Int64) -> [Action] {
        if !pipesOpen {
            state = .finished
            return [.finish]
        }
        let limit = policy.drainLimit.clampedNanoseconds
        if limit <= 0 {
            outputTruncatedByDrainLimit = true
            state = .finished
            return [.closePipes, .finish]
        }
        state = .draining(until: now + limit)
        return []
    }
}
