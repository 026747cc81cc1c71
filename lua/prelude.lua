-- prelude.lua: shared helpers, prepended to every engine script when the
-- gateway starts (the scripts stay one EVALSHA each; Redis sees one body).
--
-- Conventions every script follows:
--   * the one clock is Redis TIME, read inside the script, in milliseconds
--     (once per call: every member of a batch is judged at the same moment);
--   * every key is passed in KEYS and shares the sale's hash tag;
--   * a reply is an array whose first element is the outcome word and whose
--     second is the server time in ms, so callers always learn the clock.
--
-- Sale hash fields: total available held sold starts_ms ends_ms paused limit
-- hold_ms price_cents currency def version, sold_base (units sold whose
-- records a rebuild dropped), retired (1 once the worker's loops let go),
-- sold_outs (how many times `available` went from above 0 to 0),
-- and the record tallies th and ts (units of held and of confirmed records),
-- kept up to date by every script that writes a record once `tallied` is 1,
-- so that no repair needs to read every record.
-- A reservation is one field of the reservations hash: id -> cjson record
-- {c = customer, q = quantity, s = status, e = expires_ms, t = created_ms,
--  pc = price_cents, cu = currency, o = order_id, pr = payment_ref, ct = confirmed_ms,
--  cb = the service that confirmed it (absent: the customer did)}.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether a sale takes reserves now: started, not ended, not paused. The
-- same rule as `Window::at` in src/domain/sale.rs, which judges it outside Redis.
local function is_live(starts_ms, ends_ms, paused, now)
  return paused ~= '1' and now >= tonumber(starts_ms) and now < tonumber(ends_ms)
end

-- Moves a record tally (th or ts) of a sale by q, if the sale keeps them.
-- A sale created before the tallies existed has none until a recount counts
-- its records once and sets `tallied`.
local function tally(sale, field, q)
  if redis.call('HGET', sale, 'tallied') == '1' then redis.call('HINCRBY', sale, field, q) end
end

-- The events for the store go to their own stream per sale (KEYS `events`),
-- not to the orders' outbox: a worker of the version before reads only the
-- outbox and dead-letters anything there that is not an order. The entry is
-- written in the step that makes the change, with the event's id fixed here,
-- so no crash falls between the two and a flush replayed after a crash
-- writes no second row. Fields: id, type, ms (Redis TIME of the change),
-- version (the sale's, after it), then rid and rec (the record as stored) or
-- the sale's stock figures.
local function hold_event(events, now, version, rid, enc, status)
  redis.call('XADD', events, '*', 'id', rid .. '.reservation.' .. status,
    'type', 'reservation.' .. status, 'ms', now, 'version', version, 'rid', rid, 'rec', enc)
end

-- Records `sale.sold_out`: the caller has just taken `available` from above
-- 0 to 0. The id counts the sale's sell-outs (`sold_outs`), not its version
-- alone: a hold that expires and is taken again empties the sale once more,
-- and that is another occurrence. The sale id is the keys' hash tag.
local function sold_out(sale, events, now)
  local n = redis.call('HINCRBY', sale, 'sold_outs', 1)
  local s = redis.call('HMGET', sale, 'total', 'available', 'held', 'sold', 'version')
  local sale_id = string.match(sale, '{(.*)}')
  redis.call('XADD', events, '*', 'id', sale_id .. '.sale.sold_out.' .. n,
    'type', 'sale.sold_out', 'ms', now, 'version', s[5],
    'total', s[1], 'available', s[2], 'held', s[3], 'sold', s[4])
end

-- Ends a hold that is still `held`: its units go back to `available`, the
-- customer's count drops, it leaves the deadline index, and its event is
-- recorded. `status` is 'released' or 'expired'. Returns the record as
-- stored.
local function end_hold(now, sale, reservations, customers, due, events, rid, rec, status)
  redis.call('HINCRBY', sale, 'held', -rec.q)
  redis.call('HINCRBY', sale, 'available', rec.q)
  local version = redis.call('HINCRBY', sale, 'version', 1)
  tally(sale, 'th', -rec.q)
  if redis.call('HINCRBY', customers, rec.c, -rec.q) <= 0 then
    redis.call('HDEL', customers, rec.c)
  end
  redis.call('ZREM', due, rid)
  rec.s = status
  local enc = cjson.encode(rec)
  redis.call('HSET', reservations, rid, enc)
  hold_event(events, now, version, rid, enc, status)
  return enc
end

-- Whether the sale's set of applied adjustment ids holds one that is not in
-- `known` (a table id -> true: the ids Postgres has settled as applied).
-- Such an adjustment is still in flight, and a repair that set `total` from
-- Postgres now would reverse it.
local function unknown_adjustment(applied, known)
  for _, id in ipairs(redis.call('SMEMBERS', applied)) do
    if not known[id] then return id end
  end
  return nil
end

-- The units of the sale's held and confirmed records, by reading every
-- record: only for a sale created before the tallies existed, once.
local function count_records(reservations)
  local held, confirmed = 0, 0
  local all = redis.call('HGETALL', reservations)
  for i = 2, #all, 2 do
    local rec = cjson.decode(all[i])
    if rec.s == 'held' then held = held + rec.q
    elseif rec.s == 'confirmed' then confirmed = confirmed + rec.q end
  end
  return held, confirmed
end

-- The record tallies (held units, confirmed units) of a sale, counting the
-- records once if the sale has none yet.
local function tallies(sale, reservations)
  local t = redis.call('HMGET', sale, 'tallied', 'th', 'ts')
  if t[1] == '1' then return tonumber(t[2]), tonumber(t[3]) end
  local held, confirmed = count_records(reservations)
  redis.call('HSET', sale, 'tallied', 1, 'th', held, 'ts', confirmed)
  return held, confirmed
end

-- A record's fields the hold scripts compute with. Checked before the
-- first write, so a corrupt record faults with nothing of it changed.
local function check_record(rid, rec)
  if type(rec) ~= 'table' or type(rec.q) ~= 'number' or type(rec.c) ~= 'string'
    or type(rec.e) ~= 'number' or rec.pc == nil or rec.cu == nil then
    error('corrupt reservation record ' .. rid)
  end
end

-- A hold's record (encoded and decoded, checked) when it exists and `cust`
-- owns it ('' for any owner: a service or an admin); nil otherwise, which
-- the hold scripts answer reservation_not_found, so a stranger's hold looks
-- like none.
local function load_hold(reservations, rid, cust)
  local enc = redis.call('HGET', reservations, rid)
  if not enc then return nil end
  local rec = cjson.decode(enc)
  check_record(rid, rec)
  if cust ~= '' and rec.c ~= cust then return nil end
  return enc, rec
end

-- The waiting room (a sale with `room` = 1 in its hash). Room hash fields:
-- opens_ms rate burst adm_ms (its configuration), sha (SHA-256 of the seed,
-- published when the room opens) seed (secret until published), next (the
-- next ticket), members (tickets taken before the sale's start, set once at
-- the seal), published (1 once Postgres keeps the seal), admitted (the
-- positions handed an admission so far), issued (admission tokens issued).
-- Tickets hash: ticket -> cjson {c = customer, j = joined_ms, s = 'waiting' |
-- 'admitted' | 'used', k = token secret, x = token expires_ms, r = the hold
-- it made}. Queuers hash: customer -> their latest ticket.

-- Seals the room if the sale has started: the members are the tickets
-- taken so far. Every script that hands out tickets calls it first, so no
-- ticket taken after the start can count as a member. O(1).
local function seal_if_due(room, starts_ms, now)
  if now >= tonumber(starts_ms) and not redis.call('HGET', room, 'members') then
    redis.call('HSET', room, 'members', redis.call('HGET', room, 'next') or 0)
  end
end

-- A ticket's status at `now`: an admission not used by its deadline has
-- expired.
local function ticket_status(rec, now)
  if rec.s == 'admitted' and now >= rec.x then return 'expired' end
  return rec.s
end

-- The ticket an admission token names, if the token is `<ticket>.<secret>`,
-- admits `cust` now and is not used: (ticket, record), else nil.
local function admission(tickets, token, cust, now)
  local t, secret = string.match(token, '^(%d+)%.(%x+)$')
  if not t then return nil end
  local enc = redis.call('HGET', tickets, t)
  if not enc then return nil end
  local rec = cjson.decode(enc)
  if rec.c ~= cust or rec.k ~= secret or ticket_status(rec, now) ~= 'admitted' then return nil end
  return t, rec
end

-- The sale's fields a reserve reads, read once per call: the members of a
-- batch share them (and the stock they take, in `available`), so a member
-- costs only what is its own (its customer's count, its record, its
-- deadline). nil when the sale does not exist.
local function reserve_view(sale)
  local s = redis.call('HMGET', sale, 'available', 'starts_ms', 'ends_ms', 'paused',
    'limit', 'hold_ms', 'price_cents', 'currency', 'room', 'tallied')
  if not s[1] then return nil end
  return {available = tonumber(s[1]), starts_ms = s[2], ends_ms = s[3], paused = s[4],
    limit = s[5], hold_ms = s[6], pc = tonumber(s[7]), cu = s[8], room = s[9] == '1',
    tallied = s[10] == '1', taken = 0, holds = 0}
end

-- Writes what a call's reserves took to the sale's counters, once per call,
-- and records `sale.sold_out` if they emptied it (reserves only take, so a
-- call empties a sale at most once). Safe to defer to the end: Redis
-- refuses a script's writes (out of memory, a replica) only at its first
-- write, so once a member has written its hold, this write happens too.
local function reserve_commit(now, sale, events, view)
  if not view or view.holds == 0 then return end
  redis.call('HINCRBY', sale, 'available', -view.taken)
  redis.call('HINCRBY', sale, 'held', view.taken)
  redis.call('HINCRBY', sale, 'version', view.holds)
  if view.tallied then redis.call('HINCRBY', sale, 'th', view.taken) end
  if view.available == 0 then sold_out(sale, events, now) end
end

-- One reserve at the clock reading `now` against the sale's `view` (keys,
-- arguments and reply as in reserve.lua). reserve.lua is one call of it and
-- reserve_batch.lua one call per member on one view, so a member of a batch
-- gets exactly the answer it would have got alone at that point of the
-- sequence. The sale's counters move in `reserve_commit`.
local function reserve_one(now, view, reservations, customers, due, idem, idem_index,
                           tickets, rid, cust, qty, fp, ttl, token)
  if fp ~= '' then
    local prev = redis.call('GET', idem)
    if prev then
      local sep = string.find(prev, '|', 1, true)
      if string.sub(prev, 1, sep - 1) ~= fp then return {'idempotency_key_reused', now} end
      local prid = string.sub(prev, sep + 1)
      local prec = redis.call('HGET', reservations, prid)
      if prec then return {'held', now, prid, prec} end
    end
  end

  -- A client library that retries a timed-out call sends the same id again.
  local existing = redis.call('HGET', reservations, rid)
  if existing then return {'held', now, rid, existing} end

  if not view then return {'sale_not_found', now} end
  if not is_live(view.starts_ms, view.ends_ms, view.paused, now) then return {'sale_not_live', now} end
  -- Behind a waiting room only an admitted buyer reserves, and the token is
  -- used up below, with the hold: one hold per token, none without.
  local ticket, trec
  if view.room then
    if token == '' then return {'admission_required', now} end
    ticket, trec = admission(tickets, token, cust, now)
    if not ticket then return {'admission_invalid', now} end
  end
  -- A count or a limit that is not a number (tampered) faults here, before
  -- any write.
  local mine = tonumber(redis.call('HGET', customers, cust) or '0')
  if mine + qty > tonumber(view.limit) then return {'limit_exceeded', now} end
  local expires = now + tonumber(view.hold_ms)
  if view.available == 0 then return {'sold_out', now} end
  if view.available < qty then return {'insufficient_stock', now} end

  redis.call('HINCRBY', customers, cust, qty)
  view.available = view.available - qty
  view.taken = view.taken + qty
  view.holds = view.holds + 1
  local rec = cjson.encode({c = cust, q = qty, s = 'held', e = expires, t = now,
    pc = view.pc, cu = view.cu})
  redis.call('HSET', reservations, rid, rec)
  redis.call('ZADD', due, expires, rid)
  if ticket then
    trec.s = 'used'
    trec.r = rid
    redis.call('HSET', tickets, ticket, cjson.encode(trec))
  end
  if fp ~= '' then
    redis.call('SET', idem, fp .. '|' .. rid, 'EX', ttl)
    redis.call('SADD', idem_index, idem)
  end
  return {'held', now, rid, rec}
end

-- One confirm at `now` (keys, arguments and reply as in confirm.lua).
local function confirm_one(now, sale, reservations, customers, due, outbox, events, sale_id,
                           rid, cust, order_id, payment_ref, confirmed_by)
  local enc, rec = load_hold(reservations, rid, cust)
  if not enc then return {'reservation_not_found', now} end
  if rec.s == 'confirmed' then return {'confirmed', now, rid, enc} end
  if rec.s == 'expired' then return {'hold_expired', now, rid, enc} end
  if rec.s ~= 'held' then return {'reservation_not_held', now, rid, enc} end
  if now >= rec.e then
    return {'hold_expired', now, rid,
      end_hold(now, sale, reservations, customers, due, events, rid, rec, 'expired')}
  end

  redis.call('HINCRBY', sale, 'held', -rec.q)
  redis.call('HINCRBY', sale, 'sold', rec.q)
  local version = redis.call('HINCRBY', sale, 'version', 1)
  tally(sale, 'th', -rec.q)
  tally(sale, 'ts', rec.q)
  redis.call('ZREM', due, rid)
  rec.s = 'confirmed'
  rec.o = order_id
  rec.pr = payment_ref
  rec.ct = now
  if confirmed_by ~= '' then rec.cb = confirmed_by end
  enc = cjson.encode(rec)
  redis.call('HSET', reservations, rid, enc)
  -- The order entry is also the record of `reservation.confirmed` (the flush
  -- derives the event from it), so it carries the sale's version.
  redis.call('XADD', outbox, '*',
    'order_id', rec.o, 'reservation_id', rid, 'sale_id', sale_id, 'customer_id', rec.c,
    'quantity', rec.q, 'price_cents', rec.pc, 'currency', rec.cu,
    'payment_ref', rec.pr, 'confirmed_ms', now, 'expires_ms', rec.e,
    'confirmed_by', confirmed_by, 'version', version)
  return {'confirmed', now, rid, enc}
end

-- One release at `now` (keys, arguments and reply as in release.lua); `cust`
-- is '' when an admin releases.
local function release_one(now, sale, reservations, customers, due, events, rid, cust)
  local enc, rec = load_hold(reservations, rid, cust)
  if not enc then return {'reservation_not_found', now} end
  if rec.s == 'released' then return {'released', now, rid, enc} end
  if rec.s ~= 'held' then return {'reservation_not_held', now, rid, enc} end
  if now >= rec.e then
    return {'reservation_not_held', now, rid,
      end_hold(now, sale, reservations, customers, due, events, rid, rec, 'expired')}
  end
  return {'released', now, rid,
    end_hold(now, sale, reservations, customers, due, events, rid, rec, 'released')}
end

-- Errors that pass by themselves (Redis out of memory, a replica gone):
-- they fail the whole batch, which the gateway answers 503, as it would a
-- single call.
local function transient(msg)
  return string.find(msg, '^OOM') or string.find(msg, '^BUSY') or string.find(msg, '^NOREPLICAS')
    or string.find(msg, '^READONLY') or string.find(msg, '^MASTERDOWN')
end

-- Runs one member of a batch. Redis keeps what a script wrote before an
-- error, so a member's fault (a corrupt record, a tampered count) must not
-- abort the script: the members before it have written their holds and
-- orders, and would be answered with an error for work that was done. In
-- pcall, the fault becomes this member's answer {'fault', now, message}
-- and the members after it run. The hold functions check what they compute
-- with before their first write, so a faulting member has changed nothing.
local function member(now, fn, ...)
  local ok, reply = pcall(fn, now, ...)
  if ok then return reply end
  local msg = type(reply) == 'table' and tostring(reply.err) or tostring(reply)
  if transient(msg) then error(reply, 0) end
  return {'fault', now, msg}
end
