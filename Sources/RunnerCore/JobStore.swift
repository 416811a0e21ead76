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
    /// The post-job hook's exit code: nil without a hook, `.some(nil)` when it did not exit (killed, timed out).
    var postHookExitCode: Int32??

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
        if state == .timedOut || state == .cancelled { data["forced_kill"] = .bool(forcedKill) }
        if let cpuUserMs { data["cpu_user_ms"] = .int(cpuUserMs) }
        if let cpuSystemMs { data["cpu_system_ms"] = .int(cpuSystemMs) }
        for (field, value) in accountingFields { data[field] = value }
        if let postHookExitCode { data[ResultField.postHookExitCode] = postHookExitCode.map { .int(Int($0)) } ?? .null }
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
        if let postHookExitCode {
            fields.append((ResultField.postHookExitCode, Array((postHookExitCode.map { String($0) } ?? "").utf8)))
        }
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
    /// The job belongs to another runner, attempt or lease epoch now; nothing was written but `job.stale_result`.
    case refused
}

/// Who writes about an attempt: a runner, and the lease token (epoch) under which it claimed the attempt.
public struct AttemptOwner: Sendable, Hashable {
    public var runner: String
    public var leaseToken: String

    public init(runner: String, leaseToken: String) {
        self.runner = runner
        self.leaseToken = leaseToken
    }
}

/// The runner's writes about jobs, each one script (see `RunnerScripts`). Knows nothing of processes.
public struct JobStore: Sendable {
    public let keyspace: Keyspace
    let scripts: ScriptRunner
    let eventsMaxLength: Int
    let deadMaxLength: Int
    let retentionMs: Int
    /// One warning a minute per key for the runner's own event writes refused for the key's type.
    let wrongTypeWarnings = ThrottledWarnings(every: .seconds(60))

    init(scripts: ScriptRunner, keyspace: Keyspace, eventsMaxLength: Int, deadMaxLength: Int, retention: Duration) {
        self.scripts = scripts
        self.keyspace = keyspace
        self.eventsMaxLength = eventsMaxLength
        self.deadMaxLength = deadMaxLength
        self.retentionMs = max(1, retention.milliseconds)
    }

    public init(
        client: RedisClient, keyspace: Keyspace, eventsMaxLength: Int = 100_000,
        retention: Duration = .seconds(7 * 24 * 3600)
    ) {
        self.init(
            scripts: ScriptRunner(client: client), keyspace: keyspace, eventsMaxLength: eventsMaxLength,
            deadMaxLength: 100_000, retention: retention)
    }

    static func bytes(_ strings: [String]) -> [[UInt8]] { strings.map { Array($0.utf8) } }

    /// Field/value pairs as a flat argument list.
    static func flattened(_ pairs: [(String, [UInt8])]) -> [[UInt8]] {
        pairs.flatMap { [Array($0.0.utf8), $0.1] }
    }

    /// What a submission did.
    public enum Submission: Sendable, Equatable {
        /// The job was added as this stream entry.
        case created(streamId: String)
        /// The idempotency key was taken already: nothing was added; this is the job it belongs to.
        case existing(jobId: String)
    }

    /// Adds a job to a queue with its `queued` result hash (one script). With an idempotency key that is taken,
    /// adds nothing and answers the job it names. Throws `RedisServerError` of kind `DUPLICATE` when the id exists.
    public func submit(id: String, spec: JobSpec, queue: String, idempotencyKey: String? = nil) async throws
        -> Submission
    {
        let idempotency = idempotencyKey.map { keyspace.idempotency(key: $0) } ?? keyspace.events
        let reply = try await scripts.run(
            RunnerScripts.submit,
            keys: [keyspace.jobs(queue: queue), keyspace.job(id: id), keyspace.events, idempotency],
            arguments: JobStore.bytes([
                id, spec.json.serialized, queue, String(eventsMaxLength), idempotencyKey ?? "", String(retentionMs),
            ]))
        let parts = reply.array ?? []
        let value = parts.count > 1 ? parts[1].string ?? "" : ""
        return parts.first?.int == 1 ? .created(streamId: value) : .existing(jobId: value)
    }

