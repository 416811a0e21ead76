import Dispatch
import Foundation
import HTTPEndpoint
import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner worker`: the daemon.
enum WorkerCommand {
    static let spec = CommandSpec(
        name: "worker",
        abstract: "Run jobs from the pool's queues (the default subcommand).",
        usage: "runner [worker] --redis HOST:PORT [--name NAME] [--queue Q]... [--concurrency N] [options]",
        options: CommonOptions.all + [
            OptionSpec(
                "--name", .value("NAME"), help: "Runner id, also its consumer name.", environment: "RUNNER_NAME",
                default: "<hostname>-<pid>"),
            OptionSpec(
                "--node", .value("NAME"), help: "The node this runner is on.", environment: "RUNNER_NODE",
                default: "the hostname"),
            OptionSpec(
                "--queue", .repeated("QUEUE"),
                help: "Queue to read, in priority order; also a comma list (high,default).",
                environment: "RUNNER_QUEUES", default: Keyspace.defaultQueue),
            OptionSpec(
                "--concurrency", .value("N"), help: "Job processes run at once, 1 to 4096.",
                environment: "RUNNER_CONCURRENCY", default: "CPU count"),
            OptionSpec(
                "--lease-ttl", .value("DURATION"), help: "Lease time to live; renewed every third of it.",
                environment: "RUNNER_LEASE_TTL", default: "15s"),
            OptionSpec(
                "--shutdown-timeout", .value("DURATION"),
                help: "How long running jobs may finish after SIGTERM before they are stopped and handed back.",
                environment: "RUNNER_SHUTDOWN_TIMEOUT", default: "30s"),
            OptionSpec(
                "--kill-grace", .value("DURATION"), help: "Time between SIGTERM and SIGKILL when a job is stopped.",
                environment: "RUNNER_KILL_GRACE", default: "5s"),
            OptionSpec(
                "--default-timeout", .value("DURATION"), help: "Timeout of jobs whose spec has none.",
                environment: "RUNNER_DEFAULT_TIMEOUT", default: "none"),
            CommonOptions.resultRetention,
            OptionSpec(
                "--events-maxlen", .value("N"), help: "Approximate cap of the events stream.",
                environment: "RUNNER_EVENTS_MAXLEN", default: "100000"),
            OptionSpec(
                "--log-limit", .value("SIZE"), help: "Output kept per job in its log stream (e.g. 16M).",
                environment: "RUNNER_LOG_LIMIT", default: "16M"),
            OptionSpec(
                "--isolation", .value("LEVEL"), help: "Default isolation: none, process_group, namespace or cgroup.",
                environment: "RUNNER_ISOLATION", default: "process_group"),
            OptionSpec(
                "--isolation-fallback", .flag,
                help: "Run a job the host cannot isolate as asked at the strongest level it has (recorded in the "
                    + "result) instead of rejecting it.", environment: "RUNNER_ISOLATION_FALLBACK"),
            OptionSpec(
                "--default-memory", .value("SIZE"), help: "Memory limit of cgroup jobs that set none.",
                environment: "RUNNER_DEFAULT_MEMORY", default: "none"),
            OptionSpec(
                "--default-pids", .value("N"), help: "Process limit of cgroup jobs that set none.",
                environment: "RUNNER_DEFAULT_PIDS", default: "none"),
            OptionSpec(
                "--default-cpu", .value("MILLICORES"), help: "CPU quota of cgroup jobs that set none.",
                environment: "RUNNER_DEFAULT_CPU", default: "none"),
            OptionSpec(
                "--max-memory", .value("SIZE"), help: "Ceiling of a job's memory limit.",
                environment: "RUNNER_MAX_MEMORY", default: "none"),
            OptionSpec(
                "--max-pids", .value("N"), help: "Ceiling of a job's process limit.", environment: "RUNNER_MAX_PIDS",
                default: "none"),
            OptionSpec(
                "--max-cpu", .value("MILLICORES"), help: "Ceiling of a job's CPU quota.",
                environment: "RUNNER_MAX_CPU", default: "none"),
            OptionSpec(
                "--run-as", .value("USER"), help: "Run jobs as this user (name or uid:gid; the runner must be root).",
                environment: "RUNNER_RUN_AS"),
            OptionSpec(
                "--env-allow", .repeated("NAME"),
                help: "Copy this variable of the runner's environment into jobs; also a comma list (LANG,TZ).",
                environment: "RUNNER_ENV_ALLOW"),
            OptionSpec(
                "--work-root", .value("DIR"),
                help: "Jobs' private work folders are made under DIR/<namespace>.<name>.<pool>.",
                environment: "RUNNER_WORK_ROOT", default: IsolationConfiguration.defaultWorkRoot),
            OptionSpec(
                "--keep-work-dirs", .flag, help: "Keep each job's work folder after it ended.",
                environment: "RUNNER_KEEP_WORK_DIRS"),
            OptionSpec(
                "--cgroup-parent", .value("PATH"),
                help: "The cgroup, relative to each hierarchy's root, in which the runner makes its own "
                    + "(nativerunner-<namespace>.<name>.<pool>); runners may share it.",
                environment: "RUNNER_CGROUP_PARENT",
                default: "nativerunner-<namespace>.<name>.<pool> under the runner's own cgroup"),
            OptionSpec(
                "--monitor-interval", .value("DURATION"),
                help: "How often resource usage is published and leftovers are cleaned up.",
                environment: "RUNNER_MONITOR_INTERVAL", default: "10s"),
            OptionSpec(
                "--no-reaper", .flag,
                help: "Do not take part in reaping lost runners and moving due retries (a control plane does it).",
                environment: "RUNNER_NO_REAPER"),
            OptionSpec(
                "--reaper-interval", .value("DURATION"), help: "How often the reaper leader looks for lost runners.",
                environment: "RUNNER_REAPER_INTERVAL", default: "5s"),
            CommonOptions.rescheduleLimit,
            CommonOptions.lostRetention,
            CommonOptions.allowEvictionPolicy,
            OptionSpec(
                "--exit-after-jobs", .value("N"),
                help: "Ephemeral: take at most N jobs, then shut down gracefully once they have ended (exit 0).",
                environment: "RUNNER_EXIT_AFTER_JOBS"),
            OptionSpec(
                "--exit-when-idle", .value("DURATION"),
                help: "Ephemeral: shut down gracefully (exit 0) when no job ran or arrived for DURATION.",
                environment: "RUNNER_EXIT_WHEN_IDLE"),
            OptionSpec(
                "--resume-identity", .value("RUNNER"),
                help: "Take over the id of a runner that migrated here, or died (its lease must be free): its "
                    + "counters carry over, and its queues, concurrency and labels unless given. Instead of --name.",
                environment: "RUNNER_RESUME_IDENTITY"),
            MetricsListen.option,
        ] + labelAndHookOptions + CommonOptions.logging + ConfigurationLayers.options)

    /// The name of a runner given none: `<hostname>-<pid>`, the pid the worker's own.
    static func defaultName(pid: String) -> String { "\(CommonOptions.hostName)-\(pid)" }

    static func configuration(_ arguments: ParsedArguments) throws -> (WorkerConfiguration, Logger) {
        let host = CommonOptions.hostName
        let resumed = arguments.value("--resume-identity")
        if let resumed, let named = arguments.value("--name"), arguments.sources["--name"] == "flag", named != resumed {
            throw UsageError(
                "'--name \(named)' and '--resume-identity \(resumed)' name different runners", command: spec.name)
        }
        let name = resumed ?? arguments.value("--name") ?? defaultName(pid: String(getpid()))
        try arguments.checkName(name, option: resumed == nil ? "--name" : "--resume-identity")
        let node = arguments.value("--node") ?? host
        guard Keyspace.isValidNodeName(node) else {
            throw UsageError(
                "invalid value for '--node': '\(UsageError.excerpt(node))' ("
                    + UsageError.nameReason(
                        node, limit: Keyspace.maximumNodeNameLength,
                        rules: "1 to 200 characters; no spaces or control characters") + ")", command: spec.name)
        }
        // A comma list wherever it is given (`--queue high,default`, `RUNNER_QUEUES=high,default`, the file's
        // `"queue"`), an empty name in it refused (`a,,b`, `a,`, `--queue ''`), not left out. Given but empty
        // (`"queue": []` in --config) is refused too, not taken for the default queue.
        let given = try arguments.commaList(
            "--queue", item: "queue name", example: "names separated by commas, e.g. high,default")
        if given?.isEmpty == true {
            throw UsageError(
                "invalid value for '--queue': no queue (give at least one, e.g. default)", command: spec.name)
        }
        let queues = given ?? [Keyspace.defaultQueue]
        for queue in queues where !Keyspace.isValidName(queue) {
            throw UsageError(
                "invalid value for '--queue': '\(UsageError.excerpt(queue))' ("
                    + UsageError.nameReason(queue, rules: "no braces, colons, spaces or control characters") + ")",
                command: spec.name)
        }
        guard Set(queues).count == queues.count else {
            throw UsageError("'--queue' names a queue twice", command: spec.name)
        }
        let most = WorkerConfiguration.maximumConcurrency
        let concurrency =
            try arguments.positiveInt("--concurrency", atMost: most)
            ?? min(most, max(1, ProcessInfo.processInfo.activeProcessorCount))
        let leaseTTL = try arguments.duration("--lease-ttl", atLeast: .seconds(1)) ?? .seconds(15)
        let logLimit =
            try arguments.parsed("--log-limit", expected: "bytes, or 64K, 16M, 1G", ByteSizeParser.parse) ?? 16 << 20
        let redis = try arguments.endpoint()
        let keyspace = try arguments.keyspace()
        let resultRetention = try arguments.resultRetention()
        let eventsMaxLength = try arguments.positiveInt("--events-maxlen") ?? 100_000
        // A job's timeout is at least 1 ms (`timeout_ms`, `submit --timeout`): a default of 0 would stop every job
        // without one of its own at once, as timed out.
        let defaultJobTimeout = try arguments.duration("--default-timeout", atLeast: .milliseconds(1))
        let rescheduleBound =
            try arguments.positiveInt("--reschedule-limit") ?? ReaperConfiguration.defaultRescheduleBound
        let reaper =
            arguments.flag("--no-reaper")
            ? nil
            : ReaperConfiguration(
                redis: redis, keyspace: keyspace, name: name,
                interval: try arguments.reaperInterval(),
                lostRetention: try arguments.duration("--lost-retention") ?? ReaperConfiguration.defaultLostRetention,
                rescheduleBound: rescheduleBound, eventsMaxLength: eventsMaxLength, resultRetention: resultRetention)
        var configuration = WorkerConfiguration(
            redis: redis, keyspace: keyspace, name: name,
            node: node, queues: queues, concurrency: concurrency, leaseTTL: leaseTTL,
            shutdownTimeout: try arguments.duration("--shutdown-timeout") ?? .seconds(30),
            killGrace: try arguments.duration("--kill-grace") ?? .seconds(5),
            defaultJobTimeout: defaultJobTimeout,
            resultRetention: resultRetention, eventsMaxLength: eventsMaxLength, logLimitBytes: logLimit,
            rescheduleBound: rescheduleBound, reaper: reaper, isolation: try isolationConfiguration(arguments))
        configuration.allowEvictionPolicy = arguments.flag("--allow-eviction-policy")
        configuration.labels = try labels(arguments)
        configuration.hooks = try hooks(arguments)
        configuration.exitAfterJobs = try arguments.positiveInt("--exit-after-jobs")
        configuration.exitWhenIdle = try arguments.duration("--exit-when-idle")
        if let idle = configuration.exitWhenIdle, idle <= .zero {
            throw UsageError("invalid value for '--exit-when-idle': it must be longer than 0", command: spec.name)
        }
        configuration.resumeIdentity = resumed != nil
        return (configuration, try logger(arguments))
    }

    /// The logger `--log-level` and `--log-format` ask for, named `label`: "runner" for the worker, "control" for
    /// the control plane.
    static func logger(_ arguments: ParsedArguments, label: String = "runner") throws -> Logger {
        let logLevel =
            try arguments.parsed("--log-level", expected: "debug, info, warning or error", Logger.Level.init(name:))
            ?? .info
        let logFormat =
            try arguments.parsed("--log-format", expected: "text or json", Logger.Format.init(rawValue:)) ?? .text
        return Logger(label: label, level: logLevel, format: logFormat)
    }

    /// The options that set the default limits and the ceilings, by their key in a spec's `limits`.
    static let defaultLimitOptions = [
        JobLimits.Key.memoryBytes: "--default-memory", JobLimits.Key.pids: "--default-pids",
        JobLimits.Key.cpuMillis: "--default-cpu",
    ]
    static let ceilingOptions = [
        JobLimits.Key.memoryBytes: "--max-memory", JobLimits.Key.pids: "--max-pids",
        JobLimits.Key.cpuMillis: "--max-cpu",
    ]

    static func isolationConfiguration(_ arguments: ParsedArguments) throws -> IsolationConfiguration {
        func size(_ name: String) throws -> Int? {
            try arguments.parsed(name, expected: "bytes, or 64K, 16M, 1G") {
                ByteSizeParser.parse($0).flatMap { $0 > 0 ? $0 : nil }
            }
        }
        let defaults = JobLimits(
            memoryBytes: try size("--default-memory"), pids: try arguments.positiveInt("--default-pids"),
            cpuMillis: try arguments.millicores("--default-cpu"))
        let ceilings = JobLimits(
            memoryBytes: try size("--max-memory"), pids: try arguments.positiveInt("--max-pids"),
            cpuMillis: try arguments.millicores("--max-cpu"))
        // Out of the kernel's range, every cgroup job would fail (or, for a ceiling, be rejected): refused at start.
        try arguments.checkLimitRanges(defaults, options: defaultLimitOptions)
        try arguments.checkLimitRanges(ceilings, options: ceilingOptions)
        // Named as the value the user wrote (its flag, variable or file line: see `locating`), against its ceiling.
        let caps = Dictionary(uniqueKeysWithValues: ceilings.entries.map { ($0.name, $0.value) })
        for (key, value) in defaults.entries {
            guard let cap = caps[key], value > cap, let option = defaultLimitOptions[key],
                let ceiling = ceilingOptions[key]
            else { continue }
            throw UsageError(
                "invalid value for '\(option)': '\(UsageError.excerpt(arguments.value(option) ?? String(value)))' is "
                    + "above the ceiling "
                    + "\(ceiling) \(arguments.value(ceiling) ?? String(cap))", command: spec.name)
        }
        let allowlist =
            try arguments.commaList(
                "--env-allow", item: "variable name", example: "names separated by commas, e.g. LANG,TZ") ?? []
        for name in allowlist where name.contains(where: { $0 == "=" || $0.isWhitespace }) {
            throw UsageError(
                "invalid value for '--env-allow': '\(UsageError.excerpt(name))' is not a variable name",
                command: spec.name)
        }
        for name in allowlist where name.hasPrefix("RUNNER_REDIS") {
            throw UsageError(
                "invalid value for '--env-allow': \(name) carries the Redis address or password and never reaches jobs",
                command: spec.name)
        }
        let workRoot = arguments.value("--work-root") ?? IsolationConfiguration.defaultWorkRoot
        guard workRoot.hasPrefix("/") else {
            throw UsageError(
                "invalid value for '--work-root': '\(UsageError.excerpt(workRoot, limit: .max))' is not an absolute "
                    + "path",
                command: spec.name)
        }
        if let parent = arguments.value("--cgroup-parent"),
            parent.split(separator: "/", omittingEmptySubsequences: false).dropFirst(parent.hasPrefix("/") ? 1 : 0)
                .contains(where: { $0.isEmpty || $0 == "." || $0 == ".." })
        {
            throw UsageError(
                "invalid value for '--cgroup-parent': '\(UsageError.excerpt(parent, limit: .max))' (a path of names, "
                    + "no '.', '..' or empty parts)",
                command: spec.name)
        }
        let interval = try arguments.duration("--monitor-interval", atLeast: .milliseconds(100)) ?? .seconds(10)
        return IsolationConfiguration(
            defaultLevel: try arguments.parsed(
                "--isolation", expected: IsolationLevel.spellings, IsolationLevel.init(rawValue:)) ?? .processGroup,
            fallback: arguments.flag("--isolation-fallback"), defaultLimits: defaults, ceilings: ceilings,
            runAs: try arguments.value("--run-as").map(runAsUser), environmentAllowlist: allowlist,
            workRoot: workRoot, keepWorkFolders: arguments.flag("--keep-work-dirs"),
            cgroupParent: arguments.value("--cgroup-parent"), monitorInterval: interval)
    }

    /// A user name, or `uid:gid`, resolved now so that a typo fails at start rather than at the first job.
    static func runAsUser(_ text: String) throws -> RunAsUser {
        guard getuid() == 0 else {
            throw UsageError("--run-as \(text) needs the runner to run as root", command: spec.name)
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 2, let uid = UInt32(parts[0]), let gid = UInt32(parts[1]) {
            return RunAsUser(name: text, uid: uid, gid: gid)
        }
        guard parts.count == 1, let entry = getpwnam(text) else {
            throw UsageError(
                "invalid value for '--run-as': no user '\(UsageError.excerpt(text))' (give a user name or uid:gid)",
                command: spec.name)
        }
        return RunAsUser(name: text, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
    }

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let (parsed, logger) = try configuration(arguments)
        var configuration = parsed
        for warning in arguments.warnings { logger.warning(warning) }
        if configuration.resumeIdentity {
            try await takeOverSettings(into: &configuration, arguments, logger: logger)
        }
        let metricsAddress = try MetricsListen.address(arguments)
        let worker = Worker(configuration: configuration, logger: logger)
        var metricsServer: HTTPServer?
        if let metricsAddress {
            let endpoint = MetricsEndpoint(metrics: worker.metrics)
            metricsServer = try MetricsListen.start(metricsAddress, logger: logger) { endpoint.respond($0) }
        }
        defer { metricsServer?.stop() }
        // SIGHUP too: a worker started from a terminal that closes shuts down cleanly instead of dying mid-job.
        let signals = SignalObserver(signals: [SIGTERM, SIGINT, SIGHUP]) { signal in
            logger.info("received \(SignalObserver.name(signal))")
            worker.requestShutdown()
        }
        defer { signals.cancel() }
        let summary = try await worker.run()
        guard summary.unrecorded == 0 else {
            throw CommandFailure(
                "stopped without recording \(counted(summary.unrecorded, "job", "jobs")) because Redis was unreachable; "
                    + "their entries stay pending and run again")
        }
        return 0
    }
}

extension WorkerCommand {
    /// `--resume-identity`: the queues, concurrency and labels of the record taken over, each unless this worker
    /// sets it itself (a flag, `RUNNER_*`, the config file or a profile: what is given wins). The jobs sent to the
    /// old runner's queues then still find it, and it routes by the old labels too, not only shows them. Logged at
    /// info: which were taken over and which were the worker's own, with the values in force (labels `-` for none).
    static func takeOverSettings(
        into configuration: inout WorkerConfiguration, _ arguments: ParsedArguments, logger: Logger
    ) async throws {
        let runner = configuration.name
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        // No record: the worker's own start refuses the takeover with its error (exit 2).
        let presence = try await pool.presence(of: runner)
        guard let record = presence.record else { return }
        // Refused before anything is taken over or logged as taken (the start checks the lease again, atomically).
        if presence.leaseHeld {
            let state = record[RunnerRecordField.state]?.stringValue.map { ", state \($0)" } ?? ""
            throw CommandFailure(
                "--resume-identity \(runner): the old runner still holds its lease (it has not finished its "
                    + "migration, or it still runs\(state), or it died less than its lease TTL ago: try again once "
                    + "runner status shows its LEASE expired); nothing was taken over")
        }
        var taken: [String] = []
        var own: [String] = []
        if arguments.values["--queue"] != nil {
            own.append("queues")
        } else if let queues = record[RunnerRecordField.queues]?.arrayValue {
            let names = queues.compactMap(\.stringValue)
            guard !names.isEmpty, names.count == queues.count, Set(names).count == names.count,
                names.allSatisfy(Keyspace.isValidName)
            else {
                throw CommandFailure("the queues of runner '\(runner)' in the registry are invalid; give --queue")
            }
            configuration.queues = names
            taken.append("queues")
        }
        if arguments.values["--concurrency"] != nil {
            own.append("concurrency")
        } else if let capacity = record[RunnerRecordField.capacity]?.intValue {
            // Refused as --concurrency beyond the bound is: taken over, it trapped the runner after registering.
            guard (1...WorkerConfiguration.maximumConcurrency).contains(capacity) else {
                throw CommandFailure(
                    "the capacity of runner '\(runner)' in the registry is invalid (\(capacity); a runner has 1 to "
                        + "\(WorkerConfiguration.maximumConcurrency) slots); give --concurrency")
            }
            configuration.concurrency = capacity
            taken.append("concurrency")
        }
        if !configuration.labels.isEmpty {
            own.append("labels")
        } else if let labels = record[RunnerRecordField.labels]?.objectValue {
            var values: [String: String] = [:]
            for (key, value) in labels {
                if let text = value.stringValue { values[key] = text }
            }
            do {
                configuration.labels = try LabelSet(values)
            } catch {
                throw CommandFailure("the labels of runner '\(runner)' in the registry are invalid: \(error.message)")
            }
            taken.append("labels")
        }
        let given = own.isEmpty ? "" : "; its own (given): \(own.joined(separator: ", "))"
        logger.info(
            "taking over runner \(runner): \(taken.isEmpty ? "nothing" : taken.joined(separator: ", ")) from its "
                + "record\(given)",
            [
                "queues": configuration.queues.joined(separator: ","), "concurrency": String(configuration.concurrency),
                "labels": configuration.labels.isEmpty ? "-" : configuration.labels.canonical,
            ])
    }
}

/// Turns SIGTERM/SIGINT into calls on a queue instead of the default termination.
final class SignalObserver {
    private let sources: [any DispatchSourceSignal]

    init(signals: [Int32], handler: @escaping @Sendable (Int32) -> Void) {
        var sources: [any DispatchSourceSignal] = []
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { handler(number) }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    func cancel() {
        for source in sources { source.cancel() }
    }

    /// How a log line names a signal: SIGTERM, SIGINT, SIGHUP, or `signal N` for any other.
    static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGTERM: "SIGTERM"
        case SIGINT: "SIGINT"
        case SIGHUP: "SIGHUP"
        default: "signal \(signal)"
        }
    }
}
