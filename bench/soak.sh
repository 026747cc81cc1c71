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
source bench/gateway.sh
start_gateway soak "$PORT" soak

echo "# soak $(date -u +%FT%TZ), $MINUTES min, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH_BIN" --url "http://127.0.0.1:$PORT" --pid "$GATEWAY" --minutes "$MINUTES"
