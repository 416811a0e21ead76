import Foundation
import RedisClient
import RunnerProtocol

/// What one reaper pass did.
public struct ReaperPass: Sendable, Equatable {
    /// Runners found lost (lease gone) in this pass, newly marked `lost`.
    public var runnersLost = 0
    /// Entries put back on their queue (`job.rescheduled`).
    public var rescheduled = 0
    /// Jobs made `dead` for being rescheduled too often.
    public var dead = 0
    /// Jobs made `cancelled` instead: a cancel was requested while they ran on the lost runner.
    public var cancelled = 0
    /// Entries whose payload was gone (`job.lost`).
    public var lost = 0
    /// Stale duplicates acked and deleted.
    public var stale = 0
    /// Consumers removed from a group.
    public var consumersRemoved = 0
    /// Lost runners' records removed after their retention.
    public var recordsForgotten = 0
    /// Retries moved back onto their queue.
    public var retriesMoved = 0
    /// How long until the next retry waiting in the delayed set is due (nil: none waits).
    public var nextDue: Duration?
}

/// One turn at the reaper leader lease.
enum ReaperTurn: Sendable, Equatable {
    /// This reaper holds the lease: how many due retries it moved, and how long until the next is due.
    case leads(moved: Int, nextDue: Duration?)
    /// Another reaper holds it; `lease` is the lease's value.
    case standsBy(lease: String?)
}

/// The value of the leader lease `{nr}:reaper`: `<holder's name> <random token>`, so that whoever reads it can tell
/// who leads; the random part tells two reapers of one name apart (only the exact value extends or releases it).
enum ReaperLease {
    static func value(name: String) -> String { "\(name) \(LeaseKeeper.newToken())" }

    /// The holder's name in a lease value: everything before its last space; nil for a value that names nobody
    /// (a bare token, as another implementation may write).
    static func holder(_ value: String?) -> String? {
        guard let value, let space = value.lastIndex(of: " "), space != value.startIndex else { return nil }
        return String(value[..<space])
    }
}

/// Who runs a reaper: how it says whether it leads.
public enum ReaperRole: Sendable {
    /// A worker's (`this reaper leads the pool`; standing by at start is logged at debug only: most workers do).
    case worker
    /// `runner control`'s (`control plane leads the pool`; standing by is logged at info, at start too).
    case controlPlane
}

