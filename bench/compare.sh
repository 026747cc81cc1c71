#!/usr/bin/env bash
# bench/compare.sh: "Why flashsale", the whole comparison in one command.
#
#   bash bench/compare.sh          # build, measure, write BENCHMARKS.md section D
#                                  # and bench/comparison.png
#
# The same load generator (`flashsale-loadtest`) plays the same sale against:
#   naive            bench/baseline: SELECT stock, then UPDATE stock = <read> - n
#                    and INSERT the order; no transaction, no lock (lost updates)
#   naive-decrement  the same read and check, then UPDATE stock = stock - n
#                    (the counter goes negative)
#   rowlock          SELECT ... FOR UPDATE, UPDATE, INSERT in one transaction
#   conditional      one UPDATE ... WHERE stock >= n with the INSERT (one statement)
#   flashsale        the real gateway (`flashsale serve`, rate limits off)
# and, as the limit, `redis-benchmark` runs the engine's own reserve script
# (prelude + lua/reserve.lua, one EVALSHA per call) straight against Redis:
#   redis
# The baselines run in loadgen/examples/baseline_server (axum, the gateway's
# paths; the stores are loadgen/src/baseline.rs).
#
# Each case, at each concurrency, is measured twice:
#   throughput  reserves for DURATION seconds on a sale too large to sell out
#               (every answer a 201): req/s, p50/p99;
#   sell-out    SELLOUT_REQUESTS reserves of 1 unit on SELLOUT_STOCK units, the
#               stock read every 20 ms meanwhile: units granted beyond the
#               stock (oversold) and the lowest stock figure seen.
#
# Needs: Redis on 127.0.0.1:6379, Postgres on 127.0.0.1:5432 (user postgres,
# trust), redis-benchmark, redis-cli, psql, curl, python3 (matplotlib is
# installed with pip when missing). Uses only the keys under `cmpbench:` and
# the databases flashsale_bench_compare and flashsale_bench_baseline, all
# removed at the end (KEEP_DB=1 keeps the databases).
#
# Knobs (environment): CONCURRENCY ("1 16 64 256"), DURATION (10, seconds),
# CASES (all six, in the order above), CUSTOMERS (20000), POOL (32, baseline
# Postgres connections), SELLOUT_STOCK (100), SELLOUT_REQUESTS (2000),
# RAW_SECONDS (6: redis-benchmark gets about this many seconds' worth of
# calls), PORT (18121; the baselines use PORT, the gateway PORT+1),
# OUT (/tmp/flashsale-compare), QUIET_MAX (45: seconds to wait for an idle
# machine before each run), WRITE_DOCS (1: update BENCHMARKS.md and the PNG).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

CONCURRENCY=${CONCURRENCY:-"1 16 64 256"}
DURATION=${DURATION:-10}
CASES=${CASES:-"naive naive-decrement rowlock conditional flashsale redis"}
CUSTOMERS=${CUSTOMERS:-20000}
POOL=${POOL:-32}
SELLOUT_STOCK=${SELLOUT_STOCK:-100}
SELLOUT_REQUESTS=${SELLOUT_REQUESTS:-2000}
RAW_SECONDS=${RAW_SECONDS:-6}
PORT=${PORT:-18121}
OUT=${OUT:-/tmp/flashsale-compare}
QUIET_MAX=${QUIET_MAX:-45}
WRITE_DOCS=${WRITE_DOCS:-1}
KEEP_DB=${KEEP_DB:-0}

PREFIX=cmpbench
GW_DB=flashsale_bench_compare
BL_DB=flashsale_bench_baseline
PG=postgres://postgres@127.0.0.1:5432
BL_PORT=$PORT
GW_PORT=$((PORT + 1))
HZ=$(getconf CLK_TCK)

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in redis-benchmark redis-cli psql curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y redis-tools postgresql-client curl python3)"
done
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || die "no Redis on 127.0.0.1:6379"
psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null || die "no Postgres on 127.0.0.1:5432"
if [[ $WRITE_DOCS == 1 ]] && ! python3 -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib (pip)"
  python3 -m pip install --quiet matplotlib >&2 || die "pip install matplotlib failed"
fi

