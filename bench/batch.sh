#!/usr/bin/env bash
# bench/batch.sh: group commit (issue 18), every target of the issue side by
# side in one run on this machine.
#
#   bash bench/batch.sh              # build, one round (~3 min), summary table
#   ROUNDS=2 bash bench/batch.sh     # twice, to see the noise
#
# Each round, in this order (wrk -t1, limits off, CUSTOMERS tokens rotated,
# quantity 1, a sale too large to sell out, so every reserve is a 201):
#   raw        redis-benchmark -c C: the unbatched reserve script (prelude +
#              lua/reserve.lua, one EVALSHA per reserve) straight on Redis
#   batched    a gateway with engine.max_batch as shipped: GET /healthz at
#              c=C, then reserves at c=C, then reserves at c=1
#   single     a gateway with engine.max_batch = 1 (one call per reserve, as
#              before batching): reserves at c=C, then at c=1
#   confirm    loadgen/examples/confirm_bench: CONFIRM_HOLDS holds confirmed
#              at c=C through the engine, batched and max_batch = 1
#              alternating (2 runs each; the summary gives their mean)
# Redis figures are INFO commandstats deltas of the whole server: on a Redis
# shared with other work (other test suites) they include its EVALSHAs.
# For every gateway run: req/s, p50/p99, CPU seconds of the gateway, of
# redis-server and of wrk (from /proc), EVALSHA calls and usec (INFO
# commandstats deltas), units held, and the batch sizes (flashsale_batch_size
# from /metrics).
#
# Needs Redis on 127.0.0.1:6379, Postgres on 127.0.0.1:5432, wrk,
# redis-benchmark, redis-cli, psql, curl. Keys under `batchbench:` and the
# database flashsale_bench_batch are removed at the end.
#
# Knobs: ROUNDS (1), CONCURRENCY (64), DURATION (8 s per wrk run), WARMUP
# (3 s), CUSTOMERS (20000), RAW_N (300000 redis-benchmark calls),
# CONFIRM_HOLDS (20000), PORT (18131), OUT (/tmp/batchbench), QUIET_MAX (30 s
# to wait for an idle machine before each run), FS_BIN / CONFIRM_BIN (prebuilt
# binaries: no build).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-1}
C=${CONCURRENCY:-64}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-3}
CUSTOMERS=${CUSTOMERS:-20000}
RAW_N=${RAW_N:-300000}
CONFIRM_HOLDS=${CONFIRM_HOLDS:-20000}
PORT=${PORT:-18131}
OUT=${OUT:-/tmp/batchbench}
QUIET_MAX=${QUIET_MAX:-30}
PREFIX=batchbench
DB=flashsale_bench_batch
PG=postgres://postgres@127.0.0.1:5432
BASE=http://127.0.0.1:$PORT
HZ=$(getconf CLK_TCK)

