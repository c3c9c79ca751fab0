-- heartbeat: this consumer is alive for ttl more milliseconds, and listed among the consumers.
-- KEYS[1] heartbeat   KEYS[2] consumers
-- ARGV[1] consumer   ARGV[2] heartbeat (JSON)   ARGV[3] ttl in milliseconds
-- SET replaces whatever squats on our own heartbeat key (we hold the pid lock: the key is ours).
-- The consumer set is written only when it is a set: returns the type found there otherwise
-- ('' when all went well), so a key planted there cannot stop the heartbeat itself.
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'set' and t ~= 'none' then return t end
redis.call('SADD', KEYS[2], ARGV[1])
return ''
