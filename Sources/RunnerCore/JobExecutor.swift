import Foundation
import ProcessSupervision
import RedisClient
import RunnerProtocol

/// How one delivery ended, as far as the worker's counters care.
enum DeliveryOutcome: Sendable, Equatable {
    case finished(JobState)
    case handedBack
    case rejected
    case lost
    /// The completion was refused: the job belongs to another runner, attempt or epoch now.
    case stale
    /// The attempt failed and the next one waits in the delayed set until it is due, this long from now.
    case retried(delay: Duration)
    /// Attempts exhausted: the job is dead.
    case dead
    /// The attempt's lease epoch ended (its process was killed, or it never started): nothing was recorded, the
    /// entry stays pending and is rescheduled.
    case abandoned
    /// An earlier epoch of this runner had started it: it was rescheduled, not run.
    case rescheduled
    /// Redis could not be reached before the runner gave up (at shutdown); the entry stays pending.
    case unrecorded
    /// Another live runner runs this entry, or a key the route script writes has another type: nothing was done; it
    /// stays pending here until that runner acks it, or the stray-pending check reads it again.
    case leftPending
    /// It requires labels this runner lacks: moved to its requirement stream (`job.routed`), not run here.
    case routed
}

/// Runs one delivered job from validation to its recorded result. Knows Redis only through `JobStore`.
struct JobExecutor: Sendable {
    let configuration: WorkerConfiguration
    let store: JobStore
    let logClient: RedisClient
    let supervisor: ProcessSupervisor
    let logger: Logger
    /// Kills the jobs' process groups when the lease epoch can no longer be vouched for.
    let killSwitch: any JobKillSwitch
    /// The bound of reschedules from lost runners before a job is dead (for an entry an earlier epoch started).
    let rescheduleBound: Int
    let isolation: IsolationHost
    let containments: RunningContainments
    let admission: MemoryAdmission
    /// Cancel commands accepted for running jobs.
    let cancellations: JobCancellations
    /// Where job durations are counted (nil in tests that need no metrics).
    var metrics: WorkerMetrics? = nil
    /// The deferred `started` writes and memory samples of the running jobs.
    let watches = RunningJobWatches(sampleInterval: JobExecutor.memorySampleInterval)

    /// Writes about a job are retried until Redis is back: a result is never dropped, and each script is
    /// idempotent, so resending after a lost reply changes nothing twice.
    let durable = RedisRetry.idempotent(deadline: nil)

    /// The start of a delivery's run that needs no suspension, done by the intake right after its read: the entry
    /// parsed, its isolation planned, its folder name taken and its claim sent. The claim then no longer waits for
    /// the job's own task to be scheduled, nor for the intake's next read. Nil when the delivery takes the full path
    /// of `run` (a payload gone, a malformed entry, a route to its requirement stream, a memory reservation, a
    /// refusal), which decides everything again.
    func claimAhead(_ delivery: Delivery, epoch: LeaseEpoch) -> SentClaim? {
        guard !epoch.ended.isFired, let fields = delivery.fields,
            let entry = try? JobEntry(streamId: delivery.streamId, queue: delivery.queue, fields: fields),
            configuration.labels.satisfies(entry.spec.requires),
            case .success(let plan) = isolation.plan(for: entry), plan.limits.memoryBytes == nil,
            containments.reserve(contextName: plan.contextName)
        else { return nil }
        logger.debug(
            "job received",
            ["job": entry.jobId, "queue": entry.queue, "stream_id": entry.streamId, "attempt": String(entry.attempt)])
        return sendClaim(entry, fields: fields, plan: plan, owner: epoch.owner)
    }

    /// A claim on its way, with what it was made from.
    struct SentClaim: Sendable {
        let entry: JobEntry
        /// The entry's fields as read, for a dead letter.
        let fields: [(String, [UInt8])]
        let plan: IsolationPlan
        let received: JSONValue
        /// A folder of the job's name was there before the claim: a crashed run of this entry left it.
        let crashedRunLeftFolder: Bool
        let reply: JobStore.PendingClaim
    }

