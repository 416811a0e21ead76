import RedisClient
import RunnerProtocol

/// Why a job is rescheduled (`job.rescheduled` data `reason`).
public enum RescheduleReason: String, Sendable {
    /// A reaper found the lease of the runner that held the entry gone.
    case leaseExpired = "lease_expired"
    /// The runner itself ended a lease epoch (or found an earlier run's entries) and moves what that epoch held.
    case leaseLost = "lease_lost"
}

/// What rescheduling one pending entry did.
public enum Rescheduled: Sendable, Equatable {
    /// It was no longer pending for that consumer (someone else dealt with it): nothing.
    case notPending
    /// Its payload was gone: acked, `job.lost`.
    case lost
    /// A stale duplicate of a job that ended or moved on: acked and deleted.
    case stale
    /// The runner running it still holds its lease: left alone.
    case ownerAlive
    /// Rescheduled too often from lost runners: `dead`.
    case dead(deadLetterId: String)
    /// Put back on its queue as this new entry.
    case requeued(streamId: String)
    /// A cancel was requested while it ran on the lost runner: `cancelled`, never run again.
    case cancelled
}

/// What `runner retry` did.
public enum ManualRequeue: Sendable, Equatable {
    case requeued(streamId: String, attempt: Int)
    /// The job is in another state (nil: there is no such job).
    case notRetriable(state: String?)
}

extension JobStore {
    /// Reschedules one entry pending for `consumer` (one script; see `RunnerScripts.reschedule`).
    public func reschedule(
        streamId: String, queue: String, consumer: String, reason: RescheduleReason, actor: String, bound: Int,
        countsTowardBound: Bool = true, retry: RedisRetry = .never
    ) async throws -> Rescheduled {
        let reply = try await scripts.run(
            RunnerScripts.reschedule, keys: [keyspace.jobs(queue: queue), keyspace.events, keyspace.dead],
            arguments: JobStore.bytes([
                streamId, Keyspace.consumerGroup, consumer, reason.rawValue, actor, String(eventsMaxLength),
                String(bound), String(deadMaxLength), String(retentionMs), keyspace.keyPrefix, queue,
                countsTowardBound ? "1" : "0",
            ]),
            retry: retry)
        let parts = reply.array ?? []
        let value = parts.count > 1 ? parts[1].string ?? "" : ""
        switch parts.first?.int {
        case 1: return .lost
        case 2, 6: return .requeued(streamId: value)
        case 3: return .stale
        case 4: return .ownerAlive
        case 5: return .dead(deadLetterId: value)
        case 7: return .cancelled
        default: return .notPending
        }
    }

    /// Moves due retries from `{nr}:delayed` back onto their queues. Returns how many moved and how long until the
    /// next one is due (nil when none waits).
    public func moveDue(limit: Int = 100, retry: RedisRetry = .never) async throws -> (
        moved: Int, nextDue: Duration?
    ) {
        let reply = try await scripts.run(
            RunnerScripts.moveDue, keys: [keyspace.delayed],
            arguments: JobStore.bytes([keyspace.keyPrefix, String(limit)]), retry: retry)
        let parts = reply.array ?? []
        let moved = parts.first?.int ?? 0
        let next = parts.count > 1 ? parts[1].int ?? -1 : -1
        return (moved, next < 0 ? nil : .milliseconds(next))
    }

    /// Keeps or takes the reaper leader lease and, as the leader, moves due retries (one script). Returns nil when
    /// another reaper leads, else how many moved and how long until the next one is due.
    func leadAndMove(token: String, ttl: Duration, limit: Int = 100) async throws -> (
        moved: Int, nextDue: Duration?
    )? {
        guard case .leads(let moved, let nextDue) = try await leaderTurn(token: token, ttl: ttl, limit: limit) else {
            return nil
        }
        return (moved, nextDue)
    }

    /// `leadAndMove`, saying who holds the lease when another reaper leads (its value as it is stored).
    func leaderTurn(token: String, ttl: Duration, limit: Int = 100) async throws -> ReaperTurn {
        let reply = try await scripts.run(
            RunnerScripts.leadAndMove, keys: [keyspace.reaper, keyspace.delayed],
            arguments: JobStore.bytes([token, String(ttl.milliseconds), keyspace.keyPrefix, String(limit)]))
        let parts = reply.array ?? []
        guard parts.first?.int == 1, parts.count == 3 else {
            return .standsBy(lease: parts.count > 1 ? parts[1].string : nil)
        }
        let next = parts[2].int ?? -1
        return .leads(moved: parts[1].int ?? 0, nextDue: next < 0 ? nil : .milliseconds(next))
    }

    /// Requeues a `dead`, `failed` or `timed_out` job by hand (`job.requeued`).
    public func requeueByHand(id: String, actor: String) async throws -> ManualRequeue {
        let reply = try await scripts.run(
            RunnerScripts.requeueByHand, keys: [keyspace.job(id: id), keyspace.events, keyspace.delayed],
            arguments: JobStore.bytes([id, String(eventsMaxLength), keyspace.keyPrefix, actor]))
        let parts = reply.array ?? []
        let value = parts.count > 1 ? parts[1].string ?? "" : ""
        if parts.first?.int == 1 {
            return .requeued(streamId: value, attempt: parts.count > 2 ? parts[2].int ?? 0 : 0)
        }
        return .notRetriable(state: value.isEmpty ? nil : value)
    }

    /// Marks a runner whose lease is gone as lost and emits `runner.lost`, if its record is still `recordAsRead`.
    /// Returns whether it did.
    func markLost(
        runner: String, recordAsRead: [UInt8], lostRecord: JSONValue, data: JSONValue,
        event: EventType = .runnerLost
    ) async throws -> Bool {
        let reply = try await scripts.run(
            RunnerScripts.markLost, keys: [keyspace.runners, keyspace.lease(runner: runner), keyspace.events],
            arguments: [Array(runner.utf8), recordAsRead]
                + JobStore.bytes([lostRecord.serialized, String(eventsMaxLength), data.serialized, event.rawValue]))
        return reply.int == 1
    }

    /// Removes a lost runner's registry record if it is still `recordAsRead` and its lease still gone.
    func forgetRunner(_ runner: String, recordAsRead: [UInt8]) async throws {
        _ = try await scripts.run(
            RunnerScripts.forgetRunner, keys: [keyspace.runners, keyspace.lease(runner: runner)],
            arguments: [Array(runner.utf8), recordAsRead])
    }
}
