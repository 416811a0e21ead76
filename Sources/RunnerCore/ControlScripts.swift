import RedisClient
import RunnerProtocol

/// Scripts of the control commands: cancelling a job, and the part of the claim that honours a cancel.
enum ControlScripts {
    /// Lua spliced into the claim script right after it read `cur` (state, runner, attempt, stream id, started at,
    /// lease token, fencing token, failures, cancel requested at): a cancelled job never starts, and a cancel that
    /// was requested while an earlier attempt ran (its runner restarted, or handed it back) is carried out here.
    /// KEYS[6] is the jobs stream, KEYS[7] the log stream, ARGV[12] the group.
    static let claimHonoursCancel = """
        if cur[1] == '\(JobState.cancelled.rawValue)' then
          redis.call('XACK', KEYS[6], ARGV[12], ARGV[4])
          redis.call('XDEL', KEYS[6], ARGV[4])
          return {-6}
        end
        if cur[1] and not nr_absent(cur[9]) and not nr_terminal(cur[1]) and (nr_absent(cur[4]) or cur[4] == ARGV[4])
          and (cur[1] ~= '\(JobState.running.rawValue)' or cur[2] == ARGV[2]) then
          local ts = nr_now()
          \(ControlScripts.utcTimeFunction.replacingOccurrences(of: "\n", with: "\n  "))
          local reason = '\(ControlScripts.cancelledBeforeStart) again (the cancel was requested at '
            .. nr_utc(cur[9]) .. ')'
          -- The ack first: the jobs stream is the key here that may have another type, and a first write that
          -- errors leaves nothing half done.
          redis.call('XACK', KEYS[6], ARGV[12], ARGV[4])
          redis.call('XDEL', KEYS[6], ARGV[4])
          redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.cancelled.rawValue)',
            '\(ResultField.finishedAt)', ts, '\(ResultField.reason)', reason, '\(ProtocolVersion.field)', NR_V)
          redis.call('PEXPIRE', KEYS[1], ARGV[11])
          redis.call('PEXPIRE', KEYS[7], ARGV[11])
          nr_emit(KEYS[2], ARGV[6], '\(EventType.jobCancelled.rawValue)', ts, ARGV[2], ARGV[1],
            cjson.encode({state = '\(JobState.cancelled.rawValue)', started = false, attempt = tonumber(ARGV[3]),
              previous_state = cur[1], reason = reason}))
          return {-6}
        end
        """

    /// Lua: `nr_utc(ms)`, a millisecond epoch (its text) as ISO 8601 UTC with milliseconds
    /// (`2026-12-04T11:02:03.773Z`), for the reasons a person reads; the text as it was when it is no whole number
    /// of milliseconds in the years 1970 to 9999. Redis' Lua has no `os.date`: the date is the civil-from-days
    /// algorithm (Howard Hinnant's `civil_from_days`), in whole numbers only (Lua's numbers are doubles, exact up to
    /// 2^53; 9999's last millisecond is below 2^48). Defined where a script needs it: not on the claim's hot path.
    static let utcTimeFunction = """
        local function nr_utc(ms)
          if type(ms) ~= 'string' or not string.match(ms, '^%d+$') or #ms > 15 then return tostring(ms) end
          local n = tonumber(ms)
          if n > 253402300799999 then return ms end
          local s = math.floor(n / 1000)
          local z = math.floor(s / 86400)
          local sod = s - z * 86400
          -- Days since 0000-03-01, in 400-year eras of 146097 days; a year from March, so that 29 February is last.
          z = z + 719468
          local era = math.floor(z / 146097)
          local doe = z - era * 146097
          local yoe = math.floor(
            (doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
          local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
          local mp = math.floor((5 * doy + 2) / 153)
          local d = doy - math.floor((153 * mp + 2) / 5) + 1
          local m = mp < 10 and mp + 3 or mp - 9
          local y = era * 400 + yoe + (m <= 2 and 1 or 0)
          return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(sod / 3600),
            math.floor(sod / 60) % 60, sod % 60, n - s * 1000)
        end
        """

    static let cancelledBeforeStart = "cancelled before it started"
    /// The start of the reason of a job cancelled while it ran, its runner lost before it could stop it.
    static let cancelledWithItsRunnerLost = "cancelled while it ran; its runner was lost before it stopped it:"

