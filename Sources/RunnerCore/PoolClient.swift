import Foundation
import RedisClient
import RunnerProtocol

/// One event read from `{nr}:events`.
public struct PoolEvent: Sendable, Hashable {
    public var streamId: String
    public var type: String
    public var timestampMs: Int
    public var runner: String
    public var job: String
    public var data: String
    public var fields: [String: String]

    public init(
        streamId: String, type: String, timestampMs: Int, runner: String, job: String, data: String,
        fields: [String: String]
    ) {
        self.streamId = streamId
        self.type = type
        self.timestampMs = timestampMs
        self.runner = runner
        self.job = job
        self.data = data
        self.fields = fields
    }
}

/// One entry of a job's log stream.
public struct LogChunk: Sendable, Hashable {
    public var stream: String
    public var bytes: [UInt8]
}

/// A runner as seen in the registry, with its lease's remaining time.
public struct RunnerStatus: Sendable {
    public var id: String
    public var record: JSONValue
    /// Milliseconds the lease has left; nil when the lease is gone.
    public var leaseRemainingMs: Int?

    public init(id: String, record: JSONValue, leaseRemainingMs: Int?) {
        self.id = id
        self.record = record
        self.leaseRemainingMs = leaseRemainingMs
    }

    /// Its lease is gone without its having released it (as a migrating or stopped runner does): it died or was cut
    /// off, whatever its record still says.
    public var isLost: Bool {
        let state = record[RunnerRecordField.state]?.stringValue.flatMap(RunnerState.init(rawValue:))
        return leaseRemainingMs == nil && state?.releasedItsLease != true
    }

    /// Its record's state, or `lost` when `isLost`.
    public var stateShown: String {
        isLost ? RunnerState.lost.rawValue : record[RunnerRecordField.state]?.stringValue ?? "unknown"
    }
}

/// A queue's stream as seen through the consumer group.
public struct QueueStatus: Sendable {
    public var name: String
    public var length: Int
    public var pending: Int
    public var lag: Int?
    public var consumers: Int
    /// For a requirement stream (`<queue>:req:<id>`): the labels its jobs require.
    public var requires: LabelSet?

    /// Entries no runner has read yet: the lag, or (when Redis cannot tell: no consumer group yet) those not pending.
    public var unread: Int { lag ?? max(0, length - pending) }

    public init(name: String, length: Int, pending: Int, lag: Int?, consumers: Int, requires: LabelSet? = nil) {
        self.name = name
        self.length = length
        self.pending = pending
        self.lag = lag
        self.consumers = consumers
        self.requires = requires
    }
}

public struct PoolStatus: Sendable {
    public var runners: [RunnerStatus]
    public var queues: [QueueStatus]
    /// Keys the view could not read because they hold another type (the registry, a queue's stream): what it
    /// shows leaves them out.
    public var wrongTypeKeys: [WrongTypeKey] = []
    /// Jobs waiting in `{nr}:delayed` for their next attempt (`retry_scheduled`), and the first few of them with
    /// when each is due (ms, Redis's clock; nil for a score that is no time: a hand-written `inf`).
    public var retriesScheduled = 0
    public var nextRetries: [(id: String, dueMs: Int?)] = []
    /// How many of the first retries `nextRetries` holds.
    public static let nextRetriesShown = 5
}

/// What the CLI and other clients do with a pool: submit, read results, logs, status and events.
public struct PoolClient: Sendable {
    public let client: RedisClient
    public let keyspace: Keyspace
    let store: JobStore

    public init(client: RedisClient, keyspace: Keyspace) {
        self.client = client
        self.keyspace = keyspace
        self.store = JobStore(client: client, keyspace: keyspace)
    }

    /// A submission's outcome.
    public struct Submitted: Sendable, Equatable {
        /// The job id: the new job's, or the earlier job's that holds the idempotency key.
        public var id: String
        /// The new job's stream entry; nil when nothing was added because the idempotency key was taken.
        public var streamId: String?
    }

    /// Submits a job (result hash `queued` and stream entry in one script). With an idempotency key that an earlier
    /// submission holds (for the result retention), adds nothing and answers that job's id. A job that `requires`
    /// labels (the spec's, plus `requires`) goes to its requirement stream `{nr}:jobs:<queue>:req:<id>`, registered
    /// first, so that only runners with those labels read it.
    public func submit(
        id: String?, spec: JobSpec, queue: String, idempotencyKey: String? = nil, requires: LabelSet = LabelSet()
    ) async throws -> Submitted {
        let jobId = id ?? UUID().uuidString.lowercased()
        var spec = spec
        if !requires.isEmpty {
            spec.requires = try LabelSet(spec.requires.values.merging(requires.values) { _, given in given })
        }
        let target =
            spec.requires.isEmpty ? queue : try await store.registerRequirement(spec.requires, queue: queue)
        switch try await store.submit(id: jobId, spec: spec, queue: target, idempotencyKey: idempotencyKey) {
        case .created(let streamId): return Submitted(id: jobId, streamId: streamId)
        case .existing(let earlier): return Submitted(id: earlier, streamId: nil)
        }
    }

