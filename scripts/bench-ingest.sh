#!/usr/bin/env bash
# Ingest throughput with the acknowledgement rule ("after-kafka": ack only after Kafka confirmed)
# against acking on receipt ("on-receipt"), alternating in one run on the same machine.
#
# Each round: a fresh Mosquitto (the shipped config, without accounts), ingest connects once to create its
# persistent session and leaves; the simulator queues N messages in that session; ingest
# starts again and drains them. Measured from the first message received until every message
# is received and confirmed by Kafka: messages/s, ingest CPU µs per message, Mosquitto CPU µs
# per message. Needs scripts/services.sh running (tansu, ClickHouse) and a
# release build.   N=30000 ROUNDS=2 scripts/bench-ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
ROUNDS=${ROUNDS:-2}
IOC=${IOC:-${CARGO_TARGET_DIR:-target}/release/ioc}
TICK=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/ioc-bench.XXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
metric() { { curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } | awk -v m="$2" '$1 == m {print $2}' | head -n1; }
now_ms() { date +%s%3N; }

api_port=$(free_port); metrics_port=$(free_port)
cat > "$work/ioc.toml" <<CONF
[kafka]
topic_prefix = "bench$$."
[clickhouse]
database = "bench$$"
[api]
listen = "127.0.0.1:$api_port"
admin_token = "bench"
# The bench's broker runs without the dynamic security plugin (below): no device accounts.
device_accounts = "none"
[ingest]
metrics_listen = "127.0.0.1:$metrics_port"
# Throughput, not the flood guard, is measured here.
device_rate_limit = 0.0
[sim]
air_quality = 20
wastewater = 5
traffic_counters = 5
CONF
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; curl -sS http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS bench$$" >/dev/null || true; }
trap cleanup EXIT

"$IOC" --config "$work/ioc.toml" api > "$work/api.log" 2>&1 & pids+=($!)
until curl -fsS "http://127.0.0.1:$api_port/healthz" >/dev/null 2>&1; do sleep 0.2; done
"$IOC" --config "$work/ioc.toml" sim --count 0 --register-with "http://127.0.0.1:$api_port" --admin-token bench >/dev/null 2>&1

printf '%-12s %6s %10s %14s %16s\n' mode round msg/s "ingest µs/msg" "mosquitto µs/msg"
for round in $(seq 1 "$ROUNDS"); do
  for mode in on-receipt after-kafka; do
    mqtt_port=$(free_port)
    # The shipped config without its accounts (the plugin's ACL checks are not what this
    # compares; both modes pay the same for them).
    sed -e "s/^listener .*/listener $mqtt_port 127.0.0.1/" -e "s/^persistence .*/persistence false/" \
      -e "s/^allow_anonymous .*/allow_anonymous true/" -e "/^plugin/d" config/mosquitto.conf > "$work/mosquitto.conf"
    mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 & mosq=$!; pids+=($mosq)
    sleep 0.3
    export IOC_MQTT__PORT=$mqtt_port IOC_INGEST__ACK_MODE=$mode IOC_INGEST__CLIENT_ID="bench-$mode-$round"
    "$IOC" --config "$work/ioc.toml" ingest > "$work/ingest-$mode-$round-a.log" 2>&1 & ing=$!
    until [ "$(metric "$metrics_port" ioc_ingest_mqtt_connects_total)" = "1" ]; do sleep 0.1; done
    sleep 0.5
    kill -TERM "$ing"; wait "$ing" || true
    "$IOC" --config "$work/ioc.toml" sim --count "$N" --rate 1000000 --client-id "bench-sim-$round-$mode" > /dev/null 2>&1
    mosq_before=$(cpu_ticks "$mosq")
    "$IOC" --config "$work/ioc.toml" ingest > "$work/ingest-$mode-$round-b.log" 2>&1 & ing=$!; pids+=($ing)
    first=""; 
    while :; do
      received=$(metric "$metrics_port" ioc_ingest_messages_received_total); received=${received:-0}
      inflight=$(metric "$metrics_port" ioc_ingest_inflight_messages); inflight=${inflight:-1}
      if [ -z "$first" ] && [ "${received%.*}" -gt 0 ]; then
        first=1; t0=$(now_ms); c0=$(cpu_ticks "$ing"); m0=$(cpu_ticks "$mosq"); a0=${received%.*}
      fi
      # Done when every message is received and Kafka confirmed all of it: in both modes the
      # rate is what Kafka sustains, not how fast messages pile up in the producer's queue.
      if [ "${received%.*}" -ge "$N" ] && [ "${inflight%.*}" -eq 0 ]; then
        t1=$(now_ms); c1=$(cpu_ticks "$ing"); m1=$(cpu_ticks "$mosq"); break
      fi
      sleep 0.01
    done
    n=$((N - a0)); [ "$n" -gt 0 ] || { echo "drained before the first sample; raise N" >&2; exit 1; }
    awk -v n="$n" -v ms=$((t1 - t0)) -v ci=$((c1 - c0)) -v cm=$((m1 - m0)) -v tick="$TICK" -v mode="$mode" -v r="$round" \
      'BEGIN { printf "%-12s %6d %10.0f %14.1f %16.1f\n", mode, r, n / (ms / 1000), ci / tick * 1e6 / n, cm / tick * 1e6 / n }'
    kill -TERM "$ing"; wait "$ing" 2>/dev/null || true
    kill "$mosq"; wait "$mosq" 2>/dev/null || true
    unset IOC_MQTT__PORT IOC_INGEST__ACK_MODE IOC_INGEST__CLIENT_ID
  done
done
