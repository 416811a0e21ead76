import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol
import TestSupport
import XCTest

/// `runner status` / `runner top`'s view of the queues, read straight from Redis.
final class PoolStatusTests: IntegrationTestCase {
    func testLagNeverCountsEntriesDeletedBeforeTheyWereRead() async throws {
        let stream = key("jobs:default")
        _ = try send(["XGROUP", "CREATE", stream, Keyspace.consumerGroup, "0", "MKSTREAM"])
        // One entry read and done, then three deleted before anyone read them (queued jobs that were cancelled):
        // Redis's own lag says 3 for a stream that holds nothing.
        let done = try XCTUnwrap(try send(["XADD", stream, "*", "id", "a", "spec", "{}"]).string)
        _ = try send(["XREADGROUP", "GROUP", Keyspace.consumerGroup, "c", "COUNT", "1", "STREAMS", stream, ">"])
        _ = try send(["XACK", stream, Keyspace.consumerGroup, done])
        _ = try send(["XDEL", stream, done])
        for id in ["b", "c", "d"] {
            let entry = try XCTUnwrap(try send(["XADD", stream, "*", "id", id, "spec", "{}"]).string)
            _ = try send(["XDEL", stream, entry])
        }
        let client = RedisClient(endpoint: endpoint)
        defer { client.close() }
        let status = try await PoolClient(client: client, keyspace: Keyspace(namespace: namespace)).status()
        let queue = try XCTUnwrap(status.queues.first { $0.name == "default" })
        XCTAssertEqual(queue.length, 0)
        XCTAssertEqual(queue.pending, 0)
        XCTAssertEqual(queue.lag, 0)

        // An unread entry is counted.
        _ = try send(["XADD", stream, "*", "id", "e", "spec", "{}"])
        let after = try await PoolClient(client: client, keyspace: Keyspace(namespace: namespace)).status()
        XCTAssertEqual(after.queues.first { $0.name == "default" }?.lag, 1)
    }

    /// A registry record as a runner writes it, with a lease of a minute unless `lease` is false (a dead runner's).
    private func register(
        _ id: String, state: String, queues: [String], labels: [String: String] = [:], lease: Bool = true
    ) throws {
        let record: [String: Any] = [
            "node": "n1", "pid": 1, "queues": queues, "capacity": 2, "capacity_free": 1, "state": state,
            "running": ["job-\(id)"], "labels": labels,
        ]
        let json = String(decoding: try JSONSerialization.data(withJSONObject: record), as: UTF8.self)
        _ = try send(["HSET", key("runners"), id, json])
        if lease { _ = try send(["SET", key("runner:\(id)"), "x", "PX", "60000"]) }
    }

    private func enqueue(_ queue: String, _ id: String) throws {
        _ = try send(["XADD", key("jobs:\(queue)"), "*", "id", id, "spec", #"{"command":["true"]}"#])
    }

    func testStatusAndTopNameEveryQueueWithWaitingJobsThatNoRunningRunnerReads() throws {
        try register("r1", state: "drained", queues: ["default"])
        try register("r2", state: "running", queues: ["busy"])
        try register("r3", state: "running", queues: ["default"], lease: false)
        try register("r4", state: "draining", queues: ["idle"])
        for (queue, id) in [("default", "a"), ("default", "b"), ("busy", "c"), ("nobody", "d")] {
            try enqueue(queue, id)
        }
        let expected = [
            "not served: default: 2 waiting; no running runner reads it (r1 drained, r3 lost)",
            "not served: nobody: 1 waiting; no running runner reads it",
        ]
        let status = cli(["status"])
        XCTAssertEqual(status.code, 0, status.err)
        for line in expected { XCTAssertTrue(status.stdout.contains("  " + line), status.stdout) }
        // A served queue, and one nobody serves but with nothing waiting, are not listed.
        XCTAssertFalse(status.stdout.contains("not served: busy"), status.stdout)
        XCTAssertFalse(status.stdout.contains("not served: idle"), status.stdout)

        let top = cli(["top", "--once"])
        XCTAssertEqual(top.code, 0, top.err)
        for line in expected { XCTAssertTrue(top.stdout.contains("  " + line), top.stdout) }
        XCTAssertFalse(top.stdout.contains("not served: busy"), top.stdout)

        let json = cli(["status", "--json"])
        XCTAssertEqual(json.code, 0, json.err)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json.out) as? [String: Any])
        let unserved = try XCTUnwrap(object["not_served"] as? [[String: Any]])
        XCTAssertEqual(unserved.map { $0["queue"] as? String }, ["default", "nobody"])
        XCTAssertEqual(unserved.map { $0["waiting"] as? Int }, [2, 1])
        let readers = try XCTUnwrap(unserved.first?["readers"] as? [[String: String]])
        XCTAssertEqual(readers, [["id": "r1", "state": "drained"], ["id": "r3", "state": "lost"]])
        XCTAssertEqual((unserved.last?["readers"] as? [Any])?.count, 0)
    }