mkdir -p "$OUT/bin" "$OUT/logs"
rm -f "$OUT"/logs/* "$OUT/results.jsonl"

# --- binaries (pinned copies: the target dir is shared) -----------------------
log "cargo build --release (flashsale, flashsale-loadtest, examples/baseline_server)"
cargo build --release --bin flashsale --bin flashsale-loadtest --example baseline_server >&2
cp target/release/flashsale "$OUT/bin/flashsale"
cp target/release/flashsale-loadtest "$OUT/bin/flashsale-loadtest"
cp target/release/examples/baseline_server "$OUT/bin/baseline_server"
FS=$OUT/bin/flashsale
LT=$OUT/bin/flashsale-loadtest
BS=$OUT/bin/baseline_server
{
  echo "date: $(date -u +%FT%TZ)"
  echo "source: $(git rev-parse --short HEAD 2>/dev/null || echo '?') + $(git status --porcelain 2>/dev/null | wc -l) uncommitted path(s)"
  echo "machine: $(nproc) cores; $(redis-server --version 2>/dev/null | awk '{print "redis " $3}' | tr -d 'v='); $(psql -h 127.0.0.1 -U postgres -Atc 'show server_version' | awk '{print "postgres " $1}')"
  echo "duration: ${DURATION}s per throughput run; sell-out: $SELLOUT_REQUESTS reserves on $SELLOUT_STOCK units; baseline pool: $POOL connections"
} > "$OUT/meta.txt"

# --- cleanup ---------------------------------------------------------------------
SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
drop_keys() { redis-cli --scan --pattern "$PREFIX:*" | xargs -r redis-cli unlink >/dev/null || true; }
cleanup() {
  local rc=$?
  stop_server
  drop_keys
  if [[ "$KEEP_DB" != 1 ]]; then
    for db in $GW_DB $BL_DB; do
      psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- a quiet machine ----------------------------------------------------------------
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
BUSY=0
# Waits (up to QUIET_MAX s) for the 2 cores to be nearly idle; BUSY is the
# share of one core that was busy in the last second before the run.
wait_quiet() {
  local waited=0 b0 b1
  while :; do
    b0=$(busy_ticks); sleep 1; b1=$(busy_ticks)
    BUSY=$(( (b1 - b0) * 100 / HZ ))
    (( BUSY <= 20 )) && return 0
    (( waited == 0 )) && log "machine busy (${BUSY}% of a core), waiting up to ${QUIET_MAX}s"
    waited=$((waited + 1))
    if (( waited >= QUIET_MAX )); then log "still busy (${BUSY}%); measuring anyway"; return 0; fi
  done
}

wait_ready() { # wait_ready URL PID LOG
  for _ in $(seq 1 150); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1/readyz")" == 200 ]] && return 0
    kill -0 "$2" 2>/dev/null || die "server exited; see $3"
    sleep 0.1
  done
  die "$1 not ready after 15 s; see $3"
}

# --- servers -------------------------------------------------------------------------
# Every load-generator connection comes from 127.0.0.1: the per-address
# connection cap is lifted, as the rate limits are.
GW_ENV=("FLASHSALE__HTTP__ADDR=127.0.0.1:$GW_PORT" "FLASHSALE__REDIS__KEY_PREFIX=$PREFIX"
        "FLASHSALE__DATABASE__URL=$PG/$GW_DB" FLASHSALE__LIMITS__ENABLED=false
        FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn)
start_gateway() { # start_gateway NAME
  env "${GW_ENV[@]}" "$FS" serve > "$OUT/logs/$1.server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "http://127.0.0.1:$GW_PORT" "$SERVER_PID" "$OUT/logs/$1.server.log"
}
start_baseline() { # start_baseline MODE NAME
  # Every run starts from empty tables, so the orders index is the same size.
  psql -h 127.0.0.1 -U postgres -d $BL_DB -qc 'TRUNCATE stock, orders' >/dev/null 2>&1 || true
  "$BS" --mode "$1" --addr "127.0.0.1:$BL_PORT" --database-url "$PG/$BL_DB" --pool "$POOL" \
    > "$OUT/logs/$2.server.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "http://127.0.0.1:$BL_PORT" "$SERVER_PID" "$OUT/logs/$2.server.log"
}

# record CASE C PHASE FILE: one JSON line per run into results.jsonl
record() {
  local report
  report=$(tail -n 1 "$4")
  [[ $report == \{* ]] || die "no JSON report in $4"
  printf '{"case":"%s","c":%s,"phase":"%s","busy_before":%s,"report":%s}\n' \
    "$1" "$2" "$3" "$BUSY" "$report" >> "$OUT/results.jsonl"
}

# loadtest CASE C KIND URL [DB]: the throughput run, then the sell-out run
loadtest() {
  local case=$1 c=$2 kind=$3 url=$4 db=${5:-} rc
  local -a common=(--url "$url" --target-kind "$kind" --concurrency "$c" --max-quantity 1
                   --hold-seconds 3600 --confirm-share 0 --release-share 0 --json)
  [[ -n $db ]] && common+=(--database-url "$db")
  local name=$case-c$c
  rc=0
  "$LT" "${common[@]}" --duration "$DURATION" --customers "$CUSTOMERS" \
    --stock 1000000000 --limit 1000000 --sample-ms 0 \
    > "$OUT/logs/$name.throughput.json" 2> "$OUT/logs/$name.throughput.txt" || rc=$?
  (( rc <= 1 )) || die "loadtest failed ($rc); see $OUT/logs/$name.throughput.txt"
  record "$case" "$c" throughput "$OUT/logs/$name.throughput.json"
  rc=0
  "$LT" "${common[@]}" --requests "$SELLOUT_REQUESTS" --customers $((SELLOUT_REQUESTS / 2)) \
    --stock "$SELLOUT_STOCK" --limit 2 --sample-ms 20 \
    > "$OUT/logs/$name.sellout.json" 2> "$OUT/logs/$name.sellout.txt" || rc=$?
  (( rc <= 1 )) || die "loadtest failed ($rc); see $OUT/logs/$name.sellout.txt"
  record "$case" "$c" sellout "$OUT/logs/$name.sellout.json"
  python3 - "$OUT/logs/$name.throughput.json" "$OUT/logs/$name.sellout.json" "$name" <<'PY' >&2
import json, sys
t = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
print("[compare] %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms; sell-out: %d of %d granted, oversold %d, lowest stock %d%s"
      % (sys.argv[3], t["throughput"], t["latency_ms"]["p50"], t["latency_ms"]["p99"],
         s["units_granted"], s["stock"], s["oversold_units"], s["min_available_seen"],
         "" if s["broken"] == [] else "; BROKEN: " + "; ".join(s["broken"])))
PY
}

# --- setup -----------------------------------------------------------------------------
log "fresh databases $GW_DB (migrated) and $BL_DB (created by the baseline server)"
for db in $GW_DB $BL_DB; do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
done
env "${GW_ENV[@]}" "$FS" migrate >&2
drop_keys
ADMIN=$("$FS" token --sub compare-ops --role admin --ttl 7200)

# The reserve script exactly as the engine builds it: prelude, newline, body.
SCRIPT_FILE=$OUT/reserve-with-prelude.lua
{ cat lua/prelude.lua; echo; cat lua/reserve.lua; } > "$SCRIPT_FILE"
SHA=$(redis-cli -x script load < "$SCRIPT_FILE" | tr -d '\r')
[[ $SHA == "$(sha1sum < "$SCRIPT_FILE" | cut -c1-40)" ]] || die "SCRIPT LOAD sha mismatch"

# create_sale ID STOCK LIMIT: through the gateway (the real create_sale script)
create_sale() {
  local code
  code=$(curl -s -o "$OUT/logs/sale-$1.json" -w '%{http_code}' -X POST "http://127.0.0.1:$GW_PORT/v1/sales" \
    -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"id\":\"$1\",\"sku\":\"CMP-1\",\"name\":\"compare bench\",\"price_cents\":100,
         \"currency\":\"IDR\",\"stock\":$2,
         \"starts_at\":\"$(date -u -d '-1 min' +%FT%TZ)\",\"ends_at\":\"$(date -u -d '+1 day' +%FT%TZ)\",
         \"per_customer_limit\":$3,\"hold_seconds\":3600}")
  [[ $code == 201 ]] || die "creating sale $1 answered $code: $(cat "$OUT/logs/sale-$1.json")"
}

# raw_run C: redis-benchmark EVALSHA of the reserve script, throughput then sell-out
raw_run() {
  local c=$1 t
  t=$(date +%s)
  local big=raw-c$c-$t small=raw-sellout-c$c-$t
  start_gateway "redis-c$c" # only to create the two sales, then it goes
  create_sale "$big" 1000000000 1000000
  create_sale "$small" "$SELLOUT_STOCK" 2
  stop_server
  # About RAW_SECONDS worth of calls: ~8k/s at c=1, ~60k/s above.
  local n=$(( c == 1 ? 8000 * RAW_SECONDS : 60000 * RAW_SECONDS )) threads=$(( c < 2 ? 1 : 2 ))
  bench() { # bench SALE N FILE
    local k="$PREFIX:{$1}"
    # KEYS: sale, reservations, customers, deadline index, idempotency key (unused)
    # ARGV: reservation id, customer, quantity, fingerprint ('' = none), idem ttl
    redis-benchmark -h 127.0.0.1 -p 6379 -c "$c" -n "$2" --threads "$threads" -r 100000000 --csv \
      evalsha "$SHA" 5 "$k:sale" "$k:res" "$k:cust" "$k:due" "$k:idem:0::" \
      "$1.__rand_int__" "c__rand_int__" 1 "" 86400 > "$3" 2>&1
  }
  wait_quiet
  local t0 t1 grew
  t0=$(date +%s.%N)
  bench "$big" "$n" "$OUT/logs/redis-c$c.throughput.csv"
  t1=$(date +%s.%N)
  # Holds made (a few calls draw a reservation id already used: they get
  # that hold back, as a retry would).
  grew=$(redis-cli hget "$PREFIX:{$big}:sale" held | tr -d '\r')
  local row
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  row=$(awk -F'","' '/^"(EVALSHA|evalsha) /{m = $8; sub(/"$/, "", m); print $2, $3, $5, $7, m}' "$OUT/logs/redis-c$c.throughput.csv")
  [[ -n $row ]] || die "could not read $OUT/logs/redis-c$c.throughput.csv"
  local rps avg p50 p99 max
  read -r rps avg p50 p99 max <<< "$row"
  printf '{"case":"redis","c":%s,"phase":"throughput","busy_before":%s,"report":{"target_kind":"redis-benchmark","requests":%s,"seconds":%s,"throughput":%s,"latency_ms":{"mean":%s,"p50":%s,"p99":%s,"max":%s},"units_granted":%s,"stock":1000000000,"oversold_units":0,"min_available_seen":null,"negative_stock_seen":0,"stock_drift":0,"broken":[]}}\n' \
    "$c" "$BUSY" "$n" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" "$rps" "$avg" "$p50" "$p99" "$max" "${grew:-0}" \
    >> "$OUT/results.jsonl"
  # Sell-out: the same calls on SELLOUT_STOCK units; held must stop at the stock.
  bench "$small" "$SELLOUT_REQUESTS" "$OUT/logs/redis-c$c.sellout.csv"
  local figs total avail held sold
  figs=$(redis-cli hmget "$PREFIX:{$small}:sale" total available held sold | tr -d '\r' | paste -sd' ')
  read -r total avail held sold <<< "$figs"
  local over=$(( held + sold - total )); (( over < 0 )) && over=0
  local broken='[]'
  (( avail + held + sold != total || avail < 0 || over > 0 )) && broken='["stock does not add up or oversold"]'
  printf '{"case":"redis","c":%s,"phase":"sellout","busy_before":%s,"report":{"target_kind":"redis-benchmark","requests":%s,"units_granted":%s,"stock":%s,"oversold_units":%s,"min_available_seen":%s,"negative_stock_seen":%s,"stock_drift":%s,"broken":%s}}\n' \
    "$c" "$BUSY" "$SELLOUT_REQUESTS" "$((held + sold))" "$total" "$over" "$avail" "$(( avail < 0 ? 1 : 0 ))" \
    "$(( avail + held + sold - total ))" "$broken" >> "$OUT/results.jsonl"
  log "redis-c$c: $rps calls/s, p50 $p50 ms, p99 $p99 ms (held grew by ${grew:-0} of $n calls); sell-out: $((held + sold)) of $total held, oversold $over"
  drop_keys
}

# --- the runs ------------------------------------------------------------------------------
for c in $CONCURRENCY; do
  for case in $CASES; do
    case $case in
      naive|naive-decrement|rowlock|conditional)
        wait_quiet
        start_baseline "$case" "$case-c$c"
        loadtest "$case" "$c" baseline "http://127.0.0.1:$BL_PORT" "$PG/$BL_DB"
        stop_server
        ;;
      flashsale)
        wait_quiet
        start_gateway "flashsale-c$c"
        loadtest flashsale "$c" flashsale "http://127.0.0.1:$GW_PORT" "$PG/$GW_DB"
        stop_server
        drop_keys
        ;;
      redis) raw_run "$c" ;;
      *) die "unknown case $case" ;;
    esac
  done
done

# --- tables and chart ------------------------------------------------------------------------
if [[ $WRITE_DOCS == 1 ]]; then
  python3 bench/plot.py "$OUT/results.jsonl" --meta "$OUT/meta.txt" \
    --png "$ROOT/bench/comparison.png" --benchmarks "$ROOT/BENCHMARKS.md" > "$OUT/summary.md"
else
  python3 bench/plot.py "$OUT/results.jsonl" --meta "$OUT/meta.txt" > "$OUT/summary.md"
fi
cat "$OUT/summary.md"
log "done: $OUT/summary.md, $OUT/results.jsonl, logs in $OUT/logs"
