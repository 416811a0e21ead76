import RedisClient

/// The pool's guarantees hold only while Redis keeps what it acknowledged (docs/guarantees.md): a Redis without an
/// append-only file loses, when it restarts, every job, lease and result written since its last snapshot.
public enum PersistenceCheck {
    /// CONFIG GET appendonly (and save): one warning when the append-only file is off, saying what a restart loses.
    /// Nothing is refused: a throwaway Redis (a demo, tests) is a choice. A Redis that does not answer CONFIG
    /// (renamed on managed services, which persist in their own way) gets no warning.
    public static func warnIfVolatile(client: RedisClient, logger: Logger) async {
        guard let appendonly = await setting("appendonly", client), appendonly == "no" else { return }
        let snapshots = await setting("save", client)
        let lost =
            snapshots == ""
            ? "loses every job, lease and result (no snapshots either: save is '')"
            : "loses every job, lease and result written since its last snapshot"
        logger.warning(
            "Redis runs without an append-only file (appendonly no): a restart of redis-server \(lost); "
                + "set appendonly yes where jobs must not be lost (docs/guarantees.md)")
    }

    private static func setting(_ name: String, _ client: RedisClient) async -> String? {
        guard let parts = try? await client.send(RedisCommand(["CONFIG", "GET", name])).array, parts.count == 2 else {
            return nil
        }
        return parts[1].string
    }
}
