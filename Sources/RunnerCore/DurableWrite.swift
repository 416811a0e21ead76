import RedisClient

/// Retries a write that is safe to resend (every job script is) until it lands.
///
/// The client already reconnects and resends after a lost connection; this also rides out what it leaves to the
/// caller: a read timeout (the write may or may not have happened, and resending is safe) and server errors that
/// pass (loading after a restart, a busy script, a replica or a full disk refusing writes for a while).
enum DurableWrite {
    /// Server error kinds that go away by themselves.
    static let transientKinds: Set<String> = [
        "LOADING", "BUSY", "MISCONF", "READONLY", "OOM", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS",
    ]

    /// With `untilAccepted`, a server error of any kind is retried too (logged once as an error): for a write about
    /// an attempt, giving up would leave its entry pending to be claimed again in this epoch, and the claim takes that
    /// for a resent one, so the attempt would run twice. A write that can never land then holds its slot (and says
    /// so) until the key is fixed, or until shutdown closes the client.
    static func perform<T: Sendable>(
        logger: Logger, initialBackoff: Duration = .milliseconds(100), maximumBackoff: Duration = .seconds(5),
        untilAccepted: Bool = false, _ write: @Sendable () async throws -> T
    ) async -> T? {
        var backoff = initialBackoff
        var reported = false
        while true {
            do {
                return try await write()
            } catch let error as RedisClientError where error.code != .closed {
                if !reported { logger.warning("a job write did not reach Redis (\(error.message)); retrying") }
                reported = true
            } catch let error as RedisServerError where transientKinds.contains(error.kind) {
                if !reported { logger.warning("Redis refused a job write for now (\(error.message)); retrying") }
                reported = true
            } catch let error as RedisServerError where untilAccepted {
                if !reported {
                    logger.error(
                        "Redis refused a job write: \(error.message); retrying until it is accepted "
                            + "(the job keeps its slot and is not run again meanwhile)")
                }
                reported = true
            } catch {
                logger.error("could not record a job write: \(error)")
                return nil
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, maximumBackoff)
        }
    }
}