    /// KEYS: job hash, events, delayed set, log stream. ARGV: id, sent by, events maxlen, retention ms, the control
    /// stream prefix (`{nr}:control:`), control stream maxlen, the jobs stream prefix (`{nr}:jobs:`).
    /// `queued` or `retry_scheduled`: the job is `cancelled` now with `job.cancelled`: out of the delayed set, its
    /// entry acked and deleted (so queue lengths and lag stop counting it; a runner that read it already refuses it
    /// at its claim). `running`: `cancel_requested_at` is set and a `cancel`
    /// command goes to the owner's control stream. Returns {1, previous state}, {2, runner, command id}, {0, state}
    /// for a job that has ended, {-1} for no such job.
    static let cancel = RunnerScripts.script(
        "cancel",
        """
        local cur = redis.call('HMGET', KEYS[1], '\(ResultField.state)', '\(ResultField.runner)', '\(ResultField.attempt)',
          '\(ResultField.cancelRequestedAt)', '\(ResultField.queue)', '\(ResultField.streamId)')
        if not cur[1] then return {-1} end
        if nr_terminal(cur[1]) then return {0, cur[1]} end
        -- Each key written here that may have another type, before the first write: the event comes last (the
        -- job was cancelled with an error and no `job.cancelled`), the command after `cancel_requested_at`.
        local checks = {KEYS[2], 'stream', KEYS[3], 'zset'}
        if cur[1] == '\(JobState.running.rawValue)' then
          checks = nr_absent(cur[2]) and {} or {ARGV[5] .. cur[2], 'stream'}
        elseif not nr_absent(cur[5]) and not nr_absent(cur[6]) then
          checks[#checks + 1] = ARGV[7] .. cur[5]; checks[#checks + 1] = 'stream'
        end
        local bad = nr_wrong_type(checks)
        if bad then return bad end
        local ts = nr_now()
        if cur[1] ~= '\(JobState.running.rawValue)' then
          local reason = '\(ControlScripts.cancelledBeforeStart) (by ' .. ARGV[2] .. ')'
          redis.call('ZREM', KEYS[3], ARGV[1])
          if not nr_absent(cur[5]) and not nr_absent(cur[6]) then
            local stream = ARGV[7] .. cur[5]
            if redis.call('EXISTS', stream) == 1 then
              redis.call('XACK', stream, '\(Keyspace.consumerGroup)', cur[6])
              redis.call('XDEL', stream, cur[6])
            end
          end
          -- What an earlier attempt's end left (a retry_scheduled job's exit code, signal, tail) is not this end's.
          redis.call('HDEL', KEYS[1], \(RunnerScripts.clearedOnStart))
          redis.call('HSET', KEYS[1], '\(ResultField.state)', '\(JobState.cancelled.rawValue)', '\(ResultField.finishedAt)', ts,
            '\(ResultField.reason)', reason, '\(ResultField.cancelRequestedAt)', ts, '\(ProtocolVersion.field)', NR_V)
          redis.call('PEXPIRE', KEYS[1], ARGV[4])
          redis.call('PEXPIRE', KEYS[4], ARGV[4])
          nr_emit(KEYS[2], ARGV[3], '\(EventType.jobCancelled.rawValue)', ts, '', ARGV[1],
            cjson.encode({state = '\(JobState.cancelled.rawValue)', started = false, previous_state = cur[1],
              attempt = tonumber(cur[3]), reason = reason, sent_by = ARGV[2]}))
          return {1, cur[1]}
        end
        if nr_absent(cur[4]) then redis.call('HSET', KEYS[1], '\(ResultField.cancelRequestedAt)', ts) end
        if nr_absent(cur[2]) then return {2, '', ''} end
        local cid = redis.call('XADD', ARGV[5] .. cur[2], 'MAXLEN', '~', ARGV[6], '*',
          '\(ControlField.command)', '\(ControlCommandName.cancel.rawValue)', '\(ControlField.job)', ARGV[1],
          '\(ControlField.sentBy)', ARGV[2], '\(ProtocolVersion.field)', NR_V)
        return {2, cur[2], cid}
        """)
}
