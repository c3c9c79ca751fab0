-- bury_as_is: the last resort when the job's own keys cannot be written (e.g. another type
-- under Q:job:<id>): the item still ends up dead. Writes no job key.
-- KEYS[1] processing   KEYS[2] dead
-- ARGV[1] raw   ARGV[2] dead entry (JSON)
-- Returns 1 moved, 0 not held.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
