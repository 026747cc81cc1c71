#!/usr/bin/env bash
# The README's "run the demo": `bash scripts/demo.sh [LOADTEST OPTIONS]`.
# Makes sure Redis and Postgres run, builds the release binaries, migrates,
# starts a gateway in the background and plays a flash sale against it with
# `flashsale-loadtest` (the load generator, crate loadgen/), whose exit code
# this script returns (non-zero: an invariant broke). Options after demo.sh go
# to flashsale-loadtest (`--help` lists them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/services.sh # exports FLASHSALE_STATE
STATE=$FLASHSALE_STATE
BIN=target/release/flashsale
LOADTEST=target/release/flashsale-loadtest

echo "demo: building the release binaries (the first build takes a few minutes)"
cargo build --release --locked --quiet --bin flashsale --bin flashsale-loadtest
"$BIN" migrate

# Something accepting TCP connections on 127.0.0.1:$1? (bash alone: no curl here)
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# The default port may be taken (another gateway, a dev server): take the next free one.
port=${FLASHSALE_DEMO_PORT:-8080}
for ((tries = 0; tries < 50; tries++)); do port_open "$port" || break; port=$((port + 1)); done
port_open "$port" && { echo "demo: error: no free port from ${FLASHSALE_DEMO_PORT:-8080} to $port" >&2; exit 1; }

log=$STATE/demo-gateway.log
# Every simulated buyer comes from 127.0.0.1: lift the per-address limit and
# the per-address connection cap (real buyers come from many addresses); the
# per-customer limits and the gateway's own connection cap stay on.
FLASHSALE__HTTP__ADDR=127.0.0.1:$port \
  FLASHSALE__LIMITS__PER_IP_PER_SECOND=${FLASHSALE__LIMITS__PER_IP_PER_SECOND:-1000000} \
  FLASHSALE__LIMITS__PER_IP_BURST=${FLASHSALE__LIMITS__PER_IP_BURST:-1000000} \
  FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP=${FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP:-100000} \
  "$BIN" serve >"$log" 2>&1 &
gateway=$!

# Whatever happens from here (success, failure, Ctrl-C), stop the gateway:
# SIGTERM lets it drain requests and stop its worker; SIGKILL only if it hangs.
stop_gateway() {
  local i
  kill -0 "$gateway" 2>/dev/null || return 0
  kill -TERM "$gateway" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$gateway" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$gateway" 2>/dev/null || true
  wait "$gateway" 2>/dev/null || true
}
trap stop_gateway EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A gateway that cannot start (port taken meanwhile, bad config) exits at once:
# say so here rather than let the load generator wait a minute for /readyz.
for ((i = 0; i < 100; i++)); do
  port_open "$port" && break
  kill -0 "$gateway" 2>/dev/null || { tail -n 5 "$log" >&2; echo "demo: error: the gateway did not start (log $log)" >&2; exit 1; }
  sleep 0.1
done

cat <<MSG
demo: gateway on http://127.0.0.1:$port (log $log).
demo: now a storm of simulated buyers races for a small stock: each holds units,
      then confirms (pays), releases, or walks away and lets the hold expire.
      At the end the invariants are checked against the gateway's figures:
      no unit held twice, no buyer past the limit, every unit accounted for.
MSG

rc=0
"$LOADTEST" --url "http://127.0.0.1:$port" "$@" || rc=$?

if ((rc != 0)); then
  echo "demo: flashsale-loadtest exited $rc; the gateway's log is $log"
fi
cat <<MSG
demo: the gateway stops now. To keep one running for the README's curl walk-through:
      target/release/flashsale serve      (on 127.0.0.1:8080; FLASHSALE__HTTP__ADDR moves it)
MSG
exit "$rc"
