import RedisClient
import RunnerProtocol
import Synchronization

/// One registration of a runner's lease: the token its job writes are fenced on, and the epoch's number.
final class LeaseEpoch: Sendable {
    let owner: AttemptOwner
    /// `INCR {nr}:fencing` when the lease was taken: later epochs of any runner have larger numbers.
    let number: Int
    /// Fired when the epoch ends (lease gone, not renewed in time, or the name taken): its jobs are stopped and every
    /// write about them is refused from then on.
    let ended = Latch()
    /// Set by the first `beginEnding()`: the end of an epoch is started once.
    private let ending = Mutex(false)
    /// The kill deadline of the epoch's last confirmed renewal (see `LeaseKeeper.killDeadline`).
    private let deadline: Mutex<ContinuousClock.Instant>
    /// The jobs its end (or its kill deadline) stopped, as their own tasks found, before their slots were freed.
    private let stopped = Mutex<Set<String>>([])

    init(owner: AttemptOwner, number: Int, killDeadline: ContinuousClock.Instant) {
        self.owner = owner
        self.number = number
        self.deadline = Mutex(killDeadline)
    }

    var token: String { owner.leaseToken }

    func confirm(killDeadline: ContinuousClock.Instant) { deadline.withLock { $0 = killDeadline } }

    /// True for the first caller only: that one ends the epoch.
    func beginEnding() -> Bool {
        ending.withLock { started in
            defer { started = true }
            return !started
        }
    }

    /// A job of this epoch was stopped by its end or its kill deadline (noted before its slot is freed).
    func noteStopped(_ job: String) { stopped.withLock { _ = $0.insert(job) } }

    /// The jobs noted by `noteStopped`: with those still running when the epoch ends, what its end stopped (the kill
    /// switch may have stopped a job, and its slot be free, before the end is handled).
    var stoppedJobs: Set<String> { stopped.withLock { $0 } }

    /// Whether the epoch ended or its kill deadline passed: a job killed now was killed by the kill switch (the
    /// watchdog fires at that deadline even before the runner notices), not by anything it did.
    var isOverdue: Bool { ended.isFired || ContinuousClock.now >= deadline.withLock { $0 } }
}

