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
-- records a rebuild dropped) and retired (1 once the worker's loops let go).
-- A reservation is one field of the reservations hash: id -> cjson record
-- {c = customer, q = quantity, s = status, e = expires_ms, t = created_ms,
--  pc = price_cents, cu = currency, o = order_id, pr = payment_ref, ct = confirmed_ms}.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a sale takes reserves now: started, not ended, not paused. The
-- same rule as `Window::at` in src/domain.rs, which judges it outside Redis.
local function is_live(starts_ms, ends_ms, paused, now)
  return paused ~= '1' and now >= tonumber(starts_ms) and now < tonumber(ends_ms)
end

-- Ends a hold that is still `held`: its units go back to `available`, the
-- customer's count drops, and it leaves the deadline index. `status` is
-- 'released' or 'expired'. Returns the record as stored.
local function end_hold(sale, reservations, customers, due, rid, rec, status)
  redis.call('HINCRBY', sale, 'held', -rec.q)
  redis.call('HINCRBY', sale, 'available', rec.q)
  redis.call('HINCRBY', sale, 'version', 1)
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

-- Units per customer of the sale's held and confirmed records, and their sums.
local function tally(reservations)
  local held, confirmed, per_held, per_confirmed = 0, 0, {}, {}
  local all = redis.call('HGETALL', reservations)
  for i = 2, #all, 2 do
    local rec = cjson.decode(all[i])
    if rec.s == 'held' then
      held = held + rec.q
      per_held[rec.c] = (per_held[rec.c] or 0) + rec.q
    elseif rec.s == 'confirmed' then
      confirmed = confirmed + rec.q
      per_confirmed[rec.c] = (per_confirmed[rec.c] or 0) + rec.q
    end
  end
  return held, confirmed, per_held, per_confirmed
end

-- A flat list of name, number, name, number, ... (from ARGV) as a table.
local function pairs_from(list, first)
  local t = {}
  for i = first, #list, 2 do t[list[i]] = tonumber(list[i + 1]) end
  return t
end

-- The confirmed units a customer is known to have bought: their confirmed
-- records on top of what a rebuild kept, or Postgres's orders, whichever is
-- more. Neither source alone can be trusted to be complete.
local function bought(base, confirmed, postgres, c)
  return math.max((base[c] or 0) + (confirmed[c] or 0), postgres[c] or 0)
end
