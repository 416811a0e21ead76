import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner status`: runners with lease time left and capacity; queues with length, pending and lag.
enum StatusCommand {
    static let spec = CommandSpec(
        name: "status",
        abstract: "Show the pool: runners, their leases and capacity; queues with length, pending and lag.",
        usage:
            "runner status [--json] | runner status --watch [--interval 1s] [--once] [--events N] | "
            + "runner status --watch --json [--interval 1s] [--once]",
        options: CommonOptions.all + [
            OptionSpec("--json", .flag, help: "Print one JSON object (with --watch: one line per refresh)."),
            OptionSpec("--watch", .flag, help: "Watch the pool live, as 'runner top' does."),
        ] + TopCommand.options,
        discussion: """
            A runner's CAPACITY and RUNNING are as of its last heartbeat (sent as jobs start and end, at most four
            times a second, while its lease is fresh), less the jobs whose own record says they ended since; LEASE
            is the time its lease has left now. LENGTH counts entries not yet done, PENDING those delivered to a
            runner and not yet acknowledged, LAG those not yet delivered (- when Redis cannot tell).
            RETRIES counts the jobs waiting for their next attempt after a failure (retry_scheduled, in {nr}:delayed)
            and lists the first five with when each is due. NOT SERVED lists the queues with jobs waiting that no running runner reads (every runner that lists it
            drained, draining or lost, or none lists it: a mistyped --queue); CONSUMERS counts drained runners too.

            STATE is the runner's own, as its record says: starting (connecting and registering), running (taking
            jobs), draining (shutting down, or drained while jobs still run: no intake, running jobs finishing),
            drained (drained by 'runner drain' and no job runs: idle, renewing its lease, until 'runner resume'),
            migrating (left for another node with 'runner migrate': lease released, its id kept for
            --resume-identity until the deadline), migrated (set by a reaper: nobody resumed it before the
            deadline), stopped (exiting cleanly: its record goes right after) or lost (set by a reaper: its lease
            was gone).

            STATE lost (and 'running (lost)' or the like before a reaper has acted) is a runner whose lease is gone
            (LEASE expired): it died or was cut off. Its CAPACITY and RUNNING show -, and its jobs have been (or are
            about to be) put back on their queues. Lost runners stay listed for --lost-retention (default 24h; the
            value of the reaper that leads, a worker's or runner control's). A runner that shuts down or migrates shows draining until it leaves (migrating, LEASE
            released, once it has released its lease for another node).

            --json prints one object: runners (each its registry record with id, lease_remaining_ms, null when the
            lease is gone, and lost; a lost runner's capacity, capacity_free, running, memory_reserved_bytes and
            waiting_for_resources are null, as they show - here), queues, not_served, retries_scheduled,
            next_retry_due_ms (null when none waits), next_retries (the first five: id, due_ms) and wrong_type (keys holding
            another type than expected: key, type, expected; as WRONG TYPE lists them). With --watch it prints one
            such object per --interval, each on one line, until interrupted or its reader goes away (--once: one);
            a refresh that cannot read Redis writes one line on stderr and nothing on stdout. --events needs the
            live view (not --json).
            """)

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let json = arguments.flag("--json")
        if arguments.flag("--watch") && !json { return try await TopCommand.run(arguments, console: console) }
        // Options of the live view would be ignored without it (and --events with --json: it has no events pane).
        let given = TopCommand.options.map(\.name).filter { arguments.value($0) != nil }
        if let first = given.first, !arguments.flag("--watch") {
            throw UsageError("\(first) needs --watch", command: spec.name)
        }
        // Every option given, not only the first: `--once --events 3` must not pass.
        if given.contains("--events") { throw UsageError("--events cannot be used with --json", command: spec.name) }
        let watchInterval = try arguments.duration("--interval", atLeast: .milliseconds(100)) ?? .seconds(1)
        let pool = try await connectedPool(arguments, console: console)
        defer { pool.client.close() }
        if json && arguments.flag("--watch") && !arguments.flag("--once") {
            return try await watchJSON(pool, interval: watchInterval, console)
        }
        let status = try await pool.status()
        if json {
            console.print(jsonObject(status).serialized)
            return 0
        }
        console.print("RUNNERS")
        if status.runners.isEmpty {
            console.print(
                "  " + TopView.noRunnersText(namespace: pool.keyspace.namespace, wrongTypeKeys: status.wrongTypeKeys))
        }
        var rows = [["ID", "NODE", "STATE", "LEASE", "CAPACITY", "RUNNING", "LABELS"]]
        for runner in status.runners {
            let record = runner.record
            let running = record[RunnerRecordField.running]?.arrayValue?.compactMap(\.stringValue) ?? []
            // A lost runner's last heartbeat is history: its jobs are not running there (a reaper puts them back).
            let lost = runner.isLost
            rows.append([
                runner.id, record[RunnerRecordField.node]?.stringValue ?? "?",
                // A record whose lease is gone belongs to a runner that died: its last state is history (a reaper
                // marks it `lost`).
                StatusCommand.stateText(
                    record[RunnerRecordField.state]?.stringValue, leaseHeld: runner.leaseRemainingMs != nil),
                StatusCommand.leaseText(runner),
                lost ? "-" : StatusCommand.slots(record).map { "\($0.busy)/\($0.capacity)" } ?? "?",
                lost || running.isEmpty ? "-" : running.joined(separator: ","),
                StatusCommand.labelsText(record[RunnerRecordField.labels]),
            ])
        }
        if !status.runners.isEmpty { table(rows, console) }
        console.print("\nQUEUES")
        if status.queues.isEmpty { console.print("  (none)") }
        rows = [["NAME", "LENGTH", "PENDING", "LAG", "CONSUMERS"]]
        for queue in status.queues {
            rows.append([
                shownName(queue), String(queue.length), String(queue.pending), queue.lag.map(String.init) ?? "-",
                String(queue.consumers),
            ])
        }
        if !status.queues.isEmpty { table(rows, console) }
        if let line = retriesLine(status) {
            console.print("\nRETRIES\n  " + line)
            for retry in status.nextRetries {
                console.print(
                    "    \(JobEntry.printable(retry.id))  due \(retry.dueMs.map(formatTimestamp) ?? "at no known time")"
                )
            }
        }
        printNotServed(status.unservedQueues, console)
        printWaitingForLabels(status, console)
        for line in TopView.wrongTypeLines(status.wrongTypeKeys) { console.print(TopView.shown(line)) }
        return 0
    }

    /// The pool as one JSON object. A lost runner's heartbeat figures are history (its jobs are not running there:
    /// a reaper puts them back), so they are null, as the text view shows `-`; `lost` says which runners these are.
    static func jsonObject(_ status: PoolStatus) -> JSONValue {
        let runners: [JSONValue] = status.runners.map { runner in
            var object = runner.record.objectValue ?? [:]
            object["id"] = .string(runner.id)
            object["lease_remaining_ms"] = runner.leaseRemainingMs.map(JSONValue.int) ?? .null
            let lost = runner.isLost
            object["lost"] = .bool(lost)
            if lost {
                for field in lostRunnerUnknownFields { object[field] = .null }
            }
            return .object(object)
        }
        let queues: [JSONValue] = status.queues.map { queue in
            [
                "name": .string(queue.name), "length": .int(queue.length), "pending": .int(queue.pending),
                "lag": queue.lag.map(JSONValue.int) ?? .null, "consumers": .int(queue.consumers),
                "requires": queue.requires?.json ?? .null,
            ]
        }
        let unserved: [JSONValue] = status.unservedQueues.map { queue in
            [
                "queue": .string(queue.queue), "waiting": .int(queue.waiting),
                "readers": .array(queue.readers.map { ["id": .string($0.id), "state": .string($0.state)] }),
            ]
        }
        let wrongType: [JSONValue] = status.wrongTypeKeys.map { wrong in
            ["key": .string(wrong.key), "type": .string(wrong.type), "expected": .string(wrong.expected)]
        }
        return .object([
            "runners": .array(runners), "queues": .array(queues), "not_served": .array(unserved),
            "wrong_type": .array(wrongType), "retries_scheduled": .int(status.retriesScheduled),
            "next_retry_due_ms": status.nextRetries.first?.dueMs.map(JSONValue.int) ?? .null,
            "next_retries": .array(
                status.nextRetries.map { ["id": .string($0.id), "due_ms": $0.dueMs.map(JSONValue.int) ?? .null] }),
        ])
    }

    /// The registry fields of a lost runner that are no longer known: `status --json` gives them as null.
    static let lostRunnerUnknownFields = [
        RunnerRecordField.capacity, RunnerRecordField.capacityFree, RunnerRecordField.running,
        RunnerRecordField.memoryReserved, RunnerRecordField.waitingForResources,
    ]

    /// `status --json --watch`: one JSON object per --interval, each on one line (flushed), for a dashboard to read
    /// line by line, until interrupted (SIGINT, SIGTERM: the default action) or until its reader goes away. A
    /// refresh that cannot read Redis prints nothing on standard output and one line on stderr, and is tried again.
    static func watchJSON(_ pool: PoolClient, interval: Duration, _ console: Console) async throws -> Int32 {
        while true {
            do {
                console.print(jsonObject(try await pool.status()).serialized)
            } catch let error as RedisClientError {
                console.error("runner: \(error.message); reconnecting (every \(interval))")
            } catch {
                console.error("runner: cannot read the pool: \(error); retrying every \(interval)")
            }
            if let status = try OutputGone.exitStatus(console) { return status }
            try await Task.sleep(for: interval)
        }
    }

    /// `2 jobs wait for their next attempt:` (the first few are listed below it), or nil when none does.
    static func retriesLine(_ status: PoolStatus) -> String? {
        guard status.retriesScheduled > 0 else { return nil }
        let count =
            status.retriesScheduled == 1 ? "1 job waits for its" : "\(status.retriesScheduled) jobs wait for their"
        let shown = status.nextRetries.count
        return "\(count) next attempt"
            + (shown == 0 ? "" : shown < status.retriesScheduled ? "; the first \(shown):" : ":")
    }

    /// A queue's name in the QUEUES table; a requirement stream's (`default:req:bd01faec78db618e`) says which labels
    /// it is for, which its name, a digest of them, does not.
    static func shownName(_ queue: QueueStatus) -> String {
        queue.requires.map { "\(queue.name) (\($0.canonical))" } ?? queue.name
    }

    /// Queues with waiting jobs that no running runner reads.
    static func printNotServed(_ unserved: [UnservedQueue], _ console: Console) {
        guard !unserved.isEmpty else { return }
        console.print("\nNOT SERVED")
        for queue in unserved { console.print("  not served: " + TopView.shown(queue.text)) }
    }

    /// Jobs in requirement streams that no runner has read yet, with how many live runners have those labels.
    static func printWaitingForLabels(_ status: PoolStatus, _ console: Console) {
        let lines = waitingForLabelsLines(runners: status.runners, queues: status.queues)
        guard !lines.isEmpty else { return }
        console.print("\nWAITING FOR LABELS")
        for line in lines { console.print(TopView.shown(line)) }
    }

    /// One line per requirement stream with unread jobs, with how many live runners have its labels (status and
    /// top both show them); none when no such job waits.
    static func waitingForLabelsLines(runners: [RunnerStatus], queues: [QueueStatus]) -> [String] {
        queues.compactMap { queue -> String? in
            guard let requires = queue.requires, queue.unread > 0 else { return nil }
            let base = Keyspace.baseQueue(of: queue.name)
            func hasThem(_ runner: RunnerStatus) -> Bool {
                guard case .object(let members)? = runner.record[RunnerRecordField.labels] else { return false }
                return requires.values.allSatisfy { members[$0.key]?.stringValue == $0.value }
            }
            // Only a running runner that reads the queue takes its jobs (as NOT SERVED counts them); the others with
            // the labels are named with their state, so that a drained one is not taken for one that serves.
            let serving = UnservedQueue.readers(of: base, in: runners).filter(hasThem)
            let idle = runners.filter { runner in
                hasThem(runner) && !serving.contains { $0.id == runner.id }
                    && (runner.record[RunnerRecordField.queues]?.arrayValue ?? []).contains { $0.stringValue == base }
            }
            let idleText = idle.isEmpty ? "" : "; " + idle.map { "\($0.id) \($0.stateShown)" }.joined(separator: ", ")
            return "  waiting for labels \(requires.canonical): \(queue.unread) (queue \(base), "
                + (serving.isEmpty
                    ? "no running runner has them\(idleText))" : "\(serving.count) running runner(s) with them)")
        }
    }

    /// A record's labels as `k=v,k2=v2`, or `-`.
    static func labelsText(_ value: JSONValue?) -> String {
        guard case .object(let members)? = value, !members.isEmpty else { return "-" }
        return members.keys.sorted().map { "\($0)=\(members[$0]?.stringValue ?? "?")" }.joined(separator: ",")
    }

    /// A record's busy and total slots (`capacity` less `capacity_free`); nil when a record no runner wrote gives
    /// numbers whose difference Int cannot hold (a `capacity_free` of Int.min), which trapped `status` and `top`.
    static func slots(_ record: JSONValue) -> (busy: Int, capacity: Int)? {
        let capacity = record[RunnerRecordField.capacity]?.intValue ?? 0
        let free = record[RunnerRecordField.capacityFree]?.intValue ?? 0
        let (busy, overflow) = capacity.subtractingReportingOverflow(free)
        return overflow ? nil : (busy, capacity)
    }

    /// LEASE: the time left, `released` for a runner that gave it up to move (migrating, migrated), else `expired`.
    static func leaseText(_ runner: RunnerStatus) -> String {
        if let left = runner.leaseRemainingMs { return String(format: "%.1fs", Double(left) / 1000) }
        let state = runner.record[RunnerRecordField.state]?.stringValue.flatMap(RunnerState.init(rawValue:))
        return state?.releasedItsLease == true ? "released" : "expired"
    }

    static func stateText(_ state: String?, leaseHeld: Bool) -> String {
        let state = state ?? "?"
        let known = RunnerState(rawValue: state)
        return leaseHeld || known == .lost || known?.releasedItsLease == true ? state : state + " (lost)"
    }

    static func table(_ rows: [[String]], _ console: Console) {
        for line in TopView.table(rows) { console.print(line) }
    }
}
