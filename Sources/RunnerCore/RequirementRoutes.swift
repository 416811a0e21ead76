import RedisClient
import RunnerProtocol
import Synchronization

/// Which streams a runner reads: its queues in priority order, each followed right away by the requirement streams
/// of that queue whose requirements the runner's labels satisfy (`{nr}:jobs:<queue>:req:<id>`, registered in
/// `{nr}:requirements:<queue>`). The list is refreshed from the registrations at most every `refreshInterval`,
/// with one pipelined HGETALL per refresh; a runner without labels satisfies no requirement and never refreshes.
final class RequirementRoutes: Sendable {
    let keyspace: Keyspace
    let queues: [String]
    let labels: LabelSet
    let refreshInterval: Duration

    private struct State {
        /// Satisfied requirement queues per queue, sorted by requirement id.
        var routes: [String: [String]] = [:]
        var refreshedAt: ContinuousClock.Instant?
    }
    private let state = Mutex(State())

    /// The longest a new requirement stream waits before a runner that can serve it reads it (besides its block).
    static let defaultRefreshInterval = Duration.seconds(5)

    init(keyspace: Keyspace, queues: [String], labels: LabelSet, refreshInterval: Duration) {
        self.keyspace = keyspace
        self.queues = queues
        self.labels = labels
        self.refreshInterval = refreshInterval
    }

    /// Queue names to read, in priority order (requirement queues are named `<queue>:req:<id>`).
    var readOrder: [String] {
        let routes = state.withLock { $0.routes }
        return queues.flatMap { [$0] + (routes[$0] ?? []) }
    }

    /// Re-reads the registrations when the last refresh is older than the interval. Returns the requirement queues
    /// that are new since the last refresh (their consumer group may need creating). Failures keep the old list.
    func refreshIfDue(client: RedisClient) async throws -> [String] {
        guard !labels.isEmpty else { return [] }
        let now = ContinuousClock.now
        let due = state.withLock { state in
            state.refreshedAt.map { now - $0 >= refreshInterval } ?? true
        }
        guard due else { return [] }
        let registered = try await RequirementRoutes.registered(client: client, keyspace: keyspace, queues: queues)
        var routes: [String: [String]] = [:]
        for (name, requirement) in registered where !requirement.isEmpty && labels.satisfies(requirement) {
            routes[Keyspace.baseQueue(of: name), default: []].append(name)
        }
        for queue in routes.keys { routes[queue]?.sort() }
        return state.withLock { state in
            let before = Set(state.routes.values.joined())
            state.routes = routes
            state.refreshedAt = now
            return routes.values.joined().filter { !before.contains($0) }
        }
    }

    /// A registration's value: the requirement as a JSON object of strings (nil when it is not one).
    static func requirement(parsing bytes: [UInt8]) -> LabelSet? {
        guard case .object(let members)? = try? JSONValue(parsing: bytes) else { return nil }
        var values: [String: String] = [:]
        for (key, value) in members {
            guard case .string(let text) = value else { return nil }
            values[key] = text
        }
        return try? LabelSet(values)
    }
}

extension RequirementRoutes {
    /// The registered requirement streams of `queues`, one pipelined HGETALL: requirement queue name to requirement.
    static func registered(
        client: RedisClient, keyspace: Keyspace, queues: [String]
    ) async throws -> [String: LabelSet] {
        guard !queues.isEmpty else { return [:] }
        let replies = try await client.pipeline(
            queues.map { RedisCommand(["HGETALL", keyspace.requirements(queue: $0)]) })
        var found: [String: LabelSet] = [:]
        for (queue, reply) in zip(queues, replies) {
            for (id, value) in reply.fieldPairs ?? [] {
                guard let requirement = requirement(parsing: value), requirement.requirementId == id else { continue }
                found[Keyspace.requirementQueue(queue, requirement: requirement)] = requirement
            }
        }
        return found
    }
}
