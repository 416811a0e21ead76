import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// Rlimits, no-new-privileges, run-as and cgroup joins, as the job sees them, and each failing step named.
final class IsolationTests: TemporaryDirectoryTestCase {

    // MARK: Resource limits

    func testResourceLimitsAreInForce() async throws {
        var isolation = ProcessIsolation()
        isolation.setLimit(ResourceLimit(.openFiles, soft: 64, hard: 128))
        isolation.setLimit(ResourceLimit(.fileSize, 1 << 20))
        isolation.setLimit(ResourceLimit(.cpuSeconds, soft: 30, hard: 60))
        isolation.setLimit(ResourceLimit(.addressSpace, soft: 8 << 30, hard: nil))
        isolation.setLimit(ResourceLimit(.processes, soft: 500, hard: 1000))
        // dash's ulimit counts -f and -c in 512-byte blocks.
        let script = "ulimit -n; ulimit -Hn; ulimit -c; ulimit -f; cat /proc/self/limits"
        let (outcome, output) = try await runToEnd(shell(script, isolation: isolation))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(Array(output.stdoutLines.prefix(4)), ["64", "128", "0", "2048"])
        let limits = Self.parseLimits(output.stdoutText)
        XCTAssertEqual(limits["Max open files"], ["64", "128"])
        XCTAssertEqual(limits["Max file size"], ["1048576", "1048576"])
        XCTAssertEqual(limits["Max cpu time"], ["30", "60"])
        XCTAssertEqual(limits["Max address space"], ["8589934592", "unlimited"])
        XCTAssertEqual(limits["Max processes"], ["500", "1000"])
        XCTAssertEqual(limits["Max core file size"], ["0", "0"])
    }

    /// "Max open files            64                   128                  files" → ["64", "128"], by limit name.
    private static func parseLimits(_ text: String) -> [String: [String]] {
        var limits: [String: [String]] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("Max ") && line.count > 26 {
            let name = line.prefix(26).trimmingCharacters(in: .whitespaces)
            limits[name] = Array(line.dropFirst(26).split(separator: " ").prefix(2).map(String.init))
        }
        return limits
    }

    func testCoreSizeIsZeroByDefault() async throws {
        // Raise this process's own soft core limit, so that only the job's default can make it 0.
        var saved = rlimit()
        XCTAssertEqual(getrlimit(RLIMIT_CORE_ID, &saved), 0)
        var raised = rlimit(rlim_cur: 1 << 20, rlim_max: max(saved.rlim_max, 1 << 20))
        XCTAssertEqual(setrlimit(RLIMIT_CORE_ID, &raised), 0, "cannot raise RLIMIT_CORE for the test")
        defer { _ = setrlimit(RLIMIT_CORE_ID, &saved) }

        let (_, byDefault) = try await runToEnd(shell("ulimit -c"))
        XCTAssertEqual(byDefault.stdoutLines, ["0"])
        let (_, inherited) = try await runToEnd(shell("ulimit -c", isolation: ProcessIsolation(resourceLimits: [])))
        XCTAssertEqual(inherited.stdoutLines, ["2048"], "without limits the job has the runner's")
    }

    func testFileSizeLimitStopsABigWriteWithSIGXFSZ() async throws {
        let file = "\(directory)/big"
        let isolation = ProcessIsolation(resourceLimits: [ResourceLimit(.fileSize, 1 << 20)])
        let spec = shell("exec dd if=/dev/zero of=\(file) bs=65536 count=64 2>/dev/null", isolation: isolation)
        let (outcome, _) = try await runToEnd(spec)
        XCTAssertEqual(outcome.termination, .signaled(SIGXFSZ))
        let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int
        XCTAssertEqual(size, 1 << 20)
    }

    // MARK: Privileges

    func testNoNewPrivilegesIsSetByDefaultAndCanBeLeftOff() async throws {
        let (_, byDefault) = try await runToEnd(shell("grep NoNewPrivs /proc/self/status"))
        XCTAssertEqual(byDefault.stdoutLines, ["NoNewPrivs:\t1"])
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        guard status.contains("NoNewPrivs:\t0") else {
            throw XCTSkip("the test process already has no_new_privs: a job cannot be started without it")
        }
        let off = ProcessIsolation(noNewPrivileges: false)
        let (_, without) = try await runToEnd(shell("grep NoNewPrivs /proc/self/status", isolation: off))
        XCTAssertEqual(without.stdoutLines, ["NoNewPrivs:\t0"])
    }

