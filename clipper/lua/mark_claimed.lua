-- mark_claimed: count the attempt and mark the job running.
-- KEYS[1] job (Q:job:<id>)
-- ARGV[1] now
-- Returns the attempt number, or -1 when the job key holds another type (nothing written).
-- The attempt is counted at claim time, so a message that kills the daemon every time is still
-- counted (and buried after retry.max_attempts). A finished record (done/failed) means this is
-- a new submission of the same message.
if not job_record_ok(KEYS[1]) then return -1 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' then redis.call('HDEL', KEYS[1], 'attempts', 'result', 'finished_at') end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'updated_at', ARGV[1], 'progress', 'claimed')
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1])
redis.call('PERSIST', KEYS[1])
return attempts
