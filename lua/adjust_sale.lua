-- adjust_sale.lua: an admin's change to a sale (stock, end, pause), once.
--
-- KEYS[1] sale hash          KEYS[2] set of applied adjustment ids
-- KEYS[3] set of voided adjustment ids (a repair settled them as never applied)
-- KEYS[4] events stream (`sale.sold_out` when the change empties the sale)
-- ARGV[1] adjustment id (from the Postgres audit row; applying it twice is a no-op)
-- ARGV[2] stock delta (integer, may be negative)
-- ARGV[3] new ends_at ms, '' to keep    ARGV[4] '1' pause, '0' resume, '' to keep
-- Returns {'applied'|'already_applied', now_ms, before, after}
--      or {'sale_not_found'|'insufficient_stock'|'voided', now_ms}
--   before/after: cjson {total, available, held, sold, ends_ms, paused}
--
-- Invariant: a delta changes total and available together, and is refused
-- when available would go below 0, so available + held + sold == total holds
-- and no held or sold unit is ever taken back. An id is applied at most
-- once, and never once a repair voided it (settle_adjustment.lua). Any
-- applied change clears `retired`: the worker's loops take the sale back.
local now = now_ms()
local sale, applied, voided, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function figures()
  local s = redis.call('HMGET', sale, 'total', 'available', 'held', 'sold', 'ends_ms', 'paused')
  return {total = tonumber(s[1]), available = tonumber(s[2]), held = tonumber(s[3]),
    sold = tonumber(s[4]), ends_ms = tonumber(s[5]), paused = s[6] == '1'}
end
-- A closed (archived) sale is gone for every purpose but reading.
if redis.call('EXISTS', sale) == 0 or redis.call('HGET', sale, 'archived') == '1' then
  return {'sale_not_found', now}
end
local before = figures()
if redis.call('SISMEMBER', applied, ARGV[1]) == 1 then
  return {'already_applied', now, cjson.encode(before), cjson.encode(before)}
end
if redis.call('SISMEMBER', voided, ARGV[1]) == 1 then return {'voided', now} end
local delta = tonumber(ARGV[2])
if before.available + delta < 0 then return {'insufficient_stock', now} end
if delta ~= 0 then
  redis.call('HINCRBY', sale, 'total', delta)
  redis.call('HINCRBY', sale, 'available', delta)
end
if ARGV[3] ~= '' then redis.call('HSET', sale, 'ends_ms', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', sale, 'paused', ARGV[4]) end
redis.call('HINCRBY', sale, 'version', 1)
redis.call('HSET', sale, 'retired', 0)
redis.call('SADD', applied, ARGV[1])
if before.available > 0 and before.available + delta == 0 then sold_out(sale, events, now) end
return {'applied', now, cjson.encode(before), cjson.encode(figures())}
