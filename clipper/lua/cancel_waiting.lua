-- cancel_waiting: a queued or retrying item leaves its place and is finished as cancelled.
-- KEYS[1] place (Q, Q:high or Q:retry)   KEYS[2] job   KEYS[3] events   KEYS[4] outbox
-- ARGV[1] member (the raw item; in Q:retry with its nonce)   ARGV[2] kind: list or zset
-- ARGV[3] result (JSON)   ARGV[4] now   ARGV[5] ttl   ARGV[6] event
-- ARGV[7] reply field   ARGV[8] reply entry (both '' when the message asked for no reply; see outbox.py)
-- Returns 1, 0 when the item was not there any more (claimed or promoted meanwhile), or -1
-- when the job key holds another type.
if not job_record_ok(KEYS[2]) then return -1 end
local removed
if ARGV[2] == 'zset' then
  removed = redis.call('ZREM', KEYS[1], ARGV[1])
else
  removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
end
if removed == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', 'cancelled', 'result', ARGV[3], 'finished_at', ARGV[4], 'updated_at', ARGV[4],
           'progress', 'cancelled')
redis.call('HDEL', KEYS[2], 'cancel_requested')
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
if ARGV[7] ~= '' and job_record_ok(KEYS[4]) then redis.call('HSET', KEYS[4], ARGV[7], ARGV[8]) end
redis.call('PUBLISH', KEYS[3], ARGV[6])
return 1