    /// What claiming an attempt found.
    enum Claim: Sendable, Equatable {
        /// The attempt is this runner's: Redis's clock says when it started; its fencing token; failed attempts
        /// so far.
        case claimed(startedAtMs: String, fencingToken: String, failures: Int)
        /// The job already ended at this attempt or later, or another entry holds it: a duplicate entry.
        case duplicate(state: String, attempt: String)
        /// The lease no longer holds this epoch's token: nothing was written; the entry stays pending.
        case leaseLost
        /// An earlier epoch of this runner claimed it: it must be rescheduled, not run.
        case earlierEpoch
        /// The entry's idempotency key belongs to another job.
        case idempotencyKeyTaken(jobId: String)
        /// Another runner, alive, runs this very entry (delivered again after its group was recreated).
        case runningElsewhere(runner: String)
        /// Another runner had claimed this entry and its lease is gone: reschedule it as a lost runner's.
        case claimedByLostRunner(runner: String)
        /// The job was cancelled: its entry was acked and deleted, nothing runs.
        case cancelled
    }

    /// Claims an attempt before its process starts: state `running` under this epoch, a fencing token,
    /// `job.received`.
    func claim(entry: JobEntry, owner: AttemptOwner, receivedData: JSONValue, retry: RedisRetry) async throws -> Claim {
        try await startClaim(entry: entry, owner: owner, receivedData: receivedData, retry: retry).value()
    }

    /// Sends the claim script at once and returns: the caller can make the job's folder while the round trip is in
    /// flight, on its own task, and then collect the outcome. Not withdrawn by the task's cancellation.
    func startClaim(entry: JobEntry, owner: AttemptOwner, receivedData: JSONValue, retry: RedisRetry) -> PendingClaim {
        let idempotency = entry.idempotencyKey.map { keyspace.idempotency(key: $0) } ?? keyspace.events
        let reply = scripts.start(
            RunnerScripts.claim,
            keys: [
                keyspace.job(id: entry.jobId), keyspace.events, keyspace.lease(runner: owner.runner),
                keyspace.fencing, idempotency, keyspace.jobs(queue: entry.queue), keyspace.log(job: entry.jobId),
                keyspace.delayed, keyspace.dead,
            ],
            arguments: JobStore.bytes([
                entry.jobId, owner.runner, String(entry.attempt), entry.streamId, entry.queue, String(eventsMaxLength),
            ]) + [entry.specJSON]
                + JobStore.bytes([
                    receivedData.serialized, owner.leaseToken, entry.idempotencyKey ?? "", String(retentionMs),
                    Keyspace.consumerGroup,
                ]),
            retry: retry)
        return PendingClaim(reply: reply)
    }

    /// A claim in flight (`startClaim`).
    struct PendingClaim: Sendable {
        let reply: PendingScriptReply

        func value() async throws -> Claim {
            let parts = (try await reply.value().array ?? []).map { $0.string ?? ($0.int.map(String.init) ?? "") }
            func part(_ index: Int) -> String { index < parts.count ? parts[index] : "" }
            switch Int(part(0)) {
            case 1: return .claimed(startedAtMs: part(1), fencingToken: part(2), failures: Int(part(3)) ?? 0)
            case -1: return .leaseLost
            case -2: return .earlierEpoch
            case -3: return .idempotencyKeyTaken(jobId: part(1))
            case -4: return .runningElsewhere(runner: part(1))
            case -5: return .claimedByLostRunner(runner: part(1))
            case -6: return .cancelled
            default: return .duplicate(state: part(1), attempt: part(2))
            }
        }
    }

    /// Records the pid of a claimed attempt and emits `job.started`.
    func started(entry: JobEntry, owner: AttemptOwner, pid: Int32, retry: RedisRetry) async throws {
        let data = JobStore.startedData(entry: entry, pid: pid)
        _ = try await scripts.run(
            RunnerScripts.started,
            keys: [keyspace.job(id: entry.jobId), keyspace.events, keyspace.lease(runner: owner.runner)],
            arguments: JobStore.bytes([
                entry.jobId, owner.runner, entry.streamId, String(pid), String(eventsMaxLength), data.serialized,
                owner.leaseToken,
            ]),
            retry: retry)
    }