    /// Jobs waiting for their next attempt show in every view: status's RETRIES, its JSON, and top's title.
    func testRetriesScheduledAreCountedInStatusJSONAndTop() throws {
        var json = cli(["status", "--json"])
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json.out) as? [String: Any], json.err)
        XCTAssertEqual(object["retries_scheduled"] as? Int, 0)
        XCTAssertTrue(object["next_retry_due_ms"] is NSNull, json.stdout)
        XCTAssertFalse(cli(["status"]).stdout.contains("RETRIES"))

        // What a failed attempt with attempts left writes: the job id, scored by when it is due.
        // A score is a double: a hand-written inf is no time (and must not trap the view).
        _ = try send(["ZADD", key("delayed"), "1796383882412", "later-1", "1796383000000", "first-1", "inf", "odd-1"])
        let status = cli(["status"])
        XCTAssertEqual(status.code, 0, status.err)
        XCTAssertTrue(
            status.stdout.contains(
                "\nRETRIES\n  3 jobs wait for their next attempt:\n    first-1  due 2026-12-04T11:16:40.000Z\n"
                    + "    later-1  due 2026-12-04T11:31:22.412Z\n    odd-1  due at no known time\n"),
            status.stdout)
        json = cli(["status", "--json"])
        object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json.out) as? [String: Any], json.err)
        XCTAssertEqual(object["retries_scheduled"] as? Int, 3)
        XCTAssertEqual(object["next_retry_due_ms"] as? Int, 1_796_383_000_000)
        let next = try XCTUnwrap(object["next_retries"] as? [[String: Any]])
        XCTAssertEqual(next.map { $0["id"] as? String }, ["first-1", "later-1", "odd-1"])
        XCTAssertTrue(next.last?["due_ms"] is NSNull)
        let top = cli(["top", "--once"])
        XCTAssertEqual(top.code, 0, top.err)
        XCTAssertTrue(top.stdout.contains("  waiting 0  retrying 3  "), top.stdout)

        // A delayed set of another type is named, and the rest of the view still shows.
        _ = try send(["DEL", key("delayed")])
        _ = try send(["SET", key("delayed"), "x"])
        json = cli(["status", "--json"])
        XCTAssertEqual(json.code, 0, json.err)
        object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json.out) as? [String: Any], json.err)
        XCTAssertEqual(object["retries_scheduled"] as? Int, 0)
        XCTAssertEqual(
            object["wrong_type"] as? [[String: String]],
            [["key": key("delayed"), "type": "string", "expected": "zset"]])
    }

    /// A delayed set's first score written by hand as inf, -inf or beyond an Int (ZADD takes them) is counted
    /// without a due time: status, its JSON and top trapped (Illegal instruction) converting it to an Int.
    func testARetryScoredInfOrBeyondAnIntIsCountedWithoutADueTime() throws {
        for score in ["inf", "-inf", "1e300", "-1e19"] {
            _ = try send(["DEL", key("delayed")])
            _ = try send(["ZADD", key("delayed"), score, "odd-1"])
            let status = cli(["status"])
            XCTAssertEqual(status.code, 0, "\(score): \(status.err)")
            XCTAssertTrue(
                status.stdout.contains(
                    "\nRETRIES\n  1 job waits for its next attempt:\n    odd-1  due at no known time\n"),
                "\(score): \(status.stdout)")
            let json = cli(["status", "--json"])
            XCTAssertEqual(json.code, 0, "\(score): \(json.err)")
            let object = try XCTUnwrap(
                try? JSONSerialization.jsonObject(with: json.out) as? [String: Any], "\(score): \(json.err)")
            XCTAssertEqual(object["retries_scheduled"] as? Int, 1, score)
            XCTAssertTrue(object["next_retry_due_ms"] is NSNull, "\(score): \(json.stdout)")
            let top = cli(["top", "--once"])
            XCTAssertEqual(top.code, 0, "\(score): \(top.err)")
            XCTAssertTrue(top.stdout.contains("  retrying 1  "), "\(score): \(top.stdout)")
        }
    }

    /// What status and top show of the pool comes from Redis, where anyone may write a runner's node or state or a
    /// queue's key with an escape sequence or a line break: each is shown escaped, as job ids and reasons already
    /// were, not sent to the terminal raw.
    func testStatusAndTopEscapeControlCharactersWrittenByHand() throws {
        _ = try send([
            "HSET", key("runners"), "odd",
            #"{"node":"n\u001b[33m","state":"run\u001b[31mning\r\n","queues":["q\u001b[32m"],"pid":1}"#,
        ])
        _ = try send(["XADD", key("jobs:a\r\nb\u{1b}[31m"), "*", "id", "x-1", "spec", #"{"argv":["true"]}"#])
        for arguments in [["status"], ["top", "--once"]] {
            let result = cli(arguments)
            XCTAssertEqual(result.code, 0, result.err)
            XCTAssertFalse(result.stdout.unicodeScalars.contains("\u{1b}"), "\(arguments): \(result.stdout)")
            XCTAssertFalse(result.stdout.unicodeScalars.contains("\r"), "\(arguments): \(result.stdout)")
            for shown in ["n\\u{1b}[33m", "\\u{1b}[31mning\\u{d}\\u{a}", "q\\u{1b}[32m", "a\\u{d}\\u{a}b\\u{1b}[31m"] {
                XCTAssertTrue(result.stdout.contains(shown), "\(arguments): \(shown) in \(result.stdout)")
            }
        }
    }

    /// A requirement stream's name is a digest of its labels: QUEUES gives the labels beside it, in status and top.
    func testQueuesShowTheLabelsARequirementStreamIsFor() throws {
        XCTAssertEqual(cli(["submit", "--id", "rq-1", "--require", "gpu=a100", "--", "true"]).code, 0)
        let name = "default:req:\(try LabelSet(["gpu": "a100"]).requirementId) (gpu=a100)"
        for arguments in [["status"], ["top", "--once"]] {
            let view = cli(arguments)
            XCTAssertEqual(view.code, 0, view.err)
            XCTAssertTrue(
                view.stdout.split(separator: "\n").contains { $0.hasPrefix("  \(name)  ") },
                "\(arguments): \(view.stdout)")
        }
    }

    func testSubmitWaitSaysOnceThatNoRunningRunnerReadsItsQueue() throws {
        try register("r1", state: "drained", queues: ["default"])
        try register("r2", state: "running", queues: ["busy"])
        let unserved = cli(["submit", "--id", "u1", "--wait", "--wait-timeout", "7s", "--", "true"])
        XCTAssertEqual(unserved.code, 1, unserved.err)
        // The runners that list it are named with their state, as status names them under NOT SERVED.
        let note = "runner: job u1 is queued on 'default', which no running runner reads (r1 drained)\n"
        XCTAssertEqual(unserved.err.components(separatedBy: note).count, 2, unserved.err)
        XCTAssertTrue(unserved.err.contains("gave up waiting for job 'u1'"), unserved.err)

        // A queue a running runner reads gets no note, even when the job has not started yet.
        let served = cli(["submit", "--id", "s1", "--queue", "busy", "--wait", "--wait-timeout", "4s", "--", "true"])
        XCTAssertEqual(served.code, 1, served.err)
        XCTAssertFalse(served.err.contains("which no running runner reads"), served.err)
    }

    /// As for a queue nobody reads: a job requiring labels that no running runner of its queue has is named once on
    /// stderr after a few seconds, with the labels missing; it stays queued, and the wait goes on to --wait-timeout.
    func testSubmitWaitSaysOnceWhichRequiredLabelsNoRunningRunnerOfItsQueueHas() throws {
        try register("r1", state: "running", queues: ["default"], labels: ["gpu": "a100", "zone": "eu"])
        // Each has gpu=h100 but reads no requirement stream of default: drained, another queue, lost.
        try register("r2", state: "drained", queues: ["default"], labels: ["gpu": "h100"])
        try register("r3", state: "running", queues: ["other"], labels: ["gpu": "h100"])
        try register("r4", state: "running", queues: ["default"], labels: ["gpu": "h100"], lease: false)
        let require = ["--require", "gpu=h100", "--require", "zone=eu", "--wait", "--wait-timeout"]
        let missing = cli(["submit", "--id", "l1"] + require + ["5s", "--", "true"])
        XCTAssertEqual(missing.code, 1, missing.err)
        let note = "runner: job l1 requires gpu=h100,zone=eu: no running runner that reads 'default' has gpu=h100\n"
        XCTAssertEqual(missing.err.components(separatedBy: note).count, 2, missing.err)
        XCTAssertFalse(missing.err.contains("which no running runner reads"), missing.err)
        XCTAssertTrue(missing.err.contains("gave up waiting for job 'l1' after --wait-timeout 5s (it is still queued)"))
        XCTAssertEqual(try send(["HGET", key("job:l1"), "state"]).string, "queued")

        // Each label is some running runner's, none has both.
        try register("r5", state: "running", queues: ["default"], labels: ["gpu": "h100"])
        let split = cli(["submit", "--id", "l2"] + require + ["5s", "--", "true"])
        XCTAssertEqual(split.code, 1, split.err)
        let all = "runner: job l2 requires gpu=h100,zone=eu: no running runner that reads 'default' has all of them\n"
        XCTAssertEqual(split.err.components(separatedBy: all).count, 2, split.err)

        // A running runner of the queue with both: no note, though nothing runs the job here.
        try register("r6", state: "running", queues: ["default"], labels: ["gpu": "h100", "zone": "eu", "os": "x"])
        let served = cli(["submit", "--id", "l3"] + require + ["4s", "--", "true"])
        XCTAssertEqual(served.code, 1, served.err)
        XCTAssertFalse(served.err.contains("runner: job l3 requires"), served.err)
        XCTAssertTrue(served.err.contains("gave up waiting for job 'l3'"), served.err)
    }

    func testAnEmptyRegistryNamesItsNamespace() throws {
        let status = cli(["status"])
        XCTAssertEqual(status.code, 0, status.err)
        XCTAssertTrue(
            status.stdout.hasPrefix("RUNNERS\n  (none registered in namespace '\(namespace)')\n"), status.stdout)
    }

    func testAllSaysHowManyRunnersItWasSentTo() throws {
        let none = cli(["drain", "--all"])
        XCTAssertEqual(none.code, 0, none.err)
        XCTAssertEqual(
            none.err, "runner: warning: no runner is running in namespace '\(namespace)'; nothing was sent\n")
        XCTAssertEqual(none.stdout, "", "no command id: nothing was sent")
        XCTAssertEqual(try send(["XLEN", key("control")]).int, 0, "no command nobody would read")

        try register("r1", state: "running", queues: ["default"])
        try register("r2", state: "running", queues: ["default"], lease: false)
        let one = cli(["resume", "--all"])
        XCTAssertEqual(one.code, 0, one.err)
        XCTAssertEqual(one.err, "runner: sent to 1 runner\n")
    }

    func testALostRunnersRowShowsNoCapacityOrRunningJobs() throws {
        try register("r1", state: "running", queues: ["default"])
        try register("r2", state: "running", queues: ["default"], lease: false)
        try register("r3", state: "lost", queues: ["default"], lease: false)
        let status = cli(["status"])
        XCTAssertEqual(status.code, 0, status.err)
        let rows = status.stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
        // A live runner's row keeps its heartbeat's figures (LEASE is whatever is left of the minute).
        XCTAssertTrue(rows.contains { $0.hasPrefix("r1 n1 running ") && $0.hasSuffix("s 1/2 job-r1 -") }, "\(rows)")
        XCTAssertTrue(rows.contains("r2 n1 running (lost) expired - - -"), "\(rows)")
        XCTAssertTrue(rows.contains("r3 n1 lost expired - - -"), "\(rows)")
        XCTAssertFalse(status.stdout.contains("job-r2") || status.stdout.contains("job-r3"), status.stdout)

        let help = runCLI(["status", "--help"]).stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        XCTAssertTrue(help.contains("running (lost)' or the like before a reaper has acted)"), help)
        XCTAssertTrue(help.contains("Its CAPACITY and RUNNING show -"), help)

        // --json: what the text view shows as - is null, not the last heartbeat's figures.
        let json = cli(["status", "--json"])
        XCTAssertEqual(json.code, 0, json.err)
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: json.out) as? [String: Any])
        let runners = try XCTUnwrap(object["runners"] as? [[String: Any]])
        let byId = Dictionary(uniqueKeysWithValues: runners.map { ($0["id"] as? String ?? "?", $0) })
        XCTAssertEqual(byId["r1"]?["capacity"] as? Int, 2)
        XCTAssertEqual(byId["r1"]?["running"] as? [String], ["job-r1"])
        XCTAssertEqual(byId["r1"]?["lost"] as? Bool, false)
        for id in ["r2", "r3"] {
            let runner = try XCTUnwrap(byId[id])
            for field in ["capacity", "capacity_free", "running", "lease_remaining_ms"] {
                XCTAssertTrue(runner[field] is NSNull, "\(id).\(field) should be null: \(runner)")
            }
            XCTAssertEqual(runner["lost"] as? Bool, true, "\(runner)")
        }
        XCTAssertFalse(String(decoding: json.out, as: UTF8.self).contains("job-r2"), json.stdout)
    }

    /// `status --watch --json` prints one JSON object per refresh, one line each (for a dashboard script), instead
    /// of dropping --json for the text view; --events, which only the live view has, is refused with it.
    func testStatusWatchJSONPrintsOneObjectPerLine() throws {
        try register("r1", state: "running", queues: ["default"])
        let process = Process()
        process.runnerBinary(
            ["status", "--redis", endpoint.url, "--namespace", namespace, "--watch", "--json", "--interval", "100ms"])
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try pipe.fileHandleForWriting.close()
        let reader = pipe.fileHandleForReading.fileDescriptor
        var received: [UInt8] = []
        var byte: UInt8 = 0
        let gotLines = try waitUntil(timeout: .seconds(20)) {
            var fds = [pollfd(fd: reader, events: Int16(POLLIN), revents: 0)]
            while poll(&fds, 1, 0) > 0, read(reader, &byte, 1) == 1 { received.append(byte) }
            return received.filter { $0 == UInt8(ascii: "\n") }.count >= 3
        }
        XCTAssertTrue(gotLines, String(decoding: received, as: UTF8.self))
        let lines = String(decoding: received, as: UTF8.self).split(separator: "\n").prefix(3)
        for line in lines {
            let object = try XCTUnwrap(
                try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], String(line))
            XCTAssertEqual((object["runners"] as? [[String: Any]])?.first?["id"] as? String, "r1", String(line))
        }

        let once = cli(["status", "--watch", "--json", "--once"])
        XCTAssertEqual(once.code, 0, once.err)
        XCTAssertEqual(once.stdout.filter { $0 == "\n" }.count, 1, once.stdout)
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: once.out) as? [String: Any], once.stdout)

        let events = runCLI(["status", "--watch", "--json", "--events", "3"])
        XCTAssertEqual(events.code, 2, events.err)
        XCTAssertTrue(events.err.hasPrefix("Error: --events cannot be used with --json\n"), events.err)
    }
}

