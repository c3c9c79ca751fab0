-- outbox_delivered: remove a reply once it is on its reply_to list, unless a newer reply for the
-- same job and reply_to (the job redone meanwhile) replaced it: that one is still to be delivered.
-- KEYS[1] outbox
-- ARGV[1] field (<job id>|<reply_to>)   ARGV[2] the entry that was delivered
-- Returns 1 removed, 0 left (replaced or already gone).
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
