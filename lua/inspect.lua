-- inspect.lua: one consistent snapshot of a sale's figures, for reconcile.
--
-- KEYS[1] sale hash   KEYS[2] deadline index   KEYS[3] outbox   KEYS[4] dead letters
-- ARGV[1] grace ms: holds past their deadline by more than this count as unreaped
-- Returns {'ok', now_ms, total, available, held, sold, overdue_holds,
--          outbox_entries, dead_letters, oldest_outbox_age_ms}
--         or {'sale_not_found', now_ms}
--   oldest_outbox_age_ms is 0 for an empty outbox; entry ids are Redis's own
--   millisecond clock (XADD *), so the age needs no field of the entry.
--
-- Invariant: read-only; every figure comes from the same moment.
local now = now_ms()
local s = redis.call('HMGET', KEYS[1], 'total', 'available', 'held', 'sold')
if not s[1] then return {'sale_not_found', now} end
local overdue = redis.call('ZCOUNT', KEYS[2], '-inf', now - tonumber(ARGV[1]))
local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
local age = 0
if oldest[1] then
  age = math.max(0, now - tonumber(string.match(oldest[1][1], '^(%d+)')))
end
return {'ok', now, s[1], s[2], s[3], s[4], overdue,
  redis.call('XLEN', KEYS[3]), redis.call('XLEN', KEYS[4]), age}
