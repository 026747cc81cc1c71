-- reserve.lua: take units from a sale and record a hold that expires.
--
-- KEYS[1] sale hash          KEYS[2] reservations hash
-- KEYS[3] customers hash (customer -> units held + confirmed)
-- KEYS[4] deadline index (zset: reservation id -> expires_ms)
-- KEYS[5] idempotency key of this customer and Idempotency-Key header (with
--         no header, any key of the sale: it is never read)
-- KEYS[6] set of the sale's idempotency keys (so retention finds them
--         without scanning the keyspace)
-- KEYS[7] the waiting room's tickets (read only when the sale has a room)
-- KEYS[8] events stream (`sale.sold_out` when this reserve empties the sale)
-- ARGV[1] reservation id (made by the gateway; retrying the same id is safe)
-- ARGV[2] customer id        ARGV[3] quantity (>= 1)
-- ARGV[4] idempotency fingerprint of the request, '' when no header was sent
-- ARGV[5] idempotency key lifetime, seconds
-- ARGV[6] admission token (header Admission-Token), '' when none was sent
-- Returns {'held', now_ms, reservation_id, record}
--      or {'idempotency_key_reused'|'sale_not_found'|'sale_not_live'|
--          'admission_required'|'admission_invalid'|
--          'limit_exceeded'|'sold_out'|'insufficient_stock', now_ms}
--
-- Invariants: available never goes below 0 and available + held + sold stays
-- equal to total; a customer's held + confirmed never passes the limit. The
-- checks and the move happen in one script, so no other request can slip
-- between the read of a counter and its update. Behind a waiting room the
-- admission token is checked before the move and used up with it, in the
-- same step: a token makes at most one hold, and a refused reserve leaves
-- it usable.
-- The logic is `reserve_one` in prelude.lua, shared with reserve_batch.lua.
local now = now_ms()
local view = reserve_view(KEYS[1])
local reply = reserve_one(now, view, KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6])
reserve_commit(now, KEYS[1], KEYS[8], view)
return reply
