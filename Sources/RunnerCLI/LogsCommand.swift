import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner logs ID`: the job's output, stdout to stdout and stderr to stderr, bytes as written.
enum LogsCommand {
    static let spec = CommandSpec(
        name: "logs",
        abstract: "Print a job's output (stdout and stderr as the job wrote them).",
        usage: "runner logs ID [--follow]",
        arguments: [("ID", "The job id.")],
        options: CommonOptions.all + [
            OptionSpec(
                "--follow", short: "f", .flag,
                help: "Keep printing output as it is written, until the job ends or the reader goes away.")
        ],
        maximumPositionals: 1,
        discussion: """
            A job still queued has no output yet: a line on stderr says so (or, queued again for a new attempt, that
            the output of its earlier attempts follows), as it does for a job that ended without ever starting
            (cancelled while queued, rejected). With --follow it ends (exit 0) when the
            job ends, or when its standard output's reader goes away
            ('runner logs -f ID | head -1'): at the job's next output, or within a second while the job is silent
            or Redis is unreachable. A closed standard output ends it with exit 1 and an Error line.
            """)

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let id = try arguments.jobId()
        let pool = try await connectedPool(arguments, reportReconnects: arguments.flag("--follow"), console: console)
        defer { pool.client.close() }
        guard let record = try await pool.result(id: id) else {
            throw CommandFailure(
                "no job '\(id)' in namespace '\(pool.keyspace.namespace)' (never submitted, or its result expired)")
        }
        // No output is not an empty output: say why there is none yet (stderr, so that stdout stays the job's).
        let view = ResultView(fields: record)
        if view.state == .queued {
            let follow = arguments.flag("--follow")
            // Queued again (a retry, a hand-back, a reschedule): what its earlier attempts wrote is still there.
            let earlier = (try? await pool.client.send(RedisCommand(["XLEN", pool.keyspace.log(job: id)])).int) ?? 0
            let attempt = view.text(ResultField.attempt).map { " for attempt \($0)" } ?? " again"
            console.error(
                earlier > 0
                    ? "runner: job \(id) is queued\(attempt); the output of its earlier attempts follows"
                        + (follow ? ", then this one's once it starts" : "")
                    : "runner: job \(id) is queued; "
                        + (follow ? "its output follows once it starts" : "no output yet"))
        } else if view.state?.isTerminal == true, view.text(ResultField.startedAt) == nil,
            (try? await pool.client.send(RedisCommand(["XLEN", pool.keyspace.log(job: id)])).int) == 0
        {
            // Cancelled before it started, or rejected: it ends with nothing printed, which needs saying.
            console.error("runner: job \(id) is \(TopView.shown(view.stateText)) and never started; it has no output")
        }
        if arguments.flag("--follow") {
            // Ends when standard output is gone, like the other streaming commands (`| head -1`: exit 0).
            let gone: @Sendable () -> Bool = { console.outputGone() != nil || console.readerLeft() }
            // Between reads `stopped` sees a gone reader; a read waiting for Redis (down, retried until it is back)
            // or blocked on a silent job does not get there: a check twice a second cancels it instead.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    _ = try await pool.follow(id: id, output: { print($0, console: console) }, stopped: gone)
                }
                group.addTask {
                    while !gone() { try await Task.sleep(for: .milliseconds(500)) }
                }
                // The first to end decides (an error of the follow is thrown); the other is cancelled, and the
                // follow's CancellationError then is not collected.
                try await group.next()
                group.cancelAll()
            }
            if let status = try OutputGone.exitStatus(console) { return status }
        } else {
            try await pool.logs(id: id) { print($0, console: console) }
        }
        return 0
    }

    /// Writes a chunk where the job wrote it; the runner's own markers go to stderr, marked.
    static func print(_ chunk: LogChunk, console: Console) {
        switch chunk.stream {
        case LogField.stdout: console.out(chunk.bytes)
        case LogField.stderr: console.err(chunk.bytes)
        default: console.error("[nativerunner] \(String(decoding: chunk.bytes, as: UTF8.self))")
        }
    }
}
