-- bury: dead-letter the item with the reason and record the failed result, in one step.
-- KEYS[1] processing   KEYS[2] dead   KEYS[3] job   KEYS[4] events
-- ARGV[1] raw   ARGV[2] dead entry (JSON)   ARGV[3] result (JSON)   ARGV[4] now   ARGV[5] ttl   ARGV[6] event
-- Returns 1 moved, 0 not held, -1 when the job key holds another type.
if not job_record_ok(KEYS[3]) then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'failed', 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', 'failed')
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
redis.call('PUBLISH', KEYS[4], ARGV[6])
return 1
