-- waiting_room_open.lua: open a waiting room with the seed Postgres keeps, or
-- restore a room Redis lost (a rebuild, a failover) from Postgres.
--
-- KEYS[1] sale hash   KEYS[2] room hash
-- ARGV[1] opens_at ms  ARGV[2] admitted per second  ARGV[3] burst
-- ARGV[4] admission ms ARGV[5] seed   ARGV[6] its SHA-256 (hex)
-- ARGV[7] the sealed member count Postgres keeps, '' while not sealed
-- Returns {'opened'|'open', now_ms} or {'sale_not_found', now_ms}
--
-- Invariant: Postgres wins. The seed and the member count are written to
-- Postgres before anyone is shown them, and here copied over whatever Redis
-- holds, so a published order never changes. Tickets taken after the seal
-- stay after the members (`next` is raised to the member count). Running
-- it again changes nothing.
local now = now_ms()
local sale, room = KEYS[1], KEYS[2]
if redis.call('EXISTS', sale) == 0 then return {'sale_not_found', now} end
local was = redis.call('HMGET', room, 'sha', 'members', 'published')
redis.call('HSET', sale, 'room', 1)
redis.call('HSET', room, 'opens_ms', ARGV[1], 'rate', ARGV[2], 'burst', ARGV[3],
  'adm_ms', ARGV[4], 'seed', ARGV[5], 'sha', ARGV[6])
redis.call('HSETNX', room, 'next', 0)
redis.call('HSETNX', room, 'admitted', 0)
redis.call('HSETNX', room, 'issued', 0)
if ARGV[7] ~= '' then
  local members = tonumber(ARGV[7])
  redis.call('HSET', room, 'members', members, 'published', 1)
  if tonumber(redis.call('HGET', room, 'next')) < members then
    redis.call('HSET', room, 'next', members)
  end
end
if was[1] == ARGV[6] and (ARGV[7] == '' or was[3] == '1') then return {'open', now} end
return {'opened', now}
