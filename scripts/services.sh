#!/usr/bin/env bash
# Makes sure everything flashsale needs on this machine is there, idempotently:
#   1. a C toolchain (`cc`), which rustc needs to link and `ring` needs to build;
#   2. the redis-server and PostgreSQL server binaries (tests start private servers);
#   3. Redis answering on 127.0.0.1:6379, else a private one is started;
#   4. Postgres answering on 127.0.0.1:5432, else a private one is started.
# A service that already answers is only connected to, never changed.
# Packages are installed only when something is missing, so a later run with no
# network at all (an offline namespace, a plane) works without apt-get.
#
# Run it (`bash scripts/services.sh`) or source it (`source scripts/services.sh`);
# sourced, it also exports FLASHSALE_STATE and puts the Postgres binaries on PATH.
# State (private servers' data and logs): $FLASHSALE_STATE, default /var/tmp/flashsale.

# Where the Postgres server binaries live: Debian keeps initdb and pg_ctl out of
# PATH, in /usr/lib/postgresql/<version>/bin; take the newest, else PATH's.
_fs_pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
  if [[ -n $d && -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
    echo "$d"
  elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null; then
    dirname "$(command -v initdb)"
  else
    return 1
  fi
}

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
  # Sourced: do the work in a child bash, so that its `set -e` and `exit` never
  # hit the caller's shell (an interactive one would close). No "$@": a sourced
  # file would otherwise see the caller's arguments.
  bash "${BASH_SOURCE[0]}" || return
  export FLASHSALE_STATE=${FLASHSALE_STATE:-/var/tmp/flashsale}
  if _fs_bin=$(_fs_pg_bindir) && [[ :$PATH: != *":$_fs_bin:"* ]]; then
    export PATH="$PATH:$_fs_bin"
  fi
  unset _fs_bin
  return 0
fi

set -euo pipefail

STATE=${FLASHSALE_STATE:-/var/tmp/flashsale}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd) # pg_ctl and redis need an absolute path
WAIT_SECONDS=20

say() { echo "services: $*"; }
die() { echo "services: error: $*" >&2; exit 1; }
# Is $1 an executable on PATH? (`command -v` alone also names a file without the x bit.)
have() { local p; p=$(command -v "$1") && [[ -x $p ]]; }

# --- 1 and 2: packages, only for what is missing ----------------------------

# Does `cc` exist and link a C program? gcc without libc6-dev has no crt1.o/libc.so.
cc_links() {
  command -v cc >/dev/null || return 1
  local t rc=0
  t=$(mktemp -d)
  printf 'int main(void) { return 0; }\n' >"$t/t.c"
  cc "$t/t.c" -o "$t/t" >/dev/null 2>&1 || rc=1
  rm -rf "$t"
  return $rc
}

missing=()
cc_links || missing+=(gcc libc6-dev)
have redis-server && have redis-cli || missing+=(redis-server)
_fs_pg_bindir >/dev/null || missing+=(postgresql)
# What only test.sh needs (it asks for it; the demo does not): Debian's
# Chromium for the browser tests, and python3 for the link check
# (scripts/check-docs.sh), which a minimal Debian does not have.
if [ "${FLASHSALE_WITH_BROWSER:-0}" = 1 ]; then
  have chromium && have chromedriver || missing+=(chromium chromium-driver)
  have python3 || missing+=(python3)
fi