    /// HGETALL of the result hash; nil when there is no such job.
    public func result(id: String, retry: RedisRetry = .never) async throws -> [String: [UInt8]]? {
        let reply = try await WrongTypeKey.naming(client: client, [keyspace.job(id: id): "hash"]) {
            try await client.send(RedisCommand(["HGETALL", keyspace.job(id: id)]), retry: retry)
        }
        guard let pairs = reply.fieldPairs, !pairs.isEmpty else { return nil }
        return Dictionary(pairs.map { ($0.name, $0.value) }, uniquingKeysWith: { _, last in last })
    }

    /// Waits until the job's state is terminal, following the events stream (no polling loop), and hands over its
    /// output as it is written. Returns the result (not terminal if `timeout` passed first, or once `stopped` says
    /// so: it is asked before each read, so at least every 5 s), or nil when there is no such job. Reads are retried
    /// while Redis is unreachable, until the timeout.
    public func follow(
        id: String, timeout: Duration? = nil, output: (LogChunk) -> Void = { _ in }, stopped: () -> Bool = { false }
    ) async throws -> [String: [UInt8]]? {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        let retry = RedisRetry.idempotent(deadline: deadline)
        // Take the stream position before reading the hash: a result written after the read shows up as an event
        // after this position, because the script writes the hash before its event.
        var eventCursor = try await lastEventId(retry: retry)
        var logCursor = "0-0"
        while true {
            let current = try await result(id: id, retry: retry)
            guard let current else { return nil }
            if stopped() { return current }
            if let state = current[ResultField.state].flatMap({ String(decoding: $0, as: UTF8.self) }),
                JobState(rawValue: state)?.isTerminal == true
            {
                // The result lands after the last output, so whatever is still unread is complete now.
                try await readLog(id: id, after: &logCursor, retry: retry, output)
                return current
            }
            var block = 5000
            if let deadline {
                let left = (deadline - ContinuousClock.now).milliseconds
                if left <= 0 { return current }
                block = min(block, max(1, left))
            }
            let reply = try await WrongTypeKey.naming(
                client: client, [keyspace.events: "stream", keyspace.log(job: id): "stream"]
            ) {
                try await client.send(
                    RedisCommand([
                        "XREAD", "COUNT", "500", "BLOCK", String(block), "STREAMS", keyspace.events,
                        keyspace.log(job: id), eventCursor, logCursor,
                    ]),
                    readTimeout: .milliseconds(block) + .seconds(5), retry: retry)
            }
            for stream in reply.array ?? [] {
                guard let pair = stream.array, pair.count == 2, let key = pair[0].string else { continue }
                if key == keyspace.events {
                    if let last = PoolClient.entries(pair[1]).last { eventCursor = last.streamId }
                } else {
                    for chunk in PoolClient.logChunks(pair[1]) {
                        logCursor = chunk.entryId
                        output(chunk.chunk)
                    }
                }
            }
        }
    }

    /// Reads log entries after the cursor to the end, advancing it.
    private func readLog(
        id: String, after cursor: inout String, retry: RedisRetry, _ output: (LogChunk) -> Void
    ) async throws {
        while true {
            let reply = try await WrongTypeKey.naming(client: client, [keyspace.log(job: id): "stream"]) {
                try await client.send(
                    RedisCommand(["XRANGE", keyspace.log(job: id), "(" + cursor, "+", "COUNT", "500"]), retry: retry)
            }
            let chunks = PoolClient.logChunks(reply)
            for chunk in chunks {
                cursor = chunk.entryId
                output(chunk.chunk)
            }
            if chunks.count < 500 { return }
        }
    }

    static func logChunks(_ reply: RedisReply) -> [(entryId: String, chunk: LogChunk)] {
        (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let entryId = parts[0].string else { return nil }
            let fields = parts[1].fieldPairs ?? []
            let stream = fields.first(where: { $0.name == LogField.stream }).map {
                String(decoding: $0.value, as: UTF8.self)
            }
            let bytes = fields.first(where: { $0.name == LogField.data })?.value ?? []
            return (entryId, LogChunk(stream: stream ?? "", bytes: bytes))
        }
    }

