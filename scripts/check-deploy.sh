#!/usr/bin/env bash
# On-call's Prometheus files under deploy/prometheus, checked with promtool:
# the alert rules parse (`check rules`), fire as their unit tests say
# (`test rules`), and the scrape config example loads (`check config`).
# promtool comes from scripts/promtool.sh (Debian's, extracted, never a running
# Prometheus). A live /metrics is checked by tests/metrics/observability.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

promtool=$(bash scripts/promtool.sh)
echo "check-deploy: $("$promtool" --version 2>&1 | head -n 1)"
"$promtool" check rules deploy/prometheus/flashsale-rules.yml
"$promtool" test rules deploy/prometheus/flashsale-rules.test.yml
"$promtool" check config deploy/prometheus/prometheus.yml
