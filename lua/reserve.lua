-- reserve.lua: take units from a sale and record a hold that expires.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash (customer -> units held + confirmed)
-- KEYS[4] deadline index (zset: reservation id -> expires_ms)
-- KEYS[5] idempotency key of this customer and Idempotency-Key header
-- KEYS[6] set of the sale's idempotency keys (so retention finds them
--         without scanning the keyspace)
-- ARGV[1] reservation id (made by the gateway; retrying the same id is safe)
-- ARGV[2] customer id        ARGV[3] quantity (>= 1)
-- ARGV[4] idempotency fingerprint of the request, '' when no header was sent
-- ARGV[5] idempotency key lifetime, seconds
-- Returns {'held', now_ms, reservation_id, record}
--      or {'idempotency_key_reused'|'sale_not_found'|'sale_not_live'|
--          'limit_exceeded'|'sold_out'|'insufficient_stock', now_ms}
--
-- Invariants: available never goes below 0 and available + held + sold stays
-- equal to total; a customer's held + confirmed never passes the limit. The
-- checks and the move happen in one script, so no other request can slip
-- between the read of a counter and its update. A later precondition (an
-- admission token to consume) belongs here too, before the move.
local now = now_ms()
local sale, reservations, customers, due, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local idem_index = KEYS[6]
local rid, cust, qty, fp = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

if fp ~= '' then
  local prev = redis.call('GET', idem)
  if prev then
    local sep = string.find(prev, '|', 1, true)
    if string.sub(prev, 1, sep - 1) ~= fp then return {'idempotency_key_reused', now} end
    local prid = string.sub(prev, sep + 1)
    local prec = redis.call('HGET', reservations, prid)
    if prec then return {'held', now, prid, prec} end
  end
end

-- A client library that retries a timed-out call sends the same id again.
local existing = redis.call('HGET', reservations, rid)
if existing then return {'held', now, rid, existing} end

local s = redis.call('HMGET', sale, 'available', 'starts_ms', 'ends_ms', 'paused',
  'limit', 'hold_ms', 'price_cents', 'currency')
if not s[1] then return {'sale_not_found', now} end
local available = tonumber(s[1])
if not is_live(s[2], s[3], s[4], now) then return {'sale_not_live', now} end
local mine = tonumber(redis.call('HGET', customers, cust) or '0')
if mine + qty > tonumber(s[5]) then return {'limit_exceeded', now} end
if available == 0 then return {'sold_out', now} end
if available < qty then return {'insufficient_stock', now} end

redis.call('HINCRBY', sale, 'available', -qty)
redis.call('HINCRBY', sale, 'held', qty)
redis.call('HINCRBY', sale, 'version', 1)
redis.call('HINCRBY', customers, cust, qty)
tally(sale, 'th', qty)
local expires = now + tonumber(s[6])
local rec = cjson.encode({c = cust, q = qty, s = 'held', e = expires, t = now,
  pc = tonumber(s[7]), cu = s[8]})
redis.call('HSET', reservations, rid, rec)
redis.call('ZADD', due, expires, rid)
if fp ~= '' then
  redis.call('SET', idem, fp .. '|' .. rid, 'EX', tonumber(ARGV[5]))
  redis.call('SADD', idem_index, idem)
end
return {'held', now, rid, rec}
