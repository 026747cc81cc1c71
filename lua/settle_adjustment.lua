-- settle_adjustment.lua: decide, once, whether an adjustment was applied.
--
-- KEYS[1] applied adjustment ids   KEYS[2] voided adjustment ids
-- ARGV[1] adjustment id (a row Postgres still has as pending)
-- Returns {'applied'|'voided', now_ms}
--
-- Invariant: an adjustment is applied or voided, never both. Redis is the
-- arbiter: an id it applied is applied; any other id is voided here, in the
-- same step as the check, so a PATCH still in flight with that id finds it
-- voided and can no longer apply it (adjust_sale.lua checks).
local now = now_ms()
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {'applied', now} end
redis.call('SADD', KEYS[2], ARGV[1])
return {'voided', now}
