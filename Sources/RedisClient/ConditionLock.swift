#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A value guarded by a pthread mutex, with a condition variable (on CLOCK_MONOTONIC) to wait for changes.
///
/// `@unchecked Sendable` is safe: `value` is only reachable inside `withLock`, which holds the mutex, and the mutex
/// and condition live at fixed heap addresses for the box's lifetime (pthread objects must not move).
final class ConditionLock<Value>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// Runs `body` with the mutex held.
    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Holds the mutex, waiting on the condition until `ready` returns non-nil or `timeout` (if any) has passed;
    /// returns `ready`'s result, or nil on timeout.
    func wait<Result>(timeout: Duration? = nil, until ready: (inout Value) -> Result?) -> Result? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var deadline = timeout.map { monotonicTimespec(after: $0) }
        while true {
            if let result = ready(&value) {
                return result
            }
            if deadline != nil {
                if pthread_cond_timedwait(condition, mutex, &deadline!) == ETIMEDOUT {
                    return ready(&value)
                }
            } else {
                pthread_cond_wait(condition, mutex)
            }
        }
    }

    /// Wakes the waiter (pthread_cond_broadcast).
    func signal() {
        pthread_cond_broadcast(condition)
    }
}
