-- wrk script: GET the URL given on the command line (e.g. /healthz) and
-- print the latency percentiles in the same lines as bench/reserve.lua, so
-- that bench/batch.sh reads both the same way.
--
--   wrk -t1 -c64 -d8s --latency -s bench/healthz.lua http://127.0.0.1:18131/healthz

function done(summary, latency, requests)
  io.write(string.format("socket errors: connect %d, read %d, write %d, timeout %d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  io.write(string.format("responses non-2xx: %d\n", summary.errors.status))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("latency p%g: %.3f ms\n", p, latency:percentile(p) / 1000))
  end
end
