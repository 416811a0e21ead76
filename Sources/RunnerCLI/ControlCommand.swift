import Foundation
import HTTPEndpoint
import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner control`: the control plane. Runs the pool's reaper (lost runners, their pending entries, due retries)
/// until SIGTERM or SIGINT.
enum ControlCommand {
    static let spec = CommandSpec(
        name: "control",
        abstract: "Run the control plane: reschedule the jobs of lost runners and move due retries.",
        usage:
            "runner control [--redis HOST:PORT] [--interval D] [--reschedule-limit N] [--lost-retention D] "
            + "[--metrics-listen HOST:PORT] [options]",
        options: CommonOptions.all + [
            OptionSpec(
                "--name", .value("NAME"), help: "Name in events and logs.", environment: "RUNNER_CONTROL_NAME",
                default: "control-<hostname>-<pid>"),
            OptionSpec(
                "--interval", .value("DURATION"), help: "How often the leader looks for lost runners.",
                environment: "RUNNER_REAPER_INTERVAL", default: "5s"),
            CommonOptions.rescheduleLimit,
            CommonOptions.lostRetention,
            CommonOptions.resultRetention,
            CommonOptions.allowEvictionPolicy,
            MetricsListen.controlOption,
        ] + CommonOptions.logging,
        discussion: """
            Several control planes (and workers, which reap too unless --no-reaper) may run at once: only the holder
            of the leader lease {nr}:reaper acts. It logs 'control plane leads the pool' or 'standing by: the reaper
            lease is held by NAME' (name= its own name, leader= the holder's) at start and whenever that changes. On
            SIGTERM or SIGINT a leader releases the lease (only while it is still its own), so a standby leads at its
            next try instead of when the lease lapses. A runner whose lease is gone is marked lost
            (runner.lost); each job it held is put back on its queue with its attempt raised (job.rescheduled), and
            its consumer leaves the group once nothing is pending for it. Entries of live runners are never touched.

            With --metrics-listen, every control plane (leader or not) serves the pool's figures on /metrics, read
            from Redis every --interval (at most once a second): nativerunner_pool_runners{state}, nativerunner_pool_queue_length,
            _pending, _waiting and _consumers{queue}, nativerunner_pool_retries_scheduled,
            nativerunner_pool_dead_letters, and the reading's age and failures. /readyz answers 503 once the last
            good reading is older than three intervals.
            """)

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let name = arguments.value("--name") ?? "control-\(WorkerCommand.defaultName(pid: String(getpid())))"
        // As a worker's: the name is the `runner` of its events and the holder in the reaper lease.
        try arguments.checkName(name)
        let logger = try WorkerCommand.logger(arguments, label: "control")
        let configuration = ReaperConfiguration(
            redis: try arguments.endpoint(), keyspace: try arguments.keyspace(), name: name,
            interval: try arguments.reaperInterval("--interval"),
            lostRetention: try arguments.duration("--lost-retention") ?? ReaperConfiguration.defaultLostRetention,
            rescheduleBound: try arguments.positiveInt("--reschedule-limit")
                ?? ReaperConfiguration.defaultRescheduleBound,
            resultRetention: try arguments.resultRetention())
        let metricsAddress = try MetricsListen.address(arguments, command: spec.name)
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        try await EvictionPolicyCheck.verify(
            client: pool.client, allow: arguments.flag("--allow-eviction-policy"), logger: logger)
        await PersistenceCheck.warnIfVolatile(client: pool.client, logger: logger)
        do {
            try await Reaper.checkScriptsAllowed(client: pool.client, keyspace: configuration.keyspace)
        } catch let error as RedisServerError where error.kind == "NOPERM" {
            throw CommandFailure(
                "Redis refuses the control plane its scripts: \(error.message) (its user needs what docs/operations.md "
                    + "gives nr-runner)")
        }
        // Before the reaper's first turn, which says whether this control plane leads or stands by.
        logger.info(
            "control plane running",
            [
                "name": name, "redis": configuration.redis.description,
                "interval_ms": String(configuration.interval.milliseconds),
            ])
        var metricsServer: HTTPServer?
        var metricsRefresh: Task<Void, Never>?
        if let metricsAddress {
            // A reading is a few commands per runner and per queue: at most one a second, whatever the interval.
            let interval = max(configuration.interval, .seconds(1))
            let cache = PoolMetricsCache(staleAfter: interval * 3)
            await cache.refresh(pool)
            metricsServer = try MetricsListen.start(metricsAddress, logger: logger) { cache.respond($0) }
            // Readings start an interval apart, back to back when one takes longer (a pool of many queues).
            metricsRefresh = Task {
                var next = ContinuousClock.now + interval
                while (try? await Task.sleep(until: next, clock: .continuous)) != nil {
                    next = .now + interval
                    await cache.refresh(pool)
                }
            }
        }
        defer {
            metricsRefresh?.cancel()
            metricsServer?.stop()
        }
        let reaper = Reaper(configuration: configuration, logger: logger, role: .controlPlane)
        let task = Task { await reaper.run() }
        let signals = SignalObserver(signals: [SIGTERM, SIGINT, SIGHUP]) { signal in
            logger.info("received \(SignalObserver.name(signal)); stopping")
            task.cancel()
        }
        defer { signals.cancel() }
        await task.value
        logger.info("control plane stopped", ["name": name])
        return 0
    }
}
