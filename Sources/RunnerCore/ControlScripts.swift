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
          local reason = '\(ControlScripts.cancelledBeforeStart) again (the cancel was requested at ' .. cur[9] .. ')'
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
          redis.call('HDEL', KEYS[1], '\(ResultField.retryAt)')
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