    private func lastEventId(retry: RedisRetry = .never) async throws -> String {
        let reply = try await WrongTypeKey.naming(client: client, [keyspace.events: "stream"]) {
            try await client.send(RedisCommand(["XREVRANGE", keyspace.events, "+", "-", "COUNT", "1"]), retry: retry)
        }
        return reply.array?.first?.array?.first?.string ?? "0-0"
    }

    /// Reads the whole log stream in pages.
    public func logs(id: String, _ handle: (LogChunk) -> Void) async throws {
        var cursor = "0-0"
        try await readLog(id: id, after: &cursor, retry: .never, handle)
    }

    /// The runners with the jobs their last heartbeat lists as running, less those whose record says they ended or
    /// run elsewhere since, their slots counted free again. A heartbeat follows a job's end within a fraction of a
    /// second, but a view read right after `submit --wait` returned must not show that job running.
    static func withoutEndedJobs(
        _ runners: [RunnerStatus], client: RedisClient, keyspace: Keyspace
    ) async throws -> [RunnerStatus] {
        let listed = runners.flatMap { runner in
            let ids = (runner.record[RunnerRecordField.running]?.arrayValue ?? []).compactMap(\.stringValue)
            return runner.leaseRemainingMs == nil ? [] : ids.map { (runner: runner.id, job: $0) }
        }
        guard !listed.isEmpty else { return runners }
        let replies = try await client.pipeline(
            listed.map { RedisCommand(["HMGET", keyspace.job(id: $0.job), ResultField.state, ResultField.runner]) })
        var ended: [String: Set<String>] = [:]
        for (pair, reply) in zip(listed, replies) {
            // A record that is gone, or a key of another type, tells nothing: the heartbeat stands.
            guard let fields = reply.array, fields.count == 2, let state = fields[0].string else { continue }
            if state != JobState.running.rawValue || fields[1].string != pair.runner {
                ended[pair.runner, default: []].insert(pair.job)
            }
        }
        guard !ended.isEmpty else { return runners }
        return runners.map { runner in
            guard let gone = ended[runner.id], case .object(var record) = runner.record,
                let running = record[RunnerRecordField.running]?.arrayValue?.compactMap(\.stringValue)
            else { return runner }
            let kept = running.filter { !gone.contains($0) }
            record[RunnerRecordField.running] = .array(kept.map(JSONValue.string))
            if let free = record[RunnerRecordField.capacityFree]?.intValue,
                let capacity = record[RunnerRecordField.capacity]?.intValue
            {
                // Hand-written figures must not trap: the sum saturates, and free never exceeds the capacity.
                let freed = free.addingReportingOverflow(running.count - kept.count)
                let shownFree = freed.overflow ? capacity : min(capacity, freed.partialValue)
                record[RunnerRecordField.capacityFree] = .int(shownFree)
            }
            var shown = runner
            shown.record = .object(record)
            return shown
        }
    }