/// The pool's reaper: finds runners whose lease is gone, reschedules the entries they held through the consumer
/// group, removes their consumers, and moves due retries back onto their queues. Any number may run (`runner
/// control`, and every worker unless `--no-reaper`); only the holder of the leader lease `{nr}:reaper` acts, and
/// every step is one script, so that racing or crashing reapers never requeue a job twice or leave one half done.
public actor Reaper {
    public let configuration: ReaperConfiguration
    private let logger: Logger
    private let client: RedisClient
    private let store: JobStore
    private let scripts: ScriptRunner
    private let role: ReaperRole
    private let token: String
    private(set) var isLeader = false
    /// Who leads as last logged: nil before the first turn, `.some(nil)` while this reaper leads, else the holder's
    /// name (`""` when the lease names nobody).
    private var announcedLeader: String??
    private var passes = 0
    private var scannedQueues: Set<String> = []
    /// Whether each runner's lease key exists, as seen in this pass.
    private var leases: [String: Bool] = [:]
    /// Redis's clock, read once per pass when needed.
    private var redisNowMs: Int?

    /// A queue SCAN every this many passes (registry queues are looked at every pass).
    private static let scanEvery = 12
    /// How many intervals apart the passes are while they find nothing to do.
    static let idleStretch = 3

    public init(configuration: ReaperConfiguration, logger: Logger, role: ReaperRole = .worker) {
        self.configuration = configuration
        self.logger = logger
        self.role = role
        token = ReaperLease.value(name: configuration.name)
        var options = RedisClientOptions()
        options.name = "reaper"
        let log = logger
        client = RedisClient(endpoint: configuration.redis, options: options) { line in log.warning(line) }
        store = JobStore(
            client: client, keyspace: configuration.keyspace, eventsMaxLength: configuration.eventsMaxLength,
            retention: configuration.resultRetention)
        scripts = ScriptRunner(client: client)
    }

    /// One interval longer than the longest gap between passes, so that an idle leader still extends it in time.
    private var leaderTTL: Duration { max(configuration.interval * (Reaper.idleStretch + 1), .seconds(3)) }

    /// Runs passes every interval (and the mover when a retry is due) until cancelled; then gives up leadership.
    /// After a pass that found nothing to do the next one waits `idleStretch` intervals (an idle pool's reaper
    /// traffic is a third), and the first pass that does something brings the interval back: a lost runner's jobs
    /// are rescheduled at most `idleStretch` intervals after its lease lapsed.
    /// Runs a script that reads and writes nothing (`SCRIPT LOAD`, then `EVALSHA`) but names, as its keys, the
    /// pool's keys every reaper writes, so that a user Redis refuses scripts, or those keys for writing, is found at
    /// start: a reaper can then do nothing at all. Throws the refusal (`NOPERM ...`).
    public static func checkScriptsAllowed(client: RedisClient, keyspace: Keyspace) async throws {
        let script = LuaScript(name: "scripts_allowed", source: "return 1")
        let keys = writtenKeys(keyspace).map(\.key)
        _ = try await ScriptRunner(client: client).run(script, keys: keys, arguments: [])
    }

    /// The pool's keys every reaper pass writes, each with the type it expects.
    private static func writtenKeys(_ keyspace: Keyspace) -> KeyValuePairs<String, String> {
        [
            keyspace.reaper: "string", keyspace.runners: "hash", keyspace.events: "stream",
            keyspace.delayed: "zset", keyspace.dead: "stream",
        ]
    }

    /// Redis's own WRONGTYPE names no key: the first of the pool's keys a pass writes that holds another type, named
    /// (`key {nr}:reaper is a hash, expected a string`); any other refusal as Redis worded it.
    private func named(_ error: RedisServerError) async -> String {
        guard WrongTypeKey.isUnnamed(error) else { return error.message }
        let found = try? await WrongTypeKey.find(client: client, Reaper.writtenKeys(configuration.keyspace))
        return found?.first?.text ?? error.message
    }

    public func run() async {
        var nextPass = ContinuousClock.now
        var nextMove: ContinuousClock.Instant?
        var idle = false
        var refusal = RepeatedWarning(every: .seconds(30))
        while !Task.isCancelled {
            let now = ContinuousClock.now
            if now >= nextPass {
                nextPass = now + configuration.interval * (idle ? Reaper.idleStretch : 1)
                do {
                    let summary = try await pass()
                    nextMove = summary?.nextDue.map { ContinuousClock.now + max($0, .seconds(1)) }
                    // A retry waiting in the delayed set does not count: the mover wakes for it when it is due.
                    idle =
                        summary.map { pass in
                            var quiet = pass
                            quiet.nextDue = nil
                            return quiet == ReaperPass()
                        } ?? true
                    if !idle { nextPass = min(nextPass, ContinuousClock.now + configuration.interval) }
                    if refusal.clear() { logger.info("reaper passes work again") }
                } catch let error as RedisServerError {
                    // Redis refused (a user without EVALSHA, {nr}:reaper of another type): that lasts until someone
                    // acts, and meanwhile no lost runner's jobs are rescheduled, so it must be seen.
                    idle = false
                    let why = await named(error)
                    if refusal.allows(why) {
                        logger.warning(
                            "reaper pass failed: \(why); lost runners' jobs are not rescheduled until this is fixed")
                    }
                } catch {
                    // Unreachable Redis: the client says so once itself.
                    idle = false
                    logger.debug("reaper pass failed: \(error)")
                }
            } else if let due = nextMove, now >= due {
                nextMove = isLeader ? try? await moveDue() : nil
            }
            let wake = min(nextPass, nextMove ?? nextPass)
            try? await Task.sleep(until: wake, clock: .continuous)
        }
        // In a task of its own: this one is cancelled, and a cancelled task's command is refused before it is sent,
        // which left the lease to lapse (a standby waited out its TTL instead of one of its retry intervals).
        await Task { await self.resign() }.value
        client.close()
    }

    /// Takes or keeps the leader lease, moving due retries as it does; when it leads, one pass over the pool.
    /// Returns nil when another reaper leads.
    @discardableResult
    public func pass() async throws -> ReaperPass? {
        guard let (moved, nextDue) = try await lead() else { return nil }
        passes += 1
        var summary = ReaperPass()
        summary.retriesMoved = moved
        summary.nextDue = nextDue
        let registry = try await client.send(RedisCommand(["HGETALL", configuration.keyspace.runners]))
        var records: [String: [UInt8]] = [:]
        for (id, value) in registry.fieldPairs ?? [] { records[id] = value }
        var queues = Set<String>()
        var labelled = false
        for value in records.values {
            let record = (try? JSONValue(parsing: value)) ?? .null
            for queue in record[RunnerRecordField.queues]?.arrayValue ?? [] {
                if let name = queue.stringValue { queues.insert(name) }
            }
            labelled = labelled || record[RunnerRecordField.labels]?.objectValue?.isEmpty == false
        }
        let scanning = passes % Reaper.scanEvery == 1
        if scanning {
            scannedQueues = try await PoolClient.queueStreams(client: client, keyspace: configuration.keyspace)
        }
        queues.formUnion(scannedQueues)
        // Requirement streams hold jobs too: a lost runner's entries there are rescheduled on the same pass. Only a
        // runner with labels reads them, and its record keeps them (also once lost), so a pool whose records have
        // none skips the registrations; the scan passes read them anyway (entries of a runner whose record is gone).
        if labelled || scanning {
            queues.formUnion(
                try await RequirementRoutes.registered(
                    client: client, keyspace: configuration.keyspace,
                    queues: queues.filter { !$0.contains(":") }.sorted()
                ).keys)
        }

        leases = [:]
        redisNowMs = nil
        var lostSeen = Set<String>()
        for queue in queues.sorted() {
            for consumer in try await consumers(queue: queue) {
                guard !(try await leaseHeld(consumer.name)) else { continue }
                if !lostSeen.contains(consumer.name), consumer.pending > 0 {
                    lostSeen.insert(consumer.name)
                    if try await markLost(consumer.name, record: records[consumer.name]) {
                        summary.runnersLost += 1
                    }
                }
                if consumer.pending > 0 {
                    try await reschedulePending(of: consumer.name, queue: queue, into: &summary)
                }
                if try await store.removeConsumer(consumer.name, queue: queue) {
                    summary.consumersRemoved += 1
                }
            }
        }
        // Runners that died with nothing pending are lost too; lost records go after their retention.
        for (id, value) in records {
            guard !(try await leaseHeld(id)) else { continue }
            let record = (try? JSONValue(parsing: value)) ?? .null
            let state = record[RunnerRecordField.state]?.stringValue
            if state.flatMap(RunnerState.init(rawValue:))?.releasedItsLease == true {
                // Not lost: its lease was released for a runner on another node to take over.
                if try await ageMigration(id, record: record, asRead: value) { summary.recordsForgotten += 1 }
                continue
            }
            if state != RunnerState.lost.rawValue {
                if !lostSeen.contains(id), try await markLost(id, record: value) {
                    summary.runnersLost += 1
                }
            } else if let lostAt = record[RunnerRecordField.lostAt]?.intValue,
                // Compared so that nothing a record says can overflow (lost_at Int.min trapped every reaper).
                try await lostAt <= redisTimeMs() - configuration.lostRetention.milliseconds
            {
                try await store.forgetRunner(id, recordAsRead: value)
                summary.recordsForgotten += 1
            }
        }
        var quiet = summary
        quiet.nextDue = nil
        quiet.retriesMoved = 0
        if quiet != ReaperPass() {
            logger.info(
                "reaper pass",
                [
                    "runners_lost": String(summary.runnersLost), "rescheduled": String(summary.rescheduled),
                    "dead": String(summary.dead), "cancelled": String(summary.cancelled), "lost": String(summary.lost),
                    "stale": String(summary.stale),
                    "consumers_removed": String(summary.consumersRemoved),
                ])
        }
        return summary
    }

    /// Moves due retries; returns when to look again (at least a second from now), nil when none waits.
    @discardableResult
    func moveDue() async throws -> ContinuousClock.Instant? {
        var (moved, next) = try await store.moveDue()
        while moved == 100 { (moved, next) = try await store.moveDue() }
        return next.map { ContinuousClock.now + max($0, .seconds(1)) }
    }

    /// Keeps or takes the leader lease (one script, which also moves due retries for the leader). Returns nil when
    /// another reaper leads.
    private func lead() async throws -> (moved: Int, nextDue: Duration?)? {
        let turn = try await store.leaderTurn(token: token, ttl: leaderTTL)
        guard case .leads(var moved, var next) = turn else {
            isLeader = false
            if case .standsBy(let lease) = turn { announce(leader: ReaperLease.holder(lease) ?? "") }
            return nil
        }
        isLeader = true
        announce(leader: nil)
        while moved % 100 == 0, moved > 0 {
            let more = try await store.moveDue()
            moved += more.moved
            next = more.nextDue
            if more.moved < 100 { break }
        }
        return (moved, next)
    }

    /// Logs who leads when it changed: at start and on every change (`nil`: this reaper; `""`: a holder the lease
    /// does not name).
    private func announce(leader: String?) {
        guard announcedLeader != .some(leader) else { return }
        let first = announcedLeader == nil
        let ledBefore = announcedLeader.map { $0 == nil } ?? false
        announcedLeader = .some(leader)
        guard let leader else {
            logger.info(
                role == .controlPlane ? "control plane leads the pool" : "this reaper leads the pool",
                ["name": configuration.name])
            return
        }
        let holder = leader.isEmpty ? "another runner or control plane" : leader
        // `name` is this reaper's own, `leader` the holder's: both named, so that neither passes for the other.
        let metadata: KeyValuePairs<String, String> = ["name": configuration.name, "leader": holder]
        // A worker says it at info only when it lost the lease; a change of holder among others is debug.
        // A holder of its own name is an earlier run of it (killed, or still stopping): its lease lapses on its own.
        let line =
            leader == configuration.name
            ? "standing by: the reaper lease is still held by an earlier run under this name (\(holder)); it lapses "
                + "within the lease TTL"
            : "standing by: the reaper lease is held by \(holder)"
        if role == .worker, first || !ledBefore { logger.debug(line, metadata) } else { logger.info(line, metadata) }
    }

    /// Gives the leader lease up (compare-and-delete in one script: only while the lease is still this reaper's),
    /// so that a standby takes over at its next try instead of when the lease lapses.
    public func resign() async {
        guard isLeader else { return }
        let released = try? await scripts.run(
            RunnerScripts.releaseLease, keys: [configuration.keyspace.reaper], arguments: JobStore.bytes([token]))
        isLeader = false
        if released?.int == 1 { logger.info("released the reaper lease", ["name": configuration.name]) }
    }

    private func leaseHeld(_ runner: String) async throws -> Bool {
        if let known = leases[runner] { return known }
        let held =
            try await client.send(RedisCommand(["EXISTS", configuration.keyspace.lease(runner: runner)])).int == 1
        leases[runner] = held
        return held
    }

    private func redisTimeMs() async throws -> Int {
        if let known = redisNowMs { return known }
        let parts = try await client.send(RedisCommand(["TIME"])).array ?? []
        guard parts.count == 2, let seconds = parts[0].int, let micros = parts[1].int else {
            throw RedisServerError("ERR unexpected reply to TIME")
        }
        redisNowMs = seconds * 1000 + micros / 1000
        return seconds * 1000 + micros / 1000
    }

    private struct Consumer {
        var name: String
        var pending: Int
    }

    /// XINFO CONSUMERS of a queue's group (none when the stream or group does not exist).
    private func consumers(queue: String) async throws -> [Consumer] {
        let reply: RedisReply
        do {
            reply = try await client.send(
                RedisCommand(["XINFO", "CONSUMERS", configuration.keyspace.jobs(queue: queue), Keyspace.consumerGroup])
            )
        } catch let error as RedisServerError where error.kind == "NOGROUP" || error.kind == "ERR" {
            return []
        }
        return (reply.array ?? []).compactMap { item in
            let info = PoolClient.map(item)
            guard let name = info["name"]?.string else { return nil }
            return Consumer(name: name, pending: info["pending"]?.int ?? 0)
        }
    }

    /// A migrating runner nobody took over by its deadline becomes `migrated` (`runner.migrated`); a migrated record
    /// is removed after the lost retention. Returns true when it removed the record.
    private func ageMigration(_ runner: String, record: JSONValue, asRead value: [UInt8]) async throws -> Bool {
        let nowMs = try await redisTimeMs()
        var object = record.objectValue ?? [:]
        if object[RunnerRecordField.state]?.stringValue == RunnerState.migrated.rawValue {
            guard let at = object[RunnerRecordField.migratedAt]?.intValue,
                at <= nowMs - configuration.lostRetention.milliseconds
            else { return false }
            try await store.forgetRunner(runner, recordAsRead: value)
            return true
        }
        guard let deadline = object[RunnerRecordField.migrateDeadline]?.intValue, nowMs >= deadline else {
            return false
        }
        object[RunnerRecordField.state] = .string(RunnerState.migrated.rawValue)
        object[RunnerRecordField.migratedAt] = .int(nowMs)
        let data: JSONValue = [
            "reaper": .string(configuration.name), "node": object[RunnerRecordField.node] ?? .null,
            "migrate_to": object[RunnerRecordField.migrateTo] ?? .null, "migrate_deadline": .int(deadline),
        ]
        if try await store.markLost(
            runner: runner, recordAsRead: value, lostRecord: .object(object), data: data, event: .runnerMigrated)
        {
            logger.warning("runner \(runner) was not taken over before its migration deadline; it is migrated")
        }
        return false
    }

    /// Marks a runner lost (once) with `runner.lost`.
    private func markLost(_ runner: String, record: [UInt8]?) async throws -> Bool {
        let nowMs = try await redisTimeMs()
        var object = record.flatMap { try? JSONValue(parsing: $0) }?.objectValue ?? [:]
        let lastState = object[RunnerRecordField.state]?.stringValue ?? ""
        object[RunnerRecordField.state] = .string(RunnerState.lost.rawValue)
        object[RunnerRecordField.lostAt] = .int(nowMs)
        object[ProtocolVersion.field] = .int(ProtocolVersion.current)
        var pending = 0
        for queue in (object[RunnerRecordField.queues]?.arrayValue ?? []).compactMap(\.stringValue) {
            let summary = try? await client.send(
                RedisCommand([
                    "XPENDING", configuration.keyspace.jobs(queue: queue), Keyspace.consumerGroup, "-", "+", "1000",
                    runner,
                ]))
            pending += summary?.array?.count ?? 0
        }
        let data: JSONValue = [
            "reaper": .string(configuration.name), "last_state": .string(lastState),
            "node": object[RunnerRecordField.node] ?? .null, "pid": object[RunnerRecordField.pid] ?? .null,
            "pending": .int(pending),
        ]
        let marked = try await store.markLost(
            runner: runner, recordAsRead: record ?? [], lostRecord: .object(object), data: data)
        if marked {
            logger.warning(
                "runner \(runner) is lost (its lease is gone); recovering its jobs (back to their queues, or ended if cancelled)",
                ["pending": String(pending)])
        }
        return marked
    }

    /// The reschedule script over every entry pending for a lost consumer, page by page.
    private func reschedulePending(of consumer: String, queue: String, into summary: inout ReaperPass) async throws {
        var start = "-"
        for _ in 0..<10_000 {
            let page = try await client.send(
                RedisCommand([
                    "XPENDING", configuration.keyspace.jobs(queue: queue), Keyspace.consumerGroup, start, "+", "100",
                    consumer,
                ]))
            let ids = (page.array ?? []).compactMap { $0.array?.first?.string }
            for id in ids {
                let outcome = try await store.reschedule(
                    streamId: id, queue: queue, consumer: consumer, reason: .leaseExpired, actor: configuration.name,
                    bound: configuration.rescheduleBound, retry: .idempotent(deadline: .now + .seconds(30)))
                switch outcome {
                case .requeued: summary.rescheduled += 1
                case .dead: summary.dead += 1
                case .cancelled: summary.cancelled += 1
                case .lost: summary.lost += 1
                case .stale: summary.stale += 1
                case .notPending, .ownerAlive: break
                }
            }
            guard ids.count == 100, let last = ids.last else { return }
            start = "(" + last
        }
    }
}
