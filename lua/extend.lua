-- extend.lua: a service moves a hold's deadline later (a payment slower
-- than the hold).
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- KEYS[5] events stream (a hold found expired records `reservation.expired`)
-- ARGV[1] reservation id     ARGV[2] milliseconds to add to the deadline
-- Returns {'extended', now_ms, reservation_id, record}
--      or {'too_long', now_ms, latest_deadline_ms}: nothing changed
--      or {'hold_expired', now_ms, reservation_id, record}
--      or {'reservation_not_held', now_ms, reservation_id, record}
--      or {'reservation_not_found', now_ms}
--
-- Invariants: a hold ends confirmed xor expired. The deadline is judged by
-- Redis TIME, as confirm and the reaper judge it, and a hold found past it is
-- expired here on the spot, so an extension can never revive a hold the
-- reaper (or a confirm) already saw as expired. The record and the deadline
-- index move together: the reaper works from the index, so it then sees the
-- new deadline and nothing else. A hold's whole life (creation to deadline)
-- stays within twice the sale's hold_seconds.
local now = now_ms()
local sale, reservations, customers, due, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local enc, rec = load_hold(reservations, rid, '')
if not enc then return {'reservation_not_found', now} end
if rec.s == 'expired' then return {'hold_expired', now, rid, enc} end
if rec.s ~= 'held' then return {'reservation_not_held', now, rid, enc} end
if now >= rec.e then
  return {'hold_expired', now, rid, end_hold(now, sale, reservations, customers, due, events, rid, rec, 'expired')}
end

local hold_ms = tonumber(redis.call('HGET', sale, 'hold_ms'))
if not hold_ms then return {'reservation_not_found', now} end
-- A record without its creation time: the deadline was set hold_ms after it.
local created = tonumber(rec.t) or (rec.e - hold_ms)
local latest = created + 2 * hold_ms
local deadline = rec.e + tonumber(ARGV[2])
if deadline > latest then return {'too_long', now, latest} end

rec.e = deadline
enc = cjson.encode(rec)
redis.call('HSET', reservations, rid, enc)
redis.call('ZADD', due, deadline, rid)
return {'extended', now, rid, enc}
