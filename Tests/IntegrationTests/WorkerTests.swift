import Foundation
import RedisClient
import TestSupport
import XCTest

/// Worker mode end to end: real redis-server, real `runner` processes, real jobs.
final class WorkerTests: IntegrationTestCase {
    func testSubmitWaitSucceedsAndPrintsOutput() throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", "ok-1", "--", "sh", "-c", "echo hello; echo warn >&2"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.stdout, "hello\n")
        XCTAssertEqual(result.err, "warn\n")
        let record = try job("ok-1")
        XCTAssertEqual(record["state"], "succeeded")
        XCTAssertEqual(record["exit_code"], "0")
        XCTAssertEqual(record["runner"], "r1")
        XCTAssertEqual(record["attempt"], "1")
        XCTAssertEqual(record["output_tail"], "hello\nwarn\n")
        XCTAssertEqual(record["v"], "1")
        for field in ["submitted_at", "started_at", "finished_at", "duration_ms"] {
            XCTAssertNotNil(Int(record[field] ?? ""), "\(field) = \(record[field] ?? "nil")")
        }
        XCTAssertLessThanOrEqual(Int(record["submitted_at"]!)!, Int(record["started_at"]!)!)
        XCTAssertLessThanOrEqual(Int(record["started_at"]!)!, Int(record["finished_at"]!)!)
        XCTAssertEqual(try events(of: "ok-1"), ["job.submitted", "job.received", "job.started", "job.succeeded"])
        // Done jobs leave the stream: acked and deleted with the result.
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    /// `job.started` comes once, before the result, with the pid the result names: for a short job (usually
    /// written by the script that records its result) and for a longer one, while it runs.
    func testStartedIsWrittenWithTheResultOfAShortJobAndWhileALongerOneRuns() throws {
        try startRunner()
        XCTAssertEqual(cli(["submit", "--wait", "--id", "short-1", "--", "true"]).code, 0)
        let short = try events().filter { $0.job == "short-1" }
        XCTAssertEqual(short.map(\.type), ["job.submitted", "job.received", "job.started", "job.succeeded"])
        let record = try job("short-1")
        let pid = try XCTUnwrap(Int(record["pid"] ?? ""), "\(record)")
        XCTAssertEqual(short[2].data["pid"] as? Int, pid)
        XCTAssertEqual(short[2].data["attempt"] as? Int, 1)
        XCTAssertEqual(short[2].data["queue"] as? String, "default")

        XCTAssertEqual(cli(["submit", "--id", "long-1", "--", "sleep", "1"]).code, 0)
        var started: RecordedEvent?
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(20)) {
                started = try events().first { $0.job == "long-1" && $0.type == "job.started" }
                return started != nil
            })
        // Seen while it runs: no result yet, the pid already in the record.
        let running = try job("long-1")
        XCTAssertEqual(running["state"], "running")
        XCTAssertEqual(running["pid"].flatMap { Int($0) }, started?.data["pid"] as? Int)
        try waitForState("long-1", ["succeeded"])
        XCTAssertEqual(try events(of: "long-1").filter { $0 == "job.started" }.count, 1)
    }

    func testNonZeroExitFailsWithItsCode() throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", "bad-1", "--", "sh", "-c", "exit 3"])
        XCTAssertEqual(result.code, 3)
        XCTAssertEqual(result.err, "job bad-1 failed: exited with code 3\n")
        let record = try job("bad-1")
        XCTAssertEqual(record["state"], "failed")
        XCTAssertEqual(record["exit_code"], "3")
        XCTAssertEqual(record["signal"], "")
        XCTAssertEqual(record["reason"], "exited with code 3")
        XCTAssertEqual(try events(of: "bad-1").last, "job.failed")
    }

    func testMissingCommandAndBadCwdFailWithTheOSReason() throws {
        try startRunner()
        var result = cli(["submit", "--wait", "--id", "nf-1", "--", "no-such-command-xyz"])
        XCTAssertEqual(result.code, 127)
        var record = try job("nf-1")
        XCTAssertEqual(record["state"], "failed")
        XCTAssertEqual(record["exit_code"], "127")
        XCTAssertEqual(record["reason"], "cannot execute 'no-such-command-xyz': No such file or directory")
        XCTAssertEqual(try events(of: "nf-1"), ["job.submitted", "job.received", "job.failed"])

        result = cli(["submit", "--wait", "--id", "cwd-1", "--cwd", "/no/such/dir", "--", "true"])
        XCTAssertEqual(result.code, 126)
        record = try job("cwd-1")
        XCTAssertEqual(record["state"], "failed")
        XCTAssertEqual(record["reason"], "cannot change to working directory '/no/such/dir': No such file or directory")

        let notExecutable = FileManager.default.temporaryDirectory.appendingPathComponent("nx-\(namespace).sh")
        try "echo hi\n".write(to: notExecutable, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: notExecutable) }
        result = cli(["submit", "--wait", "--id", "nx-1", "--", notExecutable.path])
        XCTAssertEqual(result.code, 126)
        XCTAssertEqual(try job("nx-1")["exit_code"], "126")
    }

    func testEnvCwdAndNoInheritedEnvironmentOrDescriptors() throws {
        try startRunner(environment: ["RUNNER_SECRET_TEST": "must-not-leak"])
        let dir = FileManager.default.temporaryDirectory.path
        let result = cli([
            "submit", "--wait", "--id", "env-1", "--env", "GREETING=hi there", "--cwd", dir, "--",
            "sh", "-c",
            "echo \"$GREETING\"; pwd; env | sort | cut -d= -f1 | tr '\\n' ' '; echo; ls /proc/self/fd | tr '\\n' ' '",
        ])
        XCTAssertEqual(result.code, 0, result.err)
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(lines[0], "hi there")
        XCTAssertEqual(lines[1], URL(fileURLWithPath: dir).resolvingSymlinksInPath().path)
        let names = Set(lines[2].split(separator: " ").map(String.init))
        XCTAssertTrue(names.isSuperset(of: ["GREETING", "PATH", "HOME", "NR_JOB_ID", "NR_ATTEMPT"]), lines[2])
        XCTAssertFalse(names.contains("RUNNER_SECRET_TEST"), lines[2])
        XCTAssertFalse(names.contains { $0.hasPrefix("RUNNER_") }, lines[2])
        // 0, 1, 2, and the directory `ls` itself opens.
        XCTAssertEqual(lines[3].split(separator: " ").count, 4, "open descriptors: \(lines[3])")
    }

    func testTwentyMegabytesOnBothStreams() throws {
        try startRunner(["--log-limit", "48M"])
        let result = cli(
            [
                "submit", "--wait", "--id", "big-1", "--shell",
                "head -c 20971520 /dev/zero | tr '\\0' a & head -c 20971520 /dev/zero | tr '\\0' b >&2; wait",
            ],
            timeout: 120)
        XCTAssertEqual(result.code, 0, String(result.err.prefix(300)))
        XCTAssertEqual(result.out.count, 20 << 20)
        XCTAssertEqual(result.err.utf8.count, 20 << 20)
        let log = try logBytes("big-1")
        XCTAssertEqual(log.stdout.count, 20 << 20)
        XCTAssertEqual(log.stderr.count, 20 << 20)
        XCTAssertTrue(log.stdout.allSatisfy { $0 == UInt8(ascii: "a") })
        XCTAssertTrue(log.stderr.allSatisfy { $0 == UInt8(ascii: "b") })
        XCTAssertEqual(log.meta, [])
        XCTAssertEqual(try job("big-1")["output_tail"]?.utf8.count, 4096)
    }

    func testLogIsCappedWithAVisibleMarker() throws {
        try startRunner(["--log-limit", "64K"])
        let result = cli(["submit", "--wait", "--id", "cap-1", "--shell", "head -c 300000 /dev/zero | tr '\\0' x"])
        XCTAssertEqual(result.code, 0, result.err)
        let log = try logBytes("cap-1")
        XCTAssertEqual(log.stdout.count, 64 << 10)
        XCTAssertEqual(
            log.meta,
            [
                "output truncated: the log limit of 65536 bytes was reached",
                "234464 bytes of output were dropped after the log limit of 65536 bytes",
            ])
        XCTAssertEqual(result.out.count, 64 << 10)
        XCTAssertTrue(result.err.contains("[nativerunner] output truncated"), result.err)
    }

    func testNonUTF8OutputIsKeptExactly() throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", "bin-1", "--", "printf", "\\377\\376ok\\000"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(Array(result.out), [0xFF, 0xFE, 0x6F, 0x6B, 0x00])
        XCTAssertEqual(try logBytes("bin-1").stdout, [0xFF, 0xFE, 0x6F, 0x6B, 0x00])
        let json = cli(["result", "bin-1", "--json"])
        XCTAssertEqual(json.code, 0, json.err)
        let object = try JSONSerialization.jsonObject(with: json.out) as? [String: Any]
        XCTAssertEqual(
            object?["output_tail_base64"] as? String, Data([0xFF, 0xFE, 0x6F, 0x6B, 0x00]).base64EncodedString())
        XCTAssertNil(object?["output_tail"])
        XCTAssertEqual(object?["exit_code"] as? Int, 0)
        XCTAssertEqual(object?["state"] as? String, "succeeded")
    }

    func testTimeoutKillsTheWholeGroupIncludingBackgroundChildren() throws {
        try startRunner(["--kill-grace", "1s"])
        let script = "sleep 60 & echo pid=$!; (trap '' TERM; sleep 60) & echo pid=$!; echo pid=$$; wait"
        let result = cli(["submit", "--wait", "--id", "to-1", "--timeout", "1s", "--shell", script])
        XCTAssertEqual(result.code, 124, result.err)
        let pids = pids(in: result.stdout)
        XCTAssertEqual(pids.count, 3, result.stdout)
        let record = try job("to-1")
        XCTAssertEqual(record["state"], "timed_out")
        XCTAssertEqual(record["forced_kill"], "1", "a child ignored SIGTERM, so SIGKILL was needed")
        XCTAssertEqual(record["reason"], "timed out after 1000 ms; killed with SIGKILL after the grace period")
        for pid in pids { XCTAssertFalse(processIsAlive(pid), "process \(pid) of the job is still alive") }
        XCTAssertEqual(try events(of: "to-1").last, "job.timeout")
        let event = try events().last { $0.job == "to-1" }
        XCTAssertEqual(event?.data["forced_kill"] as? Bool, true)
    }

    func testJobEndsWhenMainProcessExitsEvenIfAChildHoldsStdout() throws {
        try startRunner()
        let started = ContinuousClock.now
        let result = cli(["submit", "--wait", "--id", "bg-1", "--shell", "sleep 60 & echo pid=$!; echo done"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(10))
        XCTAssertTrue(result.stdout.hasSuffix("done\n"), result.stdout)
        for pid in pids(in: result.stdout) {
            XCTAssertFalse(processIsAlive(pid), "background child \(pid) outlived its job")
        }
    }

    func testMalformedEntriesGoToDeadLettersAndTheNextJobRuns() throws {
        try startRunner()
        let malformed: [([String], String)] = [
            (["id", "m-1", "spec", "not json"], "spec is not valid JSON"),
            (["id", "m-2", "spec", #"{"argv":"echo"}"#], "spec.argv must be an array of strings, got a string"),
            (["spec", #"{"argv":["true"]}"#], #"entry has no "id" field"#),
            (["id", "m-4"], #"entry has no "spec" field"#),
            (["id", "m-5", "spec", #"{"env":{}}"#], "spec has no command"),
        ]
        for (fields, _) in malformed { _ = try send(["XADD", key("jobs:default"), "*"] + fields) }
        try submit(["--", "echo", "still alive"], id: "after-1")
        try waitForState("after-1", ["succeeded"])

        // Entries are handled concurrently, so dead letters may land in any order: match them by reason.
        let dead = (try send(["XRANGE", key("dead"), "-", "+"]).array ?? []).map { strings($0.array?[1] ?? .null) }
        XCTAssertEqual(dead.count, malformed.count)
        for (_, reason) in malformed {
            let letter = dead.first { $0["reason"]?.hasPrefix(reason) == true }
            XCTAssertNotNil(letter, "no dead letter with reason \(reason): \(dead)")
            XCTAssertEqual(letter?["source"], key("jobs:default"))
            XCTAssertNotNil(letter?["source_id"])
        }
        XCTAssertEqual(try job("m-2")["state"], "rejected")
        XCTAssertEqual(try job("m-2")["reason"], "spec.argv must be an array of strings, got a string")
        XCTAssertEqual(try events().filter { $0.type == "job.rejected" }.count, malformed.count)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
    }

    /// A job that says it started and then waits for the test's release file: a barrier, not a duration.
    private func barrierJob(_ directory: URL) -> [String] {
        let dir = directory.path
        return ["--shell", "touch '\(dir)'/$NR_JOB_ID.started; while [ ! -f '\(dir)/release' ]; do sleep 0.02; done"]
    }

    private func barrierDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("barrier-\(namespace)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        return directory
    }

    private func started(_ id: String, in directory: URL) -> Bool {
        FileManager.default.fileExists(atPath: directory.appendingPathComponent("\(id).started").path)
    }

    func testConcurrencyRunsJobsSideBySide() throws {
        let directory = try barrierDirectory()
        try startRunner(["--concurrency", "3"])
        for n in 1...3 { try submit(barrierJob(directory), id: "c-\(n)") }
        // All three run at once: each has started while none can finish.
        XCTAssertTrue(
            waitUntil(timeout: .seconds(20)) { (1...3).allSatisfy { self.started("c-\($0)", in: directory) } })
        FileManager.default.createFile(atPath: directory.appendingPathComponent("release").path, contents: nil)
        for n in 1...3 { try waitForState("c-\(n)", ["succeeded"]) }
    }

    func testConcurrencyOneRunsJobsOneAfterAnother() throws {
        let directory = try barrierDirectory()
        try startRunner(["--concurrency", "1"])
        // Each job notes the time its process started and ended (ns).
        let dir = directory.path
        let timedJob = [
            "--shell",
            "date +%s%N > '\(dir)'/$NR_JOB_ID.begin; touch '\(dir)'/$NR_JOB_ID.started; "
                + "while [ ! -f '\(dir)/release' ]; do sleep 0.02; done; date +%s%N > '\(dir)'/$NR_JOB_ID.end",
        ]
        for n in 1...2 { try submit(timedJob, id: "s-\(n)") }
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { self.started("s-1", in: directory) })
        // With its one slot taken the runner reads nothing more: the second entry is not even delivered.
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 1)
        XCTAssertEqual(try job("s-2")["state"], "queued")
        XCTAssertFalse(started("s-2", in: directory))
        FileManager.default.createFile(atPath: directory.appendingPathComponent("release").path, contents: nil)
        for n in 1...2 { try waitForState("s-\(n)", ["succeeded"]) }
        // The second process starts after the first one has ended. (Its claim, `started_at`, may come before the
        // first result is recorded, `finished_at`: a slot is free as soon as its process is gone.)
        func time(_ name: String) throws -> Int {
            try XCTUnwrap(
                Int(
                    try String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8).trimmingCharacters(
                        in: .whitespacesAndNewlines)))
        }
        XCTAssertLessThanOrEqual(try time("s-1.end"), try time("s-2.begin"))
    }

    func testQueuesAreReadInPriorityOrderWithinFreeSlots() throws {
        let directory = try barrierDirectory()
        // Queued before any runner exists: two low, one high.
        try submit(["--queue", "low"] + barrierJob(directory), id: "low-1")
        try submit(["--queue", "low"] + barrierJob(directory), id: "low-2")
        try submit(["--queue", "high"] + barrierJob(directory), id: "high-1")
        try startRunner(["--concurrency", "1", "--queue", "high", "--queue", "low"])
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { self.started("high-1", in: directory) })
        XCTAssertEqual(try send(["XPENDING", key("jobs:low"), "runners"]).array?.first?.int, 0, "no low job taken")
        XCTAssertEqual(try job("low-1")["state"], "queued")
        FileManager.default.createFile(atPath: directory.appendingPathComponent("release").path, contents: nil)
        for id in ["high-1", "low-1", "low-2"] { try waitForState(id, ["succeeded"]) }
    }

    func testGracefulShutdownLetsTheRunningJobFinish() throws {
        let runner = try startRunner(["--shutdown-timeout", "20s"])
        try submit(["--shell", "sleep 1; echo finished"], id: "gs-1")
        try waitForState("gs-1", ["running"])
        runner.signal(SIGTERM)
        XCTAssertEqual(runner.waitForExit(timeout: 20), 0, runner.log)
        XCTAssertEqual(try job("gs-1")["state"], "succeeded")
        XCTAssertEqual(try job("gs-1")["output_tail"], "finished\n")
        XCTAssertEqual(try send(["EXISTS", key("runner:r1")]).int, 0, "lease deleted on clean exit")
        XCTAssertEqual(try send(["HEXISTS", key("runners"), "r1"]).int, 0)
        XCTAssertEqual(
            try send(["XINFO", "CONSUMERS", key("jobs:default"), "runners"]).array?.count, 0,
            "the consumer leaves the group once nothing is pending")
        let shutdown = try events().last { $0.type == "runner.shutdown" }
        XCTAssertEqual(shutdown?.runner, "r1")
        XCTAssertEqual(shutdown?.data["finished"] as? Int, 1)
        XCTAssertEqual(shutdown?.data["handed_back"] as? Int, 0)
    }

    func testShutdownDeadlineHandsTheJobBackAndKillsIt() throws {
        let runner = try startRunner(["--shutdown-timeout", "500ms", "--kill-grace", "500ms"])
        try submit(["--shell", "echo pid=$$; sleep 60"], id: "hb-1")
        let pid = try runningPid("hb-1")
        XCTAssertTrue(processIsAlive(pid))
        runner.signal(SIGTERM)
        XCTAssertEqual(runner.waitForExit(timeout: 20), 0, runner.log)
        XCTAssertFalse(processIsAlive(pid), "the job's process outlived the runner")
        let after = try job("hb-1")
        XCTAssertEqual(after["state"], "queued")
        XCTAssertEqual(after["attempt"], "1", "a hand-back does not count as an attempt")
        XCTAssertEqual(try events(of: "hb-1").last, "job.handed_back")
        // The job is back on the queue, and a new runner completes it.
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 1)
        try startRunner(name: "r2", ["--shutdown-timeout", "500ms", "--kill-grace", "500ms"])
        XCTAssertEqual(try waitForState("hb-1", ["running"])["runner"], "r2")
    }

    func testSecondSignalStopsJobsAtOnce() throws {
        let runner = try startRunner(["--shutdown-timeout", "60s", "--kill-grace", "500ms"])
        try submit(["--", "sleep", "60"], id: "ss-1")
        try waitForState("ss-1", ["running"])
        runner.signal(SIGTERM)
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { runner.log.contains("shutting down") })
        runner.signal(SIGINT)
        XCTAssertEqual(runner.waitForExit(timeout: 15), 0, runner.log)
        XCTAssertEqual(try job("ss-1")["state"], "queued")
    }

    func testUnreachableRedisAndNameInUseAreClearErrors() throws {
        let unreachable = runCLI(["--redis", "127.0.0.1:1", "--name", "x"])
        XCTAssertEqual(unreachable.code, 1)
        XCTAssertTrue(unreachable.err.hasPrefix("Error: cannot reach Redis at 127.0.0.1:1: "), unreachable.err)
        XCTAssertEqual(unreachable.err.split(separator: "\n").count, 1, unreachable.err)

        try startRunner(name: "dup")
        let second = runCLI(["--redis", endpoint.url, "--namespace", namespace, "--name", "dup"], timeout: 20)
        XCTAssertEqual(second.code, 1)
        XCTAssertTrue(
            second.err.contains(
                "Error: runner name 'dup' is in use: its lease {\(namespace)}:runner:dup is held by another runner"),
            second.err)
        // What comes before the Error: is short: the cgroup layout in one line, its detail only at debug.
        let before = second.err.split(separator: "\n").filter { !$0.hasPrefix("Error: ") }
        XCTAssertFalse(
            before.contains { $0.contains("cgroup parent") || $0.contains(" at /sys/fs/cgroup") }, second.err)
        XCTAssertTrue(before.filter { $0.contains(" info ") }.allSatisfy { $0.count <= 120 }, second.err)
        XCTAssertLessThanOrEqual(before.filter { $0.contains("cgroups: ") }.count, 1, second.err)
    }

    func testArgumentsThatAreNotUTF8AreRefused() throws {
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", "exec \"$0\" submit --id \"$(printf 'a\\377')\" -- true", Binaries.runner]
        let err = Pipe()
        shell.standardError = err
        shell.standardOutput = FileHandle.nullDevice
        try shell.run()
        shell.waitUntilExit()
        XCTAssertEqual(shell.terminationStatus, 2)
        XCTAssertEqual(
            String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
            "Error: argument 3 is not valid UTF-8\nSee 'runner --help'.\n")
    }

    func testOwnPendingEntriesRunFirstAtStart() throws {
        // An entry delivered to consumer "fixed" whose reply was lost: it sits in that consumer's pending list.
        _ = try send(["XGROUP", "CREATE", key("jobs:default"), "runners", "0", "MKSTREAM"])
        _ = try send(["XADD", key("jobs:default"), "*", "id", "pend-1", "spec", #"{"argv":["echo","recovered"]}"#])
        _ = try send(["XADD", key("jobs:default"), "*", "id", "gone-1", "spec", #"{"argv":["true"]}"#])
        let read = try send([
            "XREADGROUP", "GROUP", "runners", "fixed", "COUNT", "10", "STREAMS", key("jobs:default"), ">",
        ])
        let ids = read.array?.first?.array?[1].array?.compactMap { $0.array?.first?.string } ?? []
        XCTAssertEqual(ids.count, 2)
        // The second one's payload is deleted while pending.
        _ = try send(["XDEL", key("jobs:default"), ids[1]])

        try startRunner(name: "fixed")
        XCTAssertEqual(try waitForState("pend-1", ["succeeded"])["output_tail"], "recovered\n")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { (try? self.events().contains { $0.type == "job.lost" }) == true })
        let lost = try events().first { $0.type == "job.lost" }
        XCTAssertEqual(lost?.data["stream_id"] as? String, ids[1])
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testGroupRecreatedWhenStreamIsDeletedUnderTheRunner() throws {
        let runner = try startRunner()
        try submit(["--", "true"], id: "pre-1")
        try waitForState("pre-1", ["succeeded"])
        _ = try send(["DEL", key("jobs:default")])
        // A job submitted after the stream was deleted is still run (the group is recreated from ID 0).
        try submit(["--", "echo", "after delete"], id: "post-1")
        XCTAssertEqual(try waitForState("post-1", ["succeeded"])["output_tail"], "after delete\n")
        _ = try send(["XGROUP", "DESTROY", key("jobs:default"), "runners"])
        try submit(["--", "echo", "after destroy"], id: "post-2")
        XCTAssertEqual(try waitForState("post-2", ["succeeded"])["output_tail"], "after destroy\n")
        XCTAssertTrue(runner.isRunning)
    }

    func testStatusShowsRunnersAndQueues() throws {
        try startRunner(["--concurrency", "2"])
        let status = cli(["status", "--json"])
        XCTAssertEqual(status.code, 0, status.err)
        let object = try JSONSerialization.jsonObject(with: status.out) as? [String: Any]
        let runners = object?["runners"] as? [[String: Any]] ?? []
        XCTAssertEqual(runners.count, 1)
        XCTAssertEqual(runners.first?["id"] as? String, "r1")
        XCTAssertEqual(runners.first?["capacity"] as? Int, 2)
        XCTAssertEqual(runners.first?["state"] as? String, "running")
        XCTAssertGreaterThan(runners.first?["lease_remaining_ms"] as? Int ?? 0, 0)
        let queues = object?["queues"] as? [[String: Any]] ?? []
        XCTAssertEqual(queues.first?["name"] as? String, "default")
        XCTAssertEqual(queues.first?["consumers"] as? Int, 1)
        let text = cli(["status"])
        XCTAssertTrue(text.stdout.contains("RUNNERS"), text.stdout)
        XCTAssertTrue(text.stdout.contains("  r1 "), text.stdout)
    }

    func testResultOfUnknownJobIsAClearError() throws {
        let result = cli(["result", "nope"])
        XCTAssertEqual(result.code, 1)
        XCTAssertEqual(
            result.err, "Error: no job 'nope' in namespace '\(namespace)' (never submitted, or its result expired)\n")
        let duplicate = cli(["submit", "--id", "same", "--", "true"])
        XCTAssertEqual(duplicate.code, 0)
        let again = cli(["submit", "--id", "same", "--", "true"])
        XCTAssertEqual(again.code, 1)
        XCTAssertEqual(again.err, "Error: a job with id 'same' already exists\n")
    }

    /// A record's fields are anyone's to HSET: `runner result` shows an escape sequence or a line break in one escaped,
    /// and prints the output tail (the job's own output) as it was written.
    func testResultShowsControlCharactersInTheRecordEscaped() throws {
        _ = try send([
            "HSET", key("job:odd-1"), "state", "succ\u{1b}[31meeded", "reason", "r\u{1b}[32m\nx", "runner", "w\r\n",
            "attempt", "1", "output_tail", "out\u{1b}[34m\n",
        ])
        let result = cli(["result", "odd-1"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(
            result.stdout,
            "id: odd-1\nstate: succ\\u{1b}[31meeded\nreason: r\\u{1b}[32m\\u{a}x\nattempt: 1\nrunner: w\\u{d}\\u{a}\n"
                + "output_tail:\nout\u{1b}[34m\n")
    }
}

/// Attempts, retries and duplicate entries.
final class AttemptTests: IntegrationTestCase {
    func testFailedAttemptsAreRetriedUpToMaxAttempts() throws {
        try startRunner()
        let result = cli([
            "submit", "--wait", "--id", "ma-1", "--max-attempts", "3", "--",
            "sh", "-c", "echo attempt $NR_ATTEMPT; [ $NR_ATTEMPT = 3 ]",
        ])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.stdout, "attempt 1\nattempt 2\nattempt 3\n")
        XCTAssertEqual(
            result.err, "[nativerunner] attempt 2 begins\n[nativerunner] attempt 3 begins\n")
        let record = try job("ma-1")
        XCTAssertEqual(record["state"], "succeeded")
        XCTAssertEqual(record["attempt"], "3")
        XCTAssertEqual(record["output_tail"], "attempt 3\n")
        let types = try events(of: "ma-1")
        XCTAssertEqual(types.filter { $0 == "job.retry_scheduled" }.count, 2, "\(types)")
        XCTAssertEqual(types.filter { $0 == "job.started" }.count, 3)
        XCTAssertEqual(types.last, "job.succeeded")
        let retry = try events().first { $0.type == "job.retry_scheduled" && $0.job == "ma-1" }
        XCTAssertEqual(retry?.data["attempt"] as? Int, 2)
        XCTAssertEqual(retry?.data["failed_attempt"] as? Int, 1)
        XCTAssertEqual(retry?.data["exit_code"] as? Int, 1)
    }

    func testExhaustedAttemptsMakeTheJobDeadWithTheLastFailure() throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", "ma-2", "--max-attempts", "2", "--", "sh", "-c", "exit 4"])
        XCTAssertEqual(result.code, 4, "the last attempt's exit code")
        let record = try job("ma-2")
        XCTAssertEqual(record["state"], "dead")
        XCTAssertEqual(record["attempt"], "2")
        XCTAssertEqual(record["failures"], "2")
        XCTAssertEqual(record["exit_code"], "4")
        XCTAssertEqual(record["reason"], "failed 2 of 2 attempts; the last: exited with code 4")
        let types = try events(of: "ma-2")
        XCTAssertEqual(types.filter { $0 == "job.dead" }.count, 1, "\(types)")
        XCTAssertEqual(types.filter { $0 == "job.failed" }.count, 0, "\(types)")
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
        let letters = try send(["XRANGE", key("dead"), "-", "+"]).array ?? []
        XCTAssertEqual(letters.count, 1)
        let letter = strings(letters.first?.array?[1] ?? .null)
        XCTAssertEqual(letter["id"], "ma-2")
        XCTAssertEqual(letter["attempt"], "2")
        XCTAssertEqual(letter["reason"], record["reason"])
        XCTAssertEqual(try job("ma-2")["state"], "dead")
    }

    func testOneAttemptFailureStaysFailed() throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", "ma-4", "--", "sh", "-c", "exit 5"])
        XCTAssertEqual(result.code, 5)
        XCTAssertEqual(try job("ma-4")["state"], "failed")
        XCTAssertEqual(try send(["XLEN", key("dead")]).int, 0, "no dead letter for a job of one attempt")
    }

    func testMissingCommandIsNotRetried() throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", "ma-3", "--max-attempts", "5", "--", "no-such-command-xyz"])
        XCTAssertEqual(result.code, 127)
        XCTAssertEqual(try job("ma-3")["attempt"], "1")
        XCTAssertEqual(try events(of: "ma-3").filter { $0 == "job.retry_scheduled" }.count, 0)
    }

    func testDuplicateEntriesReadTogetherRunOnce() throws {
        for _ in 0..<3 {
            _ = try send(["XADD", key("jobs:default"), "*", "id", "twin", "spec", #"{"shell":"echo run; sleep 0.5"}"#])
        }
        try startRunner(["--concurrency", "4"])
        try waitForState("twin", ["succeeded"])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { (try? self.send(["XLEN", self.key("dead")]).int) == 2 })
        let types = try events(of: "twin")
        XCTAssertEqual(types.filter { $0 == "job.started" }.count, 1, "\(types)")
        XCTAssertEqual(types.filter { $0 == "job.rejected" }.count, 2, "\(types)")
        XCTAssertEqual(try logBytes("twin").stdout, Array("run\n".utf8))
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testDuplicateEntryOfAFinishedJobNeverRuns() throws {
        // The duplicate's folder is made while its claim is in flight: it must be gone once the claim refused it.
        let root = NSTemporaryDirectory() + "nr-dup-root-\(namespace)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try startRunner(["--work-root", root])
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("dup-\(namespace)")
        defer { try? FileManager.default.removeItem(at: marker) }
        XCTAssertEqual(cli(["submit", "--wait", "--id", "dup-1", "--", "true"]).code, 0)
        let spec = #"{"argv":["touch",""# + marker.path + #""]}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "dup-1", "spec", spec])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { (try? self.send(["XLEN", self.key("dead")]).int) == 1 })
        let letter = strings(try send(["XRANGE", key("dead"), "-", "+"]).array?.first?.array?[1] ?? .null)
        XCTAssertEqual(
            letter["reason"], "job 'dup-1' already ended as succeeded at attempt 1; this duplicate entry was not run")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker.path), "the duplicate ran")
        let folders = try FileManager.default.contentsOfDirectory(atPath: root).flatMap { runner in
            try FileManager.default.contentsOfDirectory(atPath: root + "/" + runner)
        }
        XCTAssertTrue(folders.allSatisfy { $0.hasPrefix(".spare-") }, "work folders left: \(folders)")
        XCTAssertEqual(try job("dup-1")["state"], "succeeded")
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testADuplicateLeavesNoFolderEvenWhenWorkFoldersAreKept() throws {
        // With --keep-work-dirs only folders of attempts that ran stay: a refused duplicate's pre-made one goes.
        let root = NSTemporaryDirectory() + "nr-dup-keep-\(namespace)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try startRunner(["--work-root", root, "--keep-work-dirs"])
        XCTAssertEqual(cli(["submit", "--wait", "--id", "dup-k", "--", "true"]).code, 0)
        _ = try send(["XADD", key("jobs:default"), "*", "id", "dup-k", "spec", #"{"argv":["true"]}"#])
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { (try? self.send(["XLEN", self.key("dead")]).int) == 1 })
        let folders = try FileManager.default.contentsOfDirectory(atPath: root).flatMap { runner in
            try FileManager.default.contentsOfDirectory(atPath: root + "/" + runner)
        }
        XCTAssertEqual(folders.filter { !$0.hasPrefix(".spare-") }.count, 1, "work folders: \(folders)")
    }
}
