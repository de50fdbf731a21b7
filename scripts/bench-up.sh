#!/usr/bin/env bash
# Sustained throughput of `ioc up` (embedded broker, bus and history in one process) with the
# simulator publishing from another process, as fast as the broker acknowledges.
#
# Per round: a fresh data directory; `ioc up`; the simulated fleet registered; `ioc sim --count N`
# at full speed. Measured from the simulator's start until (a) every message is durable in the
# embedded bus (ingest's rate) and (b) the stream has consumed every reading into history (the
# pipeline's rate). Also `ioc up`'s CPU per message. Needs only a release build.
#   N=50000 ROUNDS=2 scripts/bench-up.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
ROUNDS=${ROUNDS:-2}
IOC=${IOC:-${CARGO_TARGET_DIR:-target}/release/ioc}
TICK=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/ioc-bench-up.XXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
metric() { { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } | awk -v m="$2" '$1 == m {print $2}' | head -n1; }
now_ms() { date +%s%3N; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

printf '%6s %16s %18s %14s %16s\n' round "sim msg/s" "durable msg/s" "history rd/s" "ioc up µs/msg"
for round in $(seq 1 "$ROUNDS"); do
  mqtt=$(free_port); http=$(free_port)
  export IOC_SIM__AIR_QUALITY=20 IOC_SIM__WASTEWATER=5 IOC_SIM__TRAFFIC_COUNTERS=5
  # The external simulator logs in with the [sim] account, which `ioc up` accepts when set.
  export IOC_SIM__USERNAME=bench-sim IOC_SIM__PASSWORD=bench-sim-password
  "$IOC" up --mqtt-listen "127.0.0.1:$mqtt" --http-listen "127.0.0.1:$http" \
    --data-dir "$work/data-$round" --admin-token bench > "$work/up-$round.out" 2> "$work/up-$round.log" & up=$!; pids+=($up)
  until curl -fsS "http://127.0.0.1:$http/healthz" >/dev/null 2>&1; do sleep 0.2; done
  IOC_MQTT__PORT=$mqtt "$IOC" sim --count 0 --register-with "http://127.0.0.1:$http" --admin-token bench >/dev/null 2>&1
  t0=$(now_ms); c0=$(cpu_ticks "$up")
  report=$(IOC_MQTT__PORT=$mqtt "$IOC" sim --count "$N" --rate 1000000 --client-id "bench-$round" 2>/dev/null | tail -n1)
  t_sim=$(now_ms)
  readings=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["readings"])' "$report")
  t_bus=""
  while :; do
    durable=$(metric "$http" 'ioc_bus_durable_offset{topic="ioc.readings"}'); durable=${durable:-0}
    consumed=$(metric "$http" ioc_stream_readings_consumed_total); consumed=${consumed:-0}
    if [ -z "$t_bus" ] && [ "${durable%.*}" -ge "$N" ]; then t_bus=$(now_ms); fi
    if [ -n "$t_bus" ] && [ "${consumed%.*}" -ge "$readings" ]; then t_hist=$(now_ms); c1=$(cpu_ticks "$up"); break; fi
    sleep 0.02
  done
  awk -v n="$N" -v rd="$readings" -v s=$((t_sim - t0)) -v b=$((t_bus - t0)) -v h=$((t_hist - t0)) -v c=$((c1 - c0)) -v tick="$TICK" -v r="$round" \
    'BEGIN { printf "%6d %16.0f %18.0f %14.0f %16.1f\n", r, n / (s / 1000), n / (b / 1000), rd / (h / 1000), c / tick * 1e6 / n }'
  kill -TERM "$up"; wait "$up" 2>/dev/null || true
done
echo "($N messages per round; logs were in $work)"
