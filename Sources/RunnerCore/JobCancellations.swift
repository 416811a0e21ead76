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
        /// Fired when `request` is set; made by whichever comes first, the waiter or the request.
        let requested = Latch()
    }

    private let entries = Mutex<[String: Entry]>([:])

    /// Records a cancel for `jobId`; false when one was recorded already (the first one stands).
    func request(jobId: String, _ request: Request) -> Bool {
        let latch = entries.withLock { entries -> Latch? in
            var entry = entries[jobId] ?? Entry()
            guard entry.request == nil else { return nil }
            entry.request = request
            entries[jobId] = entry
            return entry.requested
        }
        latch?.fire()
        return latch != nil
    }

    /// The cancel recorded for `jobId`, if any.
    func request(for jobId: String) -> Request? {
        entries.withLock { $0[jobId]?.request }
    }

    /// Waits until a cancel is recorded for `jobId` (or the waiting task is cancelled).
    func waitForRequest(jobId: String) async {
        let latch = entries.withLock { entries -> Latch in
            if let entry = entries[jobId] { return entry.requested }
            let entry = Entry()
            entries[jobId] = entry
            return entry.requested
        }
        await latch.wait()
    }

    /// Forgets `jobId` once its attempt is recorded.
    func remove(jobId: String) {
        _ = entries.withLock { $0.removeValue(forKey: jobId) }
    }
}
