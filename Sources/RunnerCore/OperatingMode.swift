import RunnerProtocol

/// Whether a runner takes jobs, and what drain, resume, shutdown and migrate commands do to that: a state machine
/// without I/O. The worker performs the returned `Action` and reports the `Decision` as `runner.command`.
struct OperatingMode: Sendable, Equatable {
    private enum State: Sendable, Equatable {
        /// Taking jobs.
        case open
        /// Drained by a command: no intake until `resume`.
        case drained
        /// Shutting down (signal, `shutdown`, or a migration); `immediate` once running jobs are to stop now.
        case leaving(immediate: Bool, migration: Migration?)
    }

    /// Where a migrating runner goes.
    struct Migration: Sendable, Equatable {
        var toNode: String
        var takeoverTimeoutMs: Int
    }

    /// What the worker does after a decision.
    enum Action: Sendable, Equatable {
        case closeIntake
        case openIntake
        case shutDown
        case shutDownNow
    }

    /// A command's outcome and the action it asks for.
    struct Decision: Sendable, Equatable {
        var outcome: ControlOutcome
        var reason: String?
        var action: Action?

        static func accepted(_ action: Action) -> Decision { Decision(outcome: .accepted, action: action) }
        static func ignored(_ reason: String) -> Decision { Decision(outcome: .ignored, reason: reason) }
        static func rejected(_ reason: String) -> Decision { Decision(outcome: .rejected, reason: reason) }
    }

    private var state = State.open
    /// Jobs this runner may still take (`--exit-after-jobs`); nil: no bound.
    private(set) var remainingJobs: Int?
    private let jobLimit: Int?

    init(jobLimit: Int? = nil) {
        self.jobLimit = jobLimit
        remainingJobs = jobLimit
    }

    /// Whether intake may read now.
    var intakeOpen: Bool { state == .open && remainingJobs != 0 }

    /// Whether the runner is leaving for another node.
    var migration: Migration? {
        if case .leaving(_, let migration) = state { return migration }
        return nil
    }

    var isLeaving: Bool {
        if case .leaving = state { return true }
        return false
    }

    /// The state heartbeats and the registry show, given whether jobs run.
    func runnerState(jobsRunning: Bool) -> RunnerState {
        switch state {
        case .open: .running
        case .drained: jobsRunning ? .draining : .drained
        case .leaving: .draining
        }
    }

    /// `count` jobs were taken (never more than `remainingJobs`).
    mutating func took(_ count: Int) {
        if let left = remainingJobs { remainingJobs = max(0, left - count) }
    }

    /// `count` of the entries taken were no jobs to run here (malformed and rejected, their payload gone, routed to
    /// the runners with the labels they require): they give their place in the budget back.
    mutating func gaveBack(_ count: Int) {
        if let left = remainingJobs, let jobLimit { remainingJobs = min(jobLimit, left + count) }
    }

    /// A shutdown asked for by a signal (a second one means now).
    mutating func signalled() -> Action {
        if case .leaving(_, let migration) = state {
            state = .leaving(immediate: true, migration: migration)
            return .shutDownNow
        }
        state = .leaving(immediate: false, migration: nil)
        return .shutDown
    }

    /// Decides a control command other than `cancel` (which is about a job, not the runner). `jobsRunning`: whether
    /// jobs still run (a drained runner with jobs is still draining).
    mutating func handle(_ command: ControlCommand, jobsRunning: Bool = false) -> Decision {
        switch (command, state) {
        case (.cancel, _):
            return .rejected("cancel is decided per job")
        case (.drain, .open):
            state = .drained
            return .accepted(.closeIntake)
        case (.drain, .drained):
            return .ignored(jobsRunning ? "already draining" : "already drained")
        case (.resume, .drained):
            state = .open
            return .accepted(.openIntake)
        case (.resume, .open):
            return .ignored("not drained")
        case (.drain, .leaving), (.resume, .leaving), (.migrate, .leaving):
            return .rejected("the runner is shutting down")
        case (.shutdown(let now), .leaving(let immediate, let migration)):
            guard now, !immediate else { return .ignored("already shutting down") }
            state = .leaving(immediate: true, migration: migration)
            return .accepted(.shutDownNow)
        case (.shutdown(let now), _):
            state = .leaving(immediate: now, migration: nil)
            return .accepted(now ? .shutDownNow : .shutDown)
        case (.migrate(let node, let timeout), _):
            state = .leaving(immediate: false, migration: Migration(toNode: node, takeoverTimeoutMs: timeout))
            return .accepted(.shutDown)
        }
    }
}
