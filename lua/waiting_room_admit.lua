-- waiting_room_admit.lua: the worker admits the next positions of a waiting room.
--
-- KEYS[1] sale hash   KEYS[2] room hash   KEYS[3] tickets hash
-- ARGV[1] the first position (the worker's reading of `admitted`)
-- ARGV[2 + 2(i-1)], ARGV[3 + 2(i-1)]: the ticket at position ARGV[1] + i - 1
--         and the secret of its admission token
-- Returns {'admitted', now_ms, positions advanced, tokens issued}
--      or {'moved', now_ms}: another worker admitted meanwhile; read again
--      or {'not_published', now_ms}
--
-- Invariants: positions are admitted in order, each once (the first
-- position must be the room's cursor, so two workers cannot both admit it);
-- the cursor never passes admit_burst + admit_per_second * seconds since the
-- start, on the Redis clock, so tokens issued by then never exceed it. A
-- position whose ticket is gone (lost with Redis) advances the cursor and
-- issues nothing.
local now = now_ms()
local sale, room, tickets = KEYS[1], KEYS[2], KEYS[3]
local starts = tonumber(redis.call('HGET', sale, 'starts_ms') or '0')
local r = redis.call('HMGET', room, 'published', 'admitted', 'rate', 'burst', 'adm_ms', 'next')
if r[1] ~= '1' then return {'not_published', now} end
local from = tonumber(ARGV[1])
if tonumber(r[2]) ~= from then return {'moved', now} end
local budget = tonumber(r[4]) + math.floor(tonumber(r[3]) * math.max(0, now - starts) / 1000)
local upto = math.min(budget, tonumber(r[6]), from + (#ARGV - 1) / 2)
local issued = 0
for p = from, upto - 1 do
  local a = 2 + 2 * (p - from)
  local enc = redis.call('HGET', tickets, ARGV[a])
  if enc then
    local rec = cjson.decode(enc)
    if rec.s == 'waiting' then
      rec.s = 'admitted'
      rec.k = ARGV[a + 1]
      rec.x = now + tonumber(r[5])
      redis.call('HSET', tickets, ARGV[a], cjson.encode(rec))
      issued = issued + 1
    end
  end
end
if upto > from then
  redis.call('HSET', room, 'admitted', upto)
  redis.call('HINCRBY', room, 'issued', issued)
end
return {'admitted', now, math.max(0, upto - from), issued}
