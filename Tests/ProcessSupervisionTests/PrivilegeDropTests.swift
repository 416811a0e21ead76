import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// A root runner's jobs at `.namespace` run without capabilities, on a /proc and a /sys of their own: they can neither
/// unmount them to see the host, nor `setns` out of their namespaces, nor leave their cgroups. Each attack is also run
/// with `dropsCapabilities: false`, where it works: the assertions can fail.
final class PrivilegeDropTests: TemporaryDirectoryTestCase {
    private let namespace = ProcessIsolation(level: .namespace)
    private let keepsCapabilities = ProcessIsolation(level: .namespace, dropsCapabilities: false)
    private static let python = "/usr/bin/python3"

    override func setUp() async throws {
        try await super.setUp()
        guard geteuid() == 0 else { throw XCTSkip("the capabilities of a root job need a runner running as root") }
        try await requireCapabilities(
            for: ProcessIsolation(level: .namespace, namespaces: .init(isolatesNetwork: true)))
    }

    // MARK: Capability sets

    func testANamespaceJobOfARootRunnerHasNoCapabilities() async throws {
        // Dumpable first (whatever earlier spawns did): dropping the child's capabilities must not change the memory
        // it shared with the runner until exec.
        XCTAssertEqual(prctlOfThisProcess(PR_SET_DUMPABLE_ID, 1), 0)
        let dropped = try await capabilitySets(namespace)
        XCTAssertEqual(dropped, Self.noCapabilities)
        XCTAssertEqual(prctlOfThisProcess(PR_GET_DUMPABLE_ID), 1)

        let runner = try Self.capabilitySets(ofStatus: String(contentsOfFile: "/proc/self/status", encoding: .utf8))
        XCTAssertNotEqual(runner["CapEff"], Self.none, "the test needs a runner with capabilities")
        let kept = try await capabilitySets(keepsCapabilities)
        XCTAssertEqual(kept["CapEff"], runner["CapEff"], "dropsCapabilities: false keeps root's capabilities")
        XCTAssertEqual(kept["CapBnd"], runner["CapBnd"])
    }

    func testTheDefaultFollowsTheLevelAndAnExplicitChoiceWins() async throws {
        XCTAssertTrue(ProcessIsolation(level: .namespace).dropsCapabilities)
        XCTAssertFalse(ProcessIsolation(level: .processGroup).dropsCapabilities)
        XCTAssertFalse(ProcessIsolation(level: .none).dropsCapabilities)
        var raised = ProcessIsolation()
        raised.level = .namespace
        XCTAssertTrue(raised.dropsCapabilities, "the default follows a later change of the level")
        var chosen = ProcessIsolation(level: .namespace, dropsCapabilities: false)
        chosen.level = .processGroup
        chosen.level = .namespace
        XCTAssertFalse(chosen.dropsCapabilities, "an explicit choice stays")

        // Below `.namespace` a root job keeps root's capabilities unless asked, and can be asked to drop them.
        let runner = try Self.capabilitySets(ofStatus: String(contentsOfFile: "/proc/self/status", encoding: .utf8))
        let processGroup = try await capabilitySets(ProcessIsolation(level: .processGroup))
        XCTAssertEqual(processGroup["CapEff"], runner["CapEff"])
        let droppedGroup = try await capabilitySets(ProcessIsolation(level: .processGroup, dropsCapabilities: true))
        XCTAssertEqual(droppedGroup, Self.noCapabilities)
        let droppedNone = try await capabilitySets(ProcessIsolation(level: .none, dropsCapabilities: true))
        XCTAssertEqual(droppedNone, Self.noCapabilities)
    }

