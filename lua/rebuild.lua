-- rebuild.lua: restore a sale from Postgres after Redis lost it.
--
-- KEYS[1] sale hash   KEYS[2] reservations hash   KEYS[3] deadline index
-- KEYS[4] outbox   KEYS[5] applied adjustment ids   KEYS[6] voided adjustment ids
-- ARGV[1] definition JSON   ARGV[2] total   ARGV[3] starts ms   ARGV[4] ends ms
-- ARGV[5] limit   ARGV[6] hold ms   ARGV[7] price_cents   ARGV[8] currency
-- ARGV[9] paused ('1'/'0')   ARGV[10] sold (units of the orders in Postgres)
-- ARGV[11] the sale's sell-outs Postgres has events of (the largest n of
--          `<sale>.sale.sold_out.<n>`)
-- ARGV[12] a, adjustments Postgres settled as applied
-- ARGV[13 .. 12+a] their ids; ARGV[13+a ..] ids of the rejected ones
-- Returns {'rebuilt', now_ms, total, available, sold}
--      or {'outbox_not_empty', now_ms, entries}: the sale is gone from Redis
--         but confirmed orders not yet in Postgres are not; flush them first
--      or {'adjustment_unsettled', now_ms, id}: the surviving sale has an
--         adjustment Postgres does not count yet; settle it, then retry
--      or {'oversold', now_ms}: more units sold than the total
--
-- Invariant: available = total - sold, held = 0, so no more stock is
-- reservable than total - sold. All in one atomic step: no reserve can run
-- against half-rebuilt state. Holds from before the loss are gone; their
-- records too, so confirming one is a clear 404, never a second sale.
--
-- `sold` is never below what any store knows. Where the sale survived in
-- Redis (a rebuild of a live sale, a partial loss), confirms went on while
-- Postgres was read and the worker flushes behind them, so Postgres's figure
-- can be late: the largest count wins (the counter, the base plus the tally
-- of confirmed records, Postgres). The dropped records' units become the
-- rebuild base (`sold_base`), so a later recount still counts them.
-- Customers' counts were raised to their orders beforehand
-- (floor_customers.lua) and are never lowered here: where the sale
-- survived, a customer's dropped hold still counts against their limit
-- (never more units than the limit, possibly fewer).
--
-- The cost does not grow with the sale: the records and the deadline index
-- are UNLINKed (freed in the background), never read. The adjustment sets
-- are restored from Postgres, so a PATCH replayed with an old id stays a
-- no-op and a voided one stays refused. The count of sell-outs never goes
-- back (the largest Redis or Postgres knows), so the next sell-out's event
-- id is new, not one Postgres has (which the flush would skip).
local now = now_ms()
local sale, reservations, due, outbox, applied, voided =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local total, sold, a = tonumber(ARGV[2]), tonumber(ARGV[10]), tonumber(ARGV[12])
local known = {}
for i = 13, 12 + a do known[ARGV[i]] = true end
if redis.call('EXISTS', sale) == 1 then
  local stray = unknown_adjustment(applied, known)
  if stray then return {'adjustment_unsettled', now, stray} end
  local _, confirmed = tallies(sale, reservations)
  local counted = tonumber(redis.call('HGET', sale, 'sold') or '0')
  local sold_base = tonumber(redis.call('HGET', sale, 'sold_base') or '0')
  sold = math.max(sold, counted, sold_base + confirmed)
else
  local pending = redis.call('XLEN', outbox)
  if pending > 0 then return {'outbox_not_empty', now, pending} end
end
if sold > total then return {'oversold', now} end
local version = tonumber(redis.call('HGET', sale, 'version') or '0')
local sold_outs = math.max(tonumber(redis.call('HGET', sale, 'sold_outs') or '0'), tonumber(ARGV[11]))
-- Behind a waiting room before and after: no window in which a reserve
-- passes without an admission (the room itself the worker restores).
local room = redis.call('HGET', sale, 'room') == '1' or cjson.decode(ARGV[1]).queue ~= nil
redis.call('UNLINK', sale, reservations, due)
redis.call('HSET', sale,
  'def', ARGV[1], 'total', total, 'available', total - sold, 'held', 0, 'sold', sold,
  'sold_base', sold, 'tallied', 1, 'th', 0, 'ts', 0,
  'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'limit', ARGV[5], 'hold_ms', ARGV[6],
  'price_cents', ARGV[7], 'currency', ARGV[8], 'paused', ARGV[9], 'version', version + 1,
  'sold_outs', sold_outs)
if room then redis.call('HSET', sale, 'room', 1) end
for i = 13, 12 + a do redis.call('SADD', applied, ARGV[i]) end
for i = 13 + a, #ARGV do redis.call('SADD', voided, ARGV[i]) end
return {'rebuilt', now, total, total - sold, sold}
