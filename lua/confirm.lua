-- confirm.lua: turn a hold into an order and append it to the outbox.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- KEYS[5] outbox stream (read by the worker, flushed to Postgres `orders`)
-- ARGV[1] reservation id     ARGV[2] customer id (must own the hold), or ''
--                            when a service confirms any customer's hold
-- ARGV[3] order id for a first confirm   ARGV[4] payment reference
-- ARGV[5] sale id (written into the outbox entry)
-- ARGV[6] the confirming service's subject, kept in the order as
--         confirmed_by; '' when the customer confirms
-- Returns {'confirmed', now_ms, reservation_id, record}
--      or {'hold_expired', now_ms, reservation_id, record}
--      or {'reservation_not_found'|'reservation_not_held', now_ms}
--
-- Invariants: a hold ends confirmed xor expired. The deadline is judged here
-- by the same clock as the reaper's, and a hold found past it is expired on
-- the spot, so a confirm and the reaper can never both win. The move
-- held -> sold and the outbox entry are one step: there is no moment at which
-- stock was sold but the order could be lost. Confirming twice returns the
-- first order.
local now = now_ms()
local sale, reservations, customers, due, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local enc = redis.call('HGET', reservations, rid)
if not enc then return {'reservation_not_found', now} end
local rec = cjson.decode(enc)
if ARGV[2] ~= '' and rec.c ~= ARGV[2] then return {'reservation_not_found', now} end
if rec.s == 'confirmed' then return {'confirmed', now, rid, enc} end
if rec.s == 'expired' then return {'hold_expired', now, rid, enc} end
if rec.s ~= 'held' then return {'reservation_not_held', now, rid, enc} end
if now >= rec.e then
  return {'hold_expired', now, rid, end_hold(sale, reservations, customers, due, rid, rec, 'expired')}
end

redis.call('HINCRBY', sale, 'held', -rec.q)
redis.call('HINCRBY', sale, 'sold', rec.q)
redis.call('HINCRBY', sale, 'version', 1)
tally(sale, 'th', -rec.q)
tally(sale, 'ts', rec.q)
redis.call('ZREM', due, rid)
rec.s = 'confirmed'
rec.o = ARGV[3]
rec.pr = ARGV[4]
rec.ct = now
if ARGV[6] ~= '' then rec.cb = ARGV[6] end
enc = cjson.encode(rec)
redis.call('HSET', reservations, rid, enc)
redis.call('XADD', outbox, '*',
  'order_id', rec.o, 'reservation_id', rid, 'sale_id', ARGV[5], 'customer_id', rec.c,
  'quantity', rec.q, 'price_cents', rec.pc, 'currency', rec.cu,
  'payment_ref', rec.pr, 'confirmed_ms', now, 'expires_ms', rec.e,
  'confirmed_by', ARGV[6])
return {'confirmed', now, rid, enc}