    /// Runners in the registry with their lease time left, and every known queue with length, pending and lag.
    public func status(extraQueues: [String] = []) async throws -> PoolStatus {
        var wrongTypeKeys: [WrongTypeKey] = []
        // The events and heartbeats streams and the reaper lease are not read here, but every submit writes the
        // first, every runner the second (a runner whose heartbeat is refused logs it), and a reaper of another type
        // reschedules nothing (its reapers warn): their TYPEs ride along with the registry.
        let unread = [(keyspace.events, "stream"), (keyspace.heartbeats, "stream"), (keyspace.reaper, "string")]
        var types = unread.map { _ in "none" }
        let registry =
            try await WrongTypeKey.skipping(client: client, keyspace.runners, "hash", into: &wrongTypeKeys) {
                let replies = try await client.pipeline(
                    [RedisCommand(["HGETALL", keyspace.runners])] + unread.map { RedisCommand(["TYPE", $0.0]) })
                types = replies.dropFirst().map { $0.string ?? "none" }
                if case .error(let message) = replies[0] { throw RedisServerError(message) }
                return replies[0]
            } ?? .null
        for ((key, expected), type) in zip(unread, types) where type != "none" && type != expected {
            wrongTypeKeys.append(WrongTypeKey(key: key, type: type, expected: expected))
        }
        var runners: [RunnerStatus] = []
        var queueNames = Set(extraQueues)
        for (id, value) in registry.fieldPairs ?? [] {
            let record = (try? JSONValue(parsing: value)) ?? .null
            let ttl = try await client.send(RedisCommand(["PTTL", keyspace.lease(runner: id)])).int ?? -2
            runners.append(RunnerStatus(id: id, record: record, leaseRemainingMs: ttl >= 0 ? ttl : nil))
            for queue in record[RunnerRecordField.queues]?.arrayValue ?? [] {
                if let name = queue.stringValue { queueNames.insert(name) }
            }
        }
        runners = try await PoolClient.withoutEndedJobs(runners, client: client, keyspace: keyspace)
        queueNames.formUnion(try await PoolClient.queueStreams(client: client, keyspace: keyspace))
        // The base queue of every stream found, also of a requirement stream no runner's queue names (none runs).
        let bases = Set(queueNames.map(Keyspace.baseQueue(of:))).filter { !$0.contains(":") }
        let requirements = try await RequirementRoutes.registered(
            client: client, keyspace: keyspace, queues: bases.sorted())
        queueNames.formUnion(requirements.keys)
        var queues: [QueueStatus] = []
        for name in queueNames.sorted() {
            let key = keyspace.jobs(queue: name)
            guard
                let reply = try await WrongTypeKey.skipping(
                    client: client, key, "stream", into: &wrongTypeKeys,
                    {
                        try await client.send(RedisCommand(["XLEN", key]))
                    })
            else { continue }
            let length = reply.int ?? 0
            var status = QueueStatus(
                name: name, length: length, pending: 0, lag: nil, consumers: 0, requires: requirements[name])
            if let groups = try? await client.send(RedisCommand(["XINFO", "GROUPS", key])).array {
                for group in groups {
                    let info = PoolClient.map(group)
                    guard info["name"]?.string == Keyspace.consumerGroup else { continue }
                    status.pending = info["pending"]?.int ?? 0
                    // Redis's lag is entries added less entries read: entries deleted before they were read (a
                    // cancelled queued job) stay in it. What is waiting is never more than the unread entries left.
                    status.lag = info["lag"]?.int.map { min($0, max(0, length - status.pending)) }
                    status.consumers = info["consumers"]?.int ?? 0
                }
            }
            queues.append(status)
        }
        var status = PoolStatus(runners: runners.sorted { $0.id < $1.id }, queues: queues)
        let delayed = try await WrongTypeKey.skipping(client: client, keyspace.delayed, "zset", into: &wrongTypeKeys) {
            let replies = try await client.pipeline([
                RedisCommand(["ZCARD", keyspace.delayed]),
                RedisCommand(["ZRANGE", keyspace.delayed, "0", String(PoolStatus.nextRetriesShown - 1), "WITHSCORES"]),
            ])
            for case .error(let message) in replies { throw RedisServerError(message) }
            return replies
        }
        if let delayed {
            status.retriesScheduled = delayed[0].int ?? 0
            let pairs = delayed[1].array ?? []
            status.nextRetries = stride(from: 0, to: pairs.count - 1, by: 2).compactMap { index in
                guard let id = pairs[index].string else { return nil }
                // A score is a double, and may be a hand-written inf or -inf: Int(_:) would trap on those.
                let due = pairs[index + 1].string.flatMap(Double.init).flatMap { score in
                    score.isFinite && abs(score) < 9e18 ? Int(score) : nil
                }
                return (id, due)
            }
        }
        status.wrongTypeKeys = wrongTypeKeys
        return status
    }

    /// Requeues a `dead`, `failed` or `timed_out` job by hand (`job.requeued`), naming `actor` in the event.
    public func requeueByHand(id: String, actor: String) async throws -> ManualRequeue {
        try await store.requeueByHand(id: id, actor: actor)
    }

    /// One entry of `{nr}:dead`.
    public struct DeadLetter: Sendable {
        public var id: String
        public var fields: [String: [UInt8]]
        /// The state its job's record has now (it may have been retried since), nil without a record.
        public var jobState: String?
    }

    /// The last `count` dead letters, newest first.
    public func deadLetters(count: Int) async throws -> [DeadLetter] {
        let reply = try await WrongTypeKey.naming(client: client, [keyspace.dead: "stream"]) {
            try await client.send(RedisCommand(["XREVRANGE", keyspace.dead, "+", "-", "COUNT", String(count)]))
        }
        var letters: [DeadLetter] = (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { return nil }
            let fields = Dictionary((parts[1].fieldPairs ?? []).map { ($0.name, $0.value) }) { first, _ in first }
            return DeadLetter(id: id, fields: fields)
        }
        // A rejected entry may have no job id; a record of another type answers an error: no state shown.
        let jobs = letters.indices.compactMap { index in
            letters[index].fields[JobEntryField.id].flatMap { String(validating: $0, as: UTF8.self) }.map {
                (index, $0)
            }
        }.filter { (try? JobEntry.validateId($0.1)) != nil }
        guard !jobs.isEmpty else { return letters }
        let states = try await client.pipeline(
            jobs.map { RedisCommand(["HGET", keyspace.job(id: $0.1), ResultField.state]) })
        for ((index, _), state) in zip(jobs, states) { letters[index].jobState = state.string }
        return letters
    }

