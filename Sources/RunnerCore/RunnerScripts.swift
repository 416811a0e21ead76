import RedisClient
import RunnerProtocol

/// The runner's server-side scripts. Each write about a job is one script, so that a result, its ack and its
/// event land together or not at all, and a retried call after a lost reply changes nothing twice.
enum RunnerScripts {
    /// Shared helpers: Redis's clock for timestamps (never the runner's), events, terminal states.
    static let prelude: String = {
        let terminal = JobState.allCases.filter(\.isTerminal).map { "s == '\($0.rawValue)'" }.joined(separator: " or ")
        return """
            local NR_V = '\(ProtocolVersion.current)'
            local function nr_now()
              local t = redis.call('TIME')
              return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
            end
            local function nr_emit(key, maxlen, etype, ts, runner, job, data)
              redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', '\(EventField.type)', etype,
                '\(EventField.timestamp)', ts, '\(EventField.runner)', runner, '\(EventField.job)', job,
                '\(EventField.data)', data, '\(ProtocolVersion.field)', NR_V)
            end
            local function nr_terminal(s)
              return \(terminal)
            end
            local function nr_sid_ms(sid)
              return string.match(sid, '^(%d+)')
            end
            -- The fence of a write about an attempt: the job's record must point at this entry (stream_id) and
            -- name this runner. KEYS[1] job hash, KEYS[2] jobs stream; ARGV[2] runner, ARGV[4] stream id, ARGV[5]
            -- group. -1: the job belongs to another entry or runner now, write nothing; 0: this attempt already
            -- ended (a resent call), ack and delete the entry again; nil: go on. A record that is gone entirely
            -- (a Redis that lost its data) does not fence: the runner rebuilds it.
            local function nr_fence()
              local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.runner)',
                '\(ResultField.streamId)')
              if not cur[1] then return nil end
              if (cur[3] and cur[3] ~= ARGV[4]) or (cur[2] and cur[2] ~= '' and cur[2] ~= ARGV[2]) then return -1 end
              if nr_terminal(cur[1]) then
                redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
                redis.call('XDEL', KEYS[2], ARGV[4])
                return 0
              end
              return nil
            end

            """
    }()

    private static func script(_ name: String, _ body: String) -> LuaScript {
        LuaScript(name: name, source: prelude + body)
    }

    /// KEYS: jobs stream, job hash, events. ARGV: id, spec, queue, events maxlen.
    /// Writes the `queued` result hash and the stream entry together; refuses an id that exists.
    static let submit = script(
        "submit",
        """
        if redis.call('EXISTS', KEYS[2]) == 1 then
          return redis.error_reply('DUPLICATE job ' .. ARGV[1] .. ' already exists')
        end
        local ts = nr_now()
        local sid = redis.call('XADD', KEYS[1], '*', '\(JobEntryField.id)', ARGV[1], '\(JobEntryField.spec)', ARGV[2],
          '\(JobEntryField.attempt)', '1', NR_V_FIELD, NR_V)
        redis.call('HSET', KEYS[2], '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.queue)', ARGV[3],
          '\(ResultField.submittedAt)', ts, '\(ResultField.attempt)', '1', '\(ResultField.spec)', ARGV[2],
          '\(ResultField.streamId)', sid, NR_V_FIELD, NR_V)
        nr_emit(KEYS[3], ARGV[4], '\(EventType.jobSubmitted.rawValue)', ts, '', ARGV[1],
          cjson.encode({queue = ARGV[3], stream_id = sid}))
        return sid
        """.replacingOccurrences(of: "NR_V_FIELD", with: "'\(ProtocolVersion.field)'"))

    /// KEYS: job hash, events. ARGV: id, runner, attempt, stream id, queue, events maxlen, spec, received data.
    /// Claims an attempt before its process is started: marks it running and emits `job.received`. Returns
    /// {1, started_at} when claimed (also for a resent call, which changes nothing), or {0, state, attempt} for a
    /// duplicate that must not run: the record points at another entry (the job was submitted again by hand, or
    /// this entry is stale), or this entry's attempt already ended.
    static let claim = script(
        "claim",
        """
        local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.attempt)',
          '\(ResultField.streamId)', '\(ResultField.startedAt)')
        if cur[1] then
          if (cur[4] and cur[4] ~= ARGV[4]) or nr_terminal(cur[1]) then return {0, cur[1], cur[3] or ''} end
          if cur[1] == '\(JobState.running.rawValue)' and cur[2] == ARGV[2] and cur[5] then
            return {1, cur[5]}
          end
        end
        local ts = nr_now()
        local submitted = redis.call('HGET', KEYS[1], '\(ResultField.submittedAt)') or nr_sid_ms(ARGV[4])
        redis.call('HDEL', KEYS[1], \(clearedOnStart))
        redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.running.rawValue)', '\(ResultField.runner)', ARGV[2],
          '\(ResultField.attempt)', ARGV[3], '\(ResultField.streamId)', ARGV[4], '\(ResultField.queue)', ARGV[5],
          '\(ResultField.startedAt)', ts, '\(ResultField.submittedAt)', submitted, '\(ResultField.spec)', ARGV[7],
          '\(ProtocolVersion.field)', NR_V)
        nr_emit(KEYS[2], ARGV[6], '\(EventType.jobReceived.rawValue)', ts, ARGV[2], ARGV[1], ARGV[8])
        return {1, ts}
        """)

