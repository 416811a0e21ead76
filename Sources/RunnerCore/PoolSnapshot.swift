import RedisClient
import RunnerProtocol

/// What `runner top` shows at one moment: the registry, the queues, the running jobs, each runner's latest resource
/// usage, and the last events. A plain value, so that rendering it is a pure function.
public struct PoolSnapshot: Sendable {
    /// A job some runner's last heartbeat lists as running.
    public struct RunningJob: Sendable, Equatable {
        public var id: String
        public var runner: String
        public var queue: String
        public var attempt: Int?
        /// When the attempt started (ms since the epoch, Redis's clock); nil when its record says nothing.
        public var startedAtMs: Int?
        /// From the runner's last `runner.resource_usage`.
        public var cpuPercent: Double?
        public var rssBytes: Int?

        public init(
            id: String, runner: String, queue: String = "", attempt: Int? = nil, startedAtMs: Int? = nil,
            cpuPercent: Double? = nil, rssBytes: Int? = nil
        ) {
            self.id = id
            self.runner = runner
            self.queue = queue
            self.attempt = attempt
            self.startedAtMs = startedAtMs
            self.cpuPercent = cpuPercent
            self.rssBytes = rssBytes
        }
    }

    /// A runner's host figures from its last `runner.resource_usage` event.
    public struct HostUsage: Sendable, Equatable {
        public var cpuPercent: Double?
        public var memoryUsedBytes: Int?
        public var memoryTotalBytes: Int?
        public var load1: Double?

        public init(
            cpuPercent: Double? = nil, memoryUsedBytes: Int? = nil, memoryTotalBytes: Int? = nil, load1: Double? = nil
        ) {
            self.cpuPercent = cpuPercent
            self.memoryUsedBytes = memoryUsedBytes
            self.memoryTotalBytes = memoryTotalBytes
            self.load1 = load1
        }
    }

    public var namespace: String
    /// Redis's clock when the snapshot was taken (ms since the epoch).
    public var takenAtMs: Int
    public var runners: [RunnerStatus]
    public var queues: [QueueStatus]
    public var running: [RunningJob]
    /// By runner id.
    public var usage: [String: HostUsage]
    /// The last events, oldest first, without the periodic samples (their figures are in `usage` and the registry).
    public var events: [PoolEvent]
    /// Keys the snapshot could not read because they hold another type (see `PoolStatus.wrongTypeKeys`).
    public var wrongTypeKeys: [WrongTypeKey] = []
    /// Jobs waiting for their next attempt (`PoolStatus.retriesScheduled`).
    public var retriesScheduled = 0

    /// Event types that repeat every few seconds per runner and would crowd out the others.
    static let sampleEventTypes: Set<String> = [
        EventType.runnerResourceUsage.rawValue, EventType.runnerCapacityUpdate.rawValue,
    ]

    public init(
        namespace: String, takenAtMs: Int, runners: [RunnerStatus], queues: [QueueStatus], running: [RunningJob],
        usage: [String: HostUsage], events: [PoolEvent]
    ) {
        self.namespace = namespace
        self.takenAtMs = takenAtMs
        self.runners = runners
        self.queues = queues
        self.running = running
        self.usage = usage
        self.events = events
    }
}

extension PoolClient {
    /// How far back `snapshot` looks in the events stream for each runner's latest resource usage.
    static let usageLookback = 500

