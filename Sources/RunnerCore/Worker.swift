import Foundation
import ProcessSupervision
import RedisClient
import RunnerProtocol
import Synchronization

/// What a worker did, reported in `runner.shutdown`.
public struct WorkerSummary: Sendable, Equatable {
    public var finished = 0
    public var handedBack = 0
    public var rejected = 0
    public var lost = 0
    /// Jobs whose outcome could not be written before the runner gave up on Redis; their entries stay pending.
    public var unrecorded = 0
    /// Jobs stopped (or never started) because their lease epoch ended; their entries are rescheduled.
    public var abandoned = 0
    /// Results Redis refused because the job belonged to another attempt or epoch by then (`job.stale_result`).
    public var staleResults = 0
    /// Lease epochs this runner had to end (`runner.lease_lost`).
    public var leaseEpochsLost = 0
    /// Jobs moved to the requirement stream of labels this runner lacks (`job.routed`).
    public var routed = 0
}

/// Why a lease epoch ended (`runner.lease_lost` data `reason`).
enum EpochEnd: String, Sendable {
    /// A renewal found the lease no longer holding the token (it expired, or was deleted).
    case leaseGone = "lease_gone"
    /// Redis had not confirmed the lease for two thirds of its TTL (the runner was paused, or cut off from Redis).
    case notRenewed = "not_renewed"
}

/// The worker: registers with a lease, heartbeats, reads jobs through the consumer group up to its free slots,
/// runs each as a process, records results; shuts down gracefully on request.
///
/// Three Redis connections, each with one job: `intake` blocks in XREADGROUP, `presence` renews the lease and
/// heartbeats (so an idle runner never loses its lease behind a blocking read), `jobs` carries job writes.
public final class Worker: Sendable {
    public let configuration: WorkerConfiguration
    let logger: Logger
    let intakeClient: RedisClient
    let presenceClient: RedisClient
    private let jobsClient: RedisClient
    /// Reads the control streams (XREAD BLOCK), so commands never wait behind intake or lease traffic.
    private let controlClient: RedisClient
    let slots: JobSlots
    /// Entries read ahead of the free slots (PrefetchBuffer.swift).
    let prefetch: PrefetchBuffer
    let shutdownRequested = Latch()
    let immediateRequested = Latch()
    /// Drain, resume, migrate, cancels, the job budget: what operating the pool adds (Worker+Control.swift).
    let operations: PoolOperations
    /// Another runner took this runner's name (after this one was paused past its lease, say): its jobs and
    /// pending entries are that runner's now, so this one stops them without recording anything and exits.
    private let nameLost = Latch()
    let summary = Mutex(WorkerSummary())
    private let killSwitch: any JobKillSwitch
    /// The watchdog process behind `killSwitch` (nil when it could not be started).
    private let watchdog: WatchdogKillSwitch?
    /// Open (fired) while intake may read; replaced by a closed one while a lease epoch ends.
    private let intakeOpen = Mutex(Latch(fired: true))
    /// The task ending a lease epoch, while one runs; and the epochs whose end has been started.
    private let epochTransition = Mutex<Task<Void, Never>?>(nil)
    /// Set when this consumer has pending entries that no slot runs (delivered to a read whose reply was lost, or to
    /// a paused earlier run of this name): the intake then reads its own pending entries again.
    private let strayPending = Mutex(false)
    let state = Mutex(RunnerState.starting)
    private let containments = RunningContainments()
    /// The queues and the requirement streams this runner's labels satisfy, in the order it reads them.
    private let routes: RequirementRoutes
    /// Counters and health for `/metrics`, `/healthz` and `/readyz` (served by the CLI's `--metrics-listen`).
    public let metrics: WorkerMetrics

    public init(configuration: WorkerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        func client(_ name: String) -> RedisClient {
            var options = RedisClientOptions()
            options.name = name
            let log = logger
            return RedisClient(endpoint: configuration.redis, options: options) { line in log.warning(line) }
        }
        intakeClient = client("intake")
        presenceClient = client("presence")
        jobsClient = client("jobs")
        controlClient = client("control")
        operations = PoolOperations(jobLimit: configuration.exitAfterJobs)
        slots = JobSlots(capacity: configuration.concurrency)
        // An ephemeral runner never takes more than its budget: it reads only for free slots.
        prefetch = PrefetchBuffer(
            capacity: configuration.exitAfterJobs == nil ? configuration.prefetch ?? configuration.concurrency : 0)
        metrics = WorkerMetrics(
            runner: configuration.name, capacity: configuration.concurrency,
            livenessBound: configuration.leaseTTL + .seconds(30))
        metrics.track(redis: [intakeClient, presenceClient, jobsClient])
        watchdog = WatchdogKillSwitch.start(logger: logger)
        killSwitch = watchdog ?? InProcessKillSwitch()
        routes = RequirementRoutes(
            keyspace: configuration.keyspace, queues: configuration.queues, labels: configuration.labels,
            refreshInterval: min(configuration.heartbeatInterval, RequirementRoutes.defaultRefreshInterval))
    }

    /// Asks for a graceful shutdown; a second call asks for an immediate one (jobs stopped now and handed back).
    public func requestShutdown() {
        _ = operations.mode.withLock { $0.signalled() }
        if shutdownRequested.isFired {
            if !immediateRequested.isFired {
                logger.info("second shutdown request: stopping running jobs now")
            }
            immediateRequested.fire()
        } else {
            shutdownRequested.fire()
        }
    }

