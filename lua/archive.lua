-- archive.lua: close a sale that is over, for good, before its keys go.
--
-- KEYS[1] sale hash   KEYS[2] outbox   KEYS[3] dead letters   KEYS[4] events stream
-- ARGV[1] dead letters already copied to Postgres
-- Returns {'archived', now_ms, total, sold} (also when already closed)
--      or {'not_over', now_ms}: it has not ended, holds units, or has
--         orders or dead letters waiting; nothing is changed
--      or {'sale_not_found', now_ms}
--
-- Invariant: a sale is closed only once nothing can change it: ended,
-- nothing held, every order and event in Postgres, every dead letter copied
-- there (with both streams empty no new one can come).
-- Closed, no adjustment applies to it any more (adjust_sale.lua checks), so
-- the final figures it returns stay final while its keys are removed.
local now = now_ms()
local s = redis.call('HMGET', KEYS[1], 'ends_ms', 'held', 'total', 'sold', 'archived')
if not s[1] then return {'sale_not_found', now} end
if s[5] ~= '1' then
  if now < tonumber(s[1]) or tonumber(s[2]) ~= 0
    or redis.call('XLEN', KEYS[2]) ~= 0 or redis.call('XLEN', KEYS[4]) ~= 0 or redis.call('XLEN', KEYS[3]) ~= tonumber(ARGV[1]) then
    return {'not_over', now}
  end
  redis.call('HSET', KEYS[1], 'archived', 1)
end
return {'archived', now, s[3], s[4]}
