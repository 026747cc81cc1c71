-- recount.lua: repair a sale's counters from its reservation records.
--
-- KEYS[1] sale hash   KEYS[2] reservations hash   KEYS[3] customers hash
-- ARGV[1] the scheduled total (from Postgres: stock plus applied adjustments)
-- Returns {'recounted', now_ms, total, available, held, sold}
--      or {'overcommitted', now_ms, held, sold}: more units held and sold
--         than the total; nothing is changed (a human decides)
--      or {'sale_not_found', now_ms}
--
-- Invariant: afterwards available + held + sold == total with each >= 0,
-- held and sold are exactly the units of held and confirmed records, and
-- each customer's count is the units of their held and confirmed records. It
-- runs atomically, so live traffic never sees a half-repaired sale.
local now = now_ms()
local sale, reservations, customers = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', sale) == 0 then return {'sale_not_found', now} end
local total = tonumber(ARGV[1])
local held, sold, per = 0, 0, {}
local all = redis.call('HGETALL', reservations)
for i = 2, #all, 2 do
  local rec = cjson.decode(all[i])
  if rec.s == 'held' or rec.s == 'confirmed' then
    if rec.s == 'held' then held = held + rec.q else sold = sold + rec.q end
    per[rec.c] = (per[rec.c] or 0) + rec.q
  end
end
if held + sold > total then return {'overcommitted', now, held, sold} end
redis.call('DEL', customers)
for c, q in pairs(per) do redis.call('HSET', customers, c, q) end
redis.call('HSET', sale, 'total', total, 'held', held, 'sold', sold,
  'available', total - held - sold)
redis.call('HINCRBY', sale, 'version', 1)
return {'recounted', now, total, total - held - sold, held, sold}