log() { printf '[batch %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in wrk redis-benchmark redis-cli psql curl; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
mkdir -p "$OUT/bin" "$OUT/runs"

if [[ -z "${FS_BIN:-}" || -z "${CONFIRM_BIN:-}" ]]; then
  log "cargo build --release (flashsale, examples/confirm_bench)"
  cargo build --release --quiet --bin flashsale --example confirm_bench
  # Pinned copies: the target directory is shared with other builds.
  cp target/release/flashsale "$OUT/bin/flashsale"
  cp target/release/examples/confirm_bench "$OUT/bin/confirm_bench"
fi
FS=${FS_BIN:-$OUT/bin/flashsale}
CB=${CONFIRM_BIN:-$OUT/bin/confirm_bench}

GW_PID=""
stop_gateway() {
  [[ -n $GW_PID ]] || return 0
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
}
cleanup() {
  local rc=$?
  stop_gateway
  redis-cli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli unlink >/dev/null || true
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

proc_ticks() { [[ -r /proc/$1/stat ]] && sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}' || echo 0; }
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
evalsha() { # calls usec
  redis-cli info commandstats | tr -d '\r' | awk -F'[=,:]' '/^cmdstat_evalsha:/{print $3, $5}'
}
wait_quiet() {
  local waited=0 quiet=0 b0 b1
  while (( quiet < 2 )); do
    b0=$(busy_ticks); sleep 1; b1=$(busy_ticks)
    if (( (b1 - b0) * 100 / HZ <= 25 )); then quiet=$((quiet + 1)); continue; fi
    quiet=0; waited=$((waited + 1))
    (( waited == 1 )) && log "machine busy ($(( (b1 - b0) * 100 / HZ ))% of a core), waiting up to ${QUIET_MAX}s"
    (( waited >= QUIET_MAX )) && { log "still busy; measuring anyway"; return 0; }
  done
}
REDIS_PID=$(redis-cli info server | tr -d '\r' | awk -F: '/^process_id/{print $2}')

log "fresh database $DB"
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
FLASHSALE__DATABASE__URL=$PG/$DB "$FS" migrate >&2
TOKENS=$OUT/tokens-$CUSTOMERS.txt
if [[ ! -s $TOKENS ]] || ! "$FS" token --sub probe --ttl 60 >/dev/null; then
  log "minting $CUSTOMERS customer tokens"
  seq 1 "$CUSTOMERS" | xargs -P 2 -I{} "$FS" token --sub c{} --ttl 86400 > "$TOKENS.tmp"
  mv "$TOKENS.tmp" "$TOKENS"
fi
ADMIN=$("$FS" token --sub batch-ops --role admin --ttl 7200)

start_gateway() { # MAX_BATCH
  env FLASHSALE__HTTP__ADDR=127.0.0.1:$PORT FLASHSALE__REDIS__KEY_PREFIX=$PREFIX \
    FLASHSALE__DATABASE__URL=$PG/$DB FLASHSALE__LIMITS__ENABLED=false \
    FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP=100000 FLASHSALE__ENGINE__MAX_BATCH="$1" RUST_LOG=warn \
    "$FS" serve > "$OUT/runs/gateway-$1.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 1 100); do
    curl -sf "$BASE/readyz" >/dev/null && return 0
    kill -0 "$GW_PID" 2>/dev/null || die "gateway exited; see $OUT/runs/gateway-$1.log"
    sleep 0.1
  done
  die "gateway not ready"
}
create_sale() { # ID
  local code
  code=$(curl -s -o "$OUT/runs/sale.json" -w '%{http_code}' -X POST "$BASE/v1/sales" \
    -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"id\":\"$1\",\"sku\":\"B-1\",\"name\":\"batch bench\",\"price_cents\":100,\"currency\":\"IDR\",
         \"stock\":50000000,\"starts_at\":\"$(date -u -d '-1 min' +%FT%TZ)\",
         \"ends_at\":\"$(date -u -d '+1 day' +%FT%TZ)\",\"per_customer_limit\":1000000,\"hold_seconds\":3600}")
  [[ $code == 201 ]] || die "creating sale $1 answered $code: $(cat "$OUT/runs/sale.json")"
}
batch_hist() { # OP -> "sum count" of flashsale_batch_size
  curl -s "$BASE/metrics" | awk -v op="$1" '
    $1 == "flashsale_batch_size_sum{op=\"" op "\"}" {s = $2}
    $1 == "flashsale_batch_size_count{op=\"" op "\"}" {c = $2}
    END {print s + 0, c + 0}'
}

RESULTS=$OUT/results.tsv
printf 'round\tcase\tc\trps\tp50_ms\tp99_ms\tnon2xx\tgw_cpu_s\tredis_cpu_s\twrk_cpu_s\tother_cpu_s\tevalsha_calls\tevalsha_usec\theld\tbatch_sum\tbatch_count\tseconds\n' > "$RESULTS"

# wrk_run ROUND CASE C SCRIPT URL [SALE]: one measured wrk run and its row
wrk_run() {
  local round=$1 case=$2 c=$3 script=$4 url=$5 sale=${6:-}
  local name=r$round-$case-c$c
  wait_quiet
  TOKENS=$TOKENS SALE=$sale wrk -t1 -c"$c" -d"$WARMUP" -s "$script" "$url" > "$OUT/runs/$name.warmup.txt" 2>&1
  local held0=0 held1=0 g0 r0 b0 e0 h0 t0 t1 g1 r1 b1 e1 h1
  [[ -n $sale ]] && held0=$(redis-cli hget "$PREFIX:{$sale}:sale" held | tr -d '\r')
  h0=$(batch_hist reserve)
  g0=$(proc_ticks "$GW_PID"); r0=$(proc_ticks "$REDIS_PID"); b0=$(busy_ticks); e0=$(evalsha); t0=$(date +%s.%N)
  TOKENS=$TOKENS SALE=$sale /usr/bin/time -f 'wrk_cpu %U %S' -o "$OUT/runs/$name.time" \
    wrk -t1 -c"$c" -d"$DURATION" --latency -s "$script" "$url" > "$OUT/runs/$name.txt" 2>&1
  t1=$(date +%s.%N); g1=$(proc_ticks "$GW_PID"); r1=$(proc_ticks "$REDIS_PID"); b1=$(busy_ticks); e1=$(evalsha)
  h1=$(batch_hist reserve)
  [[ -n $sale ]] && held1=$(redis-cli hget "$PREFIX:{$sale}:sale" held | tr -d '\r')
  local f=$OUT/runs/$name.txt rps p50 p99 non wrk_s secs
  rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
  p50=$(awk '/^latency p50:/{print $3}' "$f")
  p99=$(awk '/^latency p99:/{print $3}' "$f")
  non=$(awk '/^responses 201:/{gsub(",", ""); print $5} /^responses non-2xx:/{print $3}' "$f")
  [[ -n $rps && -n $p99 ]] || die "could not read $f"
  wrk_s=$(awk '/^wrk_cpu/{print $2 + $3}' "$OUT/runs/$name.time")
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')
  read -r ec0 eu0 <<< "$e0"; read -r ec1 eu1 <<< "$e1"
  read -r hs0 hc0 <<< "$h0"; read -r hs1 hc1 <<< "$h1"
  awk -v OFS='\t' -v round="$round" -v cs="$case" -v c="$c" -v rps="$rps" -v p50="$p50" -v p99="$p99" \
    -v non="${non:-0}" -v g=$((g1 - g0)) -v r=$((r1 - r0)) -v b=$((b1 - b0)) -v w="$wrk_s" -v hz="$HZ" \
    -v ec=$((ec1 - ec0)) -v eu=$((eu1 - eu0)) -v held=$((held1 - held0)) -v hs="$hs0" -v hs1="$hs1" \
    -v hc="$hc0" -v hc1="$hc1" -v secs="$secs" 'BEGIN{
      print round, cs, c, rps, p50, p99, non, g / hz, r / hz, w, b / hz - g / hz - r / hz - w, ec, eu, held,
        hs1 - hs, hc1 - hc, secs}' >> "$RESULTS"
  log "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms, non-2xx ${non:-0}"
}

# The reserve script exactly as the engine builds it: prelude, newline, body.
SCRIPT_FILE=$OUT/reserve-with-prelude.lua
{ cat lua/prelude.lua; echo; cat lua/reserve.lua; } > "$SCRIPT_FILE"
SHA=$(redis-cli -x script load < "$SCRIPT_FILE" | tr -d '\r')
[[ $SHA == "$(sha1sum < "$SCRIPT_FILE" | cut -c1-40)" ]] || die "SCRIPT LOAD sha mismatch"

raw_run() { # ROUND
  local round=$1 sale=raw-r$1-$(date +%s)
  start_gateway 1; create_sale "$sale"; stop_gateway
  local k="$PREFIX:{$sale}"
  wait_quiet
  local r0 b0 e0 t0 r1 b1 e1 t1
  r0=$(proc_ticks "$REDIS_PID"); b0=$(busy_ticks); e0=$(evalsha); t0=$(date +%s.%N)
  redis-benchmark -h 127.0.0.1 -p 6379 -c "$C" -n "$RAW_N" --threads 2 -r 100000000 --csv \
    evalsha "$SHA" 5 "$k:sale" "$k:res" "$k:cust" "$k:due" "$k:idem:0::" \
    "$sale.__rand_int__" "c__rand_int__" 1 "" 86400 > "$OUT/runs/r$round-raw.csv" 2>&1
  t1=$(date +%s.%N); r1=$(proc_ticks "$REDIS_PID"); b1=$(busy_ticks); e1=$(evalsha)
  local held row
  held=$(redis-cli hget "$k:sale" held | tr -d '\r')
  row=$(awk -F'","' '/^"(EVALSHA|evalsha) /{print $2, $5, $7}' "$OUT/runs/r$round-raw.csv")
  [[ -n $row ]] || die "could not read $OUT/runs/r$round-raw.csv"
  read -r rps p50 p99 <<< "$row"
  read -r ec0 eu0 <<< "$e0"; read -r ec1 eu1 <<< "$e1"
  awk -v OFS='\t' -v round="$round" -v c="$C" -v rps="$rps" -v p50="$p50" -v p99="${p99%\"}" \
    -v r=$((r1 - r0)) -v b=$((b1 - b0)) -v hz="$HZ" -v ec=$((ec1 - ec0)) -v eu=$((eu1 - eu0)) \
    -v held="$held" -v t0="$t0" -v t1="$t1" 'BEGIN{
      print round, "raw", c, rps, p50, p99, 0, 0, r / hz, 0, b / hz - r / hz, ec, eu, held, ec, ec, t1 - t0}' >> "$RESULTS"
  log "raw r$round: $rps calls/s, p50 $p50 ms, p99 ${p99%\"} ms"
}

