import Foundation
import RedisClient
import TestSupport
import XCTest

/// Tests that need a redis-server of their own: a password, FLUSHALL.
final class PasswordRedisTests: PrivateRedisTestCase {
    override func makeServer() throws -> RedisServerProcess { try RedisServerProcess(password: "s3cret-pw") }

    func testRedisPasswordNeverReachesTheJob() throws {
        XCTAssertEqual(endpoint.password, "s3cret-pw")
        // Given both ways: as the flag and as RUNNER_REDIS in the runner's environment.
        try startRunner(environment: ["RUNNER_REDIS": endpoint.url])
        let result = cli([
            "submit", "--wait", "--id", "pw-1", "--", "sh", "-c", "env; cat /proc/self/environ | tr '\\0' '\\n'",
        ])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertFalse(result.stdout.contains("s3cret-pw"), result.stdout)
        XCTAssertFalse(result.stdout.contains("RUNNER_REDIS"), result.stdout)
        XCTAssertFalse(try logBytes("pw-1").stdout.isEmpty)
        XCTAssertFalse(runners[0].log.contains("s3cret-pw"), "the runner's log shows the password:\n\(runners[0].log)")
    }

    func testThePasswordIsNeitherInTheRunnersCommandLineNorInJobOutput() throws {
        let runner = try startRunner()  // given with --redis redis://:s3cret-pw@...
        let cmdline = try String(contentsOfFile: "/proc/\(runner.pid)/cmdline", encoding: .utf8)
        XCTAssertTrue(cmdline.contains("redis://:*********@"), cmdline)
        XCTAssertFalse(cmdline.contains("s3cret-pw"), cmdline)
        // A job that finds the password some other way still cannot print it.
        let result = cli(["submit", "--wait", "--id", "pw-2", "--", "echo", "the password is s3cret-pw"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.stdout, "the password is ***\n")
    }

    func testWrongPasswordIsOneClearError() throws {
        var wrong = endpoint
        wrong.password = "nope"
        let result = runCLI(["status", "--redis", wrong.url])
        XCTAssertEqual(result.code, 1)
        XCTAssertTrue(result.err.hasPrefix("Error: authentication to Redis at "), result.err)
        XCTAssertFalse(result.err.contains("nope"), result.err)
        XCTAssertEqual(result.err.split(separator: "\n").count, 1)
    }
}

final class FlushTests: PrivateRedisTestCase {

    func testRunnerRecoversFromFlushAll() throws {
        let runner = try startRunner(["--lease-ttl", "3s"])
        _ = try send(["FLUSHALL"])
        try submit(["--", "echo", "after flush"], id: "fl-1")
        XCTAssertEqual(try waitForState("fl-1", ["succeeded"])["output_tail"], "after flush\n")
        // The lease and registry come back with the next renewal (every third of the TTL): it finds the lease gone.
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                (try? self.send(["EXISTS", self.key("runner:r1")]).int) == 1
                    && (try? self.send(["HEXISTS", self.key("runners"), "r1"]).int) == 1
            }, runner.log)
        XCTAssertTrue(runner.isRunning)
    }

    func testResultRetentionExpiresResultAndLog() throws {
        try startRunner(["--result-retention", "3s"])
        let result = cli(["submit", "--wait", "--id", "ret-1", "--", "echo", "short-lived"])
        XCTAssertEqual(result.code, 0, result.err)
        let ttl = try send(["PTTL", key("job:ret-1")]).int ?? -1
        XCTAssertGreaterThan(ttl, 0)
        XCTAssertLessThanOrEqual(ttl, 3000)
        let logTTL = try send(["PTTL", key("log:ret-1")]).int ?? -1
        XCTAssertGreaterThan(logTTL, 0)
        XCTAssertLessThanOrEqual(logTTL, 3000)
    }
}

