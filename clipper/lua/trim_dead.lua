-- trim_dead: dead-letter retention. Dead letters are LPUSHed, so the oldest are at the right:
-- drop from there those beyond the count and those older than the cutoff, and count them.
-- KEYS[1] dead   KEYS[2] dropped (a counter)
-- ARGV[1] max entries (0: no limit)   ARGV[2] cutoff, a failed_at (0: no limit)
-- ARGV[3] batch: at most this many dropped by age per call (keeps the script short)
-- Returns how many were dropped. An entry whose failed_at cannot be read is dropped by age:
-- it sits at the old end.
local dropped = 0
local max = tonumber(ARGV[1])
if max > 0 then
  local excess = redis.call('LLEN', KEYS[1]) - max
  if excess > 0 then
    redis.call('LTRIM', KEYS[1], 0, max - 1)
    dropped = excess
  end
end
local cutoff = tonumber(ARGV[2])
if cutoff > 0 then
  for _ = 1, tonumber(ARGV[3]) do
    local last = redis.call('LINDEX', KEYS[1], -1)
    if not last then break end
    local ok, entry = pcall(cjson.decode, last)
    local at = ok and type(entry) == 'table' and tonumber(entry['failed_at'])
    if at and at >= cutoff then break end
    redis.call('RPOP', KEYS[1])
    dropped = dropped + 1
  end
end
if dropped > 0 then redis.call('INCRBY', KEYS[2], dropped) end
return dropped
