import Foundation

/// One option a subcommand accepts.
public struct OptionSpec: Sendable {
    public enum Kind: Sendable, Equatable {
        /// `--flag`, no value.
        case flag
        /// `--name VALUE` or `--name=VALUE`, the last one wins.
        case value(String)
        /// `--name VALUE`, may be given several times.
        case repeated(String)
    }

    public var name: String
    public var short: Character?
    public var kind: Kind
    public var help: String
    /// The environment variable used when the option is not given (`RUNNER_...`).
    public var environment: String?
    public var defaultDescription: String?

    public init(
        _ name: String, short: Character? = nil, _ kind: Kind, help: String, environment: String? = nil,
        default defaultDescription: String? = nil
    ) {
        self.name = name
        self.short = short
        self.kind = kind
        self.help = help
        self.environment = environment
        self.defaultDescription = defaultDescription
    }
}

/// A subcommand's interface, enough to parse its arguments and print its help.
public struct CommandSpec: Sendable {
    public var name: String
    public var abstract: String
    public var usage: String
    public var arguments: [(String, String)]
    public var options: [OptionSpec]
    /// Whether positional arguments are accepted (otherwise any is a usage error).
    public var maximumPositionals: Int
    /// Whether arguments after `--` are collected as a command line.
    public var acceptsCommand: Bool
    public var discussion: String?

    public init(
        name: String, abstract: String, usage: String, arguments: [(String, String)] = [], options: [OptionSpec],
        maximumPositionals: Int = 0, acceptsCommand: Bool = false, discussion: String? = nil
    ) {
        self.name = name
        self.abstract = abstract
        self.usage = usage
        self.arguments = arguments
        self.options = options + [OptionSpec("--help", short: "h", .flag, help: "Show help for this command.")]
        self.maximumPositionals = maximumPositionals
        self.acceptsCommand = acceptsCommand
        self.discussion = discussion
    }

    /// The help text: OVERVIEW, USAGE, ARGUMENTS, OPTIONS, then the discussion; wrapped at `HelpLayout.width`.
    public var help: String {
        var text = HelpLayout.prose("OVERVIEW: \(abstract)") + "\n" + HelpLayout.usage(usage)
        if !arguments.isEmpty {
            text += "\nARGUMENTS:\n"
            for (name, help) in arguments { text += HelpLayout.entry(name, help) }
        }
        text += "\nOPTIONS:\n"
        for option in options {
            var left = option.short.map { "-\($0), " } ?? ""
            left += option.name
            switch option.kind {
            case .flag: break
            case .value(let v), .repeated(let v): left += " <\(v)>"
            }
            var help = option.help
            if case .repeated = option.kind { help += " (repeatable)" }
            if let d = option.defaultDescription { help += " (default: \(d))" }
            if let env = option.environment { help += " [env: \(env)]" }
            text += HelpLayout.entry(left, help)
        }
        if let discussion {
            // Each paragraph refilled: the source's own line breaks are not the help's.
            for paragraph in discussion.components(separatedBy: "\n\n") { text += "\n" + HelpLayout.prose(paragraph) }
        }
        return text
    }
}

/// How help text is laid out: lines of at most `width` columns, broken at spaces; a continuation line starts under
/// the first word of what it continues (a description under the description column).
enum HelpLayout {
    static let width = 100
    /// Where an option's or an argument's description starts.
    static let descriptionColumn = 28

    /// `  NAME    description`, the description from `column` on; NAME on a line of its own when it reaches it. A
    /// bracketed or parenthesized part (`[env: RUNNER_NAME]`, `(default: 30s)`) is kept on one line.
    static func entry(_ name: String, _ description: String, column: Int = descriptionColumn) -> String {
        let lead = "  " + name
        let words = words(description, keepingGroups: true)
        guard lead.count < column else {
            return lead + "\n" + fill(words, lead: String(repeating: " ", count: column), indent: column)
        }
        return fill(words, lead: lead.padding(toLength: column, withPad: " ", startingAt: 0), indent: column)
    }

