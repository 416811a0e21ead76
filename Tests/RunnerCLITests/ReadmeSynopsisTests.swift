import Foundation
import RunnerProtocol
import XCTest

@testable import RunnerCLI

/// The README's CLI synopsis and the subcommands' own option tables (what --help prints) name the same options.
final class ReadmeSynopsisTests: XCTestCase {
    private static let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("README.md")

    /// The synopsis block of "## The CLI", cut at each `runner ` into the part each subcommand has
    /// (`runner [worker]` is the worker's; `(also: runner status --watch)` is status's).
    private func synopsis() throws -> [String: String] {
        let text = try String(contentsOf: ReadmeSynopsisTests.readme, encoding: .utf8)
        let section = try XCTUnwrap(text.range(of: "## The CLI\n\n```\n"))
        let block = text[section.upperBound...]
        let end = try XCTUnwrap(block.range(of: "\n```"))
        var parts: [String: String] = [:]
        for piece in block[..<end.lowerBound].components(separatedBy: "runner ").dropFirst() {
            let name = piece.hasPrefix("[worker]") ? "worker" : String(piece.prefix { $0 != " " && $0 != "\n" })
            parts[name, default: ""] += " " + piece
        }
        return parts
    }

    /// Help text as it reads, not as it is wrapped: each run of white space (a line break and the next line's
    /// indentation) one space.
    private func readable(_ help: String) -> String {
        help.split(whereSeparator: \.isWhitespace).joined(separator: " ")
    }

    /// Every exit code `submit --wait` can give (`ResultView.exitStatus`, and the SIGINT of Ctrl-C) is listed in the
    /// README and in `submit --help`; `logs --help` says --follow also ends when its reader goes away.
    func testExitCodesOfSubmitWaitAndTheEndOfLogsFollowAreDocumented() throws {
        let text = try String(contentsOf: ReadmeSynopsisTests.readme, encoding: .utf8)
        let bullet = try XCTUnwrap(text.components(separatedBy: "\n- ").first { $0.hasPrefix("`submit --wait`") })
        let help = readable(SubmitCommand.spec.help)
        for code in ["127", "126", "124", "128\\+N", "130"] {
            // The code as a number of its own (not 127.0.0.1).
            let pattern = "(?<![0-9.])\(code)(?![0-9.][0-9])"
            XCTAssertNotNil(bullet.range(of: pattern, options: .regularExpression), "README's --wait lacks \(code)")
            XCTAssertNotNil(help.range(of: pattern, options: .regularExpression), "submit --help lacks \(code)")
        }
        let logs = readable(LogsCommand.spec.help)
        XCTAssertTrue(logs.contains("until the job ends or the reader goes away"), logs)
        XCTAssertTrue(logs.contains("within a second while the job is silent"), logs)
    }

    /// `status --help` explains every state a runner's record can hold (RunnerState), each as `NAME (meaning`.
    func testStatusHelpExplainsEveryRunnerState() {
        let help = readable(StatusCommand.spec.help)
        for state in RunnerState.allCases {
            XCTAssertTrue(help.contains(" \(state.rawValue) ("), "status --help does not explain \(state.rawValue)")
        }
    }

    func testTheSynopsisNamesEveryOptionOfEverySubcommand() throws {
        let parts = try synopsis()
        let common = Set(CommonOptions.all.map(\.name) + ["--help"])
        for (spec, _) in RunnerCommandLine.subcommands {
            let part = try XCTUnwrap(parts[spec.name], "the synopsis has no 'runner \(spec.name)'")
            // config takes the worker's options: its synopsis says so ("[worker options]").
            let own = spec.name == "config" ? ConfigCommand.printOptions : spec.options
            for option in own where !common.contains(option.name) {
                let named = part.range(of: option.name + "(?![a-z-])", options: .regularExpression) != nil
                XCTAssertTrue(named, "README synopsis of 'runner \(spec.name)' lacks \(option.name)")
            }
        }
    }
}
