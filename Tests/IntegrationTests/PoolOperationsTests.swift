import Foundation
import RedisClient
import TestSupport
import XCTest

@testable import RunnerCLI

/// Operating a pool: control commands (drain, resume, shutdown, cancel, migrate), migration to a runner that resumes
/// the identity, and ephemeral runners.
final class PoolOperationsTests: IntegrationTestCase {
    private func registry(_ runner: String) throws -> [String: Any] {
        guard let bytes = try send(["HGET", key("runners"), runner]).bytes,
            let object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
        else { return [:] }
        return object
    }

    private func waitForRegistryState(_ runner: String, _ state: String, timeout: Duration = .seconds(20)) throws {
        var last: [String: Any] = [:]
        let reached = try waitUntil(timeout: timeout) {
            last = try registry(runner)
            return last["state"] as? String == state
        }
        XCTAssertTrue(reached, "runner \(runner) did not reach \(state); last record: \(last)")
    }

    /// What the runners wrote in this namespace matches docs/schema/ (scripts/check_protocol.py); returns the
    /// counts by kind and event type. Skipped (empty) without the Python modules.
    @discardableResult
    private func validateSchemas() throws -> [String: Int] {
        guard Python.require(["redis", "jsonschema"]) else { return [:] }
        return try checkProtocol()
    }

    private func commandOutcomes() throws -> [RecordedEvent] { try events().filter { $0.type == "runner.command" } }

