import RunnerProtocol

/// `runner config --print`: the worker's effective configuration and where each value came from.
enum ConfigCommand {
    static let printOptions = [
        OptionSpec("--print", .flag, help: "Print every worker option with its value and its source."),
        OptionSpec("--json", .flag, help: "Print one JSON object instead of a table."),
    ]

    /// The worker's options (whatever they are) plus this command's own.
    static let spec = CommandSpec(
        name: "config",
        abstract: "Show the effective worker configuration (defaults, profile, file, environment, flags).",
        usage: "runner config --print [--json] [worker options]",
        options: WorkerCommand.spec.options.filter { $0.name != "--help" } + printOptions,
        discussion: "Takes the same options, config file and RUNNER_* variables as 'runner worker' and checks them "
            + "the same way. Sources: default, profile:NAME, file:PATH:LINE, env:RUNNER_X, flag.")

    /// The worker's options as `config --print` lists them.
    private static var workerOptions: [OptionSpec] {
        spec.options.filter { option in
            option.name != "--help" && !printOptions.contains { $0.name == option.name }
        }
    }

    static func run(_ arguments: ParsedArguments, console: Console) async throws -> Int32 {
        guard arguments.flag("--print") else {
            throw UsageError("nothing to do: give --print", command: spec.name)
        }
        // The worker's own checks, so that what is printed is what a worker would start with.
        let (configuration, _) = try WorkerCommand.configuration(arguments)
        _ = try MetricsListen.address(arguments)
        for warning in arguments.warnings { console.error("warning: \(warning)") }
        // Defaults that depend on the host are shown as this host has them; the default name's pid is the
        // worker's, known only when it starts (a resumed identity is the name).
        let name =
            arguments.value("--resume-identity") == nil ? WorkerCommand.defaultName(pid: "<pid>") : configuration.name
        let hostDefaults: [String: JSONValue] = [
            "--name": .string(name), "--node": .string(configuration.node),
            "--concurrency": .int(configuration.concurrency),
        ]
        let rows = workerOptions.map { option in
            let source = ConfigurationLayers.source(of: option.name, in: arguments)
            let hostDefault = source == "default" ? hostDefaults[option.name] : nil
            return (option, hostDefault ?? value(of: option, in: arguments), source)
        }
        if arguments.flag("--json") {
            var object: [String: JSONValue] = [:]
            for (option, value, source) in rows {
                object[String(option.name.dropFirst(2))] = ["value": value, "source": .string(source)]
            }
            console.print(JSONValue.object(object).serialized)
            return 0
        }
        // Each column as wide as its widest value (a long --cgroup-parent too), so that SOURCE lines up.
        let table = rows.map { [String($0.0.name.dropFirst(2)), text(of: $0.1), $0.2] }
        for line in TopView.table([["OPTION", "VALUE", "SOURCE"]] + table, indent: "") { console.print(line) }
        return 0
    }

    /// The option's effective value: a flag's true/false, a repeated option's list, a value's text; where no layer
    /// set it, the built-in default as the help describes it (null when it has none, or it is "none" or "off").
    /// Numbers are JSON numbers; sizes and durations are in their canonical spelling (`64M`, `2m`, `1m30s`: what
    /// the worker will use, however it was written). Redis passwords are masked.
    static func value(of option: OptionSpec, in arguments: ParsedArguments) -> JSONValue {
        switch option.kind {
        case .flag:
            return .bool(arguments.flag(option.name))
        case .repeated:
            // The items the worker takes: each of its repeated options also takes comma lists (`--queue 'a, b'` is
            // queues a and b), whose empty items its checks have already refused.
            let values = arguments.all(option.name).flatMap {
                $0.split(separator: ",", omittingEmptySubsequences: false).map {
                    $0.trimmingCharacters(in: .whitespaces)
                }
            }
            if values.isEmpty { return option.defaultDescription.map { [.string($0)] } ?? [] }
            return .array(values.map { .string(masked($0)) })
        case .value(let kind):
            let given = arguments.value(option.name)
            guard let text = given ?? option.defaultDescription, given != nil || !unsetDefaults.contains(text) else {
                return .null
            }
            return normalized(text, kind: kind) ?? .string(masked(text))
        }
    }

    /// How the help describes a default that sets nothing.
    private static let unsetDefaults: Set<String> = ["none", "off"]

    /// A number, size or duration (by the option's value name) as the worker reads it; nil for other kinds, or text
    /// that is not one (a default described in words).
    private static func normalized(_ text: String, kind: String) -> JSONValue? {
        switch kind {
        case "N", "MILLICORES": Int(text).map(JSONValue.int)
        case "SIZE": ByteSizeParser.parse(text).map { .string(ByteSizeParser.text($0)) }
        case "DURATION": DurationParser.parse(text).map { .string(DurationParser.text($0)) }
        default: nil
        }
    }

    private static func text(of value: JSONValue) -> String {
        switch value {
        case .array(let items): items.isEmpty ? "-" : items.compactMap(\.stringValue).joined(separator: ",")
        case .bool(let on): on ? "true" : "false"
        case .string(let text): text
        case .int(let number): String(number)
        default: "-"
        }
    }

    /// `redis://user:***@host` for a value holding a Redis URL with a password.
    static func masked(_ text: String) -> String {
        var bytes = Array(text.utf8)
        guard let range = RunnerCommandLine.passwordRange(in: bytes) else { return text }
        bytes.replaceSubrange(range, with: Array("***".utf8))
        return String(decoding: bytes, as: UTF8.self)
    }
}
