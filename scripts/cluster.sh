#!/usr/bin/env bash
# A Redis Cluster on loopback from Debian's redis-server: 3 primaries, each
# with one replica, for the tests and `scripts/demo.sh --cluster`. Never Docker.
#
#   bash scripts/cluster.sh start [BASE_PORT]   # ports BASE..BASE+5 (default 30001);
#                                               # `auto`: the first base from 31001
#                                               # (step 10) whose ports are free
#   bash scripts/cluster.sh stop  [BASE_PORT]
#   bash scripts/cluster.sh nodes [BASE_PORT]   # the seed list for redis.cluster_nodes
#   bash scripts/cluster.sh restart BASE_PORT PORT  # a killed node, back with its
#                                                   # nodes.conf: it rejoins (as a replica)
#
# `start` prints the seed list (comma-separated redis://127.0.0.1:PORT) on its
# last line, once every replica has synced with its primary (a replica that
# never synced will not take over). Data and logs: $FLASHSALE_STATE/cluster-BASE.
# CLUSTER_NODE_TIMEOUT_MS (default 1500) is how long a primary may be silent
# before its replica takes over; with 1500 a killed primary is replaced in ~3 s.
set -euo pipefail

cmd=${1:-start}
base=${2:-30001}

# `start auto`: six ports and their bus ports (+10000) that nothing listens
# on. A port taken between this check and the start fails the start: the
# next base. The seed list printed last names the base chosen.
if [[ $cmd == start && $base == auto ]]; then
  ports_free() {
    local p q
    for p in $(seq "$1" $(($1 + 5))); do
      for q in "$p" $((p + 10000)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null && return 1
      done
    done
    return 0
  }
  for b in $(seq 31001 10 31991); do
    ports_free "$b" || continue
    bash "${BASH_SOURCE[0]}" start "$b" && exit 0
    bash "${BASH_SOURCE[0]}" stop "$b" >/dev/null 2>&1 || true
  done
  echo "cluster: no free ports for a cluster from 31001 to 31996" >&2
  exit 1
fi
# The cluster bus listens on port + 10000, which must stay a valid port.
((base >= 1024 && base + 5 <= 55535)) || { echo "cluster: BASE_PORT must be 1024..55530" >&2; exit 2; }
state=${FLASHSALE_STATE:-/var/tmp/flashsale}/cluster-$base
ports=$(seq "$base" $((base + 5)))
timeout_ms=${CLUSTER_NODE_TIMEOUT_MS:-1500}

say() { echo "cluster: $*" >&2; }
nodes() {
  local out=() p
  for p in $ports; do out+=("redis://127.0.0.1:$p"); done
  local IFS=,
  echo "${out[*]}"
}
cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

# One node, with its own nodes.conf. No persistence, as the shared Redis: a
# node restarted after a kill comes back empty, rejoins, and syncs as a replica.
node_up() {
  local p=$1
  mkdir -p "$state/$p"
  redis-server --port "$p" --bind 127.0.0.1 --daemonize yes \
    --dir "$state/$p" --logfile "$state/$p/redis.log" --pidfile "$state/$p/redis.pid" \
    --cluster-enabled yes --cluster-config-file "$state/$p/nodes.conf" \
    --cluster-node-timeout "$timeout_ms" --save '' --appendonly no >/dev/null
  for _ in $(seq 100); do cli "$p" ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  say "node $p did not start (see $state/$p/redis.log)"
  return 1
}

stop() {
  local p
  for p in $ports; do
    cli "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  rm -rf "$state"
}

case $cmd in
  nodes)
    nodes
    ;;
  stop)
    stop
    say "stopped ($base..$((base + 5)))"
    ;;
  start)
    command -v redis-server >/dev/null || { say "redis-server is missing (bash scripts/services.sh)"; exit 1; }
    stop
    for p in $ports; do node_up "$p"; done
    addrs=()
    for p in $ports; do addrs+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$state/create.log" 2>&1 ||
      { cat "$state/create.log" >&2; exit 1; }
    # Every slot served, and every replica synced with its primary.
    for _ in $(seq 300); do
      ok=1
      cli "$base" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
      replicas=0
      for p in $ports; do
        info=$(cli "$p" info replication 2>/dev/null) || { ok=0; continue; }
        if grep -q 'role:slave' <<<"$info"; then
          replicas=$((replicas + 1))
          grep -q 'master_link_status:up' <<<"$info" || ok=0
        fi
      done
      ((replicas == 3)) || ok=0
      ((ok)) && break
      sleep 0.1
    done
    ((ok)) || { say "the cluster did not come up (see $state)"; exit 1; }
    say "up: 3 primaries, 3 replicas on $base..$((base + 5))"
    nodes
    ;;
  restart)
    node_up "${3:?the port of the node}"
    ;;
  *)
    echo "usage: $0 start|stop|nodes|restart [BASE_PORT] [PORT]" >&2
    exit 2
    ;;
esac
