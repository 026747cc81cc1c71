#!/usr/bin/env bash
# bench/webhooks_beside.sh: reserves while a webhook backlog drains (issue 28's
# second target: reserve throughput and p99 within 10 % of none, in one run).
#
#   bash bench/webhooks_beside.sh                 # build, 3 pairs of runs
#   ROUNDS=5 DURATION=8 bash bench/webhooks_beside.sh
#
# One `flashsale serve` (gateway and worker, as a user runs it: limits on, the
# per-address limit raised above wrk's rate) on a private redis-server and a
# private database, one endpoint registered through the API to a loopback
# receiver (loadgen/examples/webhook_receiver, answering 204). Each round
# plays two reserve runs (`wrk -t1 -c64`, DURATION s, a fresh sale of 10^9
# units each), in alternating order:
#
#   quiet   no delivery pending;
#   drain   a backlog of BACKLOG events for the endpoint written just before
#           (as the flush writes them: events rows and pending deliveries),
#           due SETTLE s later, when the run starts, which the gateway's own
#           worker delivers during the run.
#
# Both cases start SETTLE s after the sale is made, with the tables vacuumed
# and a CHECKPOINT made in between: the backlog's 200,000 rows keep Postgres
# busy for a while after they are written (WAL, dirty pages, autovacuum),
# and that is the cost of writing them, not of the drain.
#
# Reported per run: reserves/s, p50 and p99, deliveries made during the run;
# then the medians of drain / quiet. The database, the redis-server and
# everything started are removed on exit.
#
# Knobs: ROUNDS (3), DURATION (8), BACKLOG (100000), SETTLE (15), CUSTOMERS (5000),
# OUT (/tmp/webhooks-beside), FS_BIN / RECEIVER_BIN (prebuilt binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
BACKLOG=${BACKLOG:-100000}
SETTLE=${SETTLE:-15}
CUSTOMERS=${CUSTOMERS:-5000}
OUT=${OUT:-/tmp/webhooks-beside}
PG=postgres://postgres@127.0.0.1:5432
DB=flashsale_bench_beside_$$
PREFIX=beside

log() { echo "[beside $(date -u +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in wrk redis-server redis-cli psql curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/beside.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
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
psql_q() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$PG/$DB" "$@"; }

if [[ -z "${FS_BIN:-}" || -z "${RECEIVER_BIN:-}" ]]; then
  log "cargo build --release (flashsale, examples/webhook_receiver)"
  cargo build --release --quiet --bin flashsale --example webhook_receiver
fi
cp "${FS_BIN:-target/release/flashsale}" "$WORK/flashsale"
cp "${RECEIVER_BIN:-target/release/examples/webhook_receiver}" "$WORK/receiver"

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

HOOK_PORT=$(free_port)
"$WORK/receiver" --addr "127.0.0.1:$HOOK_PORT" >"$OUT/receiver.log" 2>&1 &
PIDS+=($!)

FS_PORT=$(free_port)
FS=http://127.0.0.1:$FS_PORT
export FLASHSALE__HTTP__ADDR=127.0.0.1:$FS_PORT FLASHSALE__REDIS__URL=redis://127.0.0.1:$RPORT \
  FLASHSALE__REDIS__KEY_PREFIX=$PREFIX FLASHSALE__DATABASE__URL=$PG/$DB \
  FLASHSALE__WEBHOOKS__ALLOW_HTTP=true FLASHSALE__WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true \
  FLASHSALE__LIMITS__PER_IP_PER_SECOND=10000000 FLASHSALE__LIMITS__PER_IP_BURST=10000000
"$WORK/flashsale" migrate >"$OUT/migrate.log" 2>&1 || die "migrate: $(cat "$OUT/migrate.log")"
env -u RUST_LOG "$WORK/flashsale" serve >"$OUT/flashsale.log" 2>&1 &
FS_PID=$!
PIDS+=("$FS_PID")
for _ in $(seq 600); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "$FS/readyz")" == 200 ]] && break
  kill -0 "$FS_PID" 2>/dev/null || die "flashsale exited; see $OUT/flashsale.log"
  sleep 0.1
done