/// Holds the runner's lease key `{nr}:runner:<id>`: acquired with SET NX PX, extended only by the holder of the
/// token (compare-and-extend script), replaced by a new token when an epoch ends, deleted on clean exit.
///
/// Expiry is Redis's business (PX); the runner only measures, on its own monotonic clock, how long ago Redis last
/// confirmed the lease. Past two thirds of the TTL it can no longer vouch for it: the epoch must end.
actor LeaseKeeper {
    let key: String
    let runner: String
    let ttl: Duration
    /// How long after the last confirmation the runner stops its jobs: two thirds of the TTL, so that they are dead
    /// well before Redis lets the lease lapse and a reaper reschedules them.
    let killAfter: Duration
    private let client: RedisClient
    private let scripts: ScriptRunner
    private let fencingKey: String
    private(set) var epoch: LeaseEpoch
    /// When the last confirmed renewal was sent (this runner's monotonic clock, which keeps counting while it is
    /// paused). The send time, not the reply's: Redis extended the lease at or after it.
    private(set) var confirmedAt = ContinuousClock.now

    init(client: RedisClient, keyspace: Keyspace, runner: String, ttl: Duration) {
        self.client = client
        self.scripts = ScriptRunner(client: client)
        self.key = keyspace.lease(runner: runner)
        self.fencingKey = keyspace.fencing
        self.runner = runner
        self.ttl = ttl
        self.killAfter = ttl * 2 / 3
        self.epoch = LeaseEpoch(
            owner: AttemptOwner(runner: runner, leaseToken: LeaseKeeper.newToken()), number: 0,
            killDeadline: .now + ttl * 2 / 3)
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

    /// The moment the current epoch's jobs must be dead by, unless a renewal is confirmed before it.
    var killDeadline: ContinuousClock.Instant { confirmedAt + killAfter }

    /// SET key token NX PX ttl (and a new epoch number). Throws `WorkerError.nameInUse` when another live runner
    /// holds the name.
    func acquire() async throws {
        let sentAt = ContinuousClock.now
        let reply = try await scripts.run(
            RunnerScripts.acquireLease, keys: [key, fencingKey],
            arguments: [Array(epoch.token.utf8), Array(String(ttl.milliseconds).utf8)])
        guard let number = reply.int else { throw await nameInUse() }
        confirmedAt = sentAt
        epoch = LeaseEpoch(owner: epoch.owner, number: number, killDeadline: killDeadline)
    }

    private func nameInUse() async -> WorkerError {
        let left = try? await client.send(RedisCommand(["PTTL", key])).int
        let expiry = left.flatMap { $0 > 0 ? " (if that runner died, its lease expires in \($0) ms)" : nil } ?? ""
        return WorkerError(
            .nameInUse, "runner name '\(runner)' is in use: its lease \(key) is held by another runner\(expiry)")
    }

    /// What a renewal found.
    enum Renewal: Equatable {
        /// Extended: the new kill deadline.
        case renewed(killDeadline: ContinuousClock.Instant)
        /// The lease no longer holds this epoch's token (expired, deleted, or taken): the epoch is over.
        case lost
        /// Redis has not confirmed the lease for two thirds of its TTL: the epoch is over whatever Redis says now
        /// (a watchdog may have stopped its jobs already). Also the answer once the epoch has ended.
        case overdue
    }

    /// Extends the lease (compare-and-extend), unless it is too late for this epoch.
    func renew() async throws -> Renewal {
        let current = epoch
        let sentAt = ContinuousClock.now
        guard !current.ended.isFired, sentAt < killDeadline else { return .overdue }
        let reply = try await scripts.run(
            RunnerScripts.renewLease, keys: [key],
            arguments: [Array(current.token.utf8), Array(String(ttl.milliseconds).utf8)])
        // A reply that comes after the deadline is too late even if Redis extended the lease: the kill switch may
        // have fired meanwhile, and the epoch's jobs are dead or dying.
        guard current === epoch, !current.ended.isFired, ContinuousClock.now < killDeadline else { return .overdue }
        guard reply.int == 1 else { return .lost }
        confirmedAt = sentAt
        current.confirm(killDeadline: killDeadline)
        return .renewed(killDeadline: killDeadline)
    }

    /// Whether Redis confirmed the lease less than half a TTL ago.
    var isFresh: Bool { ContinuousClock.now - confirmedAt < ttl / 2 }

    /// How an epoch ended and the next began.
    struct Rotation: Sendable {
        var old: LeaseEpoch
        var new: LeaseEpoch
        /// Whether the old token still held the lease when it was replaced (the runner was slow or cut off, and its
        /// lease had not lapsed yet), or the lease was gone.
        var oldTokenWasHeld: Bool
    }

    /// Ends the current epoch and starts the next with a new token: replaces the old token if still held, or takes
    /// the free lease (one script, waiting for Redis while it is unreachable). Throws `WorkerError.nameInUse` when
    /// another runner holds the name now.
    func rotate() async throws -> Rotation {
        let old = epoch
        old.ended.fire()
        let token = LeaseKeeper.newToken()
        // Retried here, not inside the client: the new epoch's clock starts at the send that Redis answered, never at
        // the start of an outage (that epoch would begin past its own kill deadline and end again at once).
        var sentAt: ContinuousClock.Instant
        var reply: RedisReply
        while true {
            sentAt = .now
            do {
                reply = try await scripts.run(
                    RunnerScripts.rotateLease, keys: [key, fencingKey],
                    arguments: [Array(old.token.utf8), Array(token.utf8), Array(String(ttl.milliseconds).utf8)],
                    retry: .never)
                break
            } catch let error as RedisClientError where error.code != .closed && error.code != .invalidEndpoint {
                try await Task.sleep(for: .milliseconds(200))
            } catch let error as RedisServerError where LeaseKeeper.transientKinds.contains(error.kind) {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        guard let parts = reply.array, parts.count == 2, let number = parts[0].int else { throw await nameInUse() }
        // A reply that came late (a Redis that stalled, then answered) would start the epoch so near its kill deadline
        // that the next renewal, a third of the TTL later, found it overdue and ended it again at once, rescheduling
        // what it had read meanwhile. The same script again, from a fresh send, confirms it: with the new token held
        // it only extends the lease. Its epoch number is the first reply's; one that fails leaves it to the renewals.
        for _ in 0..<3 where ContinuousClock.now - sentAt >= ttl / 3 {
            let resentAt = ContinuousClock.now
            guard
                let again = try? await scripts.run(
                    RunnerScripts.rotateLease, keys: [key, fencingKey],
                    arguments: [Array(old.token.utf8), Array(token.utf8), Array(String(ttl.milliseconds).utf8)],
                    retry: .never), again.array?.count == 2
            else { break }
            sentAt = resentAt
        }
        confirmedAt = sentAt
        let new = LeaseEpoch(
            owner: AttemptOwner(runner: runner, leaseToken: token), number: number, killDeadline: killDeadline)
        epoch = new
        return Rotation(old: old, new: new, oldTokenWasHeld: parts[1].int == 1)
    }

    /// Server errors a restarting or busy Redis answers with for a while.
    static let transientKinds: Set<String> = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY"]

    /// Deletes the lease if this runner still holds it.
    func release() async throws {
        _ = try await scripts.run(RunnerScripts.releaseLease, keys: [key], arguments: [Array(epoch.token.utf8)])
    }
}
