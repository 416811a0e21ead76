import Foundation
import RedisClient
import TestSupport
import XCTest

/// The built `runner` binary, next to the test bundle.
enum Binaries {
    static let runner: String = {
        let exe =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = URL(fileURLWithPath: exe).deletingLastPathComponent()
        if directory.lastPathComponent == "MacOS" || directory.pathExtension == "xctest" {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("runner").path
    }()
}

extension Process {
    /// Runs the `runner` binary with these arguments, so that it dies with the test process even if that crashes
    /// (util-linux setpriv sets PR_SET_PDEATHSIG and execs it, keeping the pid): a test never leaves one running.
    func runnerBinary(_ arguments: [String]) {
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") {
            executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            self.arguments = ["--pdeathsig", "KILL", Binaries.runner] + arguments
        } else {
            executableURL = URL(fileURLWithPath: Binaries.runner)
            self.arguments = arguments
        }
    }
}

/// The Redis most tests share: scripts/test's throwaway server (NR_TEST_REDIS), or one started for this process.
/// Each test uses its own namespace, so tests never see each other's keys.
enum SharedRedis {
    nonisolated(unsafe) private static var server: RedisServerProcess?
    static let endpoint: RedisEndpoint = {
        if let text = ProcessInfo.processInfo.environment["NR_TEST_REDIS"],
            let endpoint = try? RedisEndpoint(parsing: text)
        {
            return endpoint
        }
        let started = try! RedisServerProcess()
        server = started
        atexit { try? SharedRedis.server?.kill() }
        return started.endpoint
    }()
}

/// A result of running the CLI binary.
struct CLIResult {
    var code: Int32
    var out: Data
    var err: String
    var stdout: String { String(decoding: out, as: UTF8.self) }
}

/// Runs `runner ARGS...` to completion (bounded), capturing its output.
func runCLI(_ arguments: [String], environment: [String: String]? = nil, timeout: TimeInterval = 60) -> CLIResult {
    let process = Process()
    process.runnerBinary(arguments)
    if let environment { process.environment = environment }
    return runToEnd(process, timeout: timeout)
}

/// Runs a configured process to completion (bounded: SIGKILL at the timeout), capturing stdout and stderr.
func runToEnd(_ process: Process, timeout: TimeInterval) -> CLIResult {
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    let done = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in done.signal() }
    do { try process.run() } catch {
        return CLIResult(code: -1, out: Data(), err: "cannot run \(process.executableURL?.path ?? ""): \(error)")
    }
    // Read both pipes concurrently so a large output cannot block the child.
    nonisolated(unsafe) var outData = Data()
    nonisolated(unsafe) var errData = Data()
    let readers = DispatchGroup()
    DispatchQueue.global().async(group: readers) { outData = out.fileHandleForReading.readDataToEndOfFile() }
    DispatchQueue.global().async(group: readers) { errData = err.fileHandleForReading.readDataToEndOfFile() }
    if done.wait(timeout: .now() + timeout) == .timedOut {
        kill(process.processIdentifier, SIGKILL)
        done.wait()
        readers.wait()
        return CLIResult(
            code: -9, out: outData, err: "timed out after \(timeout) s\n" + String(decoding: errData, as: UTF8.self))
    }
    readers.wait()
    return CLIResult(code: process.terminationStatus, out: outData, err: String(decoding: errData, as: UTF8.self))
}

/// A CLI command left running in the background (`submit --wait`, `--follow`), its stdout collected by a reader
/// thread so that tests can poll it without blocking.
final class BackgroundCLI {
    /// The collected bytes; only touched under `lock`. A box of its own, so the reader thread does not keep the
    /// BackgroundCLI alive (its deinit is what stops the process).
    private final class Buffer: @unchecked Sendable {
        let lock = NSLock()
        var data = Data()
    }

    let process = Process()
    private let buffer = Buffer()
    private let reader = DispatchGroup()
    private let exited = DispatchSemaphore(value: 0)

    convenience init(_ arguments: [String]) throws {
        try self.init(configure: { $0.runnerBinary(arguments) })
    }

