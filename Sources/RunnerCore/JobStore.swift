import RedisClient
import RunnerProtocol

/// A job's outcome as recorded in its result hash.
public struct JobResultRecord: Sendable, Hashable {
    public var state: JobState
    public var exitCode: Int32?
    public var signal: Int32?
    public var reason: String?
    public var durationMs: Int
    public var outputTail: [UInt8]
    public var forcedKill: Bool
    public var pid: Int32?
    public var cpuUserMs: Int?
    public var cpuSystemMs: Int?
    /// What the isolation measured and what was in force; nil for a job that never started.
    var accounting: JobAccounting?

    public init(
        state: JobState, exitCode: Int32? = nil, signal: Int32? = nil, reason: String? = nil, durationMs: Int = 0,
        outputTail: [UInt8] = [], forcedKill: Bool = false, pid: Int32? = nil, cpuUserMs: Int? = nil,
        cpuSystemMs: Int? = nil
    ) {
        self.state = state
        self.exitCode = exitCode
        self.signal = signal
        self.reason = reason
        self.durationMs = durationMs
        self.outputTail = outputTail
        self.forcedKill = forcedKill
        self.pid = pid
        self.cpuUserMs = cpuUserMs
        self.cpuSystemMs = cpuSystemMs
    }

    /// The `data` of the terminal event.
    var eventData: JSONValue {
        var data: [String: JSONValue] = ["state": .string(state.rawValue), "duration_ms": .int(durationMs)]
        if let exitCode { data["exit_code"] = .int(Int(exitCode)) }
        if let signal { data["signal"] = .int(Int(signal)) }
        if let reason { data["reason"] = .string(reason) }
        if state == .timedOut { data["forced_kill"] = .bool(forcedKill) }
        if let cpuUserMs { data["cpu_user_ms"] = .int(cpuUserMs) }
        if let cpuSystemMs { data["cpu_system_ms"] = .int(cpuSystemMs) }
        for (field, value) in accountingFields { data[field] = value }
        return .object(data)
    }

    /// Result hash fields besides the ones the script sets itself.
    var hashFields: [(String, [UInt8])] {
        var fields: [(String, [UInt8])] = [
            (ResultField.durationMs, Array(String(durationMs).utf8)),
            (ResultField.outputTail, outputTail),
            (ResultField.forcedKill, forcedKill ? Array("1".utf8) : Array("0".utf8)),
            (ResultField.exitCode, exitCode.map { Array(String($0).utf8) } ?? []),
            (ResultField.signal, signal.map { Array(String($0).utf8) } ?? []),
            (ResultField.reason, Array((reason ?? "").utf8)),
        ]
        if let pid { fields.append((ResultField.pid, Array(String(pid).utf8))) }
        if let cpuUserMs { fields.append((ResultField.cpuUserMs, Array(String(cpuUserMs).utf8))) }
        if let cpuSystemMs { fields.append((ResultField.cpuSystemMs, Array(String(cpuSystemMs).utf8))) }
        for (field, value) in accountingFields {
            let text: String
            switch value {
            case .string(let s): text = s
            default: text = value.serialized
            }
            fields.append((field, Array(text.utf8)))
        }
        return fields
    }

    /// The accounting as result fields (the same names in the hash and in the terminal event's data).
    private var accountingFields: [(String, JSONValue)] {
        guard let accounting else { return [] }
        var fields: [(String, JSONValue)] = [
            (ResultField.isolation, .string(accounting.isolation.rawValue)),
            (ResultField.network, .string(accounting.network.rawValue)),
            (ResultField.limits, accounting.limits.jsonObject),
        ]
        if let requested = accounting.requestedIsolation {
            fields.append((ResultField.isolationRequested, .string(requested.rawValue)))
        }
        if let peak = accounting.peakMemoryBytes {
            fields.append((ResultField.peakMemoryBytes, .int(Int(clamping: peak))))
            fields.append((ResultField.peakMemorySource, .string(accounting.peakMemorySource ?? "sampled")))
        }
        if let processes = accounting.processes {
            fields.append((ResultField.processes, .int(Int(clamping: processes))))
        }
        return fields
    }
}

/// What a completion script did.
public enum CompletionOutcome: Sendable, Equatable {
    /// The result was written, the entry acked, the event emitted.
    case recorded
    /// It had been recorded before (a retry after a lost reply); the entry was acked again.
    case alreadyRecorded
    /// The job belongs to another runner or attempt now; nothing was written.
    case refused
}

