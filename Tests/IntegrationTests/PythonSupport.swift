import Foundation
import XCTest

/// A program run to completion (bounded), with what it wrote.
struct ProgramResult {
    var code: Int32
    var stdout: String
    var stderr: String
}

/// Runs `executable ARGS...` with `input` on its standard input, killing it after `timeout`.
func runProgram(_ executable: String, _ arguments: [String], input: Data = Data(), timeout: TimeInterval = 60)
    -> ProgramResult
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    let done = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in done.signal() }
    do { try process.run() } catch {
        return ProgramResult(code: -1, stdout: "", stderr: "cannot run \(executable): \(error)")
    }
    nonisolated(unsafe) var out = Data()
    nonisolated(unsafe) var err = Data()
    let readers = DispatchGroup()
    DispatchQueue.global().async(group: readers) { out = stdout.fileHandleForReading.readDataToEndOfFile() }
    DispatchQueue.global().async(group: readers) { err = stderr.fileHandleForReading.readDataToEndOfFile() }
    stdin.fileHandleForWriting.write(input)
    try? stdin.fileHandleForWriting.close()
    if done.wait(timeout: .now() + timeout) == .timedOut {
        kill(process.processIdentifier, SIGKILL)
        done.wait()
    }
    readers.wait()
    return ProgramResult(
        code: process.terminationStatus, stdout: String(decoding: out, as: UTF8.self),
        stderr: String(decoding: err, as: UTF8.self))
}

/// Python packages from PyPI that tests use to check the runner's output with other people's parsers.
enum PythonPackages {
    /// Runs python3 with `arguments`.
    static func run(_ arguments: [String], input: Data = Data(), timeout: TimeInterval = 60) -> ProgramResult {
        // The python3 on PATH, as the scripts use it (pip installs into that one).
        runProgram("/usr/bin/env", ["python3"] + arguments, input: input, timeout: timeout)
    }

    /// Makes sure `module` imports, installing `package` with pip when it does not (scripts/lib.sh's
    /// nr_need_python_deps does the same for the scripts); skips the test, saying why, when pip cannot get it.
    static func require(module: String, package: String) throws {
        if run(["-c", "import \(module)"]).code == 0 { return }
        let install = run(
            ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", package], timeout: 180)
        guard run(["-c", "import \(module)"]).code == 0 else {
            let why = install.stderr.split(separator: "\n").last.map(String.init) ?? "exit \(install.code)"
            throw XCTSkip("python3 cannot import \(module) and pip could not install \(package) from PyPI: \(why)")
        }
    }
}
