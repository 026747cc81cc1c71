-- retire.lua: let go of a sale that is over, for the worker's loops.
--
-- KEYS[1] sale hash   KEYS[2] outbox   KEYS[3] events stream
-- ARGV none
-- Returns {'retired'|'active', now_ms} or {'sale_not_found', now_ms}
--
-- Invariant: a sale is retired only once nothing can change it any more:
-- it has ended (no reserve is accepted), no unit is held (no confirm,
-- release or expiry can follow) and its outbox and events stream are empty
-- (every order and event is in Postgres). An adjustment that moves its end clears `retired`, and the
-- worker puts the sale back in its loops.
local now = now_ms()
local s = redis.call('HMGET', KEYS[1], 'ends_ms', 'held')
if not s[1] then return {'sale_not_found', now} end
if now < tonumber(s[1]) or tonumber(s[2]) ~= 0 or redis.call('XLEN', KEYS[2]) ~= 0
  or redis.call('XLEN', KEYS[3]) ~= 0 then
  return {'active', now}
end
redis.call('HSET', KEYS[1], 'retired', 1)
return {'retired', now}
