import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// Jobs at isolation level `.namespace`: PID 1 of their own PID namespace, with their own /proc, hostname, IPC and
/// (when asked) network.
final class NamespaceTests: XCTestCase {
    private let namespace = ProcessIsolation(level: .namespace, hostname: "job-42")
    private let isolatedNetwork = ProcessIsolation(level: .namespace, namespaces: .init(isolatesNetwork: true))

    override func setUp() async throws {
        try await requireCapabilities(for: isolatedNetwork)
    }

    func testTheJobIsPID1AndSeesOnlyItsOwnProcesses() async throws {
        // The shell expands /proc/[0-9]* before it starts cat: then the namespace holds the shell alone.
        let script = "echo $$; readlink /proc/self; cat /proc/[0-9]*/comm; kill -0 \(getpid()) 2>/dev/null; echo $?"
        let mountsBefore = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let (outcome, output) = try await runToEnd(shell(script, isolation: namespace))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertGreaterThan(outcome.pid, 1)  // the runner's view of it
        let lines = output.stdoutLines
        XCTAssertEqual(lines.first, "1")
        XCTAssertEqual(lines.dropFirst().first, "2")  // readlink, the shell's first child
        XCTAssertEqual(Array(lines.dropFirst(2).dropLast()), ["sh"], "processes other than the job's are visible")
        XCTAssertEqual(lines.last, "1", "kill -0 of the runner's pid must fail inside the namespace")
        // The new /proc was mounted in the job's own mount namespace only.
        XCTAssertEqual(try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8), mountsBefore)
    }

    func testPsShowsNoRunnerProcess() async throws {
        guard access("/usr/bin/ps", X_OK) == 0 || access("/bin/ps", X_OK) == 0 else {
            throw XCTSkip("no ps on this host")
        }
        let (outcome, output) = try await runToEnd(shell("ps -e -o pid= -o comm=", isolation: namespace))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        let rows = output.stdoutLines.map { $0.split(separator: " ").map(String.init) }
        XCTAssertEqual(rows, [["1", "sh"], ["2", "ps"]], "only the job's shell (PID 1) and ps")
    }

    func testHostnameIsTheGivenOneAndTheHostKeepsItsOwn() async throws {
        let before = ProcessInfo.processInfo.hostName
        let (outcome, output) = try await runToEnd(
            shell("hostname; cat /proc/sys/kernel/hostname", isolation: namespace))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(output.stdoutLines, ["job-42", "job-42"])
        var name = [CChar](repeating: 0, count: 256)
        XCTAssertEqual(gethostname(&name, name.count), 0)
        XCTAssertNotEqual(String(cString: name), "job-42")
        XCTAssertEqual(ProcessInfo.processInfo.hostName, before)
    }

    func testTimeoutEndsPID1WithSIGKILLAndTheWholeNamespaceWithIt() async throws {
        // PID 1 (sleep, exec'd by the shell) ignores SIGTERM (no handler), its child does not; the SIGKILL after the
        // grace ends PID 1, and the kernel then kills what is left in the namespace.
        let process = try await Shared.supervisor.spawn(
            shell("sleep 300 & exec sleep 300", isolation: namespace), output: { _, _ in })
        let namespaceLink = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(process.pid)/ns/pid")
        let start = ContinuousClock.now
        let outcome = await process.wait(TerminationPolicy(timeout: .milliseconds(200), killGrace: .milliseconds(300)))
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(outcome.stopReason, .timeout)
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertTrue(outcome.forcedKill)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(450))
        XCTAssertLessThan(elapsed, .seconds(3))
        XCTAssertEqual(processesIn(pidNamespace: namespaceLink), [], "processes left in \(namespaceLink)")
    }

    func testPID1WithATERMHandlerEndsOnSIGTERM() async throws {
        let spec = shell("trap 'exit 3' TERM; sleep 300 & wait", isolation: namespace)
        let (outcome, _) = try await runToEnd(
            spec, TerminationPolicy(timeout: .milliseconds(200), killGrace: .seconds(5)))
        XCTAssertEqual(outcome.stopReason, .timeout)
        XCTAssertEqual(outcome.termination, .exited(3))
        XCTAssertFalse(outcome.forcedKill)
    }

    func testIsolatedNetworkHasOnlyLoopbackUp() async throws {
        // /proc/net/dev lists the interfaces of the reader's network namespace; bash's /dev/tcp proves lo carries
        // traffic (its 127.0.0.1 exists only once it is up).
        let script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; exec python3 -c \"\(Self.loopbackEcho)\""
        let (outcome, output) = try await runToEnd(shell(script, isolation: isolatedNetwork))
        XCTAssertEqual(outcome.termination, .exited(0), output.stderrText)
        XCTAssertEqual(output.stdoutLines, ["lo", "ok"])
    }

    /// Listens on 127.0.0.1, connects to itself and prints "ok".
    private static let loopbackEcho =
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1); "
        + "c = socket.create_connection(s.getsockname(), timeout=5); print('ok')"

    func testIsolatedNetworkCannotReachTheRunnersLoopback() async throws {
        let listener = try LoopbackListener()
        defer { listener.close() }
        let connect = "exec bash -c 'exec 3<>/dev/tcp/127.0.0.1/\(listener.port)' 2>/dev/null"
        // Control: a namespace job sharing the runner's network does reach it, so the test can fail.
        let (shared, _) = try await runToEnd(shell(connect, isolation: ProcessIsolation(level: .namespace)))
        XCTAssertEqual(shared.termination, .exited(0))
        let (isolated, _) = try await runToEnd(shell(connect, isolation: isolatedNetwork))
        XCTAssertEqual(isolated.termination, .exited(1), "the isolated job reached 127.0.0.1:\(listener.port)")
    }

    func testEachNamespaceIsNew() async throws {
        let kinds = ["pid", "mnt", "ipc", "uts", "net"]
        let script = kinds.map { "readlink /proc/self/ns/\($0)" }.joined(separator: "; ")
        let (_, inside) = try await runToEnd(shell(script, isolation: isolatedNetwork))
        let outside = try kinds.map { try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\($0)") }
        XCTAssertEqual(inside.stdoutLines.count, kinds.count)
        for (kind, (mine, theirs)) in zip(kinds, zip(outside, inside.stdoutLines)) {
            XCTAssertNotEqual(mine, theirs, "\(kind) namespace shared with the runner")
        }
        let (_, hostNetwork) = try await runToEnd(shell("readlink /proc/self/ns/net", isolation: namespace))
        XCTAssertEqual(hostNetwork.stdoutLines, [outside[4]], "without isolatesNetwork the network is the runner's")
    }

    /// Pids (in the runner's view) of the processes whose PID namespace is `link` ("pid:[...]").
    private func processesIn(pidNamespace link: String) -> [Int32] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.compactMap { Int32($0) } ?? []
        return pids.filter {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/ns/pid")) == link
        }
    }
}
