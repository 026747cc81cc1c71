-- release_batch.lua: the releases of many holds of one sale in one call
-- (group commit), applied one after another in the order they arrived.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- KEYS[5] events stream
-- ARGV[1 + 2(i-1)], ARGV[2 + 2(i-1)]: member i's reservation id and customer
--         id ('' when an admin releases), as in release.lua
-- Returns one reply per member, in order, each exactly what release.lua
-- returns for it, or {'fault', now_ms, message} for a member whose own
-- record made the script fail (the others are not affected).
--
-- Invariant: that of release.lua, member by member (`release_one`): a
-- hold's units go back to `available` exactly once.
local now = now_ms()
local out = {}
for i = 1, #ARGV / 2 do
  local a = 1 + 2 * (i - 1)
  out[i] = member(now, release_one, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[a],
    ARGV[a + 1])
end
return out
