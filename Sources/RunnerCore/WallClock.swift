import Glibc

/// The host's wall clock, for timestamps the runner writes itself (heartbeats, log entry ids). Everything that
/// decides about leases or ordering between hosts uses Redis's clock (`TIME` in the scripts) instead.
enum WallClock {
    /// Milliseconds since the Unix epoch (CLOCK_REALTIME).
    static func milliseconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int(now.tv_sec) * 1000 + Int(now.tv_nsec) / 1_000_000
    }
}