    /// KEYS: job hash, events. ARGV: id, runner, stream id, pid, events maxlen, started data.
    /// Records the pid of a claimed attempt and emits `job.started`, once; nothing if the attempt is no longer
    /// this runner's. Returns 1 or 0.
    static let started = script(
        "started",
        """
        local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.streamId)',
          '\(ResultField.pid)')
        if cur[1] ~= '\(JobState.running.rawValue)' or cur[2] ~= ARGV[2] or cur[3] ~= ARGV[3] then return 0 end
        if cur[4] == ARGV[4] then return 1 end
        redis.call('HSET', KEYS[1], '\(ResultField.pid)', ARGV[4])
        nr_emit(KEYS[2], ARGV[5], '\(EventType.jobStarted.rawValue)', nr_now(), ARGV[2], ARGV[1], ARGV[6])
        return 1
        """)

    private static let clearedOnStart = [
        ResultField.exitCode, ResultField.signal, ResultField.finishedAt, ResultField.durationMs,
        ResultField.outputTail, ResultField.reason, ResultField.forcedKill, ResultField.cpuUserMs,
        ResultField.cpuSystemMs, ResultField.pid, ResultField.requeuedFrom,
    ].map { "'\($0)'" }.joined(separator: ", ")

    /// KEYS: job hash, jobs stream, events, log stream. ARGV: id, runner, attempt, stream id, group, state,
    /// event type, event data, retention ms, events maxlen, started at ('' if unknown), queue, spec, then
    /// field/value pairs. Fields missing from the hash (it may have been lost with a
    /// Redis that restarted without persistence) are written again from what the runner knows.
    /// Returns 1 written, 0 already written before (acked again), -1 the job belongs to another runner/attempt.
    static let complete = script(
        "complete",
        """
        local fenced = nr_fence()
        if fenced then return fenced end
        local ts = nr_now()
        local fields = {'\(ResultField.state)', ARGV[6], '\(ResultField.runner)', ARGV[2], '\(ResultField.attempt)', ARGV[3],
          '\(ResultField.finishedAt)', ts, '\(ResultField.streamId)', ARGV[4], '\(ProtocolVersion.field)', NR_V}
        for i = 14, #ARGV do fields[#fields + 1] = ARGV[i] end
        local missing = {['\(ResultField.startedAt)'] = (ARGV[11] ~= '' and ARGV[11] or ts),
          ['\(ResultField.queue)'] = ARGV[12], ['\(ResultField.spec)'] = ARGV[13]}
        for name, value in pairs(missing) do
          if redis.call('HEXISTS', KEYS[1], name) == 0 then
            fields[#fields + 1] = name; fields[#fields + 1] = value
          end
        end
        if redis.call('HEXISTS', KEYS[1], '\(ResultField.submittedAt)') == 0 then
          fields[#fields + 1] = '\(ResultField.submittedAt)'; fields[#fields + 1] = nr_sid_ms(ARGV[4])
        end
        redis.call('HSET', KEYS[1], unpack(fields))
        redis.call('PEXPIRE', KEYS[1], ARGV[9])
        redis.call('PEXPIRE', KEYS[4], ARGV[9])
        redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
        redis.call('XDEL', KEYS[2], ARGV[4])
        nr_emit(KEYS[3], ARGV[10], ARGV[7], ts, ARGV[2], ARGV[1], ARGV[8])
        return 1
        """)

    /// KEYS: job hash, jobs stream, dead stream, events. ARGV: id ('' if none), runner, stream id, group, reason,
    /// queue, events maxlen, retention ms, dead maxlen, then the entry's original field/value pairs.
    /// Returns the dead-letter entry id.
    static let reject = script(
        "reject",
        """
        -- Only the first call for an entry writes: a resent call finds it acked already.
        if redis.call('XACK', KEYS[2], ARGV[4], ARGV[3]) == 0 then return 0 end
        local ts = nr_now()
        local dead = {'XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*'}
        for i = 10, #ARGV do dead[#dead + 1] = ARGV[i] end
        for _, v in ipairs({'\(DeadLetterField.reason)', ARGV[5], '\(DeadLetterField.source)', KEYS[2],
            '\(DeadLetterField.sourceId)', ARGV[3], '\(ProtocolVersion.field)', NR_V}) do
          dead[#dead + 1] = v
        end
        local did = redis.call(unpack(dead))
        if ARGV[1] ~= '' then
          local st = redis.call('HGET', KEYS[1], '\(ResultField.state)')
          if (not st) or st == '\(JobState.queued.rawValue)' then
            redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.rejected.rawValue)', '\(ResultField.reason)', ARGV[5],
              '\(ResultField.runner)', ARGV[2], '\(ResultField.queue)', ARGV[6], '\(ResultField.finishedAt)', ts,
              '\(ResultField.streamId)', ARGV[3], '\(ProtocolVersion.field)', NR_V)
            if redis.call('HEXISTS', KEYS[1], '\(ResultField.submittedAt)') == 0 then
              redis.call('HSET', KEYS[1], '\(ResultField.submittedAt)', nr_sid_ms(ARGV[3]))
            end
            redis.call('PEXPIRE', KEYS[1], ARGV[8])
          end
        end
        redis.call('XDEL', KEYS[2], ARGV[3])
        nr_emit(KEYS[4], ARGV[7], '\(EventType.jobRejected.rawValue)', ts, ARGV[2], ARGV[1],
          cjson.encode({reason = ARGV[5], queue = ARGV[6], stream_id = ARGV[3], dead_id = did}))
        return did
        """)

