-- recount.lua: repair a sale's counters from everything that knows them.
--
-- KEYS[1] sale hash   KEYS[2] reservations hash   KEYS[3] customers hash
-- KEYS[4] rebuild base (customer -> units)   KEYS[5] applied adjustment ids
-- ARGV[1] the scheduled total (from Postgres: stock plus applied adjustments)
-- ARGV[2] units of the sale's orders in Postgres
-- ARGV[3] n, the number of adjustment ids Postgres settled as applied
-- ARGV[4 .. 3+n] those ids
-- ARGV[4+n ..] customer, units, customer, units, ... (orders in Postgres)
-- Returns {'recounted', now_ms, total, available, held, sold}
--      or {'overcommitted', now_ms, held, sold}: more units held and sold
--         than the total; nothing is changed (a human decides)
--      or {'adjustment_unsettled', now_ms, id}: Redis applied an adjustment
--         Postgres does not count yet; nothing is changed (settle, retry)
--      or {'sale_not_found', now_ms}
--
-- Invariant 6: `sold` is the largest figure any source knows (the counter,
-- the rebuild base plus the confirmed records, Postgres's orders), and so is
-- each customer's count of bought units, so a recount never offers again a
-- unit that was sold, whatever repairs ran before it (a rebuild drops the
-- records, a lost counter undercounts, Postgres lags the outbox). `held` is
-- the units of held records, which only Redis knows. Afterwards
-- available + held + sold == total with each >= 0. One atomic step.
local now = now_ms()
local sale, reservations, customers, base_key, applied =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('EXISTS', sale) == 0 then return {'sale_not_found', now} end
local total, pg_sold, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local known = {}
for i = 4, 3 + n do known[ARGV[i]] = true end
local stray = unknown_adjustment(applied, known)
if stray then return {'adjustment_unsettled', now, stray} end
local postgres = pairs_from(ARGV, 4 + n)
local base = pairs_from(redis.call('HGETALL', base_key), 1)

local held, confirmed, per_held, per_confirmed = tally(reservations)
local counted = tonumber(redis.call('HGET', sale, 'sold') or '0')
local sold_base = tonumber(redis.call('HGET', sale, 'sold_base') or '0')
local sold = math.max(counted, sold_base + confirmed, pg_sold)
if held + sold > total then return {'overcommitted', now, held, sold} end

local per = {}
for _, t in ipairs({per_held, per_confirmed, base, postgres}) do
  for c in pairs(t) do
    per[c] = (per_held[c] or 0) + bought(base, per_confirmed, postgres, c)
  end
end
redis.call('DEL', customers)
for c, q in pairs(per) do
  if q > 0 then redis.call('HSET', customers, c, q) end
end
redis.call('HSET', sale, 'total', total, 'held', held, 'sold', sold,
  'available', total - held - sold)
redis.call('HINCRBY', sale, 'version', 1)
return {'recounted', now, total, total - held - sold, held, sold}
