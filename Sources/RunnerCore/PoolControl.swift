import Foundation
import RedisClient
import RunnerProtocol

/// What `runner cancel` did.
public enum CancelRequest: Sendable, Equatable {
    /// The job had not started (`queued` or `retry_scheduled`, the previous state): it is `cancelled` now.
    case cancelled(previousState: String)
    /// The job runs on `runner`: a cancel command went to its control stream as `commandId`.
    case sent(runner: String, commandId: String)
    /// The job had already ended in this state.
    case alreadyEnded(state: String)
    /// No result hash: never submitted, or expired.
    case noSuchJob
}

/// Whether a runner id is known and alive.
public struct RunnerPresenceCheck: Sendable {
    /// Its registry record, if any.
    public var record: JSONValue?
    /// Whether its lease key exists.
    public var leaseHeld: Bool
}

extension PoolClient {
    /// Approximate MAXLEN of every control stream.
    public static let controlMaxLength = 1000

    /// The registry record and lease of a runner id.
    public func presence(of runner: String) async throws -> RunnerPresenceCheck {
        let record = try await WrongTypeKey.naming(client: client, [keyspace.runners: "hash"]) {
            try await client.send(RedisCommand(["HGET", keyspace.runners, runner])).bytes
        }
        let held = try await client.send(RedisCommand(["EXISTS", keyspace.lease(runner: runner)])).int == 1
        return RunnerPresenceCheck(record: record.flatMap { try? JSONValue(parsing: $0) }, leaseHeld: held)
    }

    /// XADD of a command to a runner's control stream (or the pool's, for nil). Returns the entry id: the command id
    /// its outcome event names.
    public func sendControl(_ command: ControlCommand, to runner: String?, sentBy: String) async throws -> String {
        let stream = runner.map { keyspace.control(runner: $0) } ?? keyspace.poolControl
        var arguments = ["XADD", stream, "MAXLEN", "~", String(PoolClient.controlMaxLength), "*"]
        for (name, value) in command.fields { arguments += [name, value] }
        arguments += [ControlField.sentBy, sentBy, ProtocolVersion.field, String(ProtocolVersion.current)]
        let reply = try await WrongTypeKey.naming(client: client, [stream: "stream"]) {
            try await client.send(RedisCommand(arguments))
        }
        guard let id = reply.string else {
            throw RedisServerError("ERR XADD to \(stream) returned no id")
        }
        return id
    }

    /// Cancels a job (one script): not started yet → `cancelled` now; running → a cancel command to its owner.
    public func cancel(job id: String, sentBy: String) async throws -> CancelRequest {
        try await store.cancel(jobId: id, sentBy: sentBy)
    }

    /// The id of the newest event (`0-0` when there is none): a position to wait for later events from.
    public func eventsPosition() async throws -> String {
        let reply = try await WrongTypeKey.naming(client: client, [keyspace.events: "stream"]) {
            try await client.send(RedisCommand(["XREVRANGE", keyspace.events, "+", "-", "COUNT", "1"]))
        }
        return reply.array?.first?.array?.first?.string ?? "0-0"
    }

    /// Waits (up to `timeout`) for the `runner.command` event about `commandId` on `runner`'s own stream (nil: the
    /// pool's) after `cursor`; nil if none came. (Entry ids are unique per stream only.)
    public func commandOutcome(
        commandId: String, runner: String?, after cursor: String, timeout: Duration
    ) async throws -> PoolEvent? {
        let stream = runner == nil ? "pool" : "runner"
        let deadline = ContinuousClock.now + timeout
        var cursor = cursor
        while true {
            let left = (deadline - ContinuousClock.now).milliseconds
            if left <= 0 { return nil }
            for event in try await events(after: cursor, block: .milliseconds(min(left, 5000))) {
                cursor = event.streamId
                guard event.type == EventType.runnerCommand.rawValue,
                    let data = try? JSONValue(parsing: Array(event.data.utf8)),
                    data["command_id"]?.stringValue == commandId, data["stream"]?.stringValue == stream,
                    runner == nil || event.runner == runner
                else { continue }
                return event
            }
        }
    }
}

extension JobStore {
    /// The cancel script (`ControlScripts.cancel`) on one job.
    func cancel(jobId id: String, sentBy: String) async throws -> CancelRequest {
        let reply = try await scripts.run(
            ControlScripts.cancel,
            keys: [keyspace.job(id: id), keyspace.events, keyspace.delayed, keyspace.log(job: id)],
            arguments: JobStore.bytes([
                id, sentBy, String(eventsMaxLength), String(retentionMs), keyspace.control(runner: ""),
                String(PoolClient.controlMaxLength), keyspace.jobs(queue: ""),
            ]))
        let parts = (reply.array ?? []).map { $0.string ?? ($0.int.map(String.init) ?? "") }
        func part(_ index: Int) -> String { index < parts.count ? parts[index] : "" }
        switch Int(part(0)) {
        case 1: return .cancelled(previousState: part(1))
        case 2: return .sent(runner: part(1), commandId: part(2))
        case 0: return .alreadyEnded(state: part(1))
        default: return .noSuchJob
        }
    }
}
