-- promote: due retries go to the consuming end of Q and their records say so.
-- KEYS[1] retry   KEYS[2] queue   KEYS[3] events   KEYS[3 + i] job_i for i = 1..n
-- ARGV[1] now   ARGV[2] n   then for each i: ARGV[1 + 2i] member_i, ARGV[2 + 2i] event_i
-- Returns the indexes i moved. Python read the due members (to name their jobs); one another
-- daemon promoted meanwhile is skipped. A record of another type is left alone (the item
-- still moves: it will be dead-lettered as it is when its outcome cannot be recorded).
local n = tonumber(ARGV[2])
local moved = {}
for i = 1, n do
  local member, event = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    redis.call('RPUSH', KEYS[2], string.sub(member, 10))
    if job_record_ok(KEYS[3 + i]) then
      redis.call('HSET', KEYS[3 + i], 'status', 'queued', 'updated_at', ARGV[1], 'progress', 'retry due')
    end
    redis.call('PUBLISH', KEYS[3], event)
    moved[#moved + 1] = i
  end
end
return moved
