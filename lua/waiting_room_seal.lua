-- waiting_room_seal.lua: seal a waiting room whose sale has started.
--
-- KEYS[1] sale hash   KEYS[2] room hash
-- Returns {'sealed', now_ms, members, published ('1'/'0')}
--      or {'not_due'|'sale_not_found'|'queue_not_found', now_ms}
--
-- The member count is fixed by the first script to run after the start
-- (this one, or a join): O(1), no pass over the members. The worker keeps
-- it in Postgres, then publishes it with waiting_room_open.lua.
local now = now_ms()
local sale, room = KEYS[1], KEYS[2]
local starts = redis.call('HGET', sale, 'starts_ms')
if not starts then return {'sale_not_found', now} end
if redis.call('EXISTS', room) == 0 then return {'queue_not_found', now} end
if now < tonumber(starts) then return {'not_due', now} end
seal_if_due(room, starts, now)
local r = redis.call('HMGET', room, 'members', 'published')
return {'sealed', now, r[1], r[2] or '0'}