if ((${#missing[@]})); then
  have apt-get || die "missing ${missing[*]} and no apt-get here: install them with your package manager"
  # Root runs apt-get directly; anyone else through sudo.
  sudo=()
  if [[ $(id -u) != 0 ]]; then
    have sudo || die "missing ${missing[*]}: run this as root once (no sudo here), or install them yourself"
    sudo=(sudo)
  fi
  log=$STATE/apt.log
  say "installing ${missing[*]} (apt-get, log $log)"
  # noninteractive: CI has no stdin. In a chroot, policy-rc.d stops the packages
  # from starting their own servers; that is fine, we start ours below.
  # Lock::Timeout: wait for another apt (unattended-upgrades) instead of failing.
  apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=120)
  { "${apt[@]}" update && "${apt[@]}" install --no-install-recommends "${missing[@]}"; } >"$log" 2>&1 ||
    { tail -n 20 "$log" >&2; die "apt-get failed (full log: $log)"; }
  cc_links || die "cc still cannot link a C program after installing gcc libc6-dev"
  have redis-server && have redis-cli || die "redis-server/redis-cli still missing"
  _fs_pg_bindir >/dev/null || die "PostgreSQL server binaries still missing (looked in /usr/lib/postgresql/*/bin)"
fi
PGBIN=$(_fs_pg_bindir)

# Is something accepting TCP connections on 127.0.0.1:$1? (bash alone: no curl, no nc)
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# --- 3: Redis on 127.0.0.1:6379 ------------------------------------------------

redis_pong() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]; }

# Wait (bounded) for Redis to answer PONG; a Redis still loading its data answers LOADING.
redis_wait() {
  local i
  for ((i = 0; i < WAIT_SECONDS * 4; i++)); do redis_pong && return 0; sleep 0.25; done
  return 1
}

if redis_pong; then
  say "redis: found running on 127.0.0.1:6379"
elif port_open 6379; then
  # Something listens, but it is not a Redis we can use (yet): wait, never fight it for the port.
  redis_wait || die "something listens on 127.0.0.1:6379 but does not answer PING with PONG: $(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>&1 | head -n 1)"
  say "redis: found running on 127.0.0.1:6379"
else
  mkdir -p "$STATE/redis"
  # A throwaway server: no persistence, loopback only; --daemonize returns at once.
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE/redis" --logfile "$STATE/redis/redis.log" --pidfile "$STATE/redis/redis.pid" ||
    die "redis-server did not start; see $STATE/redis/redis.log"
  redis_wait || { tail -n 5 "$STATE/redis/redis.log" >&2 2>/dev/null; die "the Redis started here did not answer PING within ${WAIT_SECONDS}s (log $STATE/redis/redis.log)"; }
  say "redis: started a private redis-server on 127.0.0.1:6379 (log $STATE/redis/redis.log)"
fi

# --- 4: Postgres on 127.0.0.1:5432 ---------------------------------------------

# 0 accepting, 1 rejecting (starting up or shutting down), 2 no answer.
pg_state() {
  local isready
  isready=$(command -v pg_isready || echo "$PGBIN/pg_isready")
  if [[ -x $isready ]]; then
    local rc=0
    "$isready" -q -h 127.0.0.1 -p 5432 -U postgres -t 3 >/dev/null 2>&1 || rc=$?
    return $rc
  fi
  port_open 5432 || return 2 # no pg_isready: an open port has to do
}
pg_wait() {
  local i
  for ((i = 0; i < WAIT_SECONDS * 2; i++)); do pg_state && return 0; sleep 0.5; done
  return 1
}

# The shared server must let user postgres in without a password (the default
# database.url has none); a distro cluster asks for one over TCP. Warn only: the
# user may have PGPASSWORD/.pgpass and FLASHSALE__DATABASE__URL set up.
pg_check_login() {
  command -v psql >/dev/null || return 0
  if ! PGCONNECT_TIMEOUT=5 psql -X -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' </dev/null >/dev/null 2>&1; then
    say "warning: postgres on 127.0.0.1:5432 does not let user postgres in without a password;" \
      "the default database.url (postgres://postgres@127.0.0.1:5432/flashsale) will fail:" \
      "allow trust for 127.0.0.1 in pg_hba.conf, or set FLASHSALE__DATABASE__URL"
  fi
}

PGDATA=$STATE/pg
PGLOG=$STATE/pg.log

# initdb and postgres refuse to run as root: as root, run them as the `postgres`
# system user (created by the postgresql package), from / since root's home is closed to it.
as_pg() {
  if [[ $(id -u) == 0 ]]; then
    (cd / && runuser -u postgres -- env LC_ALL=C "$@")
  else
    (cd / && env LC_ALL=C "$@")
  fi
}

