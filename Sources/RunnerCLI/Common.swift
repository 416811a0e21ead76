import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol

/// Options every subcommand takes.
enum CommonOptions {
    static let redis = OptionSpec(
        "--redis", .value("HOST:PORT|URL"), help: "Redis to use: host:port or redis://[user:password@]host:port[/db].",
        environment: "RUNNER_REDIS", default: "127.0.0.1:6379")
    static let namespace = OptionSpec(
        "--namespace", .value("NAME"), help: "Namespace of the pool's keys.", environment: "RUNNER_NAMESPACE",
        default: Keyspace.defaultNamespace)
    static let all = [redis, namespace]

    /// This host's name up to its first dot: in runner and control-plane names, the default node, `cli@HOST`.
    static var hostName: String {
        ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
    }

    // Options of more than one long-running subcommand.
    static let resultRetention = OptionSpec(
        "--result-retention", .value("DURATION"), help: "How long results and logs stay in Redis.",
        environment: "RUNNER_RESULT_RETENTION", default: "7d")
    /// The reaper leader's: every reaper of a pool (control planes and workers) should be given the same one.
    static let lostRetention = OptionSpec(
        "--lost-retention", .value("DURATION"),
        help: "How long lost (and migrated) runners stay in the registry; the reaper leader's value applies.",
        environment: "RUNNER_LOST_RETENTION", default: "24h")
    static let rescheduleLimit = OptionSpec(
        "--reschedule-limit", .value("N"),
        help: "Reschedules from lost runners before a job is dead (a job that kills its runners).",
        environment: "RUNNER_RESCHEDULE_LIMIT", default: String(ReaperConfiguration.defaultRescheduleBound))
    static let allowEvictionPolicy = OptionSpec(
        "--allow-eviction-policy", .flag,
        help: "Start even when Redis's maxmemory-policy may evict keys (leases then break silently).",
        environment: "RUNNER_ALLOW_EVICTION_POLICY")
    static let logging = [
        OptionSpec(
            "--log-level", .value("LEVEL"), help: "debug, info, warning or error.", environment: "RUNNER_LOG_LEVEL",
            default: "info"),
        OptionSpec(
            "--log-format", .value("FORMAT"), help: "text or json.", environment: "RUNNER_LOG_FORMAT", default: "text"),
    ]
}

extension UsageError {
    /// Why `name`, a namespace, queue or runner name that `Keyspace.isValidName` refuses (or with `limit`
    /// `Keyspace.maximumNodeNameLength`, a node name `isValidNodeName` refuses), is refused, for the parenthesized
    /// end of the error: its length when it is too long (`too long: 300 characters, at most 128`), else `rules`.
    /// What `Keyspace.isValidName` asks of a namespace, queue or runner name.
    static let nameRules =
        "1 to \(Keyspace.maximumNameLength) characters; no braces, colons, spaces or control characters"

    static func nameReason(_ name: String, limit: Int = Keyspace.maximumNameLength, rules: String) -> String {
        name.count > limit ? "too long: \(name.count) characters, at most \(limit)" : rules
    }
}

/// A failure of a command that is not a usage mistake: printed as `Error: ...`, exit code 1.
struct CommandFailure: Error, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

extension ParsedArguments {
    func endpoint() throws -> RedisEndpoint {
        let text = value("--redis") ?? "127.0.0.1:6379"
        do {
            return try RedisEndpoint(parsing: text)
        } catch {
            throw UsageError("invalid value for '--redis': \(error.message)", command: command.name)
        }
    }

    func keyspace() throws -> Keyspace {
        let name = value("--namespace") ?? Keyspace.defaultNamespace
        guard Keyspace.isValidName(name) else {
            throw UsageError(
                "invalid value for '--namespace': '\(UsageError.excerpt(name))' ("
                    + UsageError.nameReason(
                        name, rules: UsageError.nameRules)
                    + ")",
                command: command.name)
        }
        return Keyspace(namespace: name)
    }

    /// A usage error unless `name` (the value of `option`) is a usable runner or control-plane name.
    func checkName(_ name: String, option: String = "--name") throws {
        guard Keyspace.isValidName(name) else {
            throw UsageError(
                "invalid value for '\(option)': '\(UsageError.excerpt(name))' ("
                    + UsageError.nameReason(
                        name, rules: UsageError.nameRules)
                    + ")", command: command.name)
        }
    }

    /// The option's value through `parse`; nil when not given; a usage error naming the option, the value and
    /// `expected` when `parse` refuses it.
    func parsed<T>(_ name: String, expected: String, _ parse: (String) -> T?) throws -> T? {
        guard let text = value(name) else { return nil }
        guard let result = parse(text) else {
            throw UsageError(
                "invalid value for '\(name)': '\(UsageError.excerpt(text))' (\(expected))", command: command.name)
        }
        return result
    }

