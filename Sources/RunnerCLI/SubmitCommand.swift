import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner submit`: adds a job; with `--wait`, prints its output and exits with its exit code.
enum SubmitCommand {
    static let spec = CommandSpec(
        name: "submit",
        abstract: "Submit a job and print its id (or, with --wait, its output).",
        usage: "runner submit [--queue Q] [--timeout DURATION] [--env K=V]... [--label K=V]... [--require K=V]... "
            + "[--cwd DIR] [--max-attempts N [--backoff D] [--backoff-max D]] [--id ID] [--idempotency-key K] "
            + "[--shell 'SCRIPT'] [--isolation LEVEL] [--network host|none] [--memory SIZE] [--pids N] [--cpu M] "
            + "[--secret-env NAME]... [--wait [--wait-timeout D]] [--json] -- CMD [ARG...]",
        arguments: [("CMD [ARG...]", "The command and its arguments (after --), unless --shell is given.")],
        options: CommonOptions.all + [
            OptionSpec("--queue", .value("QUEUE"), help: "Queue to submit to.", default: Keyspace.defaultQueue),
            OptionSpec("--timeout", .value("DURATION"), help: "Stop the job after this long (30s, 500ms, 2m)."),
            OptionSpec("--env", .repeated("K=V"), help: "Environment variable for the job."),
            OptionSpec("--label", .repeated("K=V"), help: "Label recorded with the job."),
            OptionSpec(
                "--require", .repeated("K=V"),
                help: "A label the runner must have to run the job (spec 'requires'); also a comma list (a=1,b=2)."),
            OptionSpec(
                "--cwd", .value("DIR"),
                help: "Working directory of the job; a relative one is relative to its work folder (NR_WORK_DIR)."),
            OptionSpec("--max-attempts", .value("N"), help: "Failed attempts the job may take.", default: "1"),
            OptionSpec(
                "--backoff", .value("DURATION"), help: "Delay before the first retry; doubles per failure.",
                default: "1s"),
            OptionSpec("--backoff-max", .value("DURATION"), help: "Longest delay before a retry.", default: "1m"),
            OptionSpec("--id", .value("ID"), help: "Job id.", default: "a random UUID"),
            OptionSpec(
                "--idempotency-key", .value("KEY"),
                help: "Submit once per KEY: a second submit answers the first job's id and adds nothing."),
            OptionSpec("--shell", .value("SCRIPT"), help: "Run SCRIPT with /bin/sh -c instead of a command."),
            OptionSpec(
                "--isolation", .value("LEVEL"), help: "none, process_group, namespace or cgroup.",
                default: "the runner's"),
            OptionSpec("--network", .value("MODE"), help: "host, or none (loopback only; needs namespace or cgroup)."),
            OptionSpec("--memory", .value("SIZE"), help: "Memory limit (bytes, or 64M, 1G; isolation cgroup)."),
            OptionSpec("--pids", .value("N"), help: "Process limit (isolation cgroup)."),
            OptionSpec("--cpu", .value("MILLICORES"), help: "CPU quota: 500 is half a core (isolation cgroup)."),
            OptionSpec("--secret-env", .repeated("NAME"), help: "Mask the value of --env NAME in the job's output."),
            OptionSpec("--wait", .flag, help: "Wait for the result, print the output, exit with the job's exit code."),
            OptionSpec("--wait-timeout", .value("DURATION"), help: "With --wait: give up waiting after this long."),
            OptionSpec("--json", .flag, help: "Print JSON: the id and entry, or with --wait the result."),
        ],
        acceptsCommand: true,
        discussion: """
            The command may also follow the options without --, from the first argument that is not an option on;
            use -- when the command has options of its own that runner could take for its own.

            With --wait the job's output is printed as it is written (stdout to stdout, stderr to stderr), and the
            exit code is the job's: its exit code (127 when its command was not found, 126 when it could not be
            started otherwise), 124 when it timed out, 128+N when killed by signal N, 1 when it was rejected or
            cancelled or failed without an exit code, or 1 with an Error line when --wait-timeout passed first. A
            job dead after --max-attempts exits as its last attempt ended (124 when that one timed out). Ctrl-C
            stops waiting, not the job (the SIGINT ends runner: the shell sees 130). With --max-attempts, a line on
            stderr marks where each further attempt begins. A job still queued after about 3 s on a queue
            no running runner reads, or requiring labels (--require) that no running runner of its queue has, is
            named once on stderr (with the labels missing); the wait goes on. A job id can be submitted once (a
            second submit of the same --id is refused).

            With --max-attempts N, an attempt that fails or times out is retried after a delay (exponential from
            --backoff, capped at --backoff-max, with jitter: between half the delay and all of it); after N failed
            attempts the job is dead (runner dead lists it, runner retry ID requeues it). Attempts lost with a
            runner that died are rescheduled and do not count.

            With --idempotency-key, a submit whose key an earlier job holds (for the result retention) adds nothing
            and prints that job's id (with --json, "existing": true), saying so on stderr; --wait then waits for
            that job.

            Values of --secret-env variables, and of variables named *_TOKEN, *_SECRET or *_PASSWORD (upper case),
            are shown as *** in the job's log and output tail when they are 4 bytes or longer: a shorter --secret-env
            value is refused (exit 2), a shorter *_TOKEN one named on stderr. A limit or --network none that the
            --isolation given cannot enforce is refused here (exit 2). Without --isolation the runner's default
            level is raised to what the job needs: namespace for --network none, cgroup for --memory, --pids or
            --cpu. A job asking for an isolation level or a limit the runner cannot give is rejected with the reason
            (see 'runner result').
            """)

    /// The option that sets each limit (by its key in the spec's `limits`).
    private static let limitOptions = [
        JobLimits.Key.memoryBytes: "--memory", JobLimits.Key.pids: "--pids", JobLimits.Key.cpuMillis: "--cpu",
    ]

    /// A usage error naming the flag when a limit is outside what a spec accepts (the rule the worker's defaults
    /// and ceilings are checked by too).
    static func checkLimitRanges(_ limits: JobLimits, _ arguments: ParsedArguments) throws {
        try arguments.checkLimitRanges(limits, options: limitOptions)
    }

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let command: JobSpec.Command
        switch (arguments.value("--shell"), arguments.commandLine.isEmpty) {
        case (let script?, true): command = .shell(script)
        case (nil, false): command = .argv(arguments.commandLine)
        case (_?, false):
            throw UsageError(
                "give either --shell 'SCRIPT' or a command after --, not both (quote the whole script: --shell 'echo hi')",
                command: spec.name)
        case (nil, true):
            throw UsageError("missing command: give CMD [ARG...] after -- or --shell 'SCRIPT'", command: spec.name)
        }
        let queue = arguments.value("--queue") ?? Keyspace.defaultQueue
        if queue.trimmingCharacters(in: .whitespaces).isEmpty {
            // As the worker says it: the characters hint does not fit a name that is not there.
            throw UsageError(
                "invalid value for '--queue': '\(UsageError.excerpt(queue))' (an empty queue name)", command: spec.name)
        }
        guard Keyspace.isValidName(queue) else {
            throw UsageError(
                "invalid value for '--queue': '\(UsageError.excerpt(queue))' ("
                    + UsageError.nameReason(queue, rules: "no braces, colons, spaces or control characters") + ")",
                command: spec.name)
        }
        // A runner's `--queue a,b` is the two queues a and b: none would ever read a queue named `a,b`.
        guard !queue.contains(",") else {
            throw UsageError(
                "invalid value for '--queue': '\(UsageError.excerpt(queue))' (one queue name, without commas)",
                command: spec.name)
        }
        if let id = arguments.value("--id") {
            do { try JobEntry.validateId(id) } catch {
                throw UsageError("invalid value for '--id': \(error.message)", command: spec.name)
            }
        }
        let timeout = try arguments.duration("--timeout", atLeast: .milliseconds(1))
        let maxAttempts = try arguments.positiveInt("--max-attempts") ?? 1
        var backoff: Backoff?
        let initial = try arguments.duration("--backoff")
        let maximum = try arguments.duration("--backoff-max")
        if initial != nil || maximum != nil {
            guard maxAttempts > 1 else {
                throw UsageError("--backoff and --backoff-max need --max-attempts above 1", command: spec.name)
            }
            for (name, value) in [("--backoff", initial), ("--backoff-max", maximum)] {
                if let value, value.milliseconds < 1 {
                    throw UsageError("invalid value for '\(name)': it must be at least 1ms", command: spec.name)
                }
            }
            let initialMs = initial?.milliseconds ?? Backoff.defaultInitialMs
            let maximumMs = maximum?.milliseconds ?? max(Backoff.defaultMaxMs, initialMs)
            guard maximumMs >= initialMs else {
                throw UsageError("--backoff-max must be at least --backoff", command: spec.name)
            }
            backoff = Backoff(initialMs: initialMs, maxMs: maximumMs)
        }
        let idempotencyKey = arguments.value("--idempotency-key")
        if let idempotencyKey {
            do { try JobEntry.validateId(idempotencyKey, what: "idempotency key") } catch {
                throw UsageError("invalid value for '--idempotency-key': \(error.message)", command: spec.name)
            }
        }
        var jobSpec = JobSpec(
            command: command, environment: try arguments.keyValues("--env"), workingDirectory: arguments.value("--cwd"),
            timeoutMs: timeout?.milliseconds, maxAttempts: maxAttempts, labels: try arguments.keyValues("--label"),
            backoff: backoff,
            isolation: try arguments.parsed(
                "--isolation", expected: IsolationLevel.spellings, IsolationLevel.init(rawValue:)),
            network: try arguments.parsed("--network", expected: NetworkMode.spellings, NetworkMode.init(rawValue:)),
            limits: JobLimits(
                memoryBytes: try arguments.parsed(
                    "--memory", expected: "bytes, or 64K, 16M, 1G",
                    { ByteSizeParser.parse($0).flatMap { $0 > 0 ? $0 : nil } }),
                pids: try arguments.positiveInt("--pids"), cpuMillis: try arguments.millicores("--cpu")),
            secretEnvironment: arguments.all("--secret-env"))
        try checkLimitRanges(jobSpec.limits, arguments)
        let requires =
            try arguments.commaList("--require", item: "label", example: WorkerCommand.labelListExample) ?? []
        do {
            jobSpec.requires = try LabelSet(pairs: requires)
        } catch {
            throw UsageError("invalid value for '--require': \(error.message)", command: spec.name)
        }
        let environment = jobSpec.environment
        for name in jobSpec.secretEnvironment where environment[name] == nil {
            throw UsageError(
                "--secret-env \(UsageError.excerpt(name)) names no --env variable", command: spec.name)
        }
        // A value asked to be masked that would not be is refused; one masked for its name alone is only named.
        let minimum = SecretVariables.minimumMaskedBytes
        for name in jobSpec.secretEnvironment.sorted() where (environment[name]?.utf8.count ?? minimum) < minimum {
            throw UsageError(
                "--secret-env \(UsageError.excerpt(name)): its value is too short to be masked (at least \(minimum) "
                    + "bytes)", command: spec.name)
        }
        for (name, value) in environment.sorted(by: { $0.key < $1.key })
        where value.utf8.count < minimum && !value.isEmpty
            && SecretVariables.isSecret(name, named: jobSpec.secretEnvironment)
        {
            console.error(
                "runner: warning: --env \(UsageError.excerpt(name)): a value shorter than \(minimum) bytes is not "
                    + "masked")
        }
        // The runner's own validation, so that what it would reject is refused here, before anything is queued:
        // what the named level cannot enforce (the runner's default level is not known here), then the spec.
        if let level = jobSpec.isolation,
            let shortfall = IsolationShortfall.first(
                network: jobSpec.network ?? .host, limits: jobSpec.limits, at: level)
        {
            let option = shortfall.key == JobSpec.Key.network ? "--network none" : limitOptions[shortfall.key]
            let levels = shortfall.sufficient.map(\.rawValue).joined(separator: " or ")
            throw UsageError(
                option.map { "\($0) needs --isolation \(levels), not \(level.rawValue)" }
                    ?? "invalid job: \(shortfall.message)", command: spec.name)
        }
        do {
            _ = try JobSpec(json: Array(jobSpec.json.serialized.utf8))
        } catch {
            throw UsageError("invalid job: \(error.message)", command: spec.name)
        }
        let waitTimeout = try arguments.waitTimeout()

        let pool = try await connectedPool(arguments, reportReconnects: arguments.flag("--wait"), console: console)
        defer { pool.client.close() }
        let submitted: PoolClient.Submitted
        do {
            submitted = try await pool.submit(
                id: arguments.value("--id"), spec: jobSpec, queue: queue, idempotencyKey: idempotencyKey)
        } catch let error as RedisServerError where error.kind == "DUPLICATE" {
            throw CommandFailure("a job with id '\(arguments.value("--id") ?? "")' already exists")
        }
        if submitted.streamId == nil, let idempotencyKey {
            // Nothing was queued: the id printed is an earlier job's, whatever this submit's command was.
            console.error(
                "runner: idempotency key '\(idempotencyKey)' belongs to job \(submitted.id), submitted earlier: "
                    + "nothing new was queued")
        }
        guard arguments.flag("--wait") else {
            if arguments.flag("--json") {
                var json: [String: JSONValue] = [
                    "id": .string(submitted.id), "stream_id": submitted.streamId.map(JSONValue.string) ?? .null,
                    "existing": .bool(submitted.streamId == nil),
                ]
                // The queue is known only for a job this submit added (an existing one may be on another).
                if submitted.streamId != nil { json["queue"] = .string(queue) }
                console.print(JSONValue.object(json).serialized)
            } else {
                console.print(submitted.id)
            }
            return 0
        }
        let json = arguments.flag("--json")
        let note = Task { await noteIfUnserved(id: submitted.id, arguments, console) }
        defer { note.cancel() }
        let result: [String: [UInt8]]?
        do {
            // Output is printed as the job writes it.
            result = try await pool.follow(id: submitted.id, timeout: waitTimeout) { chunk in
                if !json { LogsCommand.print(chunk, console: console) }
            }
        } catch let error as RedisClientError {
            throw CommandFailure(
                "\(error.message); stopped waiting for job '\(submitted.id)', which may still run (see 'runner result \(submitted.id)')"
            )
        }
        guard let result else {
            throw CommandFailure("job '\(submitted.id)' disappeared while waiting (its result hash is gone)")
        }
        let record = ResultView(fields: result)
        guard record.state?.isTerminal == true else {
            throw CommandFailure(
                "gave up waiting for job '\(submitted.id)' after --wait-timeout "
                    + "\(waitTimeout.map(DurationParser.text) ?? "") (it is still \(record.stateText))")
        }
        if json {
            console.print(record.json(id: submitted.id).serialized)
        } else if record.state != .succeeded {
            console.error("job \(submitted.id) \(record.stateText): \(record.reason)")
        }
        return record.exitStatus
    }
}

extension SubmitCommand {
    /// How long `--wait` lets a job stay queued before it looks for a runner that reads its queue, and between looks.
    static let unservedCheckInterval = Duration.seconds(3)

    /// While `--wait` waits: once the job has been queued for a few seconds on a queue that no running runner reads
    /// (all drained, or a queue nobody serves), or requiring labels that no running runner of its queue has, says so
    /// once on stderr; the wait goes on (such a runner may still come). Uses a connection of its own (the wait blocks
    /// on the other). Stops at the first note, when the job leaves `queued`, or on any error.
    static func noteIfUnserved(id: String, _ arguments: ParsedArguments, _ console: Console) async {
        guard (try? await Task.sleep(for: unservedCheckInterval)) != nil,
            let pool = try? await connectedPool(arguments)
        else { return }
        defer { pool.client.close() }
        while !Task.isCancelled {
            guard let record = try? await pool.result(id: id) else { return }
            let view = ResultView(fields: record)
            guard view.state == .queued, let queue = view.text(ResultField.queue),
                let status = try? await pool.status()
            else { return }
            let base = Keyspace.baseQueue(of: queue)
            if !UnservedQueue.isServed(base, by: status.runners) {
                let listing = UnservedQueue.readersText(UnservedQueue.listing(base, in: status.runners))
                console.error(
                    TopView.shown("runner: job \(id) is queued on '\(base)', which no running runner reads\(listing)"))
                return
            }
            // The spec as recorded (an idempotency key may have answered an earlier job's).
            if let requires = view.fields[ResultField.spec].flatMap({ try? JobSpec(json: $0) })?.requires,
                !requires.isEmpty, let missing = UnservedQueue.labelsNotOffered(requires, on: base, by: status.runners)
            {
                console.error(
                    "runner: job \(id) requires \(requires.canonical): no running runner that reads '\(base)' has "
                        + (missing.isEmpty ? "all of them" : missing.joined(separator: ",")))
                return
            }
            guard (try? await Task.sleep(for: unservedCheckInterval)) != nil else { return }
        }
    }
}

/// A result hash read back, with the typed view `--json` prints.
struct ResultView {
    var fields: [String: [UInt8]]

    /// The values of the spec's secret variables are shown as `***`.
    init(fields: [String: [UInt8]]) {
        var fields = fields
        if let bytes = fields[ResultField.spec], let spec = try? JobSpec(json: bytes) {
            fields[ResultField.spec] = Array(SecretVariables.masked(spec).json.serialized.utf8)
        }
        self.fields = fields
    }

    func text(_ name: String) -> String? {
        fields[name].flatMap { String(validating: $0, as: UTF8.self) }.flatMap { $0.isEmpty ? nil : $0 }
    }
    var state: JobState? { text(ResultField.state).flatMap(JobState.init(rawValue:)) }
    var stateText: String { text(ResultField.state) ?? "unknown" }
    var reason: String { text(ResultField.reason) ?? "" }

    /// The exit code `submit --wait` returns for this result.
    var exitStatus: Int32 {
        switch state {
        case .succeeded?: return 0
        case .timedOut?: return 124
        case .dead? where text(ResultField.lastState) == JobState.timedOut.rawValue: return 124
        case .failed?, .dead?:
            if let code = text(ResultField.exitCode).flatMap({ Int32($0) }) { return code == 0 ? 1 : code }
            if let signal = text(ResultField.signal).flatMap({ Int32($0) }) { return 128 + signal }
            return 1
        default: return 1
        }
    }

    static let integerFields: Set<String> = [
        ResultField.exitCode, ResultField.signal, ResultField.attempt, ResultField.submittedAt, ResultField.startedAt,
        ResultField.finishedAt, ResultField.durationMs, ResultField.pid, ResultField.cpuUserMs, ResultField.cpuSystemMs,
        ResultField.fencingToken, ResultField.failures, ResultField.reschedules, ResultField.retryAt,
        ResultField.peakMemoryBytes, ResultField.processes, ProtocolVersion.field,
    ]

    /// Every field: integers as numbers (null when empty), `forced_kill` as a boolean, the rest as strings;
    /// a value that is not valid UTF-8 (output) appears as `<field>_base64` instead.
    func json(id: String) -> JSONValue {
        var object: [String: JSONValue] = ["id": .string(id)]
        for (name, bytes) in fields {
            if ResultView.integerFields.contains(name) {
                object[name] =
                    String(decoding: bytes, as: UTF8.self).isEmpty
                    ? .null
                    : Int(String(decoding: bytes, as: UTF8.self)).map(JSONValue.int)
                        ?? .string(String(decoding: bytes, as: UTF8.self))
            } else if name == ResultField.forcedKill {
                object[name] = .bool(bytes == Array("1".utf8))
            } else if let text = String(validating: bytes, as: UTF8.self) {
                let isObject = name == ResultField.spec || name == ResultField.limits
                object[name] = isObject ? ((try? JSONValue(parsing: text)) ?? .string(text)) : .string(text)
            } else {
                object[name + "_base64"] = .string(Data(bytes).base64EncodedString())
            }
        }
        return .object(object)
    }
}
