#!/usr/bin/env bash
# bench/webhooks.sh: webhook deliveries (issue 28): a backlog of EVENTS events
# for one endpoint, drained by one `flashsale worker` to one loopback receiver
# (loadgen/examples/webhook_receiver: a Rust server answering 204).
#
#   bash bench/webhooks.sh              # build, one run, summary
#   EVENTS=20000 bash bench/webhooks.sh # a shorter run
#
# The backlog is written with SQL as the flush writes it (events rows, one
# pending delivery each) before the worker starts; the clock runs from the
# worker's start to the last delivery recorded `delivered` in Postgres.
# Reported: deliveries/s, and CPU per delivery (from /proc, in microseconds)
# of the worker, of Postgres (the backends of the benchmark's database: the
# claims and the outcome writes), of the receiver, and of the whole machine
# (/proc/stat; other work on it counts too). Target: >= 5,000 deliveries/s.
#
# Needs Redis on 127.0.0.1:6379 (the worker's other loops), Postgres on
# 127.0.0.1:5432, psql, redis-cli. The database flashsale_bench_webhooks and
# the keys under `whbench:` are removed at the end.
#
# Knobs: EVENTS (100000), PORT (18140), OUT (/tmp/webhookbench), TIMEOUT (600 s),
# FS_BIN / RECEIVER_BIN (prebuilt binaries: no build).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-100000}
PORT=${PORT:-18140}
OUT=${OUT:-/tmp/webhookbench}
TIMEOUT=${TIMEOUT:-600}
PREFIX=whbench
DB=flashsale_bench_webhooks
PG=postgres://postgres@127.0.0.1:5432
HZ=$(getconf CLK_TCK)

log() { printf '[webhooks %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in psql redis-cli; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
mkdir -p "$OUT"

if [[ -z "${FS_BIN:-}" || -z "${RECEIVER_BIN:-}" ]]; then
  log "cargo build --release (flashsale, examples/webhook_receiver)"
  cargo build --release --quiet --bin flashsale --example webhook_receiver
fi
FS=${FS_BIN:-target/release/flashsale}
RECEIVER=${RECEIVER_BIN:-target/release/examples/webhook_receiver}

psql_q() { psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres "$@"; }
WORKER_PID='' RECEIVER_PID=''
cleanup() {
  [[ -n $WORKER_PID ]] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null
  [[ -n $RECEIVER_PID ]] && kill "$RECEIVER_PID" 2>/dev/null && wait "$RECEIVER_PID" 2>/dev/null
  psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$PREFIX:*" | xargs -r -n 500 redis-cli unlink >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

proc_ticks() { [[ -r /proc/$1/stat ]] && sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}' || echo 0; }
# The backends serving the benchmark's database (the worker's pool, which
# keeps its connections): not the other databases of a shared Postgres.
postgres_ticks() {
  local total=0 pid
  for pid in $(psql_q -d postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = '$DB'"); do
    total=$((total + $(proc_ticks "$pid")))
  done
  echo "$total"
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

export FLASHSALE__DATABASE__URL=$PG/$DB
export FLASHSALE__REDIS__KEY_PREFIX=$PREFIX
export FLASHSALE__WEBHOOKS__ALLOW_HTTP=true
export FLASHSALE__WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true
export FLASHSALE__LOG__LEVEL=warn

psql_q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
"$FS" migrate >"$OUT/migrate.log" 2>&1 || die "migrate failed: $(cat "$OUT/migrate.log")"

log "a backlog of $EVENTS events for one endpoint (http://127.0.0.1:$PORT/hook)"
ENDPOINT=$(psql_q -d "$DB" -c "
  INSERT INTO webhook_endpoints (id, url, secret, secret_sealed)
  VALUES (gen_random_uuid(), 'http://127.0.0.1:$PORT/hook',
          decode(md5(random()::text) || md5(random()::text), 'hex'), false)
  RETURNING id")
ENDPOINT=$(head -n 1 <<<"$ENDPOINT")
# A payload of the size a reservation.confirmed carries (the order and the
# reservation, ~600 bytes).
psql_q -d "$DB" -c "
  INSERT INTO events (id, aggregatetype, aggregateid, type, payload, sale_id)
  SELECT 'r-' || g || '.reservation.confirmed', 'reservation', 'r-' || g,
         'reservation.confirmed',
         jsonb_build_object(
           'type', 'reservation.confirmed',
           'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
           'data', jsonb_build_object(
             'reservation', jsonb_build_object(
               'id', 'r-' || g, 'sale_id', 'bench-sale', 'customer_id', 'customer-' || g,
               'quantity', 1, 'status', 'confirmed',
               'expires_at', '2026-12-06T10:00:00.000Z'),
             'order', jsonb_build_object(
               'order_id', gen_random_uuid(), 'reservation_id', 'r-' || g,
               'sale_id', 'bench-sale', 'customer_id', 'customer-' || g, 'quantity', 1,
               'price_cents', 4999, 'currency', 'EUR', 'payment_ref', 'pay-' || g,
               'confirmed_at', '2026-12-06T09:59:00.000Z'),
             'version', g)),
         'bench-sale'
  FROM generate_series(1, $EVENTS) g;
  INSERT INTO webhook_deliveries (endpoint_id, event_id)
  SELECT '$ENDPOINT', id FROM events;
  ANALYZE events; ANALYZE webhook_deliveries;" >/dev/null

"$RECEIVER" --addr "127.0.0.1:$PORT" >"$OUT/receiver.log" 2>&1 &
RECEIVER_PID=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

pending() {
  psql_q -d "$DB" -c "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'" | head -n 1
}
p0=0 m0=$(busy_ticks)
t0=$(date +%s.%N)
"$FS" worker >"$OUT/worker.log" 2>&1 &
WORKER_PID=$!
deadline=$((SECONDS + TIMEOUT))
while :; do
  left=$(pending)
  [[ $left == 0 ]] && break
  ((SECONDS < deadline)) || die "$left deliveries still pending after ${TIMEOUT}s (see $OUT/worker.log)"
  kill -0 "$WORKER_PID" 2>/dev/null || die "the worker exited (see $OUT/worker.log)"
  sleep 0.2
done
t1=$(date +%s.%N)
w1=$(proc_ticks "$WORKER_PID") r1=$(proc_ticks "$RECEIVER_PID") p1=$(postgres_ticks) m1=$(busy_ticks)

kill "$WORKER_PID" && wait "$WORKER_PID" || true
WORKER_PID=''
kill "$RECEIVER_PID" && wait "$RECEIVER_PID" || true
RECEIVER_PID=''
received=$(awk '/^received/{print $2}' "$OUT/receiver.log")
delivered=$(psql_q -d "$DB" -c "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'" | head -n 1)
attempts=$(psql_q -d "$DB" -c "SELECT sum(attempts) FROM webhook_deliveries" | head -n 1)

awk -v n="$EVENTS" -v t0="$t0" -v t1="$t1" -v hz="$HZ" \
  -v w="$w1" -v r="$r1" -v p="$((p1 - p0))" -v m="$((m1 - m0))" \
  -v received="${received:-?}" -v delivered="$delivered" -v attempts="$attempts" 'BEGIN {
  secs = t1 - t0
  us = 1e6 / hz / n
  printf "events %d, delivered %d, attempts %d, received by the receiver %s\n", n, delivered, attempts, received
  printf "drained in %.2f s: %.0f deliveries/s\n", secs, n / secs
  printf "CPU per delivery (us): worker %.1f, postgres %.1f, receiver %.1f, machine %.1f\n", w * us, p * us, r * us, m * us
}' | tee "$OUT/summary.txt"