    func duration(_ name: String) throws -> Duration? {
        guard let text = value(name) else { return nil }
        guard let duration = DurationParser.parse(text) else {
            if DurationParser.isTooLong(text) {
                throw UsageError(
                    "invalid duration for '\(name)': '\(UsageError.excerpt(text))' is too long (it must be under 10 "
                        + "years, 3650d)", command: command.name)
            }
            throw UsageError(
                "invalid duration for '\(name)': '\(UsageError.excerpt(text))' (write 30s, 500ms, 2m, 1h30m, 7d or a "
                    + "number of seconds)", command: command.name)
        }
        return duration
    }

    /// The duration option's value, nil when not given; a usage error naming the option when it is below `minimum`
    /// (`it must be at least 100ms`).
    func duration(_ name: String, atLeast minimum: Duration) throws -> Duration? {
        guard let value = try duration(name) else { return nil }
        guard value >= minimum else {
            throw UsageError(
                "invalid value for '\(name)': it must be at least \(DurationParser.text(minimum))",
                command: command.name)
        }
        return value
    }

    /// `--wait-timeout`, nil when not given; a usage error without `--wait`, which it would be ignored without.
    /// Every command with the pair checks it here.
    func waitTimeout() throws -> Duration? {
        // 0 would give up before anything was read: refused like `--timeout 0`.
        let timeout = try duration("--wait-timeout", atLeast: .milliseconds(1))
        if timeout != nil, !flag("--wait") { throw UsageError("--wait-timeout needs --wait", command: command.name) }
        return timeout
    }

    /// `--reaper-interval` (or `--interval`), at least 100 ms.
    func reaperInterval(_ name: String = "--reaper-interval") throws -> Duration {
        try duration(name, atLeast: .milliseconds(100)) ?? ReaperConfiguration.defaultInterval
    }

    /// `--result-retention`, at least 1 s: Redis deletes a key given a TTL of 0 at once, so a shorter retention
    /// removed every result (and log) as it was recorded, and `runner result` found no such job.
    func resultRetention() throws -> Duration {
        try duration("--result-retention", atLeast: .seconds(1)) ?? .seconds(7 * 24 * 3600)
    }

    /// The job id positional, validated like the runner validates ids.
    func jobId() throws -> String {
        guard let id = positionals.first else { throw UsageError("missing job id", command: command.name) }
        do {
            try JobEntry.validateId(id)
        } catch {
            throw UsageError("invalid job id: \(error.message)", command: command.name)
        }
        return id
    }

    func positiveInt(_ name: String) throws -> Int? {
        try parsed(name, expected: "expected a positive whole number") { Int($0).flatMap { $0 > 0 ? $0 : nil } }
    }

    /// The positive whole number option's value, nil when not given; a usage error naming the option when it is
    /// above `maximum` (`'5000' is too large (it must be at most 4096)`).
    func positiveInt(_ name: String, atMost maximum: Int) throws -> Int? {
        guard let text = value(name) else { return nil }
        // Digits beyond an Int are a whole number too, only far too large: said so, not "expected a number".
        let beyondInt = !text.isEmpty && text.utf8.allSatisfy { (0x30...0x39).contains($0) } && Int(text) == nil
        let number = beyondInt ? nil : try positiveInt(name)
        if beyondInt || (number ?? 0) > maximum {
            throw UsageError(
                "invalid value for '\(name)': '\(UsageError.excerpt(text))' is too large (it must be at most "
                    + "\(maximum))", command: command.name)
        }
        return number
    }

    /// A CPU quota in millicores (`--cpu`, `--default-cpu`, `--max-cpu`): `0.5` and `500m` are refused saying so.
    func millicores(_ name: String) throws -> Int? {
        try parsed(name, expected: "millicores, a positive whole number: 500 is half a core") {
            Int($0).flatMap { $0 > 0 ? $0 : nil }
        }
    }

    /// A usage error naming the option when a limit is outside what a job spec accepts (`JobLimits.accepted`),
    /// with the range in the option's units. `options` gives the option that set each limit (by its key in the
    /// spec's `limits`); limits it does not name, or that were not given, are not checked. One rule for submit's
    /// `--memory`/`--pids`/`--cpu` and the worker's defaults and ceilings, so that a runner never starts with a
    /// value every cgroup job would then fail on.
    func checkLimitRanges(_ limits: JobLimits, options: [String: String]) throws {
        for (key, value) in limits.entries {
            guard let option = options[key], let text = self.value(option),
                let range = JobLimits.accepted[key], !range.contains(value)
            else { continue }
            let isSize = key == JobLimits.Key.memoryBytes
            let spell = { (bound: Int) in isSize ? ByteSizeParser.text(bound) : String(bound) }
            let side =
                value < range.lowerBound ? "below \(spell(range.lowerBound))" : "above \(spell(range.upperBound))"
            let unit = key == JobLimits.Key.cpuMillis ? " millicores" : ""
            let expected =
                isSize ? "write 64M, 1G or a number of bytes" : "from \(range.lowerBound) to \(range.upperBound)\(unit)"
            throw UsageError(
                "invalid value for '\(option)': '\(UsageError.excerpt(text))' is \(side) (\(expected))",
                command: command.name)
        }
    }

