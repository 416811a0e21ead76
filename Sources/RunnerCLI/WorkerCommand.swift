import Dispatch
import Foundation
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
                default: "hostname-pid"),
            OptionSpec(
                "--node", .value("NAME"), help: "The node this runner is on.", environment: "RUNNER_NODE",
                default: "the hostname"),
            OptionSpec(
                "--queue", .repeated("QUEUE"), help: "Queue to read, in priority order.",
                environment: "RUNNER_QUEUES", default: Keyspace.defaultQueue),
            OptionSpec(
                "--concurrency", .value("N"), help: "Jobs run at once.", environment: "RUNNER_CONCURRENCY",
                default: "CPU count"),
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
                "--no-reaper", .flag,
                help: "Do not take part in reaping lost runners and moving due retries (a control plane does it).",
                environment: "RUNNER_NO_REAPER"),
            OptionSpec(
                "--reaper-interval", .value("DURATION"), help: "How often the reaper leader looks for lost runners.",
                environment: "RUNNER_REAPER_INTERVAL", default: "5s"),
            CommonOptions.rescheduleLimit,
            CommonOptions.allowEvictionPolicy,
        ] + CommonOptions.logging)

    static func configuration(_ arguments: ParsedArguments) throws -> (WorkerConfiguration, Logger) {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        let name = arguments.value("--name") ?? "\(host)-\(getpid())"
        guard Keyspace.isValidName(name) else {
            throw UsageError("invalid value for '--name': '\(name)' (no braces, colons or spaces)", command: spec.name)
        }
        let queues = arguments.all("--queue").isEmpty ? [Keyspace.defaultQueue] : arguments.all("--queue")
        for queue in queues where !Keyspace.isValidName(queue) {
            throw UsageError(
                "invalid value for '--queue': '\(queue)' (no braces, colons or spaces)", command: spec.name)
        }
        guard Set(queues).count == queues.count else {
            throw UsageError("'--queue' names a queue twice", command: spec.name)
        }
        let concurrency =
            try arguments.positiveInt("--concurrency") ?? max(1, ProcessInfo.processInfo.activeProcessorCount)
        let leaseTTL = try arguments.duration("--lease-ttl") ?? .seconds(15)
        guard leaseTTL >= .seconds(1) else {
            throw UsageError("invalid value for '--lease-ttl': it must be at least 1s", command: spec.name)
        }
        let logLimit =
            try arguments.parsed("--log-limit", expected: "bytes, or 64K, 16M, 1G", ByteSizeParser.parse) ?? 16 << 20
        let redis = try arguments.endpoint()
        let keyspace = try arguments.keyspace()
        let resultRetention = try arguments.duration("--result-retention") ?? .seconds(7 * 24 * 3600)
        let eventsMaxLength = try arguments.positiveInt("--events-maxlen") ?? 100_000
        let rescheduleBound =
            try arguments.positiveInt("--reschedule-limit") ?? ReaperConfiguration.defaultRescheduleBound
        let reaper =
            arguments.flag("--no-reaper")
            ? nil
            : ReaperConfiguration(
                redis: redis, keyspace: keyspace, name: name,
                interval: try arguments.reaperInterval(), rescheduleBound: rescheduleBound,
                eventsMaxLength: eventsMaxLength, resultRetention: resultRetention)
        var configuration = WorkerConfiguration(
            redis: redis, keyspace: keyspace, name: name,
            node: arguments.value("--node") ?? host, queues: queues, concurrency: concurrency, leaseTTL: leaseTTL,
            shutdownTimeout: try arguments.duration("--shutdown-timeout") ?? .seconds(30),
            killGrace: try arguments.duration("--kill-grace") ?? .seconds(5),
            defaultJobTimeout: try arguments.duration("--default-timeout"),
            resultRetention: resultRetention, eventsMaxLength: eventsMaxLength, logLimitBytes: logLimit,
            rescheduleBound: rescheduleBound, reaper: reaper)
        configuration.allowEvictionPolicy = arguments.flag("--allow-eviction-policy")
        return (configuration, try logger(arguments))
    }

    /// The logger `--log-level` and `--log-format` ask for.
    static func logger(_ arguments: ParsedArguments) throws -> Logger {
        let logLevel =
            try arguments.parsed("--log-level", expected: "debug, info, warning or error", Logger.Level.init(name:))
            ?? .info
        let logFormat =
            try arguments.parsed("--log-format", expected: "text or json", Logger.Format.init(rawValue:)) ?? .text
        return Logger(label: "runner", level: logLevel, format: logFormat)
    }

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let (configuration, logger) = try configuration(arguments)
        let worker = Worker(configuration: configuration, logger: logger)
        // SIGHUP too: a worker started from a terminal that closes shuts down cleanly instead of dying mid-job.
        let signals = SignalObserver(signals: [SIGTERM, SIGINT, SIGHUP]) { signal in
            logger.info("received \(signal == SIGTERM ? "SIGTERM" : signal == SIGINT ? "SIGINT" : "SIGHUP")")
            worker.requestShutdown()
        }
        defer { signals.cancel() }
        let summary = try await worker.run()
        guard summary.unrecorded == 0 else {
            throw CommandFailure(
                "stopped without recording \(summary.unrecorded) job(s) because Redis was unreachable; "
                    + "their entries stay pending and run again")
        }
        return 0
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
}