gateway_runs() { # ROUND MAX_BATCH CASE
  local round=$1 mb=$2 case=$3 sale
  start_gateway "$mb"
  sale=$case-r$round-$(date +%s)
  create_sale "$sale"
  [[ $case == batched ]] && wrk_run "$round" healthz "$C" bench/healthz.lua "$BASE/healthz"
  wrk_run "$round" "$case" "$C" bench/reserve.lua "$BASE" "$sale"
  wrk_run "$round" "$case" 1 bench/reserve.lua "$BASE" "$sale"
  stop_gateway
}

for round in $(seq 1 "$ROUNDS"); do
  raw_run "$round"
  gateway_runs "$round" "$(awk -F' *= *' '/^max_batch/{print $2}' config/default.toml)" batched
  gateway_runs "$round" 1 single
  wait_quiet
  log "confirm_bench r$round"
  "$CB" --holds "$CONFIRM_HOLDS" --concurrency "$C" --rounds 2 \
    --target batched=redis://127.0.0.1:6379 --target single=redis://127.0.0.1:6379 \
    --max-batch single=1 > "$OUT/runs/r$round-confirm.md" 2> "$OUT/runs/r$round-confirm.log"
done

python3 - "$RESULTS" "$OUT/runs" "$ROUNDS" <<'PY' | tee "$OUT/summary.md"
import csv, re, sys, glob
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
rounds = int(sys.argv[3])
def get(r, case, c):
    for x in rows:
        if x["round"] == str(r) and x["case"] == case and x["c"] == str(c):
            return x
