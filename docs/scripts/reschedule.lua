-- NativeRunner protocol v1: the reaper's reschedule script, for control planes in any language.
-- It is the script the runner's own reaper runs (RunnerScripts.reschedule); a unit test keeps this file equal to it.
-- Load it once (SCRIPT LOAD) and call it (EVALSHA) for every entry pending for a lost runner's consumer; see
-- docs/protocol.md "Rescheduling (the reaper)" and "Rescheduling from another control plane".
--
-- KEYS[1] {nr}:jobs:<queue>   KEYS[2] {nr}:events   KEYS[3] {nr}:dead
-- ARGV[1] the pending entry's id           ARGV[2] the group: runners
-- ARGV[3] the lost consumer (runner id)    ARGV[4] reason: lease_expired
-- ARGV[5] who acts (the control plane's name, the event's runner field)
-- ARGV[6] events MAXLEN (~), e.g. 100000   ARGV[7] reschedule bound, e.g. 3
-- ARGV[8] dead letters MAXLEN (~)          ARGV[9] result retention in ms, e.g. 604800000
-- ARGV[10] the key prefix {nr}:            ARGV[11] the queue
-- ARGV[12] 1 (the reschedule counts toward the bound)
--
-- Replies: {0} not pending for that consumer (someone else dealt with it); {1} payload gone: acked, job.lost;
-- {2, new id} an entry without a job id, copied for a runner to reject; {3} a stale duplicate: acked and deleted;
-- {4} the job's runner still holds its lease: left alone; {5, dead letter id} rescheduled past the bound: dead;
-- {6, new id} rescheduled: a new entry (attempt raised if it had started), the old one acked and deleted,
-- the record queued, job.rescheduled emitted; {7} the job ran and a cancel was requested (cancel_requested_at):
-- cancelled instead, the entry acked and deleted, job.cancelled emitted (started true).
-- The script, exactly as RunnerScripts.reschedule (do not edit below this line):
local NR_V = '1'
local function nr_now()
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local function nr_emit(key, maxlen, etype, ts, runner, job, data)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'type', etype,
    'ts', ts, 'runner', runner, 'job', job,
    'data', data, 'v', NR_V)
end
local function nr_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'timed_out' or s == 'rejected' or s == 'dead' or s == 'cancelled'
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
  local cur = redis.call('HMGET', job, 'state', 'runner',
    'stream_id', 'lease_token', ...)
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
  local cur = redis.call('HMGET', job, 'state', 'stream_id',
    'runner')
  local text = 'the lease of runner ' .. runner .. ' no longer holds the token of this attempt'
  if why == 'moved' then
    text = 'the job now belongs to another attempt (state ' .. (cur[1] or 'none') .. ', entry '
      .. (cur[2] or 'none') .. ', runner ' .. (cur[3] or 'none') .. ')'
  end
  nr_emit(events, maxlen, 'job.stale_result', nr_now(), runner, id,
    cjson.encode({runner = runner, attempt = tonumber(attempt), stream_id = sid, why = why,
      reason = text, write = write}))
  return -1
