#!/usr/bin/env bash
# Updates the dashboard's third-party libraries: installs what web/package.json pins (npm ci, from
# the lockfile), copies their built files into ioc-dashboard-api/src/web/vendor/ (committed and
# embedded in the binary, so building and running ioc needs neither npm nor the network), and
# records their versions and licences in VENDOR.md there. Run it after changing a version in
# web/package.json (then `npm install --prefix web` to update the lockfile first).
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --prefix web --silent --no-audit --no-fund
out=ioc-dashboard-api/src/web/vendor
rm -rf "$out"
mkdir -p "$out"
cp web/node_modules/leaflet/dist/leaflet.js web/node_modules/leaflet/dist/leaflet.css "$out/"
cp web/node_modules/uplot/dist/uPlot.iife.min.js web/node_modules/uplot/dist/uPlot.min.css "$out/"
version() { node -p "require('./web/node_modules/$1/package.json').version"; }
licence() { node -p "require('./web/node_modules/$1/package.json').license"; }
{
  echo "# Vendored front-end libraries"
  echo
  echo "Written by scripts/update-web-vendor.sh from web/package.json and its lockfile; do not edit."
  echo
  echo "| library | version | licence | files |"
  echo "|---|---|---|---|"
  echo "| leaflet | $(version leaflet) | $(licence leaflet) | leaflet.js, leaflet.css |"
  echo "| uplot | $(version uplot) | $(licence uplot) | uPlot.iife.min.js, uPlot.min.css |"
  echo
  echo "Their licence texts:"
  for lib in leaflet uplot; do
    echo
    echo "## $lib"
    echo
    echo '```'
    cat "web/node_modules/$lib/LICENSE"
    echo '```'
  done
} > "$out/VENDOR.md"
ls -l "$out" >&2