    /// `USAGE: runner NAME ...`, continued under the first word after the subcommand; a bracketed group of
    /// options (`[--wait [--wait-timeout D]]`) is kept on one line.
    static func usage(_ usage: String) -> String {
        let parts = words(usage, keepingGroups: true)
        let lead = "USAGE: " + parts.prefix(2).joined(separator: " ") + (parts.count > 2 ? " " : "")
        return fill(Array(parts.dropFirst(2)), lead: lead, indent: lead.count)
    }

    /// A paragraph, refilled from its first column.
    static func prose(_ paragraph: String) -> String {
        fill(words(paragraph, keepingGroups: false), lead: "", indent: 0)
    }

    /// The text split at white space; with `keepingGroups`, not inside brackets or parentheses.
    private static func words(_ text: String, keepingGroups: Bool) -> [String] {
        var words: [String] = []
        var word = ""
        var depth = 0
        for character in text {
            if character.isWhitespace, depth == 0 || !keepingGroups {
                if !word.isEmpty { words.append(word) }
                word = ""
                continue
            }
            if character == "[" || character == "(" { depth += 1 }
            if character == "]" || character == ")" { depth = max(0, depth - 1) }
            word.append(character)
        }
        if !word.isEmpty { words.append(word) }
        return words
    }

    /// `words` filled into lines after `lead` (part of the first line), each further line indented by `indent`; a
    /// group too long for a line is split at its spaces. Ends with a newline.
    private static func fill(_ words: [String], lead: String, indent: Int) -> String {
        var text = ""
        var line = lead
        var empty = true
        for group in words {
            let pieces = group.count > width - indent ? group.split(separator: " ").map(String.init) : [group]
            for word in pieces {
                if !empty, line.count + 1 + word.count > width {
                    text += line + "\n"
                    line = String(repeating: " ", count: indent)
                    empty = true
                }
                line += (empty ? "" : " ") + word
                empty = false
            }
        }
        return text + line + "\n"
    }
}

/// A usage mistake: printed as one `Error:` line and a pointer to --help; exit code 2.
public struct UsageError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var command: String
    /// Whether the pointer to --help follows the message: not for a mistake in a config file, which the message
    /// already locates.
    public var pointsToHelp: Bool
    /// The positional argument refused as one too many (`unexpected argument 'stauts'`), for a caller that can
    /// guess what was meant.
    public var unexpectedArgument: String?
    public init(_ message: String, command: String, pointsToHelp: Bool = true) {
        self.message = message
        self.command = command
        self.pointsToHelp = pointsToHelp
    }
    public var description: String { message }

    /// A bad value as quoted in an error: at most `limit` characters (80 unless a path, which is quoted whole),
    /// control characters escaped, so that the error stays one readable line whatever was given.
    public static func excerpt(_ value: String, limit: Int = 80) -> String {
        var text = ""
        for scalar in value.unicodeScalars.prefix(limit) {
            text += scalar.properties.generalCategory == .control ? scalar.escaped(asASCII: true) : String(scalar)
        }
        return value.unicodeScalars.count > limit ? text + "… (\(value.utf8.count) bytes)" : text
    }
}

/// Parsed arguments of one subcommand, with environment fallbacks applied.
public struct ParsedArguments: Sendable {
    public var command: CommandSpec
    /// Each given option's values; a flag's is `["true"]`, or `["false"]` when a layer turned it off explicitly.
    public internal(set) var values: [String: [String]] = [:]
    /// Where each value came from: "flag", the environment variable's name, or a layer below them
    /// (`ConfigurationLayers`: "file:PATH:LINE", "profile:NAME").
    public internal(set) var sources: [String: String] = [:]
    /// The text of each value taken from an environment variable, as it was written (`RUNNER_QUEUES=,`).
    public private(set) var environmentText: [String: String] = [:]
    /// Things the layers below the flags want said when the command starts (a profile's fallback).
    public internal(set) var warnings: [String] = []
    public private(set) var positionals: [String] = []
    public private(set) var commandLine: [String] = []

