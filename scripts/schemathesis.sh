#!/usr/bin/env bash
# schemathesis against a gateway started for it: every check, the stateful
# phase included, as `schemathesis.toml` sets them (the CLI's `--checks all`
# would override the file's one documented exception). Fails on any failure, or
# when the stateful phase covered fewer than MIN_LINKS links (a document
# whose links lead nowhere tests nothing deep).
#
# Run by scripts/test.sh after the Rust tests; alone: `bash scripts/schemathesis.sh`.
# Needs Redis and Postgres (scripts/services.sh) and python3; schemathesis is
# installed from PyPI into a virtualenv under $FLASHSALE_STATE.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/services.sh

VERSION=4.32.5
MIN_LINKS=20
STATE=${FLASHSALE_STATE:-/var/tmp/flashsale}
VENV=$STATE/schemathesis-$VERSION
say() { echo "schemathesis: $*"; }

# A fresh Debian may have neither Python's venv nor curl.
missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi
if [[ ! -x $VENV/bin/st ]]; then
  say "installing schemathesis $VERSION from PyPI into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

cargo build --locked --quiet --bin flashsale
bin=target/debug/flashsale

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run=st$$
export FLASHSALE__HTTP__ADDR=127.0.0.1:$port
export FLASHSALE__REDIS__KEY_PREFIX=$run
export FLASHSALE__DATABASE__URL=postgres://postgres@127.0.0.1:5432/flashsale_test_$run
# Rate limits off: the run sends thousands of requests from one address.
export FLASHSALE__LIMITS__ENABLED=false
log=$(mktemp)
cleanup() {
  [[ -n ${gw:-} ]] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$run*" 2>/dev/null |
    xargs -r redis-cli -h 127.0.0.1 -p 6379 unlink >/dev/null 2>&1 || true
  psql -X -q -h 127.0.0.1 -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS flashsale_test_$run" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT

"$bin" migrate >/dev/null
"$bin" serve >"$log" 2>&1 &
gw=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
token=$("$bin" token --sub schemathesis --role admin --ttl 7200)

# One sale live for the whole run, so the links from the list of sales lead
# to reserves that hold, and from there to confirms and releases. It starts
# at the earliest start a sale may have, so it heads the list.
now=$(date -u +%s)
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/v1/sales" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"id\":\"st-live\",\"sku\":\"ST\",\"name\":\"schemathesis\",\"price_cents\":100,
       \"currency\":\"IDR\",\"stock\":1000000000,
       \"starts_at\":\"2000-01-01T00:00:00Z\",
       \"ends_at\":\"$(date -u -d @$((now + 86400)) +%FT%TZ)\",
       \"per_customer_limit\":1000000,\"hold_seconds\":3600}"
# And one behind a waiting room (open, sealed, admitting fast), so joins
# and places answer 201/200 too, and its reserves the admission codes.
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/v1/sales" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"id\":\"st-room\",\"sku\":\"ST\",\"name\":\"schemathesis room\",\"price_cents\":100,
       \"currency\":\"IDR\",\"stock\":1000000000,
       \"starts_at\":\"2000-01-01T00:00:01Z\",
       \"ends_at\":\"$(date -u -d @$((now + 86400)) +%FT%TZ)\",
       \"per_customer_limit\":1000000,\"hold_seconds\":3600,
       \"queue\":{\"opens_at\":\"2000-01-01T00:00:00Z\",\"admit_per_second\":1000,
                \"admit_burst\":1000,\"admission_seconds\":600}}"

out=$(mktemp)
say "running against 127.0.0.1:$port"
rc=0
"$VENV/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" --no-color ${ST_ARGS:---seed 1212} 2>&1 | tee "$out" || rc=$?
links=$(sed -n 's/.*API Links: *\([0-9]*\) covered.*/\1/p' "$out" | tail -n 1)
rm -f "$out"
if ((rc != 0)); then
  say "FAILED (exit $rc); the gateway's log:"
  tail -n 40 "$log"
  exit 1
fi
if [[ -z $links ]] || ((links < MIN_LINKS)); then
  say "FAILED: the stateful phase covered ${links:-no} links, fewer than $MIN_LINKS"
  exit 1
fi
say "passed; $links links covered"