    /// Runs a delivery under the lease epoch that was current when it was read. `processEnded` is called once the
    /// job's process has ended and been torn down, before its result is written (not for a job that never ran).
    /// `sent`: what `claimAhead` answered for it.
    func run(
        _ delivery: Delivery, epoch: LeaseEpoch, sent: SentClaim? = nil,
        processEnded: @escaping @Sendable () async -> Void = {}
    ) async -> DeliveryOutcome {
        if let sent {
            let outcome = await execute(sent, epoch: epoch, processEnded: processEnded)
            containments.release(contextName: sent.plan.contextName)
            return outcome
        }
        let owner = epoch.owner
        if epoch.ended.isFired { return .abandoned }
        guard let fields = delivery.fields else {
            logger.warning(
                "entry payload is gone; acking it", ["stream_id": delivery.streamId, "queue": delivery.queue])
            return await written(.lost) {
                try await store.lost(streamId: delivery.streamId, queue: delivery.queue, owner: owner, retry: durable)
            }
        }
        let entry: JobEntry
        do {
            entry = try JobEntry(streamId: delivery.streamId, queue: delivery.queue, fields: fields)
        } catch {
            logger.warning(
                "rejected entry: \(error.message)", ["stream_id": delivery.streamId, "queue": delivery.queue])
            return await written(.rejected) {
                try await store.reject(
                    streamId: delivery.streamId, queue: delivery.queue, fields: fields, reason: error.message,
                    owner: owner, retry: durable)
            }
        }
        logger.debug(
            "job received",
            ["job": entry.jobId, "queue": entry.queue, "stream_id": entry.streamId, "attempt": String(entry.attempt)])
        if let routed = await routeIfUnsatisfied(entry, fields: fields, epoch: epoch) { return routed }
        if Task.isCancelled { return await handBack(entry, epoch: epoch, reason: "runner shutting down") }
        return await planAndRun(entry, fields: fields, epoch: epoch, processEnded: processEnded)
    }

    /// Decides the job's isolation (or refuses it), waits for resource admission, then runs it. `fields` are the
    /// entry's fields as read, for a dead letter.
    private func planAndRun(
        _ entry: JobEntry, fields: [(String, [UInt8])], epoch: LeaseEpoch,
        processEnded: @escaping @Sendable () async -> Void
    ) async -> DeliveryOutcome {
        // What the host cannot give, or the runner does not allow, is refused before anything is claimed.
        let plan: IsolationPlan
        switch isolation.plan(for: entry) {
        case .success(let planned): plan = planned
        case .failure(let refusal):
            logger.warning("rejected job: \(refusal.message)", ["job": entry.jobId, "stream_id": entry.streamId])
            return await reject(entry, fields: fields, reason: refusal.message, owner: epoch.owner)
        }
        // Two deliveries running here at once never share a folder or a cgroup. Their names differ by stream id and
        // a hash of queue and job id, which two entries of one id in two queues can still share (a crafted
        // collision): the second goes back to its queue as a new entry, whose new id makes a name of its own.
        guard containments.reserve(contextName: plan.contextName) else {
            logger.warning(
                "another job running here has this job's work folder name; handing it back",
                ["job": entry.jobId, "stream_id": entry.streamId, "context": plan.contextName])
            return await handBack(entry, epoch: epoch, reason: "its work folder name is in use here")
        }
        if let memory = plan.limits.memoryBytes {
            guard await admission.admit(key: entry.deliveryKey, bytes: UInt64(memory)) else {
                containments.release(contextName: plan.contextName)
                return await handBack(entry, epoch: epoch, reason: "runner shutting down")
            }
        }
        let sent = sendClaim(entry, fields: fields, plan: plan, owner: epoch.owner)
        let outcome = await execute(sent, epoch: epoch, processEnded: processEnded)
        containments.release(contextName: plan.contextName)
        await admission.release(key: entry.deliveryKey)
        return outcome
    }

