import Foundation
import ProcessSupervision
import Synchronization
import TestSupport
import XCTest

/// One supervisor for the whole test target (a subreaper, like the runner's).
enum Shared {
    static let supervisor: ProcessSupervisor = {
        do {
            return try ProcessSupervisor(subreaper: true)
        } catch {
            fatalError("cannot create the supervisor: \(error)")
        }
    }()
}

/// Collects a child's output; safe to call from the monitor thread.
final class OutputCollector: Sendable {
    private let streams = Mutex<(stdout: [UInt8], stderr: [UInt8])>(([], []))

    var handler: @Sendable (ProcessOutputStream, [UInt8]) -> Void {
        { stream, chunk in
            self.streams.withLock { streams in
                switch stream {
                case .stdout: streams.stdout.append(contentsOf: chunk)
                case .stderr: streams.stderr.append(contentsOf: chunk)
                }
            }
        }
    }

    var stdout: [UInt8] { streams.withLock { $0.stdout } }
    var stderr: [UInt8] { streams.withLock { $0.stderr } }
    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    var stderrText: String { String(decoding: stderr, as: UTF8.self) }
    var stdoutLines: [String] { stdoutText.split(separator: "\n").map(String.init) }
}

let testPath = "/usr/bin:/bin"

/// `sh -c script` with a minimal environment.
func shell(_ script: String, workingDirectory: String? = nil) -> ProcessSpec {
    ProcessSpec(
        executable: "/bin/sh",
        arguments: ["sh", "-c", script],
        environment: ["PATH": testPath],
        workingDirectory: workingDirectory
    )
}

/// Runs to the end with `policy`; returns the outcome and the collected output.
func runToEnd(
    _ spec: ProcessSpec,
    _ policy: TerminationPolicy = TerminationPolicy(),
    supervisor: ProcessSupervisor = Shared.supervisor
) async throws -> (ProcessOutcome, OutputCollector) {
    let collector = OutputCollector()
    let process = try await supervisor.spawn(spec, output: collector.handler)
    let outcome = await process.wait(policy)
    return (outcome, collector)
}

/// The SpawnError that spawning `spec` throws (fails the test if it starts).
func spawnError(_ spec: ProcessSpec, file: StaticString = #filePath, line: UInt = #line) async -> SpawnError? {
    do {
        let process = try await Shared.supervisor.spawn(spec, output: { _, _ in })
        XCTFail("expected a SpawnError, but pid \(process.pid) started", file: file, line: line)
        _ = await process.wait(TerminationPolicy(killGrace: .zero))
        return nil
    } catch let error as SpawnError {
        return error
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
        return nil
    }
}

/// True while /proc/<pid> exists (alive or a zombie).
func processExists(_ pid: Int32) -> Bool {
    access("/proc/\(pid)/stat", F_OK) == 0
}

/// The state letter of /proc/<pid>/stat ("Z" for a zombie), nil if there is no such process.
func processState(_ pid: Int32) -> String? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return nil }
    return stat[stat.index(after: close)...].split(separator: " ").first.map(String.init)
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes; never a fixed sleep.
func eventually(
    within timeout: Duration = .seconds(5),
    _ condition: () -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

func openFDCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
}

/// A test case with a fresh temporary directory per test, removed afterwards.
class TemporaryDirectoryTestCase: XCTestCase {
    var directory = ""

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory()
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A fresh temporary directory (removed by the caller).
/// The blocked-signal mask (SigBlk of /proc/self/task/TID/status) of each thread of this process with that name.
func threadSignalMasks(named name: String) -> [(thread: String, blocked: UInt64)] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { tid in
        guard let comm = try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8),
            comm.trimmingCharacters(in: .whitespacesAndNewlines) == name,
            let status = try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigBlk:") }),
            let mask = UInt64(line.dropFirst("SigBlk:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return nil }
        return (tid, mask)
    }
}

func makeTemporaryDirectory() throws -> String {
    var template = Array("/tmp/process-supervision-tests.XXXXXX".utf8CString)
    guard let path = mkdtemp(&template) else { throw POSIXError(.EIO) }
    return String(cString: path)
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}

/// `sh -c script` at `isolation`, with an optional tree marker.
func shell(_ script: String, isolation: ProcessIsolation, marker: EnvironmentMarker? = nil) -> ProcessSpec {
    var spec = shell(script)
    spec.isolation = isolation
    spec.treeMarker = marker
    return spec
}

/// A tree marker no other test uses.
func uniqueMarker() -> EnvironmentMarker {
    EnvironmentMarker(name: "NR_TEST_JOB", value: UUID().uuidString)
}

/// Parent, process group and session of a live process, from /proc/<pid>/stat (fields 4, 5, 6).
func processRelations(_ pid: Int32) -> (parent: Int32, group: Int32, session: Int32)? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ").compactMap { Int32($0) }
    guard fields.count >= 3 else { return nil }
    return (fields[0], fields[1], fields[2])
}

/// The first stdout line as a pid, once the job printed it (fails the test after `timeout`).
func printedPid(
    _ output: OutputCollector, within timeout: Duration = .seconds(10), file: StaticString = #filePath,
    line: UInt = #line
) async throws -> Int32 {
    let printed = await waitUntil(timeout: timeout, interval: .milliseconds(5)) { output.stdoutLines.first != nil }
    XCTAssertTrue(printed, "the job printed no pid; stderr: \(output.stderrText)", file: file, line: line)
    return try XCTUnwrap(output.stdoutLines.first.flatMap { Int32($0) }, file: file, line: line)
}

/// Skips the test when this host cannot give `isolation`, with the probe's reason.
func requireCapabilities(for isolation: ProcessIsolation) async throws {
    if let reason = await IsolationCapabilities.probe().missing(for: isolation) {
        throw XCTSkip("this host cannot run the test: \(reason)")
    }
}

let PR_GET_DUMPABLE_ID: Int32 = 3
let PR_SET_DUMPABLE_ID: Int32 = 4

/// prctl(option, argument) of this process. prctl is variadic, which Swift cannot call: called through a
/// non-variadic pointer, which the x86-64 and AArch64 Linux ABIs pass the same way for integer arguments.
func prctlOfThisProcess(_ option: Int32, _ argument: UInt = 0) -> Int32 {
    typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") else { return -1 }
    return unsafeBitCast(symbol, to: Prctl.self)(option, argument, 0, 0, 0)
}

extension XCTestCase {
    /// A new cgroup under `hierarchy` (e.g. /sys/fs/cgroup/pids), removed at the end of the test.
    func makeCgroup(in hierarchy: String) throws -> String {
        guard access(hierarchy, W_OK) == 0 else { throw XCTSkip("\(hierarchy) is not writable here") }
        let path = "\(hierarchy)/nr-test-\(getpid())-\(UUID().uuidString.prefix(8))"
        guard mkdir(path, 0o755) == 0 else {
            throw XCTSkip("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        addTeardownBlock {
            // Empty once its processes are reaped; the kernel may take a moment to agree.
            _ = waitUntil(timeout: .seconds(5)) { rmdir(path) == 0 || errno == ENOENT }
        }
        return path
    }
}