/// The runner's writes about jobs, each one script (see `RunnerScripts`). Knows nothing of processes.
public struct JobStore: Sendable {
    public let keyspace: Keyspace
    let scripts: ScriptRunner
    let eventsMaxLength: Int
    let deadMaxLength: Int
    let retentionMs: Int

    init(scripts: ScriptRunner, keyspace: Keyspace, eventsMaxLength: Int, deadMaxLength: Int, retention: Duration) {
        self.scripts = scripts
        self.keyspace = keyspace
        self.eventsMaxLength = eventsMaxLength
        self.deadMaxLength = deadMaxLength
        self.retentionMs = max(1, retention.milliseconds)
    }

    public init(client: RedisClient, keyspace: Keyspace, eventsMaxLength: Int = 100_000) {
        self.init(
            scripts: ScriptRunner(client: client), keyspace: keyspace, eventsMaxLength: eventsMaxLength,
            deadMaxLength: 100_000, retention: .seconds(7 * 24 * 3600))
    }

    private static func bytes(_ strings: [String]) -> [[UInt8]] { strings.map { Array($0.utf8) } }

    /// Adds a job to a queue with its `queued` result hash (one script). Returns the stream entry id.
    /// Throws `RedisServerError` of kind `DUPLICATE` when the id exists.
    public func submit(id: String, spec: JobSpec, queue: String) async throws -> String {
        let reply = try await scripts.run(
            RunnerScripts.submit, keys: [keyspace.jobs(queue: queue), keyspace.job(id: id), keyspace.events],
            arguments: JobStore.bytes([id, spec.json.serialized, queue, String(eventsMaxLength)]))
        return reply.string ?? ""
    }

    /// What claiming an attempt found.
    enum Claim: Sendable, Equatable {
        /// The attempt is this runner's; Redis's clock says when it started.
        case claimed(startedAtMs: String)
        /// The job already ended at this attempt or later, or another runner runs it: a duplicate entry.
        case duplicate(state: String, attempt: String)
    }

    /// Claims an attempt before its process starts: state `running`, `job.received`.
    func claim(entry: JobEntry, runner: String, receivedData: JSONValue, retry: RedisRetry) async throws -> Claim {
        let reply = try await scripts.run(
            RunnerScripts.claim, keys: [keyspace.job(id: entry.jobId), keyspace.events],
            arguments: JobStore.bytes([
                entry.jobId, runner, String(entry.attempt), entry.streamId, entry.queue, String(eventsMaxLength),
            ]) + [entry.specJSON] + JobStore.bytes([receivedData.serialized]),
            retry: retry)
        let parts = reply.array ?? []
        if parts.first?.int == 1 { return .claimed(startedAtMs: parts.count > 1 ? parts[1].string ?? "" : "") }
        return .duplicate(
            state: parts.count > 1 ? parts[1].string ?? "" : "", attempt: parts.count > 2 ? parts[2].string ?? "" : "")
    }

    /// Records the pid of a claimed attempt and emits `job.started`.
    func started(entry: JobEntry, runner: String, pid: Int32, retry: RedisRetry) async throws {
        let data: JSONValue = ["pid": .int(Int(pid)), "attempt": .int(entry.attempt), "queue": .string(entry.queue)]
        _ = try await scripts.run(
            RunnerScripts.started, keys: [keyspace.job(id: entry.jobId), keyspace.events],
            arguments: JobStore.bytes([
                entry.jobId, runner, entry.streamId, String(pid), String(eventsMaxLength), data.serialized,
            ]),
            retry: retry)
    }

    /// Writes the result, acks and deletes the entry, then emits the terminal event (one script).
    func complete(
        entry: JobEntry, runner: String, result: JobResultRecord, startedAtMs: String?, retry: RedisRetry
    ) async throws -> CompletionOutcome {
        guard let event = EventType.terminal(for: result.state) else {
            preconditionFailure("complete() needs a terminal state, got \(result.state)")
        }
        var arguments =
            JobStore.bytes([
                entry.jobId, runner, String(entry.attempt), entry.streamId, Keyspace.consumerGroup,
                result.state.rawValue,
                event.rawValue, result.eventData.serialized, String(retentionMs), String(eventsMaxLength),
                startedAtMs ?? "", entry.queue,
            ]) + [entry.specJSON]
        for (field, value) in result.hashFields {
            arguments.append(Array(field.utf8))
            arguments.append(value)
        }
        let reply = try await scripts.run(
            RunnerScripts.complete,
            keys: [
                keyspace.job(id: entry.jobId), keyspace.jobs(queue: entry.queue), keyspace.events,
                keyspace.log(job: entry.jobId),
            ],
            arguments: arguments, retry: retry)
        switch reply.int {
        case 1: return .recorded
        case 0: return .alreadyRecorded
        default: return .refused
        }
    }

