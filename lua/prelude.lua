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
-- hold_ms price_cents currency def version.
-- A reservation is one field of the reservations hash: id -> cjson record
-- {c = customer, q = quantity, s = status, e = expires_ms, t = created_ms,
--  pc = price_cents, cu = currency, o = order_id, pr = payment_ref, ct = confirmed_ms}.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
