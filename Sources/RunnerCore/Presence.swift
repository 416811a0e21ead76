import Foundation
import RedisClient
import RunnerProtocol

/// Publishes the runner's heartbeats on `{nr}:heartbeats` and its record in the `{nr}:runners` registry.
struct Presence: Sendable {
    let client: RedisClient
    let keyspace: Keyspace
    let configuration: WorkerConfiguration
    let startedAtMs: Int
    /// Fields the record carries besides the runner's own state (counters, fields taken over by a resumed identity).
    var extras = RegistryExtras()

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
        let runningJSON = JSONValue.array(running.map(JSONValue.string)).serialized
        let heartbeat = RedisCommand([
            "XADD", keyspace.heartbeats, "MAXLEN", "~", String(configuration.heartbeatsMaxLength), "*",
            HeartbeatField.runner, configuration.name, HeartbeatField.state, state.rawValue,
            HeartbeatField.capacityTotal, String(configuration.concurrency), HeartbeatField.capacityFree, String(free),
            HeartbeatField.running, runningJSON, HeartbeatField.timestamp, String(WallClock.milliseconds()),
            HeartbeatField.memoryReserved, String(resources.memoryReservedBytes), HeartbeatField.waitingForResources,
            String(resources.waiting), ProtocolVersion.field, String(ProtocolVersion.current), HeartbeatField.labels,
            configuration.labels.json.serialized,
        ])
        let registry = RedisCommand([
            "HSET", keyspace.runners, configuration.name,
            record(state: state, free: free, running: running, epoch: epoch, resources: resources).serialized,
        ])
        let replies = try await client.pipeline([heartbeat, registry], retry: retry)
        for case .error(let message) in replies { throw RedisServerError(message) }
    }

    /// Removes the registry record (clean exit).
    func unregister() async throws {
        _ = try await client.send(RedisCommand(["HDEL", keyspace.runners, configuration.name]))
    }
}
