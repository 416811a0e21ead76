import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol
import TestSupport
import XCTest

/// The proof of the failure-recovery promise: runners killed, paused past their lease and Redis restarted while
/// jobs run, and still every job ends with exactly one recorded result.
///
/// The short form runs in the suite. `scripts/chaos` runs the full one (`NR_CHAOS_MODE=full`): 1,000 jobs, a runner
/// killed every 2–4 s and replaced until all are done. Sizes can be set with `NR_CHAOS_JOBS`, `NR_CHAOS_LEASE_TTL`
/// (seconds) and `NR_CHAOS_RUNNERS`.
final class ChaosTests: PrivateRedisTestCase {
    override func makeServer() throws -> RedisServerProcess { try RedisServerProcess(appendOnly: true) }

    private struct Plan {
        var full: Bool
        var jobs: Int
        var runners: Int
        var leaseTTL: Int

        static var fromEnvironment: Plan {
            let environment = ProcessInfo.processInfo.environment
            let full = environment["NR_CHAOS_MODE"] == "full"
            return Plan(
                full: full, jobs: environment["NR_CHAOS_JOBS"].flatMap(Int.init) ?? (full ? 1000 : 150),
                runners: environment["NR_CHAOS_RUNNERS"].flatMap(Int.init) ?? 3,
                leaseTTL: environment["NR_CHAOS_LEASE_TTL"].flatMap(Int.init) ?? 3)
        }
    }

    private var started = 0

    private func startChaosRunner(_ plan: Plan) throws -> RunnerUnderTest {
        started += 1
        // Names unique to this test: a runner kills processes left over under its own name at start.
        return try startRunner(
            name: "chaos-\(namespace)-\(started)",
            [
                "--lease-ttl", "\(plan.leaseTTL)s", "--concurrency", "2", "--reaper-interval", "500ms",
                "--shutdown-timeout", "5s", "--kill-grace", "1s", "--log-level", "warning",
            ])
    }

    func testNothingIsLostWhenRunnersDieHangAndRedisRestarts() throws {
        let plan = Plan.fromEnvironment
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("chaos-\(namespace).log")
        FileManager.default.createFile(atPath: file.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: file) }

