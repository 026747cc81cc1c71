-- floor_customers.lua: raise customers' counts to what they bought.
--
-- KEYS[1] customers hash (customer -> units held + confirmed)
-- ARGV[1..] customer, units, customer, units, ... (orders in Postgres; a
--           chunk of at most a thousand, so the call stays short)
-- Returns {'ok', now_ms, raised}
--
-- Invariant: a count only ever goes up here, to at least the customer's
-- units in Postgres, so a customer who bought up to the limit before Redis
-- lost the sale (or a counter) stays at it. Run before a recount or a
-- rebuild; a count already higher (units held now) is left as it is.
local now = now_ms()
local raised = 0
for i = 1, #ARGV, 2 do
  local c, q = ARGV[i], tonumber(ARGV[i + 1])
  if tonumber(redis.call('HGET', KEYS[1], c) or '0') < q then
    redis.call('HSET', KEYS[1], c, q)
    raised = raised + 1
  end
end
return {'ok', now, raised}