    /// Starts the process `configure` sets up (executable, arguments, directory).
    init(configure: (Process) -> Void) throws {
        configure(process)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let exited = self.exited
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
        let handle = pipe.fileHandleForReading
        DispatchQueue.global().async(group: reader) { [buffer] in
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { return }
                buffer.lock.withLock { buffer.data += chunk }
            }
        }
    }

    /// What it printed so far.
    var output: String { buffer.lock.withLock { String(decoding: buffer.data, as: UTF8.self) } }

    /// Its exit status, once it exited within the timeout (its output is then complete).
    func waitForExit(timeout: TimeInterval) -> Int32? {
        guard exited.wait(timeout: .now() + timeout) == .success else { return nil }
        exited.signal()
        reader.wait()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            _ = exited.wait(timeout: .now() + 5)
        }
    }
}

/// A `runner worker` process under test, with its log in a file.
final class RunnerUnderTest {
    let process = Process()
    let name: String
    let logURL: URL
    private let exited = DispatchSemaphore(value: 0)

    init(
        endpoint: RedisEndpoint, namespace: String, name: String, subcommand: String = "worker",
        arguments: [String] = [], environment: [String: String] = [:]
    ) throws {
        self.name = name
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent(
            "runner-\(name)-\(UUID().uuidString).log")
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.runnerBinary(
            [subcommand, "--redis", endpoint.url, "--namespace", namespace, "--name", name] + arguments)
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("RUNNER_") }
        env.merge(environment) { _, new in new }
        process.environment = env
        let log = try FileHandle(forWritingTo: logURL)
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        let exited = self.exited
        process.terminationHandler = { _ in exited.signal() }
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }
    var isRunning: Bool { process.isRunning }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for the runner to exit; returns its exit status, or nil if it is still running at the deadline.
    func waitForExit(timeout: TimeInterval) -> Int32? {
        guard exited.wait(timeout: .now() + timeout) == .success else { return nil }
        exited.signal()
        return process.terminationStatus
    }

    /// SIGTERM and wait; SIGKILL if it does not stop in time.
    @discardableResult
    func stop(timeout: TimeInterval = 20) -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        signal(SIGTERM)
        if let status = waitForExit(timeout: timeout) { return status }
        signal(SIGKILL)
        _ = waitForExit(timeout: 5)
        return nil
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            _ = exited.wait(timeout: .now() + 5)
        }
        try? FileManager.default.removeItem(at: logURL)
    }
}

extension RedisEndpoint {
    /// The endpoint as a `redis://` URL or host:port for the CLI.
    var url: String {
        var text = "redis://"
        if let password {
            text += (username ?? "") + ":" + password + "@"
        }
        return text + "\(host):\(port)/\(database)"
    }
}

/// An event as read back from Redis in a test.
struct RecordedEvent {
    var id: String
    var type: String
    var job: String
    var runner: String
    var data: [String: Any]
    var fields: [String: String]
}

/// Base class: a namespace of its own, a blocking connection for inspecting Redis, runners stopped at the end.
class IntegrationTestCase: XCTestCase {
    var namespace = ""
    var endpoint: RedisEndpoint { SharedRedis.endpoint }
    var redis: RedisConnection!
    var runners: [RunnerUnderTest] = []

