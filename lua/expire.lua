-- expire.lua: the reaper's step, returning holds past their deadline to stock.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- KEYS[5] outbox             KEYS[6] events stream
-- ARGV[1] batch size (holds handled at most in this call)
-- Returns {'ok', now_ms, expired_count, due_left, over}
--   due_left is 1 when more holds were already due, so the caller goes again;
--   over is 1 when the sale has ended with nothing held and empty outbox and
--   events stream
--   (the worker may retire it: retire.lua decides).
--
-- Invariant: only holds whose deadline has passed by Redis TIME are touched,
-- and each at most once (confirm and release judge the deadline the same way),
-- so a hold ends confirmed xor expired. Works from the deadline index, never
-- by scanning keys.
local now = now_ms()
local sale, reservations, customers, due, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local events = KEYS[6]
local limit = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit + 1)
local expired = 0
for i = 1, math.min(#ids, limit) do
  local rid = ids[i]
  local enc = redis.call('HGET', reservations, rid)
  local rec = enc and cjson.decode(enc)
  if rec and rec.s == 'held' then
    end_hold(now, sale, reservations, customers, due, events, rid, rec, 'expired')
    expired = expired + 1
  else
    redis.call('ZREM', due, rid)
  end
end
local s = redis.call('HMGET', sale, 'ends_ms', 'held')
local over = 0
if s[1] and now >= tonumber(s[1]) and tonumber(s[2]) == 0 and redis.call('XLEN', outbox) == 0
  and redis.call('XLEN', events) == 0 then
  over = 1
end
return {'ok', now, expired, #ids > limit and 1 or 0, over}
