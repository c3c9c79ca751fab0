-- Prepended by clipper.queue to every script that writes a job record (Q:job:<id>).
-- Lua does not roll back, so an error halfway (WRONGTYPE on a key someone else wrote) could
-- leave an item moved without its record, or in no place at all. Each such script asks first:
-- a record key of another type leaves the item where it was (the script returns -1) and the
-- caller dead-letters it as it is (bury_as_is).
local function job_record_ok(key)
  local t = redis.call('TYPE', key)['ok']
  return t == 'hash' or t == 'none'
end
