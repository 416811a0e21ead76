import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol

/// The `runner` command line: subcommands as plain functions, testable without a process.
public enum RunnerCommandLine {
    static let subcommands: [(CommandSpec, @Sendable (ParsedArguments, Console) async throws -> Int32)] = [
        (WorkerCommand.spec, WorkerCommand.run),
        (SubmitCommand.spec, SubmitCommand.run),
        (ResultCommand.spec, ResultCommand.run),
        (LogsCommand.spec, LogsCommand.run),
        (StatusCommand.spec, StatusCommand.run),
        (TopCommand.spec, TopCommand.run),
        (EventsCommand.spec, EventsCommand.run),
        (RetryCommand.spec, RetryCommand.run),
        (DeadCommand.spec, DeadCommand.run),
        (ControlCommand.spec, ControlCommand.run),
        (ConfigCommand.spec, ConfigCommand.run),
        (PoolCommands.drain, PoolCommands.runDrain),
        (PoolCommands.resume, PoolCommands.runResume),
        (PoolCommands.shutdown, PoolCommands.runShutdown),
        (PoolCommands.cancel, PoolCommands.runCancel),
        (PoolCommands.migrate, PoolCommands.runMigrate),
    ]

    static var overview: String {
        var text = """
            OVERVIEW: NativeRunner \(RunnerVersion.current): runs jobs from Redis streams as isolated processes.

            USAGE: runner [worker] --redis HOST:PORT [options]
                   runner <subcommand> [options]

            SUBCOMMANDS:

            """
        for (spec, _) in subcommands { text += HelpLayout.entry(spec.name, spec.abstract, column: 14) }
        text += HelpLayout.entry("help", "Show help for a subcommand.", column: 14)
        text += """

            OPTIONS:
              --version                 Show the version.
              -h, --help                Show this help.

            With no subcommand, runner runs as a worker. See 'runner help <subcommand>' for details.
            --redis and --namespace may also come before the subcommand, help or --version (runner --redis
            h:6379 status).
            The protocol is documented in docs/protocol.md.

            """
        return text
    }

    /// `runner --redis X --namespace Y submit ...` means `runner submit --redis X --namespace Y ...`: the common
    /// options may come before the subcommand.
    public static func movingCommonOptions(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var index = 0
        let names = CommonOptions.all.map(\.name)
        while index < arguments.count {
            let argument = arguments[index]
            if names.contains(argument), index + 1 < arguments.count {
                leading += [argument, arguments[index + 1]]
                index += 2
            } else if names.contains(where: { argument.hasPrefix($0 + "=") }) {
                leading.append(argument)
                index += 1
            } else {
                break
            }
        }
        guard !leading.isEmpty, index < arguments.count else { return arguments }
        // `help` shows a subcommand's help, and `--version` the version, whatever Redis and namespace: the common
        // options have nothing to do.
        if arguments[index] == "help" || arguments[index] == "--version" { return Array(arguments[index...]) }
        guard subcommands.contains(where: { $0.0.name == arguments[index] }) else { return arguments }
        return [arguments[index]] + leading + arguments[(index + 1)...]
    }