    /// The last `count` events (of `job` only, when given), oldest first, read back from the stream's end a page at a
    /// time until there are `count` of them or the stream's start is reached; and the id of the stream's last entry
    /// then (nil for an empty stream), from which to follow.
    public func recentEvents(count: Int, job: String?) async throws -> (events: [PoolEvent], last: String?) {
        var kept: [PoolEvent] = []
        var last: String?
        var end = "+"
        while kept.count < count {
            // Pages of at most `eventsPage`: a --count larger than the stream read it whole in one reply, which held
            // about 3 KB per entry (800 MB for 260,000 events, also when --job kept only one of them). A job's
            // events are a few among the pool's: its pages are that size even when fewer are still missing.
            let page = job == nil ? min(count - kept.count, Self.eventsPage) : Self.eventsPage
            let reply = try await WrongTypeKey.naming(client: client, [keyspace.events: "stream"]) {
                try await client.send(RedisCommand(["XREVRANGE", keyspace.events, end, "-", "COUNT", String(page)]))
            }
            let entries = PoolClient.entries(reply)
            if last == nil { last = entries.first?.streamId }
            for event in entries where (job == nil || event.job == job) && kept.count < count { kept.append(event) }
            guard entries.count == page, let oldest = entries.last else { break }
            end = "(" + oldest.streamId
        }
        return (kept.reversed(), last)
    }

    /// How many events one read of `recentEvents(count:job:)` asks for at least when it looks for one job's.
    static let eventsPage = 1000

    /// Blocks (up to `block`) for events after `cursor`.
    public func events(after cursor: String, block: Duration, retry: RedisRetry = .never) async throws -> [PoolEvent] {
        let reply = try await WrongTypeKey.naming(client: client, [keyspace.events: "stream"]) {
            try await client.send(
                RedisCommand([
                    "XREAD", "COUNT", "1000", "BLOCK", String(block.milliseconds), "STREAMS", keyspace.events, cursor,
                ]),
                readTimeout: block + .seconds(5), retry: retry)
        }
        return PoolClient.events(in: reply)
    }

    static func events(in xreadReply: RedisReply) -> [PoolEvent] {
        guard let streams = xreadReply.array, let first = streams.first?.array, first.count == 2 else { return [] }
        return entries(first[1])
    }

    static func entries(_ reply: RedisReply) -> [PoolEvent] {
        (reply.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { return nil }
            var fields: [String: String] = [:]
            for (key, value) in parts[1].fieldPairs ?? [] {
                fields[key] = String(decoding: value, as: UTF8.self)
            }
            return PoolEvent(
                streamId: id, type: fields[EventField.type] ?? "",
                timestampMs: Int(fields[EventField.timestamp] ?? "") ?? 0,
                runner: fields[EventField.runner] ?? "", job: fields[EventField.job] ?? "",
                data: fields[EventField.data] ?? "", fields: fields)
        }
    }

    /// Queues that exist as streams: SCAN MATCH {nr}:jobs:* TYPE stream, with a bounded number of rounds.
    static func queueStreams(client: RedisClient, keyspace: Keyspace) async throws -> Set<String> {
        var names = Set<String>()
        var cursor = "0"
        let prefix = keyspace.jobs(queue: "")
        let pattern = prefix.replacingOccurrences(of: "{", with: "\\{").replacingOccurrences(of: "}", with: "\\}") + "*"
        for _ in 0..<10_000 {
            let reply = try await client.send(
                RedisCommand(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000", "TYPE", "stream"]))
            guard let parts = reply.array, parts.count == 2 else { break }
            cursor = parts[0].string ?? "0"
            for key in parts[1].array ?? [] {
                if let name = key.string, name.hasPrefix(prefix) { names.insert(String(name.dropFirst(prefix.count))) }
            }
            if cursor == "0" { break }
        }
        return names
    }

    /// A flat [name, value, ...] reply (XINFO) as a dictionary.
    static func map(_ reply: RedisReply) -> [String: RedisReply] {
        let flat = reply.array ?? []
        return Dictionary(
            stride(from: 0, to: flat.count - 1, by: 2).map { (flat[$0].string ?? "", flat[$0 + 1]) },
            uniquingKeysWith: { _, last in last })
    }
}
