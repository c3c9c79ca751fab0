-- dead_retry: move one dead letter back to Q with a fresh attempt count (an operator decided
-- it deserves another round).
-- KEYS[1] dead   KEYS[2] queue   KEYS[3] job
-- ARGV[1] dead entry (JSON)   ARGV[2] raw   ARGV[3] now
-- Returns 1 moved, 0 gone meanwhile, -1 when the job key holds another type (left in dead).
if not job_record_ok(KEYS[3]) then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'queued', 'attempts', 0, 'updated_at', ARGV[3], 'progress', 'requeued from dead')
return 1
