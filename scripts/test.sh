#!/usr/bin/env bash
# The test command. Installs and starts what the tests need (scripts/services.sh: Mosquitto,
# ClickHouse, tansu), builds, and runs every unit and end-to-end test. Idempotent: run it again
# and it reuses what is installed, running and built. Prints how long each phase took.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh <cargo test args>   # e.g. scripts/test.sh -p ioc-ingest
set -euo pipefail
cd "$(dirname "$0")/.."

phase_start=$(date +%s)
phase() {
  local now; now=$(date +%s)
  printf '[test] %-28s %4ds\n' "$1" $((now - phase_start)) >&2
  phase_start=$now
}
total_start=$(date +%s)

# Services (tansu builds from source the first time: ~14 min) in the background while the
# project builds; both are CPU-bound, but neither waits on the other's network round trips.
bash scripts/services.sh > /tmp/ioc-services.log 2>&1 &
services_pid=$!

set +o pipefail
cargo test --release --workspace --no-run 2>&1 | grep -Ev '^\s+(Compiling|Fresh|Checking|Downloaded)' >&2
build_status=${PIPESTATUS[0]}
set -o pipefail
[ "$build_status" -eq 0 ] || { echo "[test] build failed" >&2; kill "$services_pid" 2>/dev/null; exit 1; }
phase "build (release, tests + ioc)"

if ! wait "$services_pid"; then
  cat /tmp/ioc-services.log >&2
  echo "[test] services did not start" >&2
  exit 1
fi
cat /tmp/ioc-services.log >&2
phase "services"

cargo test --release --workspace "$@"
phase "tests"
printf '[test] total %ds\n' $(( $(date +%s) - total_start )) >&2
