import Synchronization

/// A Lua script, run by `ScriptRunner`.
public struct LuaScript: Sendable, Hashable {
    /// A name for logs and errors; also the key of its cached SHA1.
    public let name: String
    public let source: String

    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}

/// Runs `LuaScript`s by EVALSHA, loading each with SCRIPT LOAD on first use and again after NOSCRIPT (a restarted
/// Redis has an empty script cache).
public final class ScriptRunner: Sendable {
    public let client: RedisClient
    private let hashes = Mutex<[String: String]>([:])

    public init(client: RedisClient) { self.client = client }

    /// EVALSHA (SCRIPT LOAD first when needed) the script with keys and arguments; an error reply is thrown as
    /// `RedisServerError`.
    public func run(
        _ script: LuaScript, keys: [String], arguments: [[UInt8]], retry: RedisRetry = .never
    ) async throws -> RedisReply {
        for _ in 0..<3 {
            let sha = try await hash(of: script, retry: retry)
            do {
                return try await client.send(Self.evalsha(sha, keys: keys, arguments: arguments), retry: retry)
            } catch let error as RedisServerError where error.kind == "NOSCRIPT" {
                forget(script)
            }
        }
        throw RedisServerError("NOSCRIPT script \(script.name) could not be loaded")
    }

    /// Sends EVALSHA of the script at once when its hash is known, and returns without waiting: the caller collects
    /// the reply with `PendingScriptReply.value()` (a script not loaded yet, or flushed meanwhile, goes the way of
    /// `run` then). Not withdrawn when the calling task is cancelled, see `RedisClient.start`.
    public func start(
        _ script: LuaScript, keys: [String], arguments: [[UInt8]], retry: RedisRetry = .never
    ) -> PendingScriptReply {
        let call = PendingScriptReply.Call(script: script, keys: keys, arguments: arguments, retry: retry)
        guard let sha = hashes.withLock({ $0[script.name] }) else {
            return PendingScriptReply(runner: self, call: call)
        }
        let sent = client.start(Self.evalsha(sha, keys: keys, arguments: arguments), retry: retry)
        return PendingScriptReply(runner: self, call: call, sent: sent)
    }

    fileprivate func forget(_ script: LuaScript) {
        hashes.withLock { _ = $0.removeValue(forKey: script.name) }
    }

    private static func evalsha(_ sha: String, keys: [String], arguments: [[UInt8]]) -> RedisCommand {
        var command = RedisCommand(["EVALSHA", sha, String(keys.count)] + keys)
        for argument in arguments { command.append(bytes: argument) }
        return command
    }

    private func hash(of script: LuaScript, retry: RedisRetry) async throws -> String {
        if let known = hashes.withLock({ $0[script.name] }) { return known }
        let reply = try await client.send(RedisCommand(["SCRIPT", "LOAD", script.source]), retry: retry)
        guard let sha = reply.string else {
            throw RedisServerError("ERR unexpected reply to SCRIPT LOAD for \(script.name): \(reply)")
        }
        hashes.withLock { $0[script.name] = sha }
        return sha
    }
}

/// The reply of a script started with `ScriptRunner.start`.
public struct PendingScriptReply: Sendable {
    struct Call: Sendable {
        let script: LuaScript
        let keys: [String]
        let arguments: [[UInt8]]
        let retry: RedisRetry
    }

    let runner: ScriptRunner
    let call: Call
    /// The EVALSHA in flight; nil when the script's hash was not known yet.
    var sent: PendingReply?

    /// Waits for the script's reply; throws as `ScriptRunner.run`.
    public func value() async throws -> RedisReply {
        if let sent {
            do {
                return try await sent.value()
            } catch let error as RedisServerError where error.kind == "NOSCRIPT" {
                runner.forget(call.script)
            }
        }
        return try await runner.run(call.script, keys: call.keys, arguments: call.arguments, retry: call.retry)
    }
}
