-- request_cancel: flag a job a daemon holds; that daemon (or the next to claim it) kills it and
-- finishes it as cancelled, within a second.
-- KEYS[1] job
-- ARGV[1] now
-- Returns 'cancelling'; the status of a finished job (done, failed, cancelled), left as it is;
-- or -1 when the job key holds another type.
if not job_record_ok(KEYS[1]) then return -1 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' or status == 'cancelled' then return status end
redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[1], 'updated_at', ARGV[1])
return 'cancelling'
