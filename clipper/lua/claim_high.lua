-- claim_high: a free worker takes high-priority work before normal work.
-- KEYS[1] queue (Q)   KEYS[2] high lane (Q:high)   KEYS[3] processing
-- ARGV[1] scan: how many of the newest items of Q to look at
-- Returns the item moved from Q:high to processing, or false (the caller then BLMOVEs from Q).
-- High messages a producer LPUSHed to Q rather than Q:high are first moved to the high lane,
-- oldest first, when they are among the newest ARGV[1] items: a bounded look, so a claim never
-- walks a deep queue.
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for i = #items, 1, -1 do
  local raw = items[i]
  if string.find(raw, '"priority"', 1, true) then
    local ok, message = pcall(cjson.decode, raw)
    if ok and type(message) == 'table' and message['priority'] == 'high' then
      if redis.call('LREM', KEYS[1], -1, raw) == 1 then redis.call('LPUSH', KEYS[2], raw) end
    end
  end
end
return redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'LEFT')
