-- rebuild.lua: restore a sale from Postgres after Redis lost it.
--
-- KEYS[1] sale hash   KEYS[2] reservations hash   KEYS[3] customers hash
-- KEYS[4] deadline index   KEYS[5] outbox
-- ARGV[1] definition JSON   ARGV[2] total   ARGV[3] starts ms   ARGV[4] ends ms
-- ARGV[5] limit   ARGV[6] hold ms   ARGV[7] price_cents   ARGV[8] currency
-- ARGV[9] paused ('1'/'0')   ARGV[10] sold (units of the orders in Postgres)
-- ARGV[11..] customer, units, customer, units, ... (orders per customer)
-- Returns {'rebuilt', now_ms, total, available, sold}
--      or {'outbox_not_empty', now_ms, entries}: confirmed orders not yet in
--         Postgres would be missing from `sold`; flush them, then run again
--      or {'oversold', now_ms}: Postgres has more units sold than the total
--
-- Invariant: available = total - sold, held = 0, so no more stock is
-- reservable than total - sold. All in one atomic step: no reserve can run
-- against half-rebuilt state. Holds from before the loss are gone; their
-- records too, so confirming one is a clear 404, never a second sale.
local now = now_ms()
local sale, reservations, customers, due, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pending = redis.call('XLEN', outbox)
if pending > 0 then return {'outbox_not_empty', now, pending} end
local total, sold = tonumber(ARGV[2]), tonumber(ARGV[10])
if sold > total then return {'oversold', now} end
local version = tonumber(redis.call('HGET', sale, 'version') or '0')
redis.call('DEL', sale, reservations, customers, due)
redis.call('HSET', sale,
  'def', ARGV[1], 'total', total, 'available', total - sold, 'held', 0, 'sold', sold,
  'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'limit', ARGV[5], 'hold_ms', ARGV[6],
  'price_cents', ARGV[7], 'currency', ARGV[8], 'paused', ARGV[9], 'version', version + 1)
for i = 11, #ARGV, 2 do
  redis.call('HSET', customers, ARGV[i], ARGV[i + 1])
end
return {'rebuilt', now, total, total - sold, sold}
