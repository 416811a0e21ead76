import Foundation
import RunnerCore
import RunnerProtocol

/// `runner events`: recent events, optionally following new ones.
enum EventsCommand {
    static let spec = CommandSpec(
        name: "events",
        abstract: "Print the pool's events (the last ones, and with --follow new ones as they come).",
        usage: "runner events [--follow] [--json] [--count N] [--job ID]",
        options: CommonOptions.all + [
            OptionSpec(
                "--follow", short: "f", .flag,
                help: "Keep printing new events until interrupted or the reader of standard output goes away."),
            OptionSpec("--json", .flag, help: "One JSON object per line."),
            OptionSpec(
                "--count", .value("N"),
                help: "How many recent events to print first, of the job with --job (0 with --follow: only new ones).",
                default: "50"),
            OptionSpec("--job", .value("ID"), help: "Only events of this job."),
        ])

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        let follow = arguments.flag("--follow")
        let count =
            try arguments.parsed("--count", expected: "expected a whole number; 0 only with --follow") {
                Int($0).flatMap { $0 >= 0 ? $0 : nil }
            } ?? 50
        // 0 means "none of the old ones": only a follow has anything else to print.
        if count == 0, !follow {
            throw UsageError(
                "'--count 0' prints nothing without --follow (with --follow: only events that come after it starts)",
                command: spec.name)
        }
        let job = arguments.value("--job")
        if let job {
            do { try JobEntry.validateId(job) } catch {
                throw UsageError("invalid value for '--job': \(error.message)", command: spec.name)
            }
        }
        let pool = try await connectedPool(arguments, reportReconnects: follow, console: console)
        defer { pool.client.close() }
        let json = arguments.flag("--json")
        var cursor = "0-0"
        if count == 0 {
            cursor = try await pool.eventsPosition()
        } else {
            let recent = try await pool.recentEvents(count: count, job: job)
            for event in recent.events { console.print(render(event, json: json)) }
            // An empty answer for one job is no empty pool: say so (stderr, so that stdout stays the events).
            if let job, recent.events.isEmpty {
                console.error(
                    "runner: no events of job '\(job)' on the events stream"
                        + (follow ? "; new ones follow" : " (never submitted, or its events were trimmed)"))
            }
            if let last = recent.last { cursor = last }
        }
        guard follow else { return 0 }
        if let status = try OutputGone.exitStatus(console) { return status }
        // An empty stream is followed from its start ("0-0"), so nothing added meanwhile is missed.
        while !Task.isCancelled {
            let events = try await pool.events(after: cursor, block: .seconds(5), retry: .idempotent(deadline: nil))
            for event in events where job == nil || event.job == job { console.print(render(event, json: json)) }
            if let last = events.last { cursor = last.streamId }
            if let status = try OutputGone.exitStatus(console) { return status }
        }
        return 0
    }

    static func render(_ event: PoolEvent, json: Bool) -> String {
        if json {
            var object: [String: JSONValue] = ["id": .string(event.streamId)]
            for (key, value) in event.fields {
                switch key {
                case EventField.data: object[key] = (try? JSONValue(parsing: value)) ?? .string(value)
                case EventField.timestamp, ProtocolVersion.field:
                    object[key] = Int(value).map(JSONValue.int) ?? .string(value)
                default: object[key] = .string(value)
                }
            }
            return JSONValue.object(object).serialized
        }
        // Padded to the longest known type, never cut: a type added later shows in full.
        let width = EventType.allCases.map(\.rawValue.count).max() ?? 0
        let type =
            event.type.count < width ? event.type.padding(toLength: width, withPad: " ", startingAt: 0) : event.type
        var line = "\(event.timeText) \(type)"
        if !event.runner.isEmpty { line += " runner=\(event.runner)" }
        if !event.job.isEmpty { line += " job=\(event.job)" }
        if !event.data.isEmpty, event.data != "{}" { line += " \(event.data)" }
        // Anyone may XADD to the events stream: an escape sequence or a line break in a field is shown escaped.
        return TopView.shown(line)
    }
}
