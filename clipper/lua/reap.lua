-- reap: move a consumer's items back to the consuming end of Q, oldest consumed first, unless
-- its heartbeat is alive (force: our own leftovers, we hold the pid lock).
-- KEYS[1] processing   KEYS[2] queue   KEYS[3] heartbeat   KEYS[4] consumers   KEYS[5] events
-- KEYS[5 + i] job_i for i = 1..n
-- ARGV[1] consumer   ARGV[2] force ('1')   ARGV[3] now   ARGV[4] reason   ARGV[5] n
-- then for each i: ARGV[4 + 2i] raw_i, ARGV[5 + 2i] event_i (the list as Python read it)
-- Returns -1 when the heartbeat is alive, else the indexes i moved (0: an item Python had not read).
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local n = tonumber(ARGV[5])
local moved = {}
for i = 1, n do
  local raw, event = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if redis.call('LREM', KEYS[1], 1, raw) == 1 then
    redis.call('RPUSH', KEYS[2], raw)
    if job_record_ok(KEYS[5 + i]) then
      redis.call('HSET', KEYS[5 + i], 'status', 'queued', 'updated_at', ARGV[3], 'progress', ARGV[4])
    end
    redis.call('PUBLISH', KEYS[5], event)
    moved[#moved + 1] = i
  end
end
-- anything not in the list Python read (it cannot grow for a dead consumer; belt and braces)
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved[#moved + 1] = 0 end
if ARGV[2] ~= '1' then redis.call('SREM', KEYS[4], ARGV[1]) end
return moved
