#!/usr/bin/env bash
# Longest Redis call and memory against sale size (10k, 100k, 1M holds):
# starts a private redis-server (its SLOWLOG settings are changed), runs
# loadgen/examples/size_bench.rs, prints a Markdown table (BENCHMARKS.md section G).
# `bash bench/size.sh [--sizes 10000,100000]`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
  --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
trap 'kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cargo build --release --quiet -p flashsale-loadgen --example size_bench
target/release/examples/size_bench --redis-url "redis://127.0.0.1:$port" "$@"
