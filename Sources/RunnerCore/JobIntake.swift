import RedisClient
import RunnerProtocol

/// One entry delivered to this runner by XREADGROUP; `fields` is nil when its payload was deleted.
struct Delivery: Sendable {
    var streamId: String
    var queue: String
    var fields: [(String, [UInt8])]?
}

/// Reads job entries for one consumer through the `runners` group, on a connection of its own so that its
/// blocking reads never delay anything else.
struct JobIntake: Sendable {
    let client: RedisClient
    let keyspace: Keyspace
    let consumer: String
    let queues: [String]
    let block: Duration
    /// The requirement streams this runner's labels satisfy, read right after their queue (nil: only `queues`).
    var routes: RequirementRoutes? = nil
    /// The streams left out of the reads because their key has another type (nil: a WRONGTYPE fails the read).
    var unreadable: UnreadableStreams? = nil

    /// How long a blocking read waits: `block`, but for a runner with labels no longer than the routes' refresh
    /// interval, so that it still learns of a new requirement stream within about two refresh intervals; and while
    /// a key is left out (another type), no longer than its recheck interval, so that it is read soon once fixed.
    var readBlock: Duration {
        var limit = block
        if let routes, !routes.labels.isEmpty { limit = min(limit, routes.refreshInterval) }
        if let unreadable, !unreadable.isEmpty { limit = min(limit, unreadable.recheckInterval) }
        return limit
    }

    /// What this intake reads, in priority order: the queues and the satisfied requirement queues, but not those
    /// whose key has another type.
    var readQueues: [String] {
        let all = routes?.readOrder ?? queues
        guard let unreadable, !unreadable.isEmpty else { return all }
        return all.filter { !unreadable.contains($0) }
    }

    /// XGROUP CREATE <stream> runners 0 MKSTREAM for every queue; an existing group is fine. From ID 0 so that
    /// jobs added before the group existed (or while it was gone) are not skipped. One of the runner's own queues of
    /// another type fails it, naming the key (the runner does not start); a requirement stream of another type is left
    /// out of the reads instead, like one found later.
    func ensureGroups() async throws {
        try await ensureGroups(of: queues, skippingWrongTypes: false)
        try await ensureGroups(of: readQueues.filter { !queues.contains($0) })
    }