    /// Hands an unfinished attempt back to its queue, unless its epoch ended (then it stays pending and is
    /// rescheduled, since writes of an ended epoch are refused).
    func handBack(_ entry: JobEntry, epoch: LeaseEpoch, reason: String) async -> DeliveryOutcome {
        if epoch.ended.isFired { return .abandoned }
        return await written(.handedBack) { [owner = epoch.owner] in
            try await store.handBack(entry: entry, owner: owner, reason: reason, retry: durable)
        }
    }

    /// Claim before starting anything: a duplicate entry of a job that already ended must never run. The claim goes
    /// out first; the job's folder (and cgroup) is made while its round trip is in flight, and removed again when
    /// the claim says the attempt must not run: nothing of the job runs before the claim.
    private func sendClaim(
        _ entry: JobEntry, fields: [(String, [UInt8])], plan: IsolationPlan, owner: AttemptOwner
    ) -> SentClaim {
        let received: JSONValue = [
            "queue": .string(entry.queue), "stream_id": .string(entry.streamId), "attempt": .int(entry.attempt),
            "isolation": .string(plan.level.rawValue),
        ]
        // Not when a folder of this name is there: a crashed run of this entry left it, and it is replaced only
        // once the claim lets this attempt run (a runner that keeps work folders keeps that one otherwise).
        let crashedRunLeftFolder = isolation.workspace.hasEntry(name: plan.contextName)
        let reply = store.startClaim(entry: entry, owner: owner, receivedData: received, retry: durable)
        return SentClaim(
            entry: entry, fields: fields, plan: plan, received: received, crashedRunLeftFolder: crashedRunLeftFolder,
            reply: reply)
    }

