import Foundation
import RedisClient
import RunnerProtocol
import Synchronization

/// What the worker's presence loop publishes: the runner's part of a heartbeat.
struct HeartbeatContent: Sendable, Equatable {
    var state: RunnerState
    var free: Int
    var running: [String]
    var epoch: Int
    var resources = ResourceCapacity()
}

/// The last registry record Redis applied from this runner, apart from its time (`heartbeat_at`), as far as the
/// runner knows: whether the next heartbeat would say anything new. The record holds everything a heartbeat entry
/// says, and more (counters such as `jobs_finished`).
///
/// Publishes go out in order on one connection, so the one sent last is the one Redis applied last: each send takes a
/// ticket, and only a confirmed send with a later ticket than the one recorded replaces it. A send that failed is not
/// recorded (Redis may or may not have it), so the next heartbeat that differs from the record publishes again.
final class PublishedHeartbeat: Sendable {
    private struct Record {
        var tickets = 0
        var ticket = 0
        var said: [String: JSONValue]?
        var sentAt: ContinuousClock.Instant?
    }
    private let record = Mutex(Record())

    /// A ticket for a publish about to be sent, and the moment it was sent.
    func send() -> (ticket: Int, at: ContinuousClock.Instant) {
        record.withLock { record in
            record.tickets += 1
            return (record.tickets, .now)
        }
    }

    /// Redis confirmed the publish with `ticket` of a record that says `said`.
    func confirm(_ said: [String: JSONValue], ticket: Int, sentAt: ContinuousClock.Instant) {
        record.withLock { record in
            guard ticket > record.ticket else { return }
            record.ticket = ticket
            record.said = said
            record.sentAt = sentAt
        }
    }

    /// Whether Redis has a record that says `said`, from a publish sent less than `refresh` ago.
    func isCurrent(_ said: [String: JSONValue], refresh: Duration) -> Bool {
        record.withLock { record in
            guard record.said == said, let sentAt = record.sentAt else { return false }
            return ContinuousClock.now - sentAt < refresh
        }
    }
}

/// Publishes the runner's heartbeats on `{nr}:heartbeats` and its record in the `{nr}:runners` registry.
struct Presence: Sendable {
    let client: RedisClient
    let keyspace: Keyspace
    let configuration: WorkerConfiguration
    let startedAtMs: Int
    /// Fields the record carries besides the runner's own state (counters, fields taken over by a resumed identity).
    var extras = RegistryExtras()
    /// What the last publish told Redis (shared by the copies of this presence).
    let published = PublishedHeartbeat()

    func record(
        state: RunnerState, free: Int, running: [String], epoch: Int, resources: ResourceCapacity = ResourceCapacity()
    ) -> JSONValue {
        var record: [String: JSONValue] = extras.fields
        let own: [String: JSONValue] = [
            RunnerRecordField.node: .string(configuration.node),
            RunnerRecordField.pid: .int(Int(getpid())),
            RunnerRecordField.version: .string(configuration.version),
            RunnerRecordField.queues: .array(configuration.queues.map(JSONValue.string)),
            RunnerRecordField.capacity: .int(configuration.concurrency),
            RunnerRecordField.state: .string(state.rawValue),
            RunnerRecordField.startedAt: .int(startedAtMs),
            RunnerRecordField.capacityFree: .int(free),
            RunnerRecordField.running: .array(running.map(JSONValue.string)),
            RunnerRecordField.heartbeatAt: .int(WallClock.milliseconds()),
            RunnerRecordField.epoch: .int(epoch),
            RunnerRecordField.memoryReserved: .int(Int(clamping: resources.memoryReservedBytes)),
            RunnerRecordField.waitingForResources: .int(resources.waiting),
            ProtocolVersion.field: .int(ProtocolVersion.current),
            RunnerRecordField.labels: configuration.labels.json,
        ]
        record.merge(own) { _, new in new }
        return .object(record)
    }

    /// XADD to the heartbeats stream and HSET the registry record, in one round trip.
    func publish(
        state: RunnerState, free: Int, running: [String], epoch: Int, resources: ResourceCapacity = ResourceCapacity(),
        retry: RedisRetry = .never
    ) async throws {
        let content = HeartbeatContent(state: state, free: free, running: running, epoch: epoch, resources: resources)
        try await send(content, record: record(content), retry: retry)
    }

    /// Publishes `content` unless the last publish said the same (the same record, apart from its time) less than
    /// `refresh` ago: an idle runner's heartbeat would only move `heartbeat_at`, and a change goes out at once.
    /// Returns whether it published.
    @discardableResult
    func publish(_ content: HeartbeatContent, unlessCurrentWithin refresh: Duration) async throws -> Bool {
        let record = record(content)
        guard !published.isCurrent(Presence.timeless(record), refresh: refresh) else { return false }
        try await send(content, record: record, retry: .never)
        return true
    }

    private func record(_ content: HeartbeatContent) -> JSONValue {
        record(
            state: content.state, free: content.free, running: content.running, epoch: content.epoch,
            resources: content.resources)
    }

    /// A record without its time: what it says.
    private static func timeless(_ record: JSONValue) -> [String: JSONValue] {
        var said = record.objectValue ?? [:]
        said[RunnerRecordField.heartbeatAt] = nil
        return said
    }

    private func send(_ content: HeartbeatContent, record: JSONValue, retry: RedisRetry) async throws {
        let runningJSON = JSONValue.array(content.running.map(JSONValue.string)).serialized
        let heartbeat = RedisCommand([
            "XADD", keyspace.heartbeats, "MAXLEN", "~", String(configuration.heartbeatsMaxLength), "*",
            HeartbeatField.runner, configuration.name, HeartbeatField.state, content.state.rawValue,
            HeartbeatField.capacityTotal, String(configuration.concurrency), HeartbeatField.capacityFree,
            String(content.free), HeartbeatField.running, runningJSON, HeartbeatField.timestamp,
            String(WallClock.milliseconds()), HeartbeatField.memoryReserved,
            String(content.resources.memoryReservedBytes), HeartbeatField.waitingForResources,
            String(content.resources.waiting), ProtocolVersion.field, String(ProtocolVersion.current),
            HeartbeatField.labels, configuration.labels.json.serialized,
        ])
        let registry = RedisCommand(["HSET", keyspace.runners, configuration.name, record.serialized])
        let sent = published.send()
        let replies = try await client.pipeline([heartbeat, registry], retry: retry)
        for case .error(let message) in replies {
            let error = RedisServerError(message)
            // Redis's own WRONGTYPE names no key: name the registry or heartbeats key of another type.
            if WrongTypeKey.isUnnamed(error),
                let found = try? await WrongTypeKey.find(
                    client: client, [keyspace.heartbeats: "stream", keyspace.runners: "hash"]
                ).first
            {
                throw found.error
            }
            throw error
        }
        published.confirm(Presence.timeless(record), ticket: sent.ticket, sentAt: sent.at)
    }

    /// Removes the registry record (clean exit).
    func unregister() async throws {
        _ = try await client.send(RedisCommand(["HDEL", keyspace.runners, configuration.name]))
    }
}
