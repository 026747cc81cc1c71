#!/usr/bin/env bash
# The SQL in src/store is checked at compile time by sqlx's query macros,
# against the query data committed in .sqlx/ (.cargo/config.toml sets
# SQLX_OFFLINE=true, so a build needs no database). This proves that data is
# current: it migrates a scratch database, compiles the library online against
# it (the macros then describe every query to Postgres and write their data to
# a temporary directory) and compares that with .sqlx/, file by file. A query
# changed in src/ or a migration that changes what a query returns without
# .sqlx/ regenerated fails here, naming the files.
#
# Run by scripts/test.sh; alone: `bash scripts/check-sqlx.sh` (check) or
# `bash scripts/check-sqlx.sh --write` (regenerate .sqlx/ after changing a
# query or a migration; commit the result). Needs Postgres on 127.0.0.1:5432
# (bash scripts/services.sh starts one); no sqlx-cli.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case ${1:-} in
  "") write=false ;;
  --write) write=true ;;
  *)
    echo "usage: bash scripts/check-sqlx.sh [--write]" >&2
    exit 2
    ;;
esac

export PGCONNECT_TIMEOUT=5
psql_as() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres "$@" </dev/null; }

# Unique, so runs sharing a Postgres (developers, CI jobs) never meet.
db="flashsale_sqlx_check_$$_${RANDOM}${RANDOM}"
data=$(mktemp -d)
cleanup() {
  # FORCE: the database is this run's alone; a compiler still connected
  # after an interrupt must not keep it.
  psql_as -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT

if ! psql_as -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null; then
  echo "check-sqlx: cannot create a database on 127.0.0.1:5432 (bash scripts/services.sh starts Postgres)" >&2
  exit 1
fi
# Each migration in a transaction of its own, in order, as sqlx's migrator
# applies them: the schema the macros see is the one `flashsale migrate` makes.
for f in migrations/*.sql; do
  psql_as -d "$db" -1 -f "$f" >/dev/null
done

# The macros read DATABASE_URL and SQLX_OFFLINE_DIR when they run, and cargo
# does not know that: touching the crate makes them run again.
touch src/lib.rs
if ! SQLX_OFFLINE=false DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" \
  SQLX_OFFLINE_DIR="$data" cargo check --locked --quiet -p flashsale --lib; then
  echo "check-sqlx: the library does not compile against the migrated schema (above)" >&2
  exit 1
fi
# Compiled online, the library passed whatever .sqlx/ holds: the next
# (offline) compile must not reuse it.
touch src/lib.rs

if $write; then
  rm -f .sqlx/query-*.json
  mkdir -p .sqlx
  cp "$data"/query-*.json .sqlx/
  echo "check-sqlx: wrote $(find .sqlx -name 'query-*.json' | wc -l) query file(s) to .sqlx/"
  exit 0
fi

# The first line of a data file's SQL (as its JSON writes it), to name the query.
sql_of() { sed -n 's/^  "query": "//p' "$1" | sed 's/\\n.*//; s/",$//' | cut -c1-90; }

status=0
for f in "$data"/query-*.json; do
  name=$(basename "$f")
  if [[ ! -f .sqlx/$name ]]; then
    echo "check-sqlx: missing .sqlx/$name (a new or changed query: $(sql_of "$f"))" >&2
    status=1
  elif ! cmp -s "$f" ".sqlx/$name"; then
    echo "check-sqlx: stale .sqlx/$name (the schema now describes it otherwise: $(sql_of "$f"))" >&2
    diff -u ".sqlx/$name" "$f" | sed 's/^/    /' >&2 || true
    status=1
  fi
done
for f in .sqlx/query-*.json; do
  [[ -e $f ]] || continue
  name=$(basename "$f")
  if [[ ! -f $data/$name ]]; then
    echo "check-sqlx: extra $f (no query in src/ has this SQL any more: $(sql_of "$f"))" >&2
    status=1
  fi
done
if ((status != 0)); then
  echo "check-sqlx: .sqlx/ is out of date; regenerate it with \`bash scripts/check-sqlx.sh --write\` and commit it" >&2
  exit 1
fi
echo "check-sqlx: .sqlx/ is current ($(find "$data" -name 'query-*.json' | wc -l) queries)"
