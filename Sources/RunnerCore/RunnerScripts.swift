import RedisClient
import RunnerProtocol

/// The runner's server-side scripts. Each write about a job is one script, so that a result, its ack and its
/// event land together or not at all, and a retried call after a lost reply changes nothing twice.
///
/// Every write about an attempt is fenced twice: the runner's lease key must still hold the lease token the runner
/// passes (its epoch), and the job's record must still name this attempt (`stream_id`, `runner`, `lease_token`).
enum RunnerScripts {
    /// Shared helpers: Redis's clock for timestamps (never the runner's), events, terminal states, the fence.
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
            local function nr_absent(v)
              return (not v) or v == ''
            end
            -- Redis does not undo the writes of a script that errors halfway, so a script first checks the keys it
            -- writes that may exist with another type (someone SET a string there): `checks` is a flat list of
            -- key, type. Returns the error reply that refuses the script before its first write, or nil.
            local function nr_wrong_type(checks)
              for i = 1, #checks, 2 do
                local t = redis.call('TYPE', checks[i])['ok']
                if t ~= 'none' and t ~= checks[i + 1] then
                  return redis.error_reply('WRONGTYPE key ' .. checks[i] .. ' is a ' .. t .. ', expected a '
                    .. checks[i + 1])
                end
              end
              return nil
            end
            -- The fence of a write about an attempt. Returns nil to go on; 0 when this attempt already ended (a
            -- resent call: the entry is acked and deleted again); or why the write is refused: 'lease' (the
            -- runner's lease no longer holds its token: it expired, or the runner registered again) or 'moved' (the
            -- record names another entry, runner or epoch: the job was rescheduled, retried or handed back). A
            -- record that is gone entirely (a Redis that lost its data) does not fence unless another epoch holds
            -- the lease: the runner rebuilds it. The record's fields named after the fence's own come back as
            -- the second result, from the same HMGET (cur[5] on), so that a caller reads the record once.
            local function nr_fence(job, stream, lease, runner, sid, group, token, ...)
              local cur = redis.call('HMGET', job, '\(ResultField.state)', '\(ResultField.runner)',
                '\(ResultField.streamId)', '\(ResultField.leaseToken)', ...)
              local held = redis.call('GET', lease)
              if not cur[1] then
                if held and held ~= token then return 'lease', cur end
                return nil, cur
              end
              if cur[3] ~= sid or not (nr_absent(cur[2]) or cur[2] == runner)
                or not (nr_absent(cur[4]) or cur[4] == token) then
                return 'moved', cur
              end
              if nr_terminal(cur[1]) then
                redis.call('XACK', stream, group, sid)
                redis.call('XDEL', stream, sid)
                return 0, cur
              end
              if held ~= token then return 'lease', cur end
              return nil, cur
            end
            -- A refused terminal write: say so on the events stream (the write itself changes nothing).
            local function nr_stale(events, maxlen, job, id, runner, attempt, sid, why, write)
              local cur = redis.call('HMGET', job, '\(ResultField.state)', '\(ResultField.streamId)',
                '\(ResultField.runner)')
              local text = 'the lease of runner ' .. runner .. ' no longer holds the token of this attempt'
              if why == 'moved' then
                text = 'the job now belongs to another attempt (state ' .. (cur[1] or 'none') .. ', entry '
                  .. (cur[2] or 'none') .. ', runner ' .. (cur[3] or 'none') .. ')'
              end
              nr_emit(events, maxlen, '\(EventType.jobStaleResult.rawValue)', nr_now(), runner, id,
                cjson.encode({runner = runner, attempt = tonumber(attempt), stream_id = sid, why = why,
                  reason = text, write = write}))
              return -1
            end
            -- Adds a dead letter: the entry's fields (a flat list) and why. Returns its id.
            local function nr_dead_letter(dead, maxlen, flat, reason, source, sid)
              local args = {'XADD', dead, 'MAXLEN', '~', maxlen, '*'}
              local skip = {['\(DeadLetterField.reason)'] = true, ['\(DeadLetterField.source)'] = true,
                ['\(DeadLetterField.sourceId)'] = true, ['\(ProtocolVersion.field)'] = true}
              for i = 1, #flat, 2 do
                if not skip[flat[i]] then
                  args[#args + 1] = flat[i]; args[#args + 1] = flat[i + 1]
                end
              end
              for _, v in ipairs({'\(DeadLetterField.reason)', reason, '\(DeadLetterField.source)', source,
                  '\(DeadLetterField.sourceId)', sid, '\(ProtocolVersion.field)', NR_V}) do
                args[#args + 1] = v
              end
              return redis.call(unpack(args))
            end

            """
    }()

    static func script(_ name: String, _ body: String) -> LuaScript {
        LuaScript(name: name, source: prelude + body)
    }

    /// KEYS: jobs stream, job hash, events, idempotency key (the events key again when there is none).
    /// ARGV: id, spec, queue, events maxlen, idempotency key ('' for none), retention ms.
    /// Writes the `queued` result hash and the stream entry together; refuses an id that exists. With an idempotency
    /// key already taken, creates nothing and answers the job it names. Returns {1, stream id} or {0, job id}.
    static let submit = script(
        "submit",
        """
        if ARGV[5] ~= '' then
          local owner = redis.call('GET', KEYS[4])
          if owner then return {0, owner} end
        end
        if redis.call('EXISTS', KEYS[2]) == 1 then
          return redis.error_reply('DUPLICATE job ' .. ARGV[1] .. ' already exists')
        end
        -- The idempotency key and the record are written before the XADD, and the event last: a jobs or events
        -- stream of another type must refuse the submit before anything is written.
        local bad = nr_wrong_type({KEYS[1], 'stream', KEYS[3], 'stream'})
        if bad then return bad end
        local ts = nr_now()
        local entry = {'XADD', KEYS[1], '*', '\(JobEntryField.id)', ARGV[1], '\(JobEntryField.spec)', ARGV[2],
          '\(JobEntryField.attempt)', '1', '\(ProtocolVersion.field)', NR_V}
        if ARGV[5] ~= '' then
          entry[#entry + 1] = '\(JobEntryField.idempotencyKey)'; entry[#entry + 1] = ARGV[5]
          redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[6])
          redis.call('HSET', KEYS[2], '\(ResultField.idempotencyKey)', ARGV[5])
        end
        local sid = redis.call(unpack(entry))
        redis.call('HSET', KEYS[2], '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.queue)', ARGV[3],
          '\(ResultField.submittedAt)', ts, '\(ResultField.attempt)', '1', '\(ResultField.spec)', ARGV[2],
          '\(ResultField.streamId)', sid, '\(ProtocolVersion.field)', NR_V)
        nr_emit(KEYS[3], ARGV[4], '\(EventType.jobSubmitted.rawValue)', ts, '', ARGV[1],
          cjson.encode({queue = ARGV[3], stream_id = sid}))
        return {1, sid}
        """)

    /// KEYS: job hash, events, lease, fencing counter, idempotency key (the events key again when none), jobs
    /// stream, log stream, delayed set, dead stream.
    /// ARGV: id, runner, attempt, stream id, queue, events maxlen, spec, received data, lease token, idempotency key
    /// ('' for none), retention ms, group.
    /// Claims an attempt before its process is started: marks it running under this lease epoch with a new fencing
    /// token and emits `job.received`. Returns {1, started_at, fencing token, failures} when claimed (also for a
    /// resent call, which changes nothing); {0, state, attempt} for a duplicate that must not run (the record points
    /// at another entry, or this entry's attempt already ended); {-1} when the lease no longer holds the token;
    /// {-2} when an earlier epoch of this runner claimed it (it must be rescheduled, not run); {-3, job id} when the
    /// entry's idempotency key belongs to another job; {-4, runner} when another live runner runs this entry now;
    /// {-5, runner} when another runner had claimed it and its lease is gone (rescheduled, not run); {-6} when the
    /// job was cancelled (`runner cancel`): never started, its entry acked and deleted (a cancel requested while
    /// an earlier attempt ran makes the job `cancelled` here, with `job.cancelled`).
    static let claim = script(
        "claim",
        """
        if redis.call('GET', KEYS[3]) ~= ARGV[9] then return {-1} end
        -- The delayed set and the dead stream are written only when the attempt fails, but a failure write refused
        -- there leaves the entry pending and the job runs again (once per lease TTL): refused here, it never starts.
        local bad = nr_wrong_type({KEYS[2], 'stream', KEYS[8], 'zset', KEYS[9], 'stream'})
        if bad then return bad end
        local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.attempt)',
          '\(ResultField.streamId)', '\(ResultField.startedAt)', '\(ResultField.leaseToken)', '\(ResultField.fencingToken)',
          '\(ResultField.failures)', '\(ResultField.cancelRequestedAt)', '\(ResultField.submittedAt)',
          '\(ResultField.queue)')
        \(ControlScripts.claimHonoursCancel)
        if cur[1] then
          if (cur[4] and cur[4] ~= ARGV[4]) or nr_terminal(cur[1]) or cur[1] == '\(JobState.retryScheduled.rawValue)' then
            return {0, cur[1], cur[3] or ''}
          end
          -- Stream ids are unique per stream only: a running attempt's claim wrote its entry's queue, so the same id
          -- on another queue (the job id hand-added to two queues) is another entry, not a resent claim of this one.
          if cur[1] == '\(JobState.running.rawValue)' and cur[11] and cur[11] ~= ARGV[5] then
            return {0, cur[1], cur[3] or ''}
          end
          if cur[1] == '\(JobState.running.rawValue)' and cur[2] == ARGV[2] and cur[5] then
            if cur[6] == ARGV[9] then return {1, cur[5], cur[7] or '', cur[8] or '0'} end
            return {-2}
          end
          -- The same entry delivered again while another runner runs it (the group was recreated from 0): never a
          -- second copy. Its owner alive: leave it; its owner gone: it is rescheduled like a lost runner's.
          if cur[1] == '\(JobState.running.rawValue)' and cur[2] and cur[2] ~= '' and cur[2] ~= ARGV[2] then
            local leases = string.sub(KEYS[3], 1, #KEYS[3] - #ARGV[2])
            if cur[6] and redis.call('GET', leases .. cur[2]) == cur[6] then return {-4, cur[2]} end
            return {-5, cur[2]}
          end
        end
        local keyOwner = false
        if ARGV[10] ~= '' then
          keyOwner = redis.call('GET', KEYS[5])
          if keyOwner and keyOwner ~= ARGV[1] then return {-3, keyOwner} end
        end
        local ts = nr_now()
        -- The first write: the counter needs no type check (INCR refuses a wrong one, or a string that is no number,
        -- before anything is written).
        local fencing = redis.call('INCR', KEYS[4])
        if ARGV[10] ~= '' and not keyOwner then redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[11]) end
        local submitted = cur[10] or nr_sid_ms(ARGV[4])
        -- No record yet (an entry added without `submit`): nothing of an earlier attempt to clear.
        if cur[1] then redis.call('HDEL', KEYS[1], \(clearedOnStart)) end
        redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.running.rawValue)', '\(ResultField.runner)', ARGV[2],
          '\(ResultField.attempt)', ARGV[3], '\(ResultField.streamId)', ARGV[4], '\(ResultField.queue)', ARGV[5],
          '\(ResultField.startedAt)', ts, '\(ResultField.submittedAt)', submitted, '\(ResultField.spec)', ARGV[7],
          '\(ResultField.leaseToken)', ARGV[9], '\(ResultField.fencingToken)', fencing, '\(ProtocolVersion.field)', NR_V)
        if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], '\(ResultField.idempotencyKey)', ARGV[10]) end
        -- The runner's JSON object with the token added as its last member (no decode and encode on every claim).
        local body = string.sub(ARGV[8], 2, -2)
        local data = '{' .. body .. (body == '' and '' or ',') .. '"fencing_token":' .. fencing .. '}'
        nr_emit(KEYS[2], ARGV[6], '\(EventType.jobReceived.rawValue)', ts, ARGV[2], ARGV[1], data)
        return {1, ts, tostring(fencing), cur[8] or '0'}
        """)

    /// KEYS: job hash, events, lease. ARGV: id, runner, stream id, pid, events maxlen, started data, lease token.
    /// Records the pid of a claimed attempt and emits `job.started`, once; nothing if the attempt is no longer
    /// this runner's epoch's. Returns 1 or 0.
    static let started = script(
        "started",
        """
        local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.streamId)',
          '\(ResultField.pid)', '\(ResultField.leaseToken)')
        if cur[1] ~= '\(JobState.running.rawValue)' or cur[2] ~= ARGV[2] or cur[3] ~= ARGV[3] or cur[5] ~= ARGV[7] then
          return 0
        end
        if redis.call('GET', KEYS[3]) ~= ARGV[7] then return 0 end
        if cur[4] == ARGV[4] then return 1 end
        local bad = nr_wrong_type({KEYS[2], 'stream'})
        if bad then return bad end
        redis.call('HSET', KEYS[1], '\(ResultField.pid)', ARGV[4])
        nr_emit(KEYS[2], ARGV[5], '\(EventType.jobStarted.rawValue)', nr_now(), ARGV[2], ARGV[1], ARGV[6])
        return 1
        """)

    /// KEYS: log stream, job hash, lease. ARGV: runner, stream id, lease token, then entry id, fd, data triples.
    /// Appends a batch of an attempt's output, fenced like every write about it. Entry ids are the recorder's own,
    /// so a resent batch is refused entry by entry as "equal or smaller" and stored once. Returns the entries
    /// added, or -1 when the attempt is no longer this runner's epoch's (nothing is written).
    static let appendLog = script(
        "append_log",
        """
        local cur = redis.call('HMGET', KEYS[2], '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.streamId)',
          '\(ResultField.leaseToken)')
        local held = redis.call('GET', KEYS[3])
        if cur[1] then
          if cur[2] ~= ARGV[1] or cur[3] ~= ARGV[2] or cur[4] ~= ARGV[3] or held ~= ARGV[3] then return -1 end
        elseif held and held ~= ARGV[3] then
          return -1
        end
        local added = 0
        for i = 4, #ARGV - 2, 3 do
          local ok = redis.pcall('XADD', KEYS[1], ARGV[i], '\(LogField.stream)', ARGV[i + 1], '\(LogField.data)', ARGV[i + 2],
            '\(ProtocolVersion.field)', NR_V)
          if type(ok) ~= 'table' or not ok.err then
            added = added + 1
          elseif string.sub(ok.err, 1, 9) == 'WRONGTYPE' then
            -- The log key holds another type (someone SET it): say which, so that the runner can name it.
            return {-2, redis.call('TYPE', KEYS[1])['ok']}
          end
        end
        return added
        """)

    static let clearedOnStart = [
        ResultField.exitCode, ResultField.signal, ResultField.finishedAt, ResultField.durationMs,
        ResultField.outputTail, ResultField.reason, ResultField.forcedKill, ResultField.cpuUserMs,
        ResultField.cpuSystemMs, ResultField.pid, ResultField.requeuedFrom, ResultField.retryAt,
        // Written only when known: an earlier attempt's must not pass for this one's.
        ResultField.peakMemoryBytes, ResultField.peakMemorySource, ResultField.processes, ResultField.postHookExitCode,
        ResultField.isolationRequested, ResultField.lastState,
    ].map { "'\($0)'" }.joined(separator: ", ")

    /// KEYS: job hash, jobs stream, events, log stream, lease. ARGV: id, runner, attempt, stream id, group, state,
    /// event type, event data, retention ms, events maxlen, started at ('' if unknown), queue, spec, lease token,
    /// `job.started` data ('' when `started` wrote it), then field/value pairs. Fields missing from the hash (it may
    /// have been lost with a Redis that restarted without persistence) are written again from what the runner knows.
    /// A job that ended before its `started` write was sent gets `job.started` here, right before its terminal event.
    /// Returns 1 written, 0 already written before (acked again), -1 refused (`job.stale_result` emitted).
    static let complete = script(
        "complete",
        """
        local fenced, cur = nr_fence(KEYS[1], KEYS[2], KEYS[5], ARGV[2], ARGV[4], ARGV[5], ARGV[14],
          '\(ResultField.startedAt)', '\(ResultField.queue)', '\(ResultField.spec)', '\(ResultField.submittedAt)')
        if fenced == 0 then return 0 end
        if fenced then return nr_stale(KEYS[3], ARGV[10], KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], fenced, 'result') end
        local bad = nr_wrong_type({KEYS[2], 'stream', KEYS[3], 'stream'})
        if bad then return bad end
        local ts = nr_now()
        local fields = {'\(ResultField.state)', ARGV[6], '\(ResultField.runner)', ARGV[2], '\(ResultField.attempt)', ARGV[3],
          '\(ResultField.finishedAt)', ts, '\(ResultField.streamId)', ARGV[4], '\(ResultField.leaseToken)', ARGV[14],
          '\(ProtocolVersion.field)', NR_V}
        for i = 16, #ARGV do fields[#fields + 1] = ARGV[i] end
        -- Fields the record lacks (read with the fence, cur[5] on) are written again from what the runner knows.
        local missing = {{'\(ResultField.startedAt)', ARGV[11] ~= '' and ARGV[11] or ts}, {'\(ResultField.queue)', ARGV[12]},
          {'\(ResultField.spec)', ARGV[13]}, {'\(ResultField.submittedAt)', nr_sid_ms(ARGV[4])}}
        for i, field in ipairs(missing) do
          if not cur[4 + i] then
            fields[#fields + 1] = field[1]; fields[#fields + 1] = field[2]
          end
        end
        redis.call('HSET', KEYS[1], unpack(fields))
        redis.call('PEXPIRE', KEYS[1], ARGV[9])
        redis.call('PEXPIRE', KEYS[4], ARGV[9])
        redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
        redis.call('XDEL', KEYS[2], ARGV[4])
        if ARGV[15] ~= '' then
          nr_emit(KEYS[3], ARGV[10], '\(EventType.jobStarted.rawValue)', ts, ARGV[2], ARGV[1], ARGV[15])
        end
        nr_emit(KEYS[3], ARGV[10], ARGV[7], ts, ARGV[2], ARGV[1], ARGV[8])
        return 1
        """)

    /// KEYS: job hash, jobs stream, events, lease, delayed set, dead stream, log stream.
    /// ARGV: id, runner, attempt, stream id, group, spec, queue, events maxlen, lease token, failures (with this
    /// one), max attempts, delay ms, outcome event data, retention ms, dead maxlen, then result field/value pairs.
    /// After a failed attempt: with attempts left, the job waits in the delayed set (`retry_scheduled`,
    /// `job.retry_scheduled`) for the mover to put it back on its queue; with none left, it is `dead`, with a dead
    /// letter and `job.dead`. Returns {1, retry_at} scheduled, {2, dead id} dead, {0} already done (a resent call),
    /// {-1} refused (`job.stale_result` emitted).
    static let failAttempt = script(
        "fail_attempt",
        """
        local moved = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.requeuedFrom)', '\(ResultField.retryAt)')
        if moved[1] == '\(JobState.retryScheduled.rawValue)' and moved[2] == ARGV[4] then return {1, moved[3]} end
        local fenced = nr_fence(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[4], ARGV[5], ARGV[9])
        if fenced == 0 then return {0} end
        if fenced then return {nr_stale(KEYS[3], ARGV[8], KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], fenced, 'retry')} end
        local bad = nr_wrong_type({KEYS[2], 'stream', KEYS[3], 'stream', KEYS[5], 'zset', KEYS[6], 'stream'})
        if bad then return bad end
        local ts = nr_now()
        local outcome = {}
        for i = 16, #ARGV do outcome[#outcome + 1] = ARGV[i] end
        local submitted = redis.call('HGET', KEYS[1], '\(ResultField.submittedAt)') or nr_sid_ms(ARGV[4])
        redis.call('HSET', KEYS[1], '\(ResultField.queue)', ARGV[7], '\(ResultField.spec)', ARGV[6], '\(ResultField.submittedAt)', submitted,
          '\(ResultField.failures)', ARGV[10], '\(ResultField.finishedAt)', ts, '\(ProtocolVersion.field)', NR_V, unpack(outcome))
        redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
        redis.call('XDEL', KEYS[2], ARGV[4])
        local data = cjson.decode(ARGV[13])
        data['failed_attempt'] = tonumber(ARGV[3])
        data['failures'] = tonumber(ARGV[10])
        data['max_attempts'] = tonumber(ARGV[11])
        data['queue'] = ARGV[7]
        data['previous_stream_id'] = ARGV[4]
        if tonumber(ARGV[10]) < tonumber(ARGV[11]) then
          local due = string.format('%.0f', tonumber(ts) + tonumber(ARGV[12]))
          local nextAttempt = tostring(tonumber(ARGV[3]) + 1)
          redis.call('HDEL', KEYS[1], '\(ResultField.runner)', '\(ResultField.startedAt)', '\(ResultField.pid)',
            '\(ResultField.leaseToken)', '\(ResultField.fencingToken)')
          redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.retryScheduled.rawValue)', '\(ResultField.attempt)', nextAttempt,
            '\(ResultField.streamId)', '', '\(ResultField.requeuedFrom)', ARGV[4], '\(ResultField.retryAt)', due)
          redis.call('ZADD', KEYS[5], due, ARGV[1])
          data['attempt'] = tonumber(nextAttempt)
          data['retry_at'] = tonumber(due)
          data['delay_ms'] = tonumber(ARGV[12])
          nr_emit(KEYS[3], ARGV[8], '\(EventType.jobRetryScheduled.rawValue)', ts, ARGV[2], ARGV[1], cjson.encode(data))
          return {1, due}
        end
        local reason = 'failed ' .. ARGV[10] .. ' of ' .. ARGV[11] .. ' attempts; the last: ' .. (data['reason'] or data['state'] or '')
        local did = nr_dead_letter(KEYS[6], ARGV[15], {'\(JobEntryField.id)', ARGV[1], '\(JobEntryField.spec)', ARGV[6],
          '\(JobEntryField.attempt)', ARGV[3]}, reason, KEYS[2], ARGV[4])
        redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.dead.rawValue)', '\(ResultField.reason)', reason,
          '\(ResultField.runner)', ARGV[2], '\(ResultField.attempt)', ARGV[3], '\(ResultField.streamId)', ARGV[4],
          '\(ResultField.leaseToken)', ARGV[9], '\(ResultField.lastState)', outcome[2])
        redis.call('PEXPIRE', KEYS[1], ARGV[14])
        redis.call('PEXPIRE', KEYS[7], ARGV[14])
        data['last_state'] = data['state']
        data['state'] = '\(JobState.dead.rawValue)'
        data['attempt'] = tonumber(ARGV[3])
        data['reason'] = reason
        data['dead_id'] = did
        nr_emit(KEYS[3], ARGV[8], '\(EventType.jobDead.rawValue)', ts, ARGV[2], ARGV[1], cjson.encode(data))
        return {2, did}
        """)

    /// KEYS: job hash, jobs stream, dead stream, events, lease. ARGV: id ('' if none), runner, stream id, group,
    /// reason, queue, events maxlen, retention ms, dead maxlen, lease token, then the entry's original field/value
    /// pairs. Returns the dead-letter entry id, 0 for a resent call, -1 when the lease no longer holds the token.
    static let reject = script(
        "reject",
        """
        if redis.call('GET', KEYS[5]) ~= ARGV[10] then return -1 end
        -- The jobs stream needs no check: its XACK is the first write.
        local bad = nr_wrong_type({KEYS[3], 'stream', KEYS[4], 'stream', KEYS[1], 'hash'})
        if bad then return bad end
        -- Only the first call for an entry writes: a resent call finds it acked already.
        if redis.call('XACK', KEYS[2], ARGV[4], ARGV[3]) == 0 then return 0 end
        local ts = nr_now()
        local flat = {}
        for i = 11, #ARGV do flat[#flat + 1] = ARGV[i] end
        local did = nr_dead_letter(KEYS[3], ARGV[9], flat, ARGV[5], KEYS[2], ARGV[3])
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

    /// KEYS: jobs stream, events, lease. ARGV: stream id, group, runner, events maxlen, queue, lease token.
    /// An entry whose payload is gone: acked and reported, never run. Returns 1, 0 (a resent call), or -1 when the
    /// lease no longer holds the token.
    static let lost = script(
        "lost",
        """
        if redis.call('GET', KEYS[3]) ~= ARGV[6] then return -1 end
        local bad = nr_wrong_type({KEYS[2], 'stream'})
        if bad then return bad end
        if redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) == 0 then return 0 end
        local ts = nr_now()
        redis.call('XDEL', KEYS[1], ARGV[1])
        nr_emit(KEYS[2], ARGV[4], '\(EventType.jobLost.rawValue)', ts, ARGV[3], '',
          cjson.encode({reason = 'the entry payload was deleted or trimmed before it was processed',
            queue = ARGV[5], stream_id = ARGV[1]}))
        return 1
        """)

    /// KEYS: job hash, jobs stream, events, lease. ARGV: id, runner, attempt, old stream id, group, spec, queue,
    /// events maxlen, reason, lease token.
    /// Hands an unfinished attempt back to its queue as a new entry with the same attempt and acks the old one
    /// (`job.handed_back`). Returns the new entry id (also to a resent call, which changes nothing), 0 when the
    /// attempt had already ended, -1 when refused (`job.stale_result` emitted).
    static let handBack = script(
        "hand_back",
        """
        -- A resent call: the first one already moved the job to a new entry and remembered this one.
        local moved = redis.call('HMGET', KEYS[1], '\(ResultField.streamId)', '\(ResultField.requeuedFrom)')
        if moved[2] == ARGV[4] then return moved[1] end
        local fenced = nr_fence(KEYS[1], KEYS[2], KEYS[4], ARGV[2], ARGV[4], ARGV[5], ARGV[10])
        if fenced == 0 then return 0 end
        if fenced then return nr_stale(KEYS[3], ARGV[8], KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], fenced, 'hand_back') end
        -- The jobs stream needs no check: its XADD is the first write.
        local bad = nr_wrong_type({KEYS[3], 'stream'})
        if bad then return bad end
        local ts = nr_now()
        local sid = redis.call('XADD', KEYS[2], '*', '\(JobEntryField.id)', ARGV[1], '\(JobEntryField.spec)', ARGV[6],
          '\(JobEntryField.attempt)', ARGV[3], '\(ProtocolVersion.field)', NR_V)
        redis.call('XACK', KEYS[2], ARGV[5], ARGV[4])
        redis.call('XDEL', KEYS[2], ARGV[4])
        local submitted = redis.call('HGET', KEYS[1], '\(ResultField.submittedAt)') or nr_sid_ms(ARGV[4])
        redis.call('HDEL', KEYS[1], '\(ResultField.runner)', '\(ResultField.startedAt)', '\(ResultField.pid)',
          '\(ResultField.leaseToken)', '\(ResultField.fencingToken)')
        redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.streamId)', sid,
          '\(ResultField.attempt)', ARGV[3], '\(ResultField.queue)', ARGV[7], '\(ResultField.spec)', ARGV[6],
          '\(ResultField.submittedAt)', submitted, '\(ResultField.requeuedFrom)', ARGV[4], '\(ProtocolVersion.field)', NR_V)
        nr_emit(KEYS[3], ARGV[8], '\(EventType.jobHandedBack.rawValue)', ts, ARGV[2], ARGV[1],
          cjson.encode({reason = ARGV[9], queue = ARGV[7], stream_id = sid, previous_stream_id = ARGV[4],
            attempt = tonumber(ARGV[3])}))
        return sid
        """)

    /// KEYS: events. ARGV: type, runner, job, data, events maxlen.
    static let emit = script(
        "emit",
        """
        local wrong = nr_wrong_type({KEYS[1], 'stream'})
        if wrong then return wrong end
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
}
