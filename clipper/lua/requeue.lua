-- requeue: put a held item back at the consuming end of Q (it was next in line).
-- KEYS[1] processing   KEYS[2] queue   KEYS[3] job   KEYS[4] events
-- ARGV[1] raw   ARGV[2] now   ARGV[3] event
-- ARGV[4] uncount: '1' when the attempt was cut short by our own shutdown (not the message's
--         fault), so it is not counted
-- Returns 1 moved, 0 not held, -1 when the job key holds another type.
if not job_record_ok(KEYS[3]) then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
if ARGV[4] == '1' and tonumber(redis.call('HGET', KEYS[3], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[3], 'attempts', -1)
end
redis.call('HSET', KEYS[3], 'status', 'queued', 'updated_at', ARGV[2], 'progress', 'requeued')
redis.call('PUBLISH', KEYS[4], ARGV[3])
return 1