    private func execute(
        _ sent: SentClaim, epoch: LeaseEpoch, processEnded: @escaping @Sendable () async -> Void
    ) async -> DeliveryOutcome {
        let owner = epoch.owner
        let (entry, fields, plan, received) = (sent.entry, sent.fields, sent.plan, sent.received)
        let madeWhileClaiming: Result<JobContainment, IsolationError>? =
            sent.crashedRunLeftFolder ? nil : await JobContainment.attempt(plan: plan, host: isolation)
        let startedAt: String
        let attempt: Attempt
        let claim = await detached(sent: sent.reply.value) {
            try await store.claim(entry: entry, owner: owner, receivedData: received, retry: durable)
        }
        // Read once: the containment is kept exactly when the claimed branch below goes on to start the job.
        let stoppedWhileClaiming = Task.isCancelled
        let startsJob = if case .claimed? = claim { !stoppedWhileClaiming } else { false }
        if !startsJob, case .success(let unused)? = madeWhileClaiming {
            await unused.discard(logger: logger)
        }
        switch claim {
        case .claimed(let at, let fencingToken, let failures)?:
            startedAt = at
            attempt = Attempt(fencingToken: fencingToken, failuresBefore: failures)
            logger.debug(
                "job claimed",
                ["job": entry.jobId, "attempt": String(entry.attempt), "isolation": plan.level.rawValue])
            // Shutdown (or a cancel) reached this slot while the claim was written: do not start it.
            if stoppedWhileClaiming {
                if let cancel = cancellations.request(for: entry.jobId) {
                    return await cancelledBeforeStart(entry, cancel, startedAt: startedAt, owner: owner)
                }
                return await handBack(entry, epoch: epoch, reason: "runner shutting down")
            }
        case .duplicate(let state, let attempt)?:
            let ended = JobState(rawValue: state)?.isTerminal ?? false
            let what =
                ended
                ? "already ended as \(state)"
                : state == JobState.retryScheduled.rawValue
                    ? "waits for its next attempt" : "is \(state) as another entry"
            let reason = "job '\(entry.jobId)' \(what) at attempt \(attempt); this duplicate entry was not run"
            logger.warning(reason, ["stream_id": entry.streamId])
            return await reject(entry, fields: fields, reason: reason, owner: owner)
        case .idempotencyKeyTaken(let other)?:
            let reason =
                "idempotency key '\(entry.idempotencyKey ?? "")' belongs to job '\(other)'; this entry was not run"
            logger.warning(reason, ["stream_id": entry.streamId, "job": entry.jobId])
            return await reject(entry, fields: fields, reason: reason, owner: owner)
        case .leaseLost?:
            logger.info("the lease epoch ended before the job started; leaving it pending", ["job": entry.jobId])
            return .abandoned
        case .earlierEpoch?:
            return await rescheduleFromEarlierEpoch(entry, owner: owner)
        case .runningElsewhere(let other)?:
            // It stays pending here until the other runner's result acknowledges it for the whole group.
            logger.warning(
                "runner '\(other)' runs this entry already; not starting a second copy", ["job": entry.jobId])
            return .leftPending
        case .claimedByLostRunner(let other)?:
            logger.info("runner '\(other)' had started this job and is gone; rescheduling it", ["job": entry.jobId])
            return await written(.rescheduled) {
                try await store.reschedule(
                    streamId: entry.streamId, queue: entry.queue, consumer: owner.runner, reason: .leaseExpired,
                    actor: owner.runner, bound: rescheduleBound, retry: durable)
            }
        case .cancelled?:
            logger.info("the job was cancelled; not starting it", ["job": entry.jobId])
            return .finished(.cancelled)
        case nil:
            return .unrecorded
        }

        let prepared: Result<JobContainment, IsolationError>
        if let madeWhileClaiming {
            prepared = madeWhileClaiming
        } else {
            prepared = await JobContainment.attempt(plan: plan, host: isolation)
        }
        let containment: JobContainment
        switch prepared {
        case .success(let ready): containment = ready
        case .failure(let error):
            logger.warning("cannot set up the job's isolation: \(error.message)", ["job": entry.jobId])
            let record = JobResultRecord(state: .failed, reason: "cannot set up the job's isolation: \(error.message)")
            return await finish(entry, record, startedAt: startedAt, owner: owner)
        }
        let environment = jobEnvironment(for: entry, attempt: attempt, workDirectory: containment.workDirectory)
        let recorder = OutputRecorder(
            client: logClient, store: store, logger: logger, entry: entry, owner: owner,
            limit: configuration.logLimitBytes, tailLimit: configuration.outputTailBytes,
            masker: SecretMasker(
                // The fencing token is no secret, and masking its value (a small number) would garble output.
                environment: environment.filter { $0.key != JobEnvironment.fencingToken },
                secretNames: entry.spec.secretEnvironment,
                alsoMasked: configuration.redis.password.map { [$0] } ?? []))
        if plan.fellBack {
            recorder.note(
                "isolation \(plan.requested.rawValue) with network \(plan.requestedNetwork.rawValue) is not available "
                    + "here; running at \(plan.level.rawValue) with network \(plan.network.rawValue)")
        }
        if entry.attempt > 1 {
            // Attempts share the log stream: mark where this one begins.
            recorder.note("attempt \(entry.attempt) begins")
        }
        if let path = configuration.hooks.preJob,
            let ended = await preJobHookEnded(
                path: path, entry: entry, environment: environment, containment: containment, recorder: recorder,
                epoch: epoch, attempt: attempt, startedAt: startedAt)
        {
            return ended
        }
        let clock = ContinuousClock()
        let began = clock.now
        let timeout = entry.spec.timeoutMs.map { Duration.milliseconds($0) } ?? configuration.defaultJobTimeout
        let policy = TerminationPolicy(timeout: timeout, killGrace: configuration.killGrace)
        let process: RunningProcess
        do {
            let spec = processSpec(for: entry, environment: environment, containment: containment)
            // Waited for from its start (the monitor thread is not woken again to be told so).
            process = try await supervisor.spawn(spec, groups: killSwitch.processGroups, waitPolicy: policy) {
                stream, bytes in
                recorder.append(stream, bytes)
            }
        } catch let error as SpawnError where error.isSupervisorSide {
            _ = await containment.finish(logger: logger)
            // The runner's trouble (out of fds or processes, shutting down), not the job's: give it back, after a
            // pause so that a runner in trouble does not cycle through the queue.
            logger.warning("cannot start a job now: \(error.message); handing it back", ["job": entry.jobId])
            if !Task.isCancelled { try? await Task.sleep(for: .seconds(1)) }
            return await handBack(entry, epoch: epoch, reason: error.message)
        } catch let error as SpawnError {
            logger.info("job could not start: \(error.message)", ["job": entry.jobId])
            var record = JobResultRecord(
                state: .failed, exitCode: error.conventionalExitCode, reason: error.message,
                durationMs: (clock.now - began).milliseconds)
            record.accounting = await containment.finish(logger: logger)
            return await finish(entry, record, startedAt: startedAt, owner: owner)
        } catch {
            var record = JobResultRecord(state: .failed, reason: "cannot start the job: \(error)")
            record.accounting = await containment.finish(logger: logger)
            return await finish(entry, record, startedAt: startedAt, owner: owner)
        }
        killSwitch.watch(process)
        containment.started(pid: process.pid)
        logger.debug("job started", ["job": entry.jobId, "pid": String(process.pid)])
        containments.add(entry.deliveryKey, jobId: entry.jobId, containment: containment)
        // Without a cgroup to count it, peak memory is the largest sampled RSS of the job's processes. The first
        // sample waits one interval: a sample reads every process's stat, too dear for each short job, whose peak
        // the kernel's own ru_maxrss of the main process gives at its end anyway.
        let sample: (@Sendable () -> Void)? =
            containment.cgroup != nil ? nil : { @Sendable [containment] in _ = containment.sample() }
        let watch = watches.start(
            sample: sample,
            writeStarted: { [self, pid = process.pid] in await self.writeStarted(entry, pid: pid, owner: owner) })
        // The epoch may have ended between the claim and the spawn: nothing of it may run on.
        if epoch.ended.isFired { process.signalGroup(SIGKILL) }

        let cancelWatch = watchForCancel(entry, pid: process.pid, running: watch)
        let outcome = await process.wait(policy)
        // Every attempt whose process ran and ended, however it ended (cancelled, handed back, abandoned too).
        metrics?.observeJobDuration(outcome.wallTime)
        let killReported = await cancelWatch.stop()
        killSwitch.unwatch(process)
        // The pid and `job.started` land before the result: written while the job ran, or now with it.
        let startedPid: Int32? = await watch.stop() ? process.pid : nil
        containment.recordMainProcessPeak(bytes: outcome.maxResidentBytes)
        containments.remove(entry.deliveryKey)
        // In the work folder, so before the containment is finished (which removes it).
        let postHookExit =
            epoch.isOverdue
            ? nil
            : await postJobHook(
                after: outcome, timeout: timeout, entry: entry, environment: environment, containment: containment,
                recorder: recorder)
        let accounting = await containment.finish(logger: logger)
        let summary = await recorder.finish()
        // Killed because its epoch ended or was past its kill deadline (never "failed with signal 9"): the entry
        // stays pending and is rescheduled. Noted in the epoch while the slot is still held, so that the epoch's
        // end counts it however late it is handled.
        let stoppedWithEpoch =
            epoch.isOverdue && (outcome.stopReason == .cancelled || outcome.termination == .signaled(SIGKILL))
        if stoppedWithEpoch { epoch.noteStopped(entry.jobId) }
        // Nothing of the process is left: its slot can take the next job while the result is written.
        await processEnded()
        if stoppedWithEpoch {
            logger.info("job stopped: its lease epoch ended", ["job": entry.jobId])
            return .abandoned
        }
        if outcome.stopReason == .cancelled, let cancel = cancellations.request(for: entry.jobId) {
            if outcome.forcedKill, !killReported { await emitCancelPhase(.jobCancelSigkill, entry, pid: process.pid) }
            var record = JobExecutor.record(for: outcome, timeout: timeout, accounting: accounting)
            record.outputTail = summary.tail
            return await finishCancelled(
                entry, record, cancel, startedAt: startedAt, startedPid: startedPid, owner: owner)
        }
        if outcome.stopReason == .cancelled {
            logger.info("job stopped for shutdown; handing it back", ["job": entry.jobId])
            await writeStarted(entry, pid: startedPid, owner: owner)
            return await handBack(entry, epoch: epoch, reason: "runner shutting down")
        }
        var record = JobExecutor.record(for: outcome, timeout: timeout, accounting: accounting)
        record.outputTail = summary.tail
        record.postHookExitCode = postHookExit
        if record.state != .succeeded, entry.spec.maxAttempts > 1 {
            await writeStarted(entry, pid: startedPid, owner: owner)
            return await failed(entry, record, attempt: attempt, owner: owner)
        }
        return await finish(entry, record, startedAt: startedAt, startedPid: startedPid, owner: owner)
    }

