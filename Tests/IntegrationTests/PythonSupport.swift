import Foundation
import XCTest

/// Python tools the interop tests run (scripts/check_protocol.py, scripts/examples/control_plane.py): the
/// interpreter scripts/lib.sh's `nr_need_python_deps` installed the PyPI packages into (NR_PYTHON), else python3.
enum Python {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static var interpreter: String { ProcessInfo.processInfo.environment["NR_PYTHON"] ?? "/usr/bin/env" }
    private static var prefix: [String] { ProcessInfo.processInfo.environment["NR_PYTHON"] == nil ? ["python3"] : [] }

    /// Fails the test with what to do when a module is missing, instead of a traceback further on.
    static func require(_ modules: [String], file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let result = run(["-c", "import " + modules.joined(separator: ", ")], timeout: 60)
        if result.code != 0 {
            XCTFail(
                "python3 lacks \(modules.joined(separator: ", ")): run scripts/test, or `source scripts/lib.sh; "
                    + "nr_need_python_deps` and set NR_PYTHON (\(result.err.split(separator: "\n").last ?? ""))",
                file: file, line: line)
        }
        return result.code == 0
    }

    private static func configure(_ process: Process, _ arguments: [String]) {
        process.executableURL = URL(fileURLWithPath: interpreter)
        process.arguments = prefix + arguments
        process.currentDirectoryURL = root
    }

    /// Runs python3 ARGS from the repository root, bounded by `timeout`, capturing stdout and stderr.
    static func run(_ arguments: [String], timeout: TimeInterval) -> CLIResult {
        let process = Process()
        configure(process, arguments)
        return runToEnd(process, timeout: timeout)
    }

    /// Starts python3 ARGS from the repository root in the background (killed when the result is released).
    static func start(_ arguments: [String]) throws -> BackgroundCLI {
        try BackgroundCLI { configure($0, arguments) }
    }
}
