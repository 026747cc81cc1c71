#!/usr/bin/env bash
# Prints the path of a `promtool` (Prometheus's linter), fetching one if needed.
#
# Order: $PROMTOOL if set, then `promtool` on PATH, then a copy cached under
# $FLASHSALE_STATE/promtool (default /var/tmp/flashsale). Without one, Debian's
# `prometheus` package is downloaded (`apt-get download`, not installed) and
# only /usr/bin/promtool is extracted with `dpkg-deb -x`: installing the
# package would start a Prometheus server that takes port 9090 and scrapes
# this machine, which nothing here wants.
#
# Usage: `PROMTOOL=$(bash scripts/promtool.sh)`; exit 1 with a reason on
# stderr when none can be had (no apt, no network).
set -euo pipefail

say() { echo "promtool: $*" >&2; }
works() { [[ -x $1 ]] && "$1" --version >/dev/null 2>&1; }

if [[ -n ${PROMTOOL:-} ]]; then
  p=$(command -v "$PROMTOOL") && works "$p" || { say "PROMTOOL=$PROMTOOL does not run"; exit 1; }
  echo "$p"
  exit 0
fi
if p=$(command -v promtool) && works "$p"; then
  echo "$p"
  exit 0
fi

STATE=${FLASHSALE_STATE:-/var/tmp/flashsale}
cache=$STATE/promtool
if works "$cache/usr/bin/promtool"; then
  echo "$cache/usr/bin/promtool"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
  { say "no promtool, and no apt-get/dpkg-deb to fetch Debian's: install Prometheus's promtool"; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/apt.log
download() { (cd "$work" && apt-get -q download prometheus) >>"$log" 2>&1; }
if ! download; then
  # A fresh machine has no package lists yet: refreshing them needs root.
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  say "refreshing the package lists (apt-get update)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120 update >>"$log" 2>&1 &&
    download || { tail -n 20 "$log" >&2; say "cannot download Debian's prometheus package"; exit 1; }
fi
deb=$(ls "$work"/prometheus_*.deb)
dpkg-deb -x "$deb" "$work/root"
works "$work/root/usr/bin/promtool" || { say "the package's promtool does not run"; exit 1; }
# Moved into place whole: a concurrent run sees either no cache or a good one.
mkdir -p "$cache/usr/bin"
mv -f "$work/root/usr/bin/promtool" "$cache/usr/bin/promtool"
say "extracted $(basename "$deb") promtool into $cache"
echo "$cache/usr/bin/promtool"