    override func setUpWithError() throws {
        namespace = "t" + String(UInt32.random(in: 0 ... .max), radix: 36)
        redis = try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(2), readTimeout: .seconds(10))
    }

    override func tearDownWithError() throws {
        for runner in runners where runner.isRunning {
            if runner.stop(timeout: 15) == nil {
                XCTFail("runner \(runner.name) did not stop on SIGTERM:\n\(runner.log)")
            }
        }
        runners.removeAll()
        redis = nil
        IsolationLeftovers.remove(namespace: namespace)
    }

    func key(_ suffix: String) -> String { "{\(namespace)}:\(suffix)" }

    func cli(_ arguments: [String], timeout: TimeInterval = 60) -> CLIResult {
        // Common options go right after the subcommand: anything after `--` belongs to the job.
        runCLI(
            [arguments[0], "--redis", endpoint.url, "--namespace", namespace] + arguments.dropFirst(), timeout: timeout)
    }

    /// Starts `runner SUBCOMMAND ...` in the background against this test's Redis and namespace.
    func startCLI(_ arguments: [String]) throws -> BackgroundCLI {
        try BackgroundCLI([arguments[0], "--redis", endpoint.url, "--namespace", namespace] + arguments.dropFirst())
    }

    /// Starts a runner and waits until it is registered.
    @discardableResult
    func startRunner(
        name: String = "r1", _ arguments: [String] = [], redisEndpoint: RedisEndpoint? = nil,
        environment: [String: String] = [:]
    ) throws -> RunnerUnderTest {
        let runner = try RunnerUnderTest(
            endpoint: redisEndpoint ?? endpoint, namespace: namespace, name: name, arguments: arguments,
            environment: environment)
        runners.append(runner)
        // Registered means this process's own record (a dead runner of the same name may have left one behind).
        // Its record, and then its `runner.registered` event: a test that breaks the events key right after must not
        // make that write fail (the worker then stops at start, exit 1).
        let registered = waitUntil(timeout: .seconds(20)) {
            guard runner.isRunning else { return true }
            guard let record = try? redis.send(RedisCommand(["HGET", key("runners"), name])).bytes,
                let object = try? JSONSerialization.jsonObject(with: Data(record)) as? [String: Any],
                (object["pid"] as? Int).map(Int32.init) == runner.pid
            else { return false }
            let recent =
                (try? redis.send(RedisCommand(["XREVRANGE", key("events"), "+", "-", "COUNT", "1000"])))?
                .array ?? []
            return recent.contains { entry in
                guard let fields = entry.array?.last?.fieldPairs else { return false }
                let values = Dictionary(fields.map { ($0.name, String(decoding: $0.value, as: UTF8.self)) }) { a, _ in a
                }
                guard values["type"] == "runner.registered", values["runner"] == name,
                    let data = values["data"].flatMap({ try? JSONSerialization.jsonObject(with: Data($0.utf8)) })
                        as? [String: Any]
                else { return false }
                return (data["pid"] as? Int).map(Int32.init) == runner.pid
            }
        }
        XCTAssertTrue(registered && runner.isRunning, "runner \(name) did not register:\n\(runner.log)")
        return runner
    }

    /// Calls per command so far (INFO commandstats), the `info` it takes left out.
    func commandCalls() throws -> [String: Int] {
        var calls: [String: Int] = [:]
        for line in (try send(["INFO", "commandstats"]).string ?? "").split(whereSeparator: \.isNewline) {
            guard line.hasPrefix("cmdstat_"), let colon = line.firstIndex(of: ":"),
                let equals = line.firstIndex(of: "="), let comma = line.firstIndex(of: ",")
            else { continue }
            let name = String(line[line.index(line.startIndex, offsetBy: 8)..<colon])
            if name != "info" { calls[name] = Int(line[line.index(after: equals)..<comma]) }
        }
        return calls
    }

    func send(_ arguments: [String]) throws -> RedisReply {
        try redis.send(RedisCommand(arguments))
    }

    func hash(_ key: String) throws -> [String: String] {
        strings(try send(["HGETALL", key]))
    }

    /// A flat [name, value, ...] reply as a dictionary of strings.
    func strings(_ reply: RedisReply) -> [String: String] {
        Dictionary((reply.fieldPairs ?? []).map { ($0.name, String(decoding: $0.value, as: UTF8.self)) }) { _, last in
            last
        }
    }

    func job(_ id: String) throws -> [String: String] { try hash(key("job:\(id)")) }

    func events() throws -> [RecordedEvent] {
        (try send(["XRANGE", key("events"), "-", "+"]).array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2 else { return nil }
            let fields = strings(parts[1])
            let data =
                (try? JSONSerialization.jsonObject(with: Data((fields["data"] ?? "{}").utf8))) as? [String: Any] ?? [:]
            return RecordedEvent(
                id: parts[0].string ?? "", type: fields["type"] ?? "", job: fields["job"] ?? "",
                runner: fields["runner"] ?? "", data: data, fields: fields)
        }
    }

    func events(of job: String) throws -> [String] { try events().filter { $0.job == job }.map(\.type) }

    /// Polls the job's state until it is one of `states`.
    @discardableResult
    func waitForState(_ id: String, _ states: Set<String>, timeout: Duration = .seconds(30)) throws -> [String: String]
    {
        var last: [String: String] = [:]
        let reached = try waitUntil(timeout: timeout) {
            last = try job(id)
            return states.contains(last["state"] ?? "")
        }
        XCTAssertTrue(reached, "job \(id) did not reach \(states.sorted()); last record: \(last)")
        return last
    }

    /// Waits until the job runs and its pid is recorded (`job.started`), and returns the pid.
    func runningPid(_ id: String, timeout: Duration = .seconds(30)) throws -> Int32 {
        var pid: Int32?
        let found = try waitUntil(timeout: timeout) {
            let record = try job(id)
            pid = record["state"] == "running" ? Int32(record["pid"] ?? "") : nil
            return pid != nil
        }
        XCTAssertTrue(found, "job \(id) did not start")
        return pid ?? 0
    }

    func submit(_ arguments: [String], id: String) throws {
        let result = cli(["submit", "--id", id] + arguments)
        XCTAssertEqual(result.code, 0, result.err)
        XCTAssertEqual(result.stdout, "\(id)\n")
    }

    /// Pids a job printed, one per line, as `pid=<n>`.
    func pids(in output: String) -> [Int32] {
        output.split(separator: "\n").compactMap { line in line.hasPrefix("pid=") ? Int32(line.dropFirst(4)) : nil }
    }

    func logBytes(_ id: String) throws -> (stdout: [UInt8], stderr: [UInt8], meta: [String]) {
        var out: [UInt8] = []
        var err: [UInt8] = []
        var meta: [String] = []
        var start = "-"
        while true {
            let entries = try send(["XRANGE", key("log:\(id)"), start, "+", "COUNT", "500"]).array ?? []
            for entry in entries {
                guard let parts = entry.array, parts.count == 2 else { continue }
                start = "(" + (parts[0].string ?? "")
                let fields = Dictionary((parts[1].fieldPairs ?? []).map { ($0.name, $0.value) }) { _, last in last }
                switch String(decoding: fields["fd"] ?? [], as: UTF8.self) {
                case "stdout": out += fields["data"] ?? []
                case "stderr": err += fields["data"] ?? []
                default: meta.append(String(decoding: fields["data"] ?? [], as: UTF8.self))
                }
            }
            if entries.count < 500 { break }
        }
        return (out, err, meta)
    }
}

