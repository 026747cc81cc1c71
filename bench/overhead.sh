#!/usr/bin/env bash
# bench/overhead.sh: the gateway's own cost per request against a bare axum
# service making the same Redis call (issue 26; BENCHMARKS.md section L).
#
#   bash bench/overhead.sh                 # 5 rounds of 10 s runs, ~20 min
#   ROUNDS=3 DURATION=5 bash bench/overhead.sh
#
# It builds flashsale and loadgen/examples/bare.rs in release, starts a
# private redis-server on a free port, migrates a private database on the
# shared Postgres, and runs both services side by side on that one Redis:
#
#   bare       GET / and POST /v1/sales/{sale}/reservations (one EVALSHA of
#              the engine's own reserve script, token read but not verified);
#   flashsale  `serve --no-worker` as a user runs it: limits on (the
#              per-address limit raised above wrk's rate, since all of wrk's
#              connections come from 127.0.0.1), the default log level;
#              GET /healthz and the same reserve.
#
# Each round plays bare then flashsale (the order alternates between rounds)
# with the same wrk scripts (bench/healthz.lua, bench/reserve.lua; 20,000
# customers' tokens), each reserve run on a fresh sale of 10^9 units whose
# per-customer limit no customer reaches: get64, res64 (wrk -t1 -c64), get1,
# res1 (wrk -t1 -c1). Per request it reports whole-machine CPU (/proc/stat,
# the headline), the gateway's, redis-server's and wrk's (/proc/<pid>/stat
# and wait4) and "other" (the rest of the machine). A round in which other
# processes took more than VOID_OTHER % of the machine during any of its runs is
# void. Medians and spreads of the ratios flashsale / bare, with the issue's
# targets, go to $OUT/summary.md; one line per run to $OUT/runs.tsv.
#
# Then, unless PROFILE=0: a perf flame graph of the gateway under the c=64
# reserve load ($OUT/flame-reserve.svg, needs inferno-collapse-perf and
# inferno-flamegraph: `cargo install inferno`). Unless CALLGRIND=0: both
# services under valgrind's callgrind at c=1, instructions per request for
# GET and reserve ($OUT/callgrind.md), which the machine's noise cannot move.
#
# Knobs: ROUNDS (5), DURATION (10, seconds per c=64 run), C1_DURATION (5),
# WARMUP (3), CUSTOMERS (20000), VOID_OTHER (10), PROFILE (1),
# PROFILE_SECONDS (8), CALLGRIND (1), CG_SECONDS (15), CG_CUSTOMERS (500),
# OUT (/tmp/overhead),
# FS_BIN and BARE_BIN (binaries to use instead of building).
# Everything it starts, its temporary files (but $OUT), its keys and its
# database are removed on exit, Ctrl-C included.

set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
C1_DURATION=${C1_DURATION:-5}
WARMUP=${WARMUP:-3}
CUSTOMERS=${CUSTOMERS:-20000}
VOID_OTHER=${VOID_OTHER:-10}
PROFILE=${PROFILE:-1}
PROFILE_SECONDS=${PROFILE_SECONDS:-8}
CALLGRIND=${CALLGRIND:-1}
CG_SECONDS=${CG_SECONDS:-15}
CG_CUSTOMERS=${CG_CUSTOMERS:-500}
OUT=${OUT:-/tmp/overhead}

