import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol

/// `runner retry ID`: requeues a dead, failed or timed-out job by hand.
enum RetryCommand {
    static let spec = CommandSpec(
        name: "retry",
        abstract: "Requeue a dead, failed or timed-out job by hand (a new attempt, failures reset).",
        usage: "runner retry ID [--json]",
        arguments: [("ID", "The job id.")],
        options: CommonOptions.all + [OptionSpec("--json", .flag, help: "Print the new entry as JSON.")],
        maximumPositionals: 1,
        discussion: """
            The job gets a new entry on its queue with its attempt raised; its failures and reschedules start from
            0 again, so it may take max_attempts failed attempts once more (job.requeued). Its dead letter, if any,
            stays in the dead-letter stream as history.
            """)

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let id = try arguments.jobId()
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        switch try await pool.requeueByHand(id: id, actor: PoolCommands.sender) {
        case .requeued(let streamId, let attempt):
            if arguments.flag("--json") {
                let json: JSONValue = ["id": .string(id), "stream_id": .string(streamId), "attempt": .int(attempt)]
                console.print(json.serialized)
            } else {
                console.print("requeued \(id) as attempt \(attempt)")
            }
            return 0
        case .notRetriable(let state?):
            throw CommandFailure(
                "job '\(id)' is in state \(state); only dead, failed or timed_out jobs can be retried by hand")
        case .notRetriable(nil):
            throw CommandFailure(
                "no job '\(id)' in namespace '\(pool.keyspace.namespace)' (never submitted, or its result expired)")
        }
    }
}

/// `runner dead`: lists the dead-letter stream.
enum DeadCommand {
    static let spec = CommandSpec(
        name: "dead",
        abstract: "List the dead letters: rejected entries and dead jobs, newest first.",
        usage: "runner dead [--json] [--count N]",
        options: CommonOptions.all + [
            OptionSpec("--json", .flag, help: "One JSON object per line."),
            OptionSpec("--count", .value("N"), help: "How many to list.", default: "50"),
        ],
        discussion: """
            Dead letters are history: one whose job was retried by hand ('runner retry') stays listed, with the
            job's state now after its reason ('(now succeeded)'; --json: job_state, null when the job has no record
            any more).
            """)

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        if arguments.value("--count").flatMap({ Int($0) }) == 0 {
            // There is no follow here: 0 would list nothing.
            throw UsageError("'--count 0' would list no dead letters (give 1 or more)", command: spec.name)
        }
        let count = try arguments.positiveInt("--count") ?? 50
        let pool = try await connectedPool(arguments)
        defer { pool.client.close() }
        let letters = try await pool.deadLetters(count: count)
        if letters.isEmpty, !arguments.flag("--json") { console.print("(no dead letters)") }
        for letter in letters {
            console.print(
                render(id: letter.id, fields: letter.fields, jobState: letter.jobState, json: arguments.flag("--json")))
        }
        return 0
    }

    /// One dead letter (its stream id and fields) as a JSON object (every field whole; the spec's secret variables masked) or as one line of
    /// text (its reason cut at a word, `JobEntry.printable`).
    static func render(id: String, fields: [String: [UInt8]], jobState: String?, json: Bool) -> String {
        guard !json else {
            var object: [String: JSONValue] = [
                "dead_id": .string(id), "job_state": jobState.map(JSONValue.string) ?? .null,
            ]
            for (name, value) in fields {
                if let text = String(validating: value, as: UTF8.self) {
                    let isNumber = name == JobEntryField.attempt || name == ProtocolVersion.field
                    object[name] =
                        name == JobEntryField.spec
                        ? (try? JSONValue(parsing: text)).map(SecretVariables.masked(json:)) ?? .string(text)
                        : isNumber ? (Int(text).map(JSONValue.int) ?? .string(text)) : .string(text)
                } else {
                    object[name + "_base64"] = .string(Data(value).base64EncodedString())
                }
            }
            return JSONValue.object(object).serialized
        }
        let text = { (name: String) in fields[name].map { String(decoding: $0, as: UTF8.self) } }
        let ms = Int(id.split(separator: "-").first ?? "") ?? 0
        // A job retried (or resubmitted) since: what became of it.
        let now =
            jobState.map {
                // Quoted as the job id is: a state written by hand may hold an escape sequence or a line break.
                $0 == JobState.dead.rawValue || $0 == JobState.rejected.rawValue
                    ? "" : " (now \(JobEntry.printable($0)))"
            }
            ?? ""
        return "\(formatTimestamp(ms)) \(JobEntry.printable(text(JobEntryField.id) ?? "-")) "
            + "attempt=\(text(JobEntryField.attempt) ?? "1"): " + JobEntry.printable(text(DeadLetterField.reason) ?? "")
            + now
    }
}
