import RedisClient
import RunnerProtocol

/// Holds the runner's lease key `{nr}:runner:<id>`: acquired with SET NX PX, extended only by the holder of the
/// token (compare-and-extend script), deleted on clean exit (compare-and-delete).
actor LeaseKeeper {
    let key: String
    let runner: String
    let ttl: Duration
    private let client: RedisClient
    private let scripts: ScriptRunner
    private(set) var token: String
    /// When Redis last confirmed the lease (this runner's monotonic clock, which keeps counting while it is paused).
    private(set) var confirmedAt = ContinuousClock.now

    init(client: RedisClient, keyspace: Keyspace, runner: String, ttl: Duration) {
        self.client = client
        self.scripts = ScriptRunner(client: client)
        self.key = keyspace.lease(runner: runner)
        self.runner = runner
        self.ttl = ttl
        self.token = LeaseKeeper.newToken()
    }

    static func newToken() -> String {
        let high = UInt64.random(in: .min ... .max)
        let low = UInt64.random(in: .min ... .max)
        func hex(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return hex(high) + hex(low)
    }

    /// SET key token NX PX ttl. Throws `WorkerError.nameInUse` when another live runner holds the name.
    func acquire() async throws {
        let reply = try await client.send(
            RedisCommand(["SET", key, token, "NX", "PX", String(ttl.milliseconds)]))
        if reply.isNull {
            let left = try? await client.send(RedisCommand(["PTTL", key])).int
            let expiry = left.flatMap { $0 > 0 ? " (if that runner died, its lease expires in \($0) ms)" : nil } ?? ""
            throw WorkerError(
                .nameInUse, "runner name '\(runner)' is in use: its lease \(key) is held by another runner\(expiry)")
        }
        confirmedAt = .now
    }

    /// Extends the lease; if it was lost (expired or deleted), takes it again with a new token when free.
    /// Returns whether the lease is held afterwards.
    func renew() async throws -> Bool {
        let reply = try await scripts.run(
            RunnerScripts.renewLease, keys: [key], arguments: [Array(token.utf8), Array(String(ttl.milliseconds).utf8)])
        if reply.int == 1 {
            confirmedAt = .now
            return true
        }
        token = LeaseKeeper.newToken()
        do {
            try await acquire()
            return true
        } catch let error as WorkerError where error.code == .nameInUse {
            return false
        }
    }

    /// Whether Redis confirmed the lease less than half a TTL ago.
    var isFresh: Bool { ContinuousClock.now - confirmedAt < ttl / 2 }

    /// Deletes the lease if this runner still holds it.
    func release() async throws {
        _ = try await scripts.run(RunnerScripts.releaseLease, keys: [key], arguments: [Array(token.utf8)])
    }
}
