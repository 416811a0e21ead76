import RedisClient
import RunnerProtocol

/// One entry read from a control stream.
struct ReceivedControl: Sendable {
    /// The entry id: the command id its outcome event names.
    var id: String
    /// Read from the pool-wide stream `{nr}:control` rather than the runner's own.
    var fromPool: Bool
    var fields: [String: String]
    var command: Result<ControlCommand, ControlCommandError>
}

/// What the runner did with a command; nil from the handler means "not mine, say nothing" (a pool-wide cancel of a
/// job another runner runs).
struct ControlReply: Sendable, Equatable {
    var outcome: ControlOutcome
    var reason: String?
}

/// Reads the runner's control stream `{nr}:control:<id>` and the pool's `{nr}:control` with plain XREAD BLOCK on a
/// connection of its own (never the intake's or the lease's: a command must not wait behind a blocking read, and a
/// renewal must not wait behind this one), and answers each command with one `runner.command` event.
///
/// Reading starts at the streams' ends as of `start()`: commands sent while no runner of this id was reading are
/// not replayed (a cancel is durable anyway, through the job's `cancel_requested_at`).
struct ControlChannel: Sendable {
    let client: RedisClient
    let keyspace: Keyspace
    let runner: String
    /// How long one XREAD blocks: an idle runner's only control traffic is one command per this interval.
    let block: Duration
    let store: JobStore
    let logger: Logger

    /// Command fields echoed into `runner.command` events are cut to this many bytes (a command is no way to fill
    /// the events stream).
    static let echoedFieldLimit = 256

    /// Where each stream ends now (its last entry id, or `0-0` for a stream that does not exist yet, or whose key
    /// holds something else: see `run`).
    func start() async throws -> [String] {
        var cursors: [String] = []
        for stream in streams {
            do {
                let reply = try await client.send(
                    RedisCommand(["XREVRANGE", stream, "+", "-", "COUNT", "1"]),
                    retry: .whileUnreachable(deadline: nil))
                cursors.append(reply.array?.first?.array?.first?.string ?? "0-0")
            } catch is RedisServerError {
                cursors.append("0-0")
            }
        }
        return cursors
    }

    private var streams: [String] { [keyspace.control(runner: runner), keyspace.poolControl] }

    /// Reads and answers commands until cancelled. `handle` runs one command at a time, in stream order.
    ///
    /// A control key that holds something other than a stream (someone SET it by mistake) would make every XREAD
    /// fail: it is left out of the read as the intake leaves out a queue's (`UnreadableStreams`: one warning naming
    /// the key, a TYPE about every few seconds, one line when it is read again from its start, as a stream or gone),
    /// so the other stream keeps working.
    func run(from cursors: [String], handle: @Sendable (ReceivedControl) async -> ControlReply?) async {
        var cursors = cursors
        let streams = self.streams
        let unreadable = UnreadableStreams(logger: logger)
        var lastWarning: ContinuousClock.Instant?
        while !Task.isCancelled {
            if let due = unreadable.dueForRecheck(),
                let types = try? await UnreadableStreams.types(of: due, client: client)
            {
                for key in unreadable.readmit(due, types: types) {
                    if let index = streams.firstIndex(of: key) { cursors[index] = "0-0" }
                }
            }
            let reading = streams.indices.filter { !unreadable.contains(streams[$0]) }
            guard !reading.isEmpty else {
                try? await Task.sleep(for: unreadable.recheckInterval)
                continue
            }
            // While a key is left out, no read blocks past its next recheck.
            let blocking = unreadable.isEmpty ? block : min(block, unreadable.recheckInterval)
            let reply: RedisReply
            do {
                reply = try await client.send(
                    RedisCommand(
                        ["XREAD", "COUNT", "100", "BLOCK", String(blocking.milliseconds), "STREAMS"]
                            + reading.map { streams[$0] } + reading.map { cursors[$0] }),
                    readTimeout: blocking + .seconds(5), retry: .whileUnreachable(deadline: nil))
            } catch {
                if Task.isCancelled { break }
                if error is RedisServerError {
                    let keys = reading.map { streams[$0] }
                    let types = (try? await UnreadableStreams.types(of: keys, client: client)) ?? [:]
                    // Explained by a key of another type: the other stream is read again at once.
                    if !unreadable.skip(types: types).isEmpty { continue }
                }
                if !(error is RedisClientError), lastWarning.map({ ContinuousClock.now - $0 > .seconds(30) }) ?? true {
                    lastWarning = .now
                    logger.warning("control stream read failed: \(error)")
                }
                try? await Task.sleep(for: .milliseconds(200))
                continue
            }
            for stream in reply.array ?? [] {
                guard let pair = stream.array, pair.count == 2, let key = pair[0].string,
                    let index = streams.firstIndex(of: key)
                else { continue }
                for entry in pair[1].array ?? [] {
                    guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { continue }
                    cursors[index] = id
                    let pairs = (parts[1].fieldPairs ?? []).map { ($0.0, String(decoding: $0.1, as: UTF8.self)) }
                    let fields = Dictionary(pairs, uniquingKeysWith: { first, _ in first })
                    let received = ReceivedControl(
                        id: id, fromPool: index == 1, fields: fields,
                        command: Result { () throws(ControlCommandError) in try ControlCommand(pairs: pairs) })
                    if let answer = await handle(received) { await report(received, answer) }
                }
            }
        }
    }

    /// A command's field as echoed in its outcome event: at most `echoedFieldLimit` bytes.
    static func echoed(_ value: String?) -> String {
        guard let value else { return "" }
        guard value.utf8.count > echoedFieldLimit else { return value }
        return String(decoding: value.utf8.prefix(echoedFieldLimit), as: UTF8.self) + "…"
    }

    /// `runner.command` with the command, its id, the outcome and why.
    private func report(_ received: ReceivedControl, _ reply: ControlReply) async {
        var data: [String: JSONValue] = [
            "command": .string(Self.echoed(received.fields[ControlField.command])),
            "command_id": .string(received.id),
            "outcome": .string(reply.outcome.rawValue), "stream": .string(received.fromPool ? "pool" : "runner"),
            "sent_by": .string(Self.echoed(received.fields[ControlField.sentBy])),
        ]
        if let reason = reply.reason { data["reason"] = .string(reason) }
        if case .success(.cancel(let job)) = received.command { data["job"] = .string(job) }
        let level = reply.outcome == .rejected ? Logger.Level.warning : .info
        let command = Self.echoed(received.fields[ControlField.command])
        if let reason = reply.reason {
            logger.log(
                level, "control command \(reply.outcome.rawValue)",
                ["command": command, "command_id": received.id, "reason": reason])
        } else {
            logger.log(
                level, "control command \(reply.outcome.rawValue)", ["command": command, "command_id": received.id])
        }
        // On a task of its own: a shutdown the command itself started cancels this loop, often before the event is
        // out, and the sender waits for exactly this event (`--wait`). The worker awaits this loop before it closes
        // its connections, so the write still lands (or fails on its own).
        let store = self.store
        let runner = self.runner
        let written = await Task {
            try await store.emit(
                .runnerCommand, runner: runner, data: .object(data), retry: .idempotent(deadline: .now + .seconds(30)))
        }.result
        if case .failure(let error) = written {
            logger.warning("could not report the outcome of control command \(received.id): \(error)")
        }
    }
}