f = lambda x, k: float(x[k])
print("| round | case | c | req/s | p50 ms | p99 ms | mean batch | Redis usec/call | Redis usec/reserve | CPU s: gateway / redis / wrk / other |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for x in rows:
    calls = f(x, "evalsha_calls"); held = f(x, "held")
    mean = f(x, "batch_sum") / f(x, "batch_count") if f(x, "batch_count") else 0
    upc = f(x, "evalsha_usec") / calls if calls else 0
    upr = f(x, "evalsha_usec") / held if held else 0
    print(f"| {x['round']} | {x['case']} | {x['c']} | {f(x,'rps'):,.0f} | {f(x,'p50_ms'):.2f} | {f(x,'p99_ms'):.2f} | "
          f"{mean:.1f} | {upc:.1f} | {upr:.1f} | {f(x,'gw_cpu_s'):.1f} / {f(x,'redis_cpu_s'):.1f} / {f(x,'wrk_cpu_s'):.1f} / {f(x,'other_cpu_s'):.1f} |")
print()
for r in range(1, rounds + 1):
    c64 = [x for x in rows if x["round"] == str(r) and x["c"] != "1"]
    hz, b, s, raw = (get(r, k, [x["c"] for x in c64][0]) for k in ("healthz", "batched", "single", "raw"))
    b1, s1 = get(r, "batched", 1), get(r, "single", 1)
    confirm = {}
    for line in open(f"{sys.argv[2]}/r{r}-confirm.log"):
        m = re.match(r"round \d+ (\S+)\s+reserve\s+\S+\s+confirm\s+(\d+)/s", line)
        if m: confirm.setdefault(m.group(1), []).append(float(m.group(2)))
    mean = lambda v: sum(v) / len(v) if v else 0
    cb, cs = mean(confirm.get("batched", [])), mean(confirm.get("single", []))
    ratio = lambda a, b: a / b if b else 0
    print(f"round {r}:")
    print(f"- reserve / GET /healthz: {ratio(f(b,'rps'), f(hz,'rps')):.2f}x (target >= 0.6x); reserve p99 {f(b,'p99_ms'):.2f} ms (target <= 3 ms)")
    print(f"- reserve / raw unbatched script: {ratio(f(b,'rps'), f(raw,'rps')):.2f}x (target >= 1.2x); max_batch=1 gateway: {ratio(f(s,'rps'), f(raw,'rps')):.2f}x")
    print(f"- reserve batched / max_batch=1 at c={b['c']}: {ratio(f(b,'rps'), f(s,'rps')):.2f}x; mean batch {f(b,'batch_sum') / max(f(b,'batch_count'), 1):.1f}")
    print(f"- c=1 reserve p50 batched / max_batch=1: {f(b1,'p50_ms'):.2f} / {f(s1,'p50_ms'):.2f} ms = {ratio(f(b1,'p50_ms'), f(s1,'p50_ms')):.2f} (target within 10%)")
    print(f"- confirm c={b['c']} (engine): batched {cb:,.0f}/s vs max_batch=1 {cs:,.0f}/s = {ratio(cb, cs):.2f}x (target >= 1.5x)")
    upr = lambda x: f(x, "evalsha_usec") / f(x, "held") if f(x, "held") else 0
    print(f"- Redis usec per reserve: batched {upr(b):.1f}, max_batch=1 {upr(s):.1f}, raw script {upr(raw):.1f}")
PY
log "done: $OUT/summary.md, rows in $RESULTS, raw output in $OUT/runs"
