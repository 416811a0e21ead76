import Foundation
import RedisClient
import TestSupport
import XCTest

/// Isolation levels, limits and accounting, through a real runner on this host's kernel (root, cgroup v1 here).
final class JobIsolationTests: IntegrationTestCase {
    /// The runner r1's own work directory: `<namespace>.r1.<pool hash>` under the default work root.
    private func runnerFolder() throws -> String {
        let names = try FileManager.default.contentsOfDirectory(atPath: "/tmp/nativerunner")
        let name = try XCTUnwrap(names.first { $0.hasPrefix("\(namespace).r1.") }, "no folder of r1 in \(names)")
        return "/tmp/nativerunner/" + name
    }

    /// Acks and deletes the queue's pending entries, so that no runner runs their jobs again.
    private func takeAwayPendingEntries(of queue: String = "default") throws {
        for entry in try send(["XPENDING", key("jobs:\(queue)"), "runners", "-", "+", "10"]).array ?? [] {
            let id = try XCTUnwrap(entry.array?.first?.string)
            _ = try send(["XACK", key("jobs:\(queue)"), "runners", id])
            _ = try send(["XDEL", key("jobs:\(queue)"), id])
        }
    }

    private func resultJSON(_ id: String) throws -> [String: Any] {
        let result = cli(["result", "--json", id])
        XCTAssertEqual(result.code, 0, result.err)
        return (try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]) ?? [:]
    }

    func testSetsidEscapeeIsKilledOnTimeout() throws {
        try startRunner()
        let result = cli([
            "submit", "--wait", "--id", "esc-1", "--timeout", "1s", "--shell",
            "setsid sleep 300 & echo pid=$!; sleep 300",
        ])
        XCTAssertEqual(result.code, 124, result.err)
        let escapee = try XCTUnwrap(pids(in: result.stdout).first, result.stdout)
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { !processIsAlive(escapee) }, "escapee \(escapee) survived")
        XCTAssertEqual(try job("esc-1")["state"], "timed_out")
    }

    func testNamespaceJobIsPidOneSeesNoRunnerAndHasNoNetwork() throws {
        let runner = try startRunner()
        let port = endpoint.port
        let script = """
            echo "pid=$$"; echo "host=$(hostname)"
            ls /proc | grep -c '^[0-9]'
            ls /proc/\(runner.pid) >/dev/null 2>&1 && echo "sees-runner" || echo "no-runner"
            if (echo > /dev/tcp/127.0.0.1/\(port)) 2>/dev/null; then echo "net=reach"; else echo "net=none"; fi
            """
        let result = cli([
            "submit", "--wait", "--id", "ns-1", "--isolation", "namespace", "--network", "none", "--",
            "/bin/bash", "-c", script,
        ])
        XCTAssertEqual(result.code, 0, result.err)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "pid=1")
        XCTAssertEqual(lines.dropFirst().first, "host=ns-1")
        // bash, ls and grep (and the subshell of the pipe) at most: no process of the host.
        XCTAssertLessThanOrEqual(Int(lines.dropFirst(2).first ?? "") ?? 99, 4, result.stdout)
        XCTAssertEqual(lines.dropFirst(3).first, "no-runner")
        XCTAssertEqual(lines.dropFirst(4).first, "net=none")
        XCTAssertEqual(try job("ns-1")["isolation"], "namespace")

        // With the host's network the same probe reaches Redis: the check above can fail.
        let reach = cli([
            "submit", "--wait", "--id", "ns-2", "--isolation", "namespace", "--", "/bin/bash", "-c",
            "(echo > /dev/tcp/127.0.0.1/\(port)) 2>/dev/null && echo net=reach",
        ])
        XCTAssertEqual(reach.stdout, "net=reach\n", reach.err)
    }

    func testARelativeCwdIsRelativeToTheWorkFolderAlsoInAMountNamespace() throws {
        try startRunner()
        for isolation in ["process_group", "namespace"] {
            for (cwd, expected) in [(".", "$NR_WORK_DIR"), ("tmp", "$NR_WORK_DIR/tmp")] {
                let result = cli([
                    "submit", "--wait", "--isolation", isolation, "--cwd", cwd, "--shell",
                    #"[ "$(pwd -P)" = "$(cd "\#(expected)" && pwd -P)" ] && echo same || echo "pwd=$(pwd) work=$NR_WORK_DIR""#,
                ])
                XCTAssertEqual(result.code, 0, "\(isolation) --cwd \(cwd): \(result.err)")
                XCTAssertEqual(result.stdout, "same\n", "\(isolation) --cwd \(cwd)")
            }
        }
    }

    func testACgroupJobOfARootRunnerHasNoCapabilitiesAndCannotLeaveItsCgroup() throws {
        guard geteuid() == 0 else { throw XCTSkip("a root job's capabilities need a runner running as root") }
        let runner = try startRunner()
        // The QA's escapes: unmount /proc to see the runner, write the root cgroup's cgroup.procs to drop the limits.
        let script = """
            grep '^CapEff:' /proc/self/status
            umount /proc 2>/dev/null && echo proc=unmounted || echo proc=kept
            ls /proc/\(runner.pid) >/dev/null 2>&1 && echo sees-runner || echo no-runner
            (echo $$ > /sys/fs/cgroup/pids/cgroup.procs) 2>/dev/null && echo cgroup=left || echo cgroup=stayed
            grep ':pids:' /proc/self/cgroup | cut -d: -f3 | grep -q '^/$' && echo pids=root || echo pids=own
            ls /sys/class/net
            (echo '|/tmp/x' > /proc/sys/kernel/core_pattern) 2>/dev/null && echo sysctl=written || echo sysctl=kept
            """
        let pattern = try String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8)
        defer { try? pattern.write(toFile: "/proc/sys/kernel/core_pattern", atomically: false, encoding: .utf8) }
        let result = cli([
            "submit", "--wait", "--id", "caps-1", "--isolation", "cgroup", "--network", "none", "--pids", "32", "--",
            "/bin/bash", "-c", script,
        ])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(
            result.stdout.split(separator: "\n").map(String.init),
            ["CapEff:\t0000000000000000", "proc=kept", "no-runner", "cgroup=stayed", "pids=own", "lo", "sysctl=kept"])
        XCTAssertEqual(try String(contentsOfFile: "/proc/sys/kernel/core_pattern", encoding: .utf8), pattern)
        XCTAssertEqual(try job("caps-1")["isolation"], "cgroup")
    }

    func testOrphansOfANoneJobDoNotPileUpAsTheRunnersZombies() throws {
        let runner = try startRunner()
        // Each `head` outlives the subshell that started it (it reads a fifo only the job's shell writes), so it is
        // reparented to the runner, in the runner's own process group, and ends once the job has ended.
        let orphan = "(head -c 1 < hold > /dev/null 2>&1 4>&- & echo pid=$!)"
        let script = "mkfifo hold; exec 4<>hold; " + Array(repeating: orphan, count: 10).joined(separator: "; ")
        let result = cli(["submit", "--wait", "--id", "none-1", "--isolation", "none", "--shell", script])
        XCTAssertEqual(result.code, 0, result.err)
        let orphans = pids(in: result.stdout)
        XCTAssertEqual(orphans.count, 10, result.stdout)
        func zombiesOfTheRunner() -> [Int32] {
            orphans.filter { pid in
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                    let close = stat.lastIndex(of: ")")
                else { return false }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                return fields.first == "Z" && fields.dropFirst().first.flatMap { Int32($0) } == runner.pid
            }
        }
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { zombiesOfTheRunner().isEmpty }, "\(zombiesOfTheRunner())")
    }

    func testMemoryHogEndsOOMKilledWithLimitAndPeak() throws {
        try startRunner()
        let limit = 32 << 20
        let hog = cli([
            "submit", "--wait", "--id", "oom-1", "--isolation", "cgroup", "--memory", "32M", "--",
            "python3", "-c", "b = bytearray(256 * 2**20); print(len(b))",
        ])
        XCTAssertNotEqual(hog.code, 0)
        let record = try job("oom-1")
        XCTAssertEqual(record["state"], "failed")
        XCTAssertEqual(record["reason"], "oom_killed")
        XCTAssertEqual(record["signal"], "9")
        let limits = try JSONSerialization.jsonObject(with: Data((record["limits"] ?? "{}").utf8)) as? [String: Int]
        XCTAssertEqual(limits?["memory_bytes"], limit)
        let peak = try XCTUnwrap(Int(record["peak_memory_bytes"] ?? ""), "\(record)")
        XCTAssertGreaterThan(peak, limit / 2)
        XCTAssertLessThanOrEqual(peak, limit + (1 << 20))
        XCTAssertEqual(record["peak_memory_source"], "cgroup")
        XCTAssertEqual(record["isolation"], "cgroup")

        // A job killed with SIGKILL in the same kind of cgroup, without any OOM, is signal 9, not oom_killed. (It is
        // PID 1 of its namespace, which cannot be sent SIGKILL from inside: the kill comes from outside.)
        try submit(["--isolation", "cgroup", "--memory", "32M", "--", "sleep", "300"], id: "kill-1")
        XCTAssertEqual(kill(try runningPid("kill-1"), SIGKILL), 0)
        let killed = try waitForState("kill-1", ["failed"])
        XCTAssertEqual(killed["state"], "failed")
        XCTAssertEqual(killed["reason"], "killed by signal 9 (SIGKILL)")
    }

    func testForkBombStopsAtThePidsLimitAndOthersAreUnaffected() throws {
        try startRunner(["--concurrency", "2"])
        let bomb = try startCLI([
            "submit", "--wait", "--id", "bomb-1", "--isolation", "cgroup", "--pids", "16", "--timeout", "20s",
            "--shell", "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; wait",
        ])
        let other = cli(["submit", "--wait", "--id", "calm-1", "--", "echo", "fine"])
        XCTAssertEqual(other.code, 0, other.err)
        XCTAssertEqual(other.stdout, "fine\n")
        XCTAssertNotNil(bomb.waitForExit(timeout: 40))
        let record = try job("bomb-1")
        // The shell could not fork past the limit: it failed (or was stopped at its timeout) and nothing of it is left.
        XCTAssertNotEqual(record["state"], "succeeded", "\(record)")
        let cgroups = try FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/pids")
            .filter { $0.hasPrefix("nativerunner-\(namespace)") }
        XCTAssertEqual(cgroups.count, 1, "the runner's cgroup parent")
        for parent in cgroups {
            let children = try FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup/pids/\(parent)")
            XCTAssertFalse(
                children.contains { $0.hasPrefix("job-") && $0.hasSuffix("bomb-1") }, "cgroup left: \(children)")
        }
    }

    /// `--cpu 500` holds a busy job to half a core. Its share is compared with what the machine gave an unlimited
    /// twin, the same busy loop in a cgroup of its own beside it over the same seconds, rather than with a fixed floor:
    /// on a loaded 2-core machine both get less than they would alone (the job 0.297 of a core once, against a floor
    /// of 0.3), and by as much, since both compete on equal terms until the job reaches its quota.
    func testHalfACoreOfCPU() throws {
        let runner = try startRunner(["--log-level", "debug", "--concurrency", "2"])
        defer { print(runner.log) }
        // Both loops end at the same second, so that they run side by side for about three seconds.
        let end = Int(Date().timeIntervalSince1970) + 4
        let busy = "while [ $(date +%s) -lt \(end) ]; do :; done"
        try submit(["--isolation", "cgroup", "--shell", busy], id: "cpu-twin")
        try submit(["--isolation", "cgroup", "--cpu", "500", "--shell", busy], id: "cpu-1")
        func share(_ id: String) throws -> (share: Double, record: [String: String]) {
            let record = try waitForState(id, ["succeeded", "failed", "timed_out", "rejected"])
            XCTAssertEqual(record["state"], "succeeded", "\(record)")
            let wall = Double(try XCTUnwrap(Int(record["duration_ms"] ?? ""), "\(record)"))
            let cpu = Double((Int(record["cpu_user_ms"] ?? "") ?? 0) + (Int(record["cpu_system_ms"] ?? "") ?? 0))
            return (cpu / max(wall, 1), record)
        }
        let (twin, twinRecord) = try share("cpu-twin")
        let (limited, record) = try share("cpu-1")
        let context = "job \(limited) of a core, its unlimited twin \(twin): \(record) \(twinRecord)"
        print("testHalfACoreOfCPU: job \(limited) of a core, its unlimited twin \(twin)")
        // The cap: load only lowers the share. Without the limit the job takes what its twin takes, a whole core on
        // a machine with one to spare (what fails here); only a machine too busy to give either job more than
        // 0.7 of a core would hide a missing limit.
        XCTAssertLessThan(limited, 0.7, context)
        // Not far below what it could have had: half a core, or less when even the twin got less than that.
        XCTAssertGreaterThan(limited, 0.6 * min(0.5, twin), context)
        XCTAssertGreaterThan(twin, 0, context)
    }

    func testTheFencingTokenIsNotMaskedInOutput() throws {
        try startRunner()
        // Long enough to be masked if it were taken for a secret (values under 4 bytes never are).
        _ = try send(["SET", key("fencing"), "7654321"])
        let result = cli(["submit", "--wait", "--id", "ft-1", "--shell", "echo token=$NR_FENCING_TOKEN"])
        XCTAssertEqual(result.code, 0, result.err)
        let token = try XCTUnwrap(try job("ft-1")["fencing_token"])
        XCTAssertEqual(token, "7654322")
        XCTAssertEqual(result.stdout, "token=\(token)\n")
    }

    func testSecretsAreMaskedAndTheJobHasItsOwnWorkFolder() throws {
        try startRunner()
        let result = cli([
            "submit", "--wait", "--id", "sec-1", "--env", "API_TOKEN=tok-0123456789", "--env", "MINE=private-value",
            "--secret-env", "MINE", "--shell", "echo $API_TOKEN $MINE; pwd; echo $TMPDIR; echo $HOME",
        ])
        XCTAssertEqual(result.code, 0, result.err)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "*** ***")
        let folder = try XCTUnwrap(lines.dropFirst().first)
        XCTAssertTrue(folder.hasPrefix(try runnerFolder() + "/job-"), folder)
        XCTAssertEqual(lines.dropFirst(2).first, folder + "/tmp")
        XCTAssertEqual(lines.dropFirst(3).first, folder)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder), "work folder was not removed")
        XCTAssertFalse(try job("sec-1")["output_tail"]!.contains("tok-0123456789"))
        let log = try logBytes("sec-1")
        XCTAssertFalse(String(decoding: log.stdout, as: UTF8.self).contains("private-value"))
    }

    func testRejectionsSayWhatIsWrong() throws {
        try startRunner(["--max-memory", "64M"])
        var result = cli(["submit", "--wait", "--id", "rej-1", "--isolation", "cgroup", "--memory", "1G", "--", "true"])
        XCTAssertEqual(result.code, 1)
        XCTAssertEqual(try job("rej-1")["state"], "rejected")
        XCTAssertEqual(
            try job("rej-1")["reason"], "limits.memory_bytes 1073741824 is above this runner's ceiling of 67108864")
        // A limit below the level a spec names (submit refuses that itself, so the entry is added by hand).
        _ = try send([
            "XADD", key("jobs:default"), "*", "id", "rej-2", "spec",
            #"{"argv":["true"],"isolation":"process_group","limits":{"memory_bytes":16777216}}"#,
        ])
        XCTAssertTrue(waitUntil(timeout: .seconds(15)) { (try? job("rej-2")["state"]) == "rejected" })
        XCTAssertEqual(
            try job("rej-2")["reason"],
            "limits.memory_bytes needs isolation \"cgroup\", not \"process_group\"")
        // Without a named level the limit asks for cgroup, as --network none asks for namespace: the job runs in a
        // cgroup, or (on a host without one) is rejected for that, never for the runner's process_group default.
        result = cli(["submit", "--wait", "--id", "rej-3", "--memory", "16M", "--", "true"])
        let raised = try job("rej-3")
        if raised["state"] == "succeeded" {
            XCTAssertEqual(raised["isolation"], "cgroup", "\(raised)")
        } else {
            XCTAssertEqual(raised["state"], "rejected", "\(raised)")
            XCTAssertTrue(raised["reason"]?.hasPrefix("cgroup isolation is not available") == true, "\(raised)")
        }
        let dead = try send(["XRANGE", key("dead"), "-", "+"]).array ?? []
        XCTAssertEqual(dead.count, raised["state"] == "succeeded" ? 2 : 3)
    }

    func testResourceUsageAndCapacityEvents() throws {
        try startRunner(["--monitor-interval", "300ms", "--concurrency", "1"])
        try submit(["--", "sleep", "3"], id: "mon-1")
        _ = try runningPid("mon-1")
        var usage: RecordedEvent?
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) {
                usage = try events().last {
                    $0.type == "runner.resource_usage"
                        && (($0.data["jobs"] as? [[String: Any]]) ?? []).contains {
                            $0["job"] as? String == "mon-1"
                        }
                }
                return usage != nil
            })
        XCTAssertNotNil(usage?.data["memory_total_bytes"] as? Int)
        XCTAssertNotNil(usage?.data["load"] as? [Double])
        var capacity: [RecordedEvent] = []
        let busyReported = try waitUntil(timeout: .seconds(5)) {
            capacity = try events().filter { $0.type == "runner.capacity_update" }
            return capacity.contains { $0.data["capacity_free"] as? Int == 0 }
        }
        XCTAssertTrue(busyReported, "\(capacity.map(\.data))")
    }

    func testOrphanCleanupAfterKillNine() throws {
        let runner = try startRunner(["--lease-ttl", "2s"])
        try submit(["--isolation", "cgroup", "--memory", "64M", "--", "sleep", "300"], id: "orph-1")
        let pid = try runningPid("orph-1")
        let cgroup = try XCTUnwrap(
            try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n")
                .first { $0.contains(":memory:") }.map { String($0.split(separator: ":", maxSplits: 2)[2]) })
        let cgroupPath = "/sys/fs/cgroup/memory" + cgroup
        let folder = try XCTUnwrap(
            try FileManager.default.contentsOfDirectory(atPath: try runnerFolder()).first {
                $0.hasSuffix("orph-1")
            }
        )
        runner.signal(SIGKILL)
        XCTAssertNotNil(runner.waitForExit(timeout: 10))
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { !processIsAlive(pid) })
        XCTAssertTrue(FileManager.default.fileExists(atPath: cgroupPath), "the test needs a leftover cgroup")
        XCTAssertTrue(try waitUntil(timeout: .seconds(10)) { try send(["EXISTS", key("runner:r1")]).int == 0 })
        // The restarted runner would run the job again in a new cgroup of the same name: take the entry away.
        try takeAwayPendingEntries()

        try startRunner()
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try events().contains { $0.type == "isolation.cleanup" } })
        let cleanup = try XCTUnwrap(try events().last { $0.type == "isolation.cleanup" })
        XCTAssertEqual(cleanup.data["cgroups"] as? [String], [folder])
        XCTAssertEqual((cleanup.data["work_dirs"] as? [String])?.map { ($0 as NSString).lastPathComponent }, [folder])
        XCTAssertFalse(FileManager.default.fileExists(atPath: cgroupPath))
        XCTAssertFalse(FileManager.default.fileExists(atPath: try runnerFolder() + "/" + folder))
    }

    /// The memory cgroup of a running process, as a path under /sys/fs/cgroup/memory.
    private func memoryCgroup(of pid: Int32) throws -> String {
        let line = try XCTUnwrap(
            try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n")
                .first { $0.contains(":memory:") })
        return "/sys/fs/cgroup/memory" + String(line.split(separator: ":", maxSplits: 2)[2])
    }

    /// The `isolation.cleanup` events of `runner` that report the dead runner `dead`.
    private func deadRunnerCleanups(by runner: String, of dead: String) throws -> [[String: Any]] {
        try events().filter { $0.type == "isolation.cleanup" && $0.runner == runner }.flatMap {
            ($0.data["dead_runners"] as? [[String: Any]]) ?? []
        }.filter { $0["runner"] as? String == dead }
    }

    /// Waits until `runner` has published `count` more `runner.resource_usage` events: each is followed by a
    /// cleanup round, so `count - 1` rounds have run in full.
    /// Seconds since `path` last changed (its mtime, which a live runner's every round touches); nil when gone.
    private func untouchedFor(_ path: String) -> Double? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        let changed = Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
        return Date().timeIntervalSince1970 - changed
    }

    private func waitForRounds(of runner: String, _ count: Int) throws {
        let before = try events().filter { $0.type == "runner.resource_usage" && $0.runner == runner }.count
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(15)) {
                try events().filter { $0.type == "runner.resource_usage" && $0.runner == runner }.count
                    >= before + count
            })
    }

    /// A runner killed with kill -9 mid-job: another runner of the pool (another name) leaves its contexts alone
    /// while its lease holds, and removes its cgroups, its work folder and what runs in them once the lease expired.
    func testAnotherRunnerRemovesADeadRunnersContextsOnceItsLeaseExpired() throws {
        let fast = ["--lease-ttl", "2s", "--monitor-interval", "300ms"]
        let a = try startRunner(name: "r1", fast)
        try submit(["--isolation", "cgroup", "--memory", "64M", "--", "sleep", "300"], id: "dead-1")
        let pid = try runningPid("dead-1")
        let jobCgroup = try memoryCgroup(of: pid)
        let parent = (jobCgroup as NSString).deletingLastPathComponent
        let folder = try runnerFolder()
        XCTAssertTrue((parent as NSString).lastPathComponent.hasPrefix("nativerunner-\(namespace).r1."), parent)

        // B while A lives: A's lease holds and A touches its contexts every round.
        try startRunner(name: "r2", fast)
        try waitForRounds(of: "r2", 10)
        XCTAssertEqual(try deadRunnerCleanups(by: "r2", of: "r1").count, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: jobCgroup))
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder))
        XCTAssertTrue(processIsAlive(pid))

        // No runner should run the job again: take the entry away, then kill A.
        try takeAwayPendingEntries()
        let report = try killAndWaitForItsContextsRemoved(a, named: "r1", by: "r2", parent: parent, pid: pid)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertEqual(report["work_dirs"] as? [String], [folder])
    }

    /// Kills `runner` (kill -9), waits until `survivor` reports its contexts removed and checks its cgroup parent and
    /// its job `pid` are gone. Returns the report.
    private func killAndWaitForItsContextsRemoved(
        _ runner: RunnerUnderTest, named name: String, by survivor: String, parent: String, pid: Int32
    ) throws -> [String: Any] {
        runner.signal(SIGKILL)
        XCTAssertNotNil(runner.waitForExit(timeout: 10))
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(20)) { try !deadRunnerCleanups(by: survivor, of: name).isEmpty },
            "\(survivor) did not report \(name)'s contexts")
        XCTAssertFalse(FileManager.default.fileExists(atPath: parent))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) }, "the dead runner's job survived")
        let report = try XCTUnwrap(try deadRunnerCleanups(by: survivor, of: name).first)
        XCTAssertTrue(((report["cgroups"] as? [String]) ?? []).contains(parent), "\(report)")
        return report
    }

    /// Two runners given one `--cgroup-parent` each make their own parent in it: one runner's cleanup rounds leave
    /// the other's running job alone, and once the other is dead its parent in the shared one is removed.
    func testRunnersSharingACgroupParentKeepToTheirOwnJobsAndRemoveADeadOnesParent() throws {
        let shared = IsolationLeftovers.sharedCgroupParent(namespace: namespace)
        let options = ["--lease-ttl", "2s", "--monitor-interval", "300ms", "--cgroup-parent", shared]
        let b = try startRunner(name: "r2", options + ["--queue", "other"])
        try submit(["--queue", "other", "--isolation", "cgroup", "--memory", "64M", "--", "sleep", "300"], id: "sh-1")
        let pid = try runningPid("sh-1")
        let parent = (try memoryCgroup(of: pid) as NSString).deletingLastPathComponent
        XCTAssertEqual((parent as NSString).deletingLastPathComponent, "/sys/fs/cgroup/memory/" + shared)
        XCTAssertTrue((parent as NSString).lastPathComponent.hasPrefix("nativerunner-\(namespace).r2."), parent)

        try startRunner(name: "r1", options)
        try waitForRounds(of: "r1", 6)
        XCTAssertTrue(processIsAlive(pid), "r1's cleanup killed r2's job")
        XCTAssertEqual(try job("sh-1")["state"], "running")

        try takeAwayPendingEntries(of: "other")
        _ = try killAndWaitForItsContextsRemoved(b, named: "r2", by: "r1", parent: parent, pid: pid)
    }

    /// A runner that stopped touching its contexts (SIGSTOP) but whose lease key still exists is not dead: its
    /// contexts stay, however old; once the key is gone they are removed.
    func testAContextIsLeftAloneWhileItsRunnersLeaseKeyExists() throws {
        let a = try startRunner(name: "r1", ["--lease-ttl", "60s", "--monitor-interval", "300ms"])
        try submit(["--isolation", "cgroup", "--memory", "64M", "--", "sleep", "300"], id: "held-1")
        let pid = try runningPid("held-1")
        let parent = (try memoryCgroup(of: pid) as NSString).deletingLastPathComponent
        let folder = try runnerFolder()
        try takeAwayPendingEntries()
        a.signal(SIGSTOP)
        try startRunner(name: "r2", ["--lease-ttl", "2s", "--monitor-interval", "300ms"])
        // Well past r2's age of 2 s since r1 last touched its contexts, then a few more rounds of r2.
        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { (untouchedFor(folder) ?? 0) > 2.5 }, folder)
        try waitForRounds(of: "r2", 4)
        XCTAssertEqual(try deadRunnerCleanups(by: "r2", of: "r1").count, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: parent))
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder))
        XCTAssertTrue(processIsAlive(pid))

        a.signal(SIGKILL)
        XCTAssertNotNil(a.waitForExit(timeout: 10))
        XCTAssertEqual(try send(["DEL", key("runner:r1")]).int, 1)
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try !deadRunnerCleanups(by: "r2", of: "r1").isEmpty })
        XCTAssertFalse(FileManager.default.fileExists(atPath: parent))
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !processIsAlive(pid) })
    }

    /// A running runner whose lease key is gone (as if it could not reach Redis) keeps its contexts: it touches them
    /// every round, so they are never old enough.
    func testARunningRunnersContextsStayWhileItsLeaseKeyIsGone() throws {
        // Renewals every 20 s: the deleted key stays deleted for the whole test.
        let r1Started = ContinuousClock.now
        try startRunner(name: "r1", ["--lease-ttl", "60s", "--monitor-interval", "300ms"])
        let folder = try runnerFolder()
        try startRunner(name: "r2", ["--lease-ttl", "2s", "--monitor-interval", "300ms"])
        XCTAssertEqual(try send(["DEL", key("runner:r1")]).int, 1)
        // A window, not a wait for something: r1 keeps its contexts fresh, so there is no moment to wait for. It ends
        // 2.5 s after r1 started, when contexts r1 had not touched would be past r2's age of 2 s; then a few more
        // rounds of r2 with the lease key gone.
        let left = (r1Started + .milliseconds(2500) - .now).components
        Thread.sleep(forTimeInterval: Double(left.seconds) + Double(left.attoseconds) / 1e18)
        try waitForRounds(of: "r2", 4)
        XCTAssertEqual(try send(["EXISTS", key("runner:r1")]).int, 0)
        XCTAssertEqual(try deadRunnerCleanups(by: "r2", of: "r1").count, 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder))
    }

    /// Only a context of this namespace and pool, named exactly as a runner's, untouched for the age (at least the
    /// lease TTL) and without a lease key is removed, with the processes carrying its runner's markers. A fresh one
    /// (a runner starting makes its folders before it writes its lease) stays until it is old.
    func testOnlyAnOldContextOfThisNamespaceAndPoolWithoutALeaseIsRemoved() throws {
        // An age of 10 s: long enough for the rounds below to see the fresh folder on a busy host.
        try startRunner(name: "r2", ["--lease-ttl", "10s", "--monitor-interval", "300ms"])
        try submit(["--", "sleep", "300"], id: "env-1")
        let jobPid = try runningPid("env-1")
        let environ = try String(contentsOfFile: "/proc/\(jobPid)/environ", encoding: .utf8)
        let pool = try XCTUnwrap(
            environ.split(separator: "\0").first { $0.hasPrefix("NR_POOL=") }.map { String($0.dropFirst(8)) })
        let root = "/tmp/nativerunner"
        let manager = FileManager.default
        let ghost = "\(root)/\(namespace).ghost.\(pool.prefix(8))"
        let untouchable = [
            "\(root)/other\(namespace).ghost.\(pool.prefix(8))",  // another namespace
            "\(root)/\(namespace).ghost.00000000",  // another pool
        ]
        for folder in [ghost] + untouchable {
            try manager.createDirectory(atPath: folder + "/job-1-0-x/tmp", withIntermediateDirectories: true)
        }
        let old = Date(timeIntervalSinceNow: -60)
        for folder in untouchable { try manager.setAttributes([.modificationDate: old], ofItemAtPath: folder) }
        defer { for folder in [ghost] + untouchable { try? manager.removeItem(atPath: folder) } }
        let marked = Process()
        marked.executableURL = URL(fileURLWithPath: "/bin/sleep")
        marked.arguments = ["300"]
        marked.environment = ["NR_RUNNER": "ghost", "NR_NAMESPACE": namespace, "NR_POOL": pool]
        try marked.run()
        defer { if marked.isRunning { marked.terminate() } }

        // Fresh: left alone for several rounds.
        let made = Date()
        try waitForRounds(of: "r2", 4)
        XCTAssertLessThan(Date().timeIntervalSince(made), 10, "the rounds took longer than the age")
        XCTAssertTrue(manager.fileExists(atPath: ghost))
        XCTAssertTrue(marked.isRunning)
        try manager.setAttributes([.modificationDate: old], ofItemAtPath: ghost)
        XCTAssertTrue(
            try waitUntil(timeout: .seconds(10)) { try !deadRunnerCleanups(by: "r2", of: "ghost").isEmpty })
        XCTAssertFalse(manager.fileExists(atPath: ghost))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !marked.isRunning })
        let report = try XCTUnwrap(try deadRunnerCleanups(by: "r2", of: "ghost").first)
        XCTAssertEqual(report["processes"] as? [Int], [Int(marked.processIdentifier)])
        XCTAssertEqual(report["work_dirs"] as? [String], [ghost])
        try waitForRounds(of: "r2", 2)
        for folder in untouchable { XCTAssertTrue(manager.fileExists(atPath: folder), folder) }
        XCTAssertTrue(processIsAlive(jobPid), "r2's own job")
        kill(jobPid, SIGKILL)
        XCTAssertTrue(try waitUntil(timeout: .seconds(10)) { try job("env-1")["state"] == "failed" })
    }

    /// A short job without a cgroup reports no peak rather than the runner's: a child cloned with the runner's
    /// memory has the runner's peak folded into its own ru_maxrss.
    func testAShortJobWithoutACgroupDoesNotReportTheRunnersMemoryAsItsPeak() throws {
        try startRunner()
        XCTAssertEqual(cli(["submit", "--wait", "--id", "tiny-1", "--", "true"]).code, 0)
        let record = try job("tiny-1")
        XCTAssertEqual(record["isolation"], "process_group")
        XCTAssertNil(record["peak_memory_bytes"], "\(record)")
        XCTAssertNil(record["peak_memory_source"], "\(record)")
    }

    /// Runs `arguments` as a job at the default level and checks its peak is a sampled one above `bytes`.
    private func assertSampledPeak(id: String, _ arguments: [String], above bytes: Int) throws {
        try startRunner()
        let result = cli(["submit", "--wait", "--id", id] + arguments)
        XCTAssertEqual(result.code, 0, result.err)
        let record = try job(id)
        XCTAssertEqual(record["peak_memory_source"], "sampled")
        XCTAssertEqual(record["isolation"], "process_group")
        XCTAssertGreaterThan(Int(record["peak_memory_bytes"] ?? "") ?? 0, bytes, "\(record)")
    }

    func testPeakMemoryIsSampledWithoutACgroup() throws {
        // The 96 MiB are held by a process the main one never waits for: only the samples can see them. The job's own
        // `sleep 1.5` is the sampler's window (six of its 250 ms intervals), not a wait of the test.
        try assertSampledPeak(
            id: "peak-1",
            [
                "--shell",
                "python3 -c \"import time; b = bytearray(96 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                    + "time.sleep(3)\" & sleep 1.5",
            ], above: 90 << 20)
    }

    func testPeakMemoryOfAJobEndingBeforeItsFirstSampleIsItsOwnMaxRSS() throws {
        // The sampler's first look is one interval (250 ms) after the start: a short job's peak is the kernel's
        // ru_maxrss of its main process.
        try assertSampledPeak(
            id: "peak-short", ["--", "python3", "-c", "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
            above: 60 << 20)
    }

    func testRunAsUserOwnsTheWorkFolderAndHasNoGroups() throws {
        try startRunner(["--run-as", "65534:65534", "--keep-work-dirs"])
        defer { (try? runnerFolder()).map { try? FileManager.default.removeItem(atPath: $0) } }
        let result = cli([
            "submit", "--wait", "--id", "user-1", "--shell", "id -u; id -g; id -G; stat -c %u .; touch ok",
        ])
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.stdout, "65534\n65534\n65534\n65534\n")
    }

    func testAWorkRootOthersCanWriteToIsRefusedAtStart() throws {
        let root = NSTemporaryDirectory() + "nr-open-root-\(namespace)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        chmod(root, 0o777)
        let runner = try RunnerUnderTest(
            endpoint: endpoint, namespace: namespace, name: "open", arguments: ["--work-root", root])
        XCTAssertEqual(runner.waitForExit(timeout: 20), 2, runner.log)
        XCTAssertTrue(
            runner.log.contains("Error: the work root \(root) is not safe to use: others can write to it (mode 777)"),
            runner.log)
    }
}
