import Synchronization

/// Cancel commands this runner accepted for jobs it runs, by job id: the executor reads them to tell a cancel
/// from a shutdown when a job's task is cancelled, and to report the teardown's phases.
final class JobCancellations: Sendable {
    /// Who asked, for the result's reason and the events.
    struct Request: Sendable, Equatable {
        var commandId: String
        var sentBy: String
    }

    private struct Entry {
        var request: Request?
        /// Run once when `request` is set (or at once when it was set before): the running job's reaction.
        var action: (@Sendable () -> Void)?
    }

    private let entries = Mutex<[String: Entry]>([:])

    /// Records a cancel for `jobId`; false when one was recorded already (the first one stands).
    func request(jobId: String, _ request: Request) -> Bool {
        let recorded = entries.withLock { entries -> (Bool, (@Sendable () -> Void)?) in
            var entry = entries[jobId] ?? Entry()
            guard entry.request == nil else { return (false, nil) }
            entry.request = request
            let action = entry.action
            entry.action = nil
            entries[jobId] = entry
            return (true, action)
        }
        recorded.1?()
        return recorded.0
    }

    /// The cancel recorded for `jobId`, if any.
    func request(for jobId: String) -> Request? {
        entries.withLock { $0[jobId]?.request }
    }

    /// Runs `action` once when a cancel is recorded for `jobId`, or now when one was recorded already. A closure
    /// rather than a waiting task: most jobs are never cancelled, and a task of its own for each would cost a
    /// wake-up per job.
    func onRequest(jobId: String, _ action: @escaping @Sendable () -> Void) {
        let requested = entries.withLock { entries -> Bool in
            var entry = entries[jobId] ?? Entry()
            if entry.request != nil { return true }
            entry.action = action
            entries[jobId] = entry
            return false
        }
        if requested { action() }
    }

    /// Forgets `jobId` once its attempt is recorded.
    func remove(jobId: String) {
        _ = entries.withLock { $0.removeValue(forKey: jobId) }
    }
}
