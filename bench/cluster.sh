#!/usr/bin/env bash
# bench/cluster.sh: Redis Cluster beside one Redis (issue 19; BENCHMARKS.md,
# section J), in one run on this machine.
#
#   bash bench/cluster.sh            # build, then ROUNDS rounds (~1 min), summary
#
# Starts, privately under $OUT, one redis-server (no persistence, as the
# cluster's nodes), another with a replica of its own, and a loopback
# cluster (scripts/cluster.sh: 3 primaries, 3 replicas), then runs
# loadgen/examples/cluster_bench with these targets:
#   one            the one Redis (the baseline)
#   one+replica    one Redis feeding a replica, redis.confirm_replicas = 0
#   one+replica+wait   the same, redis.confirm_replicas = 1
#   cluster        the cluster, redis.confirm_replicas = 0
#   cluster+wait   the cluster, redis.confirm_replicas = 1 (a fence and WAIT
#                  per confirm batch)
# Each: SALES sales, HOLDS holds reserved round-robin over them, then all
# confirmed, CONCURRENCY calls in flight, through the engine (no HTTP: the
# gateway's own CPU would hide Redis on two cores). Per primary: EVALSHA
# calls and CPU seconds (INFO commandstats / INFO cpu deltas) per phase.
# Both servers are stopped at the end.
#
# Knobs: ROUNDS (2), HOLDS (24000), SALES (12), CONCURRENCY (64), OUT
# (/tmp/clusterbench), CB_BIN (a prebuilt cluster_bench: no build).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
HOLDS=${HOLDS:-24000}
SALES=${SALES:-12}
C=${CONCURRENCY:-64}
OUT=${OUT:-/tmp/clusterbench}
HZ=$(getconf CLK_TCK)

log() { printf '[cluster-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
mkdir -p "$OUT"

if [[ -z ${CB_BIN:-} ]]; then
  log "cargo build --release --example cluster_bench"
  cargo build --release --locked --quiet --example cluster_bench
  cp target/release/examples/cluster_bench "$OUT/cluster_bench"
fi
CB=${CB_BIN:-$OUT/cluster_bench}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_from() {
  local p=$1
  while port_open "$p"; do p=$((p + 1)); done
  echo "$p"
}
one_port=$(free_from 7400)
rep_port=$(free_from $((one_port + 1)))
replica_port=$(free_from $((rep_port + 1)))
cluster_base=
cleanup() {
  local rc=$?
  for p in "$one_port" "$rep_port" "$replica_port"; do
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  [[ -z $cluster_base ]] || FLASHSALE_STATE=$OUT bash scripts/cluster.sh stop "$cluster_base" >/dev/null 2>&1 || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server() { # PORT [ARGS...]
  mkdir -p "$OUT/redis-$1"
  redis-server --port "$1" --bind 127.0.0.1 --daemonize yes --dir "$OUT/redis-$1" \
    --logfile "$OUT/redis-$1/redis.log" --pidfile "$OUT/redis-$1/redis.pid" \
    --save '' --appendonly no "${@:2}" >/dev/null
}
server "$one_port"
server "$rep_port"
server "$replica_port" --replicaof 127.0.0.1 "$rep_port"
for _ in $(seq 100); do
  redis-cli -p "$replica_port" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
  sleep 0.1
done
nodes=$(FLASHSALE_STATE=$OUT bash scripts/cluster.sh start auto | tail -n 1)
cluster_base=${nodes%%,*}
cluster_base=${cluster_base##*:}
log "one Redis on $one_port; one with a replica on $rep_port ($replica_port); cluster on $cluster_base..$((cluster_base + 5))"

busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
b0=$(busy_ticks)
t0=$(date +%s.%N)
TIMEFORMAT='%U %S'
{ time RUST_LOG=warn "$CB" --rounds "$ROUNDS" --holds "$HOLDS" --sales "$SALES" --concurrency "$C" \
  --target "one=redis://127.0.0.1:$one_port" \
  --target "one+replica=redis://127.0.0.1:$rep_port" \
  --target "one+replica+wait=redis://127.0.0.1:$rep_port" --replicas one+replica+wait=1 \
  --target "cluster=$nodes" \
  --target "cluster+wait=$nodes" --replicas cluster+wait=1 >"$OUT/summary.md" 2>"$OUT/bench.log"; } 2>"$OUT/bench.time"
b1=$(busy_ticks)
t1=$(date +%s.%N)
read -r user sys <"$OUT/bench.time"
cat "$OUT/summary.md"
awk -v t0="$t0" -v t1="$t1" -v busy="$(((b1 - b0) / HZ))" -v cores="$(nproc)" -v u="$user" -v s="$sys" 'BEGIN {
  w = t1 - t0
  printf "\nwall %.1f s; the machine busy %d of %.0f core-seconds: the bench process %.1f, the Redis servers and other work the rest\n", w, busy, cores * w, u + s
}' | tee -a "$OUT/summary.md"
