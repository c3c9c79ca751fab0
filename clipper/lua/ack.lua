-- ack: record the result and remove the item from the processing list, in one step.
-- KEYS[1] processing   KEYS[2] job   KEYS[3] events
-- ARGV[1] raw   ARGV[2] status   ARGV[3] result (JSON)   ARGV[4] now   ARGV[5] ttl   ARGV[6] event
-- Returns the number of items removed, or -1 when the job key holds another type.
if not job_record_ok(KEYS[2]) then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('PUBLISH', KEYS[3], ARGV[6])
return removed