end
-- Adds a dead letter: the entry's fields (a flat list) and why. Returns its id.
local function nr_dead_letter(dead, maxlen, flat, reason, source, sid)
  local args = {'XADD', dead, 'MAXLEN', '~', maxlen, '*'}
  local skip = {['reason'] = true, ['source'] = true,
    ['source_id'] = true, ['v'] = true}
  for i = 1, #flat, 2 do
    if not skip[flat[i]] then
      args[#args + 1] = flat[i]; args[#args + 1] = flat[i + 1]
    end
  end
  for _, v in ipairs({'reason', reason, 'source', source,
      'source_id', sid, 'v', NR_V}) do
    args[#args + 1] = v
  end
  return redis.call(unpack(args))
end
local p = redis.call('XPENDING', KEYS[1], ARGV[2], ARGV[1], ARGV[1], 1)
if #p == 0 or p[1][1] ~= ARGV[1] then return {0} end
if p[1][2] ~= ARGV[3] then return {0} end
local ts = nr_now()
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  nr_emit(KEYS[2], ARGV[6], 'job.lost', ts, ARGV[5], '',
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
    if flat[i] ~= 'attempt' and flat[i] ~= 'v' then
      args[#args + 1] = flat[i]; args[#args + 1] = flat[i + 1]
    end
  end
  if attempt then
    args[#args + 1] = 'attempt'; args[#args + 1] = attempt
  end
  args[#args + 1] = 'v'; args[#args + 1] = NR_V
  local sid = redis.call(unpack(args))
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
  return sid
end
local id = f['id']
if not id or id == '' then
  return {2, copy(f['attempt'])}
end
local job = ARGV[10] .. 'job:' .. id
local cur = redis.call('HMGET', job, 'state', 'runner', 'stream_id',
  'lease_token', 'attempt', 'reschedules', 'submitted_at',
  'cancel_requested_at')
if cur[1] and (nr_terminal(cur[1]) or cur[1] == 'retry_scheduled' or (cur[3] and cur[3] ~= ARGV[1])) then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
  return {3}
end
if cur[1] == 'running' and not nr_absent(cur[2]) and not nr_absent(cur[4]) then
  if redis.call('GET', ARGV[10] .. 'runner:' .. cur[2]) == cur[4] then return {4} end
end
local started = cur[1] == 'running'
local attempt = tonumber(f['attempt'] or cur[5] or '1') or 1
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
  local reason = 'cancelled while it ran; its runner was lost before it stopped it: ' .. from
    .. ' (the cancel was requested at ' .. nr_utc(cur[8]) .. ')'
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
  redis.call('HSET', job, 'state', 'cancelled', 'reason', reason,
    'finished_at', ts, 'v', NR_V)
  redis.call('PEXPIRE', job, ARGV[9])
  redis.call('PEXPIRE', ARGV[10] .. 'log:' .. id, ARGV[9])
  nr_emit(KEYS[2], ARGV[6], 'job.cancelled', ts, ARGV[5], id,
    cjson.encode({state = 'cancelled', started = true, previous_state = cur[1],
      attempt = tonumber(cur[5] or '1'), reason = reason, from_runner = from, queue = ARGV[11],
      stream_id = ARGV[1]}))
  return {7}
end
if started and reschedules > tonumber(ARGV[7]) then
  local reason = 'lost with its runner ' .. reschedules .. ' times, more than the bound of ' .. ARGV[7]
    .. ' reschedules (a job that kills its runner?); last lost with runner ' .. from
  local did = nr_dead_letter(KEYS[3], ARGV[8], flat, reason, KEYS[1], ARGV[1])
  redis.call('HSET', job, 'state', 'dead', 'reason', reason,
    'finished_at', ts, 'reschedules', reschedules - 1, 'v', NR_V)
  redis.call('PEXPIRE', job, ARGV[9])
  redis.call('PEXPIRE', ARGV[10] .. 'log:' .. id, ARGV[9])
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
  nr_emit(KEYS[2], ARGV[6], 'job.dead', ts, ARGV[5], id,
    cjson.encode({state = 'dead', reason = reason, reschedules = reschedules - 1,
      attempt = tonumber(cur[5] or '1'), queue = ARGV[11], stream_id = ARGV[1], dead_id = did, from_runner = from}))
  return {5, did}
end
local sid = copy(tostring(attempt))
redis.call('HDEL', job, 'runner', 'started_at', 'pid',
  'lease_token', 'fencing_token')
redis.call('HSET', job, 'state', 'queued', 'stream_id', sid,
  'attempt', tostring(attempt), 'queue', ARGV[11], 'spec', f['spec'] or '',
  'submitted_at', cur[7] or nr_sid_ms(ARGV[1]), 'requeued_from', ARGV[1],
  'reschedules', tostring(reschedules), 'v', NR_V)
nr_emit(KEYS[2], ARGV[6], 'job.rescheduled', ts, ARGV[5], id,
  cjson.encode({from_runner = from, reason = ARGV[4], previous_stream_id = ARGV[1], stream_id = sid,
    attempt = attempt, started = started, reschedules = reschedules, queue = ARGV[11]}))
return {6, sid}
