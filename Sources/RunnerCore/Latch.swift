import Synchronization

/// A one-shot signal: `wait()` returns once `fire()` was called, or early when the waiting task is cancelled.
final class Latch: Sendable {
    private struct State {
        var fired = false
        var nextId: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    init(fired: Bool = false) {
        state.withLock { $0.fired = fired }
    }

    var isFired: Bool { state.withLock { $0.fired } }

    /// Releases every waiter, now and later.
    func fire() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.fired else { return [] }
            state.fired = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until fired or until the calling task is cancelled.
    func wait() async {
        let id = state.withLock { state -> UInt64 in
            state.nextId += 1
            return state.nextId
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}

/// Waits for whichever comes first: the latch, or the timeout. Returns true if the latch fired.
func wait(for latch: Latch, timeout: Duration) async -> Bool {
    if latch.isFired { return true }
    await withTaskGroup(of: Void.self) { group in
        group.addTask { await latch.wait() }
        group.addTask { try? await Task.sleep(for: timeout) }
        await group.next()
        group.cancelAll()
    }
    return latch.isFired
}
