-- confirm_batch.lua: the confirms of many holds of one sale in one call
-- (group commit), applied one after another in the order they arrived.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- KEYS[5] outbox stream     KEYS[6] events stream
-- ARGV[1] sale id (written into each outbox entry)
-- ARGV[2 + 5(i-1)] .. ARGV[6 + 5(i-1)]: member i's reservation id, customer
--         id ('' for a service), order id, payment reference and
--         confirmed_by (as in confirm.lua)
-- Returns one reply per member, in order, each exactly what confirm.lua
-- returns for it, or {'fault', now_ms, message} for a member whose own
-- record made the script fail (the others are not affected).
--
-- Invariants: those of confirm.lua, member by member (`confirm_one`): each
-- confirmed member's move held -> sold and its own outbox entry are written
-- in this one step; a hold ends confirmed xor expired.
local now = now_ms()
local out = {}
for i = 1, (#ARGV - 1) / 5 do
  local a = 2 + 5 * (i - 1)
  out[i] = member(now, confirm_one, KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1],
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
end
return out
