-- prelude.lua: shared helpers, prepended to every engine script when the
-- gateway starts (the scripts stay one EVALSHA each; Redis sees one body).
--
-- Conventions every script follows:
--   * the one clock is Redis TIME, read inside the script, in milliseconds;
--   * every key is passed in KEYS and shares the sale's hash tag;
--   * a reply is an array whose first element is the outcome word and whose
--     second is the server time in ms, so callers always learn the clock.
--
-- Sale hash fields: total available held sold starts_ms ends_ms paused limit
-- hold_ms price_cents currency def version, sold_base (units sold whose
-- records a rebuild dropped), retired (1 once the worker's loops let go),
-- and the record tallies th and ts (units of held and of confirmed records),
-- kept up to date by every script that writes a record once `tallied` is 1,
-- so that no repair needs to read every record.
-- A reservation is one field of the reservations hash: id -> cjson record
-- {c = customer, q = quantity, s = status, e = expires_ms, t = created_ms,
--  pc = price_cents, cu = currency, o = order_id, pr = payment_ref, ct = confirmed_ms,
--  cb = the service that confirmed it (absent: the customer did)}.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a sale takes reserves now: started, not ended, not paused. The
-- same rule as `Window::at` in src/domain.rs, which judges it outside Redis.
local function is_live(starts_ms, ends_ms, paused, now)
  return paused ~= '1' and now >= tonumber(starts_ms) and now < tonumber(ends_ms)
end

-- Moves a record tally (th or ts) of a sale by q, if the sale keeps them.
-- A sale created before the tallies existed has none until a recount counts
-- its records once and sets `tallied`.
local function tally(sale, field, q)
  if redis.call('HGET', sale, 'tallied') == '1' then redis.call('HINCRBY', sale, field, q) end
end

-- Ends a hold that is still `held`: its units go back to `available`, the
-- customer's count drops, and it leaves the deadline index. `status` is
-- 'released' or 'expired'. Returns the record as stored.
local function end_hold(sale, reservations, customers, due, rid, rec, status)
  redis.call('HINCRBY', sale, 'held', -rec.q)
  redis.call('HINCRBY', sale, 'available', rec.q)
  redis.call('HINCRBY', sale, 'version', 1)
  tally(sale, 'th', -rec.q)
  if redis.call('HINCRBY', customers, rec.c, -rec.q) <= 0 then
    redis.call('HDEL', customers, rec.c)
  end
  redis.call('ZREM', due, rid)
  rec.s = status
  local enc = cjson.encode(rec)
  redis.call('HSET', reservations, rid, enc)
  return enc
end

-- Whether the sale's set of applied adjustment ids holds one that is not in
-- `known` (a table id -> true: the ids Postgres has settled as applied).
-- Such an adjustment is still in flight, and a repair that set `total` from
-- Postgres now would reverse it.
local function unknown_adjustment(applied, known)
  for _, id in ipairs(redis.call('SMEMBERS', applied)) do
    if not known[id] then return id end
  end
  return nil
end

-- The units of the sale's held and confirmed records, by reading every
-- record: only for a sale created before the tallies existed, once.
local function count_records(reservations)
  local held, confirmed = 0, 0
  local all = redis.call('HGETALL', reservations)
  for i = 2, #all, 2 do
    local rec = cjson.decode(all[i])
    if rec.s == 'held' then held = held + rec.q
    elseif rec.s == 'confirmed' then confirmed = confirmed + rec.q end
  end
  return held, confirmed
end

-- The record tallies (held units, confirmed units) of a sale, counting the
-- records once if the sale has none yet.
local function tallies(sale, reservations)
  local t = redis.call('HMGET', sale, 'tallied', 'th', 'ts')
  if t[1] == '1' then return tonumber(t[2]), tonumber(t[3]) end
  local held, confirmed = count_records(reservations)
  redis.call('HSET', sale, 'tallied', 1, 'th', held, 'ts', confirmed)
  return held, confirmed
end
