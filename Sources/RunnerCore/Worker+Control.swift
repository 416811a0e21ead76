import Foundation
import RedisClient
import RunnerProtocol

/// The worker's side of the control commands (drain, resume, shutdown, cancel, migrate), of migration and of
/// ephemeral runners. The decisions are `OperatingMode`'s; this performs them.
extension Worker {
    /// Answers one control command; nil for a pool-wide cancel of a job that does not run here (its owner answers).
    func handleControl(_ received: ReceivedControl, _ epochs: EpochContext) async -> ControlReply? {
        let command: ControlCommand
        switch received.command {
        case .failure(let error): return ControlReply(outcome: .rejected, reason: error.message)
        case .success(let parsed): command = parsed
        }
        if case .cancel(let job) = command { return await cancel(job: job, received, epochs) }
        if received.fromPool, case .migrate = command {
            return ControlReply(
                outcome: .rejected,
                reason: "migrate names one runner: send it to \(configuration.keyspace.control(runner: "<id>"))")
        }
        let jobsRunning = !(await slots.runningJobIds).isEmpty
        let decision = operations.mode.withLock { $0.handle(command, jobsRunning: jobsRunning) }
        switch decision.action {
        case .closeIntake?:
            operations.updateGate()
            // A read blocked in XREADGROUP now would still take a job: break it off.
            intakeClient.interrupt()
            // Entries read ahead go back at once: other runners may take them while this one drains.
            await handBackPrefetched(store: epochs.store)
        case .openIntake?:
            operations.updateGate()
        case .shutDown?:
            if case .migrate(let node, _) = command {
                logger.info("migrating to node \(node): draining, then releasing the lease")
            }
            shutdownRequested.fire()
        case .shutDownNow?:
            shutdownRequested.fire()
            immediateRequested.fire()
        case nil: break
        }
        if decision.action == .closeIntake || decision.action == .openIntake {
            await publishMode(epochs)
        }
        // Only after the publish above, so that a `draining` it computed can never land after `drained`.
        if decision.action == .closeIntake { Task { await self.reportDrainedWhenIdle(epochs) } }
        return ControlReply(outcome: decision.outcome, reason: decision.reason)
    }

    /// The heartbeat state of the operating mode, published at once (the next heartbeat would be a third of a TTL
    /// away).
    private func publishMode(_ epochs: EpochContext) async {
        let running = await slots.runningJobIds
        let current = operations.mode.withLock { $0.runnerState(jobsRunning: !running.isEmpty) }
        let published = state.withLock { state -> RunnerState? in
            // Shutting down owns the state from here on.
            guard state == .running || state == .draining || state == .drained else { return nil }
            state = current
            return current
        }
        guard let published else { return }
        setState(published)  // the metrics too
        try? await epochs.presence.publish(
            state: published, free: await slots.free, running: running, epoch: await epochs.lease.epoch.number)
    }

    /// After a drain: `drained` once the running jobs have finished (unless resumed or shut down meanwhile).
    private func reportDrainedWhenIdle(_ epochs: EpochContext) async {
        await slots.emptyLatch().wait()
        guard operations.mode.withLock({ $0.runnerState(jobsRunning: false) == .drained }) else { return }
        await publishMode(epochs)
    }

    /// A cancel for a job: stopped here if it runs here (phases as events, then a `cancelled` result).
    private func cancel(job: String, _ received: ReceivedControl, _ epochs: EpochContext) async -> ControlReply? {
        guard await slots.runningJobIds.contains(job) else {
            return received.fromPool
                ? nil : ControlReply(outcome: .ignored, reason: "job '\(job)' does not run on this runner")
        }
        guard operations.cancellations.request(for: job) == nil else {
            return ControlReply(outcome: .ignored, reason: "a cancel of job '\(job)' is already in progress")
        }
        let sentBy = received.fields[ControlField.sentBy] ?? ""
        // Received first, so that it precedes the teardown's phases, which start once the request is recorded.
        try? await epochs.store.emit(
            .jobCancelReceived, runner: configuration.name, job: job,
            data: ["command_id": .string(received.id), "sent_by": .string(sentBy)],
            retry: .idempotent(deadline: .now + .seconds(10)))
        _ = operations.cancellations.request(
            jobId: job, JobCancellations.Request(commandId: received.id, sentBy: sentBy.isEmpty ? "unknown" : sentBy))
        guard await slots.cancel(jobId: job) else {
            operations.cancellations.remove(jobId: job)
            return ControlReply(outcome: .ignored, reason: "job '\(job)' ended before the cancel reached it")
        }
        return ControlReply(outcome: .accepted, reason: nil)
    }

    /// Ephemeral runners: a graceful shutdown once `--exit-after-jobs` jobs were taken and ended, or after
    /// `--exit-when-idle` without a job. Polls the slots (no Redis traffic) until cancelled.
    func exitWhenDone() async {
        guard configuration.exitAfterJobs != nil || configuration.exitWhenIdle != nil else { return }
        var lastBusy = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(200))
            if Task.isCancelled || shutdownRequested.isFired { return }
            if await slots.inFlight > 0 {
                lastBusy = .now
                continue
            }
            if let limit = configuration.exitAfterJobs, operations.mode.withLock({ $0.remainingJobs == 0 }) {
                logger.info(
                    "took \(counted(limit, "job", "jobs")) and all have ended (--exit-after-jobs); shutting down")
                requestShutdown()
                return
            }
            if let idle = configuration.exitWhenIdle, ContinuousClock.now - lastBusy >= idle {
                logger.info("no job for \(idle) (--exit-when-idle); shutting down")
                requestShutdown()
                return
            }
        }
    }

    /// The end of a migration, instead of removing the record: the record says `migrating` with where to and until
    /// when, `runner.migration` says what was finished and handed back. The caller then releases the lease.
    func finishMigration(_ migration: OperatingMode.Migration, presence: Presence, store: JobStore, epoch: Int) async {
        let final = summary.withLock { $0 }
        let nowMs: Int
        if let time = try? await presenceClient.send(RedisCommand(["TIME"])).array, time.count == 2,
            let seconds = time[0].string.flatMap(Int.init), let micros = time[1].string.flatMap(Int.init)
        {
            nowMs = seconds * 1000 + micros / 1000
        } else {
            nowMs = WallClock.milliseconds()
        }
        var record =
            presence.record(state: .migrating, free: configuration.concurrency, running: [], epoch: epoch)
            .objectValue ?? [:]
        record[RunnerRecordField.migrateTo] = .string(migration.toNode)
        record[RunnerRecordField.migrateDeadline] = .int(nowMs + migration.takeoverTimeoutMs)
        let retry = RedisRetry.idempotent(deadline: .now + .seconds(10))
        do {
            _ = try await presenceClient.send(
                RedisCommand([
                    "HSET", configuration.keyspace.runners, configuration.name, JSONValue.object(record).serialized,
                ]),
                retry: retry)
        } catch {
            logger.warning("could not mark the registry record migrating: \(error)")
        }
        try? await store.emit(
            .runnerMigration, runner: configuration.name,
            data: [
                "from_node": .string(configuration.node), "to_node": .string(migration.toNode),
                "handed_back": .int(final.handedBack), "finished": .int(final.finished),
                "takeover_deadline": .int(nowMs + migration.takeoverTimeoutMs),
            ], retry: retry)
        logger.info(
            "migration to node \(migration.toNode): lease released; start 'runner --resume-identity "
                + "\(configuration.name) --node \(migration.toNode)' there (it takes over this runner's queues, "
                + "concurrency and labels; give its other options again)",
            ["finished": String(final.finished), "handed_back": String(final.handedBack)])
    }
}