    public func flag(_ name: String) -> Bool { values[name].map { $0.last != "false" } ?? false }
    public func value(_ name: String) -> String? { values[name]?.last }
    public func all(_ name: String) -> [String] { values[name] ?? [] }

    /// Parses `arguments` against `command`; falls back to `environment` for options that name a variable.
    public init(_ arguments: [String], command: CommandSpec, environment: [String: String]) throws(UsageError) {
        self.command = command
        var index = 0
        func fail(_ message: String) -> UsageError { UsageError(message, command: command.name) }
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                guard command.acceptsCommand else { throw fail("unexpected argument '--'") }
                commandLine = Array(arguments[index...])
                break
            }
            if argument.hasPrefix("--") || (argument.hasPrefix("-") && argument.count == 2 && argument != "-") {
                var name = argument
                var inline: String?
                if argument.hasPrefix("--"), let eq = argument.firstIndex(of: "=") {
                    name = String(argument[..<eq])
                    inline = String(argument[argument.index(after: eq)...])
                }
                let option: OptionSpec?
                if name.hasPrefix("--") {
                    option = command.options.first { $0.name == name }
                } else {
                    option = command.options.first { $0.short.map { "-\($0)" } == name }
                }
                guard let option else { throw fail("unknown option '\(UsageError.excerpt(name))'") }
                switch option.kind {
                case .flag:
                    guard inline == nil else { throw fail("option '\(option.name)' takes no value") }
                    values[option.name] = ["true"]
                case .value(let valueName), .repeated(let valueName):
                    let value: String
                    if let inline {
                        value = inline
                    } else {
                        // `--` and `--option` are never taken as a value: `--id -- echo` is a missing id.
                        guard index < arguments.count, !arguments[index].hasPrefix("--") else {
                            throw fail("missing value for option '\(option.name) <\(valueName)>'")
                        }
                        value = arguments[index]
                        index += 1
                    }
                    if case .repeated = option.kind {
                        values[option.name, default: []].append(value)
                    } else {
                        values[option.name] = [value]
                    }
                }
                sources[option.name] = "flag"
                continue
            }
            if command.acceptsCommand, command.maximumPositionals == positionals.count {
                // The command starts at the first positional beyond the subcommand's own (no `--` needed).
                commandLine = Array(arguments[(index - 1)...])
                break
            }
            guard positionals.count < command.maximumPositionals else {
                var error = fail("unexpected argument '\(argument)'")
                error.unexpectedArgument = argument
                throw error
            }
            positionals.append(argument)
        }
        for option in command.options where values[option.name] == nil {
            guard let variable = option.environment, let value = environment[variable], !value.isEmpty else { continue }
            switch option.kind {
            case .flag:
                // An explicit "off" is kept: it overrides a config file or profile that turns the flag on.
                guard let on = ParsedArguments.switchValue(value) else {
                    throw fail(
                        "invalid value for \(variable): '\(UsageError.excerpt(value))' (expected 1, true, yes, on, 0, "
                            + "false, no or off)"
                    )
                }
                values[option.name] = [on ? "true" : "false"]
            case .value: values[option.name] = [value]
            case .repeated:
                values[option.name] = value.split(separator: ",").map {
                    String($0.trimmingCharacters(in: .whitespaces))
                }
            }
            sources[option.name] = variable
            environmentText[option.name] = value
        }
    }

    /// A switch written as text (environment): true for 1/true/yes/on, false for 0/false/no/off, nil otherwise.
    static func switchValue(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "1", "true", "yes", "on": true
        case "0", "false", "no", "off": false
        default: nil
        }
    }
}