    /// The `started` write: from the running job's watch, or, for a job that ended before the watch sent it, ahead
    /// of a write that does not carry it (`pid` nil: it was written already).
    private func writeStarted(_ entry: JobEntry, pid: Int32?, owner: AttemptOwner) async {
        guard let pid else { return }
        await detached { [store, durable] in
            try await store.started(entry: entry, owner: owner, pid: pid, retry: durable)
        }
    }

    /// What the claim told about the attempt.
    struct Attempt: Sendable {
        var fencingToken: String
        /// Failed attempts before this one.
        var failuresBefore: Int
    }

    /// A failed attempt of a job that may take several: the next after its backoff, or dead when none is left.
    func failed(
        _ entry: JobEntry, _ record: JobResultRecord, attempt: Attempt, owner: AttemptOwner
    ) async -> DeliveryOutcome {
        // The count comes from the job's hash, which submitters write too: Int.max there must not trap.
        let failures = attempt.failuresBefore == .max ? .max : attempt.failuresBefore + 1
        let backoff = entry.spec.backoff ?? Backoff()
        let delayMs = backoff.delayMs(afterFailures: failures, random: Double.random(in: 0..<1))
        let outcome = await detached {
            try await store.failAttempt(
                entry: entry, owner: owner, result: record, failures: failures, delayMs: delayMs, retry: durable)
        }
        switch outcome {
        case .retryScheduled?:
            logger.info(
                "attempt \(entry.attempt) \(record.state.rawValue) (failure \(failures) of \(entry.spec.maxAttempts)); "
                    + "the next in \(delayMs) ms", ["job": entry.jobId])
            return .retried(delay: .milliseconds(delayMs))
        case .dead?:
            logger.info("job is dead: \(failures) failed attempts", ["job": entry.jobId])
            return .dead
        case .alreadyDone?: return .finished(record.state)
        case .refused?: return .stale
        case nil: return .unrecorded
        }
    }

