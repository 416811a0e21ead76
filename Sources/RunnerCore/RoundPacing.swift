/// Paces rounds that follow events: a round may follow at once while the last `burst` rounds were spread out, and
/// no more than one per `gap` go out over time (a token bucket). A job's end is two changes of the slots a few
/// milliseconds apart (its process ended, its result written): both go out at once on a quiet runner, while a busy
/// runner, whose slots change with every job, reports four times a second.
struct RoundPacing {
    let gap: Duration
    let burst: Int
    private var tokens: Double
    private var refilledAt: ContinuousClock.Instant

    init(gap: Duration, burst: Int, now: ContinuousClock.Instant) {
        self.gap = gap
        self.burst = max(1, burst)
        self.tokens = Double(self.burst)
        self.refilledAt = now
    }

    /// How long to wait before the round that is due `now`; the round is counted.
    mutating func delay(now: ContinuousClock.Instant) -> Duration {
        tokens = min(Double(burst), tokens + (now - refilledAt) / gap)
        refilledAt = now
        tokens -= 1
        guard tokens < 0 else { return .zero }
        return gap * -tokens
    }
}