/// A test case with a redis-server of its own (for restarts, passwords, FLUSHALL), stopped after each test.
class PrivateRedisTestCase: IntegrationTestCase {
    private(set) var server: RedisServerProcess!
    override var endpoint: RedisEndpoint { server.endpoint }

    /// Override to configure the server.
    func makeServer() throws -> RedisServerProcess { try RedisServerProcess() }

    override func setUpWithError() throws {
        server = try makeServer()
        try super.setUpWithError()
    }

    override func tearDownWithError() throws {
        try super.tearDownWithError()
        try server.stop()
    }
}

/// What runners of a test left on the host when they were killed (kill -9 leaves a runner's empty work folder and
/// cgroup parent behind until a runner of that name starts again): removed at the end of each test, so that the
/// suite leaves the host as it found it.
enum IsolationLeftovers {
    static func remove(namespace: String) {
        let prefix = "\(namespace)."
        let work = "/tmp/nativerunner"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: work)) ?? [] where name.hasPrefix(prefix) {
            try? FileManager.default.removeItem(atPath: work + "/" + name)
        }
        for parent in cgroupParents(namespace: namespace) {
            for child in (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
            where child.hasPrefix("job-") {
                rmdir(parent + "/" + child)
            }
            rmdir(parent)
        }
        for hierarchy in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? [] {
            rmdir("/sys/fs/cgroup/\(hierarchy)/\(sharedCgroupParent(namespace: namespace))")
        }
    }

    /// The `--cgroup-parent` a test's runners may share (at each hierarchy's root; removed with the rest).
    static func sharedCgroupParent(namespace: String) -> String {
        "nrtest-\(namespace)"
    }

    /// The cgroup parents of this namespace's runners (`nativerunner-<namespace>.*`) in every hierarchy.
    static func cgroupParents(namespace: String) -> [String] {
        let prefix = "\(namespace)."
        // Each hierarchy at its root and below this process's own cgroup in it (memory lives under a parent here).
        var bases: [String] = []
        let hierarchies = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []
        let own = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        for hierarchy in hierarchies {
            bases.append("/sys/fs/cgroup/" + hierarchy)
            bases.append("/sys/fs/cgroup/\(hierarchy)/\(sharedCgroupParent(namespace: namespace))")
            for line in own.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 2).map(String.init)
                if parts.count == 3, parts[1].split(separator: ",").contains(Substring(hierarchy)), parts[2] != "/" {
                    bases.append("/sys/fs/cgroup/" + hierarchy + parts[2])
                }
            }
        }
        return bases.flatMap { base in
            ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [])
                .filter { $0.hasPrefix("nativerunner-" + prefix) }.map { base + "/" + $0 }
        }
    }
}

