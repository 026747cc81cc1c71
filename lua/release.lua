-- release.lua: a customer (or an admin) gives a hold back.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- ARGV[1] reservation id     ARGV[2] customer id, '' when an admin releases
-- Returns {'released', now_ms, reservation_id, record}
--      or {'reservation_not_held', now_ms, reservation_id, record}
--      or {'reservation_not_found', now_ms}
--
-- Invariant: the units of a hold go back to `available` exactly once, whether
-- it is released here, released again, or expired. A hold found past its
-- deadline is expired, not released, so the reaper agrees with us.
local now = now_ms()
local sale, reservations, customers, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local enc = redis.call('HGET', reservations, rid)
if not enc then return {'reservation_not_found', now} end
local rec = cjson.decode(enc)
if ARGV[2] ~= '' and rec.c ~= ARGV[2] then return {'reservation_not_found', now} end
if rec.s == 'released' then return {'released', now, rid, enc} end
if rec.s ~= 'held' then return {'reservation_not_held', now, rid, enc} end
if now >= rec.e then
  return {'reservation_not_held', now, rid, end_hold(sale, reservations, customers, due, rid, rec, 'expired')}
end
return {'released', now, rid, end_hold(sale, reservations, customers, due, rid, rec, 'released')}
