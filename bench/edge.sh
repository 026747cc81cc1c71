#!/usr/bin/env bash
# bench/edge.sh: reserve throughput alone and during a flood of public reads
# from other addresses, in one run (BENCHMARKS.md, section E).
#
#   bash bench/edge.sh                 # build, run 3 rounds of (alone, flood)
#
# One gateway (release build, worker on, default limits) serves both. The
# reserves all come from 127.0.0.1 (many customers, one address), so for
# this gateway the per-address reserve limit and the per-address connection
# cap are lifted; the readers come from 127.0.0.2..9 and each reads at
# READ_RATE/s, below the public read limit (100/s by default), half
# `GET /v1/sales` over SALES registered sales and half `GET /v1/sales/{id}`.
#
# Needs Redis on 127.0.0.1:6379 and Postgres on 127.0.0.1:5432. Uses the key
# prefix `edgebench` and the database `flashsale_bench_edge`, both removed at
# the end. Knobs: ROUNDS (3), PHASE_SECONDS (10), CONCURRENCY (64),
# READERS (8), READ_RATE (90), SALES (200), PORT (18095), FS_BIN / BENCH_BIN
# (binaries to use; default: cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
PHASE_SECONDS=${PHASE_SECONDS:-10}
CONCURRENCY=${CONCURRENCY:-64}
READERS=${READERS:-8}
READ_RATE=${READ_RATE:-90}
SALES=${SALES:-200}
PORT=${PORT:-18095}
source bench/gateway.sh
start_gateway edge "$PORT" edge_bench

echo "# edge bench $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH_BIN" --url "http://127.0.0.1:$PORT" --rounds "$ROUNDS" --seconds "$PHASE_SECONDS" \
  --concurrency "$CONCURRENCY" --readers "$READERS" --read-rate "$READ_RATE" --sales "$SALES"