    func testRunAsGivesTheUserAndGroupAndNoOtherGroups() async throws {
        let nobody = ProcessIsolation(credentials: .init(uid: 65534, gid: 65534))
        try await requireCapabilities(for: nobody)
        // Dumpable first (whatever earlier spawns did), so that only this job's spawn can change it.
        XCTAssertEqual(prctlOfThisProcess(PR_SET_DUMPABLE_ID, 1), 0)
        let (outcome, output) = try await runToEnd(
            shell("id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups):' /proc/self/status", isolation: nobody))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(
            output.stdoutLines.map { $0.trimmingCharacters(in: .whitespaces) },
            [
                "65534", "65534", "65534", "Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534",
                "Groups:",
            ]
        )
        // The child shared the runner's memory until exec: its credential change must not leave the runner
        // "not dumpable".
        XCTAssertEqual(prctlOfThisProcess(PR_GET_DUMPABLE_ID), 1)
    }

    func testRunAsKeepsTheDeathSignal() async throws {
        // Changing credentials clears PR_SET_PDEATHSIG, so it is set after them.
        let python = "/usr/bin/python3"
        guard access(python, X_OK) == 0 else { throw XCTSkip("no \(python) to read PR_GET_PDEATHSIG with") }
        let nobody = ProcessIsolation(credentials: .init(uid: 65534, gid: 65534))
        try await requireCapabilities(for: nobody)
        let script = "import ctypes; v = ctypes.c_int(-1); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"
        let spec = ProcessSpec(
            executable: python, arguments: ["python3", "-c", script], environment: ["PATH": testPath],
            workingDirectory: "/", isolation: nobody)
        let (outcome, output) = try await runToEnd(spec)
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(output.stdoutText, "9\n")
    }

    // MARK: Cgroups

    func testTheChildIsInItsCgroupsBeforeItRunsAnything() async throws {
        let pids = try makeCgroup(in: "/sys/fs/cgroup/pids")
        var files = ["\(pids)/cgroup.procs"]
        var expected = ["pids:\(pids.dropFirst("/sys/fs/cgroup/pids".count))"]
        if access("/sys/fs/cgroup/unified/cgroup.procs", W_OK) == 0 {
            let unified = try makeCgroup(in: "/sys/fs/cgroup/unified")
            files.append("\(unified)/cgroup.procs")
            expected.append("0::\(unified.dropFirst("/sys/fs/cgroup/unified".count))")
        }
        // The exec'd program's first act shows its cgroups: it was in them before it ran.
        let spec = ProcessSpec(
            executable: "/bin/cat", arguments: ["cat", "/proc/self/cgroup"],
            isolation: ProcessIsolation(cgroupProcsFiles: files))
        let (outcome, output) = try await runToEnd(spec)
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        for entry in expected {
            XCTAssertTrue(
                output.stdoutLines.contains { $0 == entry || $0.hasSuffix(":\(entry)") },
                "no \(entry) in \(output.stdoutLines)")
        }
        let tasks = try String(contentsOfFile: "\(pids)/cgroup.procs", encoding: .utf8)
        XCTAssertEqual(tasks, "", "the cgroup still has processes after wait()")
    }

