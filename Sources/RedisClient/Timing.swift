#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

extension Duration {
    /// Whole seconds and the rest in microseconds, at least 1 µs: a zero `timeval` means "no timeout" to
    /// setsockopt(SO_RCVTIMEO), which redisSetTimeout calls.
    var asTimeval: timeval {
        let (seconds, attoseconds) = components
        let microseconds = attoseconds / 1_000_000_000_000
        if seconds < 0 || (seconds == 0 && microseconds == 0) {
            return timeval(tv_sec: 0, tv_usec: 1)
        }
        return timeval(tv_sec: Int(seconds), tv_usec: Int(microseconds))
    }

    /// Seconds as a Double, for messages.
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// "0.5 s", "10 s", for messages.
    var shortDescription: String {
        let value = seconds
        if value == value.rounded() {
            return "\(Int(value)) s"
        }
        return "\((value * 1000).rounded() / 1000) s"
    }
}

/// CLOCK_MONOTONIC now plus `duration`, for pthread_cond_timedwait on a condition set to that clock.
func monotonicTimespec(after duration: Duration) -> timespec {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    let (seconds, attoseconds) = duration.components
    let clamped = seconds < 0 ? (Int64(0), Int64(0)) : (min(seconds, 86_400 * 365), attoseconds)
    var sec = Int64(now.tv_sec) + clamped.0
    var nsec = Int64(now.tv_nsec) + clamped.1 / 1_000_000_000
    if nsec >= 1_000_000_000 {
        sec += 1
        nsec -= 1_000_000_000
    }
    return timespec(tv_sec: Int(sec), tv_nsec: Int(nsec))
}