log() { echo "[$(date -u +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in wrk redis-server redis-cli psql curl python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install wrk redis-server postgresql-client curl time)"
done

mkdir -p "$OUT"
rm -f "$OUT"/runs.tsv "$OUT"/summary.md "$OUT"/callgrind.md
WORK=$(mktemp -d /tmp/overhead.XXXXXX)
PIDS=()
DB=flashsale_bench_overhead_$$
PG=postgres://postgres@127.0.0.1:5432

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  log "cleanup: services, redis-server, database, $WORK"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- build (pinned copies: the target dir may be rebuilt meanwhile) ----------
if [[ -z "${FS_BIN:-}" || -z "${BARE_BIN:-}" ]]; then
  log "building flashsale and the bare service (release)"
  # One build of both targets: built apart, the example's dev-dependencies
  # unify other features of the shared dependencies and rebuild them.
  cargo build --release --quiet --bin flashsale --example bare
fi
cp "${FS_BIN:-target/release/flashsale}" "$WORK/flashsale"
cp "${BARE_BIN:-target/release/examples/bare}" "$WORK/bare"
FS_BIN=$WORK/flashsale
BARE_BIN=$WORK/bare

# --- private redis-server ------------------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$RPORT" ping >/dev/null || die "redis-server on $RPORT did not start"
REDIS_URL=redis://127.0.0.1:$RPORT
PREFIX=overhead

# --- the two services ----------------------------------------------------------
FS_PORT=$(free_port)
FS=http://127.0.0.1:$FS_PORT
export FLASHSALE__HTTP__ADDR=127.0.0.1:$FS_PORT FLASHSALE__REDIS__URL=$REDIS_URL \
  FLASHSALE__REDIS__KEY_PREFIX=$PREFIX FLASHSALE__DATABASE__URL=$PG/$DB
log "migrating $DB"
"$FS_BIN" migrate >"$WORK/migrate.log" 2>&1 || die "migrate failed: $(cat "$WORK/migrate.log")"

# start_flashsale [WRAPPER...]: sets FS_PID (the gateway's own pid).
start_flashsale() {
  env -u RUST_LOG FLASHSALE__LIMITS__ENABLED=true \
    FLASHSALE__LIMITS__PER_IP_PER_SECOND=10000000 FLASHSALE__LIMITS__PER_IP_BURST=10000000 \
    "$@" "$FS_BIN" serve --no-worker >>"$OUT/flashsale.log" 2>&1 &
  FS_PID=$!
  PIDS+=("$FS_PID")
  wait_ready "$FS/readyz" "$FS_PID"
}

BARE_PORT=$(free_port)
BARE=http://127.0.0.1:$BARE_PORT
start_bare() {
  "$@" "$BARE_BIN" --addr "127.0.0.1:$BARE_PORT" --redis-url "$REDIS_URL" --prefix "$PREFIX" \
    >>"$OUT/bare.log" 2>&1 &
  BARE_PID=$!
  PIDS+=("$BARE_PID")
  wait_ready "$BARE/" "$BARE_PID"
}

wait_ready() { # URL PID
  for _ in $(seq 1 600); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" == 200 ]] && return 0
    kill -0 "$2" 2>/dev/null || die "the service behind $1 exited; see $OUT/*.log"
    sleep 0.1
  done
  die "$1 not ready after 60 s"
}

stop() { # PID
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

: >"$OUT/flashsale.log"
: >"$OUT/bare.log"
start_flashsale
start_bare
log "flashsale on $FS (pid $FS_PID), bare on $BARE (pid $BARE_PID), redis on $RPORT (pid $REDIS_PID)"

# --- tokens and sales ----------------------------------------------------------
export TOKENS=$WORK/tokens.txt
log "minting $CUSTOMERS customer tokens"
seq 1 "$CUSTOMERS" | xargs -P 2 -I{} "$FS_BIN" token --sub c{} --ttl 7200 >"$TOKENS"
[[ $(sort -u "$TOKENS" | grep -c .) == "$CUSTOMERS" ]] || die "expected $CUSTOMERS distinct tokens"
ADMIN=$("$FS_BIN" token --sub overhead-ops --role admin --ttl 7200)

# A sale of 10^9 units open for a day, holds of an hour (no worker runs, so
# none expires), a per-customer limit above any customer's share of a run.
create_sale() { # ID
  local code
  code=$(curl -s -o "$WORK/sale.json" -w '%{http_code}' -X POST "$FS/v1/sales" \
    -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"id\":\"$1\",\"sku\":\"OVERHEAD-1\",\"name\":\"overhead bench\",\"price_cents\":100,
         \"currency\":\"IDR\",\"stock\":1000000000,
         \"starts_at\":\"$(date -u -d '-1 min' +%FT%TZ)\",\"ends_at\":\"$(date -u -d '+1 day' +%FT%TZ)\",
         \"per_customer_limit\":1000000,\"hold_seconds\":3600}")
  [[ $code == 201 ]] || die "creating sale $1 answered $code: $(cat "$WORK/sale.json")"
}

# Every run starts from the same small keyspace: the finished run's sale is
# unlinked (freed by Redis in the background, outside the next run).
drop_sale() { # ID
  redis-cli -p "$RPORT" --scan --pattern "$PREFIX:{$1}:*" | xargs -r redis-cli -p "$RPORT" unlink >/dev/null
  redis-cli -p "$RPORT" srem "$PREFIX:sales" "$1" >/dev/null
}

# --- one measured run ----------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)
busy_idle() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
proc_cpu() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
reserve_batches() { # the gateway's reserve batch histogram: "sum count"
  curl -s "$FS/metrics" | awk '/^flashsale_batch_size_sum\{op="reserve"/{s=$2} /^flashsale_batch_size_count\{op="reserve"/{c=$2} END{print s+0, c+0}'
}

printf 'round\tservice\tcase\trequests\trps\tp50_ms\tp99_ms\tmachine_us\tgateway_us\tredis_us\twrk_us\tother_us\tother_pct\tfailed\tbatch\n' >"$OUT/runs.tsv"

# run ROUND SERVICE CASE: one wrk run, measured, appended to runs.tsv.
run() {
  local round=$1 svc=$2 case=$3 base pid conns secs url script sale="" b0 b1 batch="-"
  if [[ $svc == bare ]]; then base=$BARE pid=$BARE_PID; else base=$FS pid=$FS_PID; fi
  case $case in
    *64) conns=64 secs=$DURATION ;;
    *) conns=1 secs=$C1_DURATION ;;
  esac
  if [[ $case == get* ]]; then
    script=bench/healthz.lua
    if [[ $svc == bare ]]; then url=$base/; else url=$base/healthz; fi
  else
    script=bench/reserve.lua
    url=$base
    sale=ov-$round-$svc-$case
    create_sale "$sale"
  fi
  if [[ $svc == flashsale && $case == res* ]]; then read -r b0 <<<"$(reserve_batches)"; fi
  local m0 i0 g0 r0 m1 i1 g1 r1 w
  read -r m0 i0 <<<"$(busy_idle)"
  g0=$(proc_cpu "$pid") r0=$(proc_cpu "$REDIS_PID")
  SALE=$sale /usr/bin/time -o "$WORK/wrk.time" -f '%U %S' \
    wrk -t1 -c"$conns" -d"${secs}s" --timeout 5s -s "$script" "$url" >"$WORK/wrk.out" 2>&1 \
    || die "wrk failed: $(cat "$WORK/wrk.out")"
  read -r m1 i1 <<<"$(busy_idle)"
  g1=$(proc_cpu "$pid") r1=$(proc_cpu "$REDIS_PID")
  w=$(awk -v t="$CLK_TCK" '{printf "%d", ($1+$2)*t + 0.5}' "$WORK/wrk.time")
  if [[ -n $sale ]]; then drop_sale "$sale"; fi
  if [[ $svc == flashsale && $case == res* ]]; then
    local s0 c0 s1 c1
    read -r s0 c0 <<<"$b0"
    read -r s1 c1 <<<"$(reserve_batches)"
    batch=$(awk -v s="$((s1 - s0))" -v c="$((c1 - c0))" 'BEGIN{if (c > 0) printf "%.1f", s/c; else print "-"}')
  fi
  python3 - "$WORK/wrk.out" "$round" "$svc" "$case" "$CLK_TCK" "$NCPU" \
    "$((m1 - m0))" "$((i1 - i0))" "$((g1 - g0))" "$((r1 - r0))" "$w" "$batch" >>"$OUT/runs.tsv" <<'PY'
import re, sys
out, rnd, svc, case, tck, ncpu, busy, idle, gw, red, wrk, batch = sys.argv[1:]
text = open(out).read()
tck, ncpu, busy, idle, gw, red, wrk = map(int, (tck, ncpu, busy, idle, gw, red, wrk))
n = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = dict(re.findall(r"latency p([\d.]+): ([\d.]+) ms", text))
failed = sum(int(x) for x in re.findall(r"(?:non-201|non-2xx): (\d+)", text))
failed += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
us = lambda j: j * 1e6 / tck / max(n, 1)
other = max(busy - gw - red - wrk, 0)
other_pct = 100.0 * other / max(busy + idle, 1)
print("\t".join([rnd, svc, case, str(n), f"{rps:.0f}", lat.get("50", "0"), lat.get("99", "0"),
                 f"{us(busy):.1f}", f"{us(gw):.1f}", f"{us(red):.1f}", f"{us(wrk):.1f}",
                 f"{us(other):.1f}", f"{other_pct:.1f}", str(failed), batch]))
PY
  tail -n1 "$OUT/runs.tsv" | awk -F'\t' '{printf "  %-9s %-5s %8s req/s  p50 %s ms  p99 %s ms  machine %s us/req (gateway %s, redis %s, wrk %s, other %s = %s%%)  failed %s  batch %s\n", $2, $3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15}' >&2
}