    func testCancelOfARunningJobStopsItsWholeTreeWithEveryPhaseAndIsNotRetried() throws {
        try startRunner(["--kill-grace", "1s"])
        // Both the shell and its child ignore SIGTERM: the cancel needs its SIGKILL phase.
        try submit(
            ["--max-attempts", "3", "--shell", "trap '' TERM; sleep 60 & echo pid=$!; echo pid=$$; wait"], id: "cr-1")
        _ = try runningPid("cr-1")
        var pids: [Int32] = []
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                pids = self.pids(in: String(decoding: try logBytes("cr-1").stdout, as: UTF8.self))
                return pids.count == 2
            })
        XCTAssertTrue(pids.allSatisfy(processIsAlive))

        let cancel = cli(["cancel", "cr-1", "--wait", "--wait-timeout", "20s"])
        XCTAssertEqual(cancel.code, 0, cancel.err)
        let lines = cancel.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, cancel.stdout)
        XCTAssertEqual(lines.last, "cancelled")
        let said = "cancel requested for job cr-1 (running on r1); command "
        XCTAssertEqual(lines.first?.hasPrefix(said), true, cancel.stdout)
        let commandId = String((lines.first ?? "").dropFirst(said.count))
        XCTAssertTrue(commandId.wholeMatch(of: /[0-9]+-[0-9]+/) != nil, cancel.stdout)

        for pid in pids { XCTAssertFalse(processIsAlive(pid), "process \(pid) of the cancelled job is still alive") }
        let record = try job("cr-1")
        XCTAssertEqual(record["state"], "cancelled")
        XCTAssertEqual(record["attempt"], "1")
        XCTAssertEqual(record["forced_kill"], "1")
        XCTAssertEqual(record["signal"], "9")
        XCTAssertNil(record["retry_at"])
        XCTAssertEqual(record["failures"] ?? "0", "0", "a cancel is not a failure")
        XCTAssertNotNil(record["cancel_requested_at"])
        XCTAssertEqual(record["reason"]?.hasSuffix("(command \(commandId))"), true, record["reason"] ?? "")
        let phases = try events(of: "cr-1").filter { $0.hasPrefix("job.cancel") }
        XCTAssertEqual(phases, ["job.cancel_received", "job.cancel_sigterm", "job.cancel_sigkill", "job.cancelled"])
        XCTAssertEqual(try events(of: "cr-1").last, "job.cancelled")
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0, "the entry is acked and deleted")
        XCTAssertEqual(try send(["XLEN", key("dead")]).int, 0, "no dead letter")
        XCTAssertEqual(try send(["ZCARD", key("delayed")]).int, 0, "no retry")
        let outcome = try commandOutcomes().first { $0.data["command_id"] as? String == commandId }
        XCTAssertEqual(outcome?.data["outcome"] as? String, "accepted")
        XCTAssertEqual(outcome?.data["job"] as? String, "cr-1")

        let again = cli(["cancel", "cr-1"])
        XCTAssertEqual(again.code, 1)
        XCTAssertEqual(again.err, "Error: job 'cr-1' already cancelled\n")
        let counts = try validateSchemas()
        if !counts.isEmpty {
            for type in [
                "job.cancel_received", "job.cancel_sigterm", "job.cancel_sigkill", "job.cancelled", "runner.command",
            ] {
                XCTAssertEqual(counts[type], 1, type)
            }
        }
    }

    func testCancelOfAQueuedJobNeverStartsItAndSIGTERMSufficesForARunningOne() throws {
        try startRunner(["--concurrency", "1", "--kill-grace", "5s"])
        try submit(["--", "sleep", "30"], id: "cq-busy")
        _ = try runningPid("cq-busy")
        try submit(["--", "touch", "/tmp/nr-never-\(namespace)"], id: "cq-1")
        let cancel = cli(["cancel", "cq-1"])
        XCTAssertEqual(cancel.code, 0, cancel.err)
        XCTAssertEqual(cancel.stdout, "cancelled cq-1 (it was queued)\n")
        XCTAssertEqual(try job("cq-1")["state"], "cancelled")
        XCTAssertEqual(
            try send(["XLEN", key("jobs:default")]).int, 1,
            "the cancel deleted the queued entry at once (queue length and lag stop counting it); cq-busy's is left")

        // A cancel on the pool-wide stream is answered by the owner. The busy job dies of the SIGTERM: no SIGKILL
        // phase; then the runner reads the cancelled entry and drops it.
        let poolCancel = try send(["XADD", key("control"), "*", "command", "cancel", "job", "cq-busy"]).string ?? ""
        XCTAssertEqual(try waitForState("cq-busy", ["cancelled"])["forced_kill"], "0")
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { self.commandOutcomesCount(for: "pool/" + poolCancel) == 1 })
        XCTAssertEqual(
            try events(of: "cq-busy").filter { $0.hasPrefix("job.cancel") },
            ["job.cancel_received", "job.cancel_sigterm", "job.cancelled"])
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try self.send(["XLEN", self.key("jobs:default")]).int == 0 },
            "the stopped job's entry is acked and deleted with its result")
        XCTAssertEqual(try events(of: "cq-1"), ["job.submitted", "job.cancelled"], "never received, never started")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/tmp/nr-never-\(namespace)"))
        let counts = try validateSchemas()
        XCTAssertEqual(counts.isEmpty ? 2 : counts["job.cancelled"], 2, "one never started, one stopped")
        let pending = try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int
        XCTAssertEqual(pending, 0)
    }

    func testCancelOfAJobWaitingForItsRetryTakesItOutOfTheDelayedSet() throws {
        try startRunner()
        try submit(["--max-attempts", "2", "--backoff", "1h", "--", "false"], id: "cr-retry")
        try waitForState("cr-retry", ["retry_scheduled"])
        XCTAssertEqual(try send(["ZCARD", key("delayed")]).int, 1)
        let cancel = cli(["cancel", "cr-retry"])
        XCTAssertEqual(cancel.code, 0, cancel.err)
        XCTAssertEqual(cancel.stdout, "cancelled cr-retry (it was retry_scheduled)\n")
        let record = try job("cr-retry")
        XCTAssertEqual(record["state"], "cancelled")
        XCTAssertTrue(record["reason"]?.hasPrefix("cancelled before it started (by ") == true, record["reason"] ?? "")
        // The failed first attempt's end is not this end's (found by fresh19 and breaker19b).
        for field in ["retry_at", "exit_code", "signal", "duration_ms", "output_tail", "forced_kill", "requeued_from"] {
            XCTAssertNil(record[field], "\(field): \(record[field] ?? "")")
        }
        XCTAssertEqual(record["failures"], "1")
        XCTAssertEqual(try send(["ZCARD", key("delayed")]).int, 0)
        XCTAssertGreaterThan(try send(["PTTL", key("job:cr-retry")]).int ?? -1, 0, "the result expires")
    }

    /// Starts runner r1 (no reaper) running `id` (a sleep), kills it with kill -9, then cancels the job: the cancel
    /// is recorded, but nobody reads r1's control stream.
    private func cancelWithItsRunnerKilled(_ id: String) throws {
        let runner = try startRunner(["--lease-ttl", "2s", "--no-reaper"])
        try submit(["--", "sleep", "60"], id: id)
        let pid = try runningPid(id)
        runner.signal(SIGKILL)
        XCTAssertNotNil(runner.waitForExit(timeout: 10))
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { !processIsAlive(pid) }, "the watchdog kills the job")
        let cancel = cli(["cancel", id])
        XCTAssertEqual(cancel.code, 0, cancel.err)
        XCTAssertEqual(try job(id)["state"], "running", "nobody reads r1's control stream now")
    }

    /// A job cancelled while its runner was already dead is cancelled by the reaper that finds the runner lost: no
    /// runner has to claim it again (here none is left but the control plane), and it never runs again.
    func testACancelOfADeadRunnersJobIsCarriedOutByTheReaperWithoutAnyRunner() throws {
        try cancelWithItsRunnerKilled("cdr-1")
        let entry = try XCTUnwrap(try job("cdr-1")["stream_id"])

        let control = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "ctl", subcommand: "control",
            arguments: ["--interval", "300ms", "--log-level", "warning"])
        defer { control.stop(timeout: 10) }
        let record = try waitForState("cdr-1", ["cancelled", "queued"])
        XCTAssertEqual(record["state"], "cancelled")
        let requestedAt = try XCTUnwrap(record["cancel_requested_at"].flatMap { Int($0) })
        XCTAssertEqual(
            record["reason"],
            "cancelled while it ran; its runner was lost before it stopped it: r1 (the cancel was requested at "
                + "\(formatTimestamp(requestedAt)))")
        // `runner result` shows the time as the reason does, not the field's milliseconds.
        let result = cli(["result", "cdr-1"])
        XCTAssertTrue(
            result.stdout.split(separator: "\n").contains("cancel_requested_at: \(formatTimestamp(requestedAt))"),
            result.stdout)
        XCTAssertEqual(try events(of: "cdr-1").suffix(1), ["job.cancelled"])
        XCTAssertFalse(try events(of: "cdr-1").contains("job.rescheduled"))
        let event = try XCTUnwrap(try events().last { $0.job == "cdr-1" })
        XCTAssertEqual(event.runner, "ctl")
        XCTAssertEqual(event.data["started"] as? Bool, true)
        XCTAssertEqual(event.data["from_runner"] as? String, "r1")
        XCTAssertEqual(event.data["stream_id"] as? String, entry)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0, "no entry left to run it again")
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
        XCTAssertGreaterThan(try send(["PTTL", key("job:cdr-1")]).int ?? -1, 0, "the result expires")
    }

    func testACancelSentWhileTheOwnerWasDeadIsCarriedOutWhenTheJobIsClaimedAgain() throws {
        try cancelWithItsRunnerKilled("cd-1")
        XCTAssertNotNil(try job("cd-1")["cancel_requested_at"])
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try self.send(["EXISTS", self.key("runner:r1")]).int == 0 })

        try startRunner(["--lease-ttl", "2s"])
        let record = try waitForState("cd-1", ["cancelled"])
        let requestedAt = try XCTUnwrap(record["cancel_requested_at"].flatMap { Int($0) })
        XCTAssertEqual(
            record["reason"],
            "cancelled before it started again (the cancel was requested at \(formatTimestamp(requestedAt)))")
        XCTAssertEqual(try events(of: "cd-1").filter { $0 == "job.started" }.count, 1, "never started again")
        XCTAssertEqual(try events(of: "cd-1").last, "job.cancelled")
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try self.send(["XLEN", self.key("jobs:default")]).int == 0 })
    }

    func testAPoolControlKeyOfAnotherTypeDoesNotCutTheRunnerOffItsOwnStream() throws {
        _ = try send(["SET", key("control"), "junk"])
        let runner = try startRunner()
        let drain = cli(["drain", "r1", "--wait", "--wait-timeout", "10s"])
        XCTAssertEqual(drain.code, 0, drain.err + runner.log)
        XCTAssertEqual(drain.stdout.split(separator: "\n").last, "accepted")
        let resume = cli(["resume", "r1", "--wait", "--wait-timeout", "10s"])
        XCTAssertEqual(resume.stdout.split(separator: "\n").last, "accepted", resume.err)
        let warning = "key \(key("control")) is a string, expected a stream; not reading it until it is fixed"
        XCTAssertEqual(runner.log.components(separatedBy: warning).count - 1, 1, runner.log)
        // Fixed (deleted): the key is read again within a recheck, and a pool-wide command reaches the runner.
        _ = try send(["DEL", key("control")])
        let readAgain = "key \(key("control")) is a stream again (or gone); reading it again"
        XCTAssertTrue(waitUntil(timeout: .seconds(15)) { runner.log.contains(readAgain) }, runner.log)
        let drainAll = cli(["drain", "--all"])
        XCTAssertEqual(drainAll.code, 0, drainAll.err)
        try waitForRegistryState("r1", "drained")
        XCTAssertEqual(runner.log.components(separatedBy: warning).count - 1, 1, runner.log)
        XCTAssertEqual(runner.log.components(separatedBy: readAgain).count - 1, 1, runner.log)
        XCTAssertFalse(runner.log.contains("control stream read failed"), runner.log)
    }

    func testDrainHoldsNewJobsUntilResume() throws {
        try startRunner()
        try submit(["--", "sleep", "2"], id: "dr-running")
        _ = try runningPid("dr-running")
        let drain = cli(["drain", "r1", "--wait"])
        XCTAssertEqual(drain.code, 0, drain.err)
        XCTAssertEqual(drain.stdout.split(separator: "\n").last, "accepted")
        XCTAssertEqual(try registry("r1")["state"] as? String, "draining", "a job still runs")
        // Drained while a job still runs is draining, and a second drain says so.
        let whileDraining = cli(["drain", "r1", "--wait"])
        XCTAssertEqual(whileDraining.stdout.split(separator: "\n").last, "ignored: already draining")
        try waitForState("dr-running", ["succeeded"])
        try waitForRegistryState("r1", "drained")
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(5)) {
                try self.events().contains {
                    $0.type == "runner.capacity_update" && $0.data["state"] as? String == "drained"
                }
            })

        try submit(["--", "true"], id: "dr-1")
        // Not taken while drained (the runner heartbeats meanwhile: it stays registered with its lease).
        XCTAssertFalse(try waitUntil(timeout: .seconds(2)) { try self.job("dr-1")["state"] != "queued" })
        XCTAssertEqual(try send(["EXISTS", key("runner:r1")]).int, 1)
        let again = cli(["drain", "r1", "--wait"])
        XCTAssertEqual(again.stdout.split(separator: "\n").last, "ignored: already drained")

        let resume = cli(["resume", "r1", "--wait"])
        XCTAssertEqual(resume.code, 0, resume.err)
        XCTAssertEqual(resume.stdout.split(separator: "\n").last, "accepted")
        try waitForState("dr-1", ["succeeded"])
        try waitForRegistryState("r1", "running")
    }

    func testShutdownCommandIsLikeSIGTERMAndNowLikeASecondSignal() throws {
        let runner = try startRunner(["--shutdown-timeout", "60s", "--kill-grace", "500ms"])
        try submit(["--", "sleep", "60"], id: "sd-1")
        _ = try runningPid("sd-1")
        let graceful = cli(["shutdown", "r1", "--wait"])
        XCTAssertEqual(graceful.code, 0, graceful.err)
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { runner.log.contains("shutting down") })
        XCTAssertTrue(runner.isRunning, "a graceful shutdown waits for the running job")
        let drain = cli(["drain", "r1", "--wait"])
        XCTAssertEqual(drain.code, 1, "drain is refused while shutting down")
        XCTAssertEqual(drain.stdout.split(separator: "\n").last, "rejected: the runner is shutting down")
        let now = cli(["shutdown", "r1", "--now", "--wait"])
        XCTAssertEqual(now.code, 0, now.err)
        XCTAssertEqual(runner.waitForExit(timeout: 15), 0, runner.log)
        XCTAssertEqual(try job("sd-1")["state"], "queued", "handed back")
        XCTAssertEqual(try events(of: "sd-1").last, "job.handed_back")
        XCTAssertEqual(try events().last { $0.type == "runner.shutdown" }?.data["handed_back"] as? Int, 1)
    }

    func testMalformedCommandsAndUnknownTargetsAreClearErrors() throws {
        try startRunner()
        let entries: [[String]] = [
            ["command", "explode"], ["command", "cancel"], ["command", "shutdown", "now", "soon"], ["job", "x"],
            ["command", "migrate"],
        ]
        var ids: [String] = []
        for fields in entries {
            ids.append(try send(["XADD", key("control:r1"), "*"] + fields).string ?? "")
        }
        ids = ids.map { "runner/" + $0 }
        let poolMigrate =
            "pool/" + (try send(["XADD", key("control"), "*", "command", "migrate", "to_node", "n2"]).string ?? "")
        var outcomes: [String: [String: Any]] = [:]
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                // Entry ids are unique per stream only: key by stream and id.
                outcomes = Dictionary(
                    try self.commandOutcomes().map {
                        (($0.data["stream"] as? String ?? "") + "/" + ($0.data["command_id"] as? String ?? ""), $0.data)
                    }
                ) { first, _ in first }
                return (ids + [poolMigrate]).allSatisfy { outcomes[$0] != nil }
            })
        let reasons = ids.map { outcomes[$0]?["reason"] as? String ?? "" }
        XCTAssertEqual(
            reasons,
            [
                "unknown command 'explode' (known: drain, resume, shutdown, cancel, migrate)",
                "cancel: the 'job' field is missing", "shutdown: 'now' must be 1 or 0, got 'soon'",
                "the entry has no 'command' field", "migrate: the 'to_node' field is missing",
            ])
        XCTAssertTrue((ids + [poolMigrate]).allSatisfy { outcomes[$0]?["outcome"] as? String == "rejected" })
        XCTAssertEqual(commandOutcomesCount(for: poolMigrate), 1)

        // A cancel of a job that does not run here, on the runner's own stream: ignored, with the reason.
        let stray = try send(["XADD", key("control:r1"), "*", "command", "cancel", "job", "nosuch"]).string ?? ""
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { self.commandOutcomesCount(for: "runner/" + stray) == 1 })
        XCTAssertEqual(
            try commandOutcomes().first {
                $0.data["command_id"] as? String == stray && $0.data["stream"] as? String == "runner"
            }?.data["outcome"] as? String, "ignored")

        let unknown = cli(["drain", "nosuch"])
        XCTAssertEqual(unknown.code, 1)
        XCTAssertEqual(unknown.err, "Error: no runner 'nosuch' in the registry of namespace '\(namespace)'\n")
        let noJob = cli(["cancel", "nosuch"])
        XCTAssertEqual(noJob.code, 1)
        XCTAssertTrue(noJob.err.hasPrefix("Error: no job 'nosuch'"), noJob.err)
        let usage = cli(["migrate", "r1"])
        XCTAssertEqual(usage.code, 2)
        XCTAssertTrue(usage.err.hasPrefix("Error: missing '--to NODE'"), usage.err)

        // The runner still works.
        let run = cli(["submit", "--wait", "--", "echo", "ok"])
        XCTAssertEqual(run.code, 0, run.err)
        XCTAssertEqual(run.stdout, "ok\n")
        try validateSchemas()
    }

    /// Outcome events of a command, by `<stream>/<command id>`.
    private func commandOutcomesCount(for id: String) -> Int {
        ((try? commandOutcomes()) ?? []).filter {
            ($0.data["stream"] as? String ?? "") + "/" + ($0.data["command_id"] as? String ?? "") == id
        }.count
    }

    func testMigrationHandsEveryJobOverToARunnerResumingTheIdentityWithoutOverlap() throws {
        let old = try startRunner(["--concurrency", "1", "--node", "n1", "--shutdown-timeout", "30s"])
        // Each job notes when its process began and ended (ns), to compare the processes themselves.
        let times = FileManager.default.temporaryDirectory.appendingPathComponent("mg-\(namespace)").path
        try FileManager.default.createDirectory(atPath: times, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: times) }
        func timed(_ seconds: String) -> [String] {
            [
                "--shell",
                "date +%s%N > '\(times)'/$NR_JOB_ID.begin; sleep \(seconds); date +%s%N > '\(times)'/$NR_JOB_ID.end",
            ]
        }
        try submit(timed("1.5"), id: "mg-long")
        _ = try runningPid("mg-long")
        for index in 1...3 { try submit(timed("0.1"), id: "mg-\(index)") }

        // Refused while the old runner holds the lease.
        let early = runCLI(
            ["worker", "--redis", endpoint.url, "--namespace", namespace, "--resume-identity", "r1", "--node", "n2"],
            timeout: 30)
        XCTAssertEqual(early.code, 1)
        XCTAssertTrue(early.err.contains("the old runner still holds its lease"), early.err)
        XCTAssertTrue(
            early.err.contains(
                "or it died less than its lease TTL ago: try again once runner status shows its LEASE expired)"),
            early.err)
        XCTAssertFalse(early.err.contains("taking over runner"), "refused before claiming a takeover: \(early.err)")

        let migrate = cli(["migrate", "r1", "--to", "n2", "--takeover-timeout", "60s", "--wait"])
        XCTAssertEqual(migrate.code, 0, migrate.err)
        XCTAssertEqual(old.waitForExit(timeout: 30), 0, old.log)
        let record = try registry("r1")
        XCTAssertEqual(record["state"] as? String, "migrating")
        XCTAssertEqual(record["migrate_to"] as? String, "n2")
        XCTAssertNotNil(record["migrate_deadline"] as? Int)
        XCTAssertEqual(try send(["EXISTS", key("runner:r1")]).int, 0, "the lease is released")
        // `status` shows the lease as given up, not as expired (a lost runner's).
        let row = cli(["status"]).stdout.split(separator: "\n").map { $0.split(separator: " ").joined(separator: " ") }
            .first { $0.hasPrefix("r1 ") }
        XCTAssertEqual(row?.hasPrefix("r1 n1 migrating released "), true, row ?? "no row for r1")
        let migration = try events().last { $0.type == "runner.migration" }
        XCTAssertEqual(migration?.data["from_node"] as? String, "n1")
        XCTAssertEqual(migration?.data["to_node"] as? String, "n2")
        let finishedBefore = record["jobs_finished"] as? Int ?? -1
        XCTAssertEqual(finishedBefore, migration?.data["finished"] as? Int)
        XCTAssertEqual(try job("mg-long")["state"], "succeeded", "the running job finished before the lease went")

        // Labels (written by runners that advertise them) carry over with the counters.
        var withLabels = record
        withLabels["labels"] = ["gpu": "1"]
        let edited = String(decoding: try JSONSerialization.data(withJSONObject: withLabels), as: UTF8.self)
        _ = try send(["HSET", key("runners"), "r1", edited])

        try startRunner(name: "r1", ["--resume-identity", "r1", "--node", "n2", "--concurrency", "1"])
        XCTAssertEqual(try registry("r1")["labels"] as? [String: String], ["gpu": "1"])
        let ids = ["mg-long"] + (1...3).map { "mg-\($0)" }
        for id in ids { try waitForState(id, ["succeeded"]) }
        // Both runners had one slot: any two processes overlapping in time would be two runners at once.
        func time(_ name: String) throws -> Int {
            let text = try String(contentsOfFile: "\(times)/\(name)", encoding: .utf8)
            return try XCTUnwrap(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), name)
        }
        let spans = try ids.map { id in (try time("\(id).begin"), try time("\(id).end")) }.sorted { $0.0 < $1.0 }
        for (earlier, later) in zip(spans, spans.dropFirst()) {
            XCTAssertLessThanOrEqual(earlier.1, later.0, "attempts overlapped: \(spans)")
        }
        XCTAssertTrue(ids.allSatisfy { (try? self.events(of: $0).filter { $0 == "job.started" }.count) == 1 })
        try waitForRegistryState("r1", "running")
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                let now = try self.registry("r1")
                return now["node"] as? String == "n2" && (now["jobs_finished"] as? Int ?? 0) == 4
            }, "the registry shows the new node and the carried counter: \((try? registry("r1")) ?? [:])")
        XCTAssertNil(try registry("r1")["migrate_to"])
        let counts = try validateSchemas()
        XCTAssertEqual(counts.isEmpty ? 1 : counts["runner.migration"], 1)
    }

    /// The documented takeover (`--resume-identity R --node N`, nothing else) serves R's queues with R's
    /// concurrency and labels, so jobs sent to R's queue are not stranded; an option given to the new worker wins.
    func testTakeoverInheritsQueuesConcurrencyAndLabelsUnlessGiven() throws {
        let old = try startRunner(["--queue", "q7", "--concurrency", "1", "--label", "a=b", "--node", "n1"])
        var migrate = cli(["migrate", "r1", "--to", "n2", "--wait"])
        XCTAssertEqual(migrate.code, 0, migrate.err)
        XCTAssertEqual(old.waitForExit(timeout: 30), 0, old.log)
        XCTAssertTrue(old.log.contains("it takes over this runner's queues, concurrency and labels"), old.log)

        let resumed = try resumeR1OnN2(queues: ["q7"], capacity: 1, labels: ["a": "b"])
        // The line shows the value of each, labels included.
        let takeOver = resumed.log.split(separator: "\n").first { $0.contains("taking over runner r1") } ?? ""
        XCTAssertTrue(takeOver.hasSuffix("queues=q7 concurrency=1 labels=a=b"), String(takeOver))
        try submit(["--queue", "q7", "--", "true"], id: "tk-q7")
        try waitForState("tk-q7", ["succeeded"])

        // Given its own concurrency, the next takeover keeps that and still takes the queues.
        migrate = cli(["migrate", "r1", "--to", "n3", "--wait"])
        XCTAssertEqual(migrate.code, 0, migrate.err)
        XCTAssertEqual(resumed.waitForExit(timeout: 30), 0, resumed.log)
        let again = try startRunner(
            name: "r1", ["--resume-identity", "r1", "--node", "n3"], environment: ["RUNNER_CONCURRENCY": "3"])
        try waitForRegistryState("r1", "running")
        let record = try registry("r1")
        XCTAssertEqual(record["queues"] as? [String], ["q7"], "\(record)")
        XCTAssertEqual(record["capacity"] as? Int, 3, "\(record)")
        XCTAssertTrue(
            again.log.contains("taking over runner r1: queues, labels from its record; its own (given): concurrency"),
            again.log)
    }

    /// `--resume-identity` of a runner that died without migrating is allowed (documented): it takes the id over as
    /// a restart of that name would, with the record's queues, concurrency and labels.
    func testResumingTheIdentityOfALostRunnerThatNeverMigratedIsAllowed() throws {
        let old = try startRunner([
            "--queue", "q8", "--concurrency", "2", "--label", "zone=eu", "--lease-ttl", "2s", "--no-reaper",
        ])
        old.signal(SIGKILL)
        XCTAssertNotNil(old.waitForExit(timeout: 10))
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try self.send(["EXISTS", self.key("runner:r1")]).int == 0 })
        try resumeR1OnN2(queues: ["q8"], capacity: 2, labels: ["zone": "eu"])
    }

    /// A record whose `jobs_finished` is Int.max (hand-written) trapped the runner resuming its identity at the first
    /// record it wrote after a job (found by breaker16): the count saturates.
    func testResumingARecordWithJobsFinishedAtIntMaxRunsOn() throws {
        _ = try send([
            "HSET", key("runners"), "r1",
            #"{"state":"lost","queues":["default"],"capacity":1,"jobs_finished":9223372036854775807}"#,
        ])
        let resumed = try startRunner(name: "r1", ["--resume-identity", "r1", "--lease-ttl", "3s"])
        let result = cli(["submit", "--wait", "--id", "jf-1", "--", "true"])
        XCTAssertEqual(result.code, 0, result.err)
        let finishedAt = Int(try job("jf-1")["finished_at"] ?? "") ?? .max
        // A record written after the job (its heartbeat), or the runner gone.
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                let heartbeatAt = try self.registry("r1")["heartbeat_at"] as? Int ?? 0
                return !resumed.isRunning || heartbeatAt > finishedAt
            })
        XCTAssertTrue(resumed.isRunning, resumed.log)
        XCTAssertEqual(try registry("r1")["jobs_finished"] as? Int, Int.max)
    }

    /// A record's capacity of 9223372036854775807 (hand-written) was taken over and trapped the resumed runner
    /// after it had registered, as `--concurrency` did (found by breaker19): refused before anything is taken over,
    /// as a capacity of 0 or below is, naming the bound; given its own --concurrency, the runner starts.
    func testResumingARecordWithACapacityAbove4096IsRefused() throws {
        for capacity in ["9223372036854775807", "4097", "0", "-5"] {
            _ = try send([
                "HSET", key("runners"), "r1", #"{"state":"lost","queues":["default"],"capacity":\#(capacity)}"#,
            ])
            let refused = runCLI(
                ["worker", "--redis", endpoint.url, "--namespace", namespace, "--resume-identity", "r1"], timeout: 30)
            XCTAssertEqual(refused.code, 1, refused.err)
            XCTAssertEqual(
                refused.err.split(separator: "\n").last.map(String.init),
                "Error: the capacity of runner 'r1' in the registry is invalid (\(capacity); a runner has 1 to 4096 "
                    + "slots); give --concurrency", refused.err)
            XCTAssertFalse(refused.err.contains("taking over runner"), refused.err)
            XCTAssertEqual(try send(["EXISTS", key("runner:r1")]).int, 0, "no lease left behind")
        }
        try startRunner(name: "r1", ["--resume-identity", "r1", "--concurrency", "2"])
        XCTAssertEqual(try registry("r1")["capacity"] as? Int, 2)
    }

    /// Starts `--resume-identity r1 --node n2` and checks that it took r1's queues, capacity and labels over.
    @discardableResult
    private func resumeR1OnN2(queues: [String], capacity: Int, labels: [String: String]) throws -> RunnerUnderTest {
        let resumed = try startRunner(name: "r1", ["--resume-identity", "r1", "--node", "n2"])
        try waitForRegistryState("r1", "running")
        let record = try registry("r1")
        XCTAssertEqual(record["queues"] as? [String], queues, "\(record)")
        XCTAssertEqual(record["capacity"] as? Int, capacity, "\(record)")
        XCTAssertEqual(record["labels"] as? [String: String], labels, "\(record)")
        XCTAssertEqual(record["node"] as? String, "n2", "\(record)")
        XCTAssertTrue(
            resumed.log.contains("taking over runner r1: queues, concurrency, labels from its record"), resumed.log)
        return resumed
    }

    func testMigrationHandsBackAJobWaitingInItsSlotAtOnce() throws {
        // Two jobs that each declare 60% of the host's memory: the second waits in its slot for admission.
        let total =
            (try String(contentsOfFile: "/proc/meminfo", encoding: .utf8)).split(separator: "\n")
            .first { $0.hasPrefix("MemTotal:") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        let memory = "\(total * 6 / 10 / 1024)M"
        let old = try startRunner(["--concurrency", "2", "--shutdown-timeout", "30s"])
        try submit(["--isolation", "cgroup", "--memory", memory, "--", "sleep", "2"], id: "mw-running")
        _ = try runningPid("mw-running")
        try submit(["--isolation", "cgroup", "--memory", memory, "--", "true"], id: "mw-waiting")
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                try self.events().contains {
                    $0.type == "runner.capacity_update" && $0.data["waiting_for_resources"] as? Int == 1
                }
            }, old.log)
        let migrate = cli(["migrate", "r1", "--to", "n2", "--wait"])
        XCTAssertEqual(migrate.code, 0, migrate.err)
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try self.events(of: "mw-waiting").contains("job.handed_back") })
        XCTAssertEqual(try job("mw-running")["state"], "running", "handed back before the running job finished")
        XCTAssertEqual(old.waitForExit(timeout: 30), 0, old.log)
        XCTAssertEqual(try job("mw-running")["state"], "succeeded")
        XCTAssertEqual(try events().last { $0.type == "runner.migration" }?.data["handed_back"] as? Int, 1)
        XCTAssertFalse(try events(of: "mw-waiting").contains("job.started"))
        try startRunner(name: "r1", ["--resume-identity", "r1"])
        try waitForState("mw-waiting", ["succeeded"])
    }

    func testNobodyTakingOverInTimeMakesTheRunnerMigrated() throws {
        let runner = try startRunner(["--no-reaper"])
        let reaper = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "ctl", subcommand: "control",
            arguments: ["--interval", "200ms"])
        runners.append(reaper)
        let migrate = cli(["migrate", "r1", "--to", "n2", "--takeover-timeout", "1s", "--wait"])
        XCTAssertEqual(migrate.code, 0, migrate.err)
        XCTAssertEqual(runner.waitForExit(timeout: 20), 0, runner.log)
        try waitForRegistryState("r1", "migrated")
        XCTAssertNotNil(try registry("r1")["migrated_at"] as? Int)
        let event = try events().last { $0.type == "runner.migrated" }
        XCTAssertEqual(event?.runner, "r1")
        XCTAssertEqual(event?.data["migrate_to"] as? String, "n2")
        XCTAssertFalse(try events().contains { $0.type == "runner.lost" }, "a migrated runner is not lost")
        let counts = try validateSchemas()
        XCTAssertEqual(counts.isEmpty ? 1 : counts["runner.migrated"], 1, "the migrated record validates too")
    }

    func testExitAfterJobsTakesNoMoreAndExitWhenIdleExits() throws {
        let limited = try startRunner(name: "eph", ["--concurrency", "2", "--exit-after-jobs", "2"])
        for index in 1...3 { try submit(["--", "sleep", "0.3"], id: "ex-\(index)") }
        XCTAssertEqual(limited.waitForExit(timeout: 20), 0, limited.log)
        let states = try (1...3).map { try job("ex-\($0)")["state"] ?? "" }
        XCTAssertEqual(states.filter { $0 == "succeeded" }.count, 2, "\(states)")
        XCTAssertEqual(states.filter { $0 == "queued" }.count, 1, "\(states)")
        XCTAssertEqual(try send(["HEXISTS", key("runners"), "eph"]).int, 0)

        let idle = try startRunner(name: "idle", ["--exit-when-idle", "1s"])
        XCTAssertEqual(idle.waitForExit(timeout: 20), 0, idle.log)
        XCTAssertEqual(states.filter { $0 == "queued" }.count, 1)
        XCTAssertEqual(
            (try (1...3).map { try job("ex-\($0)")["state"] ?? "" }).filter { $0 == "succeeded" }.count, 3,
            "the idle runner first ran the job that was left")
        XCTAssertEqual(try events().last { $0.type == "runner.shutdown" }?.runner, "idle")
    }

    /// Malformed entries are rejected, not jobs taken: a runner told to take 2 jobs runs 2 real ones after 3 bad
    /// entries ahead of them, where it used to spend its budget on the first two rejections (found by breaker19b).
    func testExitAfterJobsCountsNoRejectedEntry() throws {
        for index in 1...3 {
            _ = try send(["XADD", key("jobs:default"), "*", "id", "bad-\(index)", "spec", "not json"])
        }
        for index in 1...3 { try submit(["--", "true"], id: "good-\(index)") }
        let limited = try startRunner(name: "eph2", ["--concurrency", "1", "--exit-after-jobs", "2"])
        XCTAssertEqual(limited.waitForExit(timeout: 30), 0, limited.log)
        XCTAssertEqual(try (1...3).map { try job("bad-\($0)")["state"] ?? "" }, ["rejected", "rejected", "rejected"])
        XCTAssertEqual(try (1...3).map { try job("good-\($0)")["state"] ?? "" }, ["succeeded", "succeeded", "queued"])
    }
}
