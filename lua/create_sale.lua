-- create_sale.lua: load a scheduled sale into Redis (create if absent).
--
-- KEYS[1] sale hash
-- ARGV[1] definition JSON (canonical, as written by the gateway)
-- ARGV[2] total units      ARGV[3] starts_at ms   ARGV[4] ends_at ms
-- ARGV[5] per-customer limit  ARGV[6] hold duration ms
-- ARGV[7] price_cents      ARGV[8] currency
-- ARGV[9..12] the waiting room, if the sale has one: opens_at ms, admitted
--         per second, burst, admission ms (see prelude.lua for the room)
-- KEYS[2] the room hash
-- Returns {'created'|'exists'|'sale_conflict', now_ms}
--
-- Invariant: a sale's counters are written once, here, with
-- available = total and held = sold = 0 (and its record tallies at 0). Running it again never resets
-- them (Postgres is written first and this load is retried until it lands,
-- so it must be safe to run twice).
local now = now_ms()
local def = redis.call('HGET', KEYS[1], 'def')
if def then
  if def == ARGV[1] then return {'exists', now} end
  return {'sale_conflict', now}
end
redis.call('HSET', KEYS[1],
  'def', ARGV[1], 'total', ARGV[2], 'available', ARGV[2], 'held', 0, 'sold', 0,
  'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'limit', ARGV[5], 'hold_ms', ARGV[6],
  'price_cents', ARGV[7], 'currency', ARGV[8], 'paused', 0, 'version', 1,
  'tallied', 1, 'th', 0, 'ts', 0)
if ARGV[9] then
  redis.call('HSET', KEYS[1], 'room', 1)
  redis.call('HSET', KEYS[2], 'opens_ms', ARGV[9], 'rate', ARGV[10], 'burst', ARGV[11],
    'adm_ms', ARGV[12], 'next', 0, 'admitted', 0, 'issued', 0)
end
return {'created', now}
