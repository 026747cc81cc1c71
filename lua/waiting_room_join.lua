-- waiting_room_join.lua: a customer takes a ticket in a sale's waiting room.
--
-- KEYS[1] sale hash   KEYS[2] room hash   KEYS[3] tickets hash
-- KEYS[4] queuers hash (customer -> latest ticket)
-- ARGV[1] customer id
-- Returns {'joined'|'existing', now_ms, ticket, record}
--      or {'sale_not_found'|'queue_not_found'|'queue_not_open', now_ms}
--      or {'queue_opening', now_ms}: the room's time has come but its seed
--         is not committed yet; the caller opens it and joins again
--
-- Invariants: tickets are 0, 1, 2, ... in the order the joins ran, with no
-- gap (one counter, one script); a customer has at most one active ticket
-- (waiting, or admitted and not expired): joining again returns it. The
-- room is sealed (seal_if_due) before a ticket is handed out after the
-- start, so the members are exactly the tickets taken before it. No ticket
-- exists before the seed's hash: the order cannot be chosen after seeing
-- who joined.
local now = now_ms()
local sale, room, tickets, queuers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cust = ARGV[1]
local s = redis.call('HMGET', sale, 'starts_ms', 'ends_ms', 'archived', 'room')
if not s[1] or s[3] == '1' then return {'sale_not_found', now} end
local r = redis.call('HMGET', room, 'opens_ms', 'sha')
if s[4] ~= '1' or not r[1] then return {'queue_not_found', now} end
if now < tonumber(r[1]) or now >= tonumber(s[2]) then return {'queue_not_open', now} end
if not r[2] then return {'queue_opening', now} end
seal_if_due(room, s[1], now)
local mine = redis.call('HGET', queuers, cust)
if mine then
  local enc = redis.call('HGET', tickets, mine)
  if enc then
    local st = ticket_status(cjson.decode(enc), now)
    if st == 'waiting' or st == 'admitted' then return {'existing', now, mine, enc} end
  end
end
local ticket = redis.call('HINCRBY', room, 'next', 1) - 1
local enc = cjson.encode({c = cust, j = now, s = 'waiting'})
redis.call('HSET', tickets, ticket, enc)
redis.call('HSET', queuers, cust, ticket)
return {'joined', now, ticket, enc}