    /// Runs until shut down. Throws when the worker cannot start (Redis unreachable, name in use).
    public func run() async throws -> WorkerSummary {
        let config = configuration
        let keyspace = config.keyspace
        do {
            try await jobsClient.connect()
            try await presenceClient.connect()
            try await intakeClient.connect()
            try await controlClient.connect()
        } catch let error as RedisClientError {
            throw WorkerError(.redisUnavailable, error.message)
        }
        try await EvictionPolicyCheck.verify(client: jobsClient, allow: config.allowEvictionPolicy, logger: logger)
        await PersistenceCheck.warnIfVolatile(client: jobsClient, logger: logger)
        let supervisor: ProcessSupervisor
        do {
            supervisor = try ProcessSupervisor(subreaper: true, reapsOwnSessionOrphans: true)
        } catch {
            throw WorkerError(.processSupervision, "cannot start the process supervisor: \(error)")
        }
        defer {
            supervisor.shutdown()
            intakeClient.close()
            controlClient.close()
            presenceClient.close()
            jobsClient.close()
        }

        let store = JobStore(
            scripts: ScriptRunner(client: jobsClient), keyspace: keyspace, eventsMaxLength: config.eventsMaxLength,
            deadMaxLength: config.deadMaxLength, retention: config.resultRetention)
        let intake = JobIntake(
            client: intakeClient, keyspace: keyspace, consumer: config.name, queues: config.queues,
            block: config.intakeBlock, routes: routes, unreadable: UnreadableStreams(logger: logger))
        let lease = LeaseKeeper(client: presenceClient, keyspace: keyspace, runner: config.name, ttl: config.leaseTTL)
        let presence = Presence(
            client: presenceClient, keyspace: keyspace, configuration: config, startedAtMs: WallClock.milliseconds(),
            extras: operations.extras)
        // Before anything is made on the host: a refused takeover must leave no runner folder or cgroup behind.
        if config.resumeIdentity {
            try await operations.takeOver(runner: config.name, client: jobsClient, keyspace: keyspace)
        }
        // The work root is checked before the cgroup parent is made: a bad one leaves nothing behind.
        let isolation: IsolationHost
        do {
            isolation = try await IsolationHost.start(
                configuration: config.isolation,
                contextName: runnerContextName(
                    namespace: keyspace.namespace, runner: config.name, pool: poolIdentity(config.redis)),
                logger: logger)
        } catch {
            throw WorkerError(.invalidConfiguration, error.message)
        }
        // A start that fails from here on (Redis, the name) removes what it made on the host.
        var registered = false
        defer { if !registered { isolation.removeMadeAtStart() } }
        let sampler = isolation.sampler
        let admission = MemoryAdmission(
            totalBytes: isolation.hostMemoryBytes, availableBytes: { try? sampler.memory().availableBytes })
        let executor = JobExecutor(
            configuration: config, store: store, logClient: jobsClient, supervisor: supervisor, logger: logger,
            killSwitch: killSwitch, rescheduleBound: config.rescheduleBound, isolation: isolation,
            containments: containments, admission: admission, cancellations: operations.cancellations,
            metrics: metrics)
        let monitor = ResourceMonitor(
            host: isolation, containments: containments, store: store, runner: config.name, logger: logger,
            metrics: metrics,
            deadRunners: DeadRunnerContexts(
                client: jobsClient, keyspace: keyspace, runner: config.name, pool: poolIdentity(config.redis),
                age: max(config.leaseTTL, config.isolation.monitorInterval * 2)))

        _ = try? await routes.refreshIfDue(client: intakeClient)
        try await intake.ensureGroups()
        do {
            try await lease.acquire()
        } catch let error as WorkerError where error.code == .nameInUse && config.resumeIdentity {
            throw WorkerError(
                .nameInUse,
                "--resume-identity \(config.name): the old runner still holds its lease (it has not finished its "
                    + "migration, or it still runs, or it died less than its lease TTL ago: try again once runner "
                    + "status shows its LEASE expired); \(error.message)")
        }
        killSwitch.arm(until: await lease.killDeadline)
        metrics.leaseConfirmed(until: await lease.killDeadline, renewal: false)
        // With the name ours, whatever still runs under it is left over from a previous run that died (kill -9):
        // stop it before its pending jobs run again, so that no two copies run side by side.
        let leftovers = LeftoverProcesses.kill(withEnvironment: [
            JobEnvironment.runner: config.name, JobEnvironment.namespace: keyspace.namespace,
            JobEnvironment.pool: poolIdentity(config.redis),
        ])
        if !leftovers.isEmpty {
            logger.warning(
                "stopped \(leftovers.count) process(es) left over from a previous run of runner '\(config.name)'",
                ["pids": leftovers.map(String.init).joined(separator: ",")])
        }
        let control = ControlChannel(
            client: controlClient, keyspace: keyspace, runner: config.name, block: config.controlBlock, store: store,
            logger: logger)
        let controlCursors: [String]
        do {
            // Commands count from here: what was sent before this runner registered is not replayed.
            controlCursors = try await control.start()
            setState(.running)
            let epoch = await lease.epoch.number
            try await presence.publish(state: .running, free: config.concurrency, running: [], epoch: epoch)
            try await store.emit(
                .runnerRegistered, runner: config.name,
                data: [
                    "node": .string(config.node), "pid": .int(Int(getpid())), "version": .string(config.version),
                    "queues": .array(config.queues.map(JSONValue.string)), "concurrency": .int(config.concurrency),
                    "epoch": .int(epoch), "labels": config.labels.json,
                ], retry: .never)
        } catch {
            // Do not keep the name from a restart for a whole lease TTL.
            try? await presence.unregister()
            try? await lease.release()
            throw error
        }
        registered = true
        logger.info(
            "runner registered",
            [
                "runner": config.name, "redis": config.redis.description,
                "queues": config.queues.joined(separator: ","),
                "concurrency": String(config.concurrency),
            ])

        // What a run of this name that died left behind: its cgroups and work folders (its processes are dead now).
        await monitor.cleanUp(processes: leftovers)
        let monitorTask = Task { await monitor.run(interval: config.isolation.monitorInterval) }
        let epochs = EpochContext(lease: lease, presence: presence, store: store)
        let capacityTask = Task { await self.reportCapacity(admission: admission, store: store, epochs) }
        let reaper = config.reaper.map { Reaper(configuration: $0, logger: logger) }
        let reaperTask = reaper.map { reaper in Task { await reaper.run() } }
        let presenceTask = Task { await self.keepPresence(epochs, admission: admission) }
        let watchTask = Task { await self.watchLease(epochs) }
        let intakeTask = Task { await self.intakeLoop(intake: intake, executor: executor, epochs: epochs) }
        let controlTask = Task {
            await control.run(from: controlCursors) { received in await self.handleControl(received, epochs) }
        }
        let ephemeralTask = Task { await self.exitWhenDone() }

        await shutdownRequested.wait()
        // The shutdown timeout counts from the request, and a second request stops the jobs at once: the Redis
        // writes of the hand-over below may each wait out a Redis that does not answer (its reply timeout).
        let shutdownDeadline = ContinuousClock.now + config.shutdownTimeout
        reaperTask?.cancel()
        setState(.draining)
        logger.info(
            "shutting down: intake stopped, waiting for running jobs",
            ["running": String(await slots.runningJobIds.count)])
        intakeTask.cancel()
        intakeOpen.withLock { $0 }.fire()
        intakeClient.interrupt()
        await intakeTask.value
        ephemeralTask.cancel()
        let handOver = Task {
            // Read ahead and not started: back to the queue now, not after the running jobs.
            await handBackPrefetched(store: store)
            if operations.mode.withLock({ $0.migration }) != nil {
                // Received but not started: back to the queue now, not after the running jobs (also those waiting
                // in a slot for memory).
                await slots.cancel(await admission.waiting.keys)
                await handBackUndelivered(intake: intake, store: store, lease: lease, except: await slots.runningKeys)
            }
            if !nameLost.isFired {
                try? await presence.publish(
                    state: .draining, free: await slots.free, running: await slots.runningJobIds,
                    epoch: await lease.epoch.number)
            }
        }
        await finishRunningJobs(until: shutdownDeadline)
        await handOver.value
        controlTask.cancel()
        controlClient.interrupt()
        await controlTask.value
        await ephemeralTask.value
        watchTask.cancel()
        await watchTask.value
        presenceTask.cancel()
        monitorTask.cancel()
        capacityTask.cancel()
        await presenceTask.value
        await reaperTask?.value
        let transition = epochTransition.withLock { $0 }
        transition?.cancel()
        await transition?.value
        killSwitch.disarm()
        await watchdog?.stop()
        await monitorTask.value
        await capacityTask.value
        if nameLost.isFired {
            let message =
                "runner name '\(config.name)' was taken by another runner while this one could not renew "
                + "its lease; stopped its jobs without recording them (the other runner owns them now)"
            logger.error(message)
            try? await store.emit(
                .runnerShutdown, runner: config.name, data: shutdownData(reason: "lease_taken"), retry: .never)
            throw WorkerError(.leaseLost, message)
        }
        await handBackUndelivered(intake: intake, store: store, lease: lease)

        let final = summary.withLock { $0 }
        setState(.stopped)
        if final.abandoned > 0 {
            logger.warning(
                "\(counted(final.abandoned, "job was", "jobs were")) stopped during this run when a lease epoch ended; "
                    + "a reaper reschedules such a job (or already has: see its events), or the next run of this "
                    + "runner does")
        }
        let migration = operations.mode.withLock { $0.migration }
        try? await store.emit(
            .runnerShutdown, runner: config.name,
            data: shutdownData(reason: migration == nil ? "requested" : "migrating"),
            retry: .whileUnreachable(deadline: .now + .seconds(5)))
        for queue in routes.readOrder {
            if (try? await store.removeConsumer(config.name, queue: queue)) == false {
                logger.warning(
                    "entries are still pending for this runner; its consumer stays in the group", ["queue": queue])
            }
        }
        if let migration {
            await finishMigration(migration, presence: presence, store: store, epoch: await lease.epoch.number)
        } else {
            try? await presence.unregister()
        }
        try? await lease.release()
        isolation.removeOwnContexts()
        logger.info("runner stopped", ["finished": String(final.finished), "handed_back": String(final.handedBack)])
        return final
    }