final class CLIFollowTests: IntegrationTestCase {
    func testLogsAndEventsFollow() throws {
        try startRunner()
        // Follow events in the background, then submit: the job's terminal event shows up in the follower.
        let follower = try startCLI(["events", "--follow", "--json", "--job", "fo-1"])
        let result = cli(["submit", "--wait", "--id", "fo-1", "--", "sh", "-c", "echo out; echo err >&2"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertTrue(
            waitUntil(timeout: .seconds(15)) { follower.output.contains("\"job.succeeded\"") },
            "follower printed: \(follower.output)")
        let types = follower.output.split(separator: "\n").compactMap { line -> String? in
            ((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any])?["type"] as? String
        }
        XCTAssertEqual(types, ["job.submitted", "job.received", "job.started", "job.succeeded"])

        let logs = cli(["logs", "fo-1"])
        XCTAssertEqual(logs.code, 0)
        XCTAssertEqual(logs.stdout, "out\n")
        XCTAssertEqual(logs.err, "err\n")
        let text = cli(["result", "fo-1"])
        XCTAssertEqual(text.code, 0)
        XCTAssertTrue(text.stdout.hasPrefix("id: fo-1\nstate: succeeded\nexit_code: 0\n"), text.stdout)
        // As --json gives it (a boolean), not the record's 0.
        XCTAssertTrue(text.stdout.contains("\nforced_kill: false\n"), text.stdout)
    }
}

extension CLIFollowTests {
    func testEventsFollowWithCountZeroPrintsOnlyNewEvents() throws {
        func addEvent(_ job: String) throws {
            _ = try send(["XADD", key("events"), "*", "type", "job.queued", "ts", "1700000000000", "job", job])
        }
        try addEvent("old-1")
        try addEvent("old-2")
        let follower = try startCLI(["events", "--follow", "--count", "0"])
        // It has read the stream's position once a new event shows; keep adding until one does.
        var added = 0
        XCTAssertTrue(
            waitUntil(timeout: .seconds(15), interval: .milliseconds(200)) {
                added += 1
                try? addEvent("new-\(added)")
                return follower.output.contains("job=new-")
            }, follower.output)
        XCTAssertFalse(follower.output.contains("job=old-"), follower.output)
        kill(follower.process.processIdentifier, SIGINT)
        XCTAssertNotNil(follower.waitForExit(timeout: 10))
    }
}

extension CLIFollowTests {
    /// Ctrl-C ends every live command the same way: by SIGINT (the shell sees 130), `top` too, after restoring
    /// what it changed.
    func testSIGINTEndsEveryLiveCommandByTheSignal() throws {
        XCTAssertEqual(cli(["submit", "--id", "queued-1", "--", "true"]).code, 0)  // no runner: it stays queued
        for arguments in [
            ["top", "--interval", "100ms"], ["status", "--watch", "--interval", "100ms"], ["events", "--follow"],
            ["logs", "--follow", "queued-1"],
        ] {
            // top and events print at once; logs of a queued job prints nothing on stdout: it is waiting once it
            // blocks in its read of the events and the job's log.
            let monitor = arguments[0] == "logs" ? try RedisMonitor(endpoint: endpoint) : nil
            defer { monitor?.close() }
            let command = try startCLI(arguments)
            if let monitor {
                XCTAssertTrue(
                    waitUntil(timeout: .seconds(10)) {
                        monitor.lines.contains { $0.contains("] \"XREAD\" ") && $0.contains("queued-1") }
                    }, "\(arguments): no blocking read")
            } else {
                XCTAssertTrue(waitUntil(timeout: .seconds(10)) { !command.output.isEmpty }, "\(arguments)")
            }
            kill(command.process.processIdentifier, SIGINT)
            let status = command.waitForExit(timeout: 10)
            XCTAssertNotNil(status, "\(arguments)")
            guard status != nil else { continue }  // a running process has no termination reason (it traps)
            XCTAssertEqual(command.process.terminationReason, .uncaughtSignal, "\(arguments)")
            XCTAssertEqual(command.process.terminationStatus, SIGINT, "\(arguments)")
        }
    }
}

extension CLIFollowTests {
    /// A job cancelled while queued ends with no output at all: `logs` says why on stderr rather than print nothing.
    func testLogsOfAJobCancelledBeforeItStartedSayItNeverStarted() throws {
        XCTAssertEqual(cli(["submit", "--id", "cq-1", "--", "echo", "hi"]).code, 0)  // no runner: it stays queued
        let cancelled = cli(["cancel", "cq-1"])
        XCTAssertEqual(cancelled.code, 0, cancelled.err)
        XCTAssertEqual(try send(["HGET", key("job:cq-1"), "state"]).string, "cancelled")
        let logs = cli(["logs", "cq-1"])
        XCTAssertEqual(logs.code, 0, logs.err)
        XCTAssertEqual(logs.stdout, "")
        XCTAssertEqual(logs.err, "runner: job cq-1 is cancelled and never started; it has no output\n")
    }

    func testLogsOfAQueuedJobSayThereIsNoOutputYet() throws {
        XCTAssertEqual(cli(["submit", "--id", "q-1", "--", "echo", "hi"]).code, 0)  // no runner: it stays queued
        let logs = cli(["logs", "q-1"])
        XCTAssertEqual(logs.code, 0, logs.err)
        XCTAssertEqual(logs.stdout, "")
        XCTAssertEqual(logs.err, "runner: job q-1 is queued; no output yet\n")
        let follower = Process()
        follower.runnerBinary(["logs", "--redis", endpoint.url, "--namespace", namespace, "--follow", "q-1"])
        let errors = Pipe()
        follower.standardError = errors
        follower.standardOutput = FileHandle.nullDevice
        try follower.run()
        defer {
            kill(follower.processIdentifier, SIGKILL)
            follower.waitUntilExit()
        }
        // Its first write to stderr, while it waits for the job to start (none within 10 s is a failure too).
        nonisolated(unsafe) var note = ""
        let read = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            note = String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self)
            read.signal()
        }
        XCTAssertEqual(read.wait(timeout: .now() + 10), .success, "nothing on stderr")
        XCTAssertEqual(note, "runner: job q-1 is queued; its output follows once it starts\n")
    }