    /// The data of `job.started`.
    static func startedData(entry: JobEntry, pid: Int32) -> JSONValue {
        ["pid": .int(Int(pid)), "attempt": .int(entry.attempt), "queue": .string(entry.queue)]
    }

    /// How an append to a job's log stream ended.
    enum LogAppend: Sendable, Equatable {
        case accepted
        /// The attempt is no longer this runner's epoch's: nothing written.
        case refused
        /// The log key holds this type instead of a stream: the batch was not written.
        case wrongType(String)
    }

    /// Appends a batch of output entries (explicit id, fd, data) to the job's log, fenced on the attempt.
    /// `.refused` when the attempt is no longer this epoch's, `.wrongType` when the log key holds another type
    /// (nothing was written either way).
    func appendLog(
        jobId: String, streamId: String, owner: AttemptOwner, entries: [(id: String, fd: String, data: [UInt8])],
        retry: RedisRetry
    ) async throws -> LogAppend {
        var arguments = JobStore.bytes([owner.runner, streamId, owner.leaseToken])
        for entry in entries {
            arguments += [Array(entry.id.utf8), Array(entry.fd.utf8), entry.data]
        }
        let reply = try await scripts.run(
            RunnerScripts.appendLog,
            keys: [keyspace.log(job: jobId), keyspace.job(id: jobId), keyspace.lease(runner: owner.runner)],
            arguments: arguments, retry: retry)
        if let parts = reply.array, parts.first?.int == -2 { return .wrongType(parts.last?.string ?? "?") }
        return reply.int == -1 ? .refused : .accepted
    }

    /// Writes the result, acks and deletes the entry, then emits the terminal event (one script). With
    /// `startedPid` (a job that ended before its `started` write), `job.started` is emitted right before it.
    func complete(
        entry: JobEntry, owner: AttemptOwner, result: JobResultRecord, startedAtMs: String?, startedPid: Int32? = nil,
        retry: RedisRetry
    ) async throws -> CompletionOutcome {
        guard let event = EventType.terminal(for: result.state) else {
            preconditionFailure("complete() needs a terminal state, got \(result.state)")
        }
        let arguments =
            JobStore.bytes([
                entry.jobId, owner.runner, String(entry.attempt), entry.streamId, Keyspace.consumerGroup,
                result.state.rawValue, event.rawValue, result.eventData.serialized, String(retentionMs),
                String(eventsMaxLength), startedAtMs ?? "", entry.queue,
            ]) + [entry.specJSON]
            + JobStore.bytes([
                owner.leaseToken, startedPid.map { JobStore.startedData(entry: entry, pid: $0).serialized } ?? "",
            ]) + JobStore.flattened(result.hashFields)
        let reply = try await scripts.run(
            RunnerScripts.complete,
            keys: [
                keyspace.job(id: entry.jobId), keyspace.jobs(queue: entry.queue), keyspace.events,
                keyspace.log(job: entry.jobId), keyspace.lease(runner: owner.runner),
            ],
            arguments: arguments, retry: retry)
        switch reply.int {
        case 1: return .recorded
        case 0: return .alreadyRecorded
        default: return .refused
        }
    }

    /// What became of a failed attempt.
    enum FailedAttempt: Sendable, Equatable {
        /// The next attempt waits in `{nr}:delayed` until this time (ms since the epoch, Redis's clock).
        case retryScheduled(atMs: Int)
        /// No attempts were left: the job is `dead`, with this dead letter.
        case dead(deadLetterId: String)
        /// A resent call: it had been done.
        case alreadyDone
        /// The job belongs to another runner, attempt or epoch now (`job.stale_result`).
        case refused
    }

