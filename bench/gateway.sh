# bench/gateway.sh: sourced by the benchmark scripts that play one gateway
# against buyers from one loopback address (edge.sh, soak.sh).
#
#   start_gateway NAME PORT EXAMPLE
#
# builds `flashsale` and the load generator's example EXAMPLE (unless FS_BIN
# and BENCH_BIN name binaries), migrates the database flashsale_bench_NAME,
# and starts `flashsale serve` on PORT under the key prefix NAMEbench, with
# the per-address reserve limit and connection cap lifted (the buyers are
# many customers behind one address) and everything else as shipped. Sets
# FS_BIN, BENCH_BIN and GATEWAY (its pid); on exit the gateway is stopped and
# its keys and database removed. Needs Redis on 127.0.0.1:6379 and Postgres
# on 127.0.0.1:5432.

start_gateway() {
  local name=$1 port=$2 example=$3
  if [[ -z "${FS_BIN:-}" || -z "${BENCH_BIN:-}" ]]; then
    cargo build --release --quiet --bin flashsale --example "$example"
  fi
  FS_BIN=${FS_BIN:-target/release/flashsale}
  BENCH_BIN=${BENCH_BIN:-target/release/examples/$example}
  BENCH_PREFIX=${name}bench
  BENCH_DB=flashsale_bench_$name
  export FLASHSALE__HTTP__ADDR=127.0.0.1:$port FLASHSALE__REDIS__KEY_PREFIX=$BENCH_PREFIX \
    FLASHSALE__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$BENCH_DB
  "$FS_BIN" migrate
  FLASHSALE__LIMITS__PER_IP_PER_SECOND=1000000 FLASHSALE__LIMITS__PER_IP_BURST=1000000 \
    FLASHSALE__HTTP__MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn \
    "$FS_BIN" serve >"/tmp/${BENCH_PREFIX}-gateway.log" 2>&1 &
  GATEWAY=$!
  trap stop_gateway EXIT
  for ((i = 0; i < 100; i++)); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
    sleep 0.1
  done
}

stop_gateway() {
  kill -TERM "$GATEWAY" 2>/dev/null || true
  wait "$GATEWAY" 2>/dev/null || true
  redis-cli --scan --pattern "$BENCH_PREFIX:*" | xargs -r -n 500 redis-cli del >/dev/null
  psql -q postgres://postgres@127.0.0.1:5432/postgres -c "DROP DATABASE IF EXISTS $BENCH_DB" || true
}
