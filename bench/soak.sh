#!/usr/bin/env bash
# bench/soak.sh: MINUTES (10) of mixed buyers, streams and idle connections
# against one gateway with nobody scraping /metrics; the gateway's RSS, open
# files and threads from /proc each minute (BENCHMARKS.md, section F).
#
#   bash bench/soak.sh                 # 10 minutes
#   MINUTES=3 bash bench/soak.sh       # shorter
#
# The gateway: release build, worker on, default settings, except that the
# buyers all come from 127.0.0.1 (many customers, one address), so the
# per-address reserve limit and connection cap are lifted for this gateway.
# Exit 1 if a figure ends more than 10 % above minute 1, or any 5xx other
# than 503 was answered.
#
# Needs Redis on 127.0.0.1:6379 and Postgres on 127.0.0.1:5432. Uses the key
# prefix `soakbench` and the database `flashsale_bench_soak`, both removed at
# the end. Knobs: MINUTES (10), PORT (18096), FS_BIN / BENCH_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-10}
PORT=${PORT:-18096}
DB=postgres://postgres@127.0.0.1:5432/flashsale_bench_soak

if [[ -z "${FS_BIN:-}" || -z "${BENCH_BIN:-}" ]]; then
  cargo build --release --quiet --bin flashsale --example soak
fi
FS_BIN=${FS_BIN:-target/release/flashsale}
BENCH_BIN=${BENCH_BIN:-target/release/examples/soak}

export FLASHSALE__HTTP__ADDR=127.0.0.1:$PORT FLASHSALE__REDIS__KEY_PREFIX=soakbench \
  FLASHSALE__DATABASE__URL=$DB
"$FS_BIN" migrate
FLASHSALE__LIMITS__PER_IP_PER_SECOND=1000000 FLASHSALE__LIMITS__PER_IP_BURST=1000000 \
  FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn \
  "$FS_BIN" serve >/tmp/soakbench-gateway.log 2>&1 &
gateway=$!
cleanup() {
  kill -TERM "$gateway" 2>/dev/null || true
  wait "$gateway" 2>/dev/null || true
  redis-cli --scan --pattern 'soakbench:*' | xargs -r -n 500 redis-cli del >/dev/null
  psql -q postgres://postgres@127.0.0.1:5432/postgres -c 'DROP DATABASE IF EXISTS flashsale_bench_soak' || true
}
trap cleanup EXIT
for ((i = 0; i < 100; i++)); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.1
done

echo "# soak $(date -u +%FT%TZ), $MINUTES min, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH_BIN" --url "http://127.0.0.1:$PORT" --pid "$gateway" --minutes "$MINUTES"
