-- sale_state.lua: read a sale's definition and live figures in one atomic step.
--
-- KEYS[1] sale hash   KEYS[2] room hash
-- ARGV none
-- Returns {'ok', now_ms, def, total, available, held, sold, ends_ms, paused,
--          [opens_ms, rate, burst, adm_ms: the waiting room, if any]}
--      or {'sale_not_found', now_ms}
--
-- Invariant: the four counters come from one moment, so a reader always sees
-- available + held + sold == total.
local now = now_ms()
local s = redis.call('HMGET', KEYS[1], 'def', 'total', 'available', 'held', 'sold', 'ends_ms',
  'paused', 'room')
if not s[1] then return {'sale_not_found', now} end
local out = {'ok', now, s[1], s[2], s[3], s[4], s[5], s[6], s[7]}
if s[8] == '1' then
  local q = redis.call('HMGET', KEYS[2], 'opens_ms', 'rate', 'burst', 'adm_ms')
  if q[1] then
    for i = 1, 4 do out[#out + 1] = q[i] end
  end
end
return out