/// What Redis runs from now on, as MONITOR prints it: `<time> [<db> <client address>] "NAME" "arg" ...`, or
/// `[<db> lua]` for a script's own calls. For waiting on a command that leaves no other trace: a TYPE that finds a
/// key still of the wrong type, a write that is refused.
final class RedisMonitor: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private let fd: Int32
    private let lock = NSLock()
    private var received: [String] = []
    private var closed = false
    private let done = DispatchSemaphore(value: 0)

    init(endpoint: RedisEndpoint) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(endpoint.port).bigEndian)
        address.sin_addr.s_addr = inet_addr(endpoint.host == "localhost" ? "127.0.0.1" : endpoint.host)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard fd >= 0, connected == 0 else {
            if fd >= 0 { Glibc.close(fd) }
            throw RedisMonitor.Failure(
                description: "MONITOR: cannot connect to \(endpoint): \(String(cString: strerror(errno)))")
        }
        var commands: [[String]] = []
        if let password = endpoint.password {
            commands.append(["AUTH"] + [endpoint.username].compactMap { $0 } + [password])
        }
        commands.append(["MONITOR"])
        let bytes = commands.flatMap { arguments in
            Array("*\(arguments.count)\r\n".utf8) + arguments.flatMap { Array("$\($0.utf8.count)\r\n\($0)\r\n".utf8) }
        }
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let thread = Thread { [self] in read() }
        thread.start()
        // MONITOR answers +OK before the first command it shows: from then on nothing is missed.
        let ready = waitUntil(timeout: .seconds(5)) { lock.withLock { received.contains("OK") } }
        guard ready else {
            close()
            throw RedisMonitor.Failure(description: "MONITOR: no +OK from \(endpoint)")
        }
    }

    private func read() {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            pending += chunk[0..<count]
            var lines: [String] = []
            while let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                var line = pending[..<end]
                if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
                if line.first == UInt8(ascii: "+") { line = line.dropFirst() }
                lines.append(String(decoding: line, as: UTF8.self))
                pending.removeSubrange(...end)
            }
            lock.withLock { received += lines }
        }
        done.signal()
    }

    /// The lines shown so far.
    var lines: [String] { lock.withLock { received } }

    /// How many commands named `name` (upper case) had `key` as their first argument, the scripts' own calls too.
    func count(_ name: String, key: String) -> Int {
        lines.filter { $0.contains("] \"\(name)\" \"\(key)\"") }.count
    }

    /// Ends the connection (also when the test ends early: call it in a defer).
    func close() {
        let first = lock.withLock { () -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        done.wait()
        Glibc.close(fd)
    }
}
