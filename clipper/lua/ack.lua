-- ack: record the result and its reply and remove the item from the processing list, in one step.
-- KEYS[1] processing   KEYS[2] job   KEYS[3] events   KEYS[4] outbox
-- ARGV[1] raw   ARGV[2] status   ARGV[3] result (JSON)   ARGV[4] now   ARGV[5] ttl   ARGV[6] event
-- ARGV[7] reply field   ARGV[8] reply entry (both '' when the message asked for no reply; see outbox.py)
-- Returns the number of items removed, or -1 when the job key holds another type.
if not job_record_ok(KEYS[2]) then return -1 end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
-- (an outbox someone replaced with another type is skipped: the outcome must not fail halfway)
if ARGV[7] ~= '' and job_record_ok(KEYS[4]) then redis.call('HSET', KEYS[4], ARGV[7], ARGV[8]) end
redis.call('PUBLISH', KEYS[3], ARGV[6])
return removed