    /// Reads a `PoolSnapshot`: `status()`, Redis's `TIME`, each running job's record (`HMGET`), and the events
    /// stream's last entries (`XREVRANGE`) for resource usage and the `eventCount` most recent events.
    public func snapshot(eventCount: Int) async throws -> PoolSnapshot {
        let status = try await status()
        var wrongTypeKeys = status.wrongTypeKeys
        let time = try await client.send(RedisCommand(["TIME"])).array ?? []
        let seconds = time.first?.string.flatMap { Int($0) } ?? 0
        let micros = time.count > 1 ? time[1].string.flatMap { Int($0) } ?? 0 : 0
        // `status()` names a wrong-typed events stream already (with the registry): not read, not named twice.
        let eventsWrong = wrongTypeKeys.contains { $0.key == keyspace.events }
        let recent =
            eventsWrong
            ? []
            : try await WrongTypeKey.skipping(client: client, keyspace.events, "stream", into: &wrongTypeKeys) {
                try await client.send(
                    RedisCommand([
                        "XREVRANGE", keyspace.events, "+", "-", "COUNT",
                        String(max(eventCount, PoolClient.usageLookback)),
                    ]))
            }.map { PoolClient.entries($0).reversed() } ?? []

        var usage: [String: PoolSnapshot.HostUsage] = [:]
        var jobUsage: [String: (cpu: Double?, rss: Int?)] = [:]
        for event in recent.reversed() where event.type == EventType.runnerResourceUsage.rawValue {
            guard usage[event.runner] == nil, let data = try? JSONValue(parsing: Array(event.data.utf8)) else {
                continue
            }
            usage[event.runner] = PoolSnapshot.HostUsage(
                cpuPercent: data["host_cpu_percent"]?.numberValue, memoryUsedBytes: data["memory_used_bytes"]?.intValue,
                memoryTotalBytes: data["memory_total_bytes"]?.intValue,
                load1: data["load"]?.arrayValue?.first?.numberValue)
            for job in data["jobs"]?.arrayValue ?? [] {
                guard let id = job["job"]?.stringValue, jobUsage[id] == nil else { continue }
                jobUsage[id] = (job["cpu_percent"]?.numberValue, job["rss_bytes"]?.intValue)
            }
        }

        var running: [PoolSnapshot.RunningJob] = []
        for runner in status.runners where runner.leaseRemainingMs != nil {
            for id in runner.record[RunnerRecordField.running]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                let fields =
                    try await WrongTypeKey.skipping(client: client, keyspace.job(id: id), "hash", into: &wrongTypeKeys)
                {
                    try await client.send(
                        RedisCommand([
                            "HMGET", keyspace.job(id: id), ResultField.queue, ResultField.attempt,
                            ResultField.startedAt,
                        ]))
                }?.array?.map(\.string) ?? []
                func field(_ index: Int) -> String? { index < fields.count ? fields[index] : nil }
                running.append(
                    PoolSnapshot.RunningJob(
                        id: id, runner: runner.id, queue: field(0) ?? "", attempt: field(1).flatMap { Int($0) },
                        startedAtMs: field(2).flatMap { Int($0) }, cpuPercent: jobUsage[id]?.cpu,
                        rssBytes: jobUsage[id]?.rss))
            }
        }
        var snapshot = PoolSnapshot(
            namespace: keyspace.namespace, takenAtMs: seconds * 1000 + micros / 1000, runners: status.runners,
            queues: status.queues, running: running, usage: usage,
            events: Array(recent.filter { !PoolSnapshot.sampleEventTypes.contains($0.type) }.suffix(eventCount)))
        snapshot.wrongTypeKeys = wrongTypeKeys
        snapshot.retriesScheduled = status.retriesScheduled
        return snapshot
    }
}

extension JSONValue {
    /// An integer or a fraction, as a Double.
    fileprivate var numberValue: Double? {
        switch self {
        case .int(let value): Double(value)
        case .double(let value): value
        default: nil
        }
    }
}

/// A queue with jobs waiting that no running runner reads: every runner that lists it is drained, draining, lost or
/// gone, or none lists it at all (a typo in `--queue`, a queue nobody serves).
public struct UnservedQueue: Sendable, Equatable {
    /// A runner that lists the queue but does not read it now, with the state that keeps it from reading.
    public struct Reader: Sendable, Equatable {
        public var id: String
        /// The registry's state, or `lost` for a runner whose lease is gone (unless it released it: `migrating`).
        public var state: String

        public init(id: String, state: String) {
            self.id = id
            self.state = state
        }
    }

    public var queue: String
    /// Entries no runner has read yet.
    public var waiting: Int
    /// The runners that list it, none of them running; empty when none lists it.
    public var readers: [Reader]