    /// After a failed or timed-out attempt of a job that may take several: schedules the next after `delay`, or
    /// when `failures` reaches `max_attempts`, makes the job `dead` (one script).
    func failAttempt(
        entry: JobEntry, owner: AttemptOwner, result: JobResultRecord, failures: Int, delayMs: Int, retry: RedisRetry
    ) async throws -> FailedAttempt {
        let arguments =
            JobStore.bytes([entry.jobId, owner.runner, String(entry.attempt), entry.streamId, Keyspace.consumerGroup])
            + [entry.specJSON]
            + JobStore.bytes([
                entry.queue, String(eventsMaxLength), owner.leaseToken, String(failures),
                String(entry.spec.maxAttempts), String(delayMs), result.eventData.serialized, String(retentionMs),
                String(deadMaxLength),
            ]) + JobStore.flattened([(ResultField.state, Array(result.state.rawValue.utf8))] + result.hashFields)
        let reply = try await scripts.run(
            RunnerScripts.failAttempt,
            keys: [
                keyspace.job(id: entry.jobId), keyspace.jobs(queue: entry.queue), keyspace.events,
                keyspace.lease(runner: owner.runner), keyspace.delayed, keyspace.dead, keyspace.log(job: entry.jobId),
            ],
            arguments: arguments, retry: retry)
        let parts = reply.array ?? []
        let value = parts.count > 1 ? (parts[1].string ?? "") : ""
        switch parts.first?.int {
        case 1: return .retryScheduled(atMs: Int(value) ?? 0)
        case 2: return .dead(deadLetterId: value)
        case 0: return .alreadyDone
        default: return .refused
        }
    }

    /// Sends a malformed entry to the dead-letter stream with the reason, acks it, emits `job.rejected`.
    func reject(
        streamId: String, queue: String, fields: [(String, [UInt8])], reason: String, owner: AttemptOwner,
        retry: RedisRetry
    ) async throws {
        let jobId = JobEntry.jobId(in: fields) ?? ""
        let arguments =
            JobStore.bytes([
                jobId, owner.runner, streamId, Keyspace.consumerGroup, reason, queue, String(eventsMaxLength),
                String(retentionMs), String(deadMaxLength), owner.leaseToken,
            ]) + JobStore.flattened(fields)
        _ = try await scripts.run(
            RunnerScripts.reject,
            keys: [
                keyspace.job(id: jobId), keyspace.jobs(queue: queue), keyspace.dead, keyspace.events,
                keyspace.lease(runner: owner.runner),
            ],
            arguments: arguments, retry: retry)
    }

    /// Acks an entry whose payload is gone and emits `job.lost`.
    func lost(streamId: String, queue: String, owner: AttemptOwner, retry: RedisRetry) async throws {
        _ = try await scripts.run(
            RunnerScripts.lost,
            keys: [keyspace.jobs(queue: queue), keyspace.events, keyspace.lease(runner: owner.runner)],
            arguments: JobStore.bytes([
                streamId, Keyspace.consumerGroup, owner.runner, String(eventsMaxLength), queue, owner.leaseToken,
            ]),
            retry: retry)
    }

    /// Puts an unfinished job back on its queue with the same attempt and emits `job.handed_back`.
    func handBack(entry: JobEntry, owner: AttemptOwner, reason: String, retry: RedisRetry) async throws {
        _ = try await scripts.run(
            RunnerScripts.handBack,
            keys: [
                keyspace.job(id: entry.jobId), keyspace.jobs(queue: entry.queue), keyspace.events,
                keyspace.lease(runner: owner.runner),
            ],
            arguments: JobStore.bytes([
                entry.jobId, owner.runner, String(entry.attempt), entry.streamId, Keyspace.consumerGroup,
            ]) + [entry.specJSON]
                + JobStore.bytes([entry.queue, String(eventsMaxLength), reason, owner.leaseToken]),
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

    /// Logs a failed event write of the runner's own (`what`: "capacity update", "resource usage"): a refusal for a
    /// key's type (`WRONGTYPE key {nr}:events is a string, expected a stream`) as a warning naming the key, at most
    /// once a minute per key (every submit fails meanwhile); anything else at debug.
    func logEventWriteFailure(_ error: Error, what: String, logger: Logger) {
        if let (key, detail) = WrongTypeKey.named(in: error) {
            guard wrongTypeWarnings.allows(key) else { return }
            logger.warning("\(what) not recorded: \(detail); events are lost until it is fixed", ["key": key])
        } else {
            logger.debug("\(what) failed: \(error)")
        }
    }
}
