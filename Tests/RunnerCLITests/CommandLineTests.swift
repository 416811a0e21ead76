import RunnerCore
import RunnerProtocol
import XCTest

@testable import RunnerCLI

final class CommandLineTests: XCTestCase {
    private func run(_ arguments: [String], environment: [String: String] = [:]) async -> (Int32, String, String) {
        let output = CapturedOutput()
        let code = await RunnerCommandLine.run(arguments: arguments, environment: environment, console: output.console)
        return (code, output.standardOutput, output.standardError)
    }

    func testVersion() async {
        let (code, out, _) = await run(["--version"])
        XCTAssertEqual(code, 0)
        XCTAssertEqual(out, "runner 0.1.0 (protocol v1)\n")
    }

    func testVersionRefusesAnExtraArgument() async {
        let (code, out, err) = await run(["--version", "extra"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(out, "")
        XCTAssertEqual(err, "Error: unexpected argument 'extra' after --version\nSee 'runner --help'.\n")
    }

    /// `--version` after the common options is the version, as `--help` there is the help.
    func testVersionAfterTheCommonOptions() async {
        for leading in [["--redis", "h:1"], ["--namespace", "x"], ["--redis=h:1", "--namespace", "x"]] {
            let (code, out, err) = await run(leading + ["--version"])
            XCTAssertEqual(code, 0, "\(leading): \(err)")
            XCTAssertEqual(out, "runner 0.1.0 (protocol v1)\n", "\(leading)")
            let (extraCode, _, extraErr) = await run(leading + ["--version", "extra"])
            XCTAssertEqual(extraCode, 2, "\(leading)")
            XCTAssertEqual(extraErr, "Error: unexpected argument 'extra' after --version\nSee 'runner --help'.\n")
        }
    }

    /// `help` refuses what it cannot use, as `--version extra` is refused: exit 2, one Error line naming the word
    /// (and the pointer to --help), no help on standard output.
    func testHelpRefusesWhatItCannotUse() async {
        let cases: [([String], String)] = [
            (["help", "--redis"], "missing value for option '--redis <HOST:PORT|URL>'"),
            (["help", "--bogus", "submit"], "unknown option '--bogus'"),
            (["help", "submit", "--bogus"], "unknown option '--bogus'"),
            (["help", "submit", "extra"], "unexpected argument 'extra' after help submit"),
            (["help", "status", "extra"], "unexpected argument 'extra' after help status"),
            (["help", "nosuch"], "unknown subcommand 'nosuch'"),
            (["help", "stauts"], "unknown subcommand 'stauts'; did you mean 'status'?"),
        ]
        for (arguments, message) in cases {
            let (code, out, err) = await run(arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(out, "", "\(arguments)")
            XCTAssertEqual(err, "Error: \(message)\nSee 'runner --help'.\n", "\(arguments)")
        }
        let (code, out, _) = await run(["help", "status", "--help"])
        XCTAssertEqual(code, 0)
        XCTAssertTrue(out.hasPrefix("OVERVIEW: Show the pool"), out)
    }

    func testHelpListsSubcommands() async {
        let (code, out, _) = await run(["--help"])
        XCTAssertEqual(code, 0)
        for name in ["worker", "submit", "result", "logs", "status", "events", "retry", "dead", "control", "help"] {
            XCTAssertTrue(out.contains("\n  \(name) "), "overview lists \(name)")
        }
    }

    func testSubcommandHelpHasSections() async {
        for name in ["worker", "submit", "result", "logs", "status", "events", "retry", "dead", "control"] {
            let (code, out, _) = await run([name, "--help"])
            XCTAssertEqual(code, 0)
            XCTAssertTrue(out.hasPrefix("OVERVIEW: "), name)
            XCTAssertTrue(out.contains("\nUSAGE: runner"), name)
            XCTAssertTrue(out.contains("\nOPTIONS:\n"), name)
            XCTAssertTrue(out.contains("--redis <HOST:PORT|URL>"), name)
            XCTAssertTrue(out.contains("--namespace <NAME>"), name)
            let (helpCode, helpOut, _) = await run(["help", name])
            XCTAssertEqual(helpCode, 0)
            XCTAssertEqual(helpOut, out)
        }
    }

    /// --redis has a default (127.0.0.1:6379): no USAGE shows it as required. The worker's alone does, as bare
    /// `runner` without it (or RUNNER_REDIS) is refused.
    func testNoUsageButTheWorkersShowsRedisAsRequired() {
        XCTAssertEqual(CommonOptions.redis.defaultDescription, "127.0.0.1:6379")
        for (spec, _) in RunnerCommandLine.subcommands where spec.name != "worker" {
            XCTAssertNil(spec.usage.range(of: "(?<!\\[)--redis", options: .regularExpression), spec.usage)
        }
    }

    /// Every --help is wrapped at 100 columns: a description continues under the description column, a USAGE
    /// under the first word after the subcommand.
    func testHelpIsWrappedAtTheWidth() async {
        for arguments in RunnerCommandLine.subcommands.map({ [$0.0.name, "--help"] }) + [["--help"]] {
            let (code, out, _) = await run(arguments)
            XCTAssertEqual(code, 0)
            for line in out.split(separator: "\n") {
                XCTAssertLessThanOrEqual(line.count, HelpLayout.width, "\(arguments): \(line)")
            }
            let options = out.components(separatedBy: "\nOPTIONS:\n").last?.components(separatedBy: "\n\n").first
            for line in (options ?? "").split(separator: "\n") {
                let continued = line.hasPrefix(String(repeating: " ", count: 28)) && line.dropFirst(28).first != " "
                XCTAssertTrue(line.hasPrefix("  -") || continued, "\(arguments): \(line)")
            }
        }
        let usage = SubmitCommand.spec.help.components(separatedBy: "\n\n")[1].split(separator: "\n")
        XCTAssertGreaterThan(usage.count, 1)
        XCTAssertTrue(usage[0].hasPrefix("USAGE: runner submit [--queue Q] "), "\(usage)")
        for line in usage.dropFirst() {
            XCTAssertTrue(line.hasPrefix(String(repeating: " ", count: 21) + "["), "\(usage)")
        }
    }

    func testUnknownOptionIsAUsageError() async {
        let (code, out, err) = await run(["submit", "--bogus", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(out, "")
        XCTAssertEqual(err, "Error: unknown option '--bogus'\nSee 'runner submit --help'.\n")
    }

    /// A usage error is the `Error:` line and a pointer to --help, whatever the subcommand (the usage of some
    /// takes several lines: --help has it).
    func testAUsageErrorIsTwoShortLines() async {
        let cases: [([String], String)] = [
            (["submit", "--memory", "lots", "--", "true"], "submit"), (["submit"], "submit"),
            (["worker", "--concurrency", "0"], "worker"), (["control", "--interval", "x"], "control"),
            (["result"], "result"), (["logs", "a", "b"], "logs"), (["config"], "config"),
        ]
        for (arguments, name) in cases {
            let (code, out, err) = await run(arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(out, "")
            let lines = err.split(separator: "\n", omittingEmptySubsequences: false)
            XCTAssertEqual(lines.count, 3, "\(arguments): \(err)")
            XCTAssertTrue(lines.first?.hasPrefix("Error: ") == true, err)
            XCTAssertEqual(lines.dropFirst().first, "See 'runner \(name) --help'.", "\(arguments)")
        }
    }

    func testMissingValueAndBadValues() async {
        var (code, _, err) = await run(["worker", "--concurrency"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: missing value for option '--concurrency <N>'")
        (code, _, err) = await run(["worker", "--concurrency", "zero"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: invalid value for '--concurrency': 'zero' (expected a positive whole number)")
        // A CPU quota is in millicores: Kubernetes's `500m` and a fraction of a core say so.
        for (arguments, text) in [
            (["submit", "--cpu", "0.5", "--", "true"], "'--cpu': '0.5'"),
            (["submit", "--cpu", "500m", "--", "true"], "'--cpu': '500m'"),
            (["worker", "--max-cpu", "1.5"], "'--max-cpu': '1.5'"),
            // Whole numbers too, so the hint must say positive.
            (["submit", "--cpu", "0", "--", "true"], "'--cpu': '0'"),
            (["worker", "--max-cpu", "-1"], "'--max-cpu': '-1'"),
        ] {
            (code, _, err) = await run(arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(
                err.split(separator: "\n").first.map(String.init),
                "Error: invalid value for \(text) (millicores, a positive whole number: 500 is half a core)")
        }
        (code, _, err) = await run(["worker", "--lease-ttl", "soon"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: invalid duration for '--lease-ttl': 'soon' (write 30s, 500ms, 2m, 1h30m, 7d or a number of seconds)"
        )
        (code, _, err) = await run(["status", "--redis", "redis://h:notaport"])
        XCTAssertEqual(code, 2)
        XCTAssertTrue(err.hasPrefix("Error: invalid value for '--redis': "), err)
        (code, _, err) = await run(["status", "--namespace", "a:b"])
        XCTAssertEqual(code, 2)
        XCTAssertTrue(err.hasPrefix("Error: invalid value for '--namespace': 'a:b'"), err)
        for options in [["--interval", "x"], ["--once"], ["--events", "3"]] {
            (code, _, err) = await run(["status", "--redis", "127.0.0.1:1"] + options)
            XCTAssertEqual(code, 2, "\(options)")
            XCTAssertEqual(err.split(separator: "\n").first.map(String.init), "Error: \(options[0]) needs --watch")
        }
        // --events is refused with --json wherever it comes, also after another live-view option.
        for options in [["--events", "3"], ["--once", "--events", "3"], ["--interval", "2s", "--events", "3"]] {
            (code, _, err) = await run(["status", "--redis", "127.0.0.1:1", "--watch", "--json"] + options)
            XCTAssertEqual(code, 2, "\(options): \(err)")
            XCTAssertEqual(
                err.split(separator: "\n").first.map(String.init), "Error: --events cannot be used with --json",
                "\(options)")
        }
        // `--events 0` is accepted (no events pane): the command gets as far as Redis, which is not there.
        (code, _, err) = await run(["top", "--redis", "127.0.0.1:1", "--events", "0", "--once"])
        XCTAssertEqual(code, 1, err)
        XCTAssertTrue(err.hasPrefix("Error: cannot reach Redis at 127.0.0.1:1: "), err)
        (code, _, err) = await run(["top", "--events", "-1"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: invalid value for '--events': '-1' (expected a whole number, 0 for no events pane)")
        (code, _, err) = await run(["frobnicate"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err, "Error: unknown subcommand 'frobnicate'\nSee 'runner --help'.\n")
        // A mistyping of one subcommand (within two edits, nearer than any other) or the start of only one names it;
        // one as near to two, or the start of several, names none.
        let guesses: [(String, String)] = [
            ("stauts", "; did you mean 'status'?"), ("statsu", "; did you mean 'status'?"),
            ("drian", "; did you mean 'drain'?"), ("resutl", "; did you mean 'result'?"),
            ("wroker", "; did you mean 'worker'?"), ("Submit", "; did you mean 'submit'?"),
            ("mig", "; did you mean 'migrate'?"), ("hepl", "; did you mean 'help'?"), ("res", ""), ("xyz", ""),
        ]
        for (typed, guess) in guesses {
            (code, _, err) = await run([typed])
            XCTAssertEqual(code, 2, typed)
            XCTAssertEqual(err, "Error: unknown subcommand '\(typed)'\(guess)\nSee 'runner --help'.\n", typed)
        }
        (code, _, err) = await run(["submit", "--shell", "true", "--", "echo"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: give either --shell 'SCRIPT' or a command after --, not both (quote the whole script: --shell 'echo hi')"
        )
        (code, _, err) = await run(["submit"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: missing command: give CMD [ARG...] after -- or --shell 'SCRIPT'")
        (code, _, err) = await run(["submit", "--env", "NOEQUALS", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: invalid value for '--env': 'NOEQUALS' (expected KEY=VALUE)")
        (code, _, err) = await run(["result"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: missing job id")
        (code, _, err) = await run(["result", "a", "b"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: unexpected argument 'b'")
    }

    /// A bad value is quoted with its control characters escaped and cut at 80 characters, wherever it came from:
    /// before, `--concurrency` from a flag, a variable or a config file, durations, KEY=VALUE options, labels,
    /// profiles, `--secret-env`, `--metrics-listen` and `--run-as` were quoted raw, so a NUL or an escape sequence went to the terminal and a long value made a long
    /// error (found by breaker17).
    /// `submit --env` and `--label` given one key twice: refused, as a spec's duplicate key is (the last won).
    func testAKeyGivenTwiceToSubmitIsRefused() async {
        for option in ["--env", "--label"] {
            let (code, out, err) = await run(["submit", option, "a=1", option, "a=2", "--", "true"])
            XCTAssertEqual(code, 2, err)
            XCTAssertEqual(out, "")
            XCTAssertTrue(err.hasPrefix("Error: invalid value for '\(option)': 'a' is given twice\n"), err)
        }
    }

    func testBadValuesAreQuotedWithControlCharactersEscaped() async throws {
        let cases: [([String], [String: String], String)] = [
            (
                ["worker", "--concurrency", "2\u{1B}[31m"], [:],
                "Error: invalid value for '--concurrency': '2\\u{1B}[31m' (expected a positive whole number)"
            ),
            (
                ["config", "--print"], ["RUNNER_CONCURRENCY": "2\u{0}"],
                "Error: invalid value for RUNNER_CONCURRENCY: '2\\0' (expected a positive whole number)"
            ),
            (
                ["worker", "--lease-ttl", "soon\u{7}"], [:],
                "Error: invalid duration for '--lease-ttl': 'soon\\u{07}' (write 30s, 500ms, 2m, 1h30m, 7d or a "
                    + "number of seconds)"
            ),
            (
                ["submit", "--env", "\u{1B}]0;title\u{7}", "--", "true"], [:],
                "Error: invalid value for '--env': '\\u{1B}]0;title\\u{07}' (expected KEY=VALUE)"
            ),
            (
                ["config", "--print", "--profile", "dev\r"], [:],
                "Error: invalid value for '--profile': 'dev\\r' (choose development, production, high-performance)"
            ),
            (
                ["config", "--print"], ["RUNNER_NO_REAPER": "yes\n"],
                "Error: invalid value for RUNNER_NO_REAPER: 'yes\\n' (expected 1, true, yes, on, 0, false, no or off)"
            ),
            (
                ["config", "--print", "--label", "x\u{1B}y"], [:],
                "Error: invalid value for '--label': 'x\\u{1b}y' is not KEY=VALUE"
            ),
            (
                ["submit", "--require", "k\u{1B}=v", "--", "true"], [:],
                "Error: invalid value for '--require': label key 'k\\u{1b}' may hold only letters, digits, '.', '_', "
                    + "'-' and '/'"
            ),
            (
                ["submit", "--env", "A=1", "--secret-env", "x\u{1B}y", "--", "true"], [:],
                "Error: --secret-env x\\u{1B}y names no --env variable"
            ),
            (
                ["config", "--print", "--metrics-listen", "x\u{1B}y"], [:],
                "Error: invalid value for '--metrics-listen': invalid listen address 'x\\u{1B}y': expected HOST:PORT"
            ),
            (
                // Not a number at its end (all digits is a number too large, said so with the same excerpt).
                ["worker", "--concurrency", String(repeating: "9", count: 99) + "x"], [:],
                "Error: invalid value for '--concurrency': '\(String(repeating: "9", count: 80))… (100 bytes)' "
                    + "(expected a positive whole number)"
            ),
        ]
        for (arguments, environment, expected) in cases {
            let (code, _, err) = await run(arguments, environment: environment)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(err.split(separator: "\n").first.map(String.init), expected, "\(arguments)")
            XCTAssertFalse(
                err.unicodeScalars.contains { $0.properties.generalCategory == .control && $0 != "\n" },
                "\(arguments): \(err.debugDescription)")
        }
    }

    /// A duration of 10 years or more is refused for its length, not with the hint on how to write one, which
    /// `3650d` follows (found by breaker17).
    func testDurationsOfTenYearsOrMoreAreRefusedForTheirLength() async {
        for text in ["3650d", "87600h", "315360000", "3649d24h"] {
            let (code, _, err) = await run(["worker", "--lease-ttl", text])
            XCTAssertEqual(code, 2, text)
            XCTAssertEqual(
                err.split(separator: "\n").first.map(String.init),
                "Error: invalid duration for '--lease-ttl': '\(text)' is too long (it must be under 10 years, 3650d)")
        }
        let (code, out, _) = await run(["config", "--print", "--lease-ttl", "3649d", "--redis", "127.0.0.1:1"])
        XCTAssertEqual(code, 0)
        XCTAssertTrue(out.contains("3649d"), out)
        // What is not a duration keeps the hint.
        let (_, _, err) = await run(["worker", "--lease-ttl", "1e10"])
        XCTAssertEqual(
            err.split(separator: "\n").first.map(String.init),
            "Error: invalid duration for '--lease-ttl': '1e10' (write 30s, 500ms, 2m, 1h30m, 7d or a number of seconds)"
        )
    }

    /// Each submit (options, then `-- true`) is a usage error with this message, found before Redis is reached.
    private func assertSubmitRefuses(_ cases: [([String], String)], line: UInt = #line) async {
        for (options, message) in cases {
            // A Redis that is not there: without the check, the submit would fail to connect (exit 1).
            let (code, out, err) = await run(["submit", "--redis", "127.0.0.1:1"] + options + ["--", "true"])
            XCTAssertEqual(code, 2, "\(options)", line: line)
            XCTAssertEqual(out, "", line: line)
            XCTAssertEqual(err, "Error: \(message)\nSee 'runner submit --help'.\n", "\(options)", line: line)
        }
    }

    /// A limit outside what a job spec accepts is refused naming the flag and the range in the flag's units, with
    /// or without --isolation.
    func testSubmitRefusesALimitOutOfRangeNamingTheFlag() async {
        let cases: [([String], String)] = [
            (
                ["--memory", "64", "--isolation", "cgroup"],
                "invalid value for '--memory': '64' is below 1M (write 64M, 1G or a number of bytes)"
            ),
            (
                ["--memory", "1023K"],
                "invalid value for '--memory': '1023K' is below 1M (write 64M, 1G or a number of bytes)"
            ),
            (
                ["--memory", "1025T", "--isolation", "cgroup"],
                "invalid value for '--memory': '1025T' is above 1024T (write 64M, 1G or a number of bytes)"
            ),
            (
                ["--pids", "4194305", "--isolation", "cgroup"],
                "invalid value for '--pids': '4194305' is above 4194304 (from 1 to 4194304)"
            ),
            (
                ["--cpu", "5", "--isolation", "cgroup"],
                "invalid value for '--cpu': '5' is below 10 (from 10 to 1000000 millicores)"
            ),
            (
                ["--cpu", "1000001"],
                "invalid value for '--cpu': '1000001' is above 1000000 (from 10 to 1000000 millicores)"
            ),
        ]
        await assertSubmitRefuses(cases)
        XCTAssertEqual(ByteSizeParser.text(1 << 20), "1M")
        XCTAssertEqual(ByteSizeParser.text(3072), "3K")
        XCTAssertEqual(ByteSizeParser.text(1000), "1000")
    }

    /// What the named isolation level cannot enforce is refused at submit, as the runner would refuse it, naming
    /// the option and the level.
    func testSubmitRefusesWhatTheIsolationLevelCannotEnforce() async {
        let cases: [([String], String)] = [
            (
                ["--memory", "64M", "--isolation", "process_group"],
                "--memory needs --isolation cgroup, not process_group"
            ),
            (["--pids", "10", "--isolation", "namespace"], "--pids needs --isolation cgroup, not namespace"),
            (["--cpu", "500", "--isolation", "none"], "--cpu needs --isolation cgroup, not none"),
            (
                ["--network", "none", "--isolation", "process_group"],
                "--network none needs --isolation namespace or cgroup, not process_group"
            ),
            (
                ["--network", "none", "--memory", "64M", "--isolation", "namespace"],
                "--memory needs --isolation cgroup, not namespace"
            ),
        ]
        await assertSubmitRefuses(cases)
        // What the level enforces passes the check (and then fails to reach a Redis that is not there).
        let (code, _, err) = await run(
            [
                "submit", "--redis", "127.0.0.1:1", "--isolation", "cgroup", "--memory", "64M", "--network", "none",
                "--", "true",
            ])
        XCTAssertEqual(code, 1, err)
    }

    func testAnOptionNeverTakesDoubleDashAsItsValue() async {
        let (code, _, err) = await run(["submit", "--id", "--", "echo", "hi"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: missing value for option '--id <ID>'")
    }

    func testBareRunnerWithoutRedisIsAUsageError() async {
        let (code, out, err) = await run([])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(out, "")
        XCTAssertEqual(
            err,
            "Error: no Redis given: start a worker with 'runner --redis HOST:PORT' (or set RUNNER_REDIS)\nSee 'runner --help'.\n"
        )
        let (helpCode, helpOut, _) = await run(["help", "help"])
        XCTAssertEqual(helpCode, 0)
        XCTAssertTrue(helpOut.hasPrefix("OVERVIEW: NativeRunner"))
    }

    func testCommonOptionsMayComeBeforeTheSubcommand() {
        XCTAssertEqual(
            RunnerCommandLine.movingCommonOptions(["--redis", "h:1", "--namespace=x", "submit", "--", "echo"]),
            ["submit", "--redis", "h:1", "--namespace=x", "--", "echo"])
        // Worker mode: no subcommand follows, nothing moves.
        XCTAssertEqual(
            RunnerCommandLine.movingCommonOptions(["--redis", "h:1", "--name", "r"]), ["--redis", "h:1", "--name", "r"])
    }

    /// `help` takes the common options before it, like every other subcommand.
    func testHelpAfterTheCommonOptionsShowsTheSubcommandsHelp() async {
        let (_, expected, _) = await run(["help", "submit"])
        for leading in [["--redis", "127.0.0.1:6379"], ["--redis=127.0.0.1:6379", "--namespace", "x"]] {
            let (code, out, err) = await run(leading + ["help", "submit"])
            XCTAssertEqual(code, 0, "\(leading): \(err)")
            XCTAssertEqual(err, "", "\(leading)")
            XCTAssertEqual(out, expected, "\(leading)")
        }
        // And after it, as every other subcommand takes them (`runner status --redis h`): the overview was shown.
        for following in [["--redis", "127.0.0.1:6379"], ["--namespace=x", "--redis", "h:1"]] {
            let (code, out, err) = await run(["help"] + following + ["submit"])
            XCTAssertEqual(code, 0, "\(following): \(err)")
            XCTAssertEqual(out, expected, "\(following)")
        }
    }

    /// Only the common options may come before a subcommand; any other is refused naming it and the subcommand.
    func testAnOptionOtherThanTheCommonOnesBeforeASubcommandIsNamed() async {
        let cases: [([String], String)] = [
            (["--concurrency", "3", "status"], "'--concurrency' cannot come before 'status'"),
            (["--redis", "h:1", "--json", "dead"], "'--json' cannot come before 'dead'"),
            (
                ["--no-reaper", "--namespace=x", "help", "submit"],
                "'--no-reaper' cannot come before 'help'"
            ),
            (["--name=r", "submit", "--", "true"], "'--name' cannot come before 'submit'"),
        ]
        for (arguments, message) in cases {
            let (code, out, err) = await run(arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(out, "")
            XCTAssertEqual(
                err,
                "Error: \(message): only --redis and --namespace may come before a subcommand\nSee 'runner --help'.\n")
        }
        // A value that is a subcommand's name is a value: the worker named "status" is not refused for it.
        XCTAssertNil(RunnerCommandLine.misplacedSubcommand(["--name", "status", "--concurrency", "2"]))
        XCTAssertNil(RunnerCommandLine.misplacedSubcommand(["--redis", "h:1", "--no-reaper"]))
    }

    /// The worker takes no word: a stray one after the common options is refused (exit 2, before Redis is reached),
    /// with a guess when it is a mistyping of a subcommand. A subcommand there, or an option's value, is not stray.
    func testAStrayWordInWorkerModeIsRefusedWithAGuess() async throws {
        let cases: [([String], String)] = [
            (["--redis", "127.0.0.1:1", "stauts"], "unexpected argument 'stauts'; did you mean 'status'?"),
            (
                ["--redis=127.0.0.1:1", "--namespace", "x", "wroker"],
                "unexpected argument 'wroker'; did you mean 'worker'?"
            ),
            (
                ["--redis", "127.0.0.1:1", "--name", "r1", "drian"],
                "unexpected argument 'drian'; did you mean 'drain'?"
            ),
            (["worker", "--redis", "127.0.0.1:1", "hepl"], "unexpected argument 'hepl'; did you mean 'help'?"),
            (["--redis", "127.0.0.1:1", "xyz"], "unexpected argument 'xyz'"),
            // After `worker`, a subcommand's own name is only a word too many: no guess that it is itself.
            (["worker", "--redis", "127.0.0.1:1", "status"], "unexpected argument 'status'"),
        ]
        for (arguments, message) in cases {
            let (code, out, err) = await run(arguments)
            XCTAssertEqual(code, 2, "\(arguments)")
            XCTAssertEqual(out, "", "\(arguments)")
            XCTAssertEqual(err, "Error: \(message)\nSee 'runner worker --help'.\n", "\(arguments)")
        }
        // A subcommand after the common options is that subcommand (status, which finds no Redis there).
        let (code, _, err) = await run(["--redis", "127.0.0.1:1", "status"])
        XCTAssertEqual(code, 1, err)
        XCTAssertTrue(err.hasPrefix("Error: cannot reach Redis at 127.0.0.1:1: "), err)
        // A value that is a mistyped subcommand's name is a value: the worker named "stauts".
        let parsed = try ParsedArguments(
            ["--redis", "127.0.0.1:1", "--name", "stauts"], command: WorkerCommand.spec, environment: [:])
        XCTAssertEqual(parsed.value("--name"), "stauts")
        XCTAssertEqual(parsed.positionals, [])
    }

    func testRecoveryOptionsAreValidated() async {
        var (code, _, err) = await run(["submit", "--backoff", "1s", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: --backoff and --backoff-max need --max-attempts above 1")
        (code, _, err) = await run([
            "submit", "--max-attempts", "2", "--backoff", "5s", "--backoff-max", "1s", "--", "true",
        ])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: --backoff-max must be at least --backoff")
        (code, _, err) = await run(["submit", "--max-attempts", "2", "--backoff", "0", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: invalid value for '--backoff': it must be at least 1ms")
        (code, _, err) = await run(["submit", "--idempotency-key", "a b", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            #"Error: invalid value for '--idempotency-key': idempotency key "a b" contains white space or control characters"#
        )
        (code, _, err) = await run(["control", "--interval", "10ms"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, "Error: invalid value for '--interval': it must be at least 100ms")
        (code, _, err) = await run(["worker", "--reschedule-limit", "0"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: invalid value for '--reschedule-limit': '0' (expected a positive whole number)")
        (code, _, err) = await run(["retry"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: missing job id")
    }

    /// A value too short to be masked: refused when --secret-env asks for it to be masked, named on stderr when
    /// only its name (*_PASSWORD) makes it secret; 4 bytes are masked and pass without a word.
    func testASecretTooShortToBeMaskedIsRefusedOrNamed() async {
        var (code, _, err) = await run(["submit", "--env", "PW=abc", "--secret-env", "PW", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "Error: --secret-env PW: its value is too short to be masked (at least 4 bytes)")
        // Nothing listens on port 1: the warning comes before the connection is tried.
        (code, _, err) = await run(["submit", "--redis", "127.0.0.1:1", "--env", "DB_PASSWORD=abc", "--", "true"])
        XCTAssertEqual(code, 1)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            "runner: warning: --env DB_PASSWORD: a value shorter than 4 bytes is not masked")
        (code, _, err) = await run([
            "submit", "--redis", "127.0.0.1:1", "--env", "DB_PASSWORD=abcd", "--env", "PW=abcd", "--secret-env", "PW",
            "--", "true",
        ])
        XCTAssertEqual(code, 1)
        XCTAssertFalse(err.contains("warning"), err)
        XCTAssertTrue(err.hasPrefix("Error: cannot reach Redis at 127.0.0.1:1"), err)
    }

    func testWaitTimeoutNeedsWaitAndShellScriptMustNotBeEmpty() async {
        var (code, _, err) = await run(["submit", "--wait-timeout", "1s", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: --wait-timeout needs --wait")
        // 0 would give up before anything was read, for submit and the pool commands alike.
        let zeroWaits = [
            ["submit", "--wait", "--wait-timeout", "0", "--", "true"], ["cancel", "j", "--wait", "--wait-timeout", "0"],
        ]
        for command in zeroWaits {
            (code, _, err) = await run(command)
            XCTAssertEqual(code, 2, "\(command)")
            XCTAssertEqual(
                err.split(separator: "\n").first, "Error: invalid value for '--wait-timeout': it must be at least 1ms")
        }
        (code, _, err) = await run(["submit", "--shell", ""])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: invalid job: spec.shell is empty")
        (code, _, err) = await run(["submit", "--cwd", "", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(err.split(separator: "\n").first, "Error: invalid job: spec.cwd is empty")
        (code, _, err) = await run(["submit", "--env", "A B=c", "--", "true"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first, #"Error: invalid job: spec.env has an invalid variable name "A B""#)
        (code, _, err) = await run(["result", "a b"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            #"Error: invalid job id: job id "a b" contains white space or control characters"#)
        (code, _, err) = await run(["result", "esc\u{1b}[31mred"])
        XCTAssertEqual(code, 2)
        XCTAssertEqual(
            err.split(separator: "\n").first,
            #"Error: invalid job id: job id "esc\u{1b}[31mred" contains white space or control characters"#)
    }

    func testUnreachableRedisIsOneClearLine() async throws {
        let (code, out, err) = await run(["status", "--redis", "127.0.0.1:1"])
        XCTAssertEqual(code, 1)
        XCTAssertEqual(out, "")
        XCTAssertEqual(err.split(separator: "\n").count, 1)
        XCTAssertTrue(err.hasPrefix("Error: cannot reach Redis at 127.0.0.1:1: "), err)
    }

    func testEnvironmentFallbackAndFlagPrecedence() throws {
        let spec = CommandSpec(
            name: "t", abstract: "", usage: "",
            options: [
                OptionSpec("--redis", .value("X"), help: "", environment: "RUNNER_REDIS"),
                OptionSpec("--queue", .repeated("Q"), help: "", environment: "RUNNER_QUEUES"),
            ])
        var parsed = try ParsedArguments(
            [], command: spec, environment: ["RUNNER_REDIS": "h:1", "RUNNER_QUEUES": "a, b"])
        XCTAssertEqual(parsed.value("--redis"), "h:1")
        XCTAssertEqual(parsed.sources["--redis"], "RUNNER_REDIS")
        XCTAssertEqual(parsed.all("--queue"), ["a", "b"])
        parsed = try ParsedArguments(
            ["--redis=h:2", "--queue", "x", "--queue", "y"], command: spec, environment: ["RUNNER_REDIS": "h:1"])
        XCTAssertEqual(parsed.value("--redis"), "h:2")
        XCTAssertEqual(parsed.sources["--redis"], "flag")
        XCTAssertEqual(parsed.all("--queue"), ["x", "y"])
    }

    func testSignalsAreNamedAlike() {
        XCTAssertEqual(
            [SIGTERM, SIGINT, SIGHUP, SIGUSR1].map(SignalObserver.name), ["SIGTERM", "SIGINT", "SIGHUP", "signal 10"])
    }

    func testCommandAfterDoubleDashKeepsItsOwnFlags() throws {
        let parsed = try ParsedArguments(
            ["--wait", "--", "ls", "--all", "-l"], command: SubmitCommandSpec.spec, environment: [:])
        XCTAssertTrue(parsed.flag("--wait"))
        XCTAssertEqual(parsed.commandLine, ["ls", "--all", "-l"])
    }
}

/// Access to the submit command's spec through the public help path.
enum SubmitCommandSpec {
    static var spec: CommandSpec {
        CommandSpec(
            name: "submit", abstract: "", usage: "",
            options: [OptionSpec("--wait", .flag, help: "")], acceptsCommand: true)
    }
}

final class UnitParsingTests: XCTestCase {
    func testDurations() {
        XCTAssertEqual(DurationParser.parse("30s"), .seconds(30))
        XCTAssertEqual(DurationParser.parse("500ms"), .milliseconds(500))
        XCTAssertEqual(DurationParser.parse("2m"), .seconds(120))
        XCTAssertEqual(DurationParser.parse("1h"), .seconds(3600))
        XCTAssertEqual(DurationParser.parse("1.5s"), .milliseconds(1500))
        XCTAssertEqual(DurationParser.parse("15"), .seconds(15))
        XCTAssertEqual(DurationParser.parse("7d"), .seconds(7 * 86400))
        XCTAssertEqual(DurationParser.parse("1h30m"), .seconds(5400))
        XCTAssertEqual(DurationParser.parse("1m30s"), .seconds(90))
        XCTAssertNil(DurationParser.parse("1x"))
        XCTAssertNil(DurationParser.parse("1h30"))
        XCTAssertEqual(DurationParser.parse("0"), .zero)
        XCTAssertNil(DurationParser.parse(""))
        XCTAssertNil(DurationParser.parse("-1s"))
        XCTAssertNil(DurationParser.parse("5 minutes"))
        XCTAssertNil(DurationParser.parse("s"))
        XCTAssertNil(DurationParser.parse("1e3"))
    }

    func testByteSizes() {
        XCTAssertEqual(ByteSizeParser.parse("1048576"), 1 << 20)
        XCTAssertEqual(ByteSizeParser.parse("64K"), 64 << 10)
        XCTAssertEqual(ByteSizeParser.parse("64M"), 64 << 20)
        XCTAssertEqual(ByteSizeParser.parse("1G"), 1 << 30)
        XCTAssertEqual(ByteSizeParser.parse("16MiB"), 16 << 20)
        XCTAssertNil(ByteSizeParser.parse("lots"))
        XCTAssertNil(ByteSizeParser.parse("-1"))
    }
}

final class EventRenderingTests: XCTestCase {
    /// A `ts` that makes no date of the years 1970 to 9999 (a hand-XADDed event) is printed as written by `runner
    /// events` and `top`, not as a strange date (`-292275055-05-16T16:47:05.-808Z`, or 1970 for `soon`).
    func testATimestampOutsideTheYears1970To9999IsPrintedAsWritten() {
        func event(_ ts: String) -> PoolEvent {
            PoolEvent(
                streamId: "1-0", type: "job.lost", timestampMs: Int(ts) ?? 0, runner: "", job: "j", data: "{}",
                fields: ["type": "job.lost", "ts": ts, "job": "j"])
        }
        let cases = [
            ("0", "1970-01-01T00:00:00.000Z", "00:00:00.000"),
            ("1796382123773", "2026-12-04T11:02:03.773Z", "11:02:03.773"),
            ("253402300799999", "9999-12-31T23:59:59.999Z", "23:59:59.999"),
            ("253402300800000", "253402300800000", "253402300800000"),
            ("-1", "-1", "-1"),
            ("-9223372036854775808", "-9223372036854775808", "-9223372036854775808"),
            ("9223372036854775807", "9223372036854775807", "9223372036854775807"),
            ("99999999999999999999", "99999999999999999999", "99999999999999999999"),
            ("soon", "soon", "soon"),
            ("\u{1B}[31m", "\\u{1b}[31m", "\\u{1b}[31m"),
            ("", "-", "-"),
        ]
        let width = EventType.allCases.map(\.rawValue.count).max() ?? 0
        let type = "job.lost".padding(toLength: width, withPad: " ", startingAt: 0)
        for (ts, line, timeOfDay) in cases {
            XCTAssertEqual(EventsCommand.render(event(ts), json: false), "\(line) \(type) job=j", ts)
            XCTAssertEqual(
                TopView.eventLines([event(ts)]).first?.trimmingCharacters(in: .whitespaces),
                "\(timeOfDay)  job.lost  job=j", ts)
        }
        XCTAssertEqual(formatTimestamp(Int.min), "-9223372036854775808")
        XCTAssertEqual(formatTimestamp(Int.max), "9223372036854775807")
    }

    func testTextLinesShowTheWholeTypeAlignedToTheLongest() {
        func event(_ type: String) -> PoolEvent {
            PoolEvent(streamId: "1-0", type: type, timestampMs: 0, runner: "r", job: "j", data: "{}", fields: [:])
        }
        let longest = EventType.allCases.map(\.rawValue).max { $0.count < $1.count }!
        func padded(_ type: String) -> String { type + String(repeating: " ", count: longest.count - type.count) }
        XCTAssertEqual(
            EventsCommand.render(event(longest), json: false), "1970-01-01T00:00:00.000Z \(longest) runner=r job=j")
        XCTAssertEqual(
            EventsCommand.render(event("job.lost"), json: false),
            "1970-01-01T00:00:00.000Z \(padded("job.lost")) runner=r job=j")
        XCTAssertEqual(
            EventsCommand.render(event("job.some_future_type_longer_than_all"), json: false),
            "1970-01-01T00:00:00.000Z job.some_future_type_longer_than_all runner=r job=j")
    }

    /// Anyone may XADD to the events stream: an escape sequence or a line break in an event's type, runner, job or
    /// data is shown escaped in the text line, not sent to the terminal raw.
    func testControlCharactersInAnEventAreEscapedInTheTextLine() {
        let event = PoolEvent(
            streamId: "1-0", type: "job.x\u{1b}[31m", timestampMs: 0, runner: "r\u{1b}[32m", job: "j\r\n",
            data: "{\"a\":\"\u{1b}[33m\"}", fields: [:])
        let line = EventsCommand.render(event, json: false)
        XCTAssertFalse(line.unicodeScalars.contains { $0.value < 0x20 }, line)
        XCTAssertTrue(
            line.hasSuffix(#"runner=r\u{1b}[32m job=j\u{d}\u{a} {"a":"\u{1b}[33m"}"#), line)
        XCTAssertTrue(line.contains(#"job.x\u{1b}[31m"#), line)
    }
}

final class DeadLetterRenderingTests: XCTestCase {
    /// A long reason is cut at a word, with an ellipsis, in the text line; --json keeps it whole.
    func testALongReasonIsCutAtAWordInTextAndKeptWholeInJSON() throws {
        let reason =
            "job's peak memory of 25276071936 bytes is above the runner's --max-memory of 17179869184 bytes; "
            + "lower --memory or raise the ceiling"
        let fields = ["id": Array("big-1".utf8), "attempt": Array("2".utf8), "reason": Array(reason.utf8)]
        let line = DeadCommand.render(id: "1796313600000-0", fields: fields, jobState: nil, json: false)
        XCTAssertEqual(
            line,
            "2026-12-03T16:00:00.000Z big-1 attempt=2: "
                + "job's peak memory of 25276071936 bytes is above the runner's --max-memory of…")
        let json = DeadCommand.render(id: "1796313600000-0", fields: fields, jobState: nil, json: true)
        XCTAssertEqual(try JSONValue(parsing: Array(json.utf8))["reason"], .string(reason))
        // A word longer than the limit is cut inside it; control characters stay escaped.
        XCTAssertEqual(JobEntry.printable(String(repeating: "x", count: 100)), String(repeating: "x", count: 79) + "…")
        XCTAssertEqual(JobEntry.printable("a\u{1b}b"), "a\\u{1b}b")
    }

    /// The job's state now (a record's `state`, which anyone can HSET) is quoted as the id and reason are: an escape
    /// sequence or a line break in it went to the terminal raw.
    func testTheJobsStateNowIsQuotedWithControlCharactersEscaped() {
        let fields = ["id": Array("dj-1".utf8), "attempt": Array("1".utf8), "reason": Array("test".utf8)]
        let line = DeadCommand.render(
            id: "1796313600000-0", fields: fields, jobState: "\u{1b}[31mred\nnext", json: false)
        XCTAssertEqual(line, "2026-12-03T16:00:00.000Z dj-1 attempt=1: test (now \\u{1b}[31mred\\u{a}next)")
    }
}

final class SecretHandlingTests: XCTestCase {
    func testPasswordRangeInRedisURLs() {
        func masked(_ text: String) -> String {
            var bytes = Array(text.utf8)
            if let range = RunnerCommandLine.passwordRange(in: bytes) {
                for i in range { bytes[i] = UInt8(ascii: "*") }
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        XCTAssertEqual(masked("redis://:pw@127.0.0.1:6379"), "redis://:**@127.0.0.1:6379")
        XCTAssertEqual(masked("redis://user:p@ss@host:1/2"), "redis://user:****@host:1/2")
        XCTAssertEqual(masked("--redis=rediss://u:secret@h"), "--redis=rediss://u:******@h")
        XCTAssertEqual(masked("redis://host:6379/0"), "redis://host:6379/0")
        XCTAssertEqual(masked("redis://user@host"), "redis://user@host")
        XCTAssertEqual(masked("echo hi"), "echo hi")
    }

    func testResultViewMasksSecretVariablesAndTypesAccountingFields() throws {
        let spec =
            #"{"argv":["x"],"env":{"API_TOKEN":"t0ken-value","MINE":"mine-value","PLAIN":"shown"},"secret_env":["MINE"]}"#
        let view = ResultView(fields: [
            "spec": Array(spec.utf8), "peak_memory_bytes": Array("4096".utf8), "processes": Array("3".utf8),
            "limits": Array(#"{"pids":5}"#.utf8),
        ])
        let json = view.json(id: "j")
        guard case .object(let object) = json, case .object(let shown)? = object["spec"],
            case .object(let env)? = shown["env"]
        else { return XCTFail("\(json)") }
        XCTAssertEqual(env["API_TOKEN"], .string("***"))
        XCTAssertEqual(env["MINE"], .string("***"))
        XCTAssertEqual(env["PLAIN"], .string("shown"))
        XCTAssertEqual(object["peak_memory_bytes"], .int(4096))
        XCTAssertEqual(object["processes"], .int(3))
        XCTAssertEqual(object["limits"], .object(["pids": .int(5)]))
    }
}
