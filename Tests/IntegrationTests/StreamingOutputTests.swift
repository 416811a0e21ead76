import Foundation
import RedisClient
import TestSupport
import XCTest

/// Streaming commands (`top`, `status --watch`, `events --follow`, `logs --follow`) end when their standard output goes away: a
/// reader that closed the pipe (`| head -1`) ends them with exit 0, a closed standard output (`>&-`) with exit 1.
final class StreamingOutputTests: IntegrationTestCase {
    func exitStatusAfterTheReaderLeaves(
        _ arguments: [String], timeout: Duration = .seconds(5), meanwhile: () throws -> Void = {}
    ) throws -> Int32? {
        try StreamingOutputTests.exitStatusWhenTheReaderLeaves(
            arguments, endpoint: endpoint, namespace: namespace, timeout: timeout, meanwhile: meanwhile)
    }

    /// Starts `runner ARGS` with its standard output a pipe, reads its first line, runs `beforeLeaving` (given what
    /// it wrote to standard error so far), closes the pipe as `head -1` does, and returns the exit status once it
    /// exited (nil if it still runs after `timeout`). `meanwhile` runs while waiting for the exit (to keep output
    /// coming).
    static func exitStatusWhenTheReaderLeaves(
        _ arguments: [String], endpoint: RedisEndpoint, namespace: String, timeout: Duration = .seconds(5),
        beforeLeaving: (_ standardError: () -> String) throws -> Void = { _ in }, meanwhile: () throws -> Void = {}
    ) throws -> Int32? {
        let process = Process()
        process.runnerBinary([arguments[0], "--redis", endpoint.url, "--namespace", namespace] + arguments.dropFirst())
        let pipe = Pipe()
        let errors = FileManager.default.temporaryDirectory.appendingPathComponent("nr-stderr-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errors.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errors) }
        process.standardOutput = pipe
        process.standardError = try FileHandle(forWritingTo: errors)
        process.standardInput = FileHandle.nullDevice
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        defer {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                _ = exited.wait(timeout: .now() + 5)
            }
        }
        try pipe.fileHandleForWriting.close()
        let reader = pipe.fileHandleForReading.fileDescriptor
        var received: [UInt8] = []
        var byte: UInt8 = 0
        let gotLine = waitUntil(timeout: .seconds(20)) {
            var fds = [pollfd(fd: reader, events: Int16(POLLIN), revents: 0)]
            while poll(&fds, 1, 0) > 0, read(reader, &byte, 1) == 1 {
                received.append(byte)
                if byte == UInt8(ascii: "\n") { return true }
            }
            return false
        }
        XCTAssertTrue(gotLine, "no first line from \(arguments): \(String(decoding: received, as: UTF8.self))")
        try beforeLeaving { (try? String(contentsOf: errors, encoding: .utf8)) ?? "" }
        try pipe.fileHandleForReading.close()
        var status: Int32?
        _ = try waitUntil(timeout: timeout) {
            try meanwhile()
            guard exited.wait(timeout: .now()) == .success else { return false }
            status = process.terminationStatus
            return true
        }
        return status
    }

    func testTopEndsWhenItsReaderLeaves() throws {
        XCTAssertEqual(try exitStatusAfterTheReaderLeaves(["top", "--interval", "100ms"]), 0)
    }

    func testStatusWatchEndsWhenItsReaderLeaves() throws {
        XCTAssertEqual(try exitStatusAfterTheReaderLeaves(["status", "--watch", "--interval", "100ms"]), 0)
    }

    func testEventsFollowEndsWhenItsReaderLeavesWhileEventsCome() throws {
        var sequence = 0
        func addEvent() throws {
            sequence += 1
            _ = try send([
                "XADD", key("events"), "*", "type", "job.queued", "ts", "1700000000000", "job", "job-\(sequence)",
            ])
        }
        try addEvent()
        XCTAssertEqual(try exitStatusAfterTheReaderLeaves(["events", "--follow"], meanwhile: addEvent), 0)
    }

    func testLogsFollowEndsWhenItsReaderLeavesWhileOutputComes() throws {
        try startRunner(["--shutdown-timeout", "1s"])  // the job is still writing at the end
        let script = "for i in $(seq 1000); do echo line $i; sleep 0.02; done"
        XCTAssertEqual(cli(["submit", "--id", "chatty", "--shell", script]).code, 0)
        XCTAssertEqual(try exitStatusAfterTheReaderLeaves(["logs", "chatty", "--follow"]), 0)
    }

    func testLogsFollowEndsWhenItsReaderLeavesWhileTheJobIsSilent() throws {
        try startRunner(["--shutdown-timeout", "1s"])  // the job is still running at the end
        XCTAssertEqual(cli(["submit", "--id", "quiet", "--shell", "echo one line; exec sleep 60"]).code, 0)
        // Noticed within a second (the watch cancels the blocking read), without any output to fail on.
        XCTAssertEqual(try exitStatusAfterTheReaderLeaves(["logs", "quiet", "--follow"], timeout: .seconds(12)), 0)
    }

    func testOutputToAFullDiskFailsWithOneLine() throws {
        try startRunner()
        XCTAssertEqual(cli(["submit", "--wait", "--id", "full", "--", "echo", "hello"]).code, 0)
        for command in [["result", "full"], ["logs", "full"], ["logs", "full", "--follow"]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments =
                [
                    "-c", "exec \"$0\" \"$@\" >/dev/full", Binaries.runner, command[0], "--redis", endpoint.url,
                    "--namespace", namespace,
                ] + command.dropFirst()
            let result = runToEnd(process, timeout: 10)
            XCTAssertEqual(result.code, 1, "\(command): \(result.err)")
            XCTAssertEqual(
                result.err, "Error: cannot write to standard output: No space left on device\n", "\(command)")
        }
    }

    func testTopWithStandardOutputClosedFailsWithOneLine() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [
            "-c", "exec \"$0\" top --redis \"$1\" --namespace \"$2\" --interval 100ms >&-", Binaries.runner,
            endpoint.url, namespace,
        ]
        let result = runToEnd(process, timeout: 10)
        XCTAssertEqual(result.code, 1, result.err)
        XCTAssertEqual(result.err, "Error: cannot write to standard output: Bad file descriptor\n")
    }
}

/// `logs --follow` whose reader leaves while Redis is down: its read waits for Redis (retried until it is back), and
/// the gone reader must end that wait too.
final class LogsFollowOutageTests: PrivateRedisTestCase {
    func testLogsFollowEndsWhenItsReaderLeavesWhileRedisIsDown() throws {
        // No runner: the job stays queued, and one line of output is there to read.
        XCTAssertEqual(cli(["submit", "--id", "waits", "--", "true"]).code, 0)
        _ = try send(["XADD", key("log:waits"), "*", "fd", "stdout", "data", "first line\n"])
        let status = try StreamingOutputTests.exitStatusWhenTheReaderLeaves(
            ["logs", "waits", "--follow"], endpoint: endpoint, namespace: namespace,
            beforeLeaving: { standardError in
                try server.stop()
                // It noticed the outage and retries: only Redis coming back would end that wait without the fix.
                XCTAssertTrue(waitUntil(timeout: .seconds(20)) { standardError().contains("lost connection") })
            })
        XCTAssertEqual(status, 0, "logs --follow did not end within 5 s of its reader leaving while Redis was down")
    }
}
