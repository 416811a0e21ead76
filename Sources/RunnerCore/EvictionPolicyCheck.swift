import RedisClient

/// Redis's `maxmemory-policy` must be `noeviction`: any other policy may drop keys under memory pressure (leases
/// and fencing keys first, since `volatile-*` policies pick keys with a TTL), which silently breaks leases.
public enum EvictionPolicyCheck {
    /// The one policy that never evicts.
    public static let required = "noeviction"

    /// CONFIG GET maxmemory-policy. Throws `WorkerError.invalidConfiguration` naming the policy when it may evict,
    /// unless `allow` (then a warning). A Redis that does not answer CONFIG (renamed on managed services) gets a
    /// warning and is accepted.
    public static func verify(client: RedisClient, allow: Bool, logger: Logger) async throws {
        let policy: String?
        do {
            let reply = try await client.send(RedisCommand(["CONFIG", "GET", "maxmemory-policy"]))
            let parts = reply.array ?? []
            policy = parts.count == 2 ? parts[1].string : nil
        } catch let error as RedisServerError {
            logger.warning(
                "cannot check Redis's maxmemory-policy (\(error.message)); make sure it is \(required): "
                    + "an evicting policy silently breaks leases")
            return
        }
        guard let policy else {
            logger.warning("Redis did not report its maxmemory-policy; make sure it is \(required)")
            return
        }
        guard policy != required else { return }
        let problem =
            "Redis's maxmemory-policy is '\(policy)', which may evict keys and so silently break leases and "
            + "fencing; set it to '\(required)' (CONFIG SET maxmemory-policy \(required))"
        if allow {
            logger.warning(problem + " (running anyway: --allow-eviction-policy)")
            return
        }
        throw WorkerError(.invalidConfiguration, problem + ", or start with --allow-eviction-policy to run anyway")
    }
}
