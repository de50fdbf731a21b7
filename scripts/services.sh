#!/usr/bin/env bash
# Installs and starts the real services the tests need, idempotently:
#   - Mosquitto and its clients (Debian packages; tests start their own instances from
#     config/mosquitto.conf, with the dynamic security plugin)
#   - ClickHouse server (Debian package, 18.16 on bookworm) on 127.0.0.1:8123
#   - tansu, a Kafka-protocol broker (cargo install, cached in ~/.cache/ioc/tansu) on 127.0.0.1:9092
#   - Debian's chromium and npm's playwright-core (tests/browser) for the browser test
#   - aiosmtpd (PyPI), the SMTP server the email notification test starts
#   - schemathesis and jsonschema (PyPI, in a venv under /var/tmp/ioc-tools): the e2e tests run
#     them against the API's OpenAPI document and its FIWARE entities
# Safe to run again: it installs only what is missing and starts only what is not answering.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[services] %s\n' "$*" >&2; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# mosquitto_ctrl (in mosquitto) and mosquitto_rr: the tests set up the dynamic security plugin.
command -v mosquitto_rr >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ] || need_apt+=(clickhouse-server clickhouse-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v make >/dev/null 2>&1 || need_apt+=(make)
# openssl: the TLS notification test makes a CA and a server certificate with it.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# tansu's default features include no storage engine; `dynostore` brings memory://.
# Installed under its own root (not ~/.cargo/bin) so the check below finds exactly this build.
TANSU_VERSION=0.6.0
TANSU_ROOT="${TANSU_ROOT:-$HOME/.cache/ioc/tansu}"
TANSU="$TANSU_ROOT/bin/tansu"
if [ ! -x "$TANSU" ]; then
  log "building tansu $TANSU_VERSION (about 14 minutes on 2 cores the first time; cached in $TANSU_ROOT)"
  CARGO_TARGET_DIR="${TANSU_TARGET_DIR:-/var/tmp/tansu-target}" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$TANSU_ROOT" >&2
fi

if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/axe-core ]; then
  log "installing playwright-core and axe-core for the browser test (npm ci; it never downloads a browser)"
  npm ci --prefix tests/browser --silent --no-audit --no-fund >&2
fi

# A real SMTP server for the notification tests: aiosmtpd (PyPI), started by the tests.
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  log "installing aiosmtpd (pip) for the email notification test"
  python3 -m pip install --quiet --disable-pip-version-check 'aiosmtpd>=1.4,<2' >&2
fi

# schemathesis, and jsonschema for the FIWARE schemas, in a venv of their own: their many pinned
# dependencies stay out of the system's.
SCHEMATHESIS_VERSION=4.32.5
TOOLS_VENV=/var/tmp/ioc-tools/venv
if ! "$TOOLS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" \
  || ! "$TOOLS_VENV/bin/python" -c 'import jsonschema, referencing, rfc3339_validator' 2>/dev/null; then
  log "installing schemathesis $SCHEMATHESIS_VERSION and jsonschema (pip, in $TOOLS_VENV) for the API's tests"
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" 'jsonschema==4.26.0' 'rfc3339-validator==0.1.4' >&2
fi

# ClickHouse
if ! curl -fsS 'http://127.0.0.1:8123/ping' >/dev/null 2>&1; then
  log "starting clickhouse-server"
  mkdir -p /var/lib/clickhouse /var/log/clickhouse-server
  chown -R clickhouse:clickhouse /var/lib/clickhouse /var/log/clickhouse-server 2>/dev/null || true
  if id clickhouse >/dev/null 2>&1; then
    su -s /bin/sh clickhouse -c 'cd /var/lib/clickhouse && clickhouse-server --config-file=/etc/clickhouse-server/config.xml --daemon --pid-file=/var/lib/clickhouse/clickhouse-server.pid'
  else
    (cd /var/lib/clickhouse && clickhouse-server --config-file=/etc/clickhouse-server/config.xml --daemon)
  fi
  for _ in $(seq 1 60); do
    curl -fsS 'http://127.0.0.1:8123/ping' >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fsS 'http://127.0.0.1:8123/ping' >/dev/null || { log "clickhouse did not start; see /var/log/clickhouse-server/"; exit 1; }
fi
log "clickhouse $(curl -fsS 'http://127.0.0.1:8123/?query=SELECT%20version()') on 127.0.0.1:8123"

# tansu, in-memory storage: tests isolate themselves with their own topic prefixes.
if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
  log "starting tansu on 127.0.0.1:9092"
  mkdir -p /var/log/tansu
  nohup "$TANSU" broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ \
    >/var/log/tansu/tansu.log 2>&1 &
  for _ in $(seq 1 60); do
    (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break
    sleep 0.5
  done
  (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null || { log "tansu did not start; see /var/log/tansu/tansu.log"; exit 1; }
fi
log "tansu on 127.0.0.1:9092"