    /// Sends a malformed entry to the dead-letter stream with the reason, acks it, emits `job.rejected`.
    func reject(
        streamId: String, queue: String, fields: [(String, [UInt8])], reason: String, runner: String,
        retry: RedisRetry
    ) async throws {
        let jobId = JobEntry.jobId(in: fields) ?? ""
        var arguments = JobStore.bytes([
            jobId, runner, streamId, Keyspace.consumerGroup, reason, queue, String(eventsMaxLength),
            String(retentionMs), String(deadMaxLength),
        ])
        let reserved: Set<String> = Set(DeadLetterField.all + [ProtocolVersion.field])
        for (field, value) in fields where !reserved.contains(field) {
            arguments.append(Array(field.utf8))
            arguments.append(value)
        }
        _ = try await scripts.run(
            RunnerScripts.reject,
            keys: [keyspace.job(id: jobId), keyspace.jobs(queue: queue), keyspace.dead, keyspace.events],
            arguments: arguments, retry: retry)
    }

    /// Acks an entry whose payload is gone and emits `job.lost`.
    func lost(streamId: String, queue: String, runner: String, retry: RedisRetry) async throws {
        _ = try await scripts.run(
            RunnerScripts.lost, keys: [keyspace.jobs(queue: queue), keyspace.events],
            arguments: JobStore.bytes([streamId, Keyspace.consumerGroup, runner, String(eventsMaxLength), queue]),
            retry: retry)
    }

    /// Puts an unfinished job back on its queue with the same attempt and emits `job.handed_back`.
    func handBack(entry: JobEntry, runner: String, reason: String, retry: RedisRetry) async throws {
        try await requeue(
            entry: entry, runner: runner, nextAttempt: entry.attempt, event: .jobHandedBack,
            data: ["reason": .string(reason), "queue": .string(entry.queue)], retry: retry)
    }

    /// Queues the next attempt of a job whose attempt failed and emits `job.retry_scheduled` with that outcome.
    func retryNext(entry: JobEntry, runner: String, failed result: JobResultRecord, retry: RedisRetry) async throws {
        var data = result.eventData.objectValue ?? [:]
        data["queue"] = .string(entry.queue)
        data["failed_attempt"] = .int(entry.attempt)
        data["max_attempts"] = .int(entry.spec.maxAttempts)
        try await requeue(
            entry: entry, runner: runner, nextAttempt: entry.attempt + 1, event: .jobRetryScheduled,
            data: .object(data), retry: retry)
    }

    private func requeue(
        entry: JobEntry, runner: String, nextAttempt: Int, event: EventType, data: JSONValue, retry: RedisRetry
    ) async throws {
        _ = try await scripts.run(
            RunnerScripts.requeue,
            keys: [keyspace.job(id: entry.jobId), keyspace.jobs(queue: entry.queue), keyspace.events],
            arguments: JobStore.bytes([
                entry.jobId, runner, String(entry.attempt), entry.streamId, Keyspace.consumerGroup,
            ]) + [entry.specJSON]
                + JobStore.bytes([
                    entry.queue, String(nextAttempt), String(eventsMaxLength), event.rawValue, data.serialized,
                ]),
            retry: retry)
    }

    /// Removes a consumer from a queue's group if it has nothing pending. Returns false when it kept it.
    func removeConsumer(_ consumer: String, queue: String) async throws -> Bool {
        let reply = try await scripts.run(
            RunnerScripts.removeConsumer, keys: [keyspace.jobs(queue: queue)],
            arguments: JobStore.bytes([Keyspace.consumerGroup, consumer]))
        return reply.int != -1
    }

    /// Emits an event not tied to a job write (`runner.registered`, `runner.shutdown`), stamped by Redis's clock.
    func emit(_ type: EventType, runner: String, job: String = "", data: JSONValue, retry: RedisRetry) async throws {
        _ = try await scripts.run(
            RunnerScripts.emit, keys: [keyspace.events],
            arguments: JobStore.bytes([type.rawValue, runner, job, data.serialized, String(eventsMaxLength)]),
            retry: retry)
    }
}
