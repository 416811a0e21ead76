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
            var command = RedisCommand(["EVALSHA", sha, String(keys.count)] + keys)
            for argument in arguments { command.append(bytes: argument) }
            do {
                return try await client.send(command, retry: retry)
            } catch let error as RedisServerError where error.kind == "NOSCRIPT" {
                hashes.withLock { _ = $0.removeValue(forKey: script.name) }
            }
        }
        throw RedisServerError("NOSCRIPT script \(script.name) could not be loaded")
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
