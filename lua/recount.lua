-- recount.lua: repair a sale's counters from everything that knows them.
--
-- KEYS[1] sale hash   KEYS[2] reservations hash   KEYS[3] applied adjustment ids
-- KEYS[4] events stream (`sale.sold_out` when the repair empties the sale)
-- ARGV[1] the scheduled total (from Postgres: stock plus applied adjustments)
-- ARGV[2] units of the sale's orders in Postgres
-- ARGV[3..] ids of the adjustments Postgres settled as applied
-- Returns {'recounted', now_ms, total, available, held, sold}
--      or {'overcommitted', now_ms, held, sold}: more units held and sold
--         than the total; nothing is changed (a human decides)
--      or {'adjustment_unsettled', now_ms, id}: Redis applied an adjustment
--         Postgres does not count yet; nothing is changed (settle, retry)
--      or {'sale_not_found', now_ms}
--
-- Invariant 6: `sold` is the largest figure any source knows (the counter,
-- the rebuild's base plus the tally of confirmed records, Postgres's
-- orders), so a recount never offers again a unit that was sold, whatever
-- repairs ran before it (a rebuild drops the records, a lost counter
-- undercounts, Postgres lags the outbox). `held` is the tally of held
-- records, which only Redis knows. Afterwards available + held + sold ==
-- total with each >= 0. One atomic step, of a cost that does not grow with
-- the sale: the tallies are kept as records change, so no record is read
-- (but once, for a sale created before the tallies existed). Each
-- customer's count is raised to their orders in Postgres beforehand, in
-- chunks (floor_customers.lua).
local now = now_ms()
local sale, reservations, applied, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', sale) == 0 then return {'sale_not_found', now} end
local total, pg_sold = tonumber(ARGV[1]), tonumber(ARGV[2])
local known = {}
for i = 3, #ARGV do known[ARGV[i]] = true end
local stray = unknown_adjustment(applied, known)
if stray then return {'adjustment_unsettled', now, stray} end

local held, confirmed = tallies(sale, reservations)
local counted = tonumber(redis.call('HGET', sale, 'sold') or '0')
local sold_base = tonumber(redis.call('HGET', sale, 'sold_base') or '0')
local sold = math.max(counted, sold_base + confirmed, pg_sold)
if held + sold > total then return {'overcommitted', now, held, sold} end
local was = tonumber(redis.call('HGET', sale, 'available') or '0')
redis.call('HSET', sale, 'total', total, 'held', held, 'sold', sold,
  'available', total - held - sold)
redis.call('HINCRBY', sale, 'version', 1)
if was > 0 and total - held - sold == 0 then sold_out(sale, events, now) end
return {'recounted', now, total, total - held - sold, held, sold}