/// A key of the wrong type (someone `SET` a string where a stream or hash belongs): the pool views show what they
/// can and name the key; a command that needs the key fails in one line that names it.
final class WrongTypeKeyViewTests: IntegrationTestCase {
    func testStatusAndTopShowThePoolAndNameAStreamOfTheWrongType() throws {
        let requirement = try LabelSet(["zone": "eu"])
        let stream = key("jobs:default:req:\(requirement.requirementId)")
        _ = try send(["HSET", key("requirements:default"), requirement.requirementId, #"{"zone":"eu"}"#])
        _ = try send(["SET", stream, "x"])
        _ = try send(["XADD", key("jobs:default"), "*", "id", "a", "spec", #"{"command":["true"]}"#])
        let line = "  key \(stream) is a string, expected a stream"
        for arguments in [["status"], ["top", "--once"]] {
            let result = cli(arguments)
            XCTAssertEqual(result.code, 0, "\(arguments): \(result.err)")
            let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            XCTAssertTrue(lines.contains { $0.hasPrefix("  default ") }, "\(arguments): \(result.stdout)")
            XCTAssertTrue(lines.contains("WRONG TYPE (left out of this view)"), "\(arguments): \(result.stdout)")
            XCTAssertTrue(lines.contains(line), "\(arguments): \(result.stdout)")
        }
        // The registry of the wrong type: the queues still show, and RUNNERS says why it lists none (not that none
        // is registered).
        _ = try send(["SET", key("runners"), "x"])
        let status = cli(["status"])
        XCTAssertEqual(status.code, 0, status.err)
        XCTAssertTrue(status.stdout.contains("  key \(key("runners")) is a string, expected a hash"), status.stdout)
        XCTAssertTrue(status.stdout.contains("\n  default "), status.stdout)
        try assertRunnersCannotBeListed()
    }

    /// `status` and `top --once` say under RUNNERS that the registry cannot be listed, naming its key as WRONG TYPE
    /// does, and never `(none registered ...)`; `status --json` has no runner and the key in `wrong_type`.
    private func assertRunnersCannotBeListed(file: StaticString = #filePath, line: UInt = #line) throws {
        let registry = key("runners")
        let expected = "  (cannot list the runners: key \(registry) is a string, expected a hash)"
        for arguments in [["status"], ["top", "--once"]] {
            let view = cli(arguments)
            XCTAssertEqual(view.code, 0, "\(arguments): \(view.err)", file: file, line: line)
            let lines = view.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let runners = try XCTUnwrap(lines.firstIndex(of: "RUNNERS"), view.stdout, file: file, line: line)
            XCTAssertEqual(
                lines.dropFirst(runners + 1).first, expected, "\(arguments): \(view.stdout)", file: file, line: line)
            XCTAssertFalse(
                view.stdout.contains("none registered"), "\(arguments): \(view.stdout)", file: file, line: line)
        }
        let json = cli(["status", "--json"])
        XCTAssertEqual(json.code, 0, json.err, file: file, line: line)
        let object = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any], json.stdout, file: file,
            line: line)
        XCTAssertEqual((object["runners"] as? [Any])?.count, 0, json.stdout, file: file, line: line)
        let wrong = try XCTUnwrap(object["wrong_type"] as? [[String: String]], json.stdout, file: file, line: line)
        XCTAssertTrue(
            wrong.contains(["key": registry, "type": "string", "expected": "hash"]), json.stdout, file: file, line: line
        )
    }

    /// Every runner writes `{nr}:heartbeats` (and warns when it is refused); status names it like `{nr}:events`.
    func testStatusNamesAHeartbeatsStreamOfTheWrongType() throws {
        _ = try send(["SET", key("heartbeats"), "x"])
        try assertTheViewsNameAStringStream(key("heartbeats"))
    }

    /// A `{nr}:reaper` of another type keeps every reaper from leading (they warn): status names it too.
    func testStatusNamesAReaperLeaseOfTheWrongType() throws {
        _ = try send(["HSET", key("reaper"), "x", "y"])
        for arguments in [["status"], ["top", "--once"]] {
            let view = cli(arguments)
            XCTAssertEqual(view.code, 0, "\(arguments): \(view.err)")
            XCTAssertEqual(
                view.stdout.components(separatedBy: "  key \(key("reaper")) is a hash, expected a string\n").count, 2,
                "\(arguments): \(view.stdout)")
        }
        let json = cli(["status", "--json"])
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        let wrong = try XCTUnwrap(object?["wrong_type"] as? [[String: String]], json.stdout)
        XCTAssertEqual(wrong, [["key": key("reaper"), "type": "hash", "expected": "string"]], json.stdout)
    }

    /// `status` and `top --once` list `stream` once under WRONG TYPE (a string, expected a stream), exit 0, and
    /// `status --json` has it in `wrong_type`.
    private func assertTheViewsNameAStringStream(
        _ stream: String, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let text = "  key \(stream) is a string, expected a stream"
        for arguments in [["status"], ["top", "--once"]] {
            let view = cli(arguments)
            XCTAssertEqual(view.code, 0, "\(arguments): \(view.err)", file: file, line: line)
            XCTAssertEqual(
                view.stdout.components(separatedBy: text + "\n").count, 2, "\(arguments): \(view.stdout)",
                file: file, line: line)
        }
        let json = cli(["status", "--json"])
        XCTAssertEqual(json.code, 0, json.err, file: file, line: line)
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        let wrong = try XCTUnwrap(object?["wrong_type"] as? [[String: String]], json.stdout, file: file, line: line)
        XCTAssertTrue(
            wrong.contains(["key": stream, "type": "string", "expected": "stream"]), json.stdout, file: file,
            line: line)
    }

    func testCommandsThatReadAKeyOfTheWrongTypeNameIt() throws {
        _ = try send(["SET", key("events"), "x"])
        _ = try send(["SET", key("dead"), "x"])
        // A runner holding its lease: `drain --all` to none running sends nothing, so it would not reach the key.
        _ = try send(["HSET", key("runners"), "r1", #"{"node":"n1","pid":7,"queues":["default"],"state":"running"}"#])
        _ = try send(["SET", key("runner:r1"), "token", "PX", "60000"])
        let events = "Error: Redis refused the command: WRONGTYPE key \(key("events")) is a string, expected a stream\n"
        for arguments in [["events"], ["events", "--follow"], ["drain", "--all"]] {
            let result = cli(arguments, timeout: 20)
            XCTAssertEqual(result.code, 1, "\(arguments): \(result.err)")
            XCTAssertEqual(result.err, events, "\(arguments)")
        }
        let dead = cli(["dead"])
        XCTAssertEqual(dead.code, 1, dead.err)
        XCTAssertEqual(
            dead.err, "Error: Redis refused the command: WRONGTYPE key \(key("dead")) is a string, expected a stream\n")
        // top shows the pool without its events, and status names the events stream too (every submit fails).
        try assertTheViewsNameAStringStream(key("events"))

        // A registry of another type lists no runner, which is no empty pool: the pool-wide commands name the key
        // (as `drain RUNNER` does) rather than warn that no runner is running.
        _ = try send(["DEL", key("runners")])
        _ = try send(["SET", key("runners"), "x"])
        let registry =
            "Error: Redis refused the command: WRONGTYPE key \(key("runners")) is a string, expected a hash\n"
        for arguments in [["drain", "--all"], ["resume", "--all"], ["shutdown", "--all"], ["drain", "r1"]] {
            let result = cli(arguments, timeout: 20)
            XCTAssertEqual(result.code, 1, "\(arguments): \(result.err)")
            XCTAssertEqual(result.err, registry, "\(arguments)")
        }
    }
}

extension WrongTypeKeyViewTests {
    /// `submit --require` registers its requirement stream in a script that checks both keys first: a key of
    /// another type is named and nothing is left behind (no empty stream and group, no registration, no job).
    func testSubmitRequireOntoAKeyOfTheWrongTypeNamesItAndLeavesNothingBehind() throws {
        let requirement = try LabelSet(["zone": "eu"])
        let stream = key("jobs:default:req:\(requirement.requirementId)")
        let registry = key("requirements:default")
        _ = try send(["SET", registry, "x"])
        var result = cli(["submit", "--id", "r1", "--require", "zone=eu", "--", "true"])
        XCTAssertEqual(result.code, 1, result.err)
        XCTAssertEqual(
            result.err, "Error: Redis refused the command: WRONGTYPE key \(registry) is a string, expected a hash\n")
        XCTAssertEqual(try send(["EXISTS", stream, key("job:r1")]).int, 0)
        XCTAssertEqual(try send(["GET", registry]).string, "x")

        _ = try send(["DEL", registry])
        _ = try send(["SET", stream, "x"])
        result = cli(["submit", "--id", "r2", "--require", "zone=eu", "--", "true"])
        XCTAssertEqual(result.code, 1, result.err)
        XCTAssertEqual(
            result.err, "Error: Redis refused the command: WRONGTYPE key \(stream) is a string, expected a stream\n")
        XCTAssertEqual(try send(["EXISTS", registry, key("job:r2")]).int, 0)

        // Fixed: the submit goes through.
        _ = try send(["DEL", stream])
        result = cli(["submit", "--id", "r3", "--require", "zone=eu", "--", "true"])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(try send(["XLEN", stream]).int, 1)
        XCTAssertEqual(try hash(registry), [requirement.requirementId: #"{"zone":"eu"}"#])
    }
}
