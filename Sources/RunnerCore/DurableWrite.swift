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

    static func perform<T: Sendable>(
        logger: Logger, initialBackoff: Duration = .milliseconds(100), maximumBackoff: Duration = .seconds(5),
        _ write: @Sendable () async throws -> T
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
            } catch {
                logger.error("could not record a job write: \(error)")
                return nil
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, maximumBackoff)
        }
    }
}
