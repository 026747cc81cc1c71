-- wrk script: POST /v1/sales/<sale>/reservations {"quantity":1}, one bearer
-- token per request, rotated over many customers; counts every answer that
-- is not 201 Created and prints the tally (and a few bodies) at the end.
--
--   TOKENS=/tmp/bench/tokens.txt SALE=<sale id> \
--     wrk -t2 -c64 -d15s --latency -s bench/reserve.lua http://127.0.0.1:18080
--
-- or, without the environment: wrk ... -s bench/reserve.lua URL -- TOKENS SALE
--
-- TOKENS: a file of bearer tokens, one per line (see bench/README.md).
-- SALE:   the sale id; its per_customer_limit must exceed the requests each
--         customer gets (requests / tokens), or the excess answers 409.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file = os.getenv("TOKENS") or args[1]
  local sale = os.getenv("SALE") or args[2]
  if not file or not sale then
    error("set TOKENS (token file) and SALE (sale id), or pass them after --")
  end
  tokens = {}
  for line in io.lines(file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
  if #tokens == 0 then error("no tokens in " .. file) end
  path = "/v1/sales/" .. sale .. "/reservations"
  body = '{"quantity":1}'
  -- Threads start at different customers.
  counter = math.floor(id * #tokens / 2)
  created = 0
  other = 0
  statuses = {}
  samples = {}
end

function request()
  counter = counter + 1
  local token = tokens[(counter % #tokens) + 1]
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, resp_body)
  if status == 201 then
    created = created + 1
  else
    other = other + 1
    statuses[status] = (statuses[status] or 0) + 1
    if #samples < 3 then samples[#samples + 1] = status .. " " .. (resp_body or "") end
  end
end

function done(summary, latency, requests)
  local total_created, total_other, by_status = 0, 0, {}
  for _, t in ipairs(threads) do
    total_created = total_created + t:get("created")
    total_other = total_other + t:get("other")
    local st = t:get("statuses")
    for code, n in pairs(st) do by_status[code] = (by_status[code] or 0) + n end
    for _, s in ipairs(t:get("samples")) do io.write("sample non-201: ", s, "\n") end
  end
  io.write(string.format("responses 201: %d, non-201: %d\n", total_created, total_other))
  for code, n in pairs(by_status) do io.write(string.format("  status %s: %d\n", code, n)) end
  io.write(string.format("socket errors: connect %d, read %d, write %d, timeout %d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("latency p%g: %.3f ms\n", p, latency:percentile(p) / 1000))
  end
end
