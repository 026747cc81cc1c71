-- waiting_room_set.lua: an admin sets a sale's waiting room before it opens.
--
-- KEYS[1] sale hash   KEYS[2] room hash
-- ARGV[1] opens_at ms  ARGV[2] admitted per second  ARGV[3] burst
-- ARGV[4] admission ms
-- Returns {'set', now_ms} or {'sale_not_found'|'queue_opened', now_ms}
--
-- A room that opened (its seed committed) or whose time has come keeps its
-- configuration: buyers may already hold tickets under it. Postgres is
-- written first and refuses the same; the opener copies Postgres's
-- configuration over this one (waiting_room_open.lua).
local now = now_ms()
local sale, room = KEYS[1], KEYS[2]
if redis.call('EXISTS', sale) == 0 or redis.call('HGET', sale, 'archived') == '1' then
  return {'sale_not_found', now}
end
local r = redis.call('HMGET', room, 'opens_ms', 'sha')
if r[2] or (r[1] and now >= tonumber(r[1])) then return {'queue_opened', now} end
redis.call('HSET', sale, 'room', 1)
redis.call('HSET', room, 'opens_ms', ARGV[1], 'rate', ARGV[2], 'burst', ARGV[3],
  'adm_ms', ARGV[4])
redis.call('HSETNX', room, 'next', 0)
redis.call('HSETNX', room, 'admitted', 0)
redis.call('HSETNX', room, 'issued', 0)
redis.call('HINCRBY', sale, 'version', 1)
return {'set', now}
