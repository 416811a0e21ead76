import Foundation
import RedisClient
import Synchronization

/// Why a redis-server for tests could not be started.
public struct RedisServerProcessError: Error, CustomStringConvertible {
    /// What failed, with the tail of the server's log when there is one.
    public var description: String
}

/// A real redis-server on a free loopback port in a temp dir, for tests. Stopped by stop() (SIGTERM, then SIGKILL
/// after 5 s) and on deinit.
///
/// Spawned with posix_spawn and reaped with waitpid by this object (Foundation.Process only notices an exit on the
/// run loop of the thread that launched it, which an async test's pool thread never runs).
/// `@unchecked Sendable`: the only mutable state, the running server's pid, is guarded by a Mutex.
public final class RedisServerProcess: @unchecked Sendable {
    /// The loopback port it listens on (the same after restart()).
    public private(set) var port: Int
    /// Its working dir (AOF/RDB live here); removed on deinit, or when the test process exits (XCTest keeps every
    /// test case, and the servers they hold, alive until then).
    public let directory: URL
    private let password: String?
    private let aclUser: (user: String, password: String)?
    private let appendOnly: Bool
    private let extraArguments: [String]
    private let running = Mutex<pid_t?>(nil)

    /// Starts redis-server and waits (bounded) until it answers PING. If the chosen port was taken meanwhile, tries
    /// another free one.
    public init(
        password: String? = nil, aclUser: (user: String, password: String)? = nil, appendOnly: Bool = false,
        extraArguments: [String] = []
    ) throws {
        self.password = password
        self.aclUser = aclUser
        self.appendOnly = appendOnly
        self.extraArguments = extraArguments
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("redis-test-\(getpid())-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        LeftoverDirectories.shared.add(directory)
        port = 0
        var lastError: (any Error)?
        for _ in 0..<5 {
            port = try freeLoopbackPort()
            do {
                try launch()
                return
            } catch let error as RedisServerProcessError where error.description.contains("Address already in use") {
                lastError = error
            } catch {
                try? FileManager.default.removeItem(at: directory)
                throw error
            }
        }
        try? FileManager.default.removeItem(at: directory)
        throw lastError!
    }

    deinit {
        try? stop()
        try? FileManager.default.removeItem(at: directory)
        LeftoverDirectories.shared.remove(directory)
    }

    /// 127.0.0.1:port, with the ACL user and password, or the password, if configured.
    public var endpoint: RedisEndpoint {
        if let aclUser {
            return RedisEndpoint(host: "127.0.0.1", port: port, username: aclUser.user, password: aclUser.password)
        }
        return RedisEndpoint(host: "127.0.0.1", port: port, password: password)
    }

    /// The server's pid while it runs.
    public var pid: Int32? {
        running.withLock { $0 }
    }

    /// Graceful stop without the SHUTDOWN command: SIGTERM and wait up to 5 s for exit, then SIGKILL. No-op if stopped.
    public func stop() throws {
        terminate(signal: SIGTERM)
    }

    /// SIGKILL and wait. No-op if stopped.
    public func kill() throws {
        terminate(signal: SIGKILL)
    }

    /// Stops (if running), then starts again on the SAME port with the same dir and config, and waits until it
    /// answers PING; binding is retried for a bounded time.
    public func restart() throws {
        try stop()
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                try launch()
                return
            } catch let error as RedisServerProcessError
                where error.description.contains("Address already in use") && ContinuousClock.now < deadline
            {
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
    }

    private func terminate(signal: Int32) {
        guard let pid = running.withLock({ $0 }) else {
            return
        }
        Glibc.kill(pid, signal)
        if !Self.reap(pid, within: .seconds(5)) {
            Glibc.kill(pid, SIGKILL)
            _ = Self.reap(pid, within: nil)
        }
        running.withLock { $0 = nil }
    }

    /// waitpid(WNOHANG) polled until `pid` has exited (true) or `limit` passed (false); nil: block until it exits.
    private static func reap(_ pid: pid_t, within limit: Duration?) -> Bool {
        var status: Int32 = 0
        guard let limit else {
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            return true
        }
        return waitUntil(timeout: limit, interval: .milliseconds(5)) {
            let result = waitpid(pid, &status, WNOHANG)
            return result == pid || (result == -1 && errno == ECHILD)
        }
    }

    private var logFile: URL {
        directory.appendingPathComponent("redis.log")
    }

    private func launch() throws {
        guard let executable = Self.redisServerPath() else {
            throw RedisServerProcessError(description: "redis-server not found in /usr/bin or on PATH")
        }
        var arguments = [
            executable, "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory.path,
            "--daemonize", "no", "--logfile", "",
        ]
        if appendOnly {
            arguments += ["--appendonly", "yes", "--appendfsync", "always"]
        }
        if let password {
            arguments += ["--requirepass", password]
        }
        if let aclUser {
            arguments += ["--user", aclUser.user, "on", ">\(aclUser.password)", "~*", "&*", "+@all"]
        }
        arguments += extraArguments
        let pid = try Self.spawn(arguments, log: logFile.path)
        running.withLock { $0 = pid }

        let probe = endpoint
        var lastFailure = "no answer"
        var exited = false
        let up = waitUntil(timeout: .seconds(10)) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                exited = true
                return true
            }
            do {
                let connection = try RedisConnection(
                    endpoint: probe, connectTimeout: .milliseconds(500), readTimeout: .seconds(2)
                )
                let reply = try connection.send(RedisCommand("PING"))
                lastFailure = "PING answered \(reply)"
                return reply == .status("PONG")
            } catch {
                lastFailure = "\(error)"
                return false
            }
        }
        if up && !exited {
            return
        }
        if exited {
            lastFailure = "it exited"
        } else {
            Glibc.kill(pid, SIGKILL)
            _ = Self.reap(pid, within: nil)
        }
        running.withLock { $0 = nil }
        throw RedisServerProcessError(
            description: "redis-server on port \(port) did not come up (\(lastFailure)); log tail:\n" + logTail()
        )
    }

    /// posix_spawn with stdin from /dev/null and stdout/stderr appended to `log` (the server chdirs to --dir itself).
    private static func spawn(_ arguments: [String], log: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // The calling thread may block signals (Swift's pool threads do) and a spawned child inherits its mask: the
        // server must see SIGTERM, so reset the mask and the dispositions.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, arguments[0], &actions, &attributes, &argv, environ)
        guard status == 0 else {
            throw RedisServerProcessError(
                description: "cannot start \(arguments[0]): \(String(cString: strerror(status)))"
            )
        }
        return pid
    }

    private func logTail() -> String {
        let text = (try? String(contentsOf: logFile, encoding: .utf8)) ?? ""
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(20).joined(separator: "\n")
    }

    private static func redisServerPath() -> String? {
        let fileManager = FileManager.default
        if fileManager.isExecutableFile(atPath: "/usr/bin/redis-server") {
            return "/usr/bin/redis-server"
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for folder in path.split(separator: ":") {
            let candidate = "\(folder)/redis-server"
            if fileManager.isExecutableFile(atPath: candidate) {
                return candidate
            }
        }
        return nil
    }
}

/// The working dirs of test servers not yet removed, removed at the test process's exit (atexit).
private final class LeftoverDirectories: Sendable {
    static let shared = LeftoverDirectories()
    private let paths = Mutex<Set<String>>([])

    private init() {
        atexit {
            for path in LeftoverDirectories.shared.paths.withLock({ $0 }) {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }

    func add(_ directory: URL) { _ = paths.withLock { $0.insert(directory.path) } }
    func remove(_ directory: URL) { _ = paths.withLock { $0.remove(directory.path) } }
}