# Prints the pid in the first line of lock file $1 if that process is a live
# postgres (a zombie is dead: its State is Z); fails otherwise.
live_postgres_in() {
  local pid
  [[ -f $1 ]] && pid=$(head -n 1 "$1") && [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres* ]] || return 1
  grep -qE '^State:\s+[ZX]' "/proc/$pid/status" 2>/dev/null && return 1
  echo "$pid"
}

pg_start() {
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no postgres system user to run a private Postgres as (it comes with the postgresql package)"
    chmod go+x "$STATE" # postgres must reach $STATE/pg
    as_pg test -x "$STATE" || die "user postgres cannot reach $STATE: choose FLASHSALE_STATE under a directory others can enter (e.g. /var/tmp)"
  fi

  # A data dir without PG_VERSION is a half-finished initdb: keep it aside, start afresh.
  if [[ -d $PGDATA && ! -f $PGDATA/PG_VERSION ]]; then
    local aside
    aside=$PGDATA.broken.$(date +%s)
    mv "$PGDATA" "$aside"
    say "postgres: $PGDATA was not a complete data directory, moved to $aside"
  fi
  if [[ ! -d $PGDATA ]]; then
    mkdir -m 700 "$PGDATA"
    [[ $(id -u) != 0 ]] || chown postgres: "$PGDATA"
    # --locale=C: a minimal machine may not have the locale LANG names, and initdb would refuse.
    as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres -E UTF8 --locale=C >"$STATE/initdb.log" 2>&1 ||
      { tail -n 10 "$STATE/initdb.log" >&2; die "initdb failed (log $STATE/initdb.log)"; }
  elif [[ $(id -u) == 0 && $(stat -c %U "$PGDATA") != postgres ]]; then
    chown -R postgres: "$PGDATA" # made by an earlier run as another user
  fi

  # After a reboot, a SIGKILL or a run in another namespace, postmaster.pid may
  # name a process that is gone: postgres then refuses to start if that pid now
  # exists at all (reused, or a zombie nobody reaped). Remove it when stale.
  local pid
  if pid=$(live_postgres_in "$PGDATA/postmaster.pid"); then
    # It runs: maybe still starting; if it never answers here, it lives in another network namespace.
    pg_wait && { pg_how="found running"; return 0; }
    die "postgres (pid $pid) already runs on $PGDATA but does not answer on 127.0.0.1:5432 here; stop it first: $PGBIN/pg_ctl -D $PGDATA stop"
  fi
  rm -f "$PGDATA/postmaster.pid"
  # The same goes for the socket's lock file in /tmp.
  if pid=$(live_postgres_in /tmp/.s.PGSQL.5432.lock); then
    die "another postgres (pid $pid) holds /tmp/.s.PGSQL.5432 but does not answer on 127.0.0.1:5432 here"
  fi
  rm -f /tmp/.s.PGSQL.5432.lock /tmp/.s.PGSQL.5432 2>/dev/null || true

  touch "$PGLOG"
  [[ $(id -u) != 0 ]] || chown postgres: "$PGLOG" # pg_ctl opens the log as postgres
  # Loopback only; the socket in /tmp, away from a distro server's /var/run/postgresql.
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p 5432 -k /tmp" start >/dev/null ||
    { tail -n 10 "$PGLOG" >&2; die "pg_ctl start failed (log $PGLOG)"; }
  pg_wait || { tail -n 10 "$PGLOG" >&2; die "the Postgres started here did not answer within ${WAIT_SECONDS}s (log $PGLOG)"; }
  pg_how="started a private server"
}

pg_rc=0
pg_state || pg_rc=$?
if ((pg_rc == 1)); then
  pg_wait || die "postgres on 127.0.0.1:5432 answers but keeps rejecting connections (starting up or shutting down?)"
  pg_rc=0
fi
if ((pg_rc == 0)); then
  say "postgres: found running on 127.0.0.1:5432"
  pg_check_login
else
  pg_start
  say "postgres: $pg_how on 127.0.0.1:5432 (data $PGDATA, log $PGLOG)"
fi
