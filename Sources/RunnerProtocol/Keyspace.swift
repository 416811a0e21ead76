/// Every Redis key of one runner pool. All keys share the hash tag `{namespace}`, so a pool lives in a single
/// Redis Cluster slot and multi-key scripts work there.
public struct Keyspace: Sendable, Hashable {
    /// The namespace, `nr` unless configured (`--namespace`).
    public let namespace: String

    /// The default namespace.
    public static let defaultNamespace = "nr"
    /// The default queue name.
    public static let defaultQueue = "default"
    /// The consumer group every runner reads job streams through.
    public static let consumerGroup = "runners"

    public init(namespace: String = Keyspace.defaultNamespace) {
        self.namespace = namespace
    }

    private var prefix: String { "{\(namespace)}" }

    /// Stream of jobs for one queue: `{nr}:jobs:<queue>`.
    public func jobs(queue: String) -> String { "\(prefix):jobs:\(queue)" }
    /// Stream of events: `{nr}:events`.
    public var events: String { "\(prefix):events" }
    /// Stream of runner heartbeats: `{nr}:heartbeats`.
    public var heartbeats: String { "\(prefix):heartbeats" }
    /// A runner's lease key holding its token: `{nr}:runner:<id>`.
    public func lease(runner: String) -> String { "\(prefix):runner:\(runner)" }
    /// Hash of registered runners, field = runner id, value = JSON record: `{nr}:runners`.
    public var runners: String { "\(prefix):runners" }
    /// A job's result hash: `{nr}:job:<id>`.
    public func job(id: String) -> String { "\(prefix):job:\(id)" }
    /// A job's output stream: `{nr}:log:<id>`.
    public func log(job id: String) -> String { "\(prefix):log:\(id)" }
    /// Dead-letter stream: `{nr}:dead`.
    public var dead: String { "\(prefix):dead" }
    /// Counter of fencing tokens and lease epochs (INCR): `{nr}:fencing`.
    public var fencing: String { "\(prefix):fencing" }
    /// The reaper's leader lease, held by the one reaper that acts: `{nr}:reaper`.
    public var reaper: String { "\(prefix):reaper" }
    /// Sorted set of jobs waiting for a retry, scored by when they are due (ms, Redis's clock): `{nr}:delayed`.
    public var delayed: String { "\(prefix):delayed" }
    /// An idempotency key's job id: `{nr}:idempotency:<key>`.
    public func idempotency(key: String) -> String { "\(prefix):idempotency:\(key)" }
    /// A runner's own control stream, read by that runner only: `{nr}:control:<id>`.
    public func control(runner: String) -> String { "\(prefix):control:\(runner)" }
    /// The pool-wide control stream, read by every runner: `{nr}:control`.
    public var poolControl: String { "\(prefix):control" }
    /// The prefix every key of the pool starts with (`{nr}:`), for scripts that derive a key from an entry.
    public var keyPrefix: String { "\(prefix):" }

    /// The key patterns as documented in docs/protocol.md, for the agreement test.
    public static let documentedPatterns: [String] = [
        "{nr}:jobs:<queue>", "{nr}:events", "{nr}:heartbeats", "{nr}:runner:<id>", "{nr}:runners",
        "{nr}:job:<id>", "{nr}:log:<id>", "{nr}:dead", "{nr}:fencing", "{nr}:reaper", "{nr}:delayed",
        "{nr}:idempotency:<key>", "{nr}:jobs:<queue>:req:<id>", "{nr}:requirements:<queue>", "{nr}:control:<id>",
        "{nr}:control",
    ]

    /// The most characters a namespace, queue or runner name may have (`isValidName`).
    public static let maximumNameLength = 128
    /// The most characters a node name may have (`isValidNodeName`).
    public static let maximumNodeNameLength = 200

    /// Whether a namespace, queue or runner name is usable inside a key (no braces, colons, white space or control
    /// characters: names are also printed to terminals, where a control character would be an escape sequence).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= maximumNameLength
            && name.allSatisfy { !($0 == "{" || $0 == "}" || $0 == ":" || $0.isWhitespace || $0.isNewline) }
            && !containsControlCharacters(name)
    }

    /// Whether a node name (`--node`, `migrate --to`) is usable: 1 to 200 characters, no white space or control
    /// characters.
    public static func isValidNodeName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= maximumNodeNameLength
            && !name.contains(where: { $0.isWhitespace || $0.isNewline })
            && !containsControlCharacters(name)
    }

    private static func containsControlCharacters(_ text: String) -> Bool {
        text.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }
}
