import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

/// Runner labels and job requirements: requirement streams, routing of plain entries, retries that stay routed.
final class RoutingTests: IntegrationTestCase {
    private let gpu = try! LabelSet(["gpu": "yes"])
    private var gpuQueue: String { "default:req:\(gpu.requirementId)" }

    /// Polls the events stream until the job has an event of this type.
    private func waitForEvent(_ type: String, of job: String) throws -> RecordedEvent? {
        var found: RecordedEvent?
        let seen = try waitUntil(timeout: .seconds(20)) {
            found = try events().first { $0.type == type && $0.job == job }
            return found != nil
        }
        XCTAssertTrue(seen, "no \(type) of job \(job)")
        return found
    }

    /// Waits until the job succeeded, checks that it ran on `runner` at `attempt` from the gpu requirement stream,
    /// and that its event `type` names that stream too.
    private func assertSucceededFromTheGPUStream(
        _ id: String, on runner: String, attempt: String, event type: String, line: UInt = #line
    ) throws -> RecordedEvent? {
        let record = try waitForState(id, ["succeeded"])
        XCTAssertEqual(record["runner"], runner, line: line)
        XCTAssertEqual(record["attempt"], attempt, line: line)
        XCTAssertEqual(record["queue"], gpuQueue, line: line)
        let event = try events().first { $0.type == type && $0.job == id }
        XCTAssertEqual(event?.data["queue"] as? String, gpuQueue, line: line)
        return event
    }