    /// The items of a repeated option that also takes comma lists (`--queue high,default`, `RUNNER_QUEUES=high,default`,
    /// `"queue": ["high,default"]` in a config file): each value split at its commas, white space around an item
    /// dropped; nil when not given. An empty item (`a,,b`, `,a`, `a,`, `''`) is a usage error quoting the value as
    /// written (a variable's whole text), not left out: `item` names what is missing (`queue name`), and `example`
    /// (`names separated by commas, e.g. high,default`) is the hint given when the value has commas.
    func commaList(_ name: String, item: String, example: String) throws -> [String]? {
        guard let given = values[name] else { return nil }
        // The variable's split (`ParsedArguments.init`) already left its empty pieces out: its text as written.
        var items: [String] = []
        for value in environmentText[name].map({ [$0] }) ?? given {
            let pieces = value.split(separator: ",", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            if pieces.contains(where: \.isEmpty) {
                let hint = value.contains(",") ? ": give \(example)" : ""
                throw UsageError(
                    "invalid value for '\(name)': '\(UsageError.excerpt(value))' (an empty \(item)\(hint))",
                    command: command.name)
            }
            items += pieces
        }
        return items
    }

    func keyValues(_ name: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for item in all(name) {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                throw UsageError(
                    "invalid value for '\(name)': '\(UsageError.excerpt(item))' (expected KEY=VALUE)",
                    command: command.name)
            }
            let key = String(item[..<eq])
            // The last would win silently, as a spec's duplicate key would (refused there too).
            guard result.updateValue(String(item[item.index(after: eq)...]), forKey: key) == nil else {
                throw UsageError(
                    "invalid value for '\(name)': '\(UsageError.excerpt(key))' is given twice", command: command.name)
            }
        }
        return result
    }
}

/// A connected client for one-shot commands; a clear error when Redis cannot be reached. Long-running commands
/// (`--wait`, `--follow`) report losing and regaining Redis on stderr.
func connectedPool(_ arguments: ParsedArguments, reportReconnects: Bool = false, console: Console = .standard)
    async throws
    -> PoolClient
{
    let endpoint = try arguments.endpoint()
    let keyspace = try arguments.keyspace()
    var options = RedisClientOptions()
    options.name = "cli"
    let client = RedisClient(endpoint: endpoint, options: options) { line in
        if reportReconnects { console.error("runner: \(line)") }
    }
    do {
        try await client.connect()
    } catch let error as RedisClientError {
        client.close()
        throw CommandFailure(error.message)
    }
    return PoolClient(client: client, keyspace: keyspace)
}

/// The millisecond timestamps `formatTimestamp` writes as dates: the years 1970 to 9999.
let formattableTimestamps = 0...253_402_300_799_999

/// A readable rendering of a millisecond timestamp (UTC, ISO 8601), or the number itself outside the years 1970 to
/// 9999 (a hand-written `ts` of -9223372036854775808), which no date in this form would show truthfully.
func formatTimestamp(_ ms: Int) -> String {
    guard formattableTimestamps.contains(ms) else { return String(ms) }
    var seconds = time_t(ms / 1000)
    var parts = tm()
    gmtime_r(&seconds, &parts)
    return String(
        format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
        parts.tm_hour, parts.tm_min, parts.tm_sec, ms % 1000)
}

extension PoolEvent {
    /// Whether the event's time shows as a date: its `ts` a number of milliseconds in the years 1970 to 9999.
    var hasDate: Bool {
        guard let text = fields[EventField.timestamp] else { return formattableTimestamps.contains(timestampMs) }
        return Int(text).map(formattableTimestamps.contains) ?? false
    }

    /// The event's time as `runner events` and `top` show it: the date of its `ts`, else the field as written (made
    /// printable), e.g. `-9223372036854775808` or `soon`, not a date it does not mean.
    var timeText: String {
        guard let text = fields[EventField.timestamp], Int(text) == nil else { return formatTimestamp(timestampMs) }
        return text.isEmpty ? "-" : JobEntry.printable(text)
    }
}
