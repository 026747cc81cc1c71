-- waiting_room_view.lua: a waiting room as it stands, and one customer's ticket.
--
-- KEYS[1] sale hash   KEYS[2] room hash   KEYS[3] tickets hash
-- KEYS[4] queuers hash
-- ARGV[1] customer id, '' for the public view
-- Returns {'ok', now_ms, room fields (opens_ms rate burst adm_ms sha seed
--          next members published admitted issued), starts_ms, ends_ms,
--          ticket, record}  (ticket and record absent without a customer
--          or a ticket)
--      or {'sale_not_found'|'queue_not_found', now_ms}
--
-- Reads only; one atomic step, so the fields agree with each other.
local now = now_ms()
local sale, room, tickets, queuers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local s = redis.call('HMGET', sale, 'starts_ms', 'ends_ms', 'room')
if not s[1] then return {'sale_not_found', now} end
if s[3] ~= '1' or redis.call('EXISTS', room) == 0 then return {'queue_not_found', now} end
local out = {'ok', now}
for _, v in ipairs(redis.call('HMGET', room, 'opens_ms', 'rate', 'burst', 'adm_ms', 'sha', 'seed',
  'next', 'members', 'published', 'admitted', 'issued')) do
  out[#out + 1] = v or ''
end
out[#out + 1] = s[1]
out[#out + 1] = s[2]
if ARGV[1] ~= '' then
  local t = redis.call('HGET', queuers, ARGV[1])
  local enc = t and redis.call('HGET', tickets, t)
  if enc then
    out[#out + 1] = t
    out[#out + 1] = enc
  end
end
return out