log "minting $CUSTOMERS tokens"
export TOKENS=$WORK/tokens.txt
seq 1 "$CUSTOMERS" | xargs -P 2 -I{} "$WORK/flashsale" token --sub c{} --ttl 7200 >"$TOKENS"
ADMIN=$("$WORK/flashsale" token --sub beside-ops --role admin --ttl 7200)
ENDPOINT=$(curl -sf -X POST "$FS/v1/webhooks" -H "Authorization: Bearer $ADMIN" \
  -H 'Content-Type: application/json' \
  -d "{\"url\":\"http://127.0.0.1:$HOOK_PORT/hook\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') \
  || die "registering the endpoint failed"
log "endpoint $ENDPOINT -> receiver on $HOOK_PORT; flashsale on $FS"

create_sale() { # ID
  local code
  code=$(curl -s -o "$WORK/sale.json" -w '%{http_code}' -X POST "$FS/v1/sales" \
    -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"id\":\"$1\",\"sku\":\"BESIDE-1\",\"name\":\"beside bench\",\"price_cents\":100,
         \"currency\":\"IDR\",\"stock\":1000000000,
         \"starts_at\":\"$(date -u -d '-1 min' +%FT%TZ)\",\"ends_at\":\"$(date -u -d '+1 day' +%FT%TZ)\",
         \"per_customer_limit\":1000000,\"hold_seconds\":3600}")
  [[ $code == 201 ]] || die "creating sale $1 answered $code: $(cat "$WORK/sale.json")"
}

# A backlog as the flush writes it: events rows (a reservation.confirmed's
# size) and one pending delivery each for the endpoint.
backlog() { # TAG
  psql_q -c "
    INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id)
    SELECT '$1-' || g || '.reservation.confirmed', 'reservation', '$1-' || g,
           'reservation.confirmed',
           jsonb_build_object('type', 'reservation.confirmed', 'timestamp', now(),
             'data', jsonb_build_object('sale_id', 'bench', 'version', g,
               'reservation', jsonb_build_object('id', '$1-' || g, 'quantity', 1),
               'order', jsonb_build_object('order_id', gen_random_uuid(), 'price_cents', 4999))),
           'bench'
    FROM generate_series(1, $BACKLOG) g;
    INSERT INTO webhook_deliveries (endpoint_id, event_id, next_attempt_at)
    SELECT '$ENDPOINT', id, now() + interval '$SETTLE seconds' FROM events WHERE id LIKE '$1-%';
" -c "VACUUM ANALYZE events" -c "VACUUM ANALYZE webhook_deliveries" >/dev/null
}
delivered() { psql_q -c "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'" | head -n 1; }
pending() { psql_q -c "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'" | head -n 1; }

printf 'round\tcase\trps\tp50_ms\tp99_ms\tdelivered_during\tpending_after\n' >"$OUT/runs.tsv"
run() { # ROUND CASE
  local sale="bs-$1-$2" d0 d1 out
  create_sale "$sale"
  local due=$((SECONDS + SETTLE))
  if [[ $2 == drain ]]; then backlog "r$1"; fi
  # Both cases wait the same: writing the backlog leaves Postgres busy for
  # a while (WAL, checkpoint), which is the insert's cost, not the drain's.
  psql_q -c CHECKPOINT >/dev/null
  while ((SECONDS < due)); do sleep 0.2; done
  d0=$(delivered)
  out=$(SALE=$sale wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/reserve.lua "$FS" 2>&1)
  d1=$(delivered)
  echo "$out" >"$OUT/wrk-$1-$2.txt"
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" "$p50" "$p99" "$((d1 - d0))" "$(pending)" >>"$OUT/runs.tsv"
  log "round $1 $2: $rps req/s, p50 $p50, p99 $p99, $((d1 - d0)) delivered during the run"
  # The next run starts with nothing pending.
  for _ in $(seq 600); do [[ $(pending) == 0 ]] && break; sleep 0.5; done
}

create_sale bs-warm
SALE=bs-warm wrk -t1 -c64 -d3s -s bench/reserve.lua "$FS" >/dev/null 2>&1
for r in $(seq 1 "$ROUNDS"); do
  if ((r % 2)); then run "$r" quiet; run "$r" drain; else run "$r" drain; run "$r" quiet; fi
done

python3 - "$OUT/runs.tsv" <<'EOF' | tee "$OUT/summary.md"
import csv, statistics, sys
def ms(v):
    return float(v[:-2]) if v.endswith('ms') else float(v[:-2]) / 1000 if v.endswith('us') else float(v[:-1]) * 1000
rows = list(csv.DictReader(open(sys.argv[1]), delimiter='\t'))
by = {}
for r in rows:
    by.setdefault(r['round'], {})[r['case']] = r
print('| round | quiet req/s | drain req/s | ratio | quiet p99 | drain p99 | ratio | delivered during the drain run |')
print('|---|---:|---:|---:|---:|---:|---:|---:|')
tp, p99 = [], []
for k in sorted(by, key=int):
    q, d = by[k]['quiet'], by[k]['drain']
    t = float(d['rps']) / float(q['rps']); p = ms(d['p99_ms']) / ms(q['p99_ms'])
    tp.append(t); p99.append(p)
    print(f"| {k} | {float(q['rps']):.0f} | {float(d['rps']):.0f} | {t:.2f} | {q['p99_ms']} | {d['p99_ms']} | {p:.2f} | {d['delivered_during']} |")
print()
print(f"median drain/quiet: throughput {statistics.median(tp):.2f} ({min(tp):.2f}-{max(tp):.2f}), "
      f"p99 {statistics.median(p99):.2f} ({min(p99):.2f}-{max(p99):.2f}); target: throughput >= 0.90, p99 <= 1.10")
EOF
