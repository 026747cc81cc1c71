-- reserve_batch.lua: the reserves of many buyers of one sale in one call
-- (group commit), applied one after another in the order they arrived.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash     KEYS[4] deadline index
-- KEYS[5] set of the sale's idempotency keys
-- KEYS[6] the waiting room's tickets
-- KEYS[7] events stream (`sale.sold_out`)
-- KEYS[7 + i] idempotency key of member i (as KEYS[5] of reserve.lua)
-- ARGV[1] idempotency key lifetime, seconds
-- ARGV[2 + 5(i-1)] .. ARGV[6 + 5(i-1)]: member i's reservation id, customer
--         id, quantity, idempotency fingerprint and admission token (as in
--         reserve.lua)
-- Returns one reply per member, in order, each exactly what reserve.lua
-- returns for it, or {'fault', now_ms, message} for a member whose own data
-- made the script fail (the others are not affected).
--
-- Invariants: those of reserve.lua, member by member: each member is
-- `reserve_one`, the same function reserve.lua runs, at one clock reading
-- for the whole batch. A member sees every write of the members before it
-- (the stock they took, the idempotency keys they set), so the answers are
-- those of the same requests sent one by one in this order.
-- The sale's fields are read once, and its counters written once, for the
-- whole batch (`reserve_view`, `reserve_commit`).
local now = now_ms()
local ttl = tonumber(ARGV[1])
local view = reserve_view(KEYS[1])
local out = {}
for i = 1, #KEYS - 7 do
  local a = 2 + 5 * (i - 1)
  out[i] = member(now, reserve_one, view, KEYS[2], KEYS[3], KEYS[4], KEYS[7 + i], KEYS[5],
    KEYS[6], ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ttl, ARGV[a + 4])
end
reserve_commit(now, KEYS[1], KEYS[7], view)
return out