    func testRunAsInANamespaceEmptiesTheBoundingSetToo() async throws {
        // The bounding set is dropped before setresuid, which takes CAP_SETPCAP away. Without the drop, a job of
        // another user keeps the full bounding set (a setuid binary could regain it without no-new-privileges).
        let nobody = ProcessIsolation.Credentials(uid: 65534, gid: 65534)
        try await requireCapabilities(for: ProcessIsolation(credentials: nobody))
        let dropped = try await capabilitySets(ProcessIsolation(level: .namespace, credentials: nobody))
        XCTAssertEqual(dropped, Self.noCapabilities)
        let runner = try Self.capabilitySets(ofStatus: String(contentsOfFile: "/proc/self/status", encoding: .utf8))
        let kept = try await capabilitySets(ProcessIsolation(level: .processGroup, credentials: nobody))
        XCTAssertEqual(kept["CapEff"], Self.none)
        XCTAssertEqual(kept["CapBnd"], runner["CapBnd"])
    }

    func testTheDeathSignalSurvivesTheCapabilityDrop() async throws {
        // Set after the credentials and the capset; dropping to a subset does not clear it (a change of ids would).
        let script = "import ctypes; v = ctypes.c_int(-1); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"
        let (outcome, output) = try await runToEnd(python(script, isolation: namespace))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(output.stdoutText, "9\n")
    }

    // MARK: Attacks

    func testTheJobCanNeitherUnmountProcNorSetnsAndSeesOnlyItself() async throws {
        // The QA's escape: `umount /proc` shows the host's processes (the runner's argv with them), and then
        // `nsenter --net=/proc/<runner>/ns/net`. setns into the job's own network namespace needs CAP_SYS_ADMIN just
        // the same: refused, whatever namespace file a job could name.
        let script = """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            def errno_of(result):
                return 0 if result == 0 else ctypes.get_errno()
            own_net = os.open('/proc/self/ns/net', os.O_RDONLY)
            print('setns', errno_of(libc.setns(own_net, 0x40000000)))
            print('umount /proc', errno_of(libc.umount2(b'/proc', 2)))
            print('umount /sys', errno_of(libc.umount2(b'/sys', 2)))
            print('pids', ' '.join(sorted(p for p in os.listdir('/proc') if p.isdigit())))
            """
        let (outcome, output) = try await runToEnd(python(script, isolation: namespace))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(
            output.stdoutLines, ["setns \(EPERM)", "umount /proc \(EPERM)", "umount /sys \(EPERM)", "pids 1"])

        // Control: with capabilities the same job gets out.
        let (open, opened) = try await runToEnd(python(script, isolation: keepsCapabilities))
        XCTAssertEqual(open.termination, .exited(0), opened.stderrText)
        XCTAssertEqual(Array(opened.stdoutLines.prefix(3)), ["setns 0", "umount /proc 0", "umount /sys 0"])
        let visible = opened.stdoutLines.last?.split(separator: " ").dropFirst().map(String.init) ?? []
        XCTAssertTrue(visible.contains(String(getpid())), "after umount /proc the host's processes show")
    }

    func testTheJobCannotLeaveItsCgroup() async throws {
        // The QA's escape: `echo $$ > /sys/fs/cgroup/memory/cgroup.procs`. The job's /sys has no cgroup file system,
        // and without capabilities it cannot mount one.
        let pids = try makeCgroup(in: "/sys/fs/cgroup/pids")
        let own = String(pids.dropFirst("/sys/fs/cgroup/pids".count))
        let mountPoint = "\(directory)/cgroup"
        XCTAssertEqual(mkdir(mountPoint, 0o700), 0)
        let script = """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            def write_pid(path):
                try:
                    fd = os.open(path, os.O_WRONLY)
                except OSError as error:
                    return error.errno
                try:
                    os.write(fd, b'0')
                    return 0
                except OSError as error:
                    return error.errno
            print('entries', len(os.listdir('/sys/fs/cgroup')))
            for path in ['/sys/fs/cgroup/pids/cgroup.procs', '/sys/fs/cgroup/memory/cgroup.procs',
                         '/sys/fs/cgroup/unified/cgroup.procs', '/sys/fs/cgroup/cgroup.procs']:
                print('write', write_pid(path))
            mounted = libc.mount(b'cgroup', b'\(mountPoint)', b'cgroup', 0, b'pids')
            print('mount', 0 if mounted == 0 else ctypes.get_errno())
            print('leave', write_pid('\(mountPoint)/cgroup.procs'))
            print('in', [line for line in open('/proc/self/cgroup') if ':pids:' in line][0].strip().split(':', 2)[2])
            """
        var isolation = namespace
        isolation.cgroupProcsFiles = ["\(pids)/cgroup.procs"]
        let (outcome, output) = try await runToEnd(python(script, isolation: isolation))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(
            output.stdoutLines,
            ["entries 0"] + Array(repeating: "write \(ENOENT)", count: 4) + [
                "mount \(EPERM)", "leave \(ENOENT)", "in \(own)",
            ])

        // Control: with capabilities the job mounts the hierarchy and moves itself to its root.
        isolation.dropsCapabilities = false
        let (open, opened) = try await runToEnd(python(script, isolation: isolation))
        XCTAssertEqual(open.termination, .exited(0), opened.stderrText)
        XCTAssertEqual(Array(opened.stdoutLines.suffix(3)), ["mount 0", "leave 0", "in /"])
    }