    func testAFailedCgroupJoinIsASpawnFailureNamingTheFile() async throws {
        // A new v1 cpuset cgroup has no CPUs until given some: the kernel refuses to put a process in it.
        let cpuset = try makeCgroup(in: "/sys/fs/cgroup/cpuset")
        let cpus = try String(contentsOfFile: "\(cpuset)/cpuset.cpus", encoding: .utf8)
        guard cpus.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw XCTSkip("new cpuset cgroups inherit CPUs here (cgroup.clone_children)")
        }
        let file = "\(cpuset)/cgroup.procs"
        let error = try await cgroupFailure(file)
        XCTAssertEqual(error.step, .joinCgroup)
        XCTAssertEqual(error.code, .isolationFailed)
        XCTAssertEqual(error.errno, ENOSPC)
        XCTAssertTrue(error.isSupervisorSide)
        XCTAssertEqual(
            error.message, "cannot start '/bin/true': joining the cgroup (\(file)) failed: No space left on device")
    }

    /// The SpawnError of `/bin/true` asked to join the cgroup of `file`.
    private func cgroupFailure(_ file: String, line: UInt = #line) async throws -> SpawnError {
        let spec = ProcessSpec(
            executable: "/bin/true", arguments: ["true"], isolation: ProcessIsolation(cgroupProcsFiles: [file]))
        let failure = await spawnError(spec, line: line)
        return try XCTUnwrap(failure, line: line)
    }

    func testAMissingCgroupFileFailsBeforeTheClone() async throws {
        let file = "\(directory)/no-such-cgroup/cgroup.procs"
        let error = try await cgroupFailure(file)
        XCTAssertEqual(error.step, .openCgroup)
        XCTAssertEqual(error.errno, ENOENT)
        XCTAssertTrue(error.isSupervisorSide)
        XCTAssertEqual(
            error.message, "cannot start '/bin/true': opening cgroup.procs (\(file)) failed: No such file or directory")
    }

    // MARK: Failing steps

    func testARefusedLimitNamesTheLimit() async throws {
        // Above fs.nr_open even root may not raise RLIMIT_NOFILE.
        let nrOpen = try XCTUnwrap(
            UInt64(
                try String(contentsOfFile: "/proc/sys/fs/nr_open", encoding: .utf8).trimmingCharacters(
                    in: .whitespacesAndNewlines)))
        let limit = ResourceLimit(.openFiles, nrOpen + 1)
        let spec = shell("true", isolation: ProcessIsolation(resourceLimits: [ResourceLimit(.coreSize, 0), limit]))
        let failure = await spawnError(spec)
        let error = try XCTUnwrap(failure)
        XCTAssertEqual(error.step, .resourceLimit)
        XCTAssertEqual(error.code, .isolationFailed)
        XCTAssertEqual(error.errno, EPERM)
        XCTAssertFalse(error.isSupervisorSide)
        XCTAssertEqual(
            error.message,
            "cannot start '/bin/sh': setrlimit(RLIMIT_NOFILE, soft \(nrOpen + 1), hard \(nrOpen + 1)) failed: "
                + "Operation not permitted")
    }

    func testAHostnameTooLongFailsAtSethostname() async throws {
        let isolation = ProcessIsolation(level: .namespace, hostname: String(repeating: "h", count: 65))
        try await requireCapabilities(for: isolation)
        let failure = await spawnError(shell("true", isolation: isolation))
        let error = try XCTUnwrap(failure)
        XCTAssertEqual(error.step, .setHostname)
        XCTAssertEqual(error.errno, EINVAL)
        XCTAssertTrue(error.message.hasPrefix("cannot start '/bin/sh': sethostname('hhh"), error.message)
    }

    func testIsolationThatCannotBeGivenAsAskedIsRejectedBeforeTheClone() async throws {
        let cases: [(ProcessIsolation, EnvironmentMarker?, String)] = [
            (ProcessIsolation(hostname: "x"), nil, "a hostname needs the namespace isolation level"),
            (
                ProcessIsolation(level: .processGroup, namespaces: .init(isolatesNetwork: true)), nil,
                "an isolated network needs the namespace isolation level"
            ),
            (ProcessIsolation(level: .namespace, hostname: ""), nil, "invalid hostname ''"),
            (
                ProcessIsolation(resourceLimits: [ResourceLimit(.openFiles, 8), ResourceLimit(.openFiles, 9)]), nil,
                "RLIMIT_NOFILE is given twice"
            ),
            (
                ProcessIsolation(resourceLimits: [ResourceLimit(.fileSize, soft: nil, hard: 10)]), nil,
                "RLIMIT_FSIZE: the soft limit is above the hard limit"
            ),
            (
                ProcessIsolation(credentials: .init(uid: .max, gid: 1)), nil,
                "uid and gid 4294967295 are not valid credentials"
            ),
            (
                ProcessIsolation(cgroupProcsFiles: ["sys/fs/cgroup/pids/x/cgroup.procs"]), nil,
                "the cgroup.procs path 'sys/fs/cgroup/pids/x/cgroup.procs' is not absolute"
            ),
            (
                .default, EnvironmentMarker(name: "PATH", value: "/x"),
                "the environment sets the tree marker 'PATH' to another value"
            ),
        ]
        for (isolation, marker, reason) in cases {
            let error = await spawnError(shell("true", isolation: isolation, marker: marker))
            XCTAssertEqual(error?.message, "cannot start '/bin/sh': \(reason)")
            XCTAssertEqual(error?.errno, EINVAL)
            XCTAssertNil(error?.step)
        }
    }

    func testTheTreeMarkerIsInTheJobsEnvironment() async throws {
        let marker = uniqueMarker()
        let (_, output) = try await runToEnd(shell("echo $\(marker.name)", isolation: .default, marker: marker))
        XCTAssertEqual(output.stdoutLines, [marker.value])
    }
}

/// RLIMIT_CORE as `getrlimit`/`setrlimit` take it in Swift (glibc's enum type).
private let RLIMIT_CORE_ID = __rlimit_resource_t(RLIMIT_CORE.rawValue)
