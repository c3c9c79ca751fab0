-- Prepended by clipper.queue to every script that writes a job record (Q:job:<id>).
-- Lua does not roll back, so an error halfway (WRONGTYPE on a key someone else wrote) could
-- leave an item moved without its record, or in no place at all. Each such script asks first:
-- a record key of another type leaves the item where it was (the script returns -1) and the
-- caller dead-letters it as it is (bury_as_is).
local function job_record_ok(key)
  local t = redis.call('TYPE', key)['ok']
  return t == 'hash' or t == 'none'
end
-- The same question for the list or sorted set an item moves into (Q, Q:dead, Q:retry): a key
-- someone planted there leaves the item where it was (the script returns -2, writes nothing).
local function holds(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == kind or t == 'none'
end
