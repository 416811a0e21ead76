import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner drain|resume|shutdown|migrate RUNNER` and `runner cancel JOB`: commands on the control streams.
enum PoolCommands {
    static let waitOptions = [
        OptionSpec(
            "--wait", .flag,
            help: "Wait for the runner's answer (runner.command: accepted, ignored or rejected) and print it; "
                + "it does not wait for a drain or shutdown to finish."),
        OptionSpec("--wait-timeout", .value("DURATION"), help: "How long --wait waits.", default: "30s"),
    ]
    static let allOption = OptionSpec(
        "--all", .flag,
        help: "Send it to every runner (the pool-wide stream {nr}:control) instead of one; to none running, nothing "
            + "is sent (a warning on stderr, exit 0).")

    static func runnerSpec(
        _ name: String, abstract: String, usage: String, extra: [OptionSpec] = [], discussion: String
    )
        -> CommandSpec
    {
        CommandSpec(
            name: name, abstract: abstract, usage: usage, arguments: [("RUNNER", "The runner id.")],
            options: CommonOptions.all + extra + waitOptions, maximumPositionals: 1, discussion: discussion)
    }

    static let drain = runnerSpec(
        "drain", abstract: "Stop a runner's intake; running jobs finish; it stays registered as drained.",
        usage: "runner drain RUNNER [--wait [--wait-timeout D]] | --all", extra: [allOption],
        discussion: "Prints the command id (the control stream entry id). 'runner resume' reopens the intake.")
    static let resume = runnerSpec(
        "resume", abstract: "Reopen the intake of a drained runner.",
        usage: "runner resume RUNNER [--wait [--wait-timeout D]] | --all", extra: [allOption],
        discussion: "Prints the command id. A runner that is not drained answers 'ignored'.")
    static let shutdown = runnerSpec(
        "shutdown", abstract: "Shut a runner down as SIGTERM does (--now: as a second signal does).",
        usage: "runner shutdown RUNNER [--now] [--wait [--wait-timeout D]] | --all [--now]",
        extra: [allOption, OptionSpec("--now", .flag, help: "Stop running jobs at once and hand them back.")],
        discussion: "Prints the command id. The runner exits 0 after runner.shutdown.")
    static let migrate = runnerSpec(
        "migrate", abstract: "Move a runner to another node: it drains, hands back, releases its lease.",
        usage: "runner migrate RUNNER --to NODE [--takeover-timeout 10m] [--wait [--wait-timeout D]]",
        extra: [
            OptionSpec("--to", .value("NODE"), help: "The node it moves to (required)."),
            OptionSpec(
                "--takeover-timeout", .value("DURATION"),
                help: "How long a runner started with --resume-identity may take the id over.", default: "10m"),
        ],
        discussion: """
            Prints the command id. Start 'runner --resume-identity RUNNER --node NODE' on the target node once the
            registry shows the runner 'migrating'; if nobody does within --takeover-timeout, a reaper marks it
            'migrated'.
            """)
    static let cancel = CommandSpec(
        name: "cancel", abstract: "Cancel a job: a queued one never starts, a running one is stopped.",
        usage: "runner cancel JOB [--wait [--wait-timeout D]]", arguments: [("JOB", "The job id.")],
        options: CommonOptions.all + [
            OptionSpec("--wait", .flag, help: "Wait until the job has ended and print its state."),
            OptionSpec("--wait-timeout", .value("DURATION"), help: "How long --wait waits.", default: "30s"),
        ], maximumPositionals: 1,
        discussion: """
            A job not started yet is cancelled at once ('cancelled JOB (it was queued)', or 'retry_scheduled' for one
            waiting for its retry). For a running job a cancel command goes to its runner ('cancel requested for job
            JOB (running on RUNNER); command ID'); the runner stops it (SIGTERM, kill grace, SIGKILL) and records
            state cancelled. If that runner is dead, the reaper that finds it lost (a worker's, or runner control)
            records the job cancelled instead of rescheduling it. With --wait, the job's final state follows on a
            line of its own. A job that has ended is an error (exit 1).
            """)

    static var sender: String { "cli@\(CommonOptions.hostName)" }

    static func runDrain(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        try await send(.drain, arguments, console)
    }

    static func runResume(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        try await send(.resume, arguments, console)
    }

    static func runShutdown(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        try await send(.shutdown(now: arguments.flag("--now")), arguments, console)
    }

    static func runMigrate(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        guard let node = arguments.value("--to") else {
            throw UsageError("missing '--to NODE'", command: arguments.command.name)
        }
        guard Keyspace.isValidNodeName(node) else {
            throw UsageError(
                "invalid value for '--to': '\(UsageError.excerpt(node))' ("
                    + UsageError.nameReason(
                        node, limit: Keyspace.maximumNodeNameLength,
                        rules: "a node name, no spaces or control characters") + ")", command: "migrate")
        }
        let timeout = try arguments.duration("--takeover-timeout") ?? .seconds(600)
        guard timeout.milliseconds > 0 else {
            throw UsageError("invalid value for '--takeover-timeout': it must be longer than 0", command: "migrate")
        }
        return try await send(.migrate(toNode: node, takeoverTimeoutMs: timeout.milliseconds), arguments, console)
    }

    /// Sends a runner command and prints its id; with --wait, the outcome (exit 1 when rejected or none came).
    static func send(_ command: RunnerProtocol.ControlCommand, _ arguments: ParsedArguments, _ console: Console)
        async throws -> Int32
    {
        let name = arguments.command.name
        let all = arguments.flag("--all")
        let runner = arguments.positionals.first
        if all, runner != nil { throw UsageError("give either RUNNER or '--all', not both", command: name) }
        if all, arguments.flag("--wait") {
            throw UsageError("'--wait' waits for one runner's outcome; it cannot be used with '--all'", command: name)
        }
        guard all || runner != nil else { throw UsageError("missing runner id", command: name) }
        if let runner, !Keyspace.isValidName(runner) {
            throw UsageError(
                "invalid runner id '\(UsageError.excerpt(runner))' ("
                    + UsageError.nameReason(runner, rules: "no braces, colons, spaces or control characters") + ")",
                command: name)
        }
        let timeout = try arguments.waitTimeout() ?? .seconds(30)
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        if let runner { try await requireLive(runner, pool) }
        // The pool-wide stream reaches the runners running now (one started later does not read what came before
        // it): say how many, so that an empty registry (or a mistyped --namespace) is not mistaken for a pool that
        // acted. To none, nothing is sent: a warning, exit 0 (an empty pool has nothing to drain or stop).
        var live = 0
        if all {
            let status = try await pool.status()
            // A registry of another type lists no runner, which is no empty pool: refused as `drain RUNNER` is.
            if let registry = WrongTypeKey.registry(in: status.wrongTypeKeys, of: pool.keyspace) {
                throw registry.error
            }
            live = status.runners.filter { $0.leaseRemainingMs != nil }.count
        }
        if all, live == 0 {
            console.error(
                "runner: warning: no runner is running in namespace '\(pool.keyspace.namespace)'; nothing was sent")
            return 0
        }
        let position = try await pool.eventsPosition()
        let id = try await pool.sendControl(command, to: runner, sentBy: sender)
        console.print(id)
        if all { console.error("runner: sent to \(live) runner\(live == 1 ? "" : "s")") }
        guard arguments.flag("--wait") else { return 0 }
        return try await printOutcome(of: id, runner: runner ?? "", after: position, timeout: timeout, pool, console)
    }

    /// Exit 1 with a clear line when the runner has no registry record or no lease.
    static func requireLive(_ runner: String, _ pool: PoolClient) async throws {
        let presence = try await pool.presence(of: runner)
        guard let record = presence.record else {
            throw CommandFailure("no runner '\(runner)' in the registry of namespace '\(pool.keyspace.namespace)'")
        }
        guard presence.leaseHeld else {
            let state = record[RunnerRecordField.state]?.stringValue ?? "unknown"
            throw CommandFailure("runner '\(runner)' is not running: its lease is gone (registry state \(state))")
        }
    }

    static func printOutcome(
        of id: String, runner: String, after position: String, timeout: Duration, _ pool: PoolClient,
        _ console: Console
    ) async throws -> Int32 {
        guard
            let event = try await pool.commandOutcome(
                commandId: id, runner: runner.isEmpty ? nil : runner, after: position, timeout: timeout)
        else {
            throw CommandFailure("runner '\(runner)' did not answer command \(id) within \(timeout)")
        }
        let data = (try? JSONValue(parsing: Array(event.data.utf8))) ?? .null
        let outcome = data["outcome"]?.stringValue ?? ""
        let reason = data["reason"]?.stringValue.map { ": " + JobEntry.printable($0) } ?? ""
        console.print("\(outcome)\(reason)")
        return outcome == ControlOutcome.rejected.rawValue ? 1 : 0
    }

    static func runCancel(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let id = try arguments.jobId()
        let timeout = try arguments.waitTimeout() ?? .seconds(30)
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        switch try await pool.cancel(job: id, sentBy: sender) {
        case .cancelled(let previous):
            console.print("cancelled \(id) (it was \(previous))")
            return 0
        case .alreadyEnded(let state):
            throw CommandFailure("job '\(id)' already \(state)")
        case .noSuchJob:
            throw CommandFailure(
                "no job '\(id)' in namespace '\(pool.keyspace.namespace)' (never submitted, or its result expired)")
        case .sent(let runner, let commandId):
            if commandId.isEmpty {
                console.error(
                    "runner: job '\(id)' is running without a recorded runner; a runner claiming it cancels it")
            } else {
                console.print("cancel requested for job \(id) (running on \(runner)); command \(commandId)")
            }
            guard arguments.flag("--wait") else { return 0 }
            let result = try await pool.follow(id: id, timeout: timeout)
            let state = result?[ResultField.state].map { String(decoding: $0, as: UTF8.self) } ?? ""
            guard JobState(rawValue: state)?.isTerminal == true else {
                throw CommandFailure("job '\(id)' was still \(state) on runner '\(runner)' after \(timeout)")
            }
            console.print(state)
            return state == JobState.cancelled.rawValue ? 0 : 1
        }
    }
}