    func testJobsRequiringLabelsRunOnlyOnRunnersWithThemAndRetriesStayRouted() throws {
        try startRunner(name: "plain", ["--no-reaper", "--concurrency", "2", "--lease-ttl", "3s"])
        try startRunner(
            name: "gpu", ["--no-reaper", "--concurrency", "2", "--lease-ttl", "3s", "--label", "gpu=yes"],
            environment: ["RUNNER_LABELS": "ignored=because-the-flag-wins"])
        for index in 0..<4 {
            try submit(["--require", "gpu=yes", "--", "true"], id: "needs-\(index)")
            try submit(["--", "true"], id: "any-\(index)")
        }
        // Fails its first attempt: the retry must go back to the requirement stream, not the plain queue.
        try submit(
            [
                "--require", "gpu=yes", "--max-attempts", "2", "--backoff", "100ms", "--", "sh", "-c",
                "[ $NR_ATTEMPT = 2 ]",
            ], id: "retried")
        for index in 0..<4 {
            let needs = try waitForState("needs-\(index)", ["succeeded"])
            XCTAssertEqual(needs["runner"], "gpu", "a job requiring gpu=yes ran on \(needs["runner"] ?? "?")")
            XCTAssertEqual(needs["queue"], gpuQueue)
            try waitForState("any-\(index)", ["succeeded"])
        }
        _ = try assertSucceededFromTheGPUStream("retried", on: "gpu", attempt: "2", event: "job.retry_scheduled")
        XCTAssertFalse(try events().contains { $0.type == "job.routed" }, "submitted jobs need no routing")
        // The registration names the requirement for any reader.
        XCTAssertEqual(
            try hash(key("requirements:default")), [gpu.requirementId: #"{"gpu":"yes"}"#])
        // Advertised: the registry record, the heartbeats and runner.registered carry the labels.
        let record = try XCTUnwrap(
            try JSONSerialization.jsonObject(
                with: Data(try XCTUnwrap(try send(["HGET", key("runners"), "gpu"]).bytes))) as? [String: Any])
        XCTAssertEqual(record["labels"] as? [String: String], ["gpu": "yes"])
        let registered = try XCTUnwrap(try events().first { $0.type == "runner.registered" && $0.runner == "gpu" })
        XCTAssertEqual(registered.data["labels"] as? [String: String], ["gpu": "yes"])
        let beats = try send(["XREVRANGE", key("heartbeats"), "+", "-", "COUNT", "50"]).array ?? []
        let gpuBeat = beats.compactMap { $0.array.map { strings($0[1]) } }.first { $0["runner"] == "gpu" }
        XCTAssertEqual(gpuBeat?["labels"], #"{"gpu":"yes"}"#)
    }

    func testAPlainEntryRequiringLabelsIsRoutedToTheRunnerThatHasThem() throws {
        try startRunner(name: "plain", ["--no-reaper", "--lease-ttl", "3s"])
        let spec = #"{"argv":["true"],"requires":{"gpu":"yes"}}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "raw-1", "spec", spec])
        let routed = try waitForEvent("job.routed", of: "raw-1")
        XCTAssertEqual(routed?.runner, "plain")
        XCTAssertEqual(routed?.data["from_queue"] as? String, "default")
        XCTAssertEqual(routed?.data["queue"] as? String, gpuQueue)
        XCTAssertEqual(routed?.data["requires"] as? String, "gpu=yes")
        // Moved in one step: gone from the plain queue, waiting in the requirement stream, never started here.
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
        XCTAssertEqual(try send(["XLEN", key("jobs:\(gpuQueue)")]).int, 1)
        XCTAssertFalse(try events(of: "raw-1").contains("job.received"))

        try startRunner(name: "gpu", ["--no-reaper", "--lease-ttl", "3s", "--label", "gpu=yes", "--label", "zone=eu"])
        let record = try waitForState("raw-1", ["succeeded"])
        XCTAssertEqual(record["runner"], "gpu")
        XCTAssertEqual(record["queue"], gpuQueue)
        XCTAssertEqual(try send(["XLEN", key("jobs:\(gpuQueue)")]).int, 0)
    }
}

extension RoutingTests {
    /// A hand-added entry has no record until a runner writes one: routing it must keep the time it was added,
    /// not take the routed entry's (later) id as `submitted_at`.
    func testARoutedPlainEntryKeepsTheTimeItWasAdded() throws {
        let spec = #"{"argv":["true"],"requires":{"gpu":"yes"}}"#
        // Added 5 s before any runner reads it, as its id says (an entry's id is when it was added): the routed
        // entry's id is later by that much, without waiting for it.
        let redisNowMs = try XCTUnwrap((try send(["TIME"]).array?.first?.string).flatMap(Int.init)) * 1000
        let added = try XCTUnwrap(
            try send(["XADD", key("jobs:default"), "\(redisNowMs - 5000)-0", "id", "raw-3", "spec", spec]).string)
        let addedMs = try XCTUnwrap(added.split(separator: "-").first.map(String.init))
        try startRunner(name: "plain", ["--no-reaper", "--lease-ttl", "3s"])
        let routed = try waitForEvent("job.routed", of: "raw-3")
        let routedId = try XCTUnwrap(routed?.data["stream_id"] as? String)
        XCTAssertGreaterThan(Int(routedId.split(separator: "-")[0]) ?? 0, (Int(addedMs) ?? 0) + 1000)
        // Routed, the job has the record `submit` would have written, dated by the entry that was added.
        let queued = try job("raw-3")
        XCTAssertEqual(queued["state"], "queued")
        XCTAssertEqual(queued["queue"], gpuQueue)
        XCTAssertEqual(queued["stream_id"], routedId)
        XCTAssertEqual(queued["submitted_at"], addedMs)
        try startRunner(name: "gpu", ["--no-reaper", "--lease-ttl", "3s", "--label", "gpu=yes"])
        let record = try waitForState("raw-3", ["succeeded"])
        XCTAssertEqual(record["runner"], "gpu")
        XCTAssertEqual(record["attempt"], "1")
        XCTAssertEqual(record["submitted_at"], addedMs)
    }
}

extension RoutingTests {
    func testAJobOfALostRunnerIsRescheduledIntoItsRequirementStream() throws {
        let doomed = try startRunner(name: "doomed", ["--no-reaper", "--lease-ttl", "1s", "--label", "gpu=yes"])
        try submit(["--require", "gpu=yes", "--", "sh", "-c", "[ $NR_ATTEMPT = 2 ] || sleep 60"], id: "orphan")
        _ = try runningPid("orphan")
        doomed.signal(SIGKILL)
        XCTAssertNotNil(doomed.waitForExit(timeout: 10))
        // A plain runner with the reaper finds the lost runner's entry; only the gpu runner may run it again.
        try startRunner(name: "reaper", ["--lease-ttl", "1s", "--reaper-interval", "200ms"])
        try startRunner(name: "heir", ["--no-reaper", "--lease-ttl", "1s", "--label", "gpu=yes"])
        let rescheduled = try assertSucceededFromTheGPUStream(
            "orphan", on: "heir", attempt: "2", event: "job.rescheduled")
        XCTAssertEqual(rescheduled?.data["from_runner"] as? String, "doomed")
    }
}

extension RoutingTests {
    func testARetryOfAJobThatRanFromThePlainQueueIsRoutedWithItsRecord() throws {
        let first = try startRunner(name: "gpu", ["--no-reaper", "--lease-ttl", "3s", "--label", "gpu=yes"])
        let spec =
            #"{"shell":"[ $NR_ATTEMPT = 2 ]","requires":{"gpu":"yes"},"max_attempts":2,"backoff":{"initial_ms":5000}}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "again", "spec", spec])
        let scheduled = try waitForState("again", ["retry_scheduled"])
        XCTAssertEqual(scheduled["queue"], "default", "the first attempt ran from the plain queue")
        XCTAssertEqual(first.stop(), 0)
        // The plain runner's reaper moves the due retry onto the plain queue; the plain runner routes it, record too.
        try startRunner(name: "plain", ["--lease-ttl", "3s", "--reaper-interval", "200ms"])
        let routed = try waitForEvent("job.routed", of: "again")
        let record = try job("again")
        XCTAssertEqual(record["state"], "queued")
        XCTAssertEqual(record["queue"], gpuQueue)
        XCTAssertEqual(record["stream_id"], routed?.data["stream_id"] as? String)
        try startRunner(name: "gpu-2", ["--no-reaper", "--lease-ttl", "3s", "--label", "gpu=yes"])
        _ = try assertSucceededFromTheGPUStream("again", on: "gpu-2", attempt: "2", event: "job.routed")
    }
}

extension RoutingTests {
    /// The requirement stream's key a string: the route script refuses before its first write (Redis would keep the
    /// writes before the one that failed: the entry acked but not moved, lost), the runner says so in one line per
    /// try and leaves the entry pending, and routes it at its first try after the key is fixed.
    func testARequirementStreamOfTheWrongTypeLeavesTheJobPendingUntilTheKeyIsFixed() throws {
        let target = key("jobs:\(gpuQueue)")
        _ = try send(["SET", target, "not a stream"])
        let spec = #"{"argv":["true"],"requires":{"gpu":"yes"}}"#
        let added = try XCTUnwrap(try send(["XADD", key("jobs:default"), "*", "id", "wt-run", "spec", spec]).string)
        let runner = try startRunner(name: "plain", ["--no-reaper", "--lease-ttl", "3s"])
        let why = "WRONGTYPE key \(target) is a string, expected a stream"
        let line = "cannot move the job to its requirement stream (it stays pending and is tried again): \(why)"
        func tries() -> [Substring] { runner.log.split(separator: "\n").filter { $0.contains("WRONGTYPE") } }
        // Two tries: the first read, then the stray-pending check's (about one lease TTL later).
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { tries().count >= 2 }, runner.log)
        XCTAssertTrue(tries().allSatisfy { $0.contains(line) && $0.contains("error") }, runner.log)
        // Nothing written: the key as it was, no requirement registered, no record, no event; the entry pending.
        XCTAssertEqual(try send(["GET", target]).string, "not a stream")
        XCTAssertEqual(try send(["EXISTS", key("requirements:default"), key("job:wt-run"), key("dead")]).int, 0)
        XCTAssertEqual(try events(of: "wt-run"), [])
        let pending = try send(["XPENDING", key("jobs:default"), "runners", "-", "+", "10", "plain"]).array ?? []
        XCTAssertEqual(pending.compactMap { $0.array?.first?.string }, [added])

        _ = try send(["DEL", target])
        let routed = try waitForEvent("job.routed", of: "wt-run")
        XCTAssertEqual(routed?.data["previous_stream_id"] as? String, added)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
        XCTAssertEqual(try send(["XLEN", target]).int, 1)
    }

    /// One requirement stream SET to a string must not stall the runner's other streams (one XREADGROUP over all
    /// of them would fail whole with WRONGTYPE): the runner leaves it out with one warning naming the key, a plain
    /// job runs at once, and once the key is deleted the runner reads it again and a routed job runs too.
    func testARequirementStreamOfTheWrongTypeDoesNotStallTheRunnersOtherStreams() throws {
        // At debug: a recheck that finds the key still a string says so only there.
        let runner = try startRunner(
            name: "gpu", ["--no-reaper", "--lease-ttl", "3s", "--label", "gpu=yes", "--log-level", "debug"])
        try submit(["--require", "gpu=yes", "--", "true"], id: "req-0")
        try waitForState("req-0", ["succeeded"])
        let target = key("jobs:\(gpuQueue)")
        _ = try send(["DEL", target])
        _ = try send(["SET", target, "not a stream"])
        let warning = "key \(target) is a string, expected a stream; not reading it until it is fixed"
        try submit(["--", "echo", "plain"], id: "plain-1")
        // Within a couple of seconds of the SET, not after the key is fixed.
        let plain = try waitForState("plain-1", ["succeeded"], timeout: .seconds(3))
        XCTAssertEqual(plain["output_tail"], "plain\n", runner.log)
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { runner.log.contains(warning) }, runner.log)
        XCTAssertEqual(try send(["GET", target]).string, "not a stream")
        try submit(["--", "echo", "plain"], id: "plain-2")
        try waitForState("plain-2", ["succeeded"], timeout: .seconds(3))
        // Checked again about every 5 s: still a string, still one warning, and no read failure logged over and
        // over.
        let recheck = "checked key \(target) again: still a string, still not reading it"
        XCTAssertTrue(waitUntil(timeout: .seconds(20)) { runner.log.contains(recheck) }, runner.log)
        XCTAssertEqual(runner.log.components(separatedBy: warning).count, 2, runner.log)
        XCTAssertFalse(runner.log.contains("intake read failed"), runner.log)

        _ = try send(["DEL", target])
        try submit(["--require", "gpu=yes", "--", "echo", "routed"], id: "req-1")
        let routed = try waitForState("req-1", ["succeeded"], timeout: .seconds(15))
        XCTAssertEqual(routed["queue"], gpuQueue)
        XCTAssertEqual(routed["runner"], "gpu")
        XCTAssertEqual(runner.log.components(separatedBy: "key \(target) is a stream again").count, 2, runner.log)
        // Nothing lost, nothing run twice.
        for id in ["req-0", "plain-1", "plain-2", "req-1"] {
            let types = try events(of: id)
            XCTAssertEqual(types.filter { $0 == "job.started" }.count, 1, "\(id): \(types)")
        }
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
        XCTAssertEqual(try send(["XPENDING", target, "runners"]).array?.first?.int, 0)
        XCTAssertTrue(runner.isRunning)
        XCTAssertEqual(runner.stop(), 0, runner.log)
    }

    /// A requirement stream of another type when the runner starts: it starts, names the key, serves its queue.
    func testARunnerStartsWhileARequirementStreamHasTheWrongType() throws {
        let target = key("jobs:\(gpuQueue)")
        _ = try send(["HSET", key("requirements:default"), gpu.requirementId, #"{"gpu":"yes"}"#])
        _ = try send(["SET", target, "x"])
        let runner = try startRunner(name: "gpu", ["--no-reaper", "--lease-ttl", "3s", "--label", "gpu=yes"])
        try submit(["--", "true"], id: "plain-s")
        try waitForState("plain-s", ["succeeded"], timeout: .seconds(5))
        let warning = "key \(target) is a string, expected a stream; not reading it until it is fixed"
        XCTAssertEqual(runner.log.components(separatedBy: warning).count, 2, runner.log)
    }
}

/// A requirement no runner satisfies: the job waits in its stream, shows in `runner status`, and costs nothing.
final class UnservedRequirementTests: PrivateRedisTestCase {
    func testAJobNoRunnerCanServeStaysQueuedWithoutSpinning() throws {
        try startRunner(name: "plain", ["--no-reaper", "--label", "gpu=no"])
        let spec = #"{"argv":["true"],"requires":{"gpu":"a100"}}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "raw-2", "spec", spec])
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(15)) { try events(of: "raw-2").contains("job.routed") },
            "the entry was not routed")
        let waitingQueue = "default:req:\(try LabelSet(["gpu": "a100"]).requirementId)"
        // Only the runner and this test talk to this server: its command count over a few seconds is the runner's.
        func processed() throws -> Int {
            let info = String(decoding: try send(["INFO", "stats"]).bytes ?? [], as: UTF8.self)
            let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_commands_processed:") }
            return Int(line?.split(separator: ":").last ?? "") ?? -1
        }
        let before = try processed()
        let window = ContinuousClock.now
        // A measuring window, not a wait for something: the count over it is what is asserted.
        Thread.sleep(forTimeInterval: 5)
        let elapsed = Double((ContinuousClock.now - window).milliseconds) / 1000
        let commands = try processed() - before - 1  // this test's first INFO (the second is counted after it ran)
        // Spinning on the entry (read, route, read again) would be thousands; idle traffic is a few per second.
        XCTAssertLessThan(Double(commands) / elapsed, 4, "\(commands) commands in \(elapsed)s")
        XCTAssertEqual(try send(["XLEN", key("jobs:\(waitingQueue)")]).int, 1)
        XCTAssertEqual(try events(of: "raw-2").filter { $0 == "job.routed" }.count, 1)
        XCTAssertFalse(try events(of: "raw-2").contains("job.received"))

        let status = cli(["status"])
        XCTAssertEqual(status.code, 0, status.err)
        XCTAssertTrue(
            status.stdout.contains("waiting for labels gpu=a100: 1 (queue default, no running runner has them)"), status.stdout)
        XCTAssertTrue(status.stdout.contains("gpu=no"), "the runner's labels in status:\n\(status.stdout)")
    }
}
