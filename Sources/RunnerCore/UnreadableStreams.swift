import RedisClient
import Synchronization

/// The streams an intake (or the control channel) leaves out of its reads because their key holds another type
/// (someone SET a string there): one XREADGROUP (or XREAD) over several streams fails whole with WRONGTYPE, so one
/// broken key would stall every queue. A key is left out after a read answered WRONGTYPE and a TYPE of each read
/// key named it (one warning), and checked again about every `recheckInterval` while any is left out (one TYPE
/// pipeline); it is read again once it is a stream or gone (one line). Nothing is checked while every key is right:
/// the normal path costs nothing.
final class UnreadableStreams: Sendable {
    /// How often the keys left out are checked again (one pipelined TYPE), and the longest an intake that has some
    /// blocks, so that a fixed key is read within about this long.
    static let recheckInterval = Duration.seconds(5)

    let logger: Logger
    let recheckInterval: Duration

    private struct State {
        /// Name to its key, for the streams left out: the intake's by queue name, the control channel's by key.
        var skipped: [String: String] = [:]
        var checkedAt: ContinuousClock.Instant?
    }
    private let state = Mutex(State())

    init(logger: Logger, recheckInterval: Duration = UnreadableStreams.recheckInterval) {
        self.logger = logger
        self.recheckInterval = recheckInterval
    }

    /// TYPE of each key, one pipeline: key to type ("stream", "string", "none", ...).
    static func types(of keys: [String], client: RedisClient) async throws -> [String: String] {
        let replies = try await client.pipeline(keys.map { RedisCommand(["TYPE", $0]) })
        var types: [String: String] = [:]
        for (key, reply) in zip(keys, replies) { types[key] = reply.string ?? "none" }
        return types
    }

    var isEmpty: Bool { state.withLock { $0.skipped.isEmpty } }

    func contains(_ queue: String) -> Bool { state.withLock { $0.skipped[queue] != nil } }

    /// Whether a key of this type (TYPE's answer) can be read as a stream: a stream, or nothing yet.
    static func isReadable(_ type: String?) -> Bool { type == "stream" || type == "none" }

    /// Leaves out the queues whose key has a type other than stream (`types`: queue to TYPE's answer), one warning
    /// each the first time; `keys` names each queue's key (a name missing there is its own key). Returns the queues
    /// now left out among them.
    @discardableResult
    func skip(types: [String: String], keys: [String: String] = [:]) -> Set<String> {
        var bad: Set<String> = []
        for (queue, type) in types where !Self.isReadable(type) {
            bad.insert(queue)
            let key = keys[queue] ?? queue
            let added = state.withLock { state in
                defer { state.skipped[queue] = key }
                if state.skipped.isEmpty { state.checkedAt = .now }
                return state.skipped[queue] == nil
            }
            if added {
                let wrong = WrongTypeKey(key: key, type: type, expected: "stream")
                logger.warning("\(wrong.text); not reading it until it is fixed")
            }
        }
        return bad
    }

    /// The queues left out, when their recheck is due (and marks it done); nil otherwise.
    func dueForRecheck(now: ContinuousClock.Instant = .now) -> [String]? {
        state.withLock { state in
            guard !state.skipped.isEmpty else { return nil }
            if let at = state.checkedAt, now - at < recheckInterval { return nil }
            state.checkedAt = now
            return state.skipped.keys.sorted()
        }
    }

    /// Reads again those of `queues` whose key is a stream or gone now (`types`: queue to TYPE's answer), one line
    /// each; one at debug for each still of another type (the recheck ran: nothing is done until the next). Returns
    /// those read again.
    @discardableResult
    func readmit(_ queues: [String], types: [String: String]) -> [String] {
        let fixed = queues.filter { Self.isReadable(types[$0]) }
        for queue in fixed {
            guard let key = state.withLock({ $0.skipped.removeValue(forKey: queue) }) else { continue }
            logger.info("key \(key) is a stream again (or gone); reading it again")
        }
        for queue in queues where !fixed.contains(queue) {
            guard let key = state.withLock({ $0.skipped[queue] }) else { continue }
            logger.debug("checked key \(key) again: still a \(types[queue] ?? "none"), still not reading it")
        }
        return fixed
    }
}

extension JobIntake {
    /// TYPE of each queue's stream key, one pipeline: queue to type ("stream", "string", "none", ...).
    func types(of queues: [String]) async throws -> [String: String] {
        let byKey = try await UnreadableStreams.types(of: queues.map { keyspace.jobs(queue: $0) }, client: client)
        var types: [String: String] = [:]
        for queue in queues { types[queue] = byKey[keyspace.jobs(queue: queue)] ?? "none" }
        return types
    }

    /// After a WRONGTYPE reply to a read of `queues`: leaves out those whose key is not a stream. Returns them
    /// (empty when none is: the error came from elsewhere, or the key was fixed meanwhile).
    func skipWrongTypes(among queues: [String]) async throws -> Set<String> {
        guard let unreadable else { return [] }
        let types = try await types(of: queues)
        let keys = Dictionary(uniqueKeysWithValues: queues.map { ($0, keyspace.jobs(queue: $0)) })
        return unreadable.skip(types: types, keys: keys)
    }

    /// About every recheck interval while any key is left out: reads again those that are streams (or gone: their
    /// group is made) now.
    func recheckUnreadable() async {
        guard let unreadable, let due = unreadable.dueForRecheck() else { return }
        guard let types = try? await types(of: due) else { return }
        let fixed = unreadable.readmit(due, types: types)
        guard !fixed.isEmpty else { return }
        // A key SET again meanwhile is left out again here, with its warning.
        try? await ensureGroups(of: fixed)
    }
}
