-- bury: dead-letter the item with the reason and record the failed result and its reply, in one step.
-- KEYS[1] processing   KEYS[2] dead   KEYS[3] job   KEYS[4] events   KEYS[5] outbox
-- ARGV[1] raw   ARGV[2] dead entry (JSON)   ARGV[3] result (JSON)   ARGV[4] now   ARGV[5] ttl   ARGV[6] event
-- ARGV[7] reply field   ARGV[8] reply entry (both '' when the message asked for no reply; see outbox.py)
-- Returns 1 moved, 0 not held, -1 when the job key holds another type, -2 when Q:dead does.
if not job_record_ok(KEYS[3]) then return -1 end
if not holds(KEYS[2], 'list') then return -2 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'status', 'failed', 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', 'failed')
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
-- (an outbox someone replaced with another type is skipped: the outcome must not fail halfway)
if ARGV[7] ~= '' and job_record_ok(KEYS[5]) then redis.call('HSET', KEYS[5], ARGV[7], ARGV[8]) end
redis.call('PUBLISH', KEYS[4], ARGV[6])
return 1
