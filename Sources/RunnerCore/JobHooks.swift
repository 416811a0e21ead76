import ProcessSupervision
import RunnerProtocol

/// Executables a runner runs around each job (`--hook-pre-job`, `--hook-post-job`), with the job's environment,
/// in its work folder, as its user, in a process group of their own, stopped with their tree after `timeout`.
public struct JobHooksConfiguration: Sendable, Equatable {
    /// Run before the job; when it fails (non-zero, timeout, cannot start) the attempt fails and the job never runs.
    public var preJob: String?
    /// Run after the job with `NR_JOB_STATE` and `NR_EXIT_CODE`; its exit code is recorded, the job's state stays.
    public var postJob: String?
    /// How long a hook may run before it is stopped (SIGTERM, the kill grace, SIGKILL to its group).
    public var timeout: Duration

    public init(preJob: String? = nil, postJob: String? = nil, timeout: Duration = .seconds(60)) {
        self.preJob = preJob
        self.postJob = postJob
        self.timeout = timeout
    }
}

/// Which hook.
enum JobHookKind: String, Sendable {
    case preJob = "pre-job"
    case postJob = "post-job"
}

/// How a hook ended.
enum JobHookOutcome: Sendable, Equatable {
    /// It exited 0.
    case passed
    /// It exited non-zero, was killed, timed out or could not start: why, in words, and its exit code if it exited.
    case failed(reason: String, exitCode: Int32?)
    /// Stopped because the runner shuts down (the waiting task was cancelled).
    case stopped
}

extension JobExecutor {
    /// Runs a hook for an attempt: the job's environment (plus `extra`), its work folder, its isolation and user, a
    /// process group of its own, watched by the kill switch, stopped with its tree after the hook timeout. Its output
    /// goes to the job's log between `meta` lines.
    func runHook(
        _ kind: JobHookKind, path: String, entry: JobEntry, environment: [String: String],
        extra: [String: String] = [:], containment: JobContainment, recorder: OutputRecorder
    ) async -> JobHookOutcome {
        let timeout = configuration.hooks.timeout
        recorder.note("\(kind.rawValue) hook \(path) begins")
        let spec = ProcessSpec(
            executable: path, arguments: [path], environment: environment.merging(extra) { _, given in given },
            workingDirectory: containment.workDirectory, dieWithParent: true,
            isolation: containment.processIsolation(hostname: JobExecutor.hostname(for: entry.jobId)),
            treeMarker: EnvironmentMarker(name: JobEnvironment.jobId, value: entry.jobId))
        let process: RunningProcess
        do {
            process = try await supervisor.spawn(spec, groups: killSwitch.processGroups) { stream, bytes in
                recorder.append(stream, bytes)
            }
        } catch {
            let reason = "\(kind.rawValue) hook could not start: \((error as? SpawnError)?.message ?? "\(error)")"
            recorder.note(reason)
            return .failed(reason: reason, exitCode: nil)
        }
        killSwitch.watch(process)
        let outcome = await process.wait(TerminationPolicy(timeout: timeout, killGrace: configuration.killGrace))
        killSwitch.unwatch(process)
        let result: JobHookOutcome
        switch (outcome.stopReason, outcome.termination) {
        case (.cancelled?, _): result = .stopped
        case (.timeout?, _):
            result = .failed(reason: "\(kind.rawValue) hook timed out after \(DurationText(timeout))", exitCode: nil)
        case (nil, .exited(0)): result = .passed
        case (nil, .exited(let code)): result = .failed(reason: "\(kind.rawValue) hook exited \(code)", exitCode: code)
        case (nil, .signaled(let signal)):
            result = .failed(
                reason: "\(kind.rawValue) hook killed by signal \(signal) (\(signalName(signal)))", exitCode: nil)
        }
        switch result {
        case .passed: recorder.note("\(kind.rawValue) hook exited 0")
        case .failed(let reason, _):
            recorder.note(reason)
            logger.warning(reason, ["job": entry.jobId, "hook": path])
        case .stopped:
            // Stopped by a cancel of the job (its task is cancelled for it too) or by the runner's shutdown.
            let cancelled = cancellations.request(for: entry.jobId) != nil
            let why = cancelled ? "the job was cancelled" : "the runner is shutting down"
            recorder.note("\(kind.rawValue) hook stopped: \(why)")
        }
        return result
    }

    /// The post-job hook after the job's process ended (not for an attempt handed back or abandoned): its exit code
    /// for the result, `.some(nil)` when it did not exit, nil when there is no hook to run.
    func postJobHook(
        after outcome: ProcessOutcome, timeout: Duration?, entry: JobEntry, environment: [String: String],
        containment: JobContainment, recorder: OutputRecorder
    ) async -> Int32?? {
        guard let path = configuration.hooks.postJob, outcome.stopReason != .cancelled else { return nil }
        let provisional = JobExecutor.record(for: outcome, timeout: timeout)
        let result = await runHook(
            .postJob, path: path, entry: entry, environment: environment,
            extra: [
                JobEnvironment.jobState: provisional.state.rawValue,
                JobEnvironment.exitCode: provisional.exitCode.map { String($0) } ?? "",
            ], containment: containment, recorder: recorder)
        switch result {
        case .passed: return .some(0)
        case .failed(_, let code): return .some(code)
        case .stopped: return .some(nil)
        }
    }
}

/// A duration as the CLI writes it: `60s`, `500ms`.
struct DurationText: CustomStringConvertible {
    let duration: Duration
    init(_ duration: Duration) { self.duration = duration }
    var description: String {
        let ms = duration.milliseconds
        return ms % 1000 == 0 ? "\(ms / 1000)s" : "\(ms)ms"
    }
}

extension JobExecutor {
    /// Runs the pre-job hook; nil when it passed and the job may start. Otherwise the attempt's end: failed with the
    /// hook's reason (retried as any failed attempt), handed back when the runner shuts down, abandoned when the
    /// lease epoch ended meanwhile.
    func preJobHookEnded(
        path: String, entry: JobEntry, environment: [String: String], containment: JobContainment,
        recorder: OutputRecorder, epoch: LeaseEpoch, attempt: Attempt, startedAt: String
    ) async -> DeliveryOutcome? {
        let clock = ContinuousClock()
        let began = clock.now
        let hook = await runHook(
            .preJob, path: path, entry: entry, environment: environment, containment: containment, recorder: recorder)
        // A lease epoch that ended during the hook leaves nothing of the attempt to start.
        if hook == .passed, !epoch.ended.isFired { return nil }
        let summary = await recorder.finish()
        let accounting = await containment.finish(logger: logger)
        if epoch.ended.isFired { return .abandoned }
        guard case .failed(let reason, _) = hook else {
            // Stopped for a cancel: the job ends cancelled here, not handed back to be cancelled at its next claim.
            if let cancel = cancellations.request(for: entry.jobId) {
                var record = JobResultRecord(state: .cancelled, durationMs: (clock.now - began).milliseconds)
                record.outputTail = summary.tail
                record.accounting = accounting
                return await finishCancelled(entry, record, cancel, startedAt: startedAt, owner: epoch.owner)
            }
            return await handBack(entry, epoch: epoch, reason: "runner shutting down")
        }
        var record = JobResultRecord(state: .failed, reason: reason, durationMs: (clock.now - began).milliseconds)
        record.outputTail = summary.tail
        record.accounting = accounting
        if entry.spec.maxAttempts > 1 {
            return await failed(entry, record, attempt: attempt, owner: epoch.owner)
        }
        return await finish(entry, record, startedAt: startedAt, owner: epoch.owner)
    }
}
