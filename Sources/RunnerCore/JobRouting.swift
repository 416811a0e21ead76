import RedisClient
import RunnerProtocol

extension RunnerScripts {
    /// KEYS: source jobs stream, requirement jobs stream, requirements hash, events, lease, job hash.
    /// ARGV: source stream id, group, runner, lease token, requirement queue, requirement id, requirement JSON,
    /// events maxlen, source queue, job id, requirement canonical text, then the entry's field/value pairs.
    /// Moves an entry whose required labels this runner lacks to its requirement stream in one step: the group on
    /// that stream (from 0, MKSTREAM), the same fields as a new entry, the requirement registered, the old entry
    /// acked and deleted, a record that names the old entry pointed at the new one (an entry without a record gets
    /// the `queued` record, with `submitted_at` the old entry's time), `job.routed`. Returns the new
    /// entry id, 0 when the entry is no longer pending (a resent call, or a reaper moved it), -1 when the lease no
    /// longer holds the token.
    static let route = script(
        "route",
        """
        if redis.call('GET', KEYS[5]) ~= ARGV[4] then return -1 end
        -- The source stream needs no check: its XACK is the first write.
        local bad = nr_wrong_type({KEYS[2], 'stream', KEYS[3], 'hash', KEYS[4], 'stream', KEYS[6], 'hash'})
        if bad then return bad end
        if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
        local ts = nr_now()
        redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
        local args = {'XADD', KEYS[2], '*'}
        for i = 12, #ARGV do args[#args + 1] = ARGV[i] end
        local sid = redis.call(unpack(args))
        redis.call('XDEL', KEYS[1], ARGV[1])
        redis.call('HSET', KEYS[3], ARGV[6], ARGV[7])
        local cur = redis.call('HMGET', KEYS[6], '\(ResultField.state)', '\(ResultField.streamId)')
        -- A record naming this entry follows it (an attempt an earlier epoch had started is then found lost by the
        -- runner that claims the new entry, and rescheduled there); a record of an ended job is left alone.
        if cur[1] and cur[2] == ARGV[1] and not nr_terminal(cur[1]) then
          redis.call('HSET', KEYS[6], '\(ResultField.streamId)', sid, '\(ResultField.queue)', ARGV[5])
        elseif not cur[1] then
          -- No record (an entry added by hand): the `queued` one `submit` would have written, dated by the entry
          -- added, not by the routed one (which is up to the routing delay later).
          local f = {}
          for i = 12, #ARGV - 1, 2 do f[ARGV[i]] = ARGV[i + 1] end
          redis.call('HSET', KEYS[6], '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.queue)', ARGV[5],
            '\(ResultField.submittedAt)', nr_sid_ms(ARGV[1]), '\(ResultField.attempt)', f['\(JobEntryField.attempt)'] or '1',
            '\(ResultField.spec)', f['\(JobEntryField.spec)'] or '', '\(ResultField.streamId)', sid, '\(ProtocolVersion.field)', NR_V)
        end
        nr_emit(KEYS[4], ARGV[8], '\(EventType.jobRouted.rawValue)', ts, ARGV[3], ARGV[10],
          cjson.encode({from_queue = ARGV[9], queue = ARGV[5], stream_id = sid, previous_stream_id = ARGV[1],
            requires = ARGV[11]}))
        return sid
        """)
}

extension RunnerScripts {
    /// KEYS: requirement jobs stream, requirements hash. ARGV: group, requirement id, requirement JSON.
    /// A submitter's registration of a requirement stream: the group on the stream (from 0, MKSTREAM; one that
    /// exists is fine) and the requirement in the hash, after checking both keys' types, so that a key of another
    /// type refuses it with nothing written (no empty stream and group left behind). Returns 1.
    static let registerRequirement = script(
        "register_requirement",
        """
        local bad = nr_wrong_type({KEYS[1], 'stream', KEYS[2], 'hash'})
        if bad then return bad end
        redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
        redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
        return 1
        """)
}

/// How a routing write ended.
enum RoutingOutcome: Sendable, Equatable {
    /// Moved to the requirement stream as this entry.
    case routed(streamId: String)
    /// The entry was no longer pending for this runner: nothing changed.
    case notPending
    /// The runner's lease no longer holds the token: nothing changed; the entry stays pending and is rescheduled.
    case leaseLost
    /// A key the script writes exists with another type (`WRONGTYPE key K is a string, expected a stream`): the
    /// script refused before its first write, nothing changed.
    case wrongType(String)
}