    func testSysShowsTheJobsOwnNetworkReadOnlyAndNoCgroupMounts() async throws {
        let script = """
            import os
            print(' '.join(sorted(os.listdir('/sys/class/net'))))
            print('cgroup entries', len(os.listdir('/sys/fs/cgroup')))
            print('cgroup mounts', sum(1 for line in open('/proc/self/mountinfo') if ' - cgroup' in line))
            try:
                os.mkdir('/sys/nr-test')
                print('mkdir 0')
            except OSError as error:
                print('mkdir', error.errno)
            """
        let isolated = ProcessIsolation(level: .namespace, namespaces: .init(isolatesNetwork: true))
        let (outcome, output) = try await runToEnd(python(script, isolation: isolated))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(output.stdoutLines, ["lo", "cgroup entries 0", "cgroup mounts 0", "mkdir \(EROFS)"])

        // Sharing the runner's network, the job's sysfs shows the runner's interfaces (the host has more than lo).
        let hostInterfaces = try FileManager.default.contentsOfDirectory(atPath: "/sys/class/net").sorted()
        XCTAssertNotEqual(hostInterfaces, ["lo"], "the test needs a host with an interface besides lo")
        let (shared, sharedOutput) = try await runToEnd(python(script, isolation: keepsCapabilities))
        XCTAssertEqual(shared.termination, .exited(0), sharedOutput.stderrText)
        XCTAssertEqual(
            sharedOutput.stdoutLines,
            [hostInterfaces.joined(separator: " "), "cgroup entries 0", "cgroup mounts 0", "mkdir \(EROFS)"])
    }

    // MARK: Helpers

    private static let none = "0000000000000000"
    private static let noCapabilities = [
        "CapInh": none, "CapPrm": none, "CapEff": none, "CapBnd": none, "CapAmb": none,
    ]

    /// The job's capability sets after exec (/proc/self/status of the grep it runs), by name.
    private func capabilitySets(_ isolation: ProcessIsolation, line: UInt = #line) async throws -> [String: String] {
        let (outcome, output) = try await runToEnd(shell("exec cat /proc/self/status", isolation: isolation))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText, line: line)
        return Self.capabilitySets(ofStatus: output.stdoutText)
    }

    /// "CapEff:\t000001fffeffffff" lines of a status file, by name.
    private static func capabilitySets(ofStatus status: String) -> [String: String] {
        var sets: [String: String] = [:]
        for line in status.split(separator: "\n") where line.hasPrefix("Cap") {
            let fields = line.split(separator: ":", maxSplits: 1)
            if fields.count == 2 {
                sets[String(fields[0])] = fields[1].trimmingCharacters(in: .whitespaces)
            }
        }
        return sets
    }

    /// python3 running `script` as the job's main process (PID 1 at `.namespace`).
    private func python(_ script: String, isolation: ProcessIsolation) throws -> ProcessSpec {
        guard access(Self.python, X_OK) == 0 else { throw XCTSkip("no \(Self.python)") }
        return ProcessSpec(
            executable: Self.python, arguments: ["python3", "-c", script], environment: ["PATH": testPath],
            workingDirectory: "/", isolation: isolation)
    }
}