    /// Queued again for a new attempt, a job still has its earlier attempts' output: said so, not "no output yet".
    func testLogsOfAJobQueuedAgainSayTheEarlierOutputFollows() throws {
        XCTAssertEqual(cli(["submit", "--id", "q-2", "--", "echo", "hi"]).code, 0)
        // What a first attempt that wrote a line and was retried leaves: its output, the record at attempt 2.
        _ = try send(["XADD", key("log:q-2"), "*", "fd", "stdout", "data", "first output\n", "v", "1"])
        _ = try send(["HSET", key("job:q-2"), "attempt", "2"])
        let logs = cli(["logs", "q-2"])
        XCTAssertEqual(logs.code, 0, logs.err)
        XCTAssertEqual(logs.stdout, "first output\n")
        XCTAssertEqual(
            logs.err, "runner: job q-2 is queued for attempt 2; the output of its earlier attempts follows\n")
    }
}

final class WaitTests: IntegrationTestCase {
    func testSubmitWaitPrintsOutputWhileTheJobRuns() throws {
        try startRunner()
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("wait-\(namespace)")
        defer { try? FileManager.default.removeItem(at: marker) }
        // The job waits until the marker exists; the test creates it only after it saw the first line.
        let script = "echo first; while [ ! -f '\(marker.path)' ]; do sleep 0.05; done; echo second"
        let waiter = try startCLI(["submit", "--wait", "--id", "live-1", "--shell", script])
        XCTAssertTrue(
            waitUntil(timeout: .seconds(15)) { waiter.output == "first\n" }, "printed so far: \(waiter.output)")
        XCTAssertEqual(try job("live-1")["state"], "running", "the first line arrived while the job ran")
        FileManager.default.createFile(atPath: marker.path, contents: nil)
        XCTAssertEqual(waiter.waitForExit(timeout: 15), 0)
        XCTAssertEqual(waiter.output, "first\nsecond\n")
    }

    func testWaitTimeoutIsHonouredPromptly() throws {
        // No runner: the job stays queued.
        let started = ContinuousClock.now
        let result = cli(["submit", "--wait", "--wait-timeout", "500ms", "--id", "wt-1", "--", "true"])
        XCTAssertEqual(result.code, 1)
        XCTAssertEqual(
            result.err, "Error: gave up waiting for job 'wt-1' after --wait-timeout 500ms (it is still queued)\n")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(3))
    }
}
