#!/usr/bin/env bash
# The README's "run the demo": `bash scripts/demo.sh [LOADTEST OPTIONS]`.
# Makes sure Redis and Postgres run, builds the release binaries, migrates,
# starts a gateway in the background and plays a flash sale against it with
# `flashsale-loadtest` (the load generator, crate loadgen/), whose exit code
# this script returns (non-zero: an invariant broke). Options after demo.sh go
# to flashsale-loadtest (`--help` lists them).
#
# `bash scripts/demo.sh --cluster [LOADTEST OPTIONS]`: the same play on a
# loopback Redis Cluster (scripts/cluster.sh: 3 primaries, 3 replicas, under
# FLASHSALE_STATE) with redis.confirm_replicas = 1, through three gateways
# (`serve --no-worker`) and two `flashsale worker`s; the buyers are spread
# over the gateways. Everything it started stops when it ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cluster=0
if [[ ${1:-} == --cluster ]]; then
  cluster=1
  shift
fi

source scripts/services.sh # exports FLASHSALE_STATE
STATE=$FLASHSALE_STATE
BIN=target/release/flashsale
LOADTEST=target/release/flashsale-loadtest

echo "demo: building the release binaries (the first build takes a few minutes)"
cargo build --release --locked --quiet --bin flashsale --bin flashsale-loadtest

# Every process this script starts, and the cluster's base port: stopped on
# exit, whatever happens (success, failure, Ctrl-C).
pids=()
cluster_base=

# SIGTERM lets a process drain requests and stop its worker; SIGKILL only if it hangs.
stop_all() {
  local pid i
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -z $cluster_base ]] || bash scripts/cluster.sh stop "$cluster_base" >/dev/null 2>&1 || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ((cluster)); then
  echo "demo: starting a loopback Redis Cluster (scripts/cluster.sh)"
  nodes=$(bash scripts/cluster.sh start auto | tail -n 1)
  # The seed list starts with the base port: redis://127.0.0.1:BASE,...
  cluster_base=${nodes%%,*}
  cluster_base=${cluster_base##*:}
  export FLASHSALE__REDIS__CLUSTER_NODES=$nodes FLASHSALE__REDIS__CONFIRM_REPLICAS=1
  # A database of its own, fresh as the cluster: the sales of a cluster that
  # is gone would show as drift to the plain demo's `reconcile`.
  if [[ -z ${FLASHSALE__DATABASE__URL:-} ]]; then
    if command -v psql >/dev/null; then
      psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres \
        -c "DROP DATABASE IF EXISTS flashsale_demo_cluster WITH (FORCE)" </dev/null >/dev/null
    fi
    export FLASHSALE__DATABASE__URL=postgres://postgres@127.0.0.1:5432/flashsale_demo_cluster
  fi
fi
"$BIN" migrate

# Something accepting TCP connections on 127.0.0.1:$1? (bash alone: no curl here)
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# The default port may be taken (another gateway, a dev server): take the next free one.
next_port=${FLASHSALE_DEMO_PORT:-8080}
free_port() {
  local p=$next_port tries
  for ((tries = 0; tries < 50; tries++)); do port_open "$p" || break; p=$((p + 1)); done
  port_open "$p" && { echo "demo: error: no free port from $next_port to $p" >&2; exit 1; }
  port=$p
  next_port=$((p + 1))
}

# Starts `flashsale ARGS` on a free port, logging to $STATE/demo-NAME.log;
# sets `port` and `log`. Every simulated buyer comes from 127.0.0.1: lift
# the per-address limit and the per-address connection cap (real buyers come
# from many addresses); the per-customer limits and the gateway's own
# connection cap stay on.
start_gateway() {
  local name=$1 i pid
  shift
  free_port
  log=$STATE/demo-$name.log
  FLASHSALE__HTTP__ADDR=127.0.0.1:$port \
    FLASHSALE__LIMITS__PER_IP_PER_SECOND=${FLASHSALE__LIMITS__PER_IP_PER_SECOND:-1000000} \
    FLASHSALE__LIMITS__PER_IP_BURST=${FLASHSALE__LIMITS__PER_IP_BURST:-1000000} \
    FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP=${FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP:-100000} \
    "$BIN" "$@" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  # A gateway that cannot start (port taken meanwhile, bad config) exits at once:
  # say so here rather than let the load generator wait a minute for /readyz.
  for ((i = 0; i < 100; i++)); do
    port_open "$port" && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 5 "$log" >&2; echo "demo: error: the gateway did not start (log $log)" >&2; exit 1; }
    sleep 0.1
  done
}

if ((cluster)); then
  urls=()
  for g in 1 2 3; do
    start_gateway "gateway-$g" serve --no-worker
    urls+=("http://127.0.0.1:$port")
  done
  for w in 1 2; do
    "$BIN" worker >"$STATE/demo-worker-$w.log" 2>&1 &
    pids+=("$!")
  done
  log="$STATE/demo-gateway-{1,2,3}.log, $STATE/demo-worker-{1,2}.log"
  url=$(IFS=,; echo "${urls[*]}")
  cat <<MSG
demo: Redis Cluster on 127.0.0.1:$cluster_base..$((cluster_base + 5)) (3 primaries, 3 replicas;
      a confirm is answered once its order reached a replica); gateways on
      ${urls[*]}, two workers (logs $log).
MSG
else
  start_gateway gateway serve
  url=http://127.0.0.1:$port
fi

((cluster)) || cat <<MSG
demo: gateway on $url (log $log).
MSG
cat <<MSG
demo: now a storm of simulated buyers races for a small stock: each holds units,
      then confirms (pays), releases, or walks away and lets the hold expire.
      At the end the invariants are checked against the gateway's figures:
      no unit held twice, no buyer past the limit, every unit accounted for.
MSG

rc=0
"$LOADTEST" --url "$url" "$@" || rc=$?

if ((rc != 0)); then
  echo "demo: flashsale-loadtest exited $rc; the logs: $log"
fi
if ((cluster)); then
  echo "demo: the gateways, the workers and the cluster stop now."
else
  cat <<MSG
demo: the gateway stops now. To keep one running for the README's curl walk-through:
      target/release/flashsale serve      (on 127.0.0.1:8080; FLASHSALE__HTTP__ADDR moves it)
MSG
fi
exit "$rc"