    /// KEYS: jobs stream, events. ARGV: stream id, group, runner, events maxlen, queue.
    /// An entry whose payload is gone: acked and reported, never run.
    static let lost = script(
        "lost",
        """
        if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
        local ts = nr_now()
        redis.call('XDEL', KEYS[1], ARGV[1])
        nr_emit(KEYS[2], ARGV[4], '\(EventType.jobLost.rawValue)', ts, ARGV[3], '',
          cjson.encode({reason = 'the entry payload was deleted or trimmed before it was processed',
            queue = ARGV[5], stream_id = ARGV[1]}))
        return 1
        """)

    /// KEYS: job hash, jobs stream, events. ARGV: id, runner, attempt, old stream id, group, spec, queue,
    /// next attempt, events maxlen, event type, event data (JSON object; `stream_id`, `previous_stream_id` and
    /// `attempt` are added). Puts an unfinished job back on its queue as a new entry and acks the old one: a
    /// hand-back keeps the attempt, a retry raises it. Returns the new entry id (also to a resent call, which
    /// changes nothing), 0 when the attempt had already ended, -1 when it belongs to another entry or runner.
    static let requeue = script(
        "requeue",
        """
        -- A resent call: the first one already moved the job to a new entry and remembered this one.
        local moved = redis.call('HMGET', KEYS[1], '\(ResultField.streamId)', '\(ResultField.requeuedFrom)')
        if moved[2] == ARGV[4] then return moved[1] end
        local fenced = nr_fence()
        if fenced then return fenced end
        local ts = nr_now()
        local sid = redis.call('XADD', KEYS[2], '*', '\(JobEntryField.id)', ARGV[1], '\(JobEntryField.spec)', ARGV[6],
          '\(JobEntryField.attempt)', ARGV[8], '\(ProtocolVersion.field)', NR_V)
        redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
        redis.call('XDEL', KEYS[2], ARGV[4])
        local submitted = redis.call('HGET', KEYS[1], '\(ResultField.submittedAt)') or nr_sid_ms(ARGV[4])
        redis.call('HDEL', KEYS[1], '\(ResultField.runner)', '\(ResultField.startedAt)', '\(ResultField.pid)')
        redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.streamId)', sid,
          '\(ResultField.attempt)', ARGV[8], '\(ResultField.queue)', ARGV[7], '\(ResultField.spec)', ARGV[6],
          '\(ResultField.submittedAt)', submitted, '\(ResultField.requeuedFrom)', ARGV[4], '\(ProtocolVersion.field)', NR_V)
        local data = cjson.decode(ARGV[11])
        data['stream_id'] = sid
        data['previous_stream_id'] = ARGV[4]
        data['attempt'] = tonumber(ARGV[8])
        nr_emit(KEYS[3], ARGV[9], ARGV[10], ts, ARGV[2], ARGV[1], cjson.encode(data))
        return sid
        """)

    /// KEYS: events. ARGV: type, runner, job, data, events maxlen.
    static let emit = script(
        "emit",
        """
        local ts = nr_now()
        nr_emit(KEYS[1], ARGV[5], ARGV[1], ts, ARGV[2], ARGV[3], ARGV[4])
        return ts
        """)

    /// KEYS: jobs stream. ARGV: group, consumer. Removes the consumer only when it has nothing pending: deleting a
    /// consumer drops its pending entries, and with them the only record that those jobs were delivered.
    static let removeConsumer = script(
        "remove_consumer",
        """
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
        if #pending > 0 then return -1 end
        return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
        """)

    /// KEYS: lease. ARGV: token, ttl ms. Extends the lease only for the holder of the token.
    static let renewLease = script(
        "renew_lease",
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          redis.call('PEXPIRE', KEYS[1], ARGV[2])
          return 1
        end
        return 0
        """)

    /// KEYS: lease. ARGV: token. Deletes the lease only for the holder of the token.
    static let releaseLease = script(
        "release_lease",
        """
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          redis.call('DEL', KEYS[1])
          return 1
        end
        return 0
        """)
}