extension JobStore {
    /// Moves an entry to the requirement stream of `requirement` on the entry's base queue (`job.routed`).
    func route(
        _ entry: JobEntry, fields: [(String, [UInt8])], requirement: LabelSet, owner: AttemptOwner, retry: RedisRetry
    ) async throws -> RoutingOutcome {
        let base = Keyspace.baseQueue(of: entry.queue)
        let target = Keyspace.requirementQueue(base, requirement: requirement)
        let reply: RedisReply
        do {
            reply = try await scripts.run(
                RunnerScripts.route,
                keys: [
                    keyspace.jobs(queue: entry.queue), keyspace.jobs(queue: target), keyspace.requirements(queue: base),
                    keyspace.events, keyspace.lease(runner: owner.runner), keyspace.job(id: entry.jobId),
                ],
                arguments: JobStore.bytes([
                    entry.streamId, Keyspace.consumerGroup, owner.runner, owner.leaseToken, target,
                    requirement.requirementId, requirement.json.serialized, String(eventsMaxLength), entry.queue,
                    entry.jobId, requirement.canonical,
                ]) + JobStore.flattened(fields),
                retry: retry)
        } catch let error as RedisServerError where error.kind == "WRONGTYPE" {
            return .wrongType(error.message)
        }
        if let id = reply.string { return .routed(streamId: id) }
        return reply.int == -1 ? .leaseLost : .notPending
    }

    /// Registers a requirement stream for submitters: its consumer group (from 0, MKSTREAM; one that exists is
    /// fine) and its field in `{nr}:requirements:<queue>`, in one script that first checks both keys' types (a key of
    /// another type refuses it with nothing written and names the key). Returns the requirement queue's name.
    func registerRequirement(_ requirement: LabelSet, queue: String) async throws -> String {
        let target = Keyspace.requirementQueue(queue, requirement: requirement)
        _ = try await scripts.run(
            RunnerScripts.registerRequirement,
            keys: [keyspace.jobs(queue: target), keyspace.requirements(queue: queue)],
            arguments: JobStore.bytes([Keyspace.consumerGroup, requirement.requirementId, requirement.json.serialized]))
        return target
    }
}

extension JobExecutor {
    /// A job whose required labels this runner lacks is never run here: it moves to its requirement stream, where
    /// only runners with those labels read it. Nil when this runner may run it.
    func routeIfUnsatisfied(_ entry: JobEntry, fields: [(String, [UInt8])], epoch: LeaseEpoch) async
        -> DeliveryOutcome?
    {
        let requirement = entry.spec.requires
        guard !configuration.labels.satisfies(requirement) else { return nil }
        let target = Keyspace.requirementQueue(Keyspace.baseQueue(of: entry.queue), requirement: requirement)
        // Only a stream registered for other labels than the job's could bring it here: moving it would loop.
        guard target != entry.queue else {
            let reason =
                "job requires \(requirement.canonical), which this runner lacks, yet sits in its own requirement stream"
            return await reject(entry, fields: fields, reason: reason, owner: epoch.owner)
        }
        logger.info(
            "job requires labels this runner lacks; moving it to its requirement stream",
            ["job": entry.jobId, "requires": requirement.canonical, "queue": target])
        let outcome = await detached { [store, durable] in
            try await store.route(entry, fields: fields, requirement: requirement, owner: epoch.owner, retry: durable)
        }
        switch outcome {
        case .routed?, .notPending?: return .routed
        case .leaseLost?: return .abandoned
        case .wrongType(let why)?:
            // Left pending, not dead-lettered: the key is an operator's mistake to fix, not the job's. The check for
            // stray pending entries reads it again about once per lease TTL (an error line each time), and the first
            // try after the fix routes it; a dead letter would need a hand-made entry (`runner retry` does not take
            // a rejected job).
            logger.error(
                "cannot move the job to its requirement stream (it stays pending and is tried again): \(why)",
                ["job": entry.jobId, "queue": target])
            return .leftPending
        case nil: return .unrecorded
        }
    }
}
