import RedisClient

/// Retries a write that is safe to resend (every job script is) until it lands.
///
/// The client already reconnects and resends after a lost connection; this also rides out what it leaves to the
/// caller: a read timeout (the write may or may not have happened, and resending is safe) and server errors that
/// pass (loading after a restart, a busy script, a replica or a full disk refusing writes for a while).
///
/// Each write says what held it up once, however often it is retried, and once more at info when it lands after
/// that (`job write recorded after N tries`). A write given up says so at most once per `givenUpEvery` for the same
/// error, however many writes hit it (a caller that tries again each turn would log it on every turn).
enum DurableWrite {
    /// Server error kinds that go away by themselves.
    static let transientKinds: Set<String> = [
        "LOADING", "BUSY", "MISCONF", "READONLY", "OOM", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS",
    ]

    /// How long the same "could not record a job write" error stays unsaid after it was logged.
    static let givenUpEvery: Duration = .seconds(30)

    /// The given-up errors logged, by their text.
    private static let givenUpLogged = ThrottledWarnings(every: givenUpEvery)

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
        var tries = 0
        while true {
            tries += 1
            do {
                let value = try await write()
                if reported { logger.info("job write recorded after \(tries) tries") }
                return value
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
                let text = "could not record a job write: \(error)"
                if shouldLogGivenUp(text) { logger.error(text) }
                return nil
            }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, maximumBackoff)
        }
    }

    /// True (and remembered) when `text` was not logged within `givenUpEvery`.
    static func shouldLogGivenUp(_ text: String, now: ContinuousClock.Instant = .now) -> Bool {
        givenUpLogged.allows(text, now: now)
    }
}
