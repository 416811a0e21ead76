import RunnerCore
import RunnerProtocol

/// `runner result ID`.
enum ResultCommand {
    static let spec = CommandSpec(
        name: "result",
        abstract: "Show a job's result record.",
        usage: "runner result ID [--json]",
        arguments: [("ID", "The job id.")],
        options: CommonOptions.all + [OptionSpec("--json", .flag, help: "Print the result hash as one JSON object.")],
        maximumPositionals: 1)

    static let order = [
        ResultField.state, ResultField.exitCode, ResultField.signal, ResultField.reason, ResultField.attempt,
        ResultField.runner, ResultField.queue, ResultField.submittedAt, ResultField.startedAt, ResultField.finishedAt,
        ResultField.durationMs, ResultField.forcedKill, ResultField.pid, ResultField.cpuUserMs, ResultField.cpuSystemMs,
        ResultField.streamId, ResultField.spec,
    ]

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let id = try arguments.jobId()
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        guard let fields = try await pool.result(id: id) else {
            throw CommandFailure(
                "no job '\(id)' in namespace '\(pool.keyspace.namespace)' (never submitted, or its result expired)")
        }
        let view = ResultView(fields: fields)
        if arguments.flag("--json") {
            console.print(view.json(id: id).serialized)
            return 0
        }
        console.print("id: \(id)")
        // Every millisecond epoch of the record, as a person reads it (--json keeps the numbers).
        let timestamps: Set<String> = [
            ResultField.submittedAt, ResultField.startedAt, ResultField.finishedAt, ResultField.retryAt,
            ResultField.cancelRequestedAt,
        ]
        for name in order + fields.keys.filter({ !order.contains($0) && $0 != ResultField.outputTail }).sorted() {
            guard let value = view.text(name) else { continue }
            if timestamps.contains(name), let ms = Int(value) {
                console.print("\(name): \(formatTimestamp(ms))")
            } else if name == ResultField.forcedKill {
                // As --json gives it.
                console.print("\(name): \(value == "1")")
            } else {
                // A record's fields are anyone's to HSET: an escape sequence or a line break in one is shown escaped
                // (the output tail below is the job's output, printed as it was written, as `runner logs` does).
                console.print(TopView.shown("\(name): \(value)"))
            }
        }
        if let tail = fields[ResultField.outputTail], !tail.isEmpty {
            console.print("output_tail:")
            console.out(tail)
            if tail.last != 0x0A { console.print("") }
        }
        return 0
    }
}
