import Foundation
import RunnerCore

/// The layers of a command's configuration below the flags and the environment: the config file, then the profile,
/// then the built-in defaults. Generic over the command's `OptionSpec` table: any option is settable from each layer.
enum ConfigurationLayers {
    static let config = OptionSpec(
        "--config", .value("FILE"),
        help: "JSON file of options (keys are option names without dashes), below RUNNER_* and flags.",
        environment: "RUNNER_CONFIG")
    static let profile = OptionSpec(
        "--profile", .value("NAME"),
        help: "Defaults for a role: \(Profile.names.joined(separator: ", ")) (see docs/operations.md).",
        environment: "RUNNER_PROFILE")
    static let options = [config, profile]

    /// `arguments` (flags and environment already in) with the config file's and then the profile's values filled in
    /// for the options still unset. `host` is asked only when a profile is chosen.
    static func applying(
        to arguments: ParsedArguments, host: () async -> HostFacts
    ) async throws(UsageError) -> ParsedArguments {
        var arguments = arguments
        let command = arguments.command
        if let path = arguments.value(config.name) {
            // `config --print` reads the file as the worker would: its own --print and --json are not settable there.
            let options = command.options.filter { option in
                !ConfigCommand.printOptions.contains { $0.name == option.name }
            }
            let file = try ConfigurationFile.load(path: path, options: options, command: command.name)
            for (name, entry) in file.entries where arguments.values[name] == nil {
                arguments.values[name] = entry.values
                arguments.sources[name] = "file:\(path):\(entry.line)"
            }
        }
        guard let name = arguments.value(profile.name) else { return arguments }
        guard let chosen = Profile.named(name, host: await host()) else {
            let error = UsageError(
                "invalid value for '\(profile.name)': '\(UsageError.excerpt(name))' (choose "
                    + "\(Profile.names.joined(separator: ", ")))",
                command: command.name)
            throw locating(error, in: arguments)
        }
        for (option, value) in chosen.values
        where arguments.values[option] == nil && command.options.contains(where: { $0.name == option }) {
            arguments.values[option] = [value]
            arguments.sources[option] = "profile:\(chosen.name)"
        }
        arguments.warnings += chosen.warnings
        return arguments
    }

    /// Where an option's value came from, as `config --print` shows it: default, profile:NAME, file:PATH:LINE,
    /// env:RUNNER_X or flag.
    static func source(of name: String, in arguments: ParsedArguments) -> String {
        guard let source = arguments.sources[name] else { return "default" }
        if source.hasPrefix("file:") || source.hasPrefix("profile:") || source == "flag" { return source }
        return "env:" + source
    }

    /// The error located where the value it is about came from, when it quotes an option (`'--lease-ttl'`) whose
    /// value was not a flag: at the file line or profile that gave it, or naming the `RUNNER_*` variable instead of
    /// the option. Every check of a value then points at what the user wrote, wherever it is made.
    static func locating(_ error: UsageError, in arguments: ParsedArguments) -> UsageError {
        guard
            let option = arguments.command.options.first(where: { error.message.contains("'\($0.name)'") }),
            let source = arguments.sources[option.name]
        else { return error }
        if source.hasPrefix("file:") {
            return UsageError(
                "\(source.dropFirst("file:".count)): \(error.message)", command: error.command, pointsToHelp: false)
        }
        if source.hasPrefix("profile:") {
            return UsageError("\(source): \(error.message)", command: error.command, pointsToHelp: false)
        }
        if source != "flag", source == option.environment {
            return UsageError(
                error.message.replacingOccurrences(of: "'\(option.name)'", with: source), command: error.command,
                pointsToHelp: error.pointsToHelp)
        }
        return error
    }
}
