import Synchronization

/// The replies of a request sent without waiting: the caller goes on (makes a job's folder while its claim is in
/// flight, say) and collects the replies later, from the same task, with no task of its own for the wait.
///
/// The request is not withdrawn when the collecting task is cancelled: it is meant for writes that must land or
/// fail on their own (every job script is idempotent), so `replies()` waits for the outcome whatever happens to the
/// task. One collector.
final class PendingReplies: Sendable {
    private enum State {
        case waiting
        case collecting(CheckedContinuation<[RedisReply], any Error>)
        case done(Result<[RedisReply], any Error>)
    }

    private let state = Mutex(State.waiting)

    /// Called once, by the owner thread (or by `close()` and the submit that finds the client closed).
    func deliver(_ result: Result<[RedisReply], any Error>) {
        let collector: CheckedContinuation<[RedisReply], any Error>? = state.withLock { state in
            if case .collecting(let continuation) = state {
                state = .done(result)
                return continuation
            }
            state = .done(result)
            return nil
        }
        collector?.resume(with: result)
    }

    func replies() async throws -> [RedisReply] {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[RedisReply], any Error>) in
            let ready: Result<[RedisReply], any Error>? = state.withLock { state in
                if case .done(let result) = state { return result }
                state = .collecting(continuation)
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }
}

/// The reply of one command sent with `RedisClient.start(_:retry:)`.
public struct PendingReply: Sendable {
    let replies: PendingReplies

    /// Waits for the reply (not withdrawn by cancellation, see `start`). Throws as `RedisClient.send` does, but never
    /// `CancellationError`.
    public func value() async throws -> RedisReply {
        let replies = try await replies.replies()
        if case .error(let message) = replies[0] {
            throw RedisServerError(message)
        }
        return replies[0]
    }
}