    public init(queue: String, waiting: Int, readers: [Reader]) {
        self.queue = queue
        self.waiting = waiting
        self.readers = readers
    }

    /// `default: 2 waiting; no running runner reads it (r1 drained)`.
    public var text: String {
        "\(queue): \(waiting) waiting; no running runner reads it" + UnservedQueue.readersText(readers)
    }

    /// Whether a runner reads its queues now: it holds its lease and is `starting` or `running` (a drained or
    /// draining runner reads nothing new; a lost or gone one nothing at all).
    public static func reads(_ runner: RunnerStatus) -> Bool {
        guard runner.leaseRemainingMs != nil,
            let state = runner.record[RunnerRecordField.state]?.stringValue.flatMap(RunnerState.init(rawValue:))
        else { return false }
        return state == .running || state == .starting
    }

    /// Whether a running runner (`reads`) lists `queue` among its queues.
    public static func isServed(_ queue: String, by runners: [RunnerStatus]) -> Bool {
        !readers(of: queue, in: runners).isEmpty
    }

    /// The running runners (`reads`) that list `queue` among their queues.
    public static func readers(of queue: String, in runners: [RunnerStatus]) -> [RunnerStatus] {
        runners.filter { runner in
            reads(runner)
                && (runner.record[RunnerRecordField.queues]?.arrayValue ?? []).contains { $0.stringValue == queue }
        }
    }

    /// For a job of `queue` that requires `requirement`: nil when a running runner that reads `queue` has every label
    /// of it (it reads the job's requirement stream); otherwise the required labels (`key=value`, by key) that no such
    /// runner has, empty when each has some of them but none has all.
    public static func labelsNotOffered(_ requirement: LabelSet, on queue: String, by runners: [RunnerStatus])
        -> [String]?
    {
        let offered = readers(of: queue, in: runners).map { runner in
            (runner.record[RunnerRecordField.labels]?.objectValue ?? [:]).compactMapValues(\.stringValue)
        }
        func has(_ labels: [String: String], _ key: String) -> Bool { labels[key] == requirement.values[key] }
        let keys = requirement.values.keys.sorted()
        guard !offered.contains(where: { labels in keys.allSatisfy { has(labels, $0) } }) else { return nil }
        return keys.filter { key in !offered.contains { has($0, key) } }.map { "\($0)=\(requirement.values[$0]!)" }
    }

    /// The plain queues (not requirement streams: those are WAITING FOR LABELS) with unread entries that no running
    /// runner reads, by name.
    public static func find(runners: [RunnerStatus], queues: [QueueStatus]) -> [UnservedQueue] {
        queues.compactMap { queue in
            guard queue.requires == nil else { return nil }
            let waiting = queue.unread
            guard waiting > 0 else { return nil }
            guard !isServed(queue.name, by: runners) else { return nil }
            return UnservedQueue(queue: queue.name, waiting: waiting, readers: listing(queue.name, in: runners))
        }
    }

    /// The runners that list `queue`, each with the state that keeps it from reading (for a queue no running runner
    /// reads: `r1 drained`, `r2 lost`).
    public static func listing(_ queue: String, in runners: [RunnerStatus]) -> [Reader] {
        runners.filter { runner in
            (runner.record[RunnerRecordField.queues]?.arrayValue ?? []).contains { $0.stringValue == queue }
        }.map { runner in
            let state = runner.record[RunnerRecordField.state]?.stringValue ?? "?"
            let released = RunnerState(rawValue: state)?.releasedItsLease == true
            return Reader(id: runner.id, state: runner.leaseRemainingMs == nil && !released ? "lost" : state)
        }
    }

    /// `(r1 drained, r2 lost)`, or nothing when no runner lists the queue.
    public static func readersText(_ readers: [Reader]) -> String {
        readers.isEmpty ? "" : " (" + readers.map { "\($0.id) \($0.state)" }.joined(separator: ", ") + ")"
    }
}

extension PoolStatus {
    /// See `UnservedQueue.find`.
    public var unservedQueues: [UnservedQueue] { UnservedQueue.find(runners: runners, queues: queues) }
}
