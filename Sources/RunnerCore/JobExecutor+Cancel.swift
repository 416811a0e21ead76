import Foundation
import RedisClient
import RunnerProtocol
import Synchronization

/// How a running job is cancelled: the same teardown as a timeout (SIGTERM to the tree, kill grace, SIGKILL), with
/// an event for each phase so that a stuck cancel can be seen, and a `cancelled` result that is never retried.
extension JobExecutor {
    /// Watches for a cancel of this job: when one is recorded, says SIGTERM went out (the job's task is cancelled
    /// right after the request is recorded, and the teardown sends it at once) and, if the job outlives the kill
    /// grace, that SIGKILL did. `CancelPhaseWatch.stop()` when the process is gone; it answers whether the SIGKILL
    /// was reported.
    func watchForCancel(_ entry: JobEntry, pid: Int32, running: RunningJobWatch) -> CancelPhaseWatch {
        let watch = CancelPhaseWatch()
        cancellations.onRequest(jobId: entry.jobId) { [self] in
            watch.start {
                Task {
                    // The phases name the pid: `job.started` first.
                    await running.writeStartedNow()
                    await emitCancelPhase(.jobCancelSigterm, entry, pid: pid)
                    try? await Task.sleep(for: configuration.killGrace)
                    if Task.isCancelled { return false }
                    await emitCancelPhase(.jobCancelSigkill, entry, pid: pid)
                    return true
                }
            }
        }
        return watch
    }

    func emitCancelPhase(_ type: EventType, _ entry: JobEntry, pid: Int32) async {
        var data: [String: JSONValue] = [
            "attempt": .int(entry.attempt), "pid": .int(Int(pid)),
            "kill_grace_ms": .int(configuration.killGrace.milliseconds),
        ]
        if let request = cancellations.request(for: entry.jobId) { data["command_id"] = .string(request.commandId) }
        // Shielded from the watch's cancellation: a phase that happened is reported even when the job ends now.
        await Task { [store, configuration, logger] in
            do {
                try await store.emit(
                    type, runner: configuration.name, job: entry.jobId, data: .object(data),
                    retry: .idempotent(deadline: .now + .seconds(10)))
            } catch {
                logger.warning("could not emit \(type.rawValue): \(error)", ["job": entry.jobId])
            }
        }.value
    }

    /// A cancel that reached the job between its claim and its start: recorded `cancelled` without a process.
    func cancelledBeforeStart(
        _ entry: JobEntry, _ request: JobCancellations.Request, startedAt: String, owner: AttemptOwner
    ) async -> DeliveryOutcome {
        let record = JobResultRecord(state: .cancelled)
        return await finishCancelled(entry, record, request, startedAt: startedAt, owner: owner)
    }

    /// Writes the `cancelled` result (fenced like every result; never a retry, never a dead letter).
    func finishCancelled(
        _ entry: JobEntry, _ record: JobResultRecord, _ request: JobCancellations.Request, startedAt: String,
        startedPid: Int32? = nil, owner: AttemptOwner
    ) async -> DeliveryOutcome {
        var record = record
        record.state = .cancelled
        record.reason = "cancelled by \(request.sentBy) (command \(request.commandId))"
        logger.info("job cancelled", ["job": entry.jobId, "forced_kill": record.forcedKill ? "1" : "0"])
        defer { cancellations.remove(jobId: entry.jobId) }
        return await finish(entry, record, startedAt: startedAt, startedPid: startedPid, owner: owner)
    }
}

/// The task that reports a cancelled job's teardown phases; it exists only once a cancel came.
final class CancelPhaseWatch: Sendable {
    private let state = Mutex<(task: Task<Bool, Never>?, stopped: Bool)>((nil, false))

    /// Starts the reporting task, unless the watch was stopped (the job ended first).
    func start(_ makeTask: () -> Task<Bool, Never>) {
        state.withLock { state in
            guard !state.stopped, state.task == nil else { return }
            state.task = makeTask()
        }
    }

    /// Ends the watch; true when the SIGKILL phase was reported.
    func stop() async -> Bool {
        let task = state.withLock { state -> Task<Bool, Never>? in
            state.stopped = true
            return state.task
        }
        guard let task else { return false }
        task.cancel()
        return await task.value
    }
}