        let control = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "chaos-control", subcommand: "control",
            arguments: ["--interval", "500ms", "--log-level", "warning"])
        defer { control.stop(timeout: 10) }
        var pool = try (0..<plan.runners).map { _ in try startChaosRunner(plan) }

        // Submit everything up front, by plain XADD as a control plane in any language may.
        let ids = (1...plan.jobs).map { String(format: "job-%04d", $0) }
        let submissions = ids.map { id in
            let pause = String(format: "%.3f", Double.random(in: 0...0.3))
            // exec: the sleep is the job's main process, so it dies with its runner.
            let spec = JobSpec(
                command: .shell("echo \"$NR_JOB_ID $NR_ATTEMPT\" >> '\(file.path)'; exec sleep \(pause)"))
            return RedisCommand(["XADD", key("jobs:default"), "*", "id", id, "spec", spec.json.serialized])
        }
        XCTAssertEqual(try redis.pipeline(submissions).filter { $0.string == nil }.count, 0)

        var killed = 0
        var stopped = false
        var restarted = false
        var paused: (runner: RunnerUnderTest, since: ContinuousClock.Instant)?
        // How many jobs had run when each kind of chaos happened: all of it must hit a pool with work left.
        var doneAtChaos: [Int] = []
        let began = ContinuousClock.now
        var nextKill = began + .seconds(1)
        let deadline = began + (plan.full ? .seconds(900) : .seconds(180))
        while try !allTerminal(ids) {
            XCTAssertLessThan(ContinuousClock.now, deadline, "the jobs did not all end in time")
            if ContinuousClock.now >= deadline { break }
            let progress = executedIds(file).count
            let now = ContinuousClock.now
            if let (runner, since) = paused {
                // Paused until Redis let its lease lapse: then it goes on, past its TTL.
                if (try? send(["EXISTS", key("runner:\(runner.name)")]).int) == 0 {
                    runner.signal(SIGCONT)
                    paused = nil
                } else {
                    XCTAssertLessThan(
                        now - since, .seconds(plan.leaseTTL * 3), "the paused runner's lease did not lapse")
                }
            } else if now >= nextKill, plan.full || killed == 0 {
                // kill -9 a random runner and start a replacement.
                let victim = pool.remove(at: Int.random(in: 0..<pool.count))
                victim.signal(SIGKILL)
                _ = victim.waitForExit(timeout: 10)
                if killed == 0 { doneAtChaos.append(progress) }
                killed += 1
                pool.append(try startChaosRunner(plan))
                nextKill = ContinuousClock.now + .milliseconds(Int.random(in: 2000...4000))
            } else if !restarted, plan.full ? progress >= plan.jobs / 2 : now >= began + .seconds(2) {
                // Restart redis-server (AOF on, fsync always) under the running pool.
                restarted = true
                doneAtChaos.append(progress)
                redis = nil
                try server.restart()
                redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
            } else if !stopped, plan.full ? progress >= plan.jobs / 4 : now >= began + .seconds(3) {
                // SIGSTOP one runner past its lease TTL.
                stopped = true
                doneAtChaos.append(progress)
                let victim = pool[Int.random(in: 0..<pool.count)]
                victim.signal(SIGSTOP)
                paused = (victim, now)
            }
            // The loop's poll interval, not a wait: it ends once every job is terminal, or at the deadline.
            Thread.sleep(forTimeInterval: 0.05)
        }
        paused?.runner.signal(SIGCONT)
        XCTAssertTrue(stopped && restarted && killed >= 1, "not all of the chaos happened")
        XCTAssertTrue(doneAtChaos.allSatisfy { $0 < plan.jobs }, "chaos after the jobs had all run: \(doneAtChaos)")

        // What the jobs did, and what Redis recorded.
        let executions = executedLines(file)
        let all = try events()
        func count(_ type: String, _ job: String? = nil) -> Int {
            all.filter { $0.type == type && (job == nil || $0.job == job) }.count
        }
        var missingResults: [String] = []
        for id in ids {
            let record = try job(id)
            if record["state"] != "succeeded" { missingResults.append("\(id): \(record["state"] ?? "none")") }
        }
        XCTAssertEqual(missingResults, [], "every job has its one terminal result")
        XCTAssertEqual(count("job.succeeded"), plan.jobs, "one job.succeeded per job")
        for type in ["job.failed", "job.timeout", "job.dead", "job.rejected", "job.lost"] {
            XCTAssertEqual(count(type), 0, "\(type) events")
        }
        var perJob: [String: [String]] = [:]
        for (id, attempt) in executions { perJob[id, default: []].append(attempt) }
        XCTAssertEqual(ids.filter { perJob[$0] == nil }, [], "job ids missing from the file")
        var duplicates = 0
        for (id, attempts) in perJob where attempts.count > 1 {
            duplicates += attempts.count - 1
            XCTAssertEqual(Set(attempts).count, attempts.count, "\(id) ran twice under one attempt: \(attempts)")
            XCTAssertGreaterThanOrEqual(
                count("job.rescheduled", id), attempts.count - 1, "\(id) ran \(attempts.count) times unexplained")
        }
        for id in ids { XCTAssertEqual(count("job.succeeded", id), 1, id) }
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0, "pending")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) { self.jobProcesses().isEmpty },
            "job processes still running: \(jobProcesses())")
        let lost = missingResults.count + count("job.lost") + ids.filter { perJob[$0] == nil }.count
        print(
            "chaos: jobs=\(plan.jobs) runners_killed=\(killed) rescheduled=\(count("job.rescheduled")) "
                + "duplicates_executed=\(duplicates) stale_results_refused=\(count("job.stale_result")) lost=\(lost) "
                + "seconds=\(Int((ContinuousClock.now - began).seconds))")
        if (testRun?.failureCount ?? 0) > 0 {
            for runner in pool + [control] { print("--- \(runner.name)\n\(runner.log.suffix(4000))") }
        }
        for runner in pool { XCTAssertEqual(runner.stop(timeout: 20), 0, runner.log) }
    }

    /// Pipelined HGET state of every job.
    private func allTerminal(_ ids: [String]) throws -> Bool {
        let replies = try redis.pipeline(ids.map { RedisCommand(["HGET", key("job:\($0)"), "state"]) })
        return replies.allSatisfy { $0.string.flatMap(JobState.init(rawValue:))?.isTerminal == true }
    }

    private func executedLines(_ file: URL) -> [(String, String)] {
        let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
        }
    }

    private func executedIds(_ file: URL) -> Set<String> { Set(executedLines(file).map(\.0)) }

    /// Processes of this test's jobs still alive: their environment names one of its runners.
    private func jobProcesses() -> [Int32] {
        let marker = Array("NR_RUNNER=chaos-\(namespace)-".utf8)
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init)
        return pids.filter { pid in
            guard processIsAlive(pid),
                let environment = FileManager.default.contents(atPath: "/proc/\(pid)/environ")
            else { return false }
            return environment.split(separator: 0).contains { $0.starts(with: marker) }
        }
    }
}

extension Duration {
    fileprivate var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
