-- sale_state.lua: read a sale's definition and live figures in one atomic step.
--
-- KEYS[1] sale hash
-- ARGV none
-- Returns {'ok', now_ms, def, total, available, held, sold, ends_ms, paused}
--      or {'sale_not_found', now_ms}
--
-- Invariant: the four counters come from one moment, so a reader always sees
-- available + held + sold == total.
local now = now_ms()
local s = redis.call('HMGET', KEYS[1], 'def', 'total', 'available', 'held', 'sold', 'ends_ms', 'paused')
if not s[1] then return {'sale_not_found', now} end
return {'ok', now, s[1], s[2], s[3], s[4], s[5], s[6], s[7]}