    func reject(
        _ entry: JobEntry, fields: [(String, [UInt8])], reason: String, owner: AttemptOwner
    ) async -> DeliveryOutcome {
        await written(.rejected) {
            try await store.reject(
                streamId: entry.streamId, queue: entry.queue, fields: fields, reason: reason, owner: owner,
                retry: durable)
        }
    }

    /// An entry an earlier epoch of this runner claimed (before a crash or a lost lease): it may have run, so it is
    /// rescheduled with its attempt raised, never run again under the same attempt.
    private func rescheduleFromEarlierEpoch(_ entry: JobEntry, owner: AttemptOwner) async -> DeliveryOutcome {
        logger.info("an earlier run of this runner started this job; rescheduling it", ["job": entry.jobId])
        return await written(.rescheduled) {
            try await store.reschedule(
                streamId: entry.streamId, queue: entry.queue, consumer: owner.runner, reason: .leaseLost,
                actor: owner.runner, bound: rescheduleBound, retry: durable)
        }
    }

    /// Records a terminal result; `startedPid`: the job's `started` write was not sent, `job.started` goes with it.
    func finish(
        _ entry: JobEntry, _ record: JobResultRecord, startedAt: String, startedPid: Int32? = nil, owner: AttemptOwner
    ) async -> DeliveryOutcome {
        let completion = await detached {
            try await store.complete(
                entry: entry, owner: owner, result: record, startedAtMs: startedAt, startedPid: startedPid,
                retry: durable)
        }
        logger.debug(
            "job \(record.state.rawValue)",
            [
                "job": entry.jobId, "attempt": String(entry.attempt),
                "exit_code": record.exitCode.map(String.init) ?? "",
                "reason": record.reason ?? "",
            ])
        switch completion {
        case .refused?:
            logger.warning(
                "result refused: the job belongs to another attempt or lease epoch now (job.stale_result)",
                ["job": entry.jobId, "attempt": String(entry.attempt)])
            return .stale
        case nil: return .unrecorded
        default: return .finished(record.state)
        }
    }

