/// Field names of a job entry on `{nr}:jobs:<queue>`.
public enum JobEntryField {
    /// The job id (required).
    public static let id = "id"
    /// The job spec as JSON (required).
    public static let spec = "spec"
    /// The attempt this entry starts (optional, 1 when absent).
    public static let attempt = "attempt"
    /// Optional: a key that makes a second submission of the same work a duplicate (see `{nr}:idempotency:<key>`).
    public static let idempotencyKey = "idempotency_key"
    public static let all = [id, spec, attempt, idempotencyKey, ProtocolVersion.field]
}

/// Field names of an entry on `{nr}:events`.
public enum EventField {
    public static let type = "type"
    /// Milliseconds since the Unix epoch, taken from Redis's clock (`TIME`) where the runner writes it in a script.
    public static let timestamp = "ts"
    public static let runner = "runner"
    public static let job = "job"
    /// A JSON object specific to the event type.
    public static let data = "data"
    public static let all = [type, timestamp, runner, job, data, ProtocolVersion.field]
}

/// Field names of an entry on `{nr}:heartbeats`.
public enum HeartbeatField {
    public static let runner = "runner"
    public static let state = "state"
    public static let capacityTotal = "capacity_total"
    public static let capacityFree = "capacity_free"
    /// JSON array of the ids of the running jobs.
    public static let running = "running"
    public static let timestamp = "ts"
    /// Memory declared by the running jobs (resource admission), bytes.
    public static let memoryReserved = "memory_reserved_bytes"
    /// Jobs delivered to the runner that wait for memory before they start.
    public static let waitingForResources = "waiting_for_resources"
    /// The runner's labels, a JSON object of strings (`--label`).
    public static let labels = "labels"
    public static let all = [
        runner, state, capacityTotal, capacityFree, running, timestamp, memoryReserved, waitingForResources,
        ProtocolVersion.field, labels,
    ]
}

/// Field names of a job's result hash `{nr}:job:<id>`.
public enum ResultField {
    public static let state = "state"
    public static let exitCode = "exit_code"
    public static let signal = "signal"
    public static let attempt = "attempt"
    public static let runner = "runner"
    public static let queue = "queue"
    public static let submittedAt = "submitted_at"
    public static let startedAt = "started_at"
    public static let finishedAt = "finished_at"
    public static let durationMs = "duration_ms"
    public static let outputTail = "output_tail"
    public static let reason = "reason"
    /// `1` when a timed-out job had to be killed with SIGKILL after the grace period.
    public static let forcedKill = "forced_kill"
    public static let pid = "pid"
    public static let cpuUserMs = "cpu_user_ms"
    public static let cpuSystemMs = "cpu_system_ms"
    /// The job spec JSON as submitted.
    public static let spec = "spec"
    /// The stream entry id the current attempt was read from.
    public static let streamId = "stream_id"
    /// The entry a queued job was moved from by a hand-back, retry or reschedule.
    public static let requeuedFrom = "requeued_from"
    /// The lease token (epoch) of the runner that claimed the current attempt: its writes are fenced on it.
    public static let leaseToken = "lease_token"
    /// The current attempt's fencing token, from `INCR {nr}:fencing`: increases with every claimed attempt.
    public static let fencingToken = "fencing_token"
    /// Failed (or timed-out) attempts so far; `max_attempts` bounds these, not executions.
    public static let failures = "failures"
    /// Times the job was rescheduled because the runner running it was lost.
    public static let reschedules = "reschedules"
    /// While `retry_scheduled`: when the next attempt is due, milliseconds since the epoch (Redis's clock).
    public static let retryAt = "retry_at"
    /// The idempotency key the job was submitted with.
    public static let idempotencyKey = "idempotency_key"
    /// The isolation level the attempt ran at.
    public static let isolation = "isolation"
    /// The network the attempt had: `host` or `none`.
    public static let network = "network"
    /// The level the job asked for, when the runner gave less than asked (`--isolation-fallback`).
    public static let isolationRequested = "isolation_requested"
    /// Peak memory: the cgroup's own peak, else the largest sampled RSS of the job's processes.
    public static let peakMemoryBytes = "peak_memory_bytes"
    /// How the peak was measured: `cgroup` or `sampled`.
    public static let peakMemorySource = "peak_memory_source"
    /// Processes of the job at the most (from the cgroup where it knows).
    public static let processes = "processes"
    /// The limits in force, a JSON object with the spec's `limits` names.
    public static let limits = "limits"
    /// When `runner cancel` asked for a running job to be stopped (ms, Redis's clock); a runner that finds it on
    /// claim cancels the job instead of running it.
    public static let cancelRequestedAt = "cancel_requested_at"
    /// The post-job hook's exit code (`--hook-post-job`), empty when it was killed or could not start.
    public static let postHookExitCode = "post_hook_exit_code"
    /// On a job `dead` after failed attempts: the state its last attempt ended in (`failed` or `timed_out`).
    public static let lastState = "last_state"
    public static let all = [
        state, exitCode, signal, attempt, runner, queue, submittedAt, startedAt, finishedAt, durationMs, outputTail,
        reason, forcedKill, pid, cpuUserMs, cpuSystemMs, spec, streamId, requeuedFrom, leaseToken, fencingToken,
        failures, reschedules, retryAt, idempotencyKey, isolation, network, isolationRequested, peakMemoryBytes,
        peakMemorySource, processes, limits, ProtocolVersion.field, postHookExitCode, cancelRequestedAt, lastState,
    ]
}