# --- warm-up, then the interleaved rounds -------------------------------------
log "warm-up ($WARMUP s per service)"
for svc in bare flashsale; do
  if [[ $svc == bare ]]; then base=$BARE; else base=$FS; fi
  create_sale "ov-warm-$svc"
  SALE=ov-warm-$svc wrk -t1 -c64 -d"${WARMUP}s" -s bench/reserve.lua "$base" >"$WORK/warm.out" 2>&1
  grep -q 'non-201: 0$' "$WORK/warm.out" || die "warm-up of $svc: $(cat "$WORK/warm.out")"
  drop_sale "ov-warm-$svc"
done

uptime >"$OUT/machine.txt"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order="bare flashsale"; else order="flashsale bare"; fi
  log "round $r/$ROUNDS ($order); $(cut -d' ' -f1-3 /proc/loadavg) load"
  for svc in $order; do
    for case in get64 res64 get1 res1; do run "$r" "$svc" "$case"; done
  done
done
uptime >>"$OUT/machine.txt"

# --- medians, spreads, targets -------------------------------------------------
python3 - "$OUT/runs.tsv" "$VOID_OTHER" >"$OUT/summary.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
void_at = float(sys.argv[2])
runs = {(r["round"], r["service"], r["case"]): r for r in rows}
rounds = sorted({r["round"] for r in rows}, key=int)
worst = {rd: max(float(runs[(rd, s, c)]["other_pct"]) for s in ("bare", "flashsale")
                 for c in ("get64", "res64", "get1", "res1")) for rd in rounds}
