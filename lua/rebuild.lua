-- rebuild.lua: restore a sale from Postgres after Redis lost it.
--
-- KEYS[1] sale hash   KEYS[2] reservations hash   KEYS[3] customers hash
-- KEYS[4] deadline index   KEYS[5] outbox
-- ARGV[1] definition JSON   ARGV[2] total   ARGV[3] starts ms   ARGV[4] ends ms
-- ARGV[5] limit   ARGV[6] hold ms   ARGV[7] price_cents   ARGV[8] currency
-- ARGV[9] paused ('1'/'0')   ARGV[10] sold (units of the orders in Postgres)
-- ARGV[11..] customer, units, customer, units, ... (orders per customer)
-- Returns {'rebuilt', now_ms, total, available, sold}
--      or {'outbox_not_empty', now_ms, entries}: the sale is gone from Redis
--         but confirmed orders not yet in Postgres are not; flush them first
--      or {'oversold', now_ms}: more units sold than the total
--
-- Invariant: available = total - sold, held = 0, so no more stock is
-- reservable than total - sold. All in one atomic step: no reserve can run
-- against half-rebuilt state. Holds from before the loss are gone; their
-- records too, so confirming one is a clear 404, never a second sale.
--
-- `sold` is never below what either store knows. Where the sale survived in
-- Redis (a rebuild of a live sale, a partial loss), confirms went on while
-- Postgres was read and the worker flushes behind them, so Postgres's figure
-- can be late: the larger of the two counts, in all and per customer.
local now = now_ms()
local sale, reservations, customers, due, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local total, sold = tonumber(ARGV[2]), tonumber(ARGV[10])
local per = {}
for i = 11, #ARGV, 2 do per[ARGV[i]] = tonumber(ARGV[i + 1]) end
if redis.call('EXISTS', sale) == 1 then
  local counted = tonumber(redis.call('HGET', sale, 'sold') or '0')
  local confirmed, mine = 0, {}
  local all = redis.call('HGETALL', reservations)
  for i = 2, #all, 2 do
    local rec = cjson.decode(all[i])
    if rec.s == 'confirmed' then
      confirmed = confirmed + rec.q
      mine[rec.c] = (mine[rec.c] or 0) + rec.q
    end
  end
  sold = math.max(sold, counted, confirmed)
  for c, q in pairs(mine) do
    if q > (per[c] or 0) then per[c] = q end
  end
else
  local pending = redis.call('XLEN', outbox)
  if pending > 0 then return {'outbox_not_empty', now, pending} end
end
if sold > total then return {'oversold', now} end
local version = tonumber(redis.call('HGET', sale, 'version') or '0')
redis.call('DEL', sale, reservations, customers, due)
redis.call('HSET', sale,
  'def', ARGV[1], 'total', total, 'available', total - sold, 'held', 0, 'sold', sold,
  'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'limit', ARGV[5], 'hold_ms', ARGV[6],
  'price_cents', ARGV[7], 'currency', ARGV[8], 'paused', ARGV[9], 'version', version + 1)
for c, q in pairs(per) do redis.call('HSET', customers, c, q) end
return {'rebuilt', now, total, total - sold, sold}