    /// Result fields for how the process ended.
    static func record(
        for outcome: ProcessOutcome, timeout: Duration?, accounting: JobAccounting? = nil
    ) -> JobResultRecord {
        var record = JobResultRecord(
            state: .failed, durationMs: outcome.wallTime.milliseconds, forcedKill: outcome.forcedKill, pid: outcome.pid,
            cpuUserMs: outcome.userCPUTime.milliseconds, cpuSystemMs: outcome.systemCPUTime.milliseconds)
        record.accounting = accounting
        // The cgroup counts the whole tree, also processes nobody waited for.
        if let user = accounting?.cgroupUserCPU { record.cpuUserMs = user.milliseconds }
        if let system = accounting?.cgroupSystemCPU { record.cpuSystemMs = system.milliseconds }
        switch outcome.termination {
        case .exited(let code): record.exitCode = code
        case .signaled(let signal): record.signal = signal
        }
        if outcome.stopReason == .timeout {
            record.state = .timedOut
            let limit = timeout.map { "\($0.milliseconds) ms" } ?? "its timeout"
            record.reason =
                outcome.forcedKill
                ? "timed out after \(limit); killed with SIGKILL after the grace period"
                : "timed out after \(limit); stopped with SIGTERM"
            return record
        }
        switch outcome.termination {
        case .exited(0): record.state = .succeeded
        case .exited(let code): record.reason = "exited with code \(code)"
        case .signaled(let signal): record.reason = "killed by signal \(signal) (\(signalName(signal)))"
        }
        // The kernel's own counter, not the signal, says whether it was the OOM killer: a job that SIGKILLs itself is
        // just signal 9.
        if record.state != .succeeded, let accounting, accounting.oomKills > 0 {
            record.reason = JobExecutor.oomKilledReason
        }
        return record
    }

    /// The reason of a job the OOM killer ended; the limit and the peak are in `limits` and `peak_memory_bytes`.
    static let oomKilledReason = "oom_killed"
    static let memorySampleInterval = Duration.milliseconds(250)

    /// A job's environment: never the runner's (so the Redis URL and password cannot leak), only a safe base with
    /// its work folder as `HOME` and `TMPDIR`, what the runner's allowlist names, the job's own `env`, and the
    /// runner's `NR_*` variables.
    func jobEnvironment(for entry: JobEntry, attempt: Attempt, workDirectory: String) -> [String: String] {
        var environment: [String: String] = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": workDirectory,
            "LANG": "C.UTF-8",
            "TMPDIR": workDirectory + "/tmp",
        ]
        // getenv per name: building the whole environment as a dictionary for each job costs more than the job.
        for name in configuration.isolation.environmentAllowlist {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        for (key, value) in entry.spec.environment { environment[key] = value }
        environment[JobEnvironment.jobId] = entry.jobId
        environment[JobEnvironment.attempt] = String(entry.attempt)
        environment[JobEnvironment.runner] = configuration.name
        environment[JobEnvironment.fencingToken] = attempt.fencingToken
        environment[JobEnvironment.namespace] = configuration.keyspace.namespace
        environment[JobEnvironment.pool] = poolIdentity(configuration.redis)
        environment[JobEnvironment.workDirectory] = workDirectory
        return environment
    }