void = {rd for rd in rounds if worst[rd] > void_at}
f = lambda rd, s, c, k: float(runs[(rd, s, c)][k])

print("| round | case | service | req/s | p50 ms | p99 ms | machine µs/req | gateway | redis | wrk | other | other % | failed | batch |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    mark = " (void)" if r["round"] in void else ""
    print(f"| {r['round']}{mark} | {r['case']} | {r['service']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
          f"{r['machine_us']} | {r['gateway_us']} | {r['redis_us']} | {r['wrk_us']} | {r['other_us']} | "
          f"{r['other_pct']} | {r['failed']} | {r['batch']} |")

# (label, case, field, target text, target test)
ratios = [
    ("reserve throughput", "res64", "rps", "≥ 0.8 (stretch ≥ 1.0)", lambda x: x >= 0.8),
    ("machine CPU / reserve (headline)", "res64", "machine_us", "–", None),
    ("gateway CPU / reserve", "res64", "gateway_us", "≤ 1.5", lambda x: x <= 1.5),
    ("Redis CPU / reserve", "res64", "redis_us", "≤ 0.75", lambda x: x <= 0.75),
    ("reserve p99, c=64", "res64", "p99_ms", "≤ 1.5", lambda x: x <= 1.5),
    ("reserve p50, c=1", "res1", "p50_ms", "≤ 1.25", lambda x: x <= 1.25),
    ("GET throughput (/healthz vs /)", "get64", "rps", "–", None),
    ("machine CPU / GET", "get64", "machine_us", "–", None),
    ("gateway CPU / GET", "get64", "gateway_us", "≤ 1.5", lambda x: x <= 1.5),
    ("GET p99, c=64", "get64", "p99_ms", "–", None),
    ("GET p50, c=1", "get1", "p50_ms", "–", None),
]
valid = [rd for rd in rounds if rd not in void]
print()
print(f"Rounds: {len(rounds)}; void (other > {void_at:g} % of the machine in any run): "
      f"{', '.join(sorted(void, key=int)) or 'none'}. Worst other % per round: "
      f"{', '.join(f'{rd}: {worst[rd]:.0f}' for rd in rounds)}.")
for title, use in (("valid rounds", valid), ("all rounds", rounds)):
    if not use:
        print(f"\nNo {title}.")
        continue
    print(f"\n### Ratios flashsale / bare, {title} ({len(use)})\n")
    print("| ratio | median | spread (min–max) | per round | target | met |")
    print("|---|---:|---|---|---|---|")
    for label, case, key, target, ok in ratios:
        xs = []
        for rd in use:
            b = f(rd, "bare", case, key)
            xs.append(f(rd, "flashsale", case, key) / b if b else float("nan"))
        m = statistics.median(xs)
        met = "–" if ok is None else ("yes" if ok(m) else "**no**")
        print(f"| {label} | **{m:.2f}** | {min(xs):.2f}–{max(xs):.2f} | "
              f"{' '.join(f'{x:.2f}' for x in xs)} | {target} | {met} |")
    print("\n| per request, median | bare | flashsale |\n|---|---:|---:|")
    for case, key, label in (("res64", "machine_us", "machine µs / reserve"),
                             ("res64", "gateway_us", "service µs / reserve"),
                             ("res64", "redis_us", "redis µs / reserve"),
                             ("get64", "machine_us", "machine µs / GET"),
                             ("get64", "gateway_us", "service µs / GET"),
                             ("res64", "rps", "reserve req/s"),
                             ("get64", "rps", "GET req/s")):
        print(f"| {label} | {statistics.median(f(rd, 'bare', case, key) for rd in use):.1f} | "
              f"{statistics.median(f(rd, 'flashsale', case, key) for rd in use):.1f} |")
PY
cat "$OUT/summary.md"

# --- the flame graph -------------------------------------------------------------
if [[ $PROFILE == 1 ]]; then
  if command -v perf >/dev/null && command -v inferno-collapse-perf >/dev/null; then
    log "perf record of the gateway under the c=64 reserve load ($PROFILE_SECONDS s)"
    create_sale ov-profile
    SALE=ov-profile wrk -t1 -c64 -d"$((PROFILE_SECONDS + 4))s" -s bench/reserve.lua "$FS" >"$WORK/prof-wrk.out" 2>&1 &
    WRK_PID=$!
    PIDS+=("$WRK_PID")
    sleep 2
    # DWARF stacks (the release build keeps no frame pointers) are large:
    # a low rate and 16 KiB of stack keep perf.data near 100 MB, and it
    # goes as soon as it is folded.
    perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$FS_PID" -o "$WORK/perf.data" \
      -- sleep "$PROFILE_SECONDS" >"$WORK/perf.log" 2>&1
    wait "$WRK_PID" || true
    drop_sale ov-profile
    perf script --no-inline -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/flame-reserve.folded"
    rm -f "$WORK/perf.data"
    # Frames under 0.2 % folded away: the SVG stays well under 1 MB.
    inferno-flamegraph --minwidth 0.2 --title "flashsale gateway, reserve at c=64 (perf cpu-clock)" \
      <"$OUT/flame-reserve.folded" >"$OUT/flame-reserve.svg"
    log "flame graph: $OUT/flame-reserve.svg ($(wc -l <"$OUT/flame-reserve.folded") stacks)"
  else
    log "PROFILE: perf or inferno missing (cargo install inferno); no flame graph"
  fi
fi

# --- callgrind: instructions per request ------------------------------------------
# cg_count SERVICE PID URL SCRIPT SALE: zeroes the counters, runs wrk at c=1,
# dumps, and prints "requests instructions".
cg_count() {
  local svc=$1 pid=$2 url=$3 script=$4 sale=$5 n ir dump
  callgrind_control -z "$pid" >/dev/null 2>&1
  SALE=$sale wrk -t1 -c1 -d"${CG_SECONDS}s" --timeout 10s -s "$script" "$url" >"$WORK/cg-wrk.out" 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  dump=$(ls -t "$WORK"/cg-"$svc".out.* | head -n1)
  n=$(awk '/requests in/{print $1}' "$WORK/cg-wrk.out")
  ir=$(awk '/^(summary|totals):/{print $2; exit}' "$dump")
  mv "$dump" "$WORK/callgrind-$svc-$(basename "$script" .lua).out"
  echo "callgrind-$svc-$(basename "$script" .lua) $n" >>"$WORK/cg-requests"
  echo "$n $ir"
}

if [[ $CALLGRIND == 1 ]]; then
  if command -v valgrind >/dev/null; then
    log "callgrind: both services at c=1, $CG_SECONDS s per case"
    # The gateway under callgrind starts with an empty verified-token cache
    # and serves a few hundred requests a second: with all the customers
    # each counted request would verify a new token, which the timed runs
    # (after their warm-up) never do. So few enough customers that the
    # warm-up caches them all, and few requests each against their limit.
    head -n "$CG_CUSTOMERS" "$TOKENS" >"$WORK/cg-tokens.txt"
    TOKENS=$WORK/cg-tokens.txt
    stop "$FS_PID"
    stop "$BARE_PID"
    start_flashsale valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-flashsale.out.%p"
    start_bare valgrind --tool=callgrind --callgrind-out-file="$WORK/cg-bare.out.%p"
    {
      echo "| case | bare requests | bare instructions / request | flashsale requests | flashsale instructions / request | ratio |"
      echo "|---|---:|---:|---:|---:|---:|"
      for case in get reserve; do
        create_sale "ov-cg-$case"
        # A few requests first, so that one-time work (first calls, lazy
        # statics, SCRIPT LOAD) stays out of the count.
        if [[ $case == get ]]; then
          script=bench/healthz.lua bu=$BARE/ fu=$FS/healthz
        else
          script=bench/reserve.lua bu=$BARE fu=$FS
        fi
        SALE=ov-cg-$case wrk -t1 -c1 -d3s --timeout 10s -s "$script" "$bu" >/dev/null 2>&1
        SALE=ov-cg-$case wrk -t1 -c1 -d3s --timeout 10s -s "$script" "$fu" >/dev/null 2>&1
        read -r bn bir <<<"$(cg_count bare "$BARE_PID" "$bu" "$script" "ov-cg-$case")"
        read -r fn fir <<<"$(cg_count flashsale "$FS_PID" "$fu" "$script" "ov-cg-$case")"
        drop_sale "ov-cg-$case"
        awk -v c="$case" -v bn="$bn" -v bir="$bir" -v fn="$fn" -v fir="$fir" \
          'BEGIN{b=bir/bn; f=fir/fn; printf "| %s | %d | %.0f | %d | %.0f | **%.2f** |\n", c, bn, b, fn, f, f/b}'
      done
    } >"$OUT/callgrind.md"
    cat "$OUT/callgrind.md"
    # The dumps stay in $WORK (tens of MB each, removed on exit); beside
    # the table go, per dump, the functions by their own instructions per
    # request and callgrind_annotate's inclusive view.
    for f in "$WORK"/callgrind-*.out; do
      n=$(awk -v s="$(basename "$f" .out)" '$0 ~ s {print $2}' "$WORK/cg-requests")
      top=$OUT/$(basename "$f" .out)
      callgrind_annotate --inclusive=yes --threshold=99 "$f" 2>/dev/null | head -n 120 >"$top.inclusive.txt" || true
      python3 - "$f" "$n" >"$top.top.txt" <<'PY'
import collections, re, sys
path, n = sys.argv[1], int(sys.argv[2])
names, own, fn, call, total = {}, collections.Counter(), None, False, 0
for line in open(path, errors="replace"):
    m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
    if m:
        if m.group(2):
            names[m.group(1)] = m.group(2)
        if line.startswith("fn="):
            fn = m.group(1)
    elif line.startswith("calls="):
        call = True  # the next cost line is the callee's, not fn's own
    elif line[:1] in "0123456789+-*" and len(line.split()) >= 2:
        if not call:
            own[fn] += int(line.split()[1])
            total += int(line.split()[1])
        call = False
print(f"{total / n:.0f} instructions per request, by function (own cost)")
for k, c in own.most_common(40):
    print(f"{100 * c / total:5.1f}% {c / n:8.0f}  {names.get(k, k)[:150]}")
PY
    done
  else
    log "CALLGRIND: valgrind missing; no instruction counts"
  fi
fi
log "done: results in $OUT"
