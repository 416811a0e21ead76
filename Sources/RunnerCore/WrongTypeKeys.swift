import RedisClient
import RunnerProtocol

/// A key that holds another type than a reader expects (someone `SET` a string where a stream belongs). Redis's own
/// WRONGTYPE reply names no key; this names it, worded as the job scripts' refusals are.
public struct WrongTypeKey: Sendable, Equatable {
    public var key: String
    /// What TYPE answered: `string`, `hash`, `zset`, ...
    public var type: String
    public var expected: String

    public init(key: String, type: String, expected: String) {
        self.key = key
        self.type = type
        self.expected = expected
    }

    /// `key {nr}:events is a string, expected a stream`.
    public var text: String { "key \(key) is a \(type), expected a \(expected)" }

    /// The error a command that read it fails with: `WRONGTYPE key K is a string, expected a stream`.
    public var error: RedisServerError { RedisServerError("WRONGTYPE " + text) }

    /// The runner registry of `keyspace` among `keys` (those a view left out for their type), if it is one of them.
    public static func registry(in keys: [WrongTypeKey], of keyspace: Keyspace) -> WrongTypeKey? {
        keys.first { $0.key == keyspace.runners }
    }

    /// Whether `error` is Redis's own WRONGTYPE reply, which names no key (a script's refusal names it already).
    static func isUnnamed(_ error: any Error) -> Bool {
        guard let error = error as? RedisServerError else { return false }
        return error.kind == "WRONGTYPE" && named(in: error) == nil
    }

    /// The key a named refusal (`WRONGTYPE key K is a string, expected a stream`, as `error` words it) is about,
    /// and its text without the `WRONGTYPE ` kind; nil for any other error.
    static func named(in error: any Error) -> (key: String, text: String)? {
        guard let error = error as? RedisServerError, error.kind == "WRONGTYPE",
            error.message.hasPrefix("WRONGTYPE key ")
        else { return nil }
        let text = String(error.message.dropFirst("WRONGTYPE ".count))
        guard let key = text.dropFirst("key ".count).split(separator: " ").first else { return nil }
        return (String(key), text)
    }

    /// TYPE of each key (one pipeline): those of another type than expected (a missing key is none of them).
    static func find(
        client: RedisClient, _ keys: KeyValuePairs<String, String>
    ) async throws -> [WrongTypeKey] {
        let replies = try await client.pipeline(keys.map { RedisCommand(["TYPE", $0.key]) })
        return zip(keys, replies).compactMap { pair, reply in
            let type = reply.string ?? "none"
            return type == "none" || type == pair.value
                ? nil : WrongTypeKey(key: pair.key, type: type, expected: pair.value)
        }
    }

    /// Runs `body`; when Redis answers its own WRONGTYPE, asks the type of `keys` (key to expected type) and throws
    /// the first of another type as a named error instead (the original error when none is).
    static func naming<T>(
        client: RedisClient, _ keys: KeyValuePairs<String, String>, _ body: () async throws -> T
    ) async throws -> T {
        do {
            return try await body()
        } catch  where isUnnamed(error) {
            guard let found = try? await find(client: client, keys).first else { throw error }
            throw found.error
        }
    }

    /// Runs `body`, a read of `key`; when Redis answers its own WRONGTYPE and the key holds another type than
    /// `expected`, adds it to `found` and answers nil (a view that shows what it can).
    static func skipping<T>(
        client: RedisClient, _ key: String, _ expected: String, into found: inout [WrongTypeKey],
        _ body: () async throws -> T
    ) async throws -> T? {
        do {
            return try await body()
        } catch  where isUnnamed(error) {
            let wrong = (try? await find(client: client, [key: expected])) ?? []
            if wrong.isEmpty { throw error }
            found += wrong
            return nil
        }
    }
}
