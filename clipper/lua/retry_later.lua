-- retry_later: move the item from the processing list to Q:retry, due at ARGV[3].
-- KEYS[1] processing   KEYS[2] retry   KEYS[3] job   KEYS[4] events
-- ARGV[1] raw   ARGV[2] member (nonce|raw)   ARGV[3] due   ARGV[4] now   ARGV[5] event   ARGV[6] error
-- ARGV[7] uncount: '1' when the failure was not the message's (the output was down), so no
--         attempt is used up
-- Returns 1 moved, 0 not held, -1 when the job key holds another type.
if not job_record_ok(KEYS[3]) then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[2])
if ARGV[7] == '1' and tonumber(redis.call('HGET', KEYS[3], 'attempts') or '0') > 0 then
  redis.call('HINCRBY', KEYS[3], 'attempts', -1)
end
redis.call('HSET', KEYS[3], 'status', 'retrying', 'due_at', ARGV[3], 'updated_at', ARGV[4], 'last_error', ARGV[6])
redis.call('PUBLISH', KEYS[4], ARGV[5])
return 1