    /// The same for `queues`; with `skippingWrongTypes` (a requirement stream found, a key read again) a stream of
    /// another type is left out of the reads (and named) instead of failing it.
    func ensureGroups(of queues: [String], skippingWrongTypes: Bool = true) async throws {
        for queue in queues {
            do {
                _ = try await client.send(
                    RedisCommand([
                        "XGROUP", "CREATE", keyspace.jobs(queue: queue), Keyspace.consumerGroup, "0", "MKSTREAM",
                    ]),
                    retry: .whileUnreachable(deadline: nil))
            } catch let error as RedisServerError where error.kind == "BUSYGROUP" {
                continue
            } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
                // The key holds another type: left out of the reads (and named) until it is fixed, or named.
                let key = keyspace.jobs(queue: queue)
                if skippingWrongTypes, unreadable != nil {
                    if try await skipWrongTypes(among: [queue]).isEmpty { throw error }
                } else {
                    throw (try? await WrongTypeKey.find(client: client, [key: "stream"]).first?.error) ?? error
                }
            }
        }
    }

    /// New entries (`>`), at most `count`, taken from the queues in priority order; waits up to `readBlock` when
    /// every queue is empty. With several queues the blocking read asks each for one entry, so it can return up to
    /// one per queue: more than `count` when `count` is smaller than the number of queues. With `wait` false it never
    /// blocks (a read ahead for the prefetch buffer) and returns what the queues have now, at most `count`.
    func readNew(count: Int, wait: Bool = true) async throws -> [Delivery] {
        if let routes {
            // At most once per refresh interval: one pipelined HGETALL; a new requirement stream's group is made.
            let added = (try? await routes.refreshIfDue(client: client)) ?? []
            if !added.isEmpty { try await ensureGroups(of: added) }
        }
        await recheckUnreadable()
        let queues = readQueues
        // Every stream left out (another type): nothing to read; wait as a blocking read would, then check again.
        guard !queues.isEmpty else {
            if wait { try await Task.sleep(for: readBlock) }
            return []
        }
        if queues.count > 1 {
            var found: [Delivery] = []
            for queue in queues where found.count < count {
                found += try await read(queues: [queue], count: count - found.count, block: nil)
            }
            if !found.isEmpty || !wait { return found }
        }
        return try await read(queues: queues, count: queues.count > 1 ? 1 : count, block: wait ? readBlock : nil)
    }

    /// XREADGROUP GROUP runners <consumer> COUNT n [BLOCK ms] STREAMS <queues> > ...; a WRONGTYPE reply leaves the
    /// streams of another type out, and the others are read at once.
    private func read(queues: [String], count: Int, block: Duration?) async throws -> [Delivery] {
        do {
            return try await readOnce(queues: queues, count: count, block: block)
        } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
            let bad = try await skipWrongTypes(among: queues)
            if bad.isEmpty { throw error }
            let rest = queues.filter { !bad.contains($0) }
            guard !rest.isEmpty else { return [] }
            return try await readOnce(queues: rest, count: count, block: block)
        }
    }

    private func readOnce(queues: [String], count: Int, block: Duration?) async throws -> [Delivery] {
        var arguments = ["XREADGROUP", "GROUP", Keyspace.consumerGroup, consumer, "COUNT", String(count)]
        if let block { arguments += ["BLOCK", String(block.milliseconds)] }
        arguments += ["STREAMS"] + queues.map { keyspace.jobs(queue: $0) } + Array(repeating: ">", count: queues.count)
        let reply = try await client.send(
            RedisCommand(arguments), readTimeout: block.map { $0 + .seconds(5) },
            retry: .whileUnreachable(deadline: nil))
        return parse(reply)
    }

    /// XREADGROUP ... COUNT n STREAMS <queues> <after ids>: this consumer's own pending entries after the cursors.
    func readPending(
        count: Int, after cursors: [String: String], retry: RedisRetry = .whileUnreachable(deadline: nil)
    ) async throws -> [Delivery] {
        func read(_ queues: [String]) async throws -> [Delivery] {
            guard !queues.isEmpty else { return [] }
            var arguments = [
                "XREADGROUP", "GROUP", Keyspace.consumerGroup, consumer, "COUNT", String(count), "STREAMS",
            ]
            arguments += queues.map { keyspace.jobs(queue: $0) } + queues.map { cursors[$0] ?? "0" }
            return parse(try await client.send(RedisCommand(arguments), retry: retry))
        }
        let queues = readQueues
        do {
            return try await read(queues)
        } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
            let bad = try await skipWrongTypes(among: queues)
            if bad.isEmpty { throw error }
            return try await read(queues.filter { !bad.contains($0) })
        }
    }

    /// XREADGROUP reply: [[stream, [[id, [field, value, ...] | nil], ...]], ...] or nil on timeout.
    private func parse(_ reply: RedisReply) -> [Delivery] {
        guard let streams = reply.array else { return [] }
        let prefix = keyspace.jobs(queue: "")
        var deliveries: [Delivery] = []
        for stream in streams {
            guard let pair = stream.array, pair.count == 2, let key = pair[0].string, let entries = pair[1].array,
                key.hasPrefix(prefix)
            else { continue }
            let queue = String(key.dropFirst(prefix.count))
            for entry in entries {
                guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { continue }
                deliveries.append(
                    Delivery(streamId: id, queue: queue, fields: parts[1].fieldPairs?.map { ($0.name, $0.value) }))
            }
        }
        return deliveries
    }
}