/// Field names of an entry on `{nr}:log:<id>`.
public enum LogField {
    /// `stdout`, `stderr`, or `meta` for the runner's own markers.
    public static let stream = "fd"
    /// The raw bytes, exactly as the job wrote them (Redis strings are binary safe).
    public static let data = "data"
    public static let all = [stream, data, ProtocolVersion.field]

    /// Values of the `fd` field.
    public static let stdout = "stdout"
    public static let stderr = "stderr"
    public static let meta = "meta"
}

/// Extra field names of an entry on `{nr}:dead` (which also carries the original job entry's fields).
public enum DeadLetterField {
    public static let reason = "reason"
    /// Which stream and entry id the dead letter came from.
    public static let source = "source"
    public static let sourceId = "source_id"
    public static let all = [reason, source, sourceId]
}

/// Fields of a runner's record in `{nr}:runners` (a JSON object per runner).
public enum RunnerRecordField {
    public static let node = "node"
    public static let pid = "pid"
    public static let version = "version"
    public static let queues = "queues"
    public static let capacity = "capacity"
    public static let state = "state"
    public static let startedAt = "started_at"
    public static let capacityFree = "capacity_free"
    /// JSON array of the ids of the running jobs.
    public static let running = "running"
    /// The runner's clock at its last heartbeat, milliseconds since the epoch.
    public static let heartbeatAt = "heartbeat_at"
    /// The number of the runner's current lease epoch (from `INCR {nr}:fencing` when it took the lease).
    public static let epoch = "epoch"
    /// When a reaper found the runner's lease gone (state `lost`), milliseconds since the epoch (Redis's clock).
    public static let lostAt = "lost_at"
    public static let memoryReserved = HeartbeatField.memoryReserved
    public static let waitingForResources = HeartbeatField.waitingForResources
    /// The runner's labels, a JSON object of strings (`--label`).
    public static let labels = HeartbeatField.labels
    /// Jobs this runner id brought to an end, over all its runs (kept across `--resume-identity`).
    public static let jobsFinished = "jobs_finished"
    /// While `migrating`: the node it moves to.
    public static let migrateTo = "migrate_to"
    /// While `migrating`: until when (ms, Redis's clock) a runner may resume its identity before it is `migrated`.
    public static let migrateDeadline = "migrate_deadline"
    /// When a reaper marked it `migrated` (ms, Redis's clock).
    public static let migratedAt = "migrated_at"
    /// The registry fields a runner started with `--resume-identity` copies from the record it takes over.
    public static let carriedOnTakeover = [jobsFinished, labels]
    public static let all = [
        node, pid, version, queues, capacity, state, startedAt, capacityFree, running, heartbeatAt, epoch, lostAt,
        memoryReserved, waitingForResources, ProtocolVersion.field, labels, jobsFinished, migrateTo, migrateDeadline,
        migratedAt,
    ]
}

/// Variables the runner sets in every job's environment.
public enum JobEnvironment {
    public static let jobId = "NR_JOB_ID"
    public static let attempt = "NR_ATTEMPT"
    /// The runner's id; also how a restarted runner recognises processes a crashed run of it left behind.
    public static let runner = "NR_RUNNER"
    /// The attempt's fencing token (`fencing_token`): larger for every later attempt of any job, so a job writing
    /// to a store of its own can refuse a write from an attempt older than one it has seen.
    public static let fencingToken = "NR_FENCING_TOKEN"
    /// The job's private work folder (also its default working directory and `HOME`).
    public static let workDirectory = "NR_WORK_DIR"
    /// The runner's namespace: with `NR_RUNNER`, what a restarted runner matches leftovers by.
    public static let namespace = "NR_NAMESPACE"
    /// Which Redis the runner's pool is on, as a hash (never the address itself): with `NR_RUNNER` and
    /// `NR_NAMESPACE`, a restarted runner kills only what a run of it in the same pool left.
    public static let pool = "NR_POOL"
    /// For the post-job hook only: the job's state (`succeeded`, `failed`, `timed_out`).
    public static let jobState = "NR_JOB_STATE"
    /// For the post-job hook only: the job's exit code, empty when it was killed by a signal or never started.
    public static let exitCode = "NR_EXIT_CODE"
    public static let all = [jobId, attempt, runner, fencingToken, workDirectory, namespace, pool, jobState, exitCode]
}

/// Field names of an entry on a control stream (`{nr}:control:<id>`, `{nr}:control`).
public enum ControlField {
    /// `drain`, `resume`, `shutdown`, `cancel` or `migrate` (see `ControlCommandName`).
    public static let command = "command"
    /// `cancel`: the job to stop.
    public static let job = "job"
    /// `migrate`: the node the runner moves to.
    public static let toNode = "to_node"
    /// `migrate`: how long (ms) another runner may take over the id before the registry says `migrated`.
    public static let takeoverTimeoutMs = "takeover_timeout_ms"
    /// `shutdown`: `1` to stop running jobs at once (like a second signal), else graceful.
    public static let now = "now"
    /// Who sent it, in words (`cli@host`); copied into the outcome event.
    public static let sentBy = "sent_by"
    public static let all = [command, job, toNode, takeoverTimeoutMs, now, sentBy, ProtocolVersion.field]
}
