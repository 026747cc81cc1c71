#!/usr/bin/env bash
# The README's "run the tests": `bash scripts/test.sh [CARGO TEST ARGS]`.
# Makes sure Redis and Postgres run, checks formatting and lints when those
# components are installed, then runs `cargo test --locked "$@"` and, with no
# arguments, the storm, model, outbox and waiting-room suites again on a loopback Redis
# Cluster (scripts/cluster.sh) and schemathesis against a gateway
# (scripts/schemathesis.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Exports FLASHSALE_STATE and puts initdb/pg_ctl/postgres on PATH: some tests
# start private servers, and Debian keeps those binaries out of PATH. The
# browser tests need Debian's chromium and chromedriver: installed if missing.
export FLASHSALE_WITH_BROWSER=1
source scripts/services.sh

# Test databases (flashsale_test_*) left by earlier runs that were killed. No
# FORCE: a database still in use belongs to a test run going on right now (the
# Postgres may be shared), so its DROP fails and is ignored.
dbs=$(PGCONNECT_TIMEOUT=5 psql -X -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'flashsale\_test\_%'" </dev/null 2>/dev/null) || dbs=
n=0
for db in $dbs; do
  PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p 5432 -U postgres -d postgres \
    -c "DROP DATABASE \"${db//\"/\"\"}\"" </dev/null >/dev/null 2>&1 && n=$((n + 1)) || true
done
((n == 0)) || echo "test: dropped $n leftover test database(s)"

# A clean build of every test binary takes about 3 GiB under target/ (4.5 GiB
# with incremental data). A disk that fills during it kills the linker with
# SIGBUS, a message that names nothing; say so first.
free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
if [[ $free_kib =~ ^[0-9]+$ ]] && ((free_kib < 5 * 1024 * 1024)); then
  echo "test: warning: only $((free_kib / 1024)) MiB free here; a clean build needs about 3 GiB" >&2
fi

# Formatting and lints first: they fail in seconds, the tests take minutes.
if cargo fmt --version >/dev/null 2>&1; then
  echo "test: cargo fmt --check"
  cargo fmt --all --check
else
  echo "test: rustfmt not installed, skipping cargo fmt --check (rustup component add rustfmt)"
fi
if cargo clippy --version >/dev/null 2>&1; then
  echo "test: cargo clippy"
  cargo clippy --all-targets --locked --quiet -- -D warnings
else
  echo "test: clippy not installed, skipping cargo clippy (rustup component add clippy)"
fi

# On-call's alert rules and scrape config (deploy/prometheus), by promtool,
# which scripts/promtool.sh fetches if missing; tests/metrics/observability.rs finds
# it the same way for the live /metrics.
echo "test: deploy/ (promtool)"
bash scripts/check-deploy.sh
echo "test: docs links"
bash scripts/check-docs.sh
echo "test: sqlx offline data"
bash scripts/check-sqlx.sh

echo "test: cargo test"
cargo test --locked "$@"

# The suites that attack the engine hardest (storm, model, outbox) and the
# waiting room (its keys under the sale's tag, its seal and admissions) again on
# a loopback Redis Cluster (scripts/cluster.sh: 3 primaries, 3 replicas) with
# redis.confirm_replicas = 1, as tests/common/mod.rs reads
# FLASHSALE_TEST_CLUSTER_NODES. Only on a whole run: arguments pick some tests.
# They are modules of the api binary, picked by filter: a filter matches any
# part of a test's path, so `model::` would also pick repair_model, skipped.
cluster_base=
stop_cluster() {
  [[ -z $cluster_base ]] || bash scripts/cluster.sh stop "$cluster_base" >/dev/null 2>&1 || true
}
trap stop_cluster EXIT
if (($# == 0)); then
  echo "test: cargo test on a Redis Cluster (storm, model, outbox, waiting room)"
  nodes=$(bash scripts/cluster.sh start auto | tail -n 1)
  # The seed list starts with the base port: redis://127.0.0.1:BASE,...
  cluster_base=${nodes%%,*}
  cluster_base=${cluster_base##*:}
  FLASHSALE_TEST_CLUSTER_NODES=$nodes cargo test --locked --test api -- \
    storm:: model:: outbox:: waiting_room:: --skip repair_model::
  stop_cluster
  cluster_base=
fi

# The API document against the running gateway (schemathesis, every check,
# the stateful phase). Only on a whole run: arguments pick some Rust tests.
if (($# == 0)); then
  echo "test: schemathesis"
  bash scripts/schemathesis.sh
fi
