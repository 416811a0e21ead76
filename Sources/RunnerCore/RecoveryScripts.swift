import RedisClient
import RunnerProtocol

/// Scripts of leases, rescheduling, delayed retries and the registry: what keeps a pool whole when runners die.
///
/// Scripts that act on an entry they have just read (reschedule, mover) derive the job's keys from the pool's key
/// prefix `{nr}:`; every key of a pool shares that hash tag, so they stay in one Redis Cluster slot.
extension RunnerScripts {
    /// KEYS: lease, fencing counter. ARGV: token, ttl ms.
    /// SET lease token NX PX ttl; on success the new epoch's number (INCR of the fencing counter), else nil.
    static let acquireLease = script(
        "acquire_lease",
        """
        if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return nil end
        return redis.call('INCR', KEYS[2])
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

    /// KEYS: lease, fencing counter. ARGV: old token, new token, ttl ms.
    /// Ends an epoch: replaces the old token if this runner still holds it, or takes the lease if it is free.
    /// Returns {new epoch number, 1 if the old token was still held else 0}, or nil when another runner holds it.
    /// A resent call finds the new token and answers the same epoch.
    static let rotateLease = script(
        "rotate_lease",
        """
        local held = redis.call('GET', KEYS[1])
        if held == ARGV[2] then
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
          return {tonumber(redis.call('GET', KEYS[2]) or '0'), 0}
        end
        if held and held ~= ARGV[1] then return nil end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        return {redis.call('INCR', KEYS[2]), held and 1 or 0}
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

    /// KEYS: jobs stream, events, dead stream. ARGV: stream id, group, consumer it is pending for, reason, acting
    /// runner, events maxlen, reschedule bound, dead maxlen, retention ms, key prefix, queue, whether it counts toward
    /// the bound ("0" when a live runner moves what its own ended epoch held).
    ///
    /// Reschedules one pending entry of a consumer whose lease is gone (or of the caller's own earlier epoch), all in
    /// one step, so that a crash leaves nothing half done and two reapers never both requeue it:
    /// - not pending for that consumer any more: nothing ({0});
    /// - payload gone: acked and reported as `job.lost` ({1});
    /// - the job ended, waits for a retry, or points at another entry: a stale duplicate, acked and deleted ({3});
    /// - the job runs and its recorded runner's lease still holds the recorded token: that runner lives, nothing
    ///   ({4});
    /// - the job ran, a cancel was requested (`cancel_requested_at`) and its runner is lost: `cancelled`, the entry
    ///   acked and deleted, `job.cancelled` with `started` true ({7});
    /// - rescheduled more often than the bound: `dead`, a dead letter, `job.dead` ({5, dead id});
    /// - otherwise a new entry (attempt raised if the attempt had started), the old one acked and deleted, the record
    ///   `queued`, and `job.rescheduled` ({6, new entry id}).
    /// Entries without a job id are copied as they are ({2, new entry id}): a runner rejects them.
    static let reschedule = script(
        "reschedule",
        """
        local p = redis.call('XPENDING', KEYS[1], ARGV[2], ARGV[1], ARGV[1], 1)
        if #p == 0 or p[1][1] ~= ARGV[1] then return {0} end
        if p[1][2] ~= ARGV[3] then return {0} end
        local ts = nr_now()
        local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
        if #e == 0 then
          redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
          nr_emit(KEYS[2], ARGV[6], '\(EventType.jobLost.rawValue)', ts, ARGV[5], '',
            cjson.encode({reason = 'the entry payload was deleted or trimmed before it was processed',
              queue = ARGV[11], stream_id = ARGV[1], from_runner = ARGV[3]}))
          return {1}
        end
        local flat = e[1][2]
        local f = {}
        for i = 1, #flat, 2 do
          if f[flat[i]] == nil then f[flat[i]] = flat[i + 1] end
        end
        local function copy(attempt)
          local args = {'XADD', KEYS[1], '*'}
          for i = 1, #flat, 2 do
            if flat[i] ~= '\(JobEntryField.attempt)' and flat[i] ~= '\(ProtocolVersion.field)' then
              args[#args + 1] = flat[i]; args[#args + 1] = flat[i + 1]
            end
          end
          if attempt then
            args[#args + 1] = '\(JobEntryField.attempt)'; args[#args + 1] = attempt
          end
          args[#args + 1] = '\(ProtocolVersion.field)'; args[#args + 1] = NR_V
          local sid = redis.call(unpack(args))
          redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
          redis.call('XDEL', KEYS[1], ARGV[1])
          return sid
        end
        local id = f['\(JobEntryField.id)']
        if not id or id == '' then
          return {2, copy(f['\(JobEntryField.attempt)'])}
        end
        local job = ARGV[10] .. 'job:' .. id
        local cur = redis.call('HMGET', job, '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.streamId)',
          '\(ResultField.leaseToken)', '\(ResultField.attempt)', '\(ResultField.reschedules)', '\(ResultField.submittedAt)',
          '\(ResultField.cancelRequestedAt)')
        if cur[1] and (nr_terminal(cur[1]) or cur[1] == '\(JobState.retryScheduled.rawValue)' or (cur[3] and cur[3] ~= ARGV[1])) then
          redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
          redis.call('XDEL', KEYS[1], ARGV[1])
          return {3}
        end
        if cur[1] == '\(JobState.running.rawValue)' and not nr_absent(cur[2]) and not nr_absent(cur[4]) then
          if redis.call('GET', ARGV[10] .. 'runner:' .. cur[2]) == cur[4] then return {4} end
        end
        local started = cur[1] == '\(JobState.running.rawValue)'
        local attempt = tonumber(f['\(JobEntryField.attempt)'] or cur[5] or '1') or 1
        local reschedules = tonumber(cur[6] or '0') or 0
        if started then
          attempt = math.max(attempt, tonumber(cur[5] or '0') or 0) + 1
          -- ARGV[12] '0': a live runner moving what its own ended epoch held (Redis was away, not the job's fault).
          if ARGV[12] ~= '0' then reschedules = reschedules + 1 end
        end
        local from = nr_absent(cur[2]) and ARGV[3] or cur[2]
        -- Cancelled while it ran, and its runner lost before it could stop it: the cancel is carried out here, so
        -- that it needs no runner to claim the job again (none may be left).
        if started and not nr_absent(cur[8]) then
          local bad = nr_wrong_type({KEYS[2], 'stream'})
          if bad then return bad end
          \(ControlScripts.utcTimeFunction.replacingOccurrences(of: "\n", with: "\n  "))
          local reason = '\(ControlScripts.cancelledWithItsRunnerLost) ' .. from
            .. ' (the cancel was requested at ' .. nr_utc(cur[8]) .. ')'
          redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
          redis.call('XDEL', KEYS[1], ARGV[1])
          redis.call('HSET', job, '\(ResultField.state)', '\(JobState.cancelled.rawValue)', '\(ResultField.reason)', reason,
            '\(ResultField.finishedAt)', ts, '\(ProtocolVersion.field)', NR_V)
          redis.call('PEXPIRE', job, ARGV[9])
          redis.call('PEXPIRE', ARGV[10] .. 'log:' .. id, ARGV[9])
          nr_emit(KEYS[2], ARGV[6], '\(EventType.jobCancelled.rawValue)', ts, ARGV[5], id,
            cjson.encode({state = '\(JobState.cancelled.rawValue)', started = true, previous_state = cur[1],
              attempt = tonumber(cur[5] or '1'), reason = reason, from_runner = from, queue = ARGV[11],
              stream_id = ARGV[1]}))
          return {7}
        end
        if started and reschedules > tonumber(ARGV[7]) then
          local reason = 'lost with its runner ' .. reschedules .. ' times, more than the bound of ' .. ARGV[7]
            .. ' reschedules (a job that kills its runner?); last lost with runner ' .. from
          local did = nr_dead_letter(KEYS[3], ARGV[8], flat, reason, KEYS[1], ARGV[1])
          redis.call('HSET', job, '\(ResultField.state)', '\(JobState.dead.rawValue)', '\(ResultField.reason)', reason,
            '\(ResultField.finishedAt)', ts, '\(ResultField.reschedules)', reschedules - 1, '\(ProtocolVersion.field)', NR_V)
          redis.call('PEXPIRE', job, ARGV[9])
          redis.call('PEXPIRE', ARGV[10] .. 'log:' .. id, ARGV[9])
          redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
          redis.call('XDEL', KEYS[1], ARGV[1])
          nr_emit(KEYS[2], ARGV[6], '\(EventType.jobDead.rawValue)', ts, ARGV[5], id,
            cjson.encode({state = '\(JobState.dead.rawValue)', reason = reason, reschedules = reschedules - 1,
              attempt = tonumber(cur[5] or '1'), queue = ARGV[11], stream_id = ARGV[1], dead_id = did, from_runner = from}))
          return {5, did}
        end
        local sid = copy(tostring(attempt))
        redis.call('HDEL', job, '\(ResultField.runner)', '\(ResultField.startedAt)', '\(ResultField.pid)',
          '\(ResultField.leaseToken)', '\(ResultField.fencingToken)')
        redis.call('HSET', job, '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.streamId)', sid,
          '\(ResultField.attempt)', tostring(attempt), '\(ResultField.queue)', ARGV[11], '\(ResultField.spec)', f['\(JobEntryField.spec)'] or '',
          '\(ResultField.submittedAt)', cur[7] or nr_sid_ms(ARGV[1]), '\(ResultField.requeuedFrom)', ARGV[1],
          '\(ResultField.reschedules)', tostring(reschedules), '\(ProtocolVersion.field)', NR_V)
        nr_emit(KEYS[2], ARGV[6], '\(EventType.jobRescheduled.rawValue)', ts, ARGV[5], id,
          cjson.encode({from_runner = from, reason = ARGV[4], previous_stream_id = ARGV[1], stream_id = sid,
            attempt = attempt, started = started, reschedules = reschedules, queue = ARGV[11]}))
        return {6, sid}
        """)

    /// The mover, shared by `moveDue` and `leadAndMove`: moves the retries that are due (by Redis's clock) back onto
    /// their queues. Each one is ZREM'd in the script of its XADD, so it moves exactly once however many movers run.
    /// Returns {moved, ms until the next is due or -1 when none waits}. It looks at the first retry before anything
    /// else: an empty set (an idle pool's) costs one ZRANGE, one whose first retry is not due yet that and the clock.
    private static let mover = """
        local function nr_move_due(delayed, prefix, limit)
          local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
          if #nxt < 2 then return {0, -1} end
          local ts = nr_now()
          if tonumber(nxt[2]) > tonumber(ts) then return {0, tonumber(nxt[2]) - tonumber(ts)} end
          local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', ts, 'LIMIT', 0, limit)
          local moved = 0
          for _, id in ipairs(due) do
            local job = prefix .. 'job:' .. id
            local cur = {}
            if redis.call('TYPE', job)['ok'] == 'hash' then
              cur = redis.call('HMGET', job, '\(ResultField.state)', '\(ResultField.queue)', '\(ResultField.spec)',
                '\(ResultField.attempt)')
            end
            local movable = cur[1] == '\(JobState.retryScheduled.rawValue)' and cur[2] and cur[3]
            -- A queue's jobs stream of another type (someone SET a string there) would fail the XADD: the retry waits
            -- in the set until the key is fixed.
            local waits = movable and nr_wrong_type({prefix .. 'jobs:' .. cur[2], 'stream'})
            if not movable then
              redis.call('ZREM', delayed, id)
            elseif not waits then
              -- The XADD is the first write: one Redis refuses (a stream whose last id is the largest there is,
              -- after an XADD with that id by hand) leaves the retry waiting in the set, not taken out and lost.
              local sid = redis.pcall('XADD', prefix .. 'jobs:' .. cur[2], '*', '\(JobEntryField.id)', id,
                '\(JobEntryField.spec)', cur[3], '\(JobEntryField.attempt)', cur[4] or '1', '\(ProtocolVersion.field)', NR_V)
              if type(sid) == 'string' then
                redis.call('ZREM', delayed, id)
                redis.call('HSET', job, '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.streamId)', sid)
                redis.call('HDEL', job, '\(ResultField.retryAt)')
                moved = moved + 1
              end
            end
          end
          nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
          if #nxt < 2 then return {moved, -1} end
          return {moved, math.max(0, tonumber(nxt[2]) - tonumber(ts))}
        end

        """

    /// KEYS: delayed set. ARGV: key prefix, most to move. Moves due retries (see `mover`).
    static let moveDue = script(
        "move_due",
        mover + """
            return nr_move_due(KEYS[1], ARGV[1], tonumber(ARGV[2]))
            """)

    /// KEYS: reaper leader lease, delayed set. ARGV: token, ttl ms, key prefix, most to move.
    /// A reaper's turn in one step: keeps the leader lease (compare-and-extend) or takes it when free (SET NX PX),
    /// and as the leader moves due retries. Returns {1, moved, ms until the next is due or -1} for the leader, {0}
    /// when another reaper leads.
    static let leadAndMove = script(
        "lead_and_move",
        mover + """
            local held = redis.call('GET', KEYS[1])
            if held == ARGV[1] then
              redis.call('PEXPIRE', KEYS[1], ARGV[2])
            elseif not held then
              redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            else
              return {0, held}
            end
            local moved = nr_move_due(KEYS[2], ARGV[3], tonumber(ARGV[4]))
            return {1, moved[1], moved[2]}
            """)

    /// KEYS: job hash, events, delayed set. ARGV: id, events maxlen, key prefix, acting name.
    /// Requeues a `dead`, `failed` or `timed_out` job by hand: a new entry with the attempt raised, failures and
    /// reschedules reset, `job.requeued`. Returns {1, stream id, attempt}, or {0, state} (state '' for no such job)
    /// when the job is in no state to be retried.
    static let requeueByHand = script(
        "requeue_by_hand",
        """
        local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.queue)', '\(ResultField.spec)',
          '\(ResultField.attempt)', '\(ResultField.streamId)')
        if not cur[1] then return {0, ''} end
        if not (cur[1] == '\(JobState.dead.rawValue)' or cur[1] == '\(JobState.failed.rawValue)' or cur[1] == '\(JobState.timedOut.rawValue)')
          or not cur[2] or not cur[3] then
          return {0, cur[1]}
        end
        -- The XADD is the first write; the delayed set and the events stream come after it.
        local bad = nr_wrong_type({ARGV[3] .. 'jobs:' .. cur[2], 'stream', KEYS[3], 'zset', KEYS[2], 'stream'})
        if bad then return bad end
        local ts = nr_now()
        local attempt = tostring((tonumber(cur[4] or '0') or 0) + 1)
        local sid = redis.call('XADD', ARGV[3] .. 'jobs:' .. cur[2], '*', '\(JobEntryField.id)', ARGV[1],
          '\(JobEntryField.spec)', cur[3], '\(JobEntryField.attempt)', attempt, '\(ProtocolVersion.field)', NR_V)
        redis.call('ZREM', KEYS[3], ARGV[1])
        redis.call('PERSIST', KEYS[1])
        redis.call('PERSIST', ARGV[3] .. 'log:' .. ARGV[1])
        redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.queued.rawValue)', '\(ResultField.streamId)', sid,
          '\(ResultField.attempt)', attempt, '\(ResultField.failures)', '0', '\(ResultField.reschedules)', '0',
          '\(ResultField.requeuedFrom)', cur[5] or '', '\(ProtocolVersion.field)', NR_V)
        nr_emit(KEYS[2], ARGV[2], '\(EventType.jobRequeued.rawValue)', ts, ARGV[4], ARGV[1],
          cjson.encode({queue = cur[2], stream_id = sid, attempt = tonumber(attempt), previous_state = cur[1]}))
        return {1, sid, attempt}
        """)

    /// KEYS: registry, the runner's lease, events. ARGV: runner id, record as read ('' when there was none), the
    /// record marked lost (its `lost_at` from Redis's clock, read by the reaper), events maxlen, event data.
    /// Marks a runner whose lease is gone as `lost` and emits `runner.lost`, once: only when the lease is still
    /// missing and the record is still the one read (a resent call, or a runner that came back, changes nothing).
    static let markLost = script(
        "mark_lost",
        """
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
        local ts = nr_now()
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
        nr_emit(KEYS[3], ARGV[4], ARGV[6] or '\(EventType.runnerLost.rawValue)', ts, ARGV[1], '', ARGV[5])
        return 1
        """)

    /// KEYS: registry, the runner's lease. ARGV: runner id, record as read.
    /// Removes a lost runner's record after its retention, unless the runner came back meanwhile.
    static let forgetRunner = script(
        "forget_runner",
        """
        if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
        if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
        return redis.call('HDEL', KEYS[1], ARGV[1])
        """)
}