    func setState(_ new: RunnerState) {
        state.withLock { $0 = new }
        metrics.setState(new)
    }

    /// Lets running jobs finish within the shutdown timeout (cut short by a second request), then stops the rest;
    /// they are handed back to their queue.
    private func finishRunningJobs(until deadline: ContinuousClock.Instant) async {
        let idle = await slots.emptyLatch()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await idle.wait() }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            group.addTask { await self.immediateRequested.wait() }
            await group.next()
            group.cancelAll()
        }
        guard !idle.isFired else { return }
        let why = immediateRequested.isFired ? "as asked (shutdown now)" : "at the shutdown deadline"
        logger.info("stopping the jobs still running \(why)", ["running": String(await slots.runningJobIds.count)])
        await slots.cancelAll()
        // Writes about stopped jobs wait for Redis; if it stays away, give up after a bound so the runner still
        // exits. Their entries stay pending in the group, so nothing is lost: they are read again.
        let giveUp = Task { [jobsClient, logger, killGrace = configuration.killGrace] in
            try await Task.sleep(for: killGrace + .seconds(10))
            logger.error(
                "Redis is unreachable; exiting without recording the stopped jobs (their entries stay pending)")
            jobsClient.close()
        }
        await idle.wait()
        giveUp.cancel()
    }

    /// The `runner.shutdown` event's data: why, and what became of the jobs.
    func shutdownData(reason: String) -> JSONValue {
        let final = summary.withLock { $0 }
        return [
            "reason": .string(reason), "finished": .int(final.finished), "handed_back": .int(final.handedBack),
            "rejected": .int(final.rejected), "lost": .int(final.lost), "unrecorded": .int(final.unrecorded),
            "abandoned": .int(final.abandoned), "stale_results": .int(final.staleResults),
            "lease_epochs_lost": .int(final.leaseEpochsLost),
        ]
    }

    /// XPENDING of this consumer on each queue: is anything delivered to it that no slot runs?
    private func hasStrayPending() async throws -> Bool {
        // The buffer before the slots: an entry moving from one to the other between the two looks stray at worst
        // (a needless rescan), never the other way round.
        let prefetched = prefetch.keys
        let running = await slots.runningKeys.union(prefetched)
        for queue in routes.readOrder {
            let reply: RedisReply
            do {
                reply = try await presenceClient.send(
                    RedisCommand([
                        "XPENDING", configuration.keyspace.jobs(queue: queue), Keyspace.consumerGroup, "-", "+", "100",
                        configuration.name,
                    ]))
            } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
                // A queue stream SET to another type: the intake names it and does not read it; its heartbeat was
                // recorded, so this is no reason to say otherwise, nor to skip the other queues.
                continue
            }
            let ids = (reply.array ?? []).compactMap { $0.array?.first?.string }
            if ids.contains(where: { !running.contains(DeliveryKey(queue: queue, streamId: $0)) }) { return true }
        }
        return false
    }

    /// Renews the lease. Returns false, and starts the end of the epoch, when the lease is no longer this epoch's.
    private func renew(_ epochs: EpochContext) async throws -> Bool {
        let epoch = await epochs.lease.epoch
        guard !epoch.ended.isFired else { return false }
        let renewal: LeaseKeeper.Renewal
        do {
            renewal = try await epochs.lease.renew()
        } catch {
            metrics.leaseRenewalFailed()
            throw error
        }
        switch renewal {
        case .renewed(let killDeadline):
            killSwitch.arm(until: killDeadline)
            metrics.leaseConfirmed(until: killDeadline, renewal: true)
            return true
        case .lost:
            metrics.leaseRenewalFailed()
            endEpoch(epoch, reason: .leaseGone, epochs)
            return false
        case .overdue:
            metrics.leaseRenewalFailed()
            endEpoch(epoch, reason: .notRenewed, epochs)
            return false
        }
    }

    /// Before starting what it read, a runner whose lease Redis has not confirmed for half a TTL (it was paused, or
    /// Redis was away) confirms it first: entries read by an epoch that ended stay pending (the end of the epoch
    /// reschedules them, or the next read of this consumer's own pending entries takes them).
    private func mayStart(_ deliveries: [Delivery], epoch: LeaseEpoch, _ epochs: EpochContext) async -> Bool {
        guard !deliveries.isEmpty else { return true }
        let current = await epochs.lease.epoch
        if epoch.ended.isFired || epoch !== current { return false }
        guard !(await epochs.lease.isFresh) else { return true }
        return (try? await renew(epochs)) != false
    }

    private func resourceCapacity(_ admission: MemoryAdmission) async -> ResourceCapacity {
        ResourceCapacity(memoryReservedBytes: await admission.reservedBytes, waiting: await admission.waiting.count)
    }

    /// Emits `runner.capacity_update` when the slots, the resource admission or the state changed, until cancelled.
    /// When the jobs running changed it publishes the heartbeat too, so that `status` and `top` show a job that
    /// started or ended at once rather than at the next heartbeat; only while the lease is fresh (the heartbeat loop,
    /// which renews it first, says why when it is not). A round follows a change of the slots, paced to one per
    /// `capacityReportGap` over time (a busy runner's slots change with every job), and comes at least every
    /// `capacityReportInterval` (the state and the admission are not signalled: they are looked at then).
    private func reportCapacity(admission: MemoryAdmission, store: JobStore, _ epochs: EpochContext) async {
        var reported: CapacitySnapshot?
        var lastRunning: [String]?
        var pacing = RoundPacing(gap: Worker.capacityReportGap, burst: 3, now: .now)
        while !Task.isCancelled {
            // Read before the slots are looked at: a change while the round runs starts the next one.
            let seen = await slots.changes
            let now = CapacitySnapshot(
                state: state.withLock { $0 }, total: configuration.concurrency, free: await slots.free,
                resources: await resourceCapacity(admission))
            if now != reported {
                do {
                    try await store.emit(
                        .runnerCapacityUpdate, runner: configuration.name, data: now.eventData, retry: .never)
                    reported = now
                } catch {
                    store.logEventWriteFailure(error, what: "capacity update", logger: logger)
                }
            }
            // Tried once per change (a failed publish is the heartbeat loop's to retry and report); the presence
            // sends nothing Redis has already.
            let running = await slots.runningJobIds
            let epoch = await epochs.lease.epoch
            if let last = lastRunning, running != last, !epoch.ended.isFired, await epochs.lease.isFresh {
                let content = HeartbeatContent(
                    state: now.state, free: now.free, running: running, epoch: epoch.number, resources: now.resources)
                _ = try? await epochs.presence.publish(
                    content, unlessCurrentWithin: configuration.unchangedHeartbeatRefresh)
            }
            lastRunning = running
            _ = await wait(for: await slots.changeLatch(after: seen), timeout: Worker.capacityReportInterval)
            let delay = pacing.delay(now: .now)
            if delay > .zero { try? await Task.sleep(for: delay) }
        }
    }

    static let capacityReportInterval = Duration.seconds(1)
    static let capacityReportGap = Duration.milliseconds(250)

    /// Renews the lease every interval until cancelled, and publishes a heartbeat when it says something new (or the
    /// last one is getting old).
    private func keepPresence(_ epochs: EpochContext, admission: MemoryAdmission) async {
        metrics.loopWentRound()
        var heartbeats = 0
        var wrongTypeWarning = RepeatedWarning(every: .seconds(30))
        let strayCheckEvery = max(1, Int(configuration.leaseTTL / configuration.heartbeatInterval))
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.heartbeatInterval)
            if Task.isCancelled { break }
            metrics.loopWentRound()
            if nameLost.isFired { return }
            do {
                guard try await renew(epochs) else { continue }
                let content = HeartbeatContent(
                    state: state.withLock { $0 }, free: await slots.free, running: await slots.runningJobIds,
                    epoch: await epochs.lease.epoch.number, resources: await resourceCapacity(admission))
                try await epochs.presence.publish(content, unlessCurrentWithin: configuration.unchangedHeartbeatRefresh)
                if wrongTypeWarning.clear() { logger.info("heartbeat recorded again: the key is fixed") }
                // Strays come from a read whose reply was lost (the read's error already makes the intake read its
                // own pending entries) or from a paused earlier run of this name, which can deliver only until its
                // lease is seen gone: once a lease TTL is enough to find those, not every heartbeat.
                heartbeats += 1
                if heartbeats % strayCheckEvery == 0, try await hasStrayPending() {
                    strayPending.withLock { $0 = true }
                    // The intake reads them after its current read, which may block for a while: break it off.
                    intakeClient.interrupt()
                }
            } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
                // A lasting refusal (the registry or the heartbeats stream SET to another type): this runner is
                // missing from `runner status` until the key is fixed, so say so, once per 30 s.
                if wrongTypeWarning.allows(error.message) {
                    logger.warning("heartbeat not recorded: \(error.message); retrying until the key is fixed")
                }
            } catch {
                // The client has already said once that Redis is unreachable; retry at the next interval.
                logger.debug("heartbeat failed: \(error)")
            }
        }
    }

    /// Ends the epoch when Redis has not confirmed the lease for two thirds of its TTL, measured on this runner's
    /// monotonic clock: a renewal stuck behind an unreachable Redis, or a runner that was paused, must not let its
    /// jobs run on into the time a reaper may reschedule them.
    private func watchLease(_ epochs: EpochContext) async {
        while !Task.isCancelled {
            // Goes round at least every two thirds of the TTL without waiting on Redis: `/healthz` stays 200 through
            // a Redis that hangs, and turns 503 only when the runner itself is stuck.
            metrics.loopWentRound()
            let epoch = await epochs.lease.epoch
            let deadline = await epochs.lease.killDeadline
            if epoch.ended.isFired {
                // An end is in progress: wait for the next epoch.
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            try? await Task.sleep(until: deadline, clock: .continuous)
            if Task.isCancelled { break }
            let current = await epochs.lease.epoch
            if epoch === current, await epochs.lease.killDeadline <= .now {
                endEpoch(epoch, reason: .notRenewed, epochs)
            }
        }
    }

    /// What ending an epoch needs.
    struct EpochContext: Sendable {
        let lease: LeaseKeeper
        let presence: Presence
        let store: JobStore
    }

    /// Starts ending `epoch` (once): stop intake and the epoch's jobs, take the lease again with a new token, say so
    /// (`runner.lease_lost`), reschedule what the old epoch held, resume intake.
    private func endEpoch(_ epoch: LeaseEpoch, reason: EpochEnd, _ epochs: EpochContext) {
        // Once per epoch, decided by the epoch itself: an identity kept in a set outlives the epoch, and a new epoch
        // allocated at a freed one's address would never be ended.
        guard epoch.beginEnding() else { return }
        epochTransition.withLock { transition in
            epoch.ended.fire()
            intakeOpen.withLock { if $0.isFired { $0 = Latch() } }
            let previous = transition
            transition = Task {
                await previous?.value
                await self.runEpochEnd(epoch, reason: reason, epochs)
            }
        }
    }

    private func runEpochEnd(_ epoch: LeaseEpoch, reason: EpochEnd, _ epochs: EpochContext) async {
        let running = await slots.runningJobIds
        // SIGKILL to every job's group. Their tasks are not cancelled: a job that had exited on its own still tries
        // to record its result (refused as stale if the job was rescheduled meanwhile), and one being started sees
        // the ended epoch and kills itself.
        killSwitch.fire()
        let stopped = epoch.stoppedJobs.union(running).count
        summary.withLock { $0.leaseEpochsLost += 1 }
        metrics.leaseLost()
        logger.error(
            "lease epoch \(epoch.number) ended (\(reason.rawValue)): stopped \(counted(stopped, "job", "jobs")); registering again",
            ["runner": configuration.name])
        var rotation: LeaseKeeper.Rotation?
        var refused = false
        while rotation == nil {
            do {
                rotation = try await epochs.lease.rotate()
            } catch let error as WorkerError where error.code == .nameInUse {
                logger.error("lost the lease: another runner holds the name '\(configuration.name)'; stopping")
                nameLost.fire()
                shutdownRequested.fire()
                immediateRequested.fire()
                return
            } catch let error as RedisServerError {
                // Refused, not unreachable (the lease key SET to another type, an ACL): tried again every second
                // until it is fixed, with one line, instead of a runner that lives on with its intake closed.
                if !refused {
                    logger.error(
                        "could not register again after the lease epoch ended (tried again every second): \(error)")
                }
                refused = true
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled || shutdownRequested.isFired { return }
            } catch is CancellationError {
                // Shutdown: the jobs are stopped; a reaper reschedules them.
                logger.warning("did not register again after the lease epoch ended: the runner is shutting down")
                return
            } catch {
                logger.warning("could not register again after the lease epoch ended: \(error)")
                return
            }
        }
        guard let rotation else { return }
        killSwitch.arm(until: await epochs.lease.killDeadline)
        metrics.leaseConfirmed(until: await epochs.lease.killDeadline, renewal: false)
        let durable = RedisRetry.idempotent(deadline: nil)
        _ = await DurableWrite.perform(logger: logger) { [configuration] in
            try await epochs.store.emit(
                .runnerLeaseLost, runner: configuration.name,
                data: [
                    "reason": .string(reason.rawValue), "old_epoch": .int(rotation.old.number),
                    "new_epoch": .int(rotation.new.number), "old_lease_held": .bool(rotation.oldTokenWasHeld),
                    "jobs_stopped": .int(stopped),
                ], retry: durable)
        }
        let moved = await rescheduleOwnPending(epochs.store)
        logger.info(
            "registered again as lease epoch \(rotation.new.number); rescheduled \(counted(moved, "entry", "entries")) of the old one",
            ["runner": configuration.name])
        try? await epochs.presence.publish(
            state: state.withLock { $0 }, free: await slots.free, running: await slots.runningJobIds,
            epoch: rotation.new.number)
        strayPending.withLock { $0 = true }
        intakeOpen.withLock { $0 }.fire()
    }

    /// Runs the reschedule script over this consumer's pending entries: those of an ended epoch go back to their
    /// queue (attempt raised if started); those the current epoch runs are left alone. Returns how many moved.
    private func rescheduleOwnPending(_ store: JobStore) async -> Int {
        var moved = 0
        let retry = RedisRetry.idempotent(deadline: nil)
        for queue in routes.readOrder {
            var start = "-"
            for _ in 0..<10_000 {
                let page = await DurableWrite.perform(logger: logger) { [presenceClient, configuration, start] in
                    try await presenceClient.send(
                        RedisCommand([
                            "XPENDING", configuration.keyspace.jobs(queue: queue), Keyspace.consumerGroup, start, "+",
                            "100", configuration.name,
                        ]), retry: retry)
                }
                let ids = (page?.array ?? []).compactMap { $0.array?.first?.string }
                for id in ids {
                    let outcome = await DurableWrite.perform(logger: logger) { [configuration] in
                        try await store.reschedule(
                            streamId: id, queue: queue, consumer: configuration.name, reason: .leaseLost,
                            actor: configuration.name, bound: configuration.rescheduleBound,
                            countsTowardBound: false, retry: retry)
                    }
                    if case .requeued? = outcome { moved += 1 }
                    if case .dead? = outcome { moved += 1 }
                    if case .cancelled? = outcome { moved += 1 }
                }
                guard ids.count == 100, let last = ids.last else { break }
                start = "(" + last
            }
        }
        return moved
    }

    /// Reads entries up to the free slots and starts a task per job, until cancelled.
    private func intakeLoop(intake: JobIntake, executor: JobExecutor, epochs: EpochContext) async {
        var readPendingFirst = true  // our own pending entries (ID 0) first: at start and after any failure
        var cursors: [String: String] = [:]
        // A gone group, or the same failed read (Redis refusing every read, 20 times a second), says nothing new for
        // 10 s.
        var groupWarning = RepeatedWarning(every: .seconds(10))
        var readWarning = RepeatedWarning(every: .seconds(10))
        // The last read brought all it asked for: the queue may have more, worth reading ahead.
        var queueHadMore = false
        while !Task.isCancelled {
            let freeLatch = await slots.freeSlotLatch()
            await freeLatch.wait()
            await intakeOpen.withLock { $0 }.wait()
            await operations.intakeGate.wait()
            if Task.isCancelled { break }
            // Never more than an ephemeral runner's budget of jobs.
            let free = min(await slots.free, operations.mode.withLock { $0.remainingJobs } ?? .max)
            guard free > 0 else { continue }
            if strayPending.withLock({ flag in
                defer { flag = false }; return flag
            }) {
                readPendingFirst = true
            }
            // Read-ahead entries are pending entries of this consumer: the pending read takes them again, in order.
            if readPendingFirst { _ = prefetch.takeAll() }
            let epoch = await epochs.lease.epoch
            do {
                if readPendingFirst {
                    let page = try await intake.readPending(count: free, after: cursors)
                    if page.isEmpty {
                        readPendingFirst = false
                        cursors = [:]
                        continue
                    }
                    // Up to `free` of them, in order: cursors move only past what is taken (or already runs here),
                    // so the rest come with the next page.
                    let running = await slots.runningKeys
                    var taken: [Delivery] = []
                    for delivery in page {
                        guard taken.count < free else { break }
                        cursors[delivery.queue] = delivery.streamId
                        guard !running.contains(delivery.key) else { continue }
                        taken.append(delivery)
                    }
                    // Pending entries stay this name's either way: what is not started now is read again.
                    guard await mayStart(taken, epoch: epoch, epochs) else {
                        strayPending.withLock { $0 = true }
                        continue
                    }
                    for delivery in taken { await launch(delivery, executor: executor, epoch: epoch) }
                } else {
                    var free = free
                    // Entries read ahead while every slot was busy start now, without a read.
                    let (ahead, aheadEpoch) = prefetch.take(upTo: free)
                    if let aheadEpoch, !ahead.isEmpty {
                        guard operations.intakeOpen else {
                            for delivery in ahead {
                                count(
                                    await JobExecutor.handBackUnstarted(
                                        delivery, store: executor.store, epoch: aheadEpoch))
                            }
                            continue
                        }
                        guard await mayStart(ahead, epoch: aheadEpoch, epochs) else {
                            strayPending.withLock { $0 = true }
                            continue
                        }
                        for delivery in ahead { await launch(delivery, executor: executor, epoch: aheadEpoch) }
                        free -= ahead.count
                        if free == 0 {
                            // Every slot is busy again: top the buffer up without blocking, but only while the
                            // queue had more than this runner asked for (an idle pool never reads ahead), and only
                            // once it is less than half full: one read for several jobs, not one for each.
                            let room = readAheadRoom(intake)
                            // Half rounded up, without `capacity + 1`, which overflowed for Int.max slots.
                            let half = prefetch.capacity / 2 + prefetch.capacity % 2
                            if queueHadMore, room > 0, prefetch.capacity - room < half {
                                let skip = await slots.runningKeys.union(prefetch.keys)
                                let more = try await intake.readNew(count: room, wait: false).filter {
                                    !skip.contains($0.key)
                                }
                                queueHadMore = more.count >= room
                                keepAhead(more, epoch: epoch, store: executor.store)
                            }
                            continue
                        }
                    }
                    // An entry that runs here already can come again as new when its group was recreated from 0:
                    // one copy runs, the entry stays pending until that copy's result acknowledges it.
                    let room = readAheadRoom(intake)
                    let skip = await slots.runningKeys.union(prefetch.keys)
                    // Saturating: the CLI bounds the slots, a configuration built otherwise must not trap here.
                    let (sum, overflow) = free.addingReportingOverflow(room)
                    let wanted = overflow ? Int.max : sum
                    let deliveries = try await intake.readNew(count: wanted).filter { !skip.contains($0.key) }
                    queueHadMore = room > 0 && deliveries.count >= wanted
                    // Drained (or shut down) while the read was blocked: what it brought goes back at once.
                    if !operations.intakeOpen, !deliveries.isEmpty {
                        for delivery in deliveries {
                            count(await JobExecutor.handBackUnstarted(delivery, store: executor.store, epoch: epoch))
                        }
                        continue
                    }
                    guard await mayStart(deliveries, epoch: epoch, epochs) else {
                        strayPending.withLock { $0 = true }
                        continue
                    }
                    for delivery in deliveries.prefix(free) {
                        await launch(delivery, executor: executor, epoch: epoch)
                    }
                    keepAhead(Array(deliveries.dropFirst(free)), epoch: epoch, store: executor.store)
                }
            } catch is CancellationError {
                break
            } catch let error as RedisServerError where error.kind == "NOGROUP" || error.kind == "UNBLOCKED" {
                if Task.isCancelled { break }
                if groupWarning.allows("gone") {
                    logger.warning("the jobs stream or its consumer group is gone (\(error.message)); recreating it")
                }
                try? await intake.ensureGroups()
                readPendingFirst = true
                cursors = [:]
                try? await Task.sleep(for: .milliseconds(100))
            } catch {
                if Task.isCancelled { break }
                readPendingFirst = true
                cursors = [:]
                if !(error is RedisClientError), readWarning.allows("\(error)") {
                    logger.warning("intake read failed: \(error)")
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// How many entries the next read may take beyond the free slots. Only a runner that reads one stream reads
    /// ahead: with several, every freed slot must see the queues in priority order again (a read-ahead entry of a
    /// lower queue would start before a higher queue's job that arrived after it).
    private func readAheadRoom(_ intake: JobIntake) -> Int {
        intake.readQueues.count == 1 ? prefetch.room : 0
    }

    /// Keeps what a read brought beyond the free slots in the prefetch buffer. What does not fit (a read across
    /// several queues can bring one entry per queue) goes back at once rather than wait here while other runners are
    /// idle; so does the buffer when a drain closed the intake meanwhile (the drain hands back what it found there,
    /// this what came after).
    private func keepAhead(_ deliveries: [Delivery], epoch: LeaseEpoch, store: JobStore) {
        let refused = prefetch.add(deliveries, epoch: epoch)
        for delivery in refused {
            Task { self.count(await JobExecutor.handBackUnstarted(delivery, store: store, epoch: epoch)) }
        }
        if !operations.intakeOpen { Task { await self.handBackPrefetched(store: store) } }
    }

    /// Hands back every entry in the prefetch buffer (a drain, a shutdown): they were never started.
    func handBackPrefetched(store: JobStore) async {
        let (ahead, epoch) = prefetch.takeAll()
        guard let epoch else { return }
        for delivery in ahead { count(await JobExecutor.handBackUnstarted(delivery, store: store, epoch: epoch)) }
    }

    private func launch(_ delivery: Delivery, executor: JobExecutor, epoch: LeaseEpoch) async {
        operations.mode.withLock { $0.took(1) }
        if !operations.intakeOpen { operations.updateGate() }
        let jobId = delivery.fields.flatMap { JobEntry.jobId(in: $0) } ?? delivery.streamId
        // Sent from here, before anything else: the claim is the first round trip of every job's start.
        let sent = executor.claimAhead(delivery, epoch: epoch)
        await slots.reserve(delivery.key, jobId: jobId)
        metrics.jobStarted()
        let task = Task {
            let outcome = await executor.run(delivery, epoch: epoch, sent: sent) {
                await self.slots.processEnded(delivery.key)
            }
            // A cancel that came too late for this attempt must not apply to a later one.
            self.operations.cancellations.remove(jobId: jobId)
            self.count(outcome)
            if case .retried(let delay) = outcome { self.moveWhenDue(after: delay, store: executor.store) }
            // Before the slot is released: `--exit-after-jobs` must not find the budget spent with nothing running.
            if [.rejected, .lost, .routed].contains(outcome) {
                self.operations.mode.withLock { $0.gaveBack(1) }
                self.operations.updateGate()
            }
            await self.slots.release(delivery.key)
            self.metrics.jobEnded()
        }
        await slots.attach(delivery.key, task: task)
    }

    /// The runner that scheduled a retry moves it back onto its queue when it is due, so that it starts on time;
    /// the reaper's mover is the safety net when this runner is gone by then. The move happens once either way.
    private func moveWhenDue(after delay: Duration, store: JobStore) {
        Task { [logger] in
            try? await Task.sleep(for: delay)
            _ = await DurableWrite.perform(logger: logger) {
                try await store.moveDue(retry: .idempotent(deadline: .now + .seconds(30)))
            }
        }
    }

    private func count(_ outcome: DeliveryOutcome) {
        switch outcome {
        case .finished(let state) where state.isTerminal: metrics.jobTerminal(state)
        case .dead: metrics.jobTerminal(.dead)
        case .rejected: metrics.jobTerminal(.rejected)
        default: break
        }
        summary.withLock { summary in
            switch outcome {
            case .finished, .retried, .dead, .rescheduled:
                summary.finished += 1
                operations.extras.jobFinished()
            case .stale:
                summary.finished += 1
                summary.staleResults += 1
            case .unrecorded: summary.unrecorded += 1
            case .abandoned: summary.abandoned += 1
            case .handedBack: summary.handedBack += 1
            case .rejected: summary.rejected += 1
            case .lost: summary.lost += 1
            case .leftPending: break
            case .routed: summary.routed += 1
            }
        }
    }

    /// Entries delivered to this consumer but never started (a read that raced the shutdown) go back to the queue.
    private func handBackUndelivered(
        intake: JobIntake, store: JobStore, lease: LeaseKeeper, except running: Set<DeliveryKey> = []
    ) async {
        let reader = JobIntake(
            client: jobsClient, keyspace: intake.keyspace, consumer: intake.consumer, queues: intake.queues,
            block: intake.block, routes: intake.routes, unreadable: intake.unreadable)
        var cursors: [String: String] = [:]
        let epoch = await lease.epoch
        for _ in 0..<1000 {
            guard
                let page = try? await reader.readPending(
                    count: 100, after: cursors, retry: .whileUnreachable(deadline: .now + .seconds(10))),
                !page.isEmpty
            else { return }
            for delivery in page {
                cursors[delivery.queue] = delivery.streamId
                guard !running.contains(delivery.key) else { continue }
                let outcome = await JobExecutor.handBackUnstarted(delivery, store: store, epoch: epoch)
                count(outcome)
            }
        }
    }
}

extension JobExecutor {
    /// Gives back an entry that was delivered but never run: valid ones to the queue, malformed ones to the
    /// dead letters, payload-less ones reported lost. Nothing when its epoch ended (it stays pending).
    static func handBackUnstarted(_ delivery: Delivery, store: JobStore, epoch: LeaseEpoch) async -> DeliveryOutcome {
        if epoch.ended.isFired { return .abandoned }
        let retry = RedisRetry.idempotent(deadline: .now + .seconds(10))
        let owner = epoch.owner
        guard let fields = delivery.fields else {
            try? await store.lost(streamId: delivery.streamId, queue: delivery.queue, owner: owner, retry: retry)
            return .lost
        }
        do {
            let entry = try JobEntry(streamId: delivery.streamId, queue: delivery.queue, fields: fields)
            try? await store.handBack(entry: entry, owner: owner, reason: "runner shutting down", retry: retry)
            return .handedBack
        } catch {
            try? await store.reject(
                streamId: delivery.streamId, queue: delivery.queue, fields: fields, reason: error.message,
                owner: owner, retry: retry)
            return .rejected
        }
    }
}