    /// The job's process: its own argv or `/bin/sh -c`, its environment, its cwd (its work folder by default), and
    /// its isolation.
    func processSpec(for entry: JobEntry, environment: [String: String], containment: JobContainment) -> ProcessSpec {
        let argv: [String]
        switch entry.spec.command {
        case .argv(let arguments): argv = arguments
        case .shell(let script): argv = ["/bin/sh", "-c", script]
        }
        return ProcessSpec(
            executable: argv[0], arguments: argv, environment: environment,
            workingDirectory: JobExecutor.workingDirectory(entry.spec.workingDirectory, in: containment.workDirectory),
            dieWithParent: true,
            isolation: containment.processIsolation(hostname: JobExecutor.hostname(for: entry.jobId)),
            treeMarker: EnvironmentMarker(name: JobEnvironment.jobId, value: entry.jobId))
    }

    /// The job's working directory: its work folder, or the spec's `cwd`, a relative one taken relative to the work
    /// folder (the same path inside a mount namespace: the job keeps the host's root). `.` components are dropped.
    static func workingDirectory(_ cwd: String?, in workFolder: String) -> String {
        guard let cwd else { return workFolder }
        if cwd.hasPrefix("/") { return cwd }
        let parts = cwd.split(separator: "/").filter { $0 != "." }
        return parts.isEmpty ? workFolder : workFolder + "/" + parts.joined(separator: "/")
    }

    /// A job id as a hostname: letters, digits and '-', at most 63 bytes.
    static func hostname(for jobId: String) -> String {
        let label = String(
            jobId.unicodeScalars.prefix(63).map { scalar -> Character in
                let c = Character(scalar)
                return c.isASCII && (c.isLetter || c.isNumber) ? c : "-"
            })
        return label.isEmpty ? "job" : label
    }

    /// Runs a durable write and answers `outcome`, or `.unrecorded` when the write was given up.
    private func written(
        _ outcome: DeliveryOutcome, _ write: @escaping @Sendable () async throws -> some Sendable
    ) async -> DeliveryOutcome {
        await detached(write) == nil ? .unrecorded : outcome
    }

    /// Runs a durable write outside the caller's cancellation (a job stopped for shutdown still gets recorded),
    /// until it lands; nil only when it was given up (the Redis client was closed at shutdown) or is refused for good.
    /// `sent`: the first try, already in flight (`RedisClient.start`), collected here instead of sending another.
    @discardableResult
    func detached<T: Sendable>(
        sent: (() async throws -> T)? = nil, _ write: @escaping @Sendable () async throws -> T
    ) async -> T? {
        // Nearly every write lands at the first try, sent from this task: no task of its own, no extra wake-ups.
        // One that fails, or is cut short by this task's cancellation, is sent again (every job script is
        // idempotent) by a task of its own that retries until it lands. A try in flight already is collected
        // whatever this task's state: it was sent.
        if let sent {
            if let value = try? await sent() { return value }
        } else if !Task.isCancelled, let value = try? await write() {
            return value
        }
        let logger = self.logger
        return await Task { await DurableWrite.perform(logger: logger, untilAccepted: true, write) }.value
    }
}

/// The conventional name of a signal number.
func signalName(_ signal: Int32) -> String {
    let names: [Int32: String] = [
        SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGABRT: "SIGABRT",
        SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV", SIGPIPE: "SIGPIPE",
        SIGALRM: "SIGALRM", SIGTERM: "SIGTERM", SIGUSR1: "SIGUSR1", SIGUSR2: "SIGUSR2", SIGXCPU: "SIGXCPU",
        SIGXFSZ: "SIGXFSZ",
    ]
    return names[signal] ?? "signal \(signal)"
}