    /// In `runner --concurrency 3 status`, where options other than the common ones come before a subcommand: the
    /// first such option and the subcommand; nil when no subcommand follows (worker mode, `runner --name status`).
    static func misplacedSubcommand(_ arguments: [String]) -> (option: String, subcommand: String)? {
        let worker = subcommands[0].0
        let names = Set(subcommands.map(\.0.name) + ["help"])
        var misplaced: String?
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            guard argument != "--" else { return nil }
            if argument.hasPrefix("-") {
                let name = String(argument.prefix { $0 != "=" })
                if misplaced == nil, !CommonOptions.all.contains(where: { $0.name == name }) { misplaced = name }
                // The worker's value options take the next argument, as its parser will.
                let option = worker.options.first { $0.name == name || $0.short.map { "-\($0)" } == name }
                if let option, option.kind != .flag, !argument.contains("=") { index += 1 }
                continue
            }
            guard names.contains(argument), let misplaced else { return nil }
            return (misplaced, argument)
        }
        return nil
    }

    /// `unknown subcommand 'stauts'; did you mean 'status'?`: the guess when one subcommand is nearest within two
    /// edits (a letter added, dropped, changed, or two swapped) or, failing that, the only one that starts with it.
    static func unknownSubcommand(_ name: String) -> String {
        let message = "unknown subcommand '\(UsageError.excerpt(name))'"
        return suggestion(for: name).map { message + "; did you mean '\($0)'?" } ?? message
    }

    /// The subcommand (or help) `word` is most likely a mistyping of; nil when none is close or two are as close.
    static func suggestion(for word: String) -> String? {
        let names = subcommands.map(\.0.name) + ["help"]
        let typed = Array(word.lowercased())
        let near = names.map { ($0, editDistance(typed, Array($0))) }.filter { $0.1 <= 2 }
        if let best = near.map(\.1).min() {
            let nearest = near.filter { $0.1 == best }
            return nearest.count == 1 ? nearest[0].0 : nil
        }
        let extending = typed.isEmpty ? [] : names.filter { $0.hasPrefix(String(typed)) }
        return extending.count == 1 ? extending[0] : nil
    }

    /// Edits from `a` to `b`: characters inserted, deleted or substituted, and adjacent ones transposed (optimal
    /// string alignment).
    static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
        var before = [Int](repeating: 0, count: b.count + 1)
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + [Int](repeating: 0, count: b.count)
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    current[j] = min(current[j], before[j - 2] + 1)
                }
            }
            (before, previous) = (previous, current)
        }
        return previous[b.count]
    }

    /// `runner help [SUBCOMMAND]`: the common options may come anywhere after help (they change nothing here,
    /// `runner help --redis h:6379 submit`), and --help or -h; anything else is refused as after --version: an
    /// unknown option, a common option without its value, a word after the subcommand (exit 2).
    static func help(_ arguments: [String], _ console: Console) -> Int32 {
        func refuse(_ message: String) -> Int32 {
            console.error("Error: \(message)")
            console.error("See 'runner --help'.")
            return 2
        }
        var words: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if let common = CommonOptions.all.first(where: { $0.name == argument }) {
                guard index < arguments.count else {
                    guard case .value(let valueName) = common.kind else { continue }
                    return refuse("missing value for option '\(common.name) <\(valueName)>'")
                }
                index += 1
            } else if CommonOptions.all.contains(where: { argument.hasPrefix($0.name + "=") })
                || argument == "--help" || argument == "-h"
            {
                continue
            } else if argument.hasPrefix("-") {
                return refuse("unknown option '\(UsageError.excerpt(argument))'")
            } else {
                words.append(argument)
            }
        }
        guard let name = words.first, name != "help" else {
            if words.count > 1 {
                return refuse("unexpected argument '\(UsageError.excerpt(words[1]))' after help help")
            }
            console.print(overview)
            return 0
        }
        guard let (spec, _) = subcommands.first(where: { $0.0.name == name }) else {
            return refuse(unknownSubcommand(name))
        }
        if words.count > 1 {
            return refuse("unexpected argument '\(UsageError.excerpt(words[1]))' after help \(name)")
        }
        console.print(spec.help)
        return 0
    }

    /// The process's arguments, refusing any that is not valid UTF-8 (Swift would silently replace its bytes,
    /// and a job id, path or variable would then not be what was typed).
    public static func processArguments() -> Result<[String], UsageError> {
        var arguments: [String] = []
        for index in 1..<Int(CommandLine.argc) {
            guard let raw = CommandLine.unsafeArgv[index] else { continue }
            let bytes = UnsafeBufferPointer(
                start: UnsafeRawPointer(raw).assumingMemoryBound(to: UInt8.self), count: strlen(raw))
            guard let argument = String(validating: bytes, as: UTF8.self) else {
                return .failure(UsageError("argument \(index) is not valid UTF-8", command: ""))
            }
            arguments.append(argument)
        }
        scrubPasswordsInArgv()
        return .success(arguments)
    }

    /// Overwrites, in the process's own argv memory, the password of any `redis://user:password@` argument with
    /// `*`: /proc/<pid>/cmdline shows that memory to every local user, jobs included. (RUNNER_REDIS in the
    /// environment is readable only by the runner's user.) The arguments were copied before.
    static func scrubPasswordsInArgv() {
        for index in 1..<Int(CommandLine.argc) {
            guard let raw = CommandLine.unsafeArgv[index] else { continue }
            let count = strlen(raw)
            let bytes = UnsafeMutableBufferPointer(
                start: UnsafeMutableRawPointer(raw).assumingMemoryBound(to: UInt8.self), count: count)
            guard let range = RunnerCommandLine.passwordRange(in: Array(bytes)) else { continue }
            for offset in range { bytes[offset] = UInt8(ascii: "*") }
        }
    }

    /// Where the password of a `redis://` or `rediss://` URL is, if it has one: between the first ':' after the
    /// scheme (or right after "//" for a password-only URL, `redis://:pw@`) and the last '@' before the host.
    static func passwordRange(in argument: [UInt8]) -> Range<Int>? {
        let text = String(decoding: argument, as: UTF8.self)
        guard let scheme = text.range(of: "redis://") ?? text.range(of: "rediss://") else { return nil }
        let start = text.utf8.distance(from: text.utf8.startIndex, to: scheme.upperBound.samePosition(in: text.utf8)!)
        let rest = argument[start...]
        let hostStart = rest.firstIndex(of: UInt8(ascii: "/")) ?? argument.endIndex
        guard let at = rest[..<hostStart].lastIndex(of: UInt8(ascii: "@")),
            let colon = rest[..<at].firstIndex(of: UInt8(ascii: ":")), colon + 1 < at
        else { return nil }
        return (colon + 1)..<at
    }

    /// Runs the command line and returns the exit code: 0 success, 1 failure, 2 usage error.
    /// `host` gives a profile the host's facts (probed only when a profile is chosen).
    public static func run(
        arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment,
        console: Console = .standard, host: @Sendable () async -> HostFacts = HostFacts.survey
    ) async -> Int32 {
        var arguments = RunnerCommandLine.movingCommonOptions(arguments)
        if arguments.isEmpty, environment["RUNNER_REDIS"] == nil,
            environment[ConfigurationLayers.config.environment!] == nil
        {
            console.error("Error: no Redis given: start a worker with 'runner --redis HOST:PORT' (or set RUNNER_REDIS)")
            console.error("See 'runner --help'.")
            return 2
        }
        let first = arguments.first
        switch first {
        case "--version":
            if arguments.count > 1 {
                console.error("Error: unexpected argument '\(UsageError.excerpt(arguments[1]))' after --version")
                console.error("See 'runner --help'.")
                return 2
            }
            console.print("runner \(RunnerVersion.current) (protocol v\(ProtocolVersion.current))")
            return 0
        case "-h", "--help":
            // `runner -h submit` means the help of submit.
            if arguments.count > 1, let (spec, _) = subcommands.first(where: { $0.0.name == arguments[1] }) {
                console.print(spec.help)
            } else {
                console.print(overview)
            }
            return 0
        case "help":
            return help(Array(arguments.dropFirst()), console)
        default: break
        }
        if first?.hasPrefix("-") == true, let (option, subcommand) = misplacedSubcommand(arguments) {
            let common = CommonOptions.all.map(\.name).joined(separator: " and ")
            console.error(
                "Error: '\(option)' cannot come before '\(subcommand)': only \(common) may come before a subcommand"
            )
            console.error("See 'runner --help'.")
            return 2
        }
        var chosen = subcommands[0]
        if let first, let match = subcommands.first(where: { $0.0.name == first }) {
            chosen = match
            arguments.removeFirst()
        } else if let first, !first.hasPrefix("-") {
            console.error("Error: " + unknownSubcommand(first))
            console.error("See 'runner --help'.")
            return 2
        }
        let (spec, body) = chosen
        var layered: ParsedArguments?
        do {
            var parsed = try ParsedArguments(arguments, command: spec, environment: environment)
            if parsed.flag("--help") {
                console.print(spec.help)
                return 0
            }
            layered = parsed
            if spec.options.contains(where: { $0.name == ConfigurationLayers.config.name }) {
                parsed = try await ConfigurationLayers.applying(to: parsed, host: host)
                layered = parsed
            }
            let status = try await body(parsed, console)
            // Output that never reached its reader (a full disk, a closed descriptor) is a failure, whatever the
            // command did; a reader that left (EPIPE, `| head -1`) is the normal end of a pipeline.
            if status == 0, let code = console.outputGone(), code != EPIPE {
                console.error("Error: cannot write to standard output: \(String(cString: strerror(code)))")
                return 1
            }
            return status
        } catch var error as UsageError {
            if let layered { error = ConfigurationLayers.locating(error, in: layered) }
            // The worker takes no word: one after the common options (`runner --redis h stauts`) is most likely a
            // mistyped subcommand (one typed right was dispatched to by `movingCommonOptions`).
            if spec.name == WorkerCommand.spec.name, let word = error.unexpectedArgument,
                let guess = suggestion(for: word), guess != word
            {
                error.message += "; did you mean '\(guess)'?"
            }
            console.error("Error: \(error.message)")
            // Only a pointer to the usage: the usage of some subcommands takes several lines.
            if error.pointsToHelp { console.error("See 'runner \(spec.name) --help'.") }
            return 2
        } catch let error as CommandFailure {
            console.error("Error: \(error.message)")
            return 1
        } catch let error as RedisClientError {
            console.error("Error: \(error.message)")
            return 1
        } catch let error as RedisServerError {
            console.error("Error: Redis refused the command: \(error.message)")
            return 1
        } catch let error as WorkerError {
            console.error("Error: \(error.message)")
            // A configuration Redis refuses to work with is bad input, like a bad option.
            return error.code == .invalidConfiguration ? 2 : 1
        } catch {
            console.error("Error: \(error)")
            return 1
        }
    }
}
